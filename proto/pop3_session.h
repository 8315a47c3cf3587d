/* One authenticated POP3 session: connect, TLS, capabilities, login, and
 * the few read-only commands the POP3 backend needs.
 *
 * A session wraps a libetpan mailpop3 for the greeting, STLS, USER, PASS
 * and QUIT; CAPA, LIST, UIDL, TOP and RETR are read here with bounded
 * buffers (see pop3_session.c for what libetpan gets wrong).  There is no
 * way to send DELE or RSET through this interface: QUIT therefore never
 * removes anything from the maildrop.
 *
 * A session is not thread-safe: one thread at a time.  POP3 servers lock
 * the maildrop while a session is open and freeze its view at login, so
 * callers keep at most one session per account and open a new one to see
 * new mail.
 */
#ifndef MAILFS_POP3_SESSION_H
#define MAILFS_POP3_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <libetpan/libetpan.h>
#include <openssl/ssl.h>

#include "proto/mail_conn.h"
#include "proto/sasl.h"
#include "src/backend.h"
#include "src/token_source.h"

/* RFC 1939: a unique-id is 1 to 70 characters from 0x21 to 0x7E. */
#define POP3_UIDL_MAX 70

/* Capabilities (RFC 2449) as listed after login.  When the server has no
 * CAPA (known == false), TOP and UIDL are simply tried. */
struct pop3_caps {
	bool known, top, uidl, user, stls, pipelining;
	/* SASL mechanisms offered for AUTH (RFC 5034) */
	bool sasl_plain, sasl_login, sasl_xoauth2, sasl_oauthbearer;
};

/* Where a session is (RFC 1939's states).  Every change goes through
 * pop3_session_set_state() (logged at debug level).  BROKEN is final:
 * the stream is dead or client and server are out of step; the session
 * is not reused. */
enum pop3_state {
	POP3_AUTHORIZATION,     /* greeting, TLS, login */
	POP3_TRANSACTION,       /* logged in: commands */
	POP3_UPDATE,            /* QUIT sent */
	POP3_BROKEN,
};

struct pop3_session {
	mailpop3 *pop3;         /* owned */
	struct pop3_caps caps;
	bool no_top;            /* TOP failed once: headers come from RETR */
	enum pop3_state state;
	bool quiet;             /* debug log shows byte counts, not mail */
	const struct mail_endpoint *ep;  /* borrowed from pop3_session_open */
	char text[256];         /* pop3_session_last_text(), sanitised */
	char label[280];        /* "host:port" for log lines */
};

/* One line of the scan listing: LIST joined with UIDL by message number. */
struct pop3_scan_entry {
	unsigned num;           /* message number, valid for this session only */
	uint64_t size;          /* octets as LIST reports them (may be off) */
	char uidl[POP3_UIDL_MAX + 1];  /* "" when missing or not RFC 1939 valid */
};

/* One message's header block from pop3_session_headers. */
struct pop3_header {
	char *data;             /* raw bytes up to and including the empty line
	                           that ends the header, cut at max_len;
	                           NUL-terminated; owned by the caller (free) */
	size_t len;
	bool refused;           /* the server answered -ERR: data is NULL */
};

/* Receives a message's bytes, transparency dots already removed, in
 * order.  Returns 0 to go on or -1 to abort the transfer (the session is
 * then broken: the rest of the answer is still on the wire). */
typedef int pop3_sink_fn(void *ctx, const char *data, size_t len);

/* Connects, establishes TLS as the endpoint asks (refusing STLS that is
 * not offered or fails), reads capabilities after TLS, logs in with USER
 * and PASS (never APOP), and re-reads capabilities.  Returns BACKEND_OK
 * with *session_r owned by the caller (release with pop3_session_close),
 * or, with a one-line *error_r naming the cause and the server:
 *   BACKEND_INVALID   user or password holds CR, LF or NUL, or is too long
 *   BACKEND_CONNECT   unreachable, refused, DNS
 *   BACKEND_TLS       handshake or certificate, data injected before TLS
 *   BACKEND_AUTH      USER or PASS refused
 *   BACKEND_TEMP      timeout, connection lost, -ERR greeting, maildrop
 *                     locked by another session ([IN-USE]), [LOGIN-DELAY]
 *                     or [SYS/TEMP] (RFC 2449, RFC 3206)
 *   BACKEND_REFUSED   login refused with [SYS/PERM]
 *   BACKEND_PROTOCOL  bad greeting (not POP3), no STLS when required or
 *                     STLS refused */
enum backend_status pop3_session_open(const struct mail_endpoint *ep,
	struct pop3_session **session_r, const char **error_r);

/* Moves s to state (see enum pop3_state); nothing leaves BROKEN. */
void pop3_session_set_state(struct pop3_session *s, enum pop3_state state);

/* True once the session is BROKEN. */
bool pop3_session_broken(const struct pop3_session *s);

/* Sends QUIT (best effort, at most a few seconds) unless broken, closes,
 * frees, and sets *session to NULL.  NULL is ignored. */
void pop3_session_close(struct pop3_session **session);

/* LIST, then UIDL.  *entries_r (owned by the caller, free()) holds one
 * entry per message in message-number order.  *have_uidl_r is false when
 * the server refused UIDL; a message whose unique-id is missing or invalid
 * gets uidl "" (and a debug log line).  Fails with BACKEND_PROTOCOL on an
 * answer that cannot be trusted (the session is then broken). */
enum backend_status pop3_session_scan(struct pop3_session *s,
	struct pop3_scan_entry **entries_r, size_t *count_r,
	bool *have_uidl_r, const char **error_r);

/* The header blocks of messages nums[0..n-1] ("TOP n 0", pipelined when
 * the server offers PIPELINING; through RETR, keeping only the header,
 * when TOP is refused).  out[] (n entries, zeroed by this call) receives
 * each header cut at max_len bytes, or refused = true.  On failure every
 * out[i].data is freed again. */
enum backend_status pop3_session_headers(struct pop3_session *s,
	const unsigned *nums, size_t n, size_t max_len,
	struct pop3_header *out, const char **error_r);

/* RETR num: streams the message's exact bytes, transparency dots removed
 * and line ends as sent, to sink.  BACKEND_NOT_FOUND on -ERR; when the
 * sink aborts, BACKEND_TEMP with *error_r "transfer aborted" (the caller
 * knows why; the session is broken). */
enum backend_status pop3_session_retr(struct pop3_session *s, unsigned num,
	pop3_sink_fn *sink, void *ctx, const char **error_r);

/* True when uidl[0..len) is a valid RFC 1939 unique-id: 1-70 bytes,
 * each 0x21-0x7E. */
bool pop3_uidl_valid(const char *uidl, size_t len);

/* The server's text from the last -ERR or +OK line, control characters
 * replaced and cut to fit, or "".  Points into the session; valid until
 * its next command. */
const char *pop3_session_last_text(struct pop3_session *s);

#endif
