/* Unit tests for modified UTF-7 (proto/mutf7.c). */
#include "proto/mutf7.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/check.h"

/* Compares a malloc'd result with the expected string (NULL meaning
 * "rejected") and frees it. */
static void expect(const char *what, const char *in, char *got,
		   const char *want, int line)
{
	checks++;
	if ((got == NULL) != (want == NULL) ||
	    (got && strcmp(got, want) != 0)) {
		failures++;
		fprintf(stderr, "%s:%d: FAIL: %s(\"%s\") = %s%s%s, want %s%s%s\n",
			__FILE__, line, what, in,
			got ? "\"" : "", got ? got : "NULL", got ? "\"" : "",
			want ? "\"" : "", want ? want : "NULL",
			want ? "\"" : "");
	}
	free(got);
}

#define DEC(in, want) expect("mutf7_decode", in, mutf7_decode(in), want, \
			     __LINE__)
#define ENC(in, want) expect("mutf7_encode", in, mutf7_encode(in), want, \
			     __LINE__)
/* both directions */
#define BOTH(utf8, m7) do { ENC(utf8, m7); DEC(m7, utf8); } while (0)

static void test_round_trips(void)
{
	BOTH("", "");
	BOTH("INBOX", "INBOX");
	BOTH("Sent Items", "Sent Items");
	BOTH("~!\"#$%'()*+,-./:;<=>?@[\\]^_`{|}", "~!\"#$%'()*+,-./:;<=>?@[\\]^_`{|}");
	BOTH("Entwürfe", "Entw&APw-rfe");
	BOTH("&", "&-");
	BOTH("&&", "&-&-");
	BOTH("&-", "&--");
	BOTH("-", "-");
	BOTH("Projects/2026/Q1 & Q2", "Projects/2026/Q1 &- Q2");
	BOTH("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-");
	BOTH("日本語のフォルダ", "&ZeVnLIqeMG4w1TCpMOswwA-");
	BOTH("😀", "&2D3eAA-");
	BOTH("a😀b🎉", "a&2D3eAA-b&2DzfiQ-");
	BOTH("äö", "&AOQA9g-");
	BOTH("ä&", "&AOQ-&-");
	BOTH("Ünïcödé & more", "&ANw-n&AO8-c&APY-d&AOk- &- more");
	/* controls are not printable, so they are shifted */
	BOTH("a\tb", "a&AAk-b");
	BOTH("\x7f", "&AH8-");
	/* highest scalar value */
	BOTH("\xf4\x8f\xbf\xbf", "&2,,f,w-");
}

static void test_decode_rejects(void)
{
	/* unterminated shift */
	DEC("&", NULL);
	DEC("&AGE", NULL);
	DEC("Entw&APw", NULL);
	DEC("Entw&APwrfe", NULL);
	DEC("&&-", NULL);
	/* bad base64 characters ('/' and '=' are plain base64 only) */
	DEC("&AP/-", NULL);
	DEC("&APw=-", NULL);
	DEC("&A.w-", NULL);
	DEC("&AP w-", NULL);
	/* non-zero leftover bits */
	DEC("&APx-", NULL);
	DEC("&AOQA9h-", NULL);
	/* leftover bits that fill a whole base64 char */
	DEC("&APwA-", NULL);
	DEC("&A-", NULL);
	DEC("&AA-", NULL);
	/* shifted printable ASCII, including '&' and space */
	DEC("&AGE-", NULL);
	DEC("&ACY-", NULL);
	DEC("&ACA-", NULL);
	DEC("&AH4-", NULL);
	DEC("&AOQAYQ-", NULL);
	/* surrogates: lone high, lone low, reversed, high+high, high at
	 * the end of a run */
	DEC("&2D0-", NULL);
	DEC("&3gA-", NULL);
	DEC("&3gDYPQ-", NULL);
	DEC("&2D3YPQ-", NULL);
	DEC("&2D0-&3gA-", NULL);
	DEC("&AOTYPQ-", NULL);
	/* encoded NUL */
	DEC("&AAA-", NULL);
	DEC("a&AOQAAA-", NULL);
	/* raw bytes outside printable ASCII */
	DEC("Entw\xc3\xbcrfe", NULL);
	DEC("a\tb", NULL);
	DEC("\x7f", NULL);
	DEC("\x80", NULL);
	/* two runs back to back have one canonical form */
	DEC("&AOQ-&APY-", NULL);
	DEC(NULL, NULL);
}

static void test_encode_rejects(void)
{
	ENC("\xff", NULL);
	ENC("\x80", NULL);
	ENC("a\xc3", NULL);		/* truncated */
	ENC("a\xc3(", NULL);		/* bad continuation */
	ENC("\xe6\x97", NULL);
	ENC("\xc0\xaf", NULL);		/* overlong '/' */
	ENC("\xc1\xbf", NULL);
	ENC("\xe0\x80\xaf", NULL);
	ENC("\xe0\x9f\xbf", NULL);
	ENC("\xf0\x80\x80\xaf", NULL);
	ENC("\xf0\x8f\xbf\xbf", NULL);
	ENC("\xed\xa0\x80", NULL);	/* U+D800 */
	ENC("\xed\xbf\xbf", NULL);	/* U+DFFF */
	ENC("\xed\xa0\xbd\xed\xb8\x80", NULL);	/* CESU-8 pair */
	ENC("\xf4\x90\x80\x80", NULL);	/* U+110000 */
	ENC("\xf5\x80\x80\x80", NULL);
	ENC("\xf8\x88\x80\x80\x80", NULL);
	ENC(NULL, NULL);
	/* just inside the limits */
	ENC("\xed\x9f\xbf", "&1,8-");
	ENC("\xee\x80\x80", "&4AA-");
}

static uint32_t rng_state = 2463534242u;

static uint32_t rnd(void)
{
	return check_xorshift(&rng_state);
}

static size_t put_utf8(char *o, uint32_t c)
{
	if (c < 0x80) {
		o[0] = (char)c;
		return 1;
	}
	if (c < 0x800) {
		o[0] = (char)(0xc0 | (c >> 6));
		o[1] = (char)(0x80 | (c & 0x3f));
		return 2;
	}
	if (c < 0x10000) {
		o[0] = (char)(0xe0 | (c >> 12));
		o[1] = (char)(0x80 | ((c >> 6) & 0x3f));
		o[2] = (char)(0x80 | (c & 0x3f));
		return 3;
	}
	o[0] = (char)(0xf0 | (c >> 18));
	o[1] = (char)(0x80 | ((c >> 12) & 0x3f));
	o[2] = (char)(0x80 | ((c >> 6) & 0x3f));
	o[3] = (char)(0x80 | (c & 0x3f));
	return 4;
}

/* Random valid text must survive encode + decode unchanged. */
static void test_random_round_trips(void)
{
	char buf[256];

	for (int iter = 0; iter < 20000; iter++) {
		size_t n = 0;
		int chars = (int)(rnd() % 12);

		for (int i = 0; i < chars; i++) {
			uint32_t c;

			switch (rnd() % 4) {
			case 0:
				c = 0x20 + rnd() % 0x5f;
				break;
			case 1:
				c = 1 + rnd() % 0x7ff;
				break;
			case 2:
				c = 0x800 + rnd() % (0x10000 - 0x800);
				break;
			default:
				c = 0x10000 + rnd() % 0x100000;
				break;
			}
			if (c >= 0xd800 && c <= 0xdfff)
				c = '&';
			n += put_utf8(buf + n, c);
		}
		buf[n] = '\0';

		char *m = mutf7_encode(buf);

		CHECK(m != NULL);
		if (!m)
			continue;
		char *back = mutf7_decode(m);

		CHECK(back != NULL && strcmp(back, buf) == 0);
		free(back);
		free(m);
	}
}

/* Random wire strings: decoding must never crash, and whatever it accepts
 * must be canonical (encoding it again gives the same string). */
static void test_random_decode(void)
{
	static const char alphabet[] = "&-AaBgDe2390+,/= .\x01\xc3";
	char buf[64];
	int accepted = 0;

	for (int iter = 0; iter < 200000; iter++) {
		size_t n = rnd() % 16;

		for (size_t i = 0; i < n; i++)
			buf[i] = alphabet[rnd() % (sizeof(alphabet) - 1)];
		buf[n] = '\0';

		char *u = mutf7_decode(buf);

		if (!u)
			continue;
		accepted++;
		char *m = mutf7_encode(u);

		CHECK(m != NULL && strcmp(m, buf) == 0);
		if (m && strcmp(m, buf) != 0)
			fprintf(stderr, "  not canonical: \"%s\" -> \"%s\"\n",
				buf, m);
		free(m);
		free(u);
	}
	CHECK(accepted > 1000);
}

int main(void)
{
	test_round_trips();
	test_decode_rejects();
	test_encode_rejects();
	test_random_round_trips();
	test_random_decode();

	return check_summary("mutf7");
}
