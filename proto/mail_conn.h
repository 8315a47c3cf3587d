/* What the IMAP, POP3 and SMTP clients share about a connection to a
 * mail server: the debug wire log and the way server text is made fit
 * for one log or error line.  Each client keeps only its grammar.
 */
#ifndef MAILFS_MAIL_CONN_H
#define MAILFS_MAIL_CONN_H

#include <stdbool.h>
#include <stddef.h>

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

#endif
