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
	return check_summary("sasl");
}
