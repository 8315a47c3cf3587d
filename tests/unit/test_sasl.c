/* Unit tests for the SASL mechanisms (proto/sasl.c). */
#include "proto/sasl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/check.h"

static bool offers(const char *name, void *ctx)
{
	return strstr((const char *)ctx, name) != NULL;
}

static void expect_initial(enum sasl_mech mech, const char *user,
	const char *secret, const char *host, unsigned port,
	const char *want, size_t want_len, int line)
{
	struct sasl_client c = { .mech = mech, .user = user,
		.secret = secret, .host = host, .port = (uint16_t)port };
	size_t len = 0;
	unsigned char *r = sasl_initial_response(&c, &len);

	checks++;
	if (!r || len != want_len || memcmp(r, want, len) != 0) {
		failures++;
		fprintf(stderr, "%s:%d: FAIL: %s initial response\n",
			__FILE__, line, sasl_name(mech));
	}
	sasl_free(r, len);
}

#define INITIAL(m, u, s, h, p, want) \
	expect_initial(m, u, s, h, p, want, sizeof(want) - 1, __LINE__)

/* A scripted server for sasl_exchange(): answers[] in turn, each "+text"
 * (a challenge) or "." (the final answer); what the client sends is
 * joined with '|' in sent. */
struct script {
	const char *const *answers;
	size_t next;
	bool ir;                /* the command line takes an initial response */
	char sent[512];
};

static void record(struct script *sc, const char *a, const char *b)
{
	size_t n = strlen(sc->sent);

	snprintf(sc->sent + n, sizeof(sc->sent) - n, "%s%s%s",
		n > 0 ? "|" : "", a, b);
}

static int script_start(void *ctx, const char *name, const char *initial)
{
	struct script *sc = ctx;
	bool on_line = initial != NULL && sc->ir;

	record(sc, name, "");
	if (on_line) {
		size_t n = strlen(sc->sent);

		snprintf(sc->sent + n, sizeof(sc->sent) - n, " %s", initial);
	}
	return on_line;
}

static int script_send(void *ctx, const char *line)
{
	record(ctx, line, "");
	return 0;
}

static int script_read(void *ctx, const char **text_r, size_t *len_r)
{
	struct script *sc = ctx;
	const char *a = sc->answers[sc->next];

	if (a == NULL)
		return -1;
	sc->next++;
	if (a[0] != '+')
		return 0;
	*text_r = a + 1;
	*len_r = strlen(a + 1);
	return 1;
}

static const struct sasl_framing script_framing = {
	.start = script_start,
	.send = script_send,
	.read = script_read,
};

static void expect_exchange(enum sasl_mech mech, bool ir,
	const char *const *answers, enum sasl_result want_res,
	const char *want_sent, int line)
{
	struct sasl_client c = { .mech = mech, .user = "u", .secret = "p",
		.host = "h", .port = 1 };
	struct script sc = { .answers = answers, .ir = ir };
	enum sasl_result res = sasl_exchange(&c, &script_framing, &sc);

	checks++;
	if (res != want_res || strcmp(sc.sent, want_sent) != 0) {
		failures++;
		fprintf(stderr, "%s:%d: FAIL: %s exchange: %d, sent %s\n",
			__FILE__, line, sasl_name(mech), (int)res, sc.sent);
	}
}

#define EXCHANGE(m, ir, want_res, want_sent, ...) \
	expect_exchange(m, ir, (const char *const []){ __VA_ARGS__, NULL }, \
		want_res, want_sent, __LINE__)

static void test_exchange(void)
{
	/* "\0u\0p" */
	EXCHANGE(SASL_PLAIN, true, SASL_DONE, "PLAIN AHUAcA==", ".");
	EXCHANGE(SASL_PLAIN, false, SASL_DONE, "PLAIN|AHUAcA==", "+", ".");
	/* An empty first challenge after the initial response on the line
	 * gets it again (Microsoft's two-step XOAUTH2). */
	EXCHANGE(SASL_PLAIN, true, SASL_DONE, "PLAIN AHUAcA==|AHUAcA==",
		"+", ".");
	/* LOGIN answers the prompts: the user, then the password. */
	EXCHANGE(SASL_LOGIN, true, SASL_DONE, "LOGIN|dQ==|cA==",
		"+VXNlcm5hbWU6", "+UGFzc3dvcmQ6", ".");
	/* A challenge PLAIN cannot answer is cancelled; one more after the
	 * cancel puts the exchange out of step. */
	EXCHANGE(SASL_PLAIN, true, SASL_ENDLESS, "PLAIN AHUAcA==|*",
		"+eA==", "+eA==", ".");
	EXCHANGE(SASL_PLAIN, true, SASL_DONE, "PLAIN AHUAcA==|*",
		"+eA==", ".");
	/* Challenges that are not base64 are cancelled too. */
	EXCHANGE(SASL_PLAIN, true, SASL_DONE, "PLAIN AHUAcA==|*", "+!!", ".");
	/* The framing failing ends it. */
	EXCHANGE(SASL_PLAIN, true, SASL_FAILED, "PLAIN AHUAcA==|*", "+eA==");
}

int main(void)
{
	const char *err = NULL;
	enum sasl_choice ch;

	INITIAL(SASL_PLAIN, "alice", "pw", NULL, 0, "\0alice\0pw");
	INITIAL(SASL_LOGIN, "alice", "pw", NULL, 0, "alice");
	INITIAL(SASL_XOAUTH2, "alice@example.com", "ya29.t", NULL, 0,
		"user=alice@example.com\001auth=Bearer ya29.t\001\001");
	INITIAL(SASL_OAUTHBEARER, "a,b=c@x", "tok", "imap.example.com", 993,
		"n,a=a=2Cb=3Dc@x,\001host=imap.example.com\001port=993\001"
		"auth=Bearer tok\001\001");

	/* choosing */
	CHECK(sasl_choose(SASL_AUTO, true, offers, "PLAIN XOAUTH2 OAUTHBEARER",
		&err) == SASL_OAUTHBEARER);
	CHECK(sasl_choose(SASL_AUTO, true, offers, "PLAIN XOAUTH2", &err) ==
		SASL_XOAUTH2);
	CHECK(sasl_choose(SASL_AUTO, true, offers, "PLAIN LOGIN", &err) ==
		SASL_NONE && strstr(err, "neither OAUTHBEARER"));
	CHECK(sasl_choose(SASL_AUTO, false, offers, "LOGIN XOAUTH2", &err) ==
		SASL_LOGIN);
	CHECK(sasl_choose(SASL_ONLY_XOAUTH2, true, offers,
		"XOAUTH2 OAUTHBEARER", &err) == SASL_XOAUTH2);
	CHECK(sasl_choose(SASL_ONLY_XOAUTH2, false, offers, "XOAUTH2",
		&err) == SASL_NONE && strstr(err, "token_cmd"));
	CHECK(sasl_choose(SASL_ONLY_PLAIN, true, offers, "PLAIN", &err) ==
		SASL_NONE);
	CHECK(sasl_choose(SASL_ONLY_OAUTHBEARER, true, offers, "XOAUTH2",
		&err) == SASL_NONE && strstr(err, "OAUTHBEARER"));
	CHECK(sasl_choice_parse("XOAuth2", &ch) && ch == SASL_ONLY_XOAUTH2);
	CHECK(!sasl_choice_parse("cram-md5", &ch));

	/* the answers to later challenges */
	struct sasl_client c = { .mech = SASL_XOAUTH2, .user = "u",
		.secret = "t", .step = 1 };
	size_t len = 99;
	bool cancel;
	unsigned char *r = sasl_next_response(&c,
		(const unsigned char *)"{\"status\":\"401\"}", 16, &len, &cancel);

	CHECK(r && len == 0 && !cancel);
	sasl_free(r, len);
	r = sasl_next_response(&c, (const unsigned char *)"", 0, &len,
		&cancel);
	CHECK(cancel);
	sasl_free(r, len);
	c.mech = SASL_OAUTHBEARER;
	c.step = 1;
	r = sasl_next_response(&c, (const unsigned char *)"{}", 2, &len,
		&cancel);
	CHECK(r && len == 1 && r[0] == 1 && !cancel);
	sasl_free(r, len);
	c.mech = SASL_LOGIN;
	c.step = 1;
	c.secret = "secret";
	r = sasl_next_response(&c, (const unsigned char *)"Password:", 9,
		&len, &cancel);
	CHECK(r && len == 6 && memcmp(r, "secret", 6) == 0 && !cancel);
	sasl_free(r, len);
	c.mech = SASL_PLAIN;
	c.step = 1;
	r = sasl_next_response(&c, (const unsigned char *)"?", 1, &len,
		&cancel);
	CHECK(cancel);
	sasl_free(r, len);

	/* base64 */
	const char *samples[] = { "", "f", "fo", "foo", "foob", "fooba",
		"foobar" };
	const char *b64[] = { "", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==",
		"Zm9vYmE=", "Zm9vYmFy" };

	for (size_t i = 0; i < 7; i++) {
		char *e = sasl_b64_encode((const unsigned char *)samples[i],
			strlen(samples[i]));
		size_t n = 0;
		unsigned char *d = sasl_b64_decode(b64[i], strlen(b64[i]), &n);

		CHECK(e && strcmp(e, b64[i]) == 0, "%s", b64[i]);
		CHECK(d && n == strlen(samples[i]) &&
		      memcmp(d, samples[i], n) == 0, "%s", b64[i]);
		free(e);
		free(d);
	}
	const char *bad[] = { "Zg=", "Z===", "Zg=a", "Zm9v!A==", "=Zm9" };

	for (size_t i = 0; i < 5; i++) {
		size_t n;
		unsigned char *d = sasl_b64_decode(bad[i], strlen(bad[i]), &n);

		CHECK(!d, "%s", bad[i]);
		free(d);
	}
	test_exchange();
	return check_summary("sasl");
}
