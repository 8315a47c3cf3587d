#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

#include "src/log.h"
#include "src/utf8.h"

static bool debug_on;
static bool to_syslog;

void log_init(bool debug, bool use_syslog)
{
	debug_on = debug;
	to_syslog = use_syslog;
	if (use_syslog)
		openlog("mailfs", LOG_PID, LOG_DAEMON);
}

bool log_debug_enabled(void)
{
	return debug_on;
}

/* Copies in to out (size bytes) with control characters, C1 controls
 * and bytes that are not UTF-8 written as \xNN, so that nothing a server
 * or a file name brings can drive the terminal that shows the log. */
static void escape_line(const char *in, char *out, size_t size)
{
	const unsigned char *p = (const unsigned char *)in;
	size_t o = 0;

	while (*p && o + 5 < size) {
		uint32_t cp = 0;
		size_t len = utf8_get(p, &cp);

		if (len == 0 || cp < 0x20 || cp == 0x7f ||
		    (cp >= 0x80 && cp < 0xa0)) {
			if (*p == '\t') {
				out[o++] = ' ';
			} else {
				snprintf(out + o, size - o, "\\x%02x", *p);
				o += 4;
			}
			p++;
			continue;
		}
		if (o + len >= size)
			break;
		memcpy(out + o, p, len);
		o += len;
		p += len;
	}
	out[o] = '\0';
}

static void log_v(int prio, const char *fmt, va_list ap)
{
	static const char *const prefix[] = {
		[LOG_ERR] = "error: ", [LOG_WARNING] = "warning: ",
		[LOG_INFO] = "", [LOG_DEBUG] = "debug: ",
	};
	char raw[2048], line[4 * sizeof(raw)];

	vsnprintf(raw, sizeof(raw), fmt, ap);
	escape_line(raw, line, sizeof(line));
	if (to_syslog) {
		syslog(prio, "%s", line);
		return;
	}
	/* One write per line so concurrent threads do not interleave. */
	fprintf(stderr, "mailfs: %s%s\n", prefix[prio], line);
}

#define DEFINE_LOG(name, prio, cond)                     \
	void name(const char *fmt, ...)                  \
	{                                                \
		va_list ap;                              \
		if (!(cond))                             \
			return;                          \
		va_start(ap, fmt);                       \
		log_v(prio, fmt, ap);                    \
		va_end(ap);                              \
	}

DEFINE_LOG(log_error, LOG_ERR, 1)
DEFINE_LOG(log_warn, LOG_WARNING, 1)
DEFINE_LOG(log_info, LOG_INFO, 1)
DEFINE_LOG(log_debug, LOG_DEBUG, debug_on)
