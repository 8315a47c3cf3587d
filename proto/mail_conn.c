/* The parts of a mail server connection the three clients share. */
#include "proto/mail_conn.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <libetpan/libetpan.h>

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
