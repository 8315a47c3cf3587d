/* Unit tests for token commands (src/secret_cmd.c) and the token source
 * (src/token_source.c): real commands run by /bin/sh, a fake clock. */
#include "src/token_source.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "src/log.h"
#include "src/secret.h"
#include "src/secret_cmd.h"
#include "tests/unit/check.h"

static int64_t fake_now = 1000;

static int64_t fake_clock(void)
{
	return fake_now;
}

static char dir[] = "/tmp/mailfs-test-token.XXXXXX";
static char counting_cmd[512];

/* Gets a token and checks what came back. */
static void expect(struct token_source *ts, enum token_status want_st,
	const char *want_tok, int line)
{
	char *tok = NULL;
	const char *err = NULL;
	enum token_status st = token_source_get(ts, &tok, &err);

	checks++;
	if (st != want_st || (want_tok && (!tok || strcmp(tok, want_tok)))) {
		failures++;
		fprintf(stderr, "%s:%d: FAIL: got %d \"%s\" (%s), want %d"
			" \"%s\"\n", __FILE__, line, st, tok ? tok : "",
			err ? err : "", want_st, want_tok ? want_tok : "");
	}
	secret_free(&tok);
}

#define EXPECT(ts, st, tok) expect(ts, st, tok, __LINE__)

static void test_reuse_and_renewal(void)
{
	struct token_source *ts = token_source_new(counting_cmd, "token_cmd");

	token_source_set_clock(ts, fake_clock);
	EXPECT(ts, TOKEN_OK, "tok1");
	EXPECT(ts, TOKEN_OK, "tok1");
	CHECK(token_source_runs(ts) == 1);
	fake_now += TOKEN_REUSE_S - 1;
	EXPECT(ts, TOKEN_OK, "tok1");
	fake_now += 1;
	EXPECT(ts, TOKEN_OK, "tok2");
	CHECK(token_source_runs(ts) == 2);

	/* refused: retried once with the next output */
	token_source_refused(ts, "tok2");
	CHECK(!token_source_held(ts));
	EXPECT(ts, TOKEN_OK, "tok3");
	/* several connections refused with one token count once */
	token_source_refused(ts, "tok3");
	token_source_refused(ts, "tok3");
	CHECK(token_source_held(ts));
	uint64_t runs = token_source_runs(ts);

	EXPECT(ts, TOKEN_HELD, NULL);
	CHECK(token_source_runs(ts) == runs, "held: the command does not run");
	/* after the poll interval the command runs; a new token ends it */
	fake_now += TOKEN_POLL_S;
	EXPECT(ts, TOKEN_OK, "tok4");
	token_source_accepted(ts, "tok4");
	CHECK(!token_source_held(ts));
	EXPECT(ts, TOKEN_OK, "tok4");
	token_source_free(ts);
}

static void test_stale_token_holds(void)
{
	struct token_source *ts = token_source_new("echo stale", "token_cmd");

	token_source_set_clock(ts, fake_clock);
	EXPECT(ts, TOKEN_OK, "stale");
	token_source_refused(ts, "stale");
	/* the command prints the refused token again: no second try */
	EXPECT(ts, TOKEN_HELD, NULL);
	CHECK(token_source_held(ts));
	CHECK(token_source_runs(ts) == 2);
	fake_now += TOKEN_POLL_S;
	EXPECT(ts, TOKEN_HELD, NULL);
	CHECK(token_source_runs(ts) == 3);
	/* once the hold is over, one try even with the same token */
	fake_now += TOKEN_HOLD_S;
	EXPECT(ts, TOKEN_OK, "stale");
	token_source_refused(ts, "stale");
	EXPECT(ts, TOKEN_HELD, NULL);
	token_source_free(ts);
}

static void test_bad_commands(void)
{
	struct {
		const char *cmd;
		const char *error_part;
	} bad[] = {
		{ "echo oops >&2; exit 3", "exit status 3" },
		{ "true", "printed nothing" },
		{ "printf '\\n'", "printed nothing" },
		{ "echo 'two words'", "blank" },
		{ "printf 'a\\001b\\n'", "printable" },
		{ "head -c 70000 /dev/zero | tr '\\\\0' a", "longer than" },
		{ "kill -9 $$", "signal 9" },
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct token_source *ts = token_source_new(bad[i].cmd, "t");
		char *tok = NULL;
		const char *err = NULL;

		CHECK(token_source_get(ts, &tok, &err) == TOKEN_FAILED,
			"%s", bad[i].cmd);
		CHECK(!tok && err && strstr(err, bad[i].error_part),
			"%s: %s", bad[i].cmd, err ? err : "(none)");
		token_source_free(ts);
	}
}

static void test_commands(void)
{
	const char *err = NULL;
	char *s;

	/* only the first line, CR LF taken off */
	s = secret_cmd_run("printf 'first\\r\\nsecond\\n'", "c", 5000, &err);
	CHECK(s && strcmp(s, "first") == 0, "%s", s ? s : err);
	secret_free(&s);
	/* a large output is read to its end */
	s = secret_cmd_run("echo big; head -c 200000 /dev/zero", "c", 5000,
		&err);
	CHECK(s && strcmp(s, "big") == 0, "%s", s ? s : err);
	secret_free(&s);
	/* stopped at the timeout, whatever it started */
	s = secret_cmd_run("sleep 30", "c", 300, &err);
	CHECK(!s && err && strstr(err, "did not finish"), "%s",
		err ? err : "");
	/* a background job holding the pipe does not hold the result */
	s = secret_cmd_run("sleep 30 & echo quick", "c", 10000, &err);
	CHECK(s && strcmp(s, "quick") == 0, "%s", s ? s : err);
	secret_free(&s);
	/* no input: stdin is /dev/null */
	s = secret_cmd_run("cat; echo done", "c", 5000, &err);
	CHECK(s && strcmp(s, "done") == 0, "%s", s ? s : err);
	secret_free(&s);
}

int main(void)
{
	log_init(false, false);
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(counting_cmd, sizeof(counting_cmd),
		"f=%s/n; n=$(cat $f 2>/dev/null || echo 0); n=$((n+1));"
		" echo $n >$f; echo tok$n", dir);
	test_reuse_and_renewal();
	test_stale_token_holds();
	test_bad_commands();
	test_commands();
	char path[600];

	snprintf(path, sizeof(path), "%s/n", dir);
	unlink(path);
	rmdir(dir);
	return check_summary("token_source");
}
