/* What the IMAP, POP3 and SMTP clients share about a connection to a
 * mail server: the debug wire log, the way server text is made fit for
 * one log or error line, and the gate that spaces out reconnects to a
 * server that failed.  Each client keeps only its grammar.
 */
#ifndef MAILFS_MAIL_CONN_H
#define MAILFS_MAIL_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "src/backend.h"

/* Copies at most dst_size - 1 bytes of src into dst (terminated), control
 * characters as '?'. */
void mail_copy_printable(char *dst, size_t dst_size, const char *src,
	size_t src_len);

/* The same, appended to the string already in dst. */
void mail_append_printable(char *dst, size_t dst_size, const char *src,
	size_t src_len);

/* Which bytes of an exchange the wire log leaves out, besides the
 * credentials libetpan marks private (never shown). */
enum mail_log_quiet {
	MAIL_LOG_ALL,
	MAIL_LOG_QUIET_SENT,       /* message data going out (SMTP DATA) */
	MAIL_LOG_QUIET_RECEIVED,   /* mail content coming in (POP3 RETR) */
};

/* The debug log of one chunk libetpan's stream logger reports (its
 * log_type: MAILSTREAM_LOG_TYPE_*), as "PROTO LABEL C: line" or "S:", at
 * most a few lines of a few hundred bytes each.  proto ("imap") and label
 * ("host:port") name the connection. */
void mail_conn_log(const char *proto, const char *label, int log_type,
	const char *str, size_t size, enum mail_log_quiet quiet);

/* After a failed connect, further attempts are answered at once with
 * the same failure for a while (1 s, doubling to 60 s) instead of each
 * paying the timeout again; the mount is "offline" until one succeeds,
 * which is logged once each way.  Not locked: its owner's lock guards
 * it.  Zero-initialised it is open. */
struct reconnect_gate {
	const char *what;          /* "server", "POP3 server": for the log */
	int64_t retry_at;          /* monotonic seconds; 0: open */
	int backoff_s;
	enum backend_status last_status;
	char last_error[256];
	bool offline;
};

/* True while attempts are held back; then *status_r and *error_r
 * (errfmt) repeat the last failure. */
bool reconnect_gate_closed(const struct reconnect_gate *g,
	enum backend_status *status_r, const char **error_r);

/* Records a failed connect (status and error as it returned them). */
void reconnect_gate_failed(struct reconnect_gate *g, enum backend_status st,
	const char *error);

/* Records a successful connect. */
void reconnect_gate_opened(struct reconnect_gate *g);

#endif
