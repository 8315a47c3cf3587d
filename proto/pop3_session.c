/* One authenticated POP3 session: connect, TLS, capabilities, login, and
 * the read-only commands.
 *
 * libetpan (1.9.4) sends the greeting, STLS, USER, PASS and QUIT for us.
 * Everything that returns a multi-line answer is read here instead,
 * because libetpan's readers cannot be trusted with it:
 *  - mailpop3_retr/mailpop3_top rebuild each line with strlen() and append
 *    CRLF: bytes after a NUL are lost and a bare LF becomes CRLF, so the
 *    result is not the server's bytes.  They also grow one buffer without
 *    limit (an endless message), as does every libetpan line read: the
 *    few single lines left to libetpan are the greeting and the answers
 *    to STLS, USER, PASS and QUIT.
 *  - mailpop3_list stores entry n at index n-1 of an array it resizes to
 *    n: "0 100" writes before the array, "4000000000 1" asks for 32 GB;
 *    UIDL "0 x" reads before it; a failed UIDL is silently ignored, and
 *    sizes go through strtol into 32 bits.
 *  - mailpop3_user/mailpop3_pass format into a 513-byte buffer: a longer
 *    credential loses its CRLF and the server waits for the rest.
 *  - mailpop3_free() sends QUIT on any stream still attached, and only
 *    QUIT frees the APOP timestamp of the greeting; a session we gave up
 *    on has its stream closed and the timestamp freed here.
 * Nothing in this file can send DELE or RSET.
 */
#include "proto/pop3_session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>


#include "proto/mail_conn.h"
#include "proto/net_stream.h"
#include "src/errfmt.h"
#include "src/log.h"
#include "src/secret.h"

/* QUIT at close waits at most this long. */
#define QUIT_TIMEOUT_S 5
/* Longest response or listing line we accept (RFC 2449 allows 512). */
#define LINE_MAX_LEN 1024
/* A LIST answer with more messages than this is not believed. */
#define SCAN_MAX 1000000
/* TOP commands sent ahead of their answers when PIPELINING is offered. */
#define PIPELINE_DEPTH 32

bool pop3_uidl_valid(const char *uidl, size_t len)
{
	if (len == 0 || len > POP3_UIDL_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)uidl[i] < 0x21 || (unsigned char)uidl[i] > 0x7e)
			return false;
	return true;
}

const char *pop3_session_last_text(struct pop3_session *s)
{
	return s->text;
}

/* Keeps libetpan's idea of the last response (USER, PASS, STLS). */
static void take_libetpan_text(struct pop3_session *s)
{
	const char *t = s->pop3->pop3_response;

	if (t == NULL)
		t = "";
	mail_copy_printable(s->text, sizeof(s->text), t, strlen(t));
}

static const char *const state_names[] = {
	[POP3_AUTHORIZATION] = "authorization",
	[POP3_TRANSACTION] = "transaction",
	[POP3_UPDATE] = "update",
	[POP3_BROKEN] = "broken",
};

void pop3_session_set_state(struct pop3_session *s, enum pop3_state state)
{
	if (mail_conn_state_move("pop3", s->label, state_names, (int)s->state,
			(int)state, POP3_BROKEN))
		s->state = state;
}

bool pop3_session_broken(const struct pop3_session *s)
{
	return s->state == POP3_BROKEN;
}

static mailstream *session_stream(struct pop3_session *s)
{
	return s->pop3->pop3_stream;
}

static const char *stream_reason(struct pop3_session *s)
{
	const char *e = "";

	if (session_stream(s) != NULL)
		e = net_stream_last_error(session_stream(s));
	return e[0] != '\0' ? e : "connection lost";
}

static enum backend_status stream_failed(struct pop3_session *s,
	const char *what, const char **error_r)
{
	pop3_session_set_state(s, POP3_BROKEN);
	*error_r = errfmt("%s at %s failed: %s", what, s->label,
		stream_reason(s));
	return BACKEND_TEMP;
}

static enum backend_status protocol_failed(struct pop3_session *s,
	const char *what, const char *why, const char **error_r)
{
	pop3_session_set_state(s, POP3_BROKEN);
	*error_r = errfmt("bad answer to %s from %s: %s", what, s->label, why);
	return BACKEND_PROTOCOL;
}

/* ------------------------------------------------------------------ */
/* Protocol logging (debug only)                                       */

static void session_logger(mailpop3 *pop3, int log_type, const char *str,
	size_t size, void *context)
{
	struct pop3_session *s = context;

	(void)pop3;
	mail_conn_log("pop3", s->label, log_type, str, size,
		s->quiet ? MAIL_LOG_QUIET_RECEIVED : MAIL_LOG_ALL);
}

/* ------------------------------------------------------------------ */
/* Reading                                                             */

/* Walks the stream's read buffer in place and gives it back to libetpan
 * (rd_done) before any libetpan call, so both can share the stream.
 * Consuming line by line through mailstream_read() would memmove the
 * whole buffer for every line. */
struct rd {
	struct pop3_session *s;
	mailstream *st;
	size_t pos;                    /* bytes of st->read_buffer used */
	char line[LINE_MAX_LEN + 1];   /* a line that straddles two reads */
};

static void rd_init(struct rd *r, struct pop3_session *s)
{
	r->s = s;
	r->st = session_stream(s);
	r->pos = 0;
}

/* Drops what has been used from the stream's buffer. */
static void rd_done(struct rd *r)
{
	mailstream *st = r->st;

	if (r->pos == 0)
		return;
	st->read_buffer_len -= r->pos;
	if (st->read_buffer_len != 0)
		memmove(st->read_buffer, st->read_buffer + r->pos,
			st->read_buffer_len);
	r->pos = 0;
}

/* Makes unused bytes available; -1 when the stream failed (net_stream
 * reports end of file as a failure too). */
static int rd_fill(struct rd *r)
{
	if (r->pos < r->st->read_buffer_len)
		return 0;
	r->st->read_buffer_len = 0;
	r->pos = 0;
	if (mailstream_feed_read_buffer(r->st) <= 0) {
		pop3_session_set_state(r->s, POP3_BROKEN);
		return -1;
	}
	return 0;
}

/* One line without its line end (LF, or CRLF).  *line_r points into the
 * stream buffer or r->line and stays valid until the next rd_ call.
 * Returns 0, -1 (stream failed) or -2 (line too long; session broken). */
static int rd_line(struct rd *r, const char **line_r, size_t *len_r)
{
	size_t have = 0;
	bool split = false;
	const char *line;
	size_t len;

	for (;;) {
		if (rd_fill(r) < 0)
			return -1;

		const char *p = r->st->read_buffer + r->pos;
		size_t avail = r->st->read_buffer_len - r->pos;
		const char *nl = memchr(p, '\n', avail);
		size_t n = nl != NULL ? (size_t)(nl - p) + 1 : avail;

		if (!split && nl != NULL) {
			line = p;
			len = n;
			r->pos += n;
			break;
		}
		if (have + n > LINE_MAX_LEN) {
			pop3_session_set_state(r->s, POP3_BROKEN);
			return -2;
		}
		memcpy(r->line + have, p, n);
		have += n;
		r->pos += n;
		split = true;
		if (nl != NULL) {
			line = r->line;
			len = have;
			break;
		}
	}
	len--;                               /* LF */
	if (len > 0 && line[len - 1] == '\r')
		len--;
	*line_r = line;
	*len_r = len;
	return 0;
}

static enum backend_status line_failed(struct rd *r, int rc, const char *what,
	const char **error_r)
{
	rd_done(r);
	if (rc == -2)
		return protocol_failed(r->s, what, "line too long", error_r);
	return stream_failed(r->s, what, error_r);
}

/* Reads a status line: 1 for +OK, 0 for -ERR (text kept for
 * pop3_session_last_text), or a failure with *st_r set. */
static int rd_status(struct rd *r, const char *what, enum backend_status *st_r,
	const char **error_r)
{
	const char *line;
	size_t len, skip;
	int ok, rc;

	rc = rd_line(r, &line, &len);
	if (rc < 0) {
		*st_r = line_failed(r, rc, what, error_r);
		return -1;
	}
	if (len >= 3 && memcmp(line, "+OK", 3) == 0) {
		ok = 1;
		skip = 3;
	} else if (len >= 4 && memcmp(line, "-ERR", 4) == 0) {
		ok = 0;
		skip = 4;
	} else {
		rd_done(r);
		*st_r = protocol_failed(r->s, what, "neither +OK nor -ERR",
			error_r);
		return -1;
	}
	if (skip < len && line[skip] == ' ')
		skip++;
	mail_copy_printable(r->s->text, sizeof(r->s->text), line + skip, len - skip);
	return ok;
}

/* Where a multi-line body stands: at a line start, after a '.' that opens
 * a line, after ".\r", or inside a line. */
enum ml_state { ML_BOL, ML_DOT, ML_DOT_CR, ML_MID };

/* Feeds n bytes of a multi-line answer (RFC 1939 3) through the state
 * machine, passing content on to sink.  A line that opens with '.' loses
 * that dot; "." CRLF (or a bare LF, from sloppy servers) ends the answer.
 * Every other byte, CR and LF included, is content as sent.  Returns 1
 * at the end (*used_r counts the terminator), 0 when it wants more, -1
 * when the sink aborted. */
static int ml_feed(enum ml_state *state, const char *p, size_t n,
	size_t *used_r, pop3_sink_fn *sink, void *ctx)
{
	size_t i = 0;

	while (i < n) {
		switch (*state) {
		case ML_MID: {
			const char *nl = memchr(p + i, '\n', n - i);
			size_t run = nl != NULL ? (size_t)(nl - (p + i)) + 1 : n - i;

			if (sink(ctx, p + i, run) < 0)
				return -1;
			i += run;
			if (nl != NULL)
				*state = ML_BOL;
			break;
		}
		case ML_BOL:
			if (p[i] == '.') {
				*state = ML_DOT;
				i++;
			} else {
				*state = ML_MID;
			}
			break;
		case ML_DOT:
			if (p[i] == '\r') {
				*state = ML_DOT_CR;
				i++;
			} else if (p[i] == '\n') {
				*used_r = i + 1;
				return 1;
			} else {
				*state = ML_MID;   /* the dot was stuffing */
			}
			break;
		case ML_DOT_CR:
			if (p[i] == '\n') {
				*used_r = i + 1;
				return 1;
			}
			/* ".\r" then more: a stuffed line whose CR is content. */
			if (sink(ctx, "\r", 1) < 0)
				return -1;
			*state = ML_MID;
			break;
		}
	}
	*used_r = i;
	return 0;
}

/* Reads a multi-line body after its +OK line. */
static enum backend_status rd_multiline(struct rd *r, const char *what,
	pop3_sink_fn *sink, void *ctx, const char **error_r)
{
	enum ml_state state = ML_BOL;

	for (;;) {
		size_t used = 0;
		int rc;

		if (rd_fill(r) < 0) {
			rd_done(r);
			return stream_failed(r->s, what, error_r);
		}
		rc = ml_feed(&state, r->st->read_buffer + r->pos,
			r->st->read_buffer_len - r->pos, &used, sink, ctx);
		r->pos += used;
		if (rc == 1)
			return BACKEND_OK;
		if (rc < 0) {
			rd_done(r);
			pop3_session_set_state(r->s, POP3_BROKEN);
			*error_r = "transfer aborted";
			return BACKEND_TEMP;
		}
	}
}

/* ------------------------------------------------------------------ */
/* Sending                                                             */

/* Queues one command line; pop3_flush sends.  Our commands carry no
 * secrets, so they may show in the debug log. */
static enum backend_status send_command(struct pop3_session *s,
	const char *what, const char *line, const char **error_r)
{
	mailstream *st = session_stream(s);
	size_t len = strlen(line);

	mailstream_set_privacy(st, 1);
	if (mailstream_write(st, line, len) != (ssize_t)len ||
	    mailstream_write(st, "\r\n", 2) != 2)
		return stream_failed(s, what, error_r);
	return BACKEND_OK;
}

static enum backend_status flush_commands(struct pop3_session *s,
	const char *what, const char **error_r)
{
	if (mailstream_flush(session_stream(s)) == -1)
		return stream_failed(s, what, error_r);
	return BACKEND_OK;
}

/* ------------------------------------------------------------------ */
/* Capabilities                                                        */

static bool word_is(const char *p, size_t len, const char *word)
{
	return strlen(word) == len && strncasecmp(p, word, len) == 0;
}

/* The mechanisms of a CAPA "SASL" line (after the word). */
static void sasl_caps(struct pop3_caps *caps, const char *p, size_t len)
{
	size_t i = 0;

	while (i < len) {
		size_t w;

		while (i < len && p[i] == ' ')
			i++;
		for (w = 0; i + w < len && p[i + w] != ' '; w++)
			;
		if (word_is(p + i, w, "PLAIN"))
			caps->sasl_plain = true;
		else if (word_is(p + i, w, "LOGIN"))
			caps->sasl_login = true;
		else if (word_is(p + i, w, "XOAUTH2"))
			caps->sasl_xoauth2 = true;
		else if (word_is(p + i, w, "OAUTHBEARER"))
			caps->sasl_oauthbearer = true;
		i += w;
	}
}

/* CAPA (RFC 2449).  A server without it (-ERR) leaves caps.known false. */
static enum backend_status session_capa(struct pop3_session *s,
	const char **error_r)
{
	struct pop3_caps caps = { 0 };
	enum backend_status st;
	const char *line;
	struct rd r;
	size_t len;
	int rc;

	memset(&s->caps, 0, sizeof(s->caps));
	st = send_command(s, "CAPA", "CAPA", error_r);
	if (st == BACKEND_OK)
		st = flush_commands(s, "CAPA", error_r);
	if (st != BACKEND_OK)
		return st;
	rd_init(&r, s);
	rc = rd_status(&r, "CAPA", &st, error_r);
	if (rc < 0)
		return st;
	if (rc == 0) {
		rd_done(&r);
		log_debug("pop3 %s: no CAPA (%s)", s->label, s->text);
		return BACKEND_OK;
	}
	for (;;) {
		rc = rd_line(&r, &line, &len);
		if (rc < 0)
			return line_failed(&r, rc, "CAPA", error_r);
		if (len == 1 && line[0] == '.')
			break;
		/* The first word names the capability. */
		size_t w = 0;

		while (w < len && line[w] != ' ')
			w++;
		if (word_is(line, w, "TOP"))
			caps.top = true;
		else if (word_is(line, w, "UIDL"))
			caps.uidl = true;
		else if (word_is(line, w, "USER"))
			caps.user = true;
		else if (word_is(line, w, "STLS"))
			caps.stls = true;
		else if (word_is(line, w, "PIPELINING"))
			caps.pipelining = true;
		else if (word_is(line, w, "SASL"))
			sasl_caps(&caps, line + w, len - w);
	}
	rd_done(&r);
	caps.known = true;
	s->caps = caps;
	return BACKEND_OK;
}

/* ------------------------------------------------------------------ */
/* Open and close                                                      */

/* The grammar of connecting (proto/mail_conn.h). */

/* Takes the stream and reads the greeting. */
static enum backend_status grammar_greeting(void *ctx, mailstream *stream,
	bool *preauth_r, const char **error_r)
{
	struct pop3_session *s = ctx;
	int r;

	(void)preauth_r;
	/* From here on the stream belongs to s->pop3, even on failure. */
	r = mailpop3_connect(s->pop3, stream);
	if (r == MAILPOP3_NO_ERROR)
		return BACKEND_OK;
	/* libetpan says UNAUTHORIZED for all three cases. */
	if (net_stream_last_error(stream)[0] != '\0') {
		*error_r = errfmt("no greeting from %s: %s", s->label,
			stream_reason(s));
		return BACKEND_TEMP;
	}
	if (s->pop3->pop3_response != NULL) {
		take_libetpan_text(s);
		*error_r = errfmt("server %s refused the connection: %s",
			s->label, s->text);
		return BACKEND_TEMP;
	}
	*error_r = errfmt("bad greeting from %s (not a POP3 server?)",
		s->label);
	return BACKEND_PROTOCOL;
}

/* CAPA, before and again after TLS. */
static enum backend_status grammar_capabilities(void *ctx, bool after_tls,
	bool *starttls_r, const char **error_r)
{
	struct pop3_session *s = ctx;
	enum backend_status st = session_capa(s, error_r);

	(void)after_tls;
	*starttls_r = st == BACKEND_OK && s->caps.stls;
	return st;
}

/* STLS by hand: libetpan's mailpop3_stls() reads its answer with an
 * unbounded line reader, and ours leaves what follows the +OK in the
 * stream for mail_conn_open() to refuse. */
static enum backend_status grammar_starttls(void *ctx, const char **error_r)
{
	struct pop3_session *s = ctx;
	enum backend_status st;
	struct rd r;
	int rc;

	st = send_command(s, "STLS", "STLS", error_r);
	if (st == BACKEND_OK)
		st = flush_commands(s, "STLS", error_r);
	if (st != BACKEND_OK)
		return st;
	rd_init(&r, s);
	rc = rd_status(&r, "STLS", &st, error_r);
	if (rc < 0)
		return st;
	rd_done(&r);
	if (rc == 0) {
		*error_r = errfmt("server %s refused STLS: %s; refusing to"
			" continue without TLS", s->label, s->text);
		return BACKEND_PROTOCOL;
	}
	return BACKEND_OK;
}

static const struct mail_grammar pop3_grammar = {
	.proto = MAIL_POP3,
	/* libetpan reads the greeting and the answers to USER, PASS and
	 * QUIT. */
	.line_max = LINE_MAX_LEN,
	.greeting = grammar_greeting,
	.capabilities = grammar_capabilities,
	.starttls = grammar_starttls,
};

/* RFC 3206 response codes tell a locked maildrop from a bad password. */
static enum backend_status login_status(const char *text)
{
	if (strncasecmp(text, "[IN-USE]", 8) == 0 ||
	    strncasecmp(text, "[LOGIN-DELAY]", 13) == 0 ||
	    strncasecmp(text, "[SYS/TEMP]", 10) == 0)
		return BACKEND_TEMP;
	if (strncasecmp(text, "[SYS/PERM]", 10) == 0)
		return BACKEND_REFUSED;
	return BACKEND_AUTH;
}

/* Sends one line that carries a secret (hidden from the debug log). */
static enum backend_status send_secret(struct pop3_session *s,
	const char *prefix, const char *b64, const char **error_r)
{
	mailstream *st = session_stream(s);
	size_t plen = strlen(prefix), blen = strlen(b64);
	enum backend_status ret = BACKEND_OK;

	mailstream_set_privacy(st, 0);
	if (mailstream_write(st, prefix, plen) != (ssize_t)plen ||
	    mailstream_write(st, b64, blen) != (ssize_t)blen ||
	    mailstream_write(st, "\r\n", 2) != 2 ||
	    mailstream_flush(st) == -1)
		ret = stream_failed(s, "AUTH", error_r);
	mailstream_set_privacy(st, 1);
	return ret;
}

/* Longest AUTH line with an initial response (RFC 5034 4): a longer
 * response waits for the server's empty challenge. */
#define AUTH_IR_MAX 255
/* One AUTH exchange (RFC 5034) as sasl_exchange() drives it. */
struct auth_io {
	struct pop3_session *s;
	enum backend_status st;    /* of a failed exchange */
	const char **error_r;
	int ok;                    /* the final answer: 1 +OK, 0 -ERR */
	char challenge[LINE_MAX_LEN + 1];
};

static int auth_start(void *ctx, const char *name, const char *initial)
{
	struct auth_io *io = ctx;
	char prefix[32];

	snprintf(prefix, sizeof(prefix), "AUTH %s ", name);
	if (initial != NULL && strlen(prefix) + strlen(initial) <= AUTH_IR_MAX) {
		io->st = send_secret(io->s, prefix, initial, io->error_r);
		return io->st == BACKEND_OK ? 1 : -1;
	}
	io->st = send_secret(io->s, "AUTH ", name, io->error_r);
	return io->st == BACKEND_OK ? 0 : -1;
}

static int auth_send(void *ctx, const char *line)
{
	struct auth_io *io = ctx;

	io->st = send_secret(io->s, "", line, io->error_r);
	return io->st == BACKEND_OK ? 0 : -1;
}

static int auth_read(void *ctx, const char **text_r, size_t *len_r)
{
	struct auth_io *io = ctx;
	struct pop3_session *s = io->s;
	const char *line;
	size_t len, at;
	struct rd r;
	int rc;

	rd_init(&r, s);
	rc = rd_line(&r, &line, &len);
	if (rc < 0) {
		io->st = line_failed(&r, rc, "AUTH", io->error_r);
		return -1;
	}
	if ((len >= 3 && memcmp(line, "+OK", 3) == 0) ||
	    (len >= 4 && memcmp(line, "-ERR", 4) == 0)) {
		at = line[0] == '+' ? 3 : 4;
		io->ok = line[0] == '+';
		if (at < len && line[at] == ' ')
			at++;
		mail_copy_printable(s->text, sizeof(s->text), line + at,
			len - at);
		rd_done(&r);
		return 0;
	}
	if (len == 0 || line[0] != '+') {
		rd_done(&r);
		io->st = protocol_failed(s, "AUTH", "neither a challenge nor"
			" +OK or -ERR", io->error_r);
		return -1;
	}
	/* "+ challenge": the rest of the line, base64 */
	for (at = 1; at < len && line[at] == ' '; at++)
		;
	memcpy(io->challenge, line + at, len - at);
	io->challenge[len - at] = '\0';
	rd_done(&r);
	*text_r = io->challenge;
	*len_r = len - at;
	return 1;
}

static const struct sasl_framing auth_framing = {
	.start = auth_start,
	.send = auth_send,
	.read = auth_read,
};

/* AUTH with the mechanism of c.  Returns 1 for +OK, 0 for -ERR (text
 * kept for pop3_session_last_text), -1 with *st_r set when the exchange
 * failed.  libetpan's idea of the state stays "authorization": only its
 * QUIT runs after this, which takes either. */
static int auth_sasl(struct pop3_session *s, struct sasl_client *c,
	enum backend_status *st_r, const char **error_r)
{
	struct auth_io io = { .s = s, .st = BACKEND_OK, .error_r = error_r };

	switch (sasl_exchange(c, &auth_framing, &io)) {
	case SASL_DONE:
		return io.ok;
	case SASL_FAILED:
		*st_r = io.st;
		return -1;
	case SASL_NO_MEMORY:
		*error_r = "out of memory";
		*st_r = BACKEND_TEMP;
		return -1;
	case SASL_ENDLESS:
	default:
		*st_r = protocol_failed(s, "AUTH", "challenges after a cancel",
			error_r);
		return -1;
	}
}

/* Whether the server offers AUTH name (for sasl_choose). */
static bool offers_auth(const char *name, void *ctx)
{
	const struct pop3_caps *c = ctx;

	return (strcmp(name, "PLAIN") == 0 && c->sasl_plain) ||
		(strcmp(name, "LOGIN") == 0 && c->sasl_login) ||
		(strcmp(name, "XOAUTH2") == 0 && c->sasl_xoauth2) ||
		(strcmp(name, "OAUTHBEARER") == 0 && c->sasl_oauthbearer);
}

/* The error of a login the server refused. */
static enum backend_status login_refused(struct pop3_session *s,
	const char **error_r)
{
	const struct mail_endpoint *ep = s->ep;
	enum backend_status st = login_status(s->text);

	if (st == BACKEND_TEMP)
		*error_r = errfmt("mailbox of %s at %s is busy: %s", ep->user,
			s->label, s->text);
	else
		*error_r = errfmt("login failed for %s at %s: %s", ep->user,
			ep->host, s->text);
	return st;
}

/* AUTH with an OAuth2 token from ep->token: a refused token is reported
 * to the source and retried once with the command's next output (see
 * src/token_source.h). */
static enum backend_status login_with_token(struct pop3_session *s,
	const char **error_r)
{
	const struct mail_endpoint *ep = s->ep;
	enum backend_status st = BACKEND_AUTH;
	enum sasl_mech mech;

	if (!net_stream_is_tls(session_stream(s))) {
		*error_r = errfmt("%s: refusing to send an access token"
			" without TLS", s->label);
		return BACKEND_PROTOCOL;
	}
	mech = sasl_choose(ep->auth, true, offers_auth, &s->caps, error_r);
	if (mech == SASL_NONE) {
		*error_r = errfmt("server %s: %s", s->label, *error_r);
		return BACKEND_UNSUPPORTED;
	}
	for (int attempt = 0; attempt < 2; attempt++) {
		struct sasl_client c = { .mech = mech, .user = ep->user,
			.host = ep->host, .port = ep->port };
		char *token = NULL;
		int ok;

		if (!token_source_for_login(ep->token, attempt, ep->user,
				ep->host, s->text, &token, error_r))
			return BACKEND_AUTH;
		c.secret = token;
		ok = auth_sasl(s, &c, &st, error_r);
		if (ok == 1)
			token_source_accepted(ep->token, token);
		else if (ok == 0 && login_status(s->text) == BACKEND_AUTH)
			token_source_refused(ep->token, token);
		secret_free(&token);
		if (ok == 1)
			return BACKEND_OK;
		if (ok < 0)
			return st;
		if (login_status(s->text) != BACKEND_AUTH)
			break;
	}
	return login_refused(s, error_r);
}

static enum backend_status session_login(struct pop3_session *s,
	const char **error_r)
{
	const struct mail_endpoint *ep = s->ep;
	enum backend_status st;
	int r;

	if (ep->token)
		return login_with_token(s, error_r);
	if (ep->auth == SASL_ONLY_PLAIN) {
		struct sasl_client c = { .mech = SASL_PLAIN, .user = ep->user,
			.secret = ep->password };
		int ok;

		if (!s->caps.sasl_plain) {
			*error_r = errfmt("server %s does not offer AUTH PLAIN",
				s->label);
			return BACKEND_UNSUPPORTED;
		}
		ok = auth_sasl(s, &c, &st, error_r);
		if (ok < 0)
			return st;
		return ok ? BACKEND_OK : login_refused(s, error_r);
	}
	if (s->caps.known && !s->caps.user)
		log_debug("pop3 %s: USER not listed in CAPA; trying it anyway",
			s->label);
	r = mailpop3_user(s->pop3, ep->user);
	if (r == MAILPOP3_NO_ERROR)
		r = mailpop3_pass(s->pop3, ep->password);
	if (r == MAILPOP3_NO_ERROR)
		return BACKEND_OK;
	if (r == MAILPOP3_ERROR_STREAM)
		return stream_failed(s, "login", error_r);
	take_libetpan_text(s);
	return login_refused(s, error_r);
}

enum backend_status pop3_session_open(const struct mail_endpoint *ep,
	struct pop3_session **session_r, const char **error_r)
{
	struct pop3_session *s;
	enum backend_status st;
	bool preauth;

	*session_r = NULL;
	s = calloc(1, sizeof(*s));
	if (s == NULL) {
		*error_r = "out of memory";
		return BACKEND_TEMP;
	}
	s->ep = ep;
	mail_conn_label(s->label, sizeof(s->label), ep->host, ep->port);
	s->pop3 = mailpop3_new(0, NULL);
	if (s->pop3 == NULL) {
		*error_r = "out of memory";
		st = BACKEND_TEMP;
		goto out_close;
	}
	/* Only libetpan's own connect helpers read it; our stream enforces
	 * the timeout. */
	mailpop3_set_timeout(s->pop3, ep->timeout_s > 0 ? ep->timeout_s : 0);
	if (log_debug_enabled())
		mailpop3_set_logger(s->pop3, session_logger, s);

	st = mail_conn_open(ep, &pop3_grammar, s, s->label, &preauth,
		error_r);
	if (st != BACKEND_OK)
		goto out_close;
	st = session_login(s, error_r);
	if (st != BACKEND_OK)
		goto out_close;
	/* Servers may list more once the user is known. */
	st = session_capa(s, error_r);
	if (st != BACKEND_OK)
		goto out_close;

	/* Until QUIT only our own readers read, message lines included. */
	net_stream_set_line_max(session_stream(s), 0);
	pop3_session_set_state(s, POP3_TRANSACTION);
	log_debug("pop3 %s: session ready (%s%s%s%s)", s->label,
		net_stream_is_tls(session_stream(s)) ? "TLS" : "plain text",
		s->caps.top ? ", TOP" : "", s->caps.uidl ? ", UIDL" : "",
		s->caps.pipelining ? ", PIPELINING" : "");
	*session_r = s;
	return BACKEND_OK;

out_close:
	/* Never QUIT a session that did not open: it may stall again. */
	pop3_session_set_state(s, POP3_BROKEN);
	pop3_session_close(&s);
	return st;
}

void pop3_session_close(struct pop3_session **session)
{
	struct pop3_session *s = *session;
	mailpop3 *pop3;

	if (s == NULL)
		return;
	*session = NULL;
	pop3 = s->pop3;
	if (pop3 != NULL) {
		if (pop3->pop3_stream != NULL && !pop3_session_broken(s)) {
			int t = s->ep->timeout_s;

			if (t <= 0 || t > QUIT_TIMEOUT_S)
				t = QUIT_TIMEOUT_S;
			net_stream_set_timeout(pop3->pop3_stream, t);
			net_stream_set_line_max(pop3->pop3_stream,
				LINE_MAX_LEN);
			/* Nothing is marked deleted, so the UPDATE state
			 * QUIT enters removes nothing. */
			pop3_session_set_state(s, POP3_UPDATE);
			mailpop3_quit(pop3);        /* closes the stream */
		}
		/* mailpop3_free() would send QUIT on anything left, and
		 * only QUIT frees the greeting's APOP timestamp. */
		if (pop3->pop3_stream != NULL) {
			mailstream_close(pop3->pop3_stream);
			pop3->pop3_stream = NULL;
		}
		free(pop3->pop3_timestamp);
		pop3->pop3_timestamp = NULL;
		mailpop3_free(pop3);
	}
	free(s);
}

/* ------------------------------------------------------------------ */
/* LIST and UIDL                                                       */

/* Parses decimal digits at *i; false on none or overflow. */
static bool parse_u64(const char *p, size_t len, size_t *i, uint64_t *v_r)
{
	uint64_t v = 0;
	size_t start = *i;

	while (*i < len && p[*i] >= '0' && p[*i] <= '9') {
		unsigned d = (unsigned)(p[*i] - '0');

		if (v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
		(*i)++;
	}
	*v_r = v;
	return *i > start;
}

static void skip_blanks(const char *p, size_t len, size_t *i)
{
	while (*i < len && (p[*i] == ' ' || p[*i] == '\t'))
		(*i)++;
}

static int compare_num(const void *a, const void *b)
{
	const struct pop3_scan_entry *x = a, *y = b;

	return (x->num > y->num) - (x->num < y->num);
}

static enum backend_status read_list(struct pop3_session *s,
	struct pop3_scan_entry **entries_r, size_t *count_r,
	const char **error_r)
{
	struct pop3_scan_entry *e = NULL, *grown;
	size_t n = 0, cap = 0;
	enum backend_status st;
	bool sorted = true;
	const char *line;
	struct rd r;
	size_t len;
	int rc;

	st = send_command(s, "LIST", "LIST", error_r);
	if (st == BACKEND_OK)
		st = flush_commands(s, "LIST", error_r);
	if (st != BACKEND_OK)
		return st;
	rd_init(&r, s);
	rc = rd_status(&r, "LIST", &st, error_r);
	if (rc < 0)
		return st;
	if (rc == 0) {
		rd_done(&r);
		*error_r = errfmt("LIST refused by %s: %s", s->label, s->text);
		return BACKEND_REFUSED;
	}
	for (;;) {
		uint64_t num, size;
		size_t i = 0;

		rc = rd_line(&r, &line, &len);
		if (rc < 0) {
			st = line_failed(&r, rc, "LIST", error_r);
			goto out_free;
		}
		if (len == 1 && line[0] == '.')
			break;
		bool ok = parse_u64(line, len, &i, &num) && i < len &&
			line[i] == ' ';

		if (ok) {
			skip_blanks(line, len, &i);
			ok = parse_u64(line, len, &i, &size);
		}
		/* Anything after the size is allowed (RFC 1939 5).  No file
		 * can be larger than INT64_MAX (off_t). */
		if (!ok || num == 0 || num > SCAN_MAX || size > INT64_MAX) {
			rd_done(&r);
			st = protocol_failed(s, "LIST", "malformed line",
				error_r);
			goto out_free;
		}
		if (n == SCAN_MAX) {
			rd_done(&r);
			st = protocol_failed(s, "LIST", "too many messages",
				error_r);
			goto out_free;
		}
		if (n == cap) {
			cap = cap ? cap * 2 : 256;
			grown = realloc(e, cap * sizeof(*e));
			if (grown == NULL) {
				/* The rest of the answer is still coming. */
				rd_done(&r);
				pop3_session_set_state(s, POP3_BROKEN);
				st = BACKEND_TEMP;
				*error_r = "out of memory";
				goto out_free;
			}
			e = grown;
		}
		if (n > 0 && num <= e[n - 1].num)
			sorted = false;
		e[n].num = (unsigned)num;
		e[n].size = size;
		e[n].uidl[0] = '\0';
		n++;
	}
	rd_done(&r);
	if (!sorted) {
		qsort(e, n, sizeof(*e), compare_num);
		for (size_t i = 1; i < n; i++)
			if (e[i].num == e[i - 1].num) {
				st = protocol_failed(s, "LIST",
					"a message listed twice", error_r);
				goto out_free;
			}
	}
	*entries_r = e;
	*count_r = n;
	return BACKEND_OK;

out_free:
	free(e);
	return st;
}

static enum backend_status read_uidl(struct pop3_session *s,
	struct pop3_scan_entry *e, size_t n, bool *have_uidl_r,
	const char **error_r)
{
	enum backend_status st;
	size_t invalid = 0;
	const char *line;
	struct rd r;
	size_t len;
	int rc;

	*have_uidl_r = false;
	if (n == 0 || (s->caps.known && !s->caps.uidl))
		return BACKEND_OK;
	st = send_command(s, "UIDL", "UIDL", error_r);
	if (st == BACKEND_OK)
		st = flush_commands(s, "UIDL", error_r);
	if (st != BACKEND_OK)
		return st;
	rd_init(&r, s);
	rc = rd_status(&r, "UIDL", &st, error_r);
	if (rc < 0)
		return st;
	if (rc == 0) {
		rd_done(&r);
		log_debug("pop3 %s: UIDL refused (%s)", s->label, s->text);
		return BACKEND_OK;
	}
	for (;;) {
		struct pop3_scan_entry key, *hit;
		uint64_t num;
		size_t i = 0, end;

		rc = rd_line(&r, &line, &len);
		if (rc < 0)
			return line_failed(&r, rc, "UIDL", error_r);
		if (len == 1 && line[0] == '.')
			break;
		if (!parse_u64(line, len, &i, &num) || i >= len ||
		    line[i] != ' ') {
			rd_done(&r);
			return protocol_failed(s, "UIDL", "malformed line",
				error_r);
		}
		/* A number LIST did not show has nothing to attach to. */
		if (num == 0 || num > SCAN_MAX)
			continue;
		skip_blanks(line, len, &i);
		end = len;
		while (end > i && (line[end - 1] == ' ' || line[end - 1] == '\t'))
			end--;
		key.num = (unsigned)num;
		hit = bsearch(&key, e, n, sizeof(*e), compare_num);
		if (hit == NULL)
			continue;
		if (!pop3_uidl_valid(line + i, end - i)) {
			invalid++;
			hit->uidl[0] = '\0';
			continue;
		}
		memcpy(hit->uidl, line + i, end - i);
		hit->uidl[end - i] = '\0';
	}
	rd_done(&r);
	if (invalid > 0)
		log_debug("pop3 %s: %zu unique-ids not RFC 1939 valid; those"
			" messages are known by their headers", s->label,
			invalid);
	*have_uidl_r = true;
	return BACKEND_OK;
}

enum backend_status pop3_session_scan(struct pop3_session *s,
	struct pop3_scan_entry **entries_r, size_t *count_r,
	bool *have_uidl_r, const char **error_r)
{
	struct pop3_scan_entry *e = NULL;
	enum backend_status st;
	size_t n = 0;

	*entries_r = NULL;
	*count_r = 0;
	*have_uidl_r = false;
	if (pop3_session_broken(s)) {
		*error_r = errfmt("session with %s is broken", s->label);
		return BACKEND_TEMP;
	}
	st = read_list(s, &e, &n, error_r);
	if (st != BACKEND_OK)
		return st;
	st = read_uidl(s, e, n, have_uidl_r, error_r);
	if (st != BACKEND_OK) {
		free(e);
		return st;
	}
	*entries_r = e;
	*count_r = n;
	return BACKEND_OK;
}

/* ------------------------------------------------------------------ */
/* TOP and RETR                                                        */

/* Keeps the header block of a message: everything up to and including
 * the first empty line, at most max bytes of it. */
struct header_sink {
	char *buf;
	size_t len, cap, max;
	bool bol, cr_only, done, nomem;
};

static int header_sink(void *ctx, const char *data, size_t len)
{
	struct header_sink *h = ctx;

	for (size_t i = 0; i < len && !h->done; i++) {
		char c = data[i];

		if (h->len < h->max) {
			if (h->len == h->cap) {
				size_t cap = h->cap ? h->cap * 2 : 2048;
				char *grown;

				if (cap > h->max)
					cap = h->max;
				grown = realloc(h->buf, cap + 1);
				if (grown == NULL) {
					h->nomem = true;
					return -1;
				}
				h->buf = grown;
				h->cap = cap;
			}
			h->buf[h->len++] = c;
		}
		if (c == '\n') {
			if (h->bol || h->cr_only)
				h->done = true;
			h->bol = true;
			h->cr_only = false;
		} else {
			h->cr_only = h->bol && c == '\r';
			h->bol = false;
		}
	}
	return 0;
}

/* Reads one answer to TOP or RETR into out (status line included). */
static enum backend_status read_header_answer(struct pop3_session *s,
	const char *what, size_t max_len, struct pop3_header *out,
	const char **error_r)
{
	struct header_sink h = { .max = max_len, .bol = true };
	enum backend_status st;
	struct rd r;
	int rc;

	/* Mail stays out of the debug log, status line included: it may
	 * arrive in the same read as the first lines. */
	s->quiet = true;
	rd_init(&r, s);
	rc = rd_status(&r, what, &st, error_r);
	if (rc <= 0) {
		s->quiet = false;
		if (rc < 0)
			return st;
		rd_done(&r);
		out->refused = true;
		return BACKEND_OK;
	}
	st = rd_multiline(&r, what, header_sink, &h, error_r);
	s->quiet = false;
	rd_done(&r);
	if (st != BACKEND_OK) {
		free(h.buf);
		if (h.nomem)
			*error_r = "out of memory";
		return st;
	}
	if (h.buf == NULL) {
		h.buf = malloc(1);
		if (h.buf == NULL) {
			*error_r = "out of memory";
			return BACKEND_TEMP;
		}
	}
	h.buf[h.len] = '\0';
	out->data = h.buf;
	out->len = h.len;
	out->refused = false;
	return BACKEND_OK;
}

static void headers_free(struct pop3_header *out, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(out[i].data);
		out[i].data = NULL;
		out[i].len = 0;
	}
}

/* The header through RETR, for servers without TOP. */
static enum backend_status header_by_retr(struct pop3_session *s,
	unsigned num, size_t max_len, struct pop3_header *out,
	const char **error_r)
{
	enum backend_status st;
	char cmd[32];

	snprintf(cmd, sizeof(cmd), "RETR %u", num);
	st = send_command(s, "RETR", cmd, error_r);
	if (st == BACKEND_OK)
		st = flush_commands(s, "RETR", error_r);
	if (st != BACKEND_OK)
		return st;
	return read_header_answer(s, "RETR", max_len, out, error_r);
}

enum backend_status pop3_session_headers(struct pop3_session *s,
	const unsigned *nums, size_t n, size_t max_len,
	struct pop3_header *out, const char **error_r)
{
	size_t depth = s->caps.pipelining ? PIPELINE_DEPTH : 1;
	enum backend_status st = BACKEND_OK;
	size_t done = 0;

	memset(out, 0, n * sizeof(*out));
	if (pop3_session_broken(s)) {
		*error_r = errfmt("session with %s is broken", s->label);
		return BACKEND_TEMP;
	}
	if (s->caps.known && !s->caps.top)
		s->no_top = true;
	while (done < n) {
		size_t batch = n - done < depth ? n - done : depth;
		char cmd[40];

		if (s->no_top) {
			st = header_by_retr(s, nums[done], max_len, &out[done],
				error_r);
			if (st != BACKEND_OK)
				goto out_free;
			done++;
			continue;
		}
		for (size_t i = 0; i < batch; i++) {
			snprintf(cmd, sizeof(cmd), "TOP %u 0", nums[done + i]);
			st = send_command(s, "TOP", cmd, error_r);
			if (st != BACKEND_OK)
				goto out_free;
		}
		st = flush_commands(s, "TOP", error_r);
		if (st != BACKEND_OK)
			goto out_free;
		for (size_t i = 0; i < batch; i++) {
			st = read_header_answer(s, "TOP", max_len,
				&out[done + i], error_r);
			if (st != BACKEND_OK)
				goto out_free;
		}
		/* A refused TOP on a message LIST just showed means no TOP
		 * (messages never vanish within a session): try RETR. */
		for (size_t i = 0; i < batch; i++) {
			struct pop3_header *h = &out[done + i];

			if (!h->refused)
				continue;
			st = header_by_retr(s, nums[done + i], max_len, h,
				error_r);
			if (st != BACKEND_OK)
				goto out_free;
			if (!h->refused && !s->no_top) {
				log_debug("pop3 %s: TOP refused; reading"
					" headers through RETR", s->label);
				s->no_top = true;
			}
		}
		done += batch;
	}
	return BACKEND_OK;

out_free:
	headers_free(out, n);
	return st;
}

/* Counts what passes to the caller's sink, for the log. */
struct count_sink {
	pop3_sink_fn *sink;
	void *ctx;
	uint64_t bytes;
};

static int count_sink(void *ctx, const char *data, size_t len)
{
	struct count_sink *c = ctx;

	c->bytes += len;
	return c->sink(c->ctx, data, len);
}

/* Streams the answer to one whole-message command (RETR or TOP n LOTS)
 * to sink.  Returns BACKEND_NOT_FOUND when the server refused it. */
static enum backend_status fetch_whole(struct pop3_session *s,
	const char *verb, const char *cmd, unsigned num, pop3_sink_fn *sink,
	void *ctx, const char **error_r)
{
	struct count_sink c = { .sink = sink, .ctx = ctx };
	enum backend_status st;
	struct rd r;
	int rc;

	st = send_command(s, verb, cmd, error_r);
	if (st == BACKEND_OK)
		st = flush_commands(s, verb, error_r);
	if (st != BACKEND_OK)
		return st;
	s->quiet = true;
	rd_init(&r, s);
	rc = rd_status(&r, verb, &st, error_r);
	if (rc <= 0) {
		s->quiet = false;
		if (rc < 0)
			return st;
		rd_done(&r);
		*error_r = errfmt("%s %u refused by %s: %s", verb, num,
			s->label, s->text);
		return BACKEND_NOT_FOUND;
	}
	st = rd_multiline(&r, verb, count_sink, &c, error_r);
	s->quiet = false;
	rd_done(&r);
	if (st == BACKEND_OK)
		log_debug("pop3 %s: %s %u: %llu bytes", s->label, verb, num,
			(unsigned long long)c.bytes);
	return st;
}

enum backend_status pop3_session_retr(struct pop3_session *s, unsigned num,
	pop3_sink_fn *sink, void *ctx, const char **error_r)
{
	enum backend_status st;
	char cmd[48];

	if (pop3_session_broken(s)) {
		*error_r = errfmt("session with %s is broken", s->label);
		return BACKEND_TEMP;
	}
	/* Servers that keep flags (Dovecot, Courier) mark a message \Seen
	 * when it is RETRieved, but not when it is read with TOP: asking TOP
	 * for more lines than any message has reads it whole and leaves it
	 * unread.  RETR only when TOP is not offered or refused (nothing was
	 * sent yet in that case, so the fallback is safe). */
	if (!s->caps.known || s->caps.top) {
		snprintf(cmd, sizeof(cmd), "TOP %u %u", num, 2147483647u);
		st = fetch_whole(s, "TOP", cmd, num, sink, ctx, error_r);
		if (st != BACKEND_NOT_FOUND || pop3_session_broken(s))
			return st;
		log_debug("pop3 %s: TOP refused; reading with RETR", s->label);
	}
	snprintf(cmd, sizeof(cmd), "RETR %u", num);
	return fetch_whole(s, "RETR", cmd, num, sink, ctx, error_r);
}
