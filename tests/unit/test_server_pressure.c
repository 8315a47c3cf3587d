/* Reading servers' push-back, and the pool size and pause it leaves. */
#include <string.h>

#include "proto/server_pressure.h"
#include "tests/unit/check.h"

static void test_classify(void)
{
	unsigned hint;

	CHECK(server_pressure_classify("[UNAVAILABLE] Maximum number of "
		"connections from user+IP exceeded", false, &hint) ==
		PRESSURE_CONNECTIONS);
	CHECK(server_pressure_classify("[LIMIT] Maximum number of connections"
		" from user+IP exceeded (mail_max_userip_connections=2)", false,
		&hint) == PRESSURE_CONNECTIONS);
	CHECK(server_pressure_classify("Too many simultaneous connections. "
		"(Failure)", true, &hint) == PRESSURE_CONNECTIONS);
	CHECK(server_pressure_classify("[ALERT] Too many simultaneous "
		"connections. (Failure)", false, &hint) ==
		PRESSURE_CONNECTIONS);
	CHECK(server_pressure_classify("Request is throttled. Suggested "
		"Backoff Time: 299961 milliseconds", false, &hint) ==
		PRESSURE_THROTTLED && hint == 299961, "hint %u", hint);
	CHECK(server_pressure_classify("Suggested Backoff Time: 5 seconds",
		false, &hint) == PRESSURE_THROTTLED && hint == 5000,
		"hint %u", hint);
	CHECK(server_pressure_classify("Suggested Backoff Time: 99999999999 "
		"milliseconds", false, &hint) == PRESSURE_THROTTLED &&
		hint == PRESSURE_PAUSE_MAX_MS, "bounded: %u", hint);
	CHECK(server_pressure_classify("[THROTTLED] slow down", false,
		&hint) == PRESSURE_THROTTLED && hint == 0);
	CHECK(server_pressure_classify("[UNAVAILABLE] backend down", false,
		&hint) == PRESSURE_THROTTLED);
	CHECK(server_pressure_classify("Account exceeded bandwidth limits",
		true, &hint) == PRESSURE_THROTTLED);
	/* Not a reason to pause: a full mailbox, an implementation limit. */
	CHECK(server_pressure_classify("[OVERQUOTA] quota exceeded", false,
		&hint) == PRESSURE_NONE);
	CHECK(server_pressure_classify("[LIMIT] too many flags", false,
		&hint) == PRESSURE_NONE);
	CHECK(server_pressure_classify("Fetch completed (0.001 + 0.000 secs).",
		false, &hint) == PRESSURE_NONE);
	CHECK(server_pressure_classify(NULL, false, &hint) == PRESSURE_NONE);
}

static void test_state(void)
{
	struct server_pressure p;

	server_pressure_init(&p, 4);
	CHECK(server_pressure_allowed(&p) == 4);
	server_pressure_limit(&p, 0);
	CHECK(server_pressure_allowed(&p) == 1, "at least one");
	server_pressure_limit(&p, 2);
	CHECK(server_pressure_allowed(&p) == 2);
	CHECK(p.grow_at_ms > server_pressure_now_ms(), "grows later");
	p.grow_at_ms = server_pressure_now_ms() - 1;
	CHECK(server_pressure_allowed(&p) == 3, "one more");
	CHECK(server_pressure_allowed(&p) == 3, "then waits again");

	CHECK(server_pressure_wait_ms(&p) == 0);
	server_pressure_throttled(&p, 2000);
	CHECK(server_pressure_wait_ms(&p) > 1900 &&
		server_pressure_wait_ms(&p) <= 2001);
	p.pause_until_ms = server_pressure_now_ms() - 1;
	CHECK(server_pressure_wait_ms(&p) == 0, "over");
	server_pressure_throttled(&p, 0);
	CHECK(server_pressure_wait_ms(&p) > 0 &&
		server_pressure_wait_ms(&p) <= PRESSURE_PAUSE_MIN_MS + 1);
	p.pause_until_ms = server_pressure_now_ms() - 1;
	server_pressure_throttled(&p, 0);
	CHECK(server_pressure_wait_ms(&p) > PRESSURE_PAUSE_MIN_MS,
		"a repeated pause without a hint doubles");
}

int main(void)
{
	test_classify();
	test_state();
	return check_summary("server_pressure");
}
