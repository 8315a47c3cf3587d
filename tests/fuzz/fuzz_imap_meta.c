/* The listing FETCH parser (proto/imap_meta_fetch.h) on arbitrary bytes.
 *
 * Properties: no crash, leak or undefined behaviour; a parse that
 * succeeds gives a nonzero UID, flags without control characters or
 * \Recent, and a NUL-terminated header no longer than the input; a
 * failed parse leaves nothing allocated. */
#include <string.h>
#include <strings.h>

#include "proto/imap_meta_fetch.h"
#include "tests/fuzz/fuzz_common.h"

/* Whether the space-separated list holds `flag` (any case). */
static bool has_flag(const char *flags, const char *flag)
{
	size_t fl = strlen(flag);

	for (const char *p = flags; *p; ) {
		size_t len = strcspn(p, " ");

		if (len == fl && strncasecmp(p, flag, fl) == 0)
			return true;
		p += len;
		if (*p == ' ')
			p++;
	}
	return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* An exact-size copy, so reading past the end is caught. */
	char *in = malloc(size ? size : 1);
	struct backend_message m;
	int r;

	if (!in)
		return 0;
	if (size)
		memcpy(in, data, size);
	r = imap_meta_parse_fetch(in, size, &m);
	if (r == 1) {
		FUZZ_CHECK(m.uid != 0, "UID 0 accepted");
		FUZZ_CHECK(m.flags && m.header, "strings missing");
		for (const char *f = m.flags; *f; f++)
			FUZZ_CHECK((unsigned char)*f > 0x20 || *f == ' ',
				"control character in flags");
		FUZZ_CHECK(!has_flag(m.flags, "\\Recent"), "\\Recent kept");
		FUZZ_CHECK(m.header_len <= size, "header longer than input");
		FUZZ_CHECK(m.header[m.header_len] == '\0', "header unterminated");
		free(m.flags);
		free(m.header);
	} else {
		FUZZ_CHECK(m.flags == NULL && m.header == NULL,
			"failed parse left strings");
	}
	free(in);
	return 0;
}
