/* The parts of a mail server connection the three clients share. */
#include "proto/mail_conn.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <libetpan/libetpan.h>

#include "proto/net_stream.h"
#include "src/errfmt.h"
#include "src/log.h"

#define BACKOFF_MIN_S 1
#define BACKOFF_MAX_S 60

/* Debug wire log: at most this many lines per chunk, bytes per line. */
#define LOG_MAX_LINES 8
#define LOG_MAX_LINE 200

void mail_copy_printable(char *dst, size_t dst_size, const char *src,
	size_t src_len)
{
	dst[0] = '\0';
	mail_append_printable(dst, dst_size, src, src_len);
}

void mail_append_printable(char *dst, size_t dst_size, const char *src,
	size_t src_len)
{
	size_t o = strlen(dst);

	for (size_t i = 0; i < src_len && o + 1 < dst_size; i++) {
		unsigned char ch = (unsigned char)src[i];

		dst[o++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
	}
	dst[o] = '\0';
}

static void log_chunk(const char *proto, const char *label, const char *dir,
	const char *str, size_t size)
{
	char line[LOG_MAX_LINE + 1];
	size_t off = 0;
	int lines = 0;

	while (off < size) {
		const char *nl = memchr(str + off, '\n', size - off);
		size_t len = nl != NULL ? (size_t)(nl - (str + off)) : size - off;
		size_t shown = len;

		if (++lines > LOG_MAX_LINES) {
			log_debug("%s %s %s ... (%zu more bytes)", proto, label,
				dir, size - off);
			return;
		}
		if (shown > 0 && str[off + shown - 1] == '\r')
			shown--;
		mail_copy_printable(line, sizeof(line), str + off, shown);
		log_debug("%s %s %s %s%s", proto, label, dir, line,
			shown > LOG_MAX_LINE ? " ..." : "");
		off += len + (nl != NULL ? 1 : 0);
	}
}

void mail_conn_log(const char *proto, const char *label, int log_type,
	const char *str, size_t size, enum mail_log_quiet quiet)
{
	switch (log_type) {
	case MAILSTREAM_LOG_TYPE_DATA_SENT_PRIVATE:
		log_debug("%s %s C: (%zu bytes with credentials not shown)",
			proto, label, size);
		break;
	case MAILSTREAM_LOG_TYPE_DATA_SENT:
		if (quiet == MAIL_LOG_QUIET_SENT)
			log_debug("%s %s C: (%zu bytes of message)", proto,
				label, size);
		else
			log_chunk(proto, label, "C:", str, size);
		break;
	case MAILSTREAM_LOG_TYPE_DATA_RECEIVED:
		/* Mail content is summarised by the command instead. */
		if (quiet != MAIL_LOG_QUIET_RECEIVED)
			log_chunk(proto, label, "S:", str, size);
		break;
	default:
		/* libetpan's "<<<<<<< read <<<<<<" markers and empty errors. */
		break;
	}
}

void mail_conn_label(char *buf, size_t size, const char *host,
	uint16_t port)
{
	if (host == NULL)
		host = "?";
	if (strchr(host, ':') != NULL)
		snprintf(buf, size, "[%s]:%u", host, port);
	else
		snprintf(buf, size, "%s:%u", host, port);
}

/* ------------------------------------------------------------------ */
/* Endpoint and connect                                                */

static const struct proto_names {
	const char *name;          /* for messages */
	const char *log_name;      /* for log lines */
	const char *tls_command;
	const char *tls_scheme;
	const char *plain_option;  /* the -o that allows plain text */
	size_t credential_max;     /* longest user name or password sent */
} protos[] = {
	[MAIL_IMAP] = { "IMAP", "imap", "STARTTLS", "imaps://",
		"allow_plaintext", 1024 },
	/* libetpan formats "PASS %s\r\n" into 513 bytes and would cut the
	 * line end off anything longer than 505. */
	[MAIL_POP3] = { "POP3", "pop3", "STLS", "pop3s://",
		"pop3_allow_plaintext", 500 },
	[MAIL_SMTP] = { "SMTP", "smtp", "STARTTLS", "smtps://",
		"smtp_allow_plaintext", 1024 },
};

static bool credential_sendable(const char *s, size_t max)
{
	return strpbrk(s, "\r\n") == NULL && strlen(s) <= max;
}

enum backend_status mail_endpoint_check(const struct mail_endpoint *ep,
	enum mail_proto proto, const char **error_r)
{
	const struct proto_names *n = &protos[proto];

	if (ep->host == NULL || ep->host[0] == '\0') {
		*error_r = errfmt("no %s server given", n->name);
		return BACKEND_INVALID;
	}
	if ((ep->user == NULL && proto != MAIL_SMTP) ||
	    (ep->user != NULL && (ep->user[0] == '\0' ||
	     (ep->password == NULL && ep->token == NULL)))) {
		*error_r = errfmt("no %s user name or password given", n->name);
		return BACKEND_INVALID;
	}
	/* (A C string holds no NUL; secret_read_password refuses passwords
	 * that had one.) */
	if (ep->user != NULL && !credential_sendable(ep->user,
			n->credential_max)) {
		*error_r = errfmt("the %s user name contains a line break or is"
			" too long", n->name);
		return BACKEND_INVALID;
	}
	if (ep->password != NULL && !credential_sendable(ep->password,
			n->credential_max)) {
		*error_r = errfmt("the %s password contains a line break or is"
			" too long", n->name);
		return BACKEND_INVALID;
	}
	if (ep->tls != MAIL_TLS_NONE && ep->tls_ctx == NULL) {
		*error_r = "TLS requested without a TLS context";
		return BACKEND_INVALID;
	}
	return BACKEND_OK;
}

/* STARTTLS, the handshake, then capabilities afresh: nothing learnt in
 * clear text survives it. */
static enum backend_status conn_starttls(const struct mail_endpoint *ep,
	const struct mail_grammar *g, void *ctx, const char *label,
	mailstream *stream, const char **error_r)
{
	enum backend_status st;
	bool offered;

	st = g->starttls(ctx, error_r);
	if (st != BACKEND_OK)
		return st;
	/* Answered here so that the message says why; net_stream_starttls
	 * checks too. */
	if (stream->read_buffer_len != 0) {
		*error_r = errfmt("server %s sent data before the TLS handshake"
			" (possible injection attack)", label);
		return BACKEND_TLS;
	}
	if (net_stream_starttls(stream, ep->tls_ctx, ep->host, error_r) < 0)
		return BACKEND_TLS;
	return g->capabilities(ctx, true, &offered, error_r);
}

/* Everything between the greeting and the login that concerns TLS. */
static enum backend_status conn_secure(const struct mail_endpoint *ep,
	const struct mail_grammar *g, void *ctx, const char *label,
	mailstream *stream, bool preauth, const char **error_r)
{
	const struct proto_names *n = &protos[g->proto];
	enum backend_status st;
	bool offered = false;

	/* Logged in before TLS could start: anyone on the path may have
	 * said so. */
	if (ep->tls == MAIL_TLS_STARTTLS && preauth) {
		*error_r = errfmt("server %s sent PREAUTH before %s; refusing",
			label, n->tls_command);
		return BACKEND_PROTOCOL;
	}
	st = g->capabilities(ctx, false, &offered, error_r);
	if (st != BACKEND_OK)
		return st;

	switch (ep->tls) {
	case MAIL_TLS_IMPLICIT:
		return BACKEND_OK;

	case MAIL_TLS_STARTTLS:
		if (!offered) {
			*error_r = errfmt("server %s does not offer %s;"
				" refusing to continue without TLS (use %s or"
				" -o %s)", label, n->tls_command, n->tls_scheme,
				n->plain_option);
			return BACKEND_PROTOCOL;
		}
		return conn_starttls(ep, g, ctx, label, stream, error_r);

	case MAIL_TLS_NONE:
	default:
		/* A pre-authenticated session can no longer start TLS, and
		 * sends no credentials. */
		if (preauth) {
			log_debug("%s %s: pre-authenticated session without"
				" TLS", n->log_name, label);
			return BACKEND_OK;
		}
		/* Once offered, STARTTLS must work: no silent downgrade. */
		if (ep->tls_ctx != NULL && offered)
			return conn_starttls(ep, g, ctx, label, stream,
				error_r);
		if (ep->user != NULL && !net_stream_peer_is_loopback(stream)) {
			*error_r = errfmt("server %s does not offer %s;"
				" refusing to send the password in clear text"
				" to a host not on loopback", label,
				n->tls_command);
			return BACKEND_PROTOCOL;
		}
		/* Every session passes here; main warns once. */
		log_debug("%s %s: no TLS offered, continuing in plain text",
			n->log_name, label);
		return BACKEND_OK;
	}
}

enum backend_status mail_conn_open(const struct mail_endpoint *ep,
	const struct mail_grammar *g, void *ctx, const char *label,
	bool *preauth_r, const char **error_r)
{
	enum net_failure failure;
	enum backend_status st;
	mailstream *stream;

	*preauth_r = false;
	st = mail_endpoint_check(ep, g->proto, error_r);
	if (st != BACKEND_OK)
		return st;
	stream = net_stream_open(ep->host, ep->port,
		ep->tls == MAIL_TLS_IMPLICIT ? ep->tls_ctx : NULL,
		ep->timeout_s, &failure, error_r);
	if (stream == NULL) {
		switch (failure) {
		case NET_CONNECT:
			return BACKEND_CONNECT;
		case NET_TLS:
			return BACKEND_TLS;
		default:
			return BACKEND_TEMP;
		}
	}
	/* libetpan's line readers grow one buffer without limit. */
	if (g->line_max > 0)
		net_stream_set_line_max(stream, g->line_max);
	st = g->greeting(ctx, stream, preauth_r, error_r);
	if (st != BACKEND_OK)
		return st;
	return conn_secure(ep, g, ctx, label, stream, *preauth_r, error_r);
}

bool mail_conn_state_move(const char *proto, const char *label,
	const char *const names[], int from, int to, int final)
{
	if (from == to || from == final)
		return false;
	log_debug("%s %s: %s -> %s", proto, label, names[from], names[to]);
	return true;
}

/* ------------------------------------------------------------------ */
/* Reconnect gate                                                      */

static int64_t now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec;
}

bool reconnect_gate_closed(const struct reconnect_gate *g,
	enum backend_status *status_r, const char **error_r)
{
	if (g->retry_at == 0 || now_s() >= g->retry_at)
		return false;
	*status_r = g->last_status;
	*error_r = errfmt("%s", g->last_error);
	return true;
}

void reconnect_gate_failed(struct reconnect_gate *g, enum backend_status st,
	const char *error)
{
	g->backoff_s = g->backoff_s ? g->backoff_s * 2 : BACKOFF_MIN_S;
	if (g->backoff_s > BACKOFF_MAX_S)
		g->backoff_s = BACKOFF_MAX_S;
	g->retry_at = now_s() + g->backoff_s;
	g->last_status = st;
	snprintf(g->last_error, sizeof(g->last_error), "%s", error);
	if (!g->offline)
		log_warn("%s unreachable, mount is offline: %s", g->what,
			error);
	g->offline = true;
}

void reconnect_gate_opened(struct reconnect_gate *g)
{
	if (g->offline)
		log_info("%s reachable again, mount is online", g->what);
	g->offline = false;
	g->retry_at = 0;
	g->backoff_s = 0;
}
