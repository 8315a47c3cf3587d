/* Reading a server's push-back, and the state it leaves (see the header). */
#include <ctype.h>
#include <string.h>
#include <time.h>

#include "proto/server_pressure.h"
#include "src/log.h"

static bool has(const char *text, const char *word)
{
	return strcasestr(text, word) != NULL;
}

/* "Suggested Backoff Time: 299961 milliseconds" (Microsoft 365), also
 * with "ms", "seconds" or "s".  0 when there is no such hint. */
static unsigned backoff_hint_ms(const char *text)
{
	const char *p = strcasestr(text, "backoff time");
	unsigned long long v = 0;
	bool digits = false;

	if (!p)
		return 0;
	p += strlen("backoff time");
	while (*p == ':' || *p == ' ' || *p == '=')
		p++;
	for (; isdigit((unsigned char)*p); p++) {
		digits = true;
		if (v < PRESSURE_PAUSE_MAX_MS)
			v = v * 10 + (unsigned)(*p - '0');
	}
	if (!digits)
		return 0;
	while (*p == ' ')
		p++;
	if (strncasecmp(p, "ms", 2) != 0 && strncasecmp(p, "milli", 5) != 0 &&
	    (*p == 's' || *p == 'S'))
		v *= 1000;   /* seconds */
	if (v > PRESSURE_PAUSE_MAX_MS)
		v = PRESSURE_PAUSE_MAX_MS;
	return v ? (unsigned)v : 1;
}

enum pressure_kind server_pressure_classify(const char *text, bool bye,
	unsigned *hint_ms_r)
{
	bool code;

	*hint_ms_r = 0;
	if (!text)
		return PRESSURE_NONE;
	code = has(text, "[UNAVAILABLE]") || has(text, "[LIMIT]");
	if (has(text, "too many simultaneous connections") ||
	    (has(text, "connections") && (code || has(text, "maximum number")
		|| has(text, "too many"))))
		return PRESSURE_CONNECTIONS;
	*hint_ms_r = backoff_hint_ms(text);
	/* [LIMIT] alone is an implementation limit (too many flags, too
	 * large a message): no reason to pause. */
	if (*hint_ms_r || has(text, "[UNAVAILABLE]") ||
	    has(text, "[THROTTLED]") ||
	    has(text, "throttl") ||
	    (bye && (has(text, "bandwidth") || has(text, "quota"))))
		return PRESSURE_THROTTLED;
	return PRESSURE_NONE;
}

int64_t server_pressure_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void server_pressure_init(struct server_pressure *p, unsigned max)
{
	memset(p, 0, sizeof(*p));
	p->max = p->allowed = max ? max : 1;
}

void server_pressure_limit(struct server_pressure *p, unsigned open)
{
	unsigned was = p->allowed;

	p->allowed = open < 1 ? 1 : open > p->max ? p->max : open;
	/* Refused again soon after growing: wait longer next time. */
	p->grow_wait_ms = p->grow_wait_ms ? p->grow_wait_ms * 2 :
		PRESSURE_GROW_MIN_MS;
	if (p->grow_wait_ms > PRESSURE_GROW_MAX_MS)
		p->grow_wait_ms = PRESSURE_GROW_MAX_MS;
	p->grow_at_ms = server_pressure_now_ms() + p->grow_wait_ms;
	if (!p->limit_logged || p->allowed < was)
		log_warn("the server allows no more connections: using %u of"
			" %u", p->allowed, p->max);
	p->limit_logged = true;
}

unsigned server_pressure_allowed(struct server_pressure *p)
{
	if (p->allowed < p->max && p->grow_at_ms &&
	    server_pressure_now_ms() >= p->grow_at_ms) {
		p->allowed++;
		p->grow_at_ms = p->allowed < p->max ?
			server_pressure_now_ms() + p->grow_wait_ms : 0;
	}
	return p->allowed;
}

void server_pressure_throttled(struct server_pressure *p, unsigned hint_ms)
{
	int64_t now = server_pressure_now_ms();
	unsigned ms = hint_ms;

	/* A minute after the last pause the next starts small again. */
	if (p->pause_until_ms && now > p->pause_until_ms + 60 * 1000)
		p->pause_ms = 0;
	if (!ms) {
		ms = p->pause_ms ? p->pause_ms * 2 : PRESSURE_PAUSE_MIN_MS;
		p->pause_ms = ms;
	}
	if (ms > PRESSURE_PAUSE_MAX_MS)
		ms = PRESSURE_PAUSE_MAX_MS;
	/* One more millisecond: now is rounded down. */
	if (now + ms + 1 > p->pause_until_ms)
		p->pause_until_ms = now + ms + 1;
}

void server_pressure_waiting(struct server_pressure *p, int64_t ms)
{
	if (!p->pause_logged)
		log_warn("the server asks to slow down: commands pause for"
			" %lld.%03lld s", (long long)ms / 1000,
			(long long)ms % 1000);
	p->pause_logged = true;
}

int64_t server_pressure_wait_ms(struct server_pressure *p)
{
	int64_t left;

	if (!p->pause_until_ms)
		return 0;
	left = p->pause_until_ms - server_pressure_now_ms();
	if (left > 0)
		return left;
	p->pause_logged = false;
	return 0;
}
