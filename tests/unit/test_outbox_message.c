/* Unit tests for src/outbox_message.c: validation, envelope extraction,
 * the wire form (Bcc removal, CRLF, added fields) and hostile input. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "src/outbox_message.h"
#include "tests/unit/check.h"

/* Parses a NUL-terminated message; returns 0 or -1 like the function. */
static int parse(const char *text, const char *from,
	struct outbox_message *msg, const char **error)
{
	*error = NULL;
	return outbox_message_parse(text, strlen(text), from, msg, error);
}

static void expect_valid(const char *text, const char *from,
	struct outbox_message *msg, int line)
{
	const char *error;

	if (parse(text, from, msg, &error) < 0) {
		failures++;
		fprintf(stderr, "%s:%d: message refused: %s\n", __FILE__, line,
			error);
	}
}

static void expect_invalid(const char *text, const char *from,
	const char *needle, int line)
{
	struct outbox_message msg;
	const char *error = NULL;

	if (parse(text, from, &msg, &error) == 0) {
		failures++;
		fprintf(stderr, "%s:%d: message accepted, expected an error"
			" with \"%s\"\n", __FILE__, line, needle);
		outbox_message_clear(&msg);
		return;
	}
	if (error == NULL || strstr(error, needle) == NULL) {
		failures++;
		fprintf(stderr, "%s:%d: error \"%s\" lacks \"%s\"\n", __FILE__,
			line, error != NULL ? error : "(null)", needle);
	}
	CHECK(msg.sender == NULL && msg.rcpts == NULL && msg.n_rcpts == 0,
		"result not cleared on error");
}

/* printf-safe view of a result that may be NULL. */
#define S(x) ((x) != NULL ? (x) : "(null)")

#define VALID(text, from, msg) expect_valid(text, from, msg, __LINE__)
#define INVALID(text, from, needle) expect_invalid(text, from, needle, __LINE__)

/* Renders text; the result is NUL-terminated for strstr. */
static char *render(const char *text, const struct outbox_message *msg,
	unsigned flags, time_t now, size_t *len_r)
{
	const char *error = NULL;
	char *out, *z;
	size_t len;

	if (outbox_message_render(text, strlen(text), msg, flags, now, &out,
		&len, &error) < 0) {
		failures++;
		fprintf(stderr, "render failed: %s\n", error);
		return NULL;
	}
	z = malloc(len + 1);
	if (z == NULL)
		abort();
	memcpy(z, out, len);
	z[len] = '\0';
	free(out);
	if (len_r != NULL)
		*len_r = len;
	return z;
}

static bool all_crlf(const char *s, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++) {
		if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r'))
			return false;
		if (s[i] == '\r' && (i + 1 == len || s[i + 1] != '\n'))
			return false;
	}
	return true;
}

static size_t count(const char *hay, const char *needle)
{
	size_t n = 0;

	for (hay = strstr(hay, needle); hay != NULL;
	     hay = strstr(hay + 1, needle))
		n++;
	return n;
}

/* ------------------------------------------------------------------ */

static void test_simple(void)
{
	struct outbox_message msg;

	VALID("From: Alice <alice@example.org>\r\n"
	      "To: bob@example.com\r\n"
	      "Subject: hi\r\n"
	      "\r\n"
	      "Hello.\r\n", NULL, &msg);
	CHECK(msg.sender != NULL && strcmp(msg.sender, "alice@example.org") == 0,
		"sender %s", msg.sender);
	CHECK(msg.n_rcpts == 1 && strcmp(msg.rcpts[0], "bob@example.com") == 0,
		"rcpts %zu", msg.n_rcpts);
	CHECK(msg.has_from && !msg.has_date && !msg.has_message_id, "flags");
	CHECK(!msg.eight_bit && !msg.smtputf8, "8-bit flags");
	outbox_message_clear(&msg);
	CHECK(msg.sender == NULL && msg.n_rcpts == 0, "clear");
}

static void test_recipients(void)
{
	struct outbox_message msg;

	/* Bcc first in the header, still last in the list; groups, display
	 * names with commas, case-insensitive duplicates, several To. */
	VALID("Bcc: Hidden <hidden@example.net>,\r\n"
	      "  other@example.net\r\n"
	      "From: a@example.org\r\n"
	      "To: \"Doe, John\" <john@example.com>, Team: x@example.com,\r\n"
	      "\ty@example.com;, JOHN@EXAMPLE.COM\r\n"
	      "Cc: undisclosed-recipients:;\r\n"
	      "Cc: carol@example.com (Carol)\r\n"
	      "To: z@example.com\r\n"
	      "bcc: Hidden@Example.NET\r\n"
	      "\r\n"
	      "body\r\n", NULL, &msg);
	if (msg.n_rcpts == 7) {
		static const char *const want[] = {
			"john@example.com", "x@example.com", "y@example.com",
			"z@example.com", "carol@example.com",
			"hidden@example.net", "other@example.net",
		};
		size_t i;

		for (i = 0; i < 7; i++)
			CHECK(strcmp(msg.rcpts[i], want[i]) == 0,
				"rcpt %zu is %s, want %s", i, msg.rcpts[i],
				want[i]);
	} else {
		CHECK(0, "%zu recipients, want 7", msg.n_rcpts);
	}
	outbox_message_clear(&msg);

	/* Only Bcc, with an empty To. */
	VALID("From: a@example.org\nTo:\nBcc: b@example.org\n\nx\n", NULL, &msg);
	CHECK(msg.n_rcpts == 1 && strcmp(msg.rcpts[0], "b@example.org") == 0,
		"bcc only");
	outbox_message_clear(&msg);

	INVALID("From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n", NULL,
		"no recipient");
	INVALID("From: a@example.org\r\nTo: list:;\r\n\r\nbody\r\n", NULL,
		"no recipient");
}

static void test_sender(void)
{
	struct outbox_message msg;
	char *out;

	INVALID("To: b@example.com\r\n\r\nx\r\n", NULL, "no sender");
	VALID("To: b@example.com\r\n\r\nx\r\n", "me@example.org", &msg);
	CHECK(msg.sender != NULL && strcmp(msg.sender, "me@example.org") == 0,
		"default sender");
	CHECK(!msg.has_from, "has_from");
	out = render("To: b@example.com\r\n\r\nx\r\n", &msg,
		OUTBOX_RENDER_COMPLETE, 0, NULL);
	CHECK(out != NULL && strstr(out, "\r\nFrom: me@example.org\r\n") != NULL,
		"From added: %s", S(out));
	free(out);
	outbox_message_clear(&msg);

	/* The From field wins over the configured default. */
	VALID("From: a@example.org\r\nTo: b@example.com\r\n\r\nx\r\n",
		"me@example.org", &msg);
	CHECK(strcmp(msg.sender, "a@example.org") == 0, "From wins");
	outbox_message_clear(&msg);

	/* Several authors: Sender is the envelope sender. */
	VALID("From: a@example.org, b@example.org\r\n"
	      "Sender: sec@example.org\r\nTo: c@example.com\r\n\r\nx\r\n",
		NULL, &msg);
	CHECK(strcmp(msg.sender, "sec@example.org") == 0, "Sender used: %s",
		msg.sender);
	outbox_message_clear(&msg);

	INVALID("From: a@example.org\r\nFrom: b@example.org\r\n"
		"To: c@example.com\r\n\r\nx\r\n", NULL, "more than one From");
	INVALID("From:\r\nTo: c@example.com\r\n\r\nx\r\n", "me@example.org",
		"From field is empty");
	INVALID("To: c@example.com\r\n\r\nx\r\n", "me\r\nRCPT TO:<x@y.z>",
		"line break");
}

static void test_header_syntax(void)
{
	INVALID("", NULL, "empty");
	INVALID("\r\nbody only\r\n", NULL, "no header");
	INVALID("From a@example.org Thu Jan  1 00:00:00 1970\n"
		"From: a@example.org\nTo: b@example.org\n\nx\n", NULL,
		"line 1 of the header");
	INVALID("From: a@example.org\r\nTo: b@example.org\r\n"
		"this is not a header line\r\n\r\nx\r\n", NULL, "line 3");
	INVALID(" From: a@example.org\r\nTo: b@example.org\r\n\r\nx\r\n",
		NULL, "white space");
	INVALID("From: a@example.org\r\nTo: b@example.org, c@\r\n\r\nx\r\n",
		NULL, "To");
	INVALID("From: a@example.org\r\nTo: <b@example.org> junk\r\n\r\nx\r\n",
		NULL, "cannot parse");
}

static void test_hostile(void)
{
	static const char nul_msg[] = "From: a@example.org\r\n"
		"To: b\0c@example.org\r\n\r\nx\r\n";
	struct outbox_message msg;
	const char *error = NULL;

	CHECK(outbox_message_parse(nul_msg, sizeof(nul_msg) - 1, NULL, &msg,
		&error) < 0 && strstr(error, "NUL") != NULL,
		"NUL refused: %s", error);

	/* A bare CR ends the line: the rest cannot pass as a field. */
	INVALID("From: a@example.org\r\nTo: b@example.org\rRCPT TO:<evil@x.y>"
		"\r\n\r\nx\r\n", NULL, "not a field");
	INVALID("From: a@example.org\r\nTo: <b@example.org>\tSMTPUTF8\r\n\r\n",
		NULL, "cannot parse");
	INVALID("From: a@example.org\r\nTo: b@example.org c@example.org\r\n\r\n",
		NULL, "more than one '@'");
	INVALID("From: a@example.org\r\nTo: \"john doe\"@example.org\r\n\r\n",
		NULL, "not written plainly");
	INVALID("From: a@example.org\r\nTo: x <b c@example.org>\r\n\r\n",
		NULL, "not written plainly");
	INVALID("From: a@example.org\r\nTo: \x01@example.org\r\n\r\n", NULL,
		"control character");
	INVALID("From: a@example.org\r\nTo: plainuser\r\n\r\n", NULL,
		"no '@domain'");
	INVALID("From: a@example.org\r\nTo: b@exa_mple.org\r\n\r\n", NULL,
		"not allowed in a domain");
	INVALID("From: a@example.org\r\nTo: b@\xff\xfe.org\r\n\r\n", NULL,
		"UTF-8");
	INVALID("From: <>\r\nTo: b@example.org\r\n\r\n", NULL, "From");

	/* Headers with CR, LF or NUL never reach a command: checked
	 * directly too. */
	CHECK(outbox_address_check("a@b.c\r\nDATA", &error) < 0, "CRLF");
	CHECK(outbox_address_check("a@b.c>", &error) < 0, "bracket");
	CHECK(outbox_address_check("a b@c.d", &error) < 0, "space");
	CHECK(outbox_address_check("a@b.c", &error) == 0, "plain");
	CHECK(outbox_address_check("\"a.b\"@c.d", &error) == 0, "quoted");
	CHECK(outbox_address_check("a@[192.0.2.1]", &error) == 0, "literal");
	CHECK(outbox_address_check("a@[IPv6:2001:db8::1]", &error) < 0,
		"IPv6 literal, which headers cannot carry");
	CHECK(outbox_address_check("a@b..c", &error) < 0, "empty label");
}

static void test_long_addresses(void)
{
	char addr[400], text[1024], label[64];
	struct outbox_message msg;
	const char *error;

	memset(label, 'd', 63);
	label[63] = '\0';

	/* Exactly 256 octets: a 64-octet local part, '@', and a domain of
	 * three 63-octet labels. */
	memset(addr, 'a', 64);
	snprintf(addr + 64, sizeof(addr) - 64, "@%s.%s.%s", label, label,
		label);
	CHECK(strlen(addr) == 256, "len %zu", strlen(addr));
	CHECK(outbox_address_check(addr, &error) == 0, "256 octets: %s", error);
	snprintf(text, sizeof(text), "From: a@example.org\r\nTo: %s\r\n\r\n",
		addr);
	VALID(text, NULL, &msg);
	outbox_message_clear(&msg);

	/* 257 octets, every part within its own limit */
	snprintf(addr + 64, sizeof(addr) - 64, "@%s.%s.%.62s.b", label, label,
		label);
	CHECK(strlen(addr) == 257, "len %zu", strlen(addr));
	CHECK(outbox_address_check(addr, &error) < 0 &&
		strstr(error, "256") != NULL, "257 octets");
	snprintf(text, sizeof(text), "From: a@example.org\r\nTo: %s\r\n\r\n",
		addr);
	INVALID(text, NULL, "longer than 256");

	/* RFC 5321 4.5.3.1: a local part over 64 octets */
	memset(addr, 'a', 65);
	snprintf(addr + 65, sizeof(addr) - 65, "@example.org");
	CHECK(outbox_address_check(addr, &error) < 0 &&
		strstr(error, "64") != NULL, "65-octet local part");
	memset(addr, 'a', 64);
	snprintf(addr + 64, sizeof(addr) - 64, "@example.org");
	CHECK(outbox_address_check(addr, &error) == 0, "64: %s", error);
	/* a quoted one counts its quotes */
	addr[0] = '"';
	addr[63] = '"';
	CHECK(outbox_address_check(addr, &error) == 0, "quoted 64: %s", error);
	snprintf(addr, sizeof(addr), "\"%s\"@example.org", label);
	CHECK(outbox_address_check(addr, &error) < 0, "quoted 65");

	/* a label over 63 octets */
	snprintf(addr, sizeof(addr), "a@%sd.example.org", label);
	CHECK(outbox_address_check(addr, &error) < 0 &&
		strstr(error, "63") != NULL, "64-octet label");
	snprintf(addr, sizeof(addr), "a@%s.example.org", label);
	CHECK(outbox_address_check(addr, &error) == 0, "63: %s", error);
}

static void test_eight_bit(void)
{
	struct outbox_message msg;

	VALID("From: a@example.org\r\nTo: b@example.org\r\n\r\nGr\xc3\xbc\xc3\x9f"
		"e\r\n", NULL, &msg);
	CHECK(msg.eight_bit && !msg.smtputf8, "8-bit body");
	outbox_message_clear(&msg);

	VALID("From: J\xc3\xb6rg <j@example.org>\r\nTo: b@example.org\r\n\r\n",
		NULL, &msg);
	CHECK(msg.eight_bit && !msg.smtputf8, "8-bit display name");
	outbox_message_clear(&msg);

	VALID("From: a@example.org\r\nTo: j\xc3\xb6rg@b\xc3\xbc" "cher.de\r\n"
		"\r\nx\r\n", NULL, &msg);
	CHECK(msg.smtputf8, "UTF-8 address");
	CHECK(outbox_address_is_utf8(msg.rcpts[0]), "is_utf8");
	outbox_message_clear(&msg);
}

static void test_line_ends(void)
{
	const char *text = "From: a@example.org\nTo: b@example.org\n"
		"Date: Thu, 01 Jan 1970 00:00:00 +0000\n"
		"Message-ID: <1@example.org>\n\nline 1\nline 2\r\nline 3\rend";
	struct outbox_message msg;
	size_t len;
	char *out;

	VALID(text, NULL, &msg);
	out = render(text, &msg, OUTBOX_RENDER_COMPLETE |
		OUTBOX_RENDER_STRIP_BCC, 0, &len);
	CHECK(out != NULL && all_crlf(out, len), "all CRLF: %s", S(out));
	CHECK(out != NULL && strcmp(out, "From: a@example.org\r\n"
		"To: b@example.org\r\nDate: Thu, 01 Jan 1970 00:00:00 +0000\r\n"
		"Message-ID: <1@example.org>\r\n\r\nline 1\r\nline 2\r\n"
		"line 3\r\nend") == 0, "exact: %s", S(out));
	free(out);
	outbox_message_clear(&msg);
}

static void test_bcc_removal(void)
{
	const char *text =
		"From: a@example.org\r\n"
		"BCC: first@example.org,\r\n"
		"  second@example.org,\r\n"
		"\tthird@example.org\r\n"
		"To: b@example.org\r\n"
		"Resent-Bcc: r@example.org\r\n"
		"Subject: Bcc: in a subject stays\r\n"
		"bcc : spaced@example.org\r\n"
		"\r\n"
		"Bcc: this body line stays\r\n";
	struct outbox_message msg;
	size_t len;
	char *out;

	VALID(text, NULL, &msg);
	CHECK(msg.n_rcpts == 5, "%zu recipients", msg.n_rcpts);
	out = render(text, &msg, OUTBOX_RENDER_STRIP_BCC, 0, &len);
	CHECK(out != NULL && strcmp(out,
		"From: a@example.org\r\n"
		"To: b@example.org\r\n"
		"Subject: Bcc: in a subject stays\r\n"
		"\r\n"
		"Bcc: this body line stays\r\n") == 0, "stripped: [%s]", S(out));
	CHECK(out != NULL && strstr(out, "second") == NULL &&
		strstr(out, "third") == NULL && strstr(out, "spaced") == NULL,
		"continuation lines gone");
	free(out);

	/* Without the flag nothing changes. */
	out = render(text, &msg, 0, 0, &len);
	CHECK(out != NULL && len == strlen(text) && memcmp(out, text, len) == 0,
		"unchanged");
	free(out);
	outbox_message_clear(&msg);

	/* A Bcc as the last line of a header-only message. */
	text = "From: a@example.org\r\nTo: b@example.org\r\nBcc: c@example.org";
	VALID(text, NULL, &msg);
	out = render(text, &msg, OUTBOX_RENDER_STRIP_BCC, 0, NULL);
	CHECK(out != NULL && strcmp(out, "From: a@example.org\r\n"
		"To: b@example.org\r\n") == 0, "last line Bcc: [%s]", S(out));
	free(out);
	outbox_message_clear(&msg);
}

static void test_added_fields(void)
{
	const char *text = "From: Alice <alice@mail.example.org>\r\n"
		"To: b@example.com\r\n\r\nbody\r\n";
	struct outbox_message msg, again;
	char *out, *out2, date[64];
	const char *id, *error;
	size_t len, len2;

	setenv("TZ", "UTC0", 1);
	tzset();
	outbox_format_date(0, date, sizeof(date));
	CHECK(strcmp(date, "Thu, 01 Jan 1970 00:00:00 +0000") == 0, "%s", date);
	setenv("TZ", "XYZ-2", 1);    /* POSIX: two hours east of UTC */
	tzset();
	outbox_format_date(1717500000, date, sizeof(date));
	CHECK(strcmp(date, "Tue, 04 Jun 2024 13:20:00 +0200") == 0, "%s", date);
	setenv("TZ", "XYZ+5:30", 1);
	tzset();
	outbox_format_date(0, date, sizeof(date));
	CHECK(strcmp(date, "Wed, 31 Dec 1969 18:30:00 -0530") == 0, "%s", date);
	setenv("TZ", "UTC0", 1);
	tzset();

	VALID(text, NULL, &msg);
	out = render(text, &msg, OUTBOX_RENDER_COMPLETE, 1717500000, &len);
	CHECK(out != NULL && strncmp(out, "From: Alice <alice@mail.example.org>"
		"\r\nTo: b@example.com\r\nDate: Tue, 04 Jun 2024 11:20:00 +0000"
		"\r\nMessage-ID: <20240604112000.", 116) == 0, "fields: %s", S(out));
	id = out != NULL ? strstr(out, "Message-ID: <") : NULL;
	CHECK(id != NULL && strstr(id, "@mail.example.org>\r\n\r\nbody\r\n") != NULL,
		"Message-ID domain: %s", S(id));
	CHECK(out != NULL && count(out, "Date:") == 1 &&
		count(out, "Message-ID:") == 1 && count(out, "From:") == 1,
		"added once");

	/* Rendering the result again adds nothing: the spool form is
	 * stable across retries, Message-ID included. */
	CHECK(outbox_message_parse(out, len, NULL, &again, &error) == 0,
		"reparse: %s", error);
	CHECK(again.has_date && again.has_message_id, "present now");
	out2 = render(out, &again, OUTBOX_RENDER_COMPLETE, 42, &len2);
	CHECK(out2 != NULL && len2 == len && memcmp(out, out2, len) == 0,
		"stable");
	free(out2);
	outbox_message_clear(&again);
	free(out);

	/* Two renders give two different Message-IDs. */
	out = render(text, &msg, OUTBOX_RENDER_COMPLETE, 0, NULL);
	out2 = render(text, &msg, OUTBOX_RENDER_COMPLETE, 0, NULL);
	CHECK(out != NULL && out2 != NULL && strcmp(out, out2) != 0,
		"random Message-ID");
	free(out);
	free(out2);
	outbox_message_clear(&msg);

	/* A header-only message without a final line end. */
	text = "From: a@[192.0.2.1]\nTo: b@example.com";
	VALID(text, NULL, &msg);
	out = render(text, &msg, OUTBOX_RENDER_COMPLETE, 0, &len);
	CHECK(out != NULL && all_crlf(out, len) &&
		strstr(out, "To: b@example.com\r\nDate: ") != NULL &&
		strstr(out, "@localhost>\r\n") != NULL, "header only: %s", S(out));
	free(out);
	outbox_message_clear(&msg);
}

static void test_message_id(void)
{
	char id[OUTBOX_MESSAGE_ID_MAX + 1];
	const char *folded = "From: a@example.org\r\nmessage-id:\r\n"
		" <x.1@example.org> (comment)\r\nSubject: s\r\n\r\nbody\r\n";
	const char *none = "From: a@example.org\r\n\r\n"
		"Message-ID: <in.body@example.org>\r\n";
	const char *quoted = "Message-ID: <\"a b\"@example.org>\r\n\r\n";
	const char *open_ended = "Message-ID: <abc@example.org\r\n\r\n";

	CHECK(outbox_message_id(folded, strlen(folded), id, sizeof(id)) == 0 &&
		strcmp(id, "<x.1@example.org>") == 0, "folded: %s", id);
	CHECK(outbox_message_id(none, strlen(none), id, sizeof(id)) < 0,
		"only the header counts");
	CHECK(outbox_message_id(quoted, strlen(quoted), id, sizeof(id)) < 0,
		"quotes and spaces refused");
	CHECK(outbox_message_id(open_ended, strlen(open_ended), id,
		sizeof(id)) < 0, "no closing '>'");
	CHECK(outbox_message_id(folded, strlen(folded), id, 5) < 0,
		"too small a buffer");
}

int main(void)
{
	test_simple();
	test_recipients();
	test_sender();
	test_header_syntax();
	test_hostile();
	test_long_addresses();
	test_eight_bit();
	test_line_ends();
	test_bcc_removal();
	test_added_fields();
	test_message_id();
	return check_summary("outbox_message");
}
