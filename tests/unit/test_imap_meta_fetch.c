/* Unit tests for the listing FETCH parser (proto/imap_meta_fetch.c). */
#include "proto/imap_meta_fetch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/check.h"

static int parse(const char *resp, struct backend_message *m)
{
	return imap_meta_parse_fetch(resp, strlen(resp), m);
}

static void clear(struct backend_message *m)
{
	free(m->flags);
	free(m->header);
	memset(m, 0, sizeof(*m));
}

static void test_dovecot_listing(void)
{
	struct backend_message m;
	const char *resp = "* 1 FETCH (UID 17 RFC822.SIZE 3985 INTERNALDATE "
		"\"02-Jan-2024 08:17:44 +0100\" FLAGS (\\Flagged \\Recent kw) "
		"BODY[HEADER.FIELDS (DATE SUBJECT MESSAGE-ID FROM)] {12}\r\n"
		"Subject: x\r\n)";

	CHECK(parse(resp, &m) == 1);
	CHECK(m.uid == 17);
	CHECK(m.size == 3985);
	/* 2024-01-02 07:17:44 UTC */
	CHECK(m.internaldate == 1704179864);
	CHECK(m.flags && strcmp(m.flags, "\\Flagged kw") == 0);
	CHECK(m.header_len == 12 && memcmp(m.header, "Subject: x\r\n", 12) == 0);
	CHECK(m.header && m.header[12] == '\0');
	clear(&m);
}

static void test_variants(void)
{
	struct backend_message m;

	/* Any order, MODSEQ, a quoted header, a day with a leading space,
	 * lower case names. */
	CHECK(parse("* 3 FETCH (MODSEQ (12) flags () body[HEADER.FIELDS "
		"(\"DATE\")] \"Date: \\\"x\\\"\" internaldate \" 2-Feb-2020 "
		"00:00:00 -0000\" uid 5 rfc822.size 0)", &m) == 1);
	CHECK(m.uid == 5 && m.size == 0);
	CHECK(m.internaldate == 1580601600);
	CHECK(strcmp(m.flags, "") == 0);
	CHECK(strcmp(m.header, "Date: \"x\"") == 0 && m.header_len == 9);
	clear(&m);

	/* NIL header, no flags: empty strings. */
	CHECK(parse("* 3 FETCH (UID 9 BODY[HEADER.FIELDS (DATE)] NIL)", &m)
		== 1);
	CHECK(strcmp(m.header, "") == 0 && strcmp(m.flags, "") == 0);
	clear(&m);

	/* A flags update without UID: well formed, nothing kept. */
	CHECK(parse("* 3 FETCH (FLAGS (\\Seen))", &m) == 0);

	/* Unknown items of every shape are skipped. */
	CHECK(parse("* 1 FETCH (X-GM-LABELS (\"a b\" c {3}\r\nxyz) "
		"X-THING NIL UID 2 BODY[TEXT]<0> {2}\r\nab)", &m) == 1);
	CHECK(m.uid == 2);
	clear(&m);

	/* A bad date is 0, not a failure. */
	CHECK(parse("* 1 FETCH (UID 2 INTERNALDATE \"yesterday\")", &m) == 1);
	CHECK(m.internaldate == 0);
	clear(&m);
}

static void test_malformed(void)
{
	static const char *const bad[] = {
		"",
		"* 1 FETCH",
		"* 1 FETCH (UID 1",
		"* 1 FETCH (UID)",
		"* 1 FETCH (UID 0)",
		"* 1 FETCH (UID 4294967296)",
		"* 1 FETCH (UID 99999999999999999999999)",
		"* 1 FETCH (UID 1 FLAGS (\\Seen)",
		"* 1 FETCH (UID 1 FLAGS (\\))",
		"* 1 FETCH (UID 1 FLAGS \\Seen)",
		"* 1 FETCH (UID 1 INTERNALDATE 5)",
		"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (DATE)] {10}\r\nab)",
		"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (DATE)] {2}ab)",
		"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (DATE) {2}\r\nab)",
		"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (DATE)] \"open)",
		"* 1 FETCH (UID 1 X (((((((((((((((((((((((((((((((((((("
		"((((((((((((((((((((((((((((((((((((((((((((((((((((((()",
		"* 1 FETCH (UID 1) trailing",
		"* 1 EXISTS",
	};
	struct backend_message m;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = parse(bad[i], &m);

		if (r != -1)
			fprintf(stderr, "accepted: %s\n", bad[i]);
		CHECK(r == -1);
		CHECK(m.flags == NULL && m.header == NULL);
	}
	/* A NUL inside the framed bytes is not the end. */
	CHECK(imap_meta_parse_fetch("* 1 FETCH (UID 1)\0junk", 22, &m) == -1);
}

int main(void)
{
	test_dovecot_listing();
	test_variants();
	test_malformed();
	return check_summary("imap_meta_fetch");
}
