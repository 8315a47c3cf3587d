/* What the IMAP, POP3 and SMTP clients share about a connection to a
 * mail server: the endpoint, the connect that decides implicit TLS,
 * STARTTLS or plain text in one place, the debug wire log, the way
 * server text is made fit for one log or error line, and the gate that
 * spaces out reconnects to a server that failed.  Each client keeps only
 * its grammar, handed to mail_conn_open() as a struct mail_grammar.
 */
#ifndef MAILFS_MAIL_CONN_H
#define MAILFS_MAIL_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libetpan/libetpan.h>
#include <openssl/ssl.h>

#include "proto/sasl.h"
#include "src/backend.h"

struct token_source;

/* How a connection is secured. */
enum mail_tls {
	MAIL_TLS_IMPLICIT,   /* imaps://, pop3s://, smtps:// */
	MAIL_TLS_STARTTLS,   /* imap://, pop3://, smtp://: STARTTLS (POP3:
	                        STLS) required */
	MAIL_TLS_NONE,       /* the protocol's allow_plaintext: STARTTLS if
	                        offered (and tls_ctx set), else plain text,
	                        with credentials only to loopback */
};

/* Where and how to connect.  Borrowed by the sessions opened with it;
 * must outlive them. */
struct mail_endpoint {
	const char *host;
	uint16_t port;
	enum mail_tls tls;
	SSL_CTX *tls_ctx;       /* from net_tls_context_new; may be NULL only
	                           with MAIL_TLS_NONE */
	const char *user;       /* NULL: no login (SMTP only) */
	const char *password;   /* NULL when token is set */
	struct token_source *token;  /* OAuth2 access tokens, or NULL */
	enum sasl_choice auth;  /* -o auth=: how to log in */
	int timeout_s;          /* per wait; each command exchange gets the
	                           overall deadline of proto/net_stream.h */
};

/* The three protocols; mail_conn.c keeps what their messages and checks
 * need to know about each (names, the STARTTLS command, the option that
 * allows plain text, how long a credential may be). */
enum mail_proto {
	MAIL_IMAP,
	MAIL_POP3,
	MAIL_SMTP,            /* the only one that may have no user: no AUTH */
};

/* What a protocol tells mail_conn_open(): which it is, its bound on
 * lines, and the steps of its grammar.  Each step gets the ctx given to
 * mail_conn_open and explains a failure in a one-line *error_r naming
 * the server. */
struct mail_grammar {
	enum mail_proto proto;
	/* Every line the server sends from connect on is bounded to this
	 * (net_stream_set_line_max); 0: the protocol bounds what it reads. */
	size_t line_max;
	/* Takes the new stream (the protocol owns it from here on, even on
	 * failure) and reads the greeting; *preauth_r is set when the server
	 * says the session is logged in already (IMAP PREAUTH). */
	enum backend_status (*greeting)(void *ctx, mailstream *stream,
		bool *preauth_r, const char **error_r);
	/* Learns what the server offers (again, forgetting all learnt
	 * before, when after_tls) and says whether STARTTLS is offered. */
	enum backend_status (*capabilities)(void *ctx, bool after_tls,
		bool *starttls_r, const char **error_r);
	/* Sends STARTTLS and reads the answer: BACKEND_OK for the
	 * go-ahead, anything else is a refusal. */
	enum backend_status (*starttls)(void *ctx, const char **error_r);
};

/* "host:port", or "[v6addr]:port", into buf, for log lines (which must
 * not use errfmt(): they run inside I/O and would recycle error strings
 * callers still hold). */
void mail_conn_label(char *buf, size_t size, const char *host,
	uint16_t port);

/* Checks ep for what the protocol needs: a host, a user and a password
 * or token (SMTP: unless there is no user), no line break in either (a
 * line break would end the command and start one of the server's
 * choosing), neither too long for the protocol, a TLS context when TLS is
 * required.  BACKEND_INVALID with a one-line *error_r if not. */
enum backend_status mail_endpoint_check(const struct mail_endpoint *ep,
	enum mail_proto proto, const char **error_r);

/* Checks ep, connects (implicit TLS when ep->tls says so), hands the
 * stream to g->greeting, learns the capabilities, and secures the
 * connection as ep->tls asks: STARTTLS when required (refused if not
 * offered or refused) or when offered with MAIL_TLS_NONE (once offered
 * it must work: no silent downgrade), refusing anything the server sent
 * before the handshake; plain text only with MAIL_TLS_NONE, and then
 * only to a loopback peer if credentials are to follow.  On return the
 * capabilities valid for what comes next are known.  label names the
 * server in messages.  Returns BACKEND_OK (*preauth_r as the greeting
 * said), or BACKEND_INVALID, BACKEND_CONNECT, BACKEND_TLS,
 * BACKEND_PROTOCOL or whatever a grammar step returned, with a one-line
 * *error_r.  On failure the caller closes what the greeting step took
 * without a goodbye. */
enum backend_status mail_conn_open(const struct mail_endpoint *ep,
	const struct mail_grammar *g, void *ctx, const char *label,
	bool *preauth_r, const char **error_r);

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

/* For each protocol's one state-change function: whether a session in
 * state `from` may move to `to` (not where it is already, and never out
 * of `final`, its broken state), logging the move at debug level as
 * "proto label: names[from] -> names[to]". */
bool mail_conn_state_move(const char *proto, const char *label,
	const char *const names[], int from, int to, int final);

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
