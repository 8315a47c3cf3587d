/* OAuth2 access tokens from a token command, for a daemon that lives
 * longer than any token.
 *
 * The command (token_cmd) prints a current access token on its first line;
 * helpers such as pizauth or oama keep the refresh token and renew it.  A
 * token is asked for at every authentication, and the command is run:
 *   - when no token is at hand;
 *   - when the token at hand was first handed out TOKEN_REUSE_S ago or
 *     more (tokens live about an hour; this keeps one from expiring in
 *     mid-use without running the command for every connection);
 *   - when the server refused the token at hand.
 * A refused token is retried once with the command's next output.  When
 * that is refused too (or the command prints the refused token again), the
 * source is held: for TOKEN_HOLD_S after the last refusal no token is
 * handed out (callers fail at once with an authentication error, and the
 * server is not asked), except that the command is run again at most every
 * TOKEN_POLL_S and a token different from the refused one ends the hold.
 * Entering the hold is logged once, as is leaving it (not before a token
 * has ever worked: then the caller's error is the news).
 *
 * Tokens are never logged and are wiped from memory when dropped.  The
 * command runs under the source's lock, so concurrent authentications
 * wait for one run instead of starting several.  Thread-safe.
 */
#ifndef MAILFS_TOKEN_SOURCE_H
#define MAILFS_TOKEN_SOURCE_H

#include <stdbool.h>
#include <stdint.h>

#define TOKEN_REUSE_S 300
#define TOKEN_HOLD_S 30
#define TOKEN_POLL_S 5
#define TOKEN_CMD_TIMEOUT_MS (30 * 1000)

enum token_status {
	TOKEN_OK,       /* *token_r is set */
	TOKEN_FAILED,   /* the command failed; *error_r says why */
	TOKEN_HELD,     /* tokens were refused: do not authenticate now */
};

struct token_source;

/* A source running cmd (borrowed; it must outlive the source).  label
 * names it in the log ("token_cmd").  NULL when out of memory. */
struct token_source *token_source_new(const char *cmd, const char *label);
void token_source_free(struct token_source *ts);

/* A token for one authentication: a malloc'd copy owned by the caller
 * (wipe it with secret_free), to be reported back with
 * token_source_refused or token_source_accepted. */
enum token_status token_source_get(struct token_source *ts, char **token_r,
	const char **error_r);

/* token_source_get for attempt 0 or 1 of one login: true with *token_r,
 * or false with *error_r saying why there is none (the command failed;
 * tokens are held: after a refusal in this login, the error quotes
 * refused_text, the server's words, for user at host). */
bool token_source_for_login(struct token_source *ts, int attempt,
	const char *user, const char *host, const char *refused_text,
	char **token_r, const char **error_r);

/* The server refused token (the caller's copy from token_source_get). */
void token_source_refused(struct token_source *ts, const char *token);

/* The server took token: ends a hold. */
void token_source_accepted(struct token_source *ts, const char *token);

/* Whether token_source_get would answer TOKEN_HELD without running the
 * command: callers can fail before they connect. */
bool token_source_blocked(struct token_source *ts);

/* Whether the source is held (for status reports). */
bool token_source_held(struct token_source *ts);

/* How many times the command has run (for tests and statistics). */
uint64_t token_source_runs(struct token_source *ts);

/* Replaces the clock (seconds, never going back): for tests. */
void token_source_set_clock(struct token_source *ts, int64_t (*now)(void));

#endif
