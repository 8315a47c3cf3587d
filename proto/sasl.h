/* SASL mechanisms, the same for IMAP, POP3 and SMTP.
 *
 * One table says which mechanisms mailfs speaks and what each needs:
 *   PLAIN        RFC 4616; the password
 *   LOGIN        the old two-step form; the password
 *   XOAUTH2      Google's and Microsoft's bearer-token form; a token
 *   OAUTHBEARER  RFC 7628; a token
 * The protocols only frame what this module builds: the initial response
 * (sent with the command when the server takes one: IMAP SASL-IR, SMTP and
 * POP3 AUTH with a response), and the answer to each later challenge.
 *
 * Responses are raw bytes (the caller base64-encodes them), malloc'd and
 * owned by the caller, who wipes them (sasl_free) since they hold
 * secrets.  Pure code.
 */
#ifndef MAILFS_SASL_H
#define MAILFS_SASL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum sasl_mech {
	SASL_NONE = 0,
	SASL_PLAIN,
	SASL_LOGIN,
	SASL_XOAUTH2,
	SASL_OAUTHBEARER,
};

/* What -o auth= asks for. */
enum sasl_choice {
	SASL_AUTO,          /* the best the server offers for the secret */
	SASL_ONLY_PLAIN,
	SASL_ONLY_LOGIN,
	SASL_ONLY_XOAUTH2,
	SASL_ONLY_OAUTHBEARER,
};

/* "PLAIN", "XOAUTH2", ...; NULL for SASL_NONE. */
const char *sasl_name(enum sasl_mech mech);

/* Whether mech takes an OAuth2 access token rather than a password. */
bool sasl_wants_token(enum sasl_mech mech);

/* Parses the value of -o auth= ("auto", "plain", "login", "xoauth2",
 * "oauthbearer", any case).  false when unknown. */
bool sasl_choice_parse(const char *text, enum sasl_choice *choice_r);

/* The mechanism to use: for a token (have_token), OAUTHBEARER, then
 * XOAUTH2; for a password, PLAIN, then LOGIN; among those that
 * offered(name, ctx) says the server offers, or just the one choice names.
 * SASL_NONE when there is none, with *error_r saying why. */
enum sasl_mech sasl_choose(enum sasl_choice choice, bool have_token,
	bool (*offered)(const char *name, void *ctx), void *ctx,
	const char **error_r);

/* Everything a response may carry.  host and port (the server's, as the
 * client reached it) go into OAUTHBEARER's response; user is the
 * authorization identity, secret the password or token. */
struct sasl_client {
	enum sasl_mech mech;
	const char *user;
	const char *secret;
	const char *host;
	uint16_t port;
	unsigned step;      /* responses given so far */
};

/* The initial response of c's mechanism (LOGIN: the user name, as the
 * answer to the first prompt), in *len_r bytes; NULL when out of memory. */
unsigned char *sasl_initial_response(struct sasl_client *c, size_t *len_r);

/* The answer to a challenge (raw, already base64-decoded) coming after
 * the initial response; NULL when out of memory.  *cancel_r is set when
 * the challenge makes no sense for the mechanism and the client should
 * cancel the exchange ("*").  An OAuth2 error challenge (JSON) is
 * answered as each mechanism requires (XOAUTH2: an empty response;
 * OAUTHBEARER: a single 0x01), so that the server sends its final
 * failure. */
unsigned char *sasl_next_response(struct sasl_client *c,
	const unsigned char *challenge, size_t challenge_len, size_t *len_r,
	bool *cancel_r);

/* How a protocol frames one exchange for sasl_exchange().  Every line
 * these send carries a secret: kept out of the debug log. */
struct sasl_framing {
	/* Sends the command that starts an exchange with mechanism `name`,
	 * with `initial` (base64, "=" when empty) on the same line if the
	 * protocol allows a line that long, else without it (initial is NULL
	 * for LOGIN).  Returns 1 when initial went on the line, 0 when not,
	 * -1 when the exchange failed. */
	int (*start)(void *ctx, const char *name, const char *initial);
	/* Sends one line: base64, "" for an empty response, "*" to cancel.
	 * 0, or -1 when the exchange failed. */
	int (*send)(void *ctx, const char *line);
	/* Reads the server's next answer: 1 for a challenge, its base64 text
	 * (blanks after the marker skipped) in *text_r, *len_r (valid until
	 * the next call); 0 for the final answer, which the protocol keeps;
	 * -1 when the exchange failed. */
	int (*read)(void *ctx, const char **text_r, size_t *len_r);
};

enum sasl_result {
	SASL_DONE,          /* the server gave its final answer */
	SASL_FAILED,        /* the framing failed (it says why) */
	SASL_NO_MEMORY,
	SASL_ENDLESS,       /* the server challenges on after a cancel: the
	                       exchange is out of step */
};

/* One exchange of c's mechanism through f: the command with the initial
 * response (or the response to the first prompt: LOGIN, or a server that
 * takes none on the line), then an answer to each challenge as
 * sasl_next_response() gives it, at most a few, then "*".  A server that
 * sends an empty first challenge although the initial response rode on
 * the command (Microsoft's two-step XOAUTH2) gets the initial response
 * again. */
enum sasl_result sasl_exchange(struct sasl_client *c,
	const struct sasl_framing *f, void *ctx);

/* Wipes and frees a response. */
void sasl_free(unsigned char *response, size_t len);

/* Base64 (RFC 4648, with padding) of data: malloc'd, NUL-terminated;
 * NULL when out of memory. */
char *sasl_b64_encode(const unsigned char *data, size_t len);

/* Decodes base64 text (len bytes, no line breaks); malloc'd (with a NUL
 * after the *len_r bytes), NULL when it is not valid base64 or out of
 * memory. */
unsigned char *sasl_b64_decode(const char *text, size_t len, size_t *len_r);

#endif
