/* Unit tests for message and folder names (fs/msg_name.c). */
#include "fs/msg_name.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "tests/unit/check.h"

/* 2025-06-04 12:00:00 UTC */
#define IDATE 1749038400

static void expect_str(const char *what, char *got, const char *want,
		       int line)
{
	checks++;
	if (!got || strcmp(got, want) != 0) {
		failures++;
		fprintf(stderr, "%s:%d: FAIL: %s\n    got  \"%s\"\n    want \"%s\"\n",
			__FILE__, line, what, got ? got : "(null)", want);
	}
	free(got);
}

#define EXPECT(got, want) expect_str(#got, got, want, __LINE__)

static char *derive(const char *h, int64_t idate)
{
	return msg_name_derive(h, strlen(h), idate);
}

static bool utf8_valid(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	while (*p) {
		unsigned char c = *p;
		size_t len;
		uint32_t v, min;

		if (c < 0x80) {
			p++;
			continue;
		} else if (c >= 0xc2 && c <= 0xdf) {
			len = 2, v = c & 0x1f, min = 0x80;
		} else if (c >= 0xe0 && c <= 0xef) {
			len = 3, v = c & 0x0f, min = 0x800;
		} else if (c >= 0xf0 && c <= 0xf4) {
			len = 4, v = c & 0x07, min = 0x10000;
		} else {
			return false;
		}
		for (size_t i = 1; i < len; i++) {
			if ((p[i] & 0xc0) != 0x80)
				return false;
			v = (v << 6) | (p[i] & 0x3f);
		}
		if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
			return false;
		p += len;
	}
	return true;
}

/* Checks every promise the header makes about a derived name and returns
 * a pointer to its slug (inside name) with *slug_len set, or NULL. */
static const char *check_shape(const char *name, size_t *slug_len)
{
	size_t len = strlen(name);
	bool ok = true;

	ok &= len <= MSG_NAME_MAX && len >= 16 + 1 + 1 + 8 + 4;
	ok &= utf8_valid(name);
	ok &= strchr(name, '/') == NULL;
	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		ok &= *p >= 0x20 && *p != 0x7f;
	if (!ok)
		return NULL;
	/* YYYY-MM-DD_HHMM_ */
	for (int i = 0; i < 16; i++) {
		char c = name[i];

		if (i == 4 || i == 7)
			ok &= c == '-';
		else if (i == 10 || i == 15)
			ok &= c == '_';
		else
			ok &= c >= '0' && c <= '9';
	}
	/* _hhhhhhhh.eml */
	ok &= strcmp(name + len - 4, ".eml") == 0;
	ok &= name[len - 13] == '_';
	for (size_t i = len - 12; i < len - 4; i++)
		ok &= (name[i] >= '0' && name[i] <= '9') ||
		      (name[i] >= 'a' && name[i] <= 'f');
	if (!ok)
		return NULL;
	*slug_len = len - 13 - 16;
	const char *slug = name + 16;

	ok &= *slug_len >= 1 && *slug_len <= MSG_NAME_SUBJECT_MAX;
	ok &= slug[0] != '-' && slug[*slug_len - 1] != '-';
	for (size_t i = 0; i < *slug_len; i++) {
		ok &= slug[i] != '_' && slug[i] != '.' && slug[i] != '~' &&
		      !(slug[i] >= 'A' && slug[i] <= 'Z');
		if (i > 0)
			ok &= !(slug[i] == '-' && slug[i - 1] == '-');
	}
	return ok ? slug : NULL;
}

#define SHAPE_OK(name) do {						\
	size_t sl_;							\
	checks++;							\
	if (!(name) || !check_shape(name, &sl_)) {			\
		failures++;						\
		fprintf(stderr, "%s:%d: FAIL: bad name \"%s\"\n",	\
			__FILE__, __LINE__, (name) ? (name) : "(null)");\
	}								\
} while (0)

static char *hex8(const void *p, size_t len)
{
	char buf[16];

	snprintf(buf, sizeof(buf), "%08" PRIx32,
		 (uint32_t)XXH3_64bits(p, len));
	return strdup(buf);
}

/* Name with the expected hash of the Message-ID value mid.  Returns
 * static storage, overwritten by the next call. */
static const char *with_hash(const char *prefix, const char *mid)
{
	static char buf[512];
	char *h = hex8(mid, strlen(mid));

	snprintf(buf, sizeof(buf), "%s_%s.eml", prefix, h);
	free(h);
	return buf;
}

/* Derives a name from a header made of Date and Subject lines (either may
 * be NULL) and a fixed Message-ID, and returns just its slug. */
static char *slug_of(const char *subject_line)
{
	char h[8192];
	char *name, *out;
	size_t sl;
	const char *slug;

	snprintf(h, sizeof(h), "Message-ID: <s@x>\r\n%s\r\n\r\n",
		 subject_line);
	name = derive(h, IDATE);
	if (!name)
		return NULL;
	slug = check_shape(name, &sl);
	out = slug ? strndup(slug, sl) : strdup("(bad shape)");
	if (!slug)
		fprintf(stderr, "  bad name \"%s\"\n", name);
	free(name);
	return out;
}

#define SLUG(subject_line, want) \
	expect_str(subject_line, slug_of(subject_line), want, __LINE__)

/* Same, for the date/time part. */
static char *when_of(const char *date_line, int64_t idate)
{
	char h[1024];
	char *name;

	snprintf(h, sizeof(h), "%s\r\nMessage-ID: <d@x>\r\n\r\n", date_line);
	name = derive(h, idate);
	if (!name)
		return NULL;
	name[15] = '\0';
	return name;
}

#define WHEN(date_line, want) \
	expect_str(date_line, when_of(date_line, IDATE), want, __LINE__)

static void test_plain(void)
{
	const char *h =
		"Date: Wed, 04 Jun 2025 12:00:00 +0000\r\n"
		"Subject: Quarterly report\r\n"
		"Message-ID: <abc@example.com>\r\n"
		"From: Alice <alice@example.com>\r\n"
		"\r\n";
	char *name = derive(h, 0);

	SHAPE_OK(name);
	EXPECT(name, with_hash("2025-06-04_1200_quarterly-report",
			       "<abc@example.com>"));

	/* LF line ends and other field order give the same name */
	name = derive("Message-ID: <abc@example.com>\n"
		      "Subject: Quarterly report\n"
		      "Date: Wed, 04 Jun 2025 12:00:00 +0000\n\n", 0);
	EXPECT(name, with_hash("2025-06-04_1200_quarterly-report",
			       "<abc@example.com>"));

	/* no line end after the last field */
	name = derive("Subject: Quarterly report\r\n"
		      "Message-ID: <abc@example.com>", IDATE);
	EXPECT(name, with_hash("2025-06-04_1200_quarterly-report",
			       "<abc@example.com>"));

	/* field names are case-insensitive, blanks before ':' allowed */
	name = derive("SUBJECT : Quarterly report\r\n"
		      "message-id:<abc@example.com>\r\n\r\n", IDATE);
	EXPECT(name, with_hash("2025-06-04_1200_quarterly-report",
			       "<abc@example.com>"));
}

static void test_subjects(void)
{
	SLUG("Subject: Hello, World!", "hello-world");
	SLUG("Subject:    spaces   around   ", "spaces-around");
	SLUG("Subject: Re: Fwd: report.pdf", "re-fwd-report-pdf");
	SLUG("Subject: ...hidden", "hidden");
	SLUG("Subject: .", "no-subject");
	SLUG("Subject: ---", "no-subject");
	SLUG("Subject: file_name~1", "file-name-1");
	SLUG("Subject:", "no-subject");
	SLUG("Subject:    ", "no-subject");
	SLUG("X-Other: 1", "no-subject");

	/* RFC 2047, Q and B, UTF-8 and ISO-8859-1 */
	SLUG("Subject: =?UTF-8?Q?Entw=C3=BCrfe_f=C3=BCr_Q3?=",
	     "entwürfe-für-q3");
	SLUG("Subject: =?utf-8?B?5pel5pys6Kqe44Gu44OG44K544OI?=",
	     "日本語のテスト");
	SLUG("Subject: =?ISO-8859-1?Q?Gr=FC=DFe_aus_M=FCnchen?=",
	     "grüße-aus-münchen");
	SLUG("Subject: =?iso-8859-1?B?Q2Fm6SDgIGxhIGNhcnRl?=",
	     "café-à-la-carte");
	/* blanks between encoded words vanish, elsewhere they separate */
	SLUG("Subject: =?UTF-8?Q?Mont?= =?UTF-8?Q?r=C3=A9al?=", "montréal");
	SLUG("Subject: Re: =?UTF-8?Q?caf=C3=A9?= meeting", "re-café-meeting");
	/* broken encoded words fall back to the text as it stands */
	SLUG("Subject: =?unknown-x?Q?abc?=", "abc");
	SLUG("Subject: =?", "no-subject");
	SLUG("Subject: Price =?not encoded", "price-not-encoded");
	SLUG("Subject: =?utf-8?Q?ok?= then =?utf-8?Q?broken", "ok-then-broken");
	/* invalid UTF-8 inside an encoded word is replaced */
	SLUG("Subject: =?utf-8?B?Yf9i?=", "a-b");

	/* raw 8-bit text: UTF-8 if valid, else Latin-1 */
	SLUG("Subject: Grüße", "grüße");
	SLUG("Subject: Gr\xfc\xdf" "e aus M\xfcnchen", "grüße-aus-münchen");

	/* folded */
	SLUG("Subject: This is a\r\n very long\r\n\tsubject line",
	     "this-is-a-very-long-subject-line");
	SLUG("Subject:\r\n =?UTF-8?Q?gef=C3=A4ltet?=\r\n =?UTF-8?Q?_ok?=",
	     "gefältet-ok");

	/* '/', control characters, bare CR, encoded CR/LF */
	SLUG("Subject: a/b\\c\x01" "d\x7f" "e\tf", "a-b-c-d-e-f");
	SLUG("Subject: one\rtwo", "one-two");
	SLUG("Subject: =?UTF-8?Q?x=0D=0Ay=2Fz=09w?=", "x-y-z-w");
	SLUG("Subject: =?UTF-8?Q?=C2=85nel=C2=A0nbsp?=", "nel-nbsp");

	/* Unicode punctuation and spaces separate, letters stay */
	SLUG("Subject: \xe2\x80\x9eHallo\xe2\x80\x9c \xe2\x80\x93 Welt\xe2\x80\xa6",
	     "hallo-welt");
	SLUG("Subject: 【重要】お知らせ。", "重要-お知らせ");
	SLUG("Subject: Ｈｅｌｌｏ！", "Ｈｅｌｌｏ");
	SLUG("Subject: Привет, мир", "Привет-мир");
	SLUG("Subject: 🎉 Party 🎉", "🎉-party-🎉");
	/* bidi override and look-alike slashes never reach a name */
	SLUG("Subject: abc\xe2\x80\xae" "fdp.exe", "abc-fdp-exe");
	SLUG("Subject: a\xe2\x88\x95" "b\xe2\x81\x84" "c\xef\xbc\x8f" "d",
	     "a-b-c-d");
	SLUG("Subject: zero\xe2\x80\x8bwidth\xef\xbb\xbf", "zero-width");

	/* the first Subject wins */
	SLUG("Subject: first\r\nSubject: second", "first");
}

static void test_embedded_nul(void)
{
	static const char h[] = "Subject: foo\0bar\r\nMessage-ID: <n@x>\r\n";
	char *name = msg_name_derive(h, sizeof(h) - 1, IDATE);

	EXPECT(name, with_hash("2025-06-04_1200_foo-bar", "<n@x>"));
}

static void test_long_subjects(void)
{
	char line[4096];
	char want[256];
	size_t n;

	/* 3-byte characters: 26 fit in 80 bytes, the 27th does not */
	n = (size_t)snprintf(line, sizeof(line), "Subject: ");
	for (int i = 0; i < 100; i++)
		n += (size_t)snprintf(line + n, sizeof(line) - n, "日");
	want[0] = '\0';
	for (int i = 0; i < 26; i++)
		strcat(want, "日");
	SLUG(line, want);

	/* 4-byte characters: 20 fill exactly 80 bytes */
	n = (size_t)snprintf(line, sizeof(line), "Subject: ");
	for (int i = 0; i < 50; i++)
		n += (size_t)snprintf(line + n, sizeof(line) - n, "😀");
	want[0] = '\0';
	for (int i = 0; i < 20; i++)
		strcat(want, "😀");
	SLUG(line, want);

	/* 2-byte after 1 byte: "a" + 39 x "ü" = 79 bytes, no room for more */
	n = (size_t)snprintf(line, sizeof(line), "Subject: a");
	for (int i = 0; i < 60; i++)
		n += (size_t)snprintf(line + n, sizeof(line) - n, "ü");
	want[0] = 'a';
	want[1] = '\0';
	for (int i = 0; i < 39; i++)
		strcat(want, "ü");
	SLUG(line, want);

	/* the cut never leaves a trailing '-' */
	n = (size_t)snprintf(line, sizeof(line), "Subject: ");
	for (int i = 0; i < 300; i++)
		n += (size_t)snprintf(line + n, sizeof(line) - n, "ab ");
	want[0] = '\0';
	strcat(want, "ab");
	for (int i = 0; i < 26; i++)
		strcat(want, "-ab");
	SLUG(line, want);

	/* a long encoded subject, folded over many lines */
	n = (size_t)snprintf(line, sizeof(line), "Subject:");
	for (int i = 0; i < 60; i++)
		n += (size_t)snprintf(line + n, sizeof(line) - n,
				      "\r\n =?UTF-8?B?w7w=?=");
	want[0] = '\0';
	for (int i = 0; i < 40; i++)
		strcat(want, "ü");
	SLUG(line, want);
}

static void test_dates(void)
{
	char *name;

	/* no Date: INTERNALDATE */
	name = derive("Subject: x\r\nMessage-ID: <d@x>\r\n", IDATE);
	CHECK(name && strncmp(name, "2025-06-04_1200_x_", 18) == 0);
	free(name);
	name = derive("Subject: x\r\n", 946684740);
	CHECK(name && strncmp(name, "1999-12-31_2359_x_", 18) == 0);
	free(name);

	/* zones, converted to UTC */
	WHEN("Date: Tue, 03 Jun 2025 23:30:00 -0200", "2025-06-04_0130");
	WHEN("Date: Wed, 04 Jun 2025 01:00:00 +0530", "2025-06-03_1930");
	WHEN("Date: Wed, 04 Jun 2025 12:00:00 +0200 (CEST)", "2025-06-04_1000");
	WHEN("Date: Wed, 04 Jun 2025 12:00:00 -0000", "2025-06-04_1200");
	WHEN("Date: Wed, 04 Jun 2025 12:00:00 UT", "2025-06-04_1200");
	WHEN("Date: Wed, 04 Jun 2025 12:00:00 GMT", "2025-06-04_1200");
	WHEN("Date: Wed, 04 Jun 2025 12:00:00 EST", "2025-06-04_1700");
	WHEN("Date: Wed, 04 Jun 2025 12:00:00 PDT", "2025-06-04_1900");
	WHEN("Date: Wed, 04 Jun 2025 12:00:00", "2025-06-04_1200");
	WHEN("Date: Wed, 04 Jun 2025 12:00:00 ", "2025-06-04_1200");
	WHEN("Date: Wed, 04 Jun 2025 12:00", "2025-06-04_1200");
	WHEN("Date: Wed, 04 Jun 2025 12:00:00 UTC", "2025-06-04_1200");
	WHEN("Date: Wed, 04 Jun 2025 12:00:00 GMT+0130", "2025-06-04_1030");
	WHEN("Date: Wed, 04 Jun 2025 12:00:00 Z", "2025-06-04_1200");
	/* hours-only and ISO-style zones */
	WHEN("Date: Wed, 04 Jun 2025 12:00:00 +02:00", "2025-06-04_1000");
	WHEN("Date: Wed, 04 Jun 2025 12:00:00 -05:30", "2025-06-04_1730");
	WHEN("Date: Wed, 04 Jun 2025 12:00:00 +2", "2025-06-04_1000");
	WHEN("Date: Wed, 04 Jun 2025 12:00:00 0200", "2025-06-04_1000");
	WHEN("Date: Thu, 31 Dec 2026 23:30:00 -0100", "2027-01-01_0030");
	WHEN("Date: Sat, 01 Jan 2000 00:10:00 +0100", "1999-12-31_2310");
	WHEN("Date: Thu, 29 Feb 2024 10:00:00 +0000", "2024-02-29_1000");
	WHEN("Date: Fri, 01 Mar 2024 00:30:00 +0100", "2024-02-29_2330");
	/* no weekday, no seconds, single-digit day, folded */
	WHEN("Date: 4 Jun 2025 12:34 +0000", "2025-06-04_1234");
	WHEN("Date: Wed, 04 Jun 2025\r\n 12:00:00 +0000", "2025-06-04_1200");
	WHEN("date:Wed, 04 Jun 2025 08:15:00 +0000", "2025-06-04_0815");
	/* obsolete two-digit years */
	WHEN("Date: Wed, 04 Jun 25 12:00:00 +0000", "2025-06-04_1200");
	WHEN("Date: Fri, 31 Dec 99 12:00:00 +0000", "1999-12-31_1200");
	/* unparseable or impossible: INTERNALDATE */
	WHEN("Date: 2025-06-04T09:00:00Z", "2025-06-04_1200");
	WHEN("Date: yesterday", "2025-06-04_1200");
	WHEN("Date:", "2025-06-04_1200");
	WHEN("Date: Sat, 29 Feb 2025 10:00:00 +0000", "2025-06-04_1200");
	WHEN("Date: 32 Jun 2025 10:00:00 +0000", "2025-06-04_1200");
	WHEN("Date: 04 Jun 2025 24:00:00 +0000", "2025-06-04_1200");
	WHEN("Date: 04 Jun 2025 10:60:00 +0000", "2025-06-04_1200");
	WHEN("Date: 04 Jun 2025 10:00:00 +9999", "2025-06-04_1200");
	WHEN("Date: 04 Jun 2025 10:00:00 +0160", "2025-06-04_1200");
	WHEN("Date: 04 Jun 2025 10:00:00 +020", "2025-06-04_1200");
	WHEN("Date: 04 Jun 2025 10:00:00 +02000", "2025-06-04_1200");
	WHEN("Date: 04 Jun 2025 10:00:00 +24:00", "2025-06-04_1200");
	WHEN("Date: 04 Jun 1800 10:00:00 +0000", "2025-06-04_1200");
	WHEN("Date: 04 Jun 99999 10:00:00 +0000", "2025-06-04_1200");
	WHEN("Date: 04 Jun 2025 99999999999:00:00 +0000", "2025-06-04_1200");
	/* the first Date wins */
	WHEN("Date: Wed, 04 Jun 2025 07:00:00 +0000\r\n"
	     "Date: Wed, 04 Jun 2025 08:00:00 +0000", "2025-06-04_0700");

	/* INTERNALDATE out of range is clamped, never overflows the field */
	name = derive("", INT64_MAX);
	CHECK(name && strncmp(name, "9999-12-31_2359_no-subject_", 27) == 0);
	free(name);
	name = derive("", INT64_MIN);
	CHECK(name && strncmp(name, "1900-01-01_0000_no-subject_", 27) == 0);
	free(name);
	name = derive("", 0);
	CHECK(name && strncmp(name, "1970-01-01_0000_no-subject_", 27) == 0);
	free(name);
	name = derive("", -1);
	CHECK(name && strncmp(name, "1969-12-31_2359_no-subject_", 27) == 0);
	free(name);
}

static void test_hashes(void)
{
	const char *a = "Date: Wed, 04 Jun 2025 12:00:00 +0000\r\n"
			"Subject: Same\r\nMessage-ID: <one@x>\r\n\r\n";
	const char *b = "Date: Wed, 04 Jun 2025 12:00:00 +0000\r\n"
			"Subject: Same\r\nMessage-ID: <two@x>\r\n\r\n";
	char *na = derive(a, 0), *na2 = derive(a, 12345), *nb = derive(b, 0);

	/* identical headers: identical names, whatever the INTERNALDATE */
	CHECK(na && na2 && strcmp(na, na2) == 0);
	CHECK(na && nb && strcmp(na, nb) != 0);
	CHECK(na && nb && strncmp(na, nb, 21) == 0 &&
	      strncmp(na, "2025-06-04_1200_same_", 21) == 0);
	free(na);
	free(na2);
	free(nb);

	/* the value as it appears, blanks and folding aside */
	EXPECT(derive("Message-ID:    <x@y>   \r\n", IDATE),
	       with_hash("2025-06-04_1200_no-subject", "<x@y>"));
	EXPECT(derive("Message-Id:\r\n <x@y>\r\n", IDATE),
	       with_hash("2025-06-04_1200_no-subject", "<x@y>"));
	EXPECT(derive("MESSAGE-ID: <x@y> (comment)\r\n", IDATE),
	       with_hash("2025-06-04_1200_no-subject", "<x@y> (comment)"));
	EXPECT(derive("Message-ID: x@y\r\n", IDATE),
	       with_hash("2025-06-04_1200_no-subject", "x@y"));
	EXPECT(derive("Message-ID: <first@x>\r\nMessage-ID: <second@x>\r\n",
		      IDATE),
	       with_hash("2025-06-04_1200_no-subject", "<first@x>"));
	/* a similar field name is not Message-ID */
	EXPECT(derive("Message-IDs: <x@y>\r\nX-Message-ID: <x@y>\r\n", IDATE),
	       with_hash("2025-06-04_1200_no-subject",
			 "Message-IDs: <x@y>\r\nX-Message-ID: <x@y>\r\n"));

	/* without (or with an empty) Message-ID: the whole block */
	const char *c = "Subject: no id\r\nFrom: a@b\r\n\r\n";
	EXPECT(derive(c, IDATE), with_hash("2025-06-04_1200_no-id", c));
	const char *d = "Subject: no id\r\nMessage-ID:   \r\n\r\n";
	EXPECT(derive(d, IDATE), with_hash("2025-06-04_1200_no-id", d));
	EXPECT(derive("", IDATE), with_hash("2025-06-04_1200_no-subject", ""));
	EXPECT(msg_name_derive(NULL, 0, IDATE),
	       with_hash("2025-06-04_1200_no-subject", ""));
}

static void test_garbage(void)
{
	static const char *const cases[] = {
		"", "\r\n", "\n\n", "\r\n\r\n", ":", "\r", " ", "\t\r\n x",
		"Subject", "Subject:", "Subject: =?", "Subject: =?utf-8?",
		"Subject: =?utf-8?Q?", "Subject: =?utf-8?Q?=", "Subject: ?=",
		"Subject: =?utf-8?B?=?=", "Subject: =?utf-8?Q?=ZZ=?=",
		"Subject: =?utf-8*en?Q?a?=", "Subject: =??Q?a?=",
		"Subject: =?utf-8?X?a?=", "Subject: \r\n \r\n \r\n",
		"Date", "Date:", "Date: (((((", "Date: Mon,", "Date: 1 Jan",
		"Date: 1 Jan 2000", "Date: 1 Jan 2000 1", "Date: 1 Jan 2000 1:",
		"Date: \xff\xfe", "Message-ID", "Message-ID:", "Message-ID: <",
		"\x80\x81\x82: \xff", "Subject: \xc3", "Subject: \xed\xa0\x80",
		"Subject: \xf4\x90\x80\x80", "::::\r\n::::\r\n",
		"Subject: (comment", "Subject: \"quoted",
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *name = derive(cases[i], IDATE);

		SHAPE_OK(name);
		free(name);
	}

	/* garbage lines do not hide the fields after them */
	SLUG("no colon here\r\n  folded garbage\r\n\x01\x02\r\n"
	     "Subject: after garbage", "after-garbage");
	/* the header ends at the first empty line */
	SLUG("\r\nSubject: in the body", "no-subject");
	SLUG("Subject: head\r\n\r\nSubject: body", "head");
	SLUG("Subject: head\n\nSubject: body", "head");
}

static uint32_t rng_state = 88172645u;

static uint32_t rnd(void)
{
	return check_xorshift(&rng_state);
}

/* Random headers built from tokens likely to upset a parser. */
static void test_random_headers(void)
{
	static const char *const tokens[] = {
		"Date:", "Subject:", "Message-ID:", "From:", "\r\n", "\n",
		"\r", " ", "\t", "=?", "?=", "?Q?", "?B?", "utf-8",
		"iso-8859-1", "x-bogus", "=C3", "=BC", "=", "_", "w7w=", "5pel",
		"Mon, ", "Jun", "Feb", "29", "2025", "99", "12:", "00", ":",
		"+0200", "-9999", "UT", "GMT", "EST", "(", ")", "\"", "\\",
		"<", ">", "@", "/", ".", "..", "\xc3\xbc", "\xff", "\x80",
		"\xe6\x97\xa5", "\xf0\x9f\x98", "\0", "a", "Z", "-", "~",
	};
	const size_t ntok = sizeof(tokens) / sizeof(tokens[0]);
	char buf[1024];

	for (int iter = 0; iter < 100000; iter++) {
		size_t n = 0;
		int count = (int)(rnd() % 40);

		for (int i = 0; i < count; i++) {
			const char *t = tokens[rnd() % ntok];
			size_t tl = t[0] ? strlen(t) : 1;

			if (n + tl > sizeof(buf))
				break;
			memcpy(buf + n, t, tl);
			n += tl;
		}

		/* exact length: the buffer is not NUL-terminated */
		char *copy = malloc(n ? n : 1);

		if (!copy)
			abort();
		memcpy(copy, buf, n);
		char *name = msg_name_derive(copy, n, (int64_t)rnd() * 7);
		char *again = msg_name_derive(copy, n, (int64_t)rnd() * 7);
		size_t sl;

		if (!name || !check_shape(name, &sl)) {
			failures++;
			fprintf(stderr, "%s:%d: FAIL: bad name \"%s\" for random header #%d\n",
				__FILE__, __LINE__, name ? name : "(null)",
				iter);
		}
		checks++;
		/* same header, same name, except for a date from
		 * INTERNALDATE */
		CHECK(name && again && strcmp(name + 15, again + 15) == 0);
		free(name);
		free(again);
		free(copy);
	}
}

static void test_variants(void)
{
	EXPECT(msg_name_variant("x_abcd1234.eml", 2), "x_abcd1234~2.eml");
	EXPECT(msg_name_variant("x_abcd1234.eml", 10), "x_abcd1234~10.eml");
	EXPECT(msg_name_variant("x_abcd1234.eml", 4294967295u),
	       "x_abcd1234~4294967295.eml");
	EXPECT(msg_name_variant("x_abcd1234.eml", 1), "x_abcd1234.eml");
	EXPECT(msg_name_variant("noext", 3), "noext~3");
	EXPECT(msg_name_variant(".eml", 2), "~2.eml");
	CHECK(msg_name_variant(NULL, 2) == NULL);

	/* a full-length name stays within NAME_MAX, cut at a boundary:
	 * "a" + 125 x "ü" + ".eml" is 255 bytes; "~12" leaves room for 248
	 * stem bytes, which would split a "ü", so 247 remain */
	char name[MSG_NAME_MAX + 1];
	size_t n = 0;

	name[n++] = 'a';
	for (int i = 0; i < 125; i++) {
		memcpy(name + n, "\xc3\xbc", 2);
		n += 2;
	}
	strcpy(name + n, ".eml");
	CHECK(strlen(name) == MSG_NAME_MAX);

	char *v = msg_name_variant(name, 12);

	CHECK(v && strlen(v) == 254 && utf8_valid(v));
	CHECK(v && strncmp(v, name, 247) == 0 &&
	      strcmp(v + 247, "~12.eml") == 0);
	free(v);

	/* variants of derived names keep their shape */
	char *base = derive("Subject: dup\r\nMessage-ID: <d@x>\r\n", IDATE);

	CHECK(base != NULL);
	if (base) {
		size_t bl = strlen(base);
		char want[300];

		snprintf(want, sizeof(want), "%.*s~2.eml", (int)(bl - 4), base);
		EXPECT(msg_name_variant(base, 2), want);
		free(base);
	}
}

#define FOLDER(in, want) \
	expect_str("folder_name_sanitize(" #in ")", folder_name_sanitize(in), \
		   want, __LINE__)

static void test_folders(void)
{
	FOLDER("INBOX", "INBOX");
	FOLDER("Entwürfe", "Entwürfe");
	FOLDER("日本語", "日本語");
	FOLDER("/", "_");
	FOLDER("a/b", "a_b");
	FOLDER(".", "_.");
	FOLDER("..", "_..");
	FOLDER("...", "...");
	FOLDER(".hidden", ".hidden");
	FOLDER("", "_");
	FOLDER(NULL, "_");
	FOLDER("a\x01" "b\tc\nd\x7f", "a_b_c_d_");
	FOLDER("\xc2\x85nel\xc2\x9f", "_nel_");	/* C1 controls */
	FOLDER("\xc2\xa0nbsp", "\xc2\xa0nbsp");
	FOLDER("\xff\xfe", "__");
	FOLDER("a\xc3", "a_");
	FOLDER("\xc0\xaf", "__");		/* overlong '/' */
	FOLDER("\xed\xa0\x80", "___");		/* surrogate */
	FOLDER("\xf4\x90\x80\x80", "____");	/* above U+10FFFF */
	FOLDER("😀", "😀");

	/* cut to 255 bytes at a character boundary */
	char in[1024];
	size_t n = 0;

	for (int i = 0; i < 300; i++) {
		memcpy(in + n, "\xc3\xa9", 2);
		n += 2;
	}
	in[n] = '\0';

	char *out = folder_name_sanitize(in);

	CHECK(out && strlen(out) == 254 && utf8_valid(out));
	free(out);

	memset(in, 'x', 400);
	in[400] = '\0';
	out = folder_name_sanitize(in);
	CHECK(out && strlen(out) == 255);
	free(out);

	/* random bytes always give a safe name */
	for (int iter = 0; iter < 50000; iter++) {
		size_t len = rnd() % 300;

		for (size_t i = 0; i < len; i++) {
			in[i] = (char)(rnd() % 255 + 1);
			if (rnd() % 4 == 0)
				in[i] = "./\xc3\xa9"[rnd() % 4];
		}
		in[len] = '\0';
		out = folder_name_sanitize(in);

		bool ok = out && *out && strlen(out) <= MSG_NAME_MAX &&
			  utf8_valid(out) && !strchr(out, '/') &&
			  strcmp(out, ".") != 0 && strcmp(out, "..") != 0;

		for (const unsigned char *p = (const unsigned char *)out;
		     ok && *p; p++)
			ok = *p >= 0x20 && *p != 0x7f &&
			     !(p[0] == 0xc2 && p[1] >= 0x80 && p[1] < 0xa0);
		CHECK(ok);
		free(out);
	}
}

int main(void)
{
	test_plain();
	test_subjects();
	test_embedded_nul();
	test_long_subjects();
	test_dates();
	test_hashes();
	test_garbage();
	test_random_headers();
	test_variants();
	test_folders();

	return check_summary("msg_name");
}
