#include "src/token_source.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "src/errfmt.h"
#include "src/log.h"
#include "src/secret.h"
#include "src/secret_cmd.h"

struct token_source {
	pthread_mutex_t lock;
	const char *cmd;
	const char *label;
	char *token;            /* the token at hand, or NULL */
	int64_t handed_at;      /* when it was first handed out, 0: not yet */
	char *refused;          /* the last token the server refused */
	unsigned refusals;      /* in a row, without an acceptance */
	bool held;
	bool ever_accepted;     /* holds are news only after a token worked */
	int64_t refused_at;     /* when the last refusal came */
	int64_t polled_at;      /* when the command last ran while held */
	uint64_t runs;
	int64_t (*now)(void);   /* seconds, never going back */
};

/* Seconds on a clock that never goes back. */
static int64_t now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec;
}

struct token_source *token_source_new(const char *cmd, const char *label)
{
	struct token_source *ts = calloc(1, sizeof(*ts));

	if (!ts)
		return NULL;
	pthread_mutex_init(&ts->lock, NULL);
	ts->cmd = cmd;
	ts->label = label;
	ts->now = now_s;
	return ts;
}

void token_source_free(struct token_source *ts)
{
	if (!ts)
		return;
	secret_free(&ts->token);
	secret_free(&ts->refused);
	pthread_mutex_destroy(&ts->lock);
	free(ts);
}

/* Runs the command; under the lock. */
static char *run(struct token_source *ts, const char **error_r)
{
	char *tok = secret_cmd_run(ts->cmd, ts->label, TOKEN_CMD_TIMEOUT_MS,
		error_r);

	ts->runs++;
	/* A token goes into SASL responses: printable ASCII only. */
	for (const char *p = tok; p && *p; p++) {
		if (*p <= ' ' || *p > '~') {
			secret_free(&tok);
			*error_r = errfmt("%s printed a token with a blank or"
				" a character other than printable ASCII",
				ts->label);
			break;
		}
	}
	return tok;
}

static bool same(const char *a, const char *b)
{
	return a && b && strcmp(a, b) == 0;
}

/* Under the lock. */
static void enter_hold(struct token_source *ts)
{
	if (ts->held)
		return;
	ts->held = true;
	ts->polled_at = ts->refused_at;
	if (ts->ever_accepted)
		log_error("authentication refused: re-authorize the token"
			" command (%s); trying again at most every %d s",
			ts->label, TOKEN_HOLD_S);
}

enum token_status token_source_get(struct token_source *ts, char **token_r,
	const char **error_r)
{
	enum token_status st = TOKEN_OK;
	int64_t now;

	*token_r = NULL;
	pthread_mutex_lock(&ts->lock);
	now = ts->now();
	if (ts->held) {
		char *tok;

		if (now - ts->refused_at < TOKEN_HOLD_S &&
		    now - ts->polled_at < TOKEN_POLL_S) {   /* blocked */
			st = TOKEN_HELD;
			goto out;
		}
		ts->polled_at = now;
		tok = run(ts, error_r);
		if (!tok) {
			st = TOKEN_FAILED;
			goto out;
		}
		if (same(tok, ts->refused) && now - ts->refused_at <
		    TOKEN_HOLD_S) {
			secret_free(&tok);
			st = TOKEN_HELD;
			goto out;
		}
		/* A new token, or the hold is over: one more try. */
		secret_free(&ts->token);
		ts->token = tok;
		ts->handed_at = 0;
	} else if (!ts->token ||
		   (ts->handed_at && now - ts->handed_at >= TOKEN_REUSE_S)) {
		char *tok = run(ts, error_r);

		if (!tok) {
			st = TOKEN_FAILED;
			goto out;
		}
		if (same(tok, ts->refused)) {
			/* the command has nothing better to offer */
			secret_free(&tok);
			enter_hold(ts);
			st = TOKEN_HELD;
			goto out;
		}
		secret_free(&ts->token);
		ts->token = tok;
		ts->handed_at = 0;
	}
	*token_r = strdup(ts->token);
	if (!*token_r) {
		*error_r = "out of memory";
		st = TOKEN_FAILED;
		goto out;
	}
	if (!ts->handed_at)
		ts->handed_at = now;
out:
	pthread_mutex_unlock(&ts->lock);
	return st;
}

bool token_source_for_login(struct token_source *ts, int attempt,
	const char *user, const char *host, const char *refused_text,
	char **token_r, const char **error_r)
{
	switch (token_source_get(ts, token_r, error_r)) {
	case TOKEN_OK:
		return true;
	case TOKEN_HELD:
		*error_r = attempt == 0 ? "authentication refused: re-authorize"
			" the token command" : errfmt("login failed for %s at %s:"
			" %s; re-authorize the token command", user, host,
			refused_text);
		return false;
	case TOKEN_FAILED:
	default:
		return false;
	}
}

void token_source_refused(struct token_source *ts, const char *token)
{
	pthread_mutex_lock(&ts->lock);
	ts->refused_at = ts->now();
	/* Several connections refused with one token count once. */
	if (!same(token, ts->refused)) {
		secret_free(&ts->refused);
		ts->refused = token ? strdup(token) : NULL;
		ts->refusals++;
	}
	if (same(token, ts->token)) {
		/* the next authentication runs the command again */
		secret_free(&ts->token);
		ts->handed_at = 0;
	}
	if (ts->refusals >= 2)
		enter_hold(ts);
	pthread_mutex_unlock(&ts->lock);
}

void token_source_accepted(struct token_source *ts, const char *token)
{
	pthread_mutex_lock(&ts->lock);
	ts->refusals = 0;
	ts->ever_accepted = true;
	if (ts->held) {
		ts->held = false;
		log_info("%s: the server takes the token again", ts->label);
	}
	secret_free(&ts->refused);
	(void)token;
	pthread_mutex_unlock(&ts->lock);
}

bool token_source_blocked(struct token_source *ts)
{
	bool blocked;

	pthread_mutex_lock(&ts->lock);
	blocked = ts->held && ts->now() - ts->refused_at < TOKEN_HOLD_S &&
		ts->now() - ts->polled_at < TOKEN_POLL_S;
	pthread_mutex_unlock(&ts->lock);
	return blocked;
}

bool token_source_held(struct token_source *ts)
{
	bool held;

	pthread_mutex_lock(&ts->lock);
	held = ts->held;
	pthread_mutex_unlock(&ts->lock);
	return held;
}

void token_source_set_clock(struct token_source *ts, int64_t (*now)(void))
{
	pthread_mutex_lock(&ts->lock);
	ts->now = now;
	pthread_mutex_unlock(&ts->lock);
}

uint64_t token_source_runs(struct token_source *ts)
{
	uint64_t n;

	pthread_mutex_lock(&ts->lock);
	n = ts->runs;
	pthread_mutex_unlock(&ts->lock);
	return n;
}
