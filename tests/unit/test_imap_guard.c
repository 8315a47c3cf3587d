/* Unit tests for the IMAP stream guard (proto/imap_guard.c). */
#include "proto/imap_guard.h"

#include <string.h>

#include "tests/unit/check.h"

/* Feeds `in` whole, then byte by byte and in pieces of 7: the verdict
 * must not depend on how the bytes arrive.  Returns whether refused. */
static bool refused(const char *in, size_t len)
{
	static struct imap_guard g;
	bool whole, bytes = false, sevens = false;

	imap_guard_init(&g);
	whole = imap_guard_feed(&g, in, len) != NULL;
	imap_guard_init(&g);
	for (size_t i = 0; i < len && !bytes; i++)
		bytes = imap_guard_feed(&g, in + i, 1) != NULL;
	imap_guard_init(&g);
	for (size_t i = 0; i < len && !sevens; i += 7)
		sevens = imap_guard_feed(&g, in + i,
			len - i < 7 ? len - i : 7) != NULL;
	CHECK(whole == bytes && bytes == sevens, "split verdicts on: %s", in);
	return whole;
}

#define REFUSED(s) refused(s, sizeof(s) - 1)

static void test_passes(void)
{
	CHECK(!REFUSED("* OK [CAPABILITY IMAP4rev1] ready\r\n"
		"1 OK [READ-WRITE] SELECT done\r\n"));
	CHECK(!REFUSED("* OK [PERMANENTFLAGS (\\Answered \\Seen $Fwd \\*)] "
		"Flags permitted.\r\n"));
	CHECK(!REFUSED("* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n"));
	/* A message body talking about IMAP is just bytes. */
	CHECK(!REFUSED("* 1 FETCH (UID 5 BODY[]<0> {40}\r\n"
		"* OK [BADCHARSET (x)] a line in a body\r\n)\r\n"
		"2 OK done\r\n"));
	/* Literals in a LIST answer, LF line ends. */
	CHECK(!REFUSED("* LIST () \"/\" {3}\nabc\n+ go ahead\n"));
	/* Braces in quoted strings and in text are no literals. */
	CHECK(!REFUSED("* LIST () \"/\" \"a {5}b\"\r\n"
		"* LIST () \"/\" \"a\\\" {5}\"\r\n"
		"* OK {5} and {5}x\r\n1 OK {2}\r\n"));
	/* A quoted string runs over a line end: the "{9}" is in it. */
	CHECK(!REFUSED("* LIST () \"/\" \"a\r\n{9}\"\r\n"
		"* OK [ALERT] x\r\n"));
	/* libetpan's leniency: blanks before the line end, "{-N}". */
	CHECK(!REFUSED("* 1 FETCH (BODY[] {3} \t\r\nabc)\r\n"));
	CHECK(!REFUSED("* 1 FETCH (BODY[] {-5}\r\n)\r\n"));
	CHECK(!REFUSED("* 1 FETCH (BODY[HEADER] {0}\r\n)\r\n"));
	/* At the limit. */
	CHECK(!REFUSED("* 1 FETCH (BODY[] {268435456}\r\n"));
}

static void test_refusals(void)
{
	CHECK(REFUSED("* OK [BADCHARSET (x)] hi\r\n"));
	CHECK(REFUSED("* OK [BADCHARSET (a)] one\r\n* OK [BADCHARSET (b)]\r\n"));
	CHECK(REFUSED("3 NO [badcharset] no\r\n"));
	CHECK(REFUSED("* BYE [BADCHARSET] bye\r\n"));
	CHECK(REFUSED("* OK [PERMANENTFLAGS (%\r\n"));
	CHECK(REFUSED("* OK [PERMANENTFLAGS (\\Seen\r\n"));
	CHECK(REFUSED("* OK [PERMANENTFLAGS (\\Seen)\r\n"));
	CHECK(REFUSED("* OK [PERMANENTFLAGS \\Seen] x\r\n"));
	CHECK(REFUSED("* OK [PERMANENTFLAGS] x\r\n"));
	CHECK(REFUSED("* OK [PERMANENTFLAGS (a  b)] x\r\n"));
	CHECK(REFUSED("* 1 FETCH (BODY[] {268435457}\r\n"));
	CHECK(REFUSED("* 1 FETCH (BODY[] {99999999999999999999}\r\n"));
	CHECK(REFUSED("* LIST () \"/\" {4294967295}\r\nINBOX\r\n"));
	/* After a literal the response goes on; its next line is checked
	 * only as part of that response, the one after as a new one. */
	CHECK(REFUSED("* 1 FETCH (X {2}\r\nab)\r\n* OK [BADCHARSET] x\r\n"));
	/* A status line's text never announces a literal: "{5}" there
	 * must not make the guard skip the next line. */
	CHECK(REFUSED("* OK see {5}\r\n* OK [BADCHARSET] x\r\n"));
	CHECK(REFUSED("1 NO hidden {27}\r\n2 NO [BADCHARSET (a)] x\r\n"));
	/* libetpan takes runs of SP and TAB for one SP, and skips them
	 * after "[". */
	CHECK(REFUSED("* OK [ BADCHARSET (a)] one\r\n"));
	CHECK(REFUSED("* OK\t[BADCHARSET (a)] one\r\n"));
	CHECK(REFUSED("*  OK [BADCHARSET (a)] one\r\n"));
	CHECK(REFUSED("*\tOK [BADCHARSET (a)] one\r\n"));
	CHECK(REFUSED("* OK [\tpermanentflags (%] x\r\n"));
	CHECK(REFUSED("* OK [PERMANENTFLAGS\t(\\Seen)] x\r\n"));
	/* Inside any response, in "+" lines too. */
	CHECK(REFUSED("+ [PERMANENTFLAGS (%] x\r\n"));
	CHECK(REFUSED("* LIST () \"/\" {3}\nabc\n+ [BADCHARSET (x)] go\n"));
	/* Blanks before the line end do not hide a literal's size; "{N}"
	 * not at the end of its line is a literal to libetpan as well. */
	CHECK(REFUSED("* LIST () \"/\" {1000000000} \r\n"));
	CHECK(REFUSED("* LIST () \"/\" {1000000000}\t\n"));
	CHECK(REFUSED("* LIST () \"/\" { 1000000000 }\r\n"));
	CHECK(REFUSED("* LIST () \"/\" {5}abcde\r\n"));
	CHECK(REFUSED("* LIST () \"/\" {5}\r \nabcde\r\n"));
	/* The count wraps as libetpan's does: 4294967297 is 1 there. */
	CHECK(!REFUSED("* LIST () \"/\" {4294967297}\r\nx\r\n"));
	CHECK(REFUSED("* LIST () \"/\" {4294967297}\r\n"
		"x\r\n* OK [BADCHARSET] x\r\n"));
	/* A NUL outside literals. */
	CHECK(REFUSED("* OK a\0b\r\n"));
}

static void test_bounds(void)
{
	static char line[IMAP_GUARD_LINE_MAX + 16];
	static struct imap_guard g;
	const char *head = "* LIST () \"/\" \"";
	size_t n = strlen(head);

	memcpy(line, head, n);
	memset(line + n, 'a', sizeof(line) - n);
	imap_guard_init(&g);
	CHECK(imap_guard_feed(&g, line, IMAP_GUARD_LINE_MAX - 1) == NULL);
	CHECK(imap_guard_feed(&g, line, 2) != NULL);
	/* Short lines without end are bounded per response. */
	imap_guard_init(&g);
	const char *few = "* 1 EXISTS\r\n";
	const char *why = NULL;
	for (size_t i = 0; !why && i <= IMAP_GUARD_RESPONSE_MAX; i += 12)
		why = imap_guard_feed(&g, few, strlen(few));
	CHECK(why != NULL && strstr(why, "response") != NULL);
	/* Unless the reader streams; and a tagged line ends a response. */
	imap_guard_init(&g);
	imap_guard_streaming(&g, true);
	why = NULL;
	for (size_t i = 0; !why && i <= IMAP_GUARD_RESPONSE_MAX; i += 12)
		why = imap_guard_feed(&g, few, strlen(few));
	CHECK(why == NULL);
	imap_guard_init(&g);
	for (size_t i = 0; !why && i <= 2 * IMAP_GUARD_RESPONSE_MAX; i += 18)
		why = imap_guard_feed(&g, (i / 18) % 2 ? "1 OK x\r\n" :
			"* 1 EXISTS\r\n", (i / 18) % 2 ? 8 : 12);
	CHECK(why == NULL);
}

int main(void)
{
	test_passes();
	test_refusals();
	test_bounds();
	return check_summary("imap_guard");
}
