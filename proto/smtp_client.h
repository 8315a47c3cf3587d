/* One SMTP submission session: connect, TLS, EHLO, AUTH, transactions.
 *
 * The stream is ours (proto/net_stream.h: OpenSSL, verified, deadlines);
 * libetpan's mailsmtp carries it and sends DATA with its dot-stuffing.
 * Replies are read by this module so that every reply's code and text
 * reach the caller, who decides what a failure means for a message.
 *
 * A session is not thread-safe: one thread uses it.  Only
 * smtp_session_cancel() may be called from another thread.
 *
 * Every network operation waits at most the endpoint's timeout for
 * progress, and each command exchange (the message body after DATA's 354
 * is one) ends within the overall deadline of proto/net_stream.h; a
 * timeout, a lost connection or a reply that is not SMTP
 * leaves the session broken (smtp_session_broken()): close it and open a
 * new one.
 */
#ifndef MAILFS_SMTP_CLIENT_H
#define MAILFS_SMTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>

#include "proto/mail_conn.h"
#include "proto/sasl.h"
#include "src/backend.h"
#include "src/token_source.h"

/* Where and how to connect.  Borrowed by smtp_session_open(); must
 * outlive the session.  conn.user NULL: no AUTH. */
struct smtp_endpoint {
	struct mail_endpoint conn;
	const char *helo_name;  /* NULL: "[our address]" (RFC 5321 4.1.4) */
};

/* What the server offers (from its last EHLO). */
struct smtp_caps {
	bool esmtp;             /* EHLO worked (else HELO) */
	bool starttls, eightbitmime, smtputf8, pipelining, size;
	bool auth_plain, auth_login, auth_xoauth2, auth_oauthbearer;
	uint64_t size_max;      /* SIZE limit, 0 if none given */
};

#define SMTP_REPLY_MAX 512

/* A server reply, or why there was none. */
struct smtp_reply {
	int code;               /* 200..599; 0: no reply (connection lost,
	                           timeout, garbage, or refused locally) */
	char text[SMTP_REPLY_MAX];  /* one line, control characters
	                           replaced: "550 5.1.1 <a@b>: unknown user",
	                           or for code 0 the reason */
};

enum smtp_result {
	SMTP_OK = 0,            /* 2xx (354 for DATA's first step) */
	SMTP_TEMP,              /* 4xx, or no reply (then the session is
	                           broken) */
	SMTP_PERM,              /* 5xx, or refused before sending (an address
	                           that cannot be sent safely, SMTPUTF8
	                           needed but not offered) */
};

struct smtp_session;

/* Allocates a session for ep without connecting, so that another thread
 * can smtp_session_cancel() it during smtp_session_connect().  The caller
 * owns *session_r (smtp_session_close()).  Returns 0 or -1 (no memory). */
int smtp_session_new(const struct smtp_endpoint *ep,
	struct smtp_session **session_r);

/* Connects, reads the greeting, EHLO (HELO only with MAIL_TLS_NONE and no
 * user), STARTTLS as the endpoint asks (refused if not offered; EHLO again
 * after it, forgetting everything said before), then AUTH when a user is
 * set: PLAIN or LOGIN with a password, OAUTHBEARER or XOAUTH2 with a token
 * (never without TLS), as the endpoint's auth allows.  Returns BACKEND_OK, or with a one-line *error_r:
 * BACKEND_CONNECT, BACKEND_TLS, BACKEND_AUTH (credentials refused),
 * BACKEND_UNSUPPORTED (no usable AUTH mechanism), BACKEND_PROTOCOL (no
 * STARTTLS, not SMTP), BACKEND_REFUSED (the server refuses service),
 * BACKEND_TEMP (timeout, lost connection, 4xx, cancelled),
 * BACKEND_INVALID (bad endpoint). */
enum backend_status smtp_session_connect(struct smtp_session *s,
	const char **error_r);

/* smtp_session_new() and smtp_session_connect() in one; on failure
 * *session_r is NULL. */
enum backend_status smtp_session_open(const struct smtp_endpoint *ep,
	struct smtp_session **session_r, const char **error_r);

/* QUIT (bounded, best effort) unless broken, closes, frees, sets *session
 * to NULL.  Must not race with smtp_session_cancel(). */
void smtp_session_close(struct smtp_session **session);

/* From any thread: makes a blocked or later network operation fail at
 * once (the session becomes broken). */
void smtp_session_cancel(struct smtp_session *s);

bool smtp_session_broken(const struct smtp_session *s);
const struct smtp_caps *smtp_session_caps(const struct smtp_session *s);
/* "host:port" for log lines; points into the session. */
const char *smtp_session_label(const struct smtp_session *s);

/* Flags for smtp_session_mail(). */
enum {
	SMTP_MAIL_8BIT = 1 << 0,      /* content has 8-bit bytes: BODY=8BITMIME
	                                 if offered, else sent as is (servers
	                                 commonly accept it; nothing better
	                                 exists short of re-encoding) */
	SMTP_MAIL_SMTPUTF8 = 1 << 1,  /* an address is UTF-8: SMTPUTF8, and
	                                 SMTP_PERM without sending if the
	                                 server does not offer it */
};

/* MAIL FROM:<from> with BODY=8BITMIME, SMTPUTF8 and SIZE=size as they
 * apply.  An address with CR, LF, NUL, a space, '<', '>' or a control
 * character, or longer than 256 octets, is refused (SMTP_PERM, code 0)
 * without sending anything. */
enum smtp_result smtp_session_mail(struct smtp_session *s, const char *from,
	unsigned flags, size_t size, struct smtp_reply *reply_r);

/* RCPT TO:<to>.  552 is reported as SMTP_TEMP (RFC 5321 4.5.3.1.10:
 * too many recipients, try the rest later). */
enum smtp_result smtp_session_rcpt(struct smtp_session *s, const char *to,
	struct smtp_reply *reply_r);

/* DATA, then the message, then the final reply.  data must use CRLF line
 * ends and must not be dot-stuffed: this does it (through libetpan).
 * SMTP_TEMP with *sent_r true and code 0 means the connection failed
 * after the final dot: the message may or may not have been taken.
 * sent_r may be NULL. */
enum smtp_result smtp_session_data(struct smtp_session *s, const char *data,
	size_t len, bool *sent_r, struct smtp_reply *reply_r);

/* RSET: abandons the current transaction. */
enum smtp_result smtp_session_reset(struct smtp_session *s,
	struct smtp_reply *reply_r);

#endif
