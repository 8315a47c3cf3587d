#include <stdarg.h>
#include <stdio.h>
#include <syslog.h>
#include <time.h>

#include "src/log.h"

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

static void log_v(int prio, const char *fmt, va_list ap)
{
	static const char *const prefix[] = {
		[LOG_ERR] = "error: ", [LOG_WARNING] = "warning: ",
		[LOG_INFO] = "", [LOG_DEBUG] = "debug: ",
	};
	char line[2048];

	vsnprintf(line, sizeof(line), fmt, ap);
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
