/* A server pushing back: too many connections, or too many requests.
 *
 * Providers limit each account: Gmail to 15 connections, Dovecot to 10
 * per user and address, and other clients of the account use some.  A
 * login past the limit is refused ("NO [UNAVAILABLE] Maximum number of
 * connections", "* BYE Too many simultaneous connections", "[LIMIT]").
 * Providers also throttle: Microsoft 365 answers "NO Request is
 * throttled. Suggested Backoff Time: 299961 milliseconds", others
 * "[THROTTLED]" or a BYE about bandwidth.  Retrying at once makes both
 * worse.
 *
 * server_pressure_classify() reads a server's words; struct
 * server_pressure is what one account's connection pool knows from them:
 * how many connections the server allows now (shrunk at a refusal,
 * grown back by one at a time, slowly), and until when commands pause.
 * Not locked: its owner's lock guards it (like struct reconnect_gate).
 */
#ifndef MAILFS_SERVER_PRESSURE_H
#define MAILFS_SERVER_PRESSURE_H

#include <stdbool.h>
#include <stdint.h>

enum pressure_kind {
	PRESSURE_NONE,
	PRESSURE_CONNECTIONS,   /* too many connections: use fewer */
	PRESSURE_THROTTLED,     /* too many requests: pause */
};

/* Longest pause a server can impose, whatever it hints (ms). */
#define PRESSURE_PAUSE_MAX_MS (10 * 60 * 1000)
/* A pause asked for without a time: doubles from this while repeated. */
#define PRESSURE_PAUSE_MIN_MS 1000
/* After shrinking, the pool tries one more connection this much later,
 * and doubles the wait each time the server refuses it again. */
#define PRESSURE_GROW_MIN_MS (2 * 60 * 1000)
#define PRESSURE_GROW_MAX_MS (60 * 60 * 1000)

/* What a server's answer (its text with any [CODE], or an error message
 * quoting it) means.  bye: it came with BYE, where bandwidth or quota
 * mean throttling (after NO a quota is a full mailbox, not a pause).
 * *hint_ms_r: the pause the server suggests, 0 when it names none. */
enum pressure_kind server_pressure_classify(const char *text, bool bye,
	unsigned *hint_ms_r);

struct server_pressure {
	unsigned max;            /* connections configured */
	unsigned allowed;        /* connections to use now, 1..max */
	int64_t grow_at_ms;      /* monotonic ms: try one more then */
	unsigned grow_wait_ms;
	int64_t pause_until_ms;  /* monotonic ms; 0: no pause */
	unsigned pause_ms;       /* the last pause without a hint */
	bool limit_logged, pause_logged;
};

/* Milliseconds of CLOCK_MONOTONIC. */
int64_t server_pressure_now_ms(void);

void server_pressure_init(struct server_pressure *p, unsigned max);

/* A login was refused for too many connections while `open` of ours
 * were open: use that many from now on (at least one).  Logged once. */
void server_pressure_limit(struct server_pressure *p, unsigned open);

/* The connections to use now: `allowed`, plus one when the time to grow
 * has come (then the next growth waits as long again). */
unsigned server_pressure_allowed(struct server_pressure *p);

/* The server asked to slow down: pause for hint_ms, or without a hint
 * for PRESSURE_PAUSE_MIN_MS doubling while repeated; at most
 * PRESSURE_PAUSE_MAX_MS. */
void server_pressure_throttled(struct server_pressure *p, unsigned hint_ms);

/* A command waits (or gives up) for the pause, ms left: logged once per
 * pause, so that a refusal nothing waits for stays quiet. */
void server_pressure_waiting(struct server_pressure *p, int64_t ms);

/* Milliseconds until the pause ends (0: none).  Ends the episode when
 * it is over. */
int64_t server_pressure_wait_ms(struct server_pressure *p);

#endif
