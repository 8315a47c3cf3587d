/* One SMTP submission session.  See smtp_client.h.
 *
 * What libetpan's mailsmtp does and does not do for us:
 *  - mailsmtp_data_message() dot-stuffs (a line starting with '.' gets
 *    another), turns bare CR and LF into CRLF, and always appends
 *    "\r\n.\r\n": a message that already ends in CRLF would grow an
 *    empty line, so one final CRLF is cut off before handing it over.
 *    Nothing else may dot-stuff.
 *  - Commands are formatted into 513-byte buffers with snprintf: a longer
 *    one is cut, losing its CRLF, and glued to the next command.  Its
 *    MAIL FROM has no BODY= or SMTPUTF8 parameters, and Debian's build
 *    routes mailsmtp_auth() through Cyrus SASL, which needs plugins that
 *    may not be installed.  So commands are written here, with lengths
 *    checked, and AUTH PLAIN / LOGIN are done by hand.
 *  - mailsmtp_connect() and mailsmtp_quit() close the stream themselves,
 *    which would race with smtp_session_cancel(); neither is used.
 *  - Its reply reader keeps no line count; ours caps it and checks that
 *    every line carries the same code.
 */
#include "proto/smtp_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <libetpan/libetpan.h>

#include "proto/mail_conn.h"
#include "proto/net_stream.h"
#include "proto/sasl.h"
#include "src/errfmt.h"
#include "src/log.h"
#include "src/secret.h"

/* QUIT at close waits at most this long. */
#define QUIT_TIMEOUT_S 5
/* The reply to the final dot may take a while (RFC 5321 4.5.3.2.6 allows
 * ten minutes); a spurious timeout there risks a duplicate. */
#define DATA_END_TIMEOUT_S 300
/* Lines in one reply, and bytes of reply text kept for EHLO parsing. */
#define REPLY_LINES_MAX 100
/* Longest reply line, CRLF included (RFC 5321 4.5.3.1.5). */
#define REPLY_LINE_MAX 512
#define EHLO_TEXT_MAX 4096
/* Longest command line we write: RFC 5321 allows 512 with CRLF, AUTH
 * lines may be longer (RFC 4954: 12288). */
#define COMMAND_MAX 512
#define AUTH_LINE_MAX 12288
#define ADDRESS_MAX 256
#define HELO_NAME_MAX 255

/* Where a session is; every change goes through set_state(), which logs
 * it.  BROKEN is final: the connection can no longer be trusted. */
enum smtp_state {
	ST_NEW,
	ST_GREETING,
	ST_EHLO,
	ST_STARTTLS,
	ST_AUTH,
	ST_READY,          /* between transactions */
	ST_MAIL,
	ST_RCPT,
	ST_DATA,
	ST_QUIT,
	ST_BROKEN,
};

static const char *const state_names[] = {
	[ST_NEW] = "new",
	[ST_GREETING] = "greeting",
	[ST_EHLO] = "ehlo",
	[ST_STARTTLS] = "starttls",
	[ST_AUTH] = "auth",
	[ST_READY] = "ready",
	[ST_MAIL] = "mail",
	[ST_RCPT] = "rcpt",
	[ST_DATA] = "data",
	[ST_QUIT] = "quit",
	[ST_BROKEN] = "broken",
};

struct smtp_session {
	const struct mail_endpoint *ep;   /* borrowed */
	const char *helo_name;            /* borrowed; NULL: our address */
	mailsmtp *smtp;                   /* owned; ->stream is the connection */
	struct smtp_caps caps;
	enum smtp_state state;
	bool in_data;                     /* log the message body's size only */
	atomic_bool cancelled;
	pthread_mutex_t lock;             /* guards cancel_stream */
	mailstream *cancel_stream;        /* what cancel may shut down */
	char ehlo[EHLO_TEXT_MAX];         /* text of the last reply's lines */
	char label[280];                  /* "host:port" */
};

/* ------------------------------------------------------------------ */
/* Helpers                                                             */

static void set_state(struct smtp_session *s, enum smtp_state state)
{
	if (mail_conn_state_move("smtp", s->label, state_names, (int)s->state,
			(int)state, ST_BROKEN))
		s->state = state;
}

static bool is_broken(const struct smtp_session *s)
{
	return s->state == ST_BROKEN;
}

/* Something we may put between '<' and '>' on a command line. */
static bool address_sendable(const char *addr)
{
	const unsigned char *s = (const unsigned char *)addr;
	size_t len = strlen(addr);

	if (len == 0 || len > ADDRESS_MAX)
		return false;
	for (; *s != '\0'; s++)
		if (*s <= ' ' || *s == 0x7f || *s == '<' || *s == '>')
			return false;
	return true;
}

static bool has_line_break(const char *s)
{
	return strpbrk(s, "\r\n") != NULL;
}

static const char *stream_reason(struct smtp_session *s)
{
	const char *e = "";

	if (atomic_load(&s->cancelled))
		return "cancelled";
	if (s->smtp->stream != NULL)
		e = net_stream_last_error(s->smtp->stream);
	return e[0] != '\0' ? e : "connection lost";
}

static void reply_none(struct smtp_session *s, struct smtp_reply *reply,
	const char *why)
{
	reply->code = 0;
	snprintf(reply->text, sizeof(reply->text), "%s", why);
}

/* The connection is unusable from now on. */
static void mark_broken(struct smtp_session *s, struct smtp_reply *reply)
{
	set_state(s, ST_BROKEN);
	if (reply != NULL && reply->code == 0 && reply->text[0] == '\0')
		reply_none(s, reply, stream_reason(s));
}

/* ------------------------------------------------------------------ */
/* Protocol logging (debug only)                                       */

static void stream_logger(mailstream *stream, int log_type, const char *str,
	size_t size, void *context)
{
	struct smtp_session *s = context;

	(void)stream;
	mail_conn_log("smtp", s->label, log_type, str, size,
		s->in_data ? MAIL_LOG_QUIET_SENT : MAIL_LOG_ALL);
}

/* ------------------------------------------------------------------ */
/* Replies and commands                                                */

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* Reads one reply: every line "NNN-text", the last "NNN text" or "NNN",
 * all with the same code.  Fills *reply (one line of text) and s->ehlo
 * (each line's text, '\n'-separated).  Returns the code, or 0 with the
 * session broken. */
static int read_reply(struct smtp_session *s, struct smtp_reply *reply)
{
	MMAPString *buf = s->smtp->line_buffer;
	int code = 0, lines = 0;

	reply->code = 0;
	reply->text[0] = '\0';
	s->ehlo[0] = '\0';
	for (;;) {
		char *line = NULL;
		size_t len;
		int c;

		if (s->smtp->stream != NULL)
			line = mailstream_read_line_remove_eol(s->smtp->stream,
				buf);
		if (line == NULL) {
			reply->text[0] = '\0';
			mark_broken(s, reply);
			return 0;
		}
		len = strlen(line);
		if (len < 3 || !is_digit(line[0]) || !is_digit(line[1]) ||
		    !is_digit(line[2]) || (len > 3 && line[3] != ' ' &&
		    line[3] != '-'))
			goto out_bad;
		c = (line[0] - '0') * 100 + (line[1] - '0') * 10 +
		    (line[2] - '0');
		if (c < 200 || c > 599 || (lines > 0 && c != code))
			goto out_bad;
		code = c;
		if (lines == 0)
			snprintf(reply->text, sizeof(reply->text), "%03d", c);
		if (len > 4) {
			mail_append_printable(reply->text, sizeof(reply->text), " ", 1);
			mail_append_printable(reply->text, sizeof(reply->text),
				line + 4, len - 4);
			mail_append_printable(s->ehlo, sizeof(s->ehlo), line + 4,
				len - 4);
		}
		/* '\n' separates lines for parse_ehlo(); not printable. */
		if (strlen(s->ehlo) + 1 < sizeof(s->ehlo))
			strcat(s->ehlo, "\n");
		if (++lines > REPLY_LINES_MAX)
			goto out_bad;
		if (len == 3 || line[3] == ' ')
			break;
	}
	reply->code = code;
	/* 421: the server is closing the connection. */
	if (code == 421)
		set_state(s, ST_BROKEN);
	return code;

out_bad:
	set_state(s, ST_BROKEN);
	reply->code = 0;
	snprintf(reply->text, sizeof(reply->text), "not an SMTP reply from %s: ",
		s->label);
	mail_append_printable(reply->text, sizeof(reply->text),
		s->smtp->line_buffer->str, strlen(s->smtp->line_buffer->str));
	return 0;
}

/* Writes one command line (CRLF added) and flushes it.  `private` hides
 * it from the protocol log.  Returns 0, or -1 with the session broken. */
static int send_line(struct smtp_session *s, const char *line, bool private,
	struct smtp_reply *reply)
{
	mailstream *stream = s->smtp->stream;
	size_t len = strlen(line);
	int res = 0;

	if (stream == NULL) {
		reply_none(s, reply, "not connected");
		set_state(s, ST_BROKEN);
		return -1;
	}
	if (private)
		mailstream_set_privacy(stream, 0);
	if (mailstream_write(stream, line, len) != (ssize_t)len ||
	    mailstream_write(stream, "\r\n", 2) != 2 ||
	    mailstream_flush(stream) == -1)
		res = -1;
	if (private)
		mailstream_set_privacy(stream, 1);
	if (res < 0) {
		reply->code = 0;
		reply->text[0] = '\0';
		mark_broken(s, reply);
	}
	return res;
}

/* Sends a command and reads its reply; returns the code (0: broken). */
static int command(struct smtp_session *s, struct smtp_reply *reply,
	const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int command(struct smtp_session *s, struct smtp_reply *reply,
	const char *fmt, ...)
{
	char line[COMMAND_MAX];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	/* Never send a cut command or one that a CR/LF would split. */
	if (n < 0 || (size_t)n >= sizeof(line) - 2 || has_line_break(line)) {
		reply_none(s, reply, "command too long or contains a line break");
		return 0;
	}
	if (send_line(s, line, false, reply) < 0)
		return 0;
	return read_reply(s, reply);
}

/* The result of a reply to a command that expects `ok` (250: any 2xx).
 * A reply of the wrong kind that is not an error (a 3xx to MAIL, say)
 * means we no longer agree with the server on the state: broken. */
static enum smtp_result classify(struct smtp_session *s,
	const struct smtp_reply *reply, int ok)
{
	if (reply->code == ok || (ok == 250 && reply->code / 100 == 2))
		return SMTP_OK;
	if (reply->code >= 500)
		return SMTP_PERM;
	if (reply->code != 0 && reply->code < 400)
		set_state(s, ST_BROKEN);
	return SMTP_TEMP;
}

/* ------------------------------------------------------------------ */
/* EHLO                                                                */

static bool word_is(const char *s, const char *word)
{
	size_t n = strlen(word);

	return strncasecmp(s, word, n) == 0 &&
	       (s[n] == '\0' || s[n] == ' ' || s[n] == '\n' || s[n] == '=');
}

/* Parses the keywords of an EHLO reply (s->ehlo, first line skipped). */
static void parse_ehlo(struct smtp_session *s)
{
	struct smtp_caps *c = &s->caps;
	const char *line = strchr(s->ehlo, '\n');

	memset(c, 0, sizeof(*c));
	c->esmtp = true;
	while (line != NULL && *++line != '\0') {
		if (word_is(line, "STARTTLS")) {
			c->starttls = true;
		} else if (word_is(line, "8BITMIME")) {
			c->eightbitmime = true;
		} else if (word_is(line, "SMTPUTF8")) {
			c->smtputf8 = true;
		} else if (word_is(line, "PIPELINING")) {
			c->pipelining = true;
		} else if (word_is(line, "SIZE")) {
			c->size = true;
			if (line[4] == ' ')
				c->size_max = strtoull(line + 5, NULL, 10);
		} else if (word_is(line, "AUTH")) {
			/* "AUTH PLAIN LOGIN" or the old "AUTH=PLAIN LOGIN" */
			const char *p = line + 4;

			while (*p == ' ' || *p == '=') {
				p++;
				if (word_is(p, "PLAIN"))
					c->auth_plain = true;
				else if (word_is(p, "LOGIN"))
					c->auth_login = true;
				else if (word_is(p, "XOAUTH2"))
					c->auth_xoauth2 = true;
				else if (word_is(p, "OAUTHBEARER"))
					c->auth_oauthbearer = true;
				p += strcspn(p, " \n");
			}
		}
		line = strchr(line, '\n');
	}
}

/* The EHLO argument: the configured name, else our address as a
 * literal (a name we cannot vouch for is worse than an address). */
static void helo_name(struct smtp_session *s, char *buf, size_t size)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char addr[INET6_ADDRSTRLEN];
	int fd;

	if (s->helo_name != NULL) {
		snprintf(buf, size, "%s", s->helo_name);
		return;
	}
	fd = mailstream_low_get_fd(mailstream_get_low(s->smtp->stream));
	if (fd >= 0 && getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET &&
		    inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr,
			addr, sizeof(addr)) != NULL) {
			snprintf(buf, size, "[%s]", addr);
			return;
		}
		if (ss.ss_family == AF_INET6 &&
		    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr,
			addr, sizeof(addr)) != NULL) {
			snprintf(buf, size, "[IPv6:%s]", addr);
			return;
		}
	}
	snprintf(buf, size, "localhost");
}

static enum backend_status session_ehlo(struct smtp_session *s,
	bool helo_ok, const char **error_r)
{
	char name[HELO_NAME_MAX + 16];
	struct smtp_reply reply;
	int code;

	set_state(s, ST_EHLO);
	helo_name(s, name, sizeof(name));
	code = command(s, &reply, "EHLO %s", name);
	if (code == 250) {
		parse_ehlo(s);
		return BACKEND_OK;
	}
	if (code == 0) {
		*error_r = errfmt("EHLO at %s failed: %s", s->label, reply.text);
		return BACKEND_TEMP;
	}
	if (code >= 500 && helo_ok) {
		code = command(s, &reply, "HELO %s", name);
		if (code == 250) {
			memset(&s->caps, 0, sizeof(s->caps));
			return BACKEND_OK;
		}
	}
	*error_r = errfmt("server %s refused EHLO: %s", s->label, reply.text);
	return code >= 500 ? BACKEND_PROTOCOL : BACKEND_TEMP;
}

/* ------------------------------------------------------------------ */
/* TLS                                                                 */

static enum backend_status grammar_starttls(void *ctx, const char **error_r)
{
	struct smtp_session *s = ctx;
	struct smtp_reply reply;
	int code;

	set_state(s, ST_STARTTLS);
	code = command(s, &reply, "STARTTLS");
	if (code == 220)
		return BACKEND_OK;
	if (code == 0 || code / 100 == 4) {
		*error_r = errfmt("STARTTLS at %s failed: %s", s->label,
			reply.text);
		return BACKEND_TEMP;
	}
	*error_r = errfmt("server %s refused STARTTLS: %s; refusing to"
		" continue without TLS", s->label, reply.text);
	return BACKEND_PROTOCOL;
}

/* ------------------------------------------------------------------ */
/* AUTH                                                                */

/* Sends one private line and reads the reply. */
static int secret_exchange(struct smtp_session *s, const char *prefix,
	const char *b64, struct smtp_reply *reply)
{
	size_t plen = strlen(prefix), blen = strlen(b64);
	size_t size = plen + blen + 1;
	char *line;
	int res;

	if (size > AUTH_LINE_MAX) {
		reply_none(s, reply, "credentials too long");
		return 0;
	}
	line = malloc(size);
	if (line == NULL) {
		reply_none(s, reply, "out of memory");
		return 0;
	}
	memcpy(line, prefix, plen);
	memcpy(line + plen, b64, blen + 1);
	res = send_line(s, line, true, reply);
	OPENSSL_cleanse(line, size);
	free(line);
	if (res < 0)
		return 0;
	return read_reply(s, reply);
}

/* One AUTH exchange (RFC 4954) as sasl_exchange() drives it. */
struct auth_io {
	struct smtp_session *s;
	struct smtp_reply *reply;  /* the last reply */
};

/* Sends one private line and reads the reply; 0 when the exchange
 * failed. */
static int auth_line(struct auth_io *io, const char *prefix, const char *b64)
{
	return secret_exchange(io->s, prefix, b64, io->reply) == 0 ? -1 : 0;
}

static int auth_start(void *ctx, const char *name, const char *initial)
{
	struct auth_io *io = ctx;
	char prefix[32];

	snprintf(prefix, sizeof(prefix), "AUTH %s%s", name,
		initial != NULL ? " " : "");
	return auth_line(io, prefix, initial != NULL ? initial : "") < 0 ?
		-1 : initial != NULL;
}

static int auth_send(void *ctx, const char *line)
{
	return auth_line(ctx, "", line);
}

/* The reply secret_exchange() read: a 334 is a challenge. */
static int auth_read(void *ctx, const char **text_r, size_t *len_r)
{
	struct auth_io *io = ctx;
	const char *text = io->reply->text + 3;

	if (io->reply->code != 334)
		return 0;
	while (*text == ' ')
		text++;
	*text_r = text;
	*len_r = strlen(text);
	return 1;
}

static const struct sasl_framing auth_framing = {
	.start = auth_start,
	.send = auth_send,
	.read = auth_read,
};

/* AUTH with the mechanism of c.  Returns the final reply code, 0 when
 * there was none (then the session is broken). */
static int auth_sasl(struct smtp_session *s, struct sasl_client *c,
	struct smtp_reply *reply)
{
	struct auth_io io = { .s = s, .reply = reply };

	reply->code = 0;
	reply->text[0] = '\0';
	switch (sasl_exchange(c, &auth_framing, &io)) {
	case SASL_DONE:
		return reply->code;
	case SASL_NO_MEMORY:
		reply_none(s, reply, "out of memory");
		break;
	case SASL_ENDLESS:
		reply_none(s, reply, "the server went on after AUTH was"
			" cancelled");
		break;
	case SASL_FAILED:
	default:
		break;
	}
	mark_broken(s, reply);
	return 0;
}

/* Whether the server offers AUTH name (for sasl_choose). */
static bool offers_auth(const char *name, void *ctx)
{
	const struct smtp_caps *c = ctx;

	return (strcmp(name, "PLAIN") == 0 && c->auth_plain) ||
		(strcmp(name, "LOGIN") == 0 && c->auth_login) ||
		(strcmp(name, "XOAUTH2") == 0 && c->auth_xoauth2) ||
		(strcmp(name, "OAUTHBEARER") == 0 && c->auth_oauthbearer);
}

/* AUTH with a token from ep->token: a refused token is reported to the
 * source and retried once with the command's next output (see
 * src/token_source.h).  Returns the final reply code, or -1 with
 * *error_r set when no token could be had. */
static int auth_token(struct smtp_session *s, enum sasl_mech mech,
	struct smtp_reply *reply, const char **error_r)
{
	const struct mail_endpoint *ep = s->ep;
	int code = 0;

	for (int attempt = 0; attempt < 2; attempt++) {
		struct sasl_client c = { .mech = mech, .user = ep->user,
			.host = ep->host, .port = ep->port };
		char *token = NULL;

		if (!token_source_for_login(ep->token, attempt, ep->user,
				ep->host, reply->text, &token, error_r))
			return -1;
		c.secret = token;
		code = auth_sasl(s, &c, reply);
		if (code == 235)
			token_source_accepted(ep->token, token);
		else if (code == 535)
			token_source_refused(ep->token, token);
		secret_free(&token);
		if (code != 535)
			break;
	}
	return code;
}

static enum backend_status session_auth(struct smtp_session *s,
	const char **error_r)
{
	const struct mail_endpoint *ep = s->ep;
	struct smtp_reply reply = { 0 };
	enum sasl_mech mech;
	int code;

	if (ep->user == NULL)
		return BACKEND_OK;
	set_state(s, ST_AUTH);
	if (ep->token != NULL && !net_stream_is_tls(s->smtp->stream)) {
		*error_r = errfmt("%s: refusing to send an access token"
			" without TLS", s->label);
		return BACKEND_PROTOCOL;
	}
	mech = sasl_choose(ep->auth, ep->token != NULL, offers_auth,
		&s->caps, error_r);
	if (mech == SASL_NONE) {
		*error_r = errfmt("server %s: %s", s->label, *error_r);
		return BACKEND_UNSUPPORTED;
	}
	if (ep->token != NULL) {
		code = auth_token(s, mech, &reply, error_r);
		if (code < 0)
			return BACKEND_AUTH;
	} else {
		struct sasl_client c = { .mech = mech, .user = ep->user,
			.secret = ep->password };

		code = auth_sasl(s, &c, &reply);
	}
	if (code == 235)
		return BACKEND_OK;
	if (code == 0) {
		*error_r = errfmt("AUTH at %s failed: %s", s->label, reply.text);
		return BACKEND_TEMP;
	}
	*error_r = errfmt("login failed for %s at %s: %s", ep->user, ep->host,
		reply.text);
	/* 454 and friends: the server's trouble, not the password's. */
	return code / 100 == 4 ? BACKEND_TEMP : BACKEND_AUTH;
}

/* ------------------------------------------------------------------ */
/* Open and close                                                      */

int smtp_session_new(const struct smtp_endpoint *ep,
	struct smtp_session **session_r)
{
	struct smtp_session *s = calloc(1, sizeof(*s));

	*session_r = NULL;
	if (s == NULL)
		return -1;
	s->ep = &ep->conn;
	s->helo_name = ep->helo_name;
	pthread_mutex_init(&s->lock, NULL);
	atomic_init(&s->cancelled, false);
	mail_conn_label(s->label, sizeof(s->label), ep->conn.host,
		ep->conn.port);
	s->smtp = mailsmtp_new(0, NULL);
	if (s->smtp == NULL) {
		pthread_mutex_destroy(&s->lock);
		free(s);
		return -1;
	}
	/* Only libetpan's own connect helpers read it; our stream enforces
	 * the timeout. */
	mailsmtp_set_timeout(s->smtp, ep->conn.timeout_s > 0 ?
		ep->conn.timeout_s : 0);
	*session_r = s;
	return 0;
}

static enum backend_status session_greeting(struct smtp_session *s,
	const char **error_r)
{
	struct smtp_reply reply;
	int code = read_reply(s, &reply);

	if (code == 220)
		return BACKEND_OK;
	set_state(s, ST_BROKEN);
	if (code == 0) {
		*error_r = errfmt("no greeting from %s: %s", s->label,
			reply.text);
		return BACKEND_TEMP;
	}
	if (code / 100 == 4) {
		*error_r = errfmt("server %s is busy: %s", s->label, reply.text);
		return BACKEND_TEMP;
	}
	*error_r = errfmt("server %s refuses service: %s", s->label,
		reply.text);
	return code == 554 ? BACKEND_REFUSED : BACKEND_PROTOCOL;
}

/* ------------------------------------------------------------------ */
/* The grammar of connecting (proto/mail_conn.h)                       */

static enum backend_status grammar_greeting(void *ctx, mailstream *stream,
	bool *preauth_r, const char **error_r)
{
	struct smtp_session *s = ctx;

	(void)preauth_r;
	pthread_mutex_lock(&s->lock);
	s->smtp->stream = stream;
	s->cancel_stream = stream;
	pthread_mutex_unlock(&s->lock);
	/* A cancel that came before the stream existed. */
	if (atomic_load(&s->cancelled)) {
		*error_r = errfmt("connection to %s cancelled", s->label);
		return BACKEND_TEMP;
	}
	if (log_debug_enabled())
		mailstream_set_logger(stream, stream_logger, s);
	set_state(s, ST_GREETING);
	return session_greeting(s, error_r);
}

/* EHLO, and afresh after TLS; HELO only where neither TLS nor AUTH can
 * follow. */
static enum backend_status grammar_capabilities(void *ctx, bool after_tls,
	bool *starttls_r, const char **error_r)
{
	struct smtp_session *s = ctx;
	enum backend_status st;

	if (after_tls)
		memset(&s->caps, 0, sizeof(s->caps));
	st = session_ehlo(s, !after_tls && s->ep->tls == MAIL_TLS_NONE &&
		s->ep->user == NULL, error_r);
	*starttls_r = st == BACKEND_OK && s->caps.starttls;
	return st;
}

static const struct mail_grammar smtp_grammar = {
	.proto = MAIL_SMTP,
	/* Every reply is read by libetpan's line reader: lines are bounded
	 * as RFC 5321 4.5.3.1.5 bounds them. */
	.line_max = REPLY_LINE_MAX,
	.greeting = grammar_greeting,
	.capabilities = grammar_capabilities,
	.starttls = grammar_starttls,
};

enum backend_status smtp_session_connect(struct smtp_session *s,
	const char **error_r)
{
	const struct mail_endpoint *ep = s->ep;
	enum backend_status st;
	bool preauth;

	if (s->helo_name != NULL && (!address_sendable(s->helo_name) ||
	    strlen(s->helo_name) > HELO_NAME_MAX)) {
		*error_r = "the EHLO name is empty, too long or has a space or"
			" control character";
		return BACKEND_INVALID;
	}
	if (s->smtp->stream != NULL) {
		*error_r = "SMTP session already connected";
		return BACKEND_INVALID;
	}
	st = mail_conn_open(ep, &smtp_grammar, s, s->label, &preauth,
		error_r);
	if (st == BACKEND_OK)
		st = session_auth(s, error_r);
	if (st != BACKEND_OK) {
		/* Never QUIT a session that did not open: it may stall. */
		set_state(s, ST_BROKEN);
		return st;
	}
	set_state(s, ST_READY);
	log_debug("smtp %s: session ready (%s%s%s%s)", s->label,
		net_stream_is_tls(s->smtp->stream) ? "TLS" : "plain text",
		s->caps.eightbitmime ? ", 8BITMIME" : "",
		s->caps.smtputf8 ? ", SMTPUTF8" : "",
		ep->user != NULL ? ", authenticated" : "");
	return BACKEND_OK;
}

enum backend_status smtp_session_open(const struct smtp_endpoint *ep,
	struct smtp_session **session_r, const char **error_r)
{
	struct smtp_session *s;
	enum backend_status st;

	*session_r = NULL;
	if (smtp_session_new(ep, &s) < 0) {
		*error_r = "out of memory";
		return BACKEND_TEMP;
	}
	st = smtp_session_connect(s, error_r);
	if (st != BACKEND_OK) {
		smtp_session_close(&s);
		return st;
	}
	*session_r = s;
	return BACKEND_OK;
}

void smtp_session_close(struct smtp_session **session)
{
	struct smtp_session *s = *session;
	mailstream *stream;

	if (s == NULL)
		return;
	*session = NULL;
	/* From here on a cancel finds nothing to shut down. */
	pthread_mutex_lock(&s->lock);
	s->cancel_stream = NULL;
	pthread_mutex_unlock(&s->lock);

	stream = s->smtp->stream;
	if (stream != NULL && !is_broken(s)) {
		struct smtp_reply reply;
		int t = s->ep->timeout_s;

		if (t <= 0 || t > QUIT_TIMEOUT_S)
			t = QUIT_TIMEOUT_S;
		net_stream_set_timeout(stream, t);
		set_state(s, ST_QUIT);
		command(s, &reply, "QUIT");
	}
	if (stream != NULL) {
		mailstream_close(stream);
		s->smtp->stream = NULL;
	}
	/* mailsmtp_free() would send QUIT on a stream still attached. */
	mailsmtp_free(s->smtp);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

void smtp_session_cancel(struct smtp_session *s)
{
	atomic_store(&s->cancelled, true);
	pthread_mutex_lock(&s->lock);
	if (s->cancel_stream != NULL)
		mailstream_cancel(s->cancel_stream);
	pthread_mutex_unlock(&s->lock);
}

bool smtp_session_broken(const struct smtp_session *s)
{
	return is_broken(s);
}

const struct smtp_caps *smtp_session_caps(const struct smtp_session *s)
{
	return &s->caps;
}

const char *smtp_session_label(const struct smtp_session *s)
{
	return s->label;
}

/* ------------------------------------------------------------------ */
/* Transactions                                                        */

static bool usable(struct smtp_session *s, struct smtp_reply *reply)
{
	if (is_broken(s) || s->smtp->stream == NULL) {
		reply_none(s, reply, "the SMTP connection is not usable");
		return false;
	}
	return true;
}

enum smtp_result smtp_session_mail(struct smtp_session *s, const char *from,
	unsigned flags, size_t size, struct smtp_reply *reply_r)
{
	char size_param[32] = "";
	enum smtp_result res;

	if (!address_sendable(from)) {
		reply_none(s, reply_r, "the sender address cannot be sent"
			" safely");
		return SMTP_PERM;
	}
	if ((flags & SMTP_MAIL_SMTPUTF8) != 0 && !s->caps.smtputf8) {
		reply_none(s, reply_r, "the server does not offer SMTPUTF8,"
			" which a non-ASCII address needs");
		return SMTP_PERM;
	}
	if (!usable(s, reply_r))
		return SMTP_TEMP;
	if (s->caps.size && size > 0)
		snprintf(size_param, sizeof(size_param), " SIZE=%zu", size);
	command(s, reply_r, "MAIL FROM:<%s>%s%s%s", from,
		(flags & SMTP_MAIL_8BIT) != 0 && s->caps.eightbitmime ?
			" BODY=8BITMIME" : "",
		(flags & SMTP_MAIL_SMTPUTF8) != 0 ? " SMTPUTF8" : "",
		size_param);
	res = classify(s, reply_r, 250);
	if (res == SMTP_OK)
		set_state(s, ST_MAIL);
	return res;
}

enum smtp_result smtp_session_rcpt(struct smtp_session *s, const char *to,
	struct smtp_reply *reply_r)
{
	enum smtp_result res;

	if (!address_sendable(to)) {
		reply_none(s, reply_r, "the recipient address cannot be sent"
			" safely");
		return SMTP_PERM;
	}
	if (!usable(s, reply_r))
		return SMTP_TEMP;
	command(s, reply_r, "RCPT TO:<%s>", to);
	/* 552 on RCPT means "too many recipients" (RFC 5321 4.5.3.1.10). */
	if (reply_r->code == 552)
		return SMTP_TEMP;
	res = classify(s, reply_r, 250);
	if (res == SMTP_OK)
		set_state(s, ST_RCPT);
	return res;
}

enum smtp_result smtp_session_data(struct smtp_session *s, const char *data,
	size_t len, bool *sent_r, struct smtp_reply *reply_r)
{
	mailsmtp *smtp = s->smtp;
	int r, t = s->ep->timeout_s;
	const char *text;

	if (sent_r != NULL)
		*sent_r = false;
	if (!usable(s, reply_r))
		return SMTP_TEMP;
	set_state(s, ST_DATA);
	command(s, reply_r, "DATA");
	if (reply_r->code != 354) {
		/* A 2xx here is a protocol error: no data was asked for. */
		if (reply_r->code / 100 == 2) {
			set_state(s, ST_BROKEN);
			return SMTP_TEMP;
		}
		return classify(s, reply_r, 354);
	}

	/* libetpan appends CRLF.CRLF: drop one CRLF of ours. */
	if (len >= 2 && data[len - 2] == '\r' && data[len - 1] == '\n')
		len -= 2;
	if (sent_r != NULL)
		*sent_r = true;
	if (t > 0 && t < DATA_END_TIMEOUT_S)
		net_stream_set_timeout(smtp->stream, DATA_END_TIMEOUT_S);
	smtp->response = NULL;
	smtp->response_code = 0;
	s->in_data = true;
	r = mailsmtp_data_message(smtp, data, len);
	s->in_data = false;
	if (t > 0 && t < DATA_END_TIMEOUT_S)
		net_stream_set_timeout(smtp->stream, t);

	reply_r->code = 0;
	reply_r->text[0] = '\0';
	if (r == MAILSMTP_ERROR_STREAM || smtp->response == NULL ||
	    smtp->response_code < 200 || smtp->response_code > 599) {
		mark_broken(s, reply_r);
		return SMTP_TEMP;
	}
	/* libetpan keeps each line's text without its code, '\n'-ended. */
	reply_r->code = smtp->response_code;
	snprintf(reply_r->text, sizeof(reply_r->text), "%03d",
		smtp->response_code);
	for (text = smtp->response; *text != '\0';) {
		size_t n = strcspn(text, "\n");

		if (n > 0) {
			mail_append_printable(reply_r->text, sizeof(reply_r->text),
				" ", 1);
			mail_append_printable(reply_r->text, sizeof(reply_r->text),
				text, n);
		}
		text += n;
		if (*text == '\n')
			text++;
	}
	if (reply_r->code == 421)
		set_state(s, ST_BROKEN);
	/* The final reply ends the transaction whatever it says. */
	set_state(s, ST_READY);
	return classify(s, reply_r, 250);
}

enum smtp_result smtp_session_reset(struct smtp_session *s,
	struct smtp_reply *reply_r)
{
	if (!usable(s, reply_r))
		return SMTP_TEMP;
	command(s, reply_r, "RSET");
	if (reply_r->code / 100 != 2)
		set_state(s, ST_BROKEN);
	set_state(s, ST_READY);
	return classify(s, reply_r, 250);
}
