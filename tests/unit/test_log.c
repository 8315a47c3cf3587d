/* Unit tests for the log (src/log.c): what reaches a terminal. */
#include "src/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/unit/check.h"

/* What one log_warn of text writes to stderr. */
static char *logged(const char *text)
{
	static char buf[16384];
	FILE *f = tmpfile();
	int saved = dup(STDERR_FILENO);
	size_t n;

	fflush(stderr);
	dup2(fileno(f), STDERR_FILENO);
	log_warn("%s", text);
	fflush(stderr);
	dup2(saved, STDERR_FILENO);
	close(saved);
	rewind(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

int main(void)
{
	char *out;

	log_init(false, false);
	out = logged("plain text, é and 日本");
	CHECK(strcmp(out, "mailfs: warning: plain text, é and 日本\n") == 0,
		"%s", out);
	/* ESC sequences, CR, BEL, DEL, a C1 control, a stray byte */
	out = logged("a\x1b[2Jb\rc\x07" "d\x7f" "e\xc2\x9b" "f\xff" "g\th");
	CHECK(strcmp(out, "mailfs: warning: a\\x1b[2Jb\\x0dc\\x07d\\x7fe"
		"\\xc2\\x9bf\\xffg h\n") == 0, "%s", out);
	/* a long line of controls is cut, never overflows */
	char *big = malloc(5000);

	memset(big, 0x1b, 4999);
	big[4999] = '\0';
	out = logged(big);
	CHECK(strncmp(out, "mailfs: warning: \\x1b\\x1b", 25) == 0 &&
	      out[strlen(out) - 1] == '\n' && !strchr(out, 0x1b));
	free(big);
	return check_summary("log");
}
