/* Modified UTF-7 (proto/mutf7.h): both directions on arbitrary bytes.
 *
 *   encode(x) succeeds exactly when x is valid UTF-8, gives printable
 *   ASCII, and decode(encode(x)) == x;
 *   decode(y), when it succeeds, gives valid UTF-8 and encode(decode(y))
 *   == y (only the canonical form is accepted). */
#include <string.h>

#include "proto/mutf7.h"
#include "tests/fuzz/fuzz_common.h"

static bool printable_ascii(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
			return false;
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *in = fuzz_strndup(data, size);
	size_t len = strlen(in);
	char *enc, *dec, *back;

	enc = mutf7_encode(in);
	if (fuzz_utf8_valid(in, len)) {
		FUZZ_CHECK(enc != NULL, "valid UTF-8 of %zu bytes refused", len);
		FUZZ_CHECK(printable_ascii(enc), "encoded form \"%s\"", enc);
		back = mutf7_decode(enc);
		FUZZ_CHECK(back != NULL, "own encoding \"%s\" refused", enc);
		FUZZ_CHECK(strcmp(back, in) == 0, "round trip through \"%s\"",
			enc);
		free(back);
	} else {
		FUZZ_CHECK(enc == NULL, "invalid UTF-8 encoded as \"%s\"", enc);
	}
	free(enc);

	dec = mutf7_decode(in);
	if (dec != NULL) {
		FUZZ_CHECK(printable_ascii(in), "decoded a non-ASCII name%s", "");
		FUZZ_CHECK(fuzz_utf8_valid(dec, strlen(dec)),
			"decoding \"%s\" gave invalid UTF-8", in);
		back = mutf7_encode(dec);
		FUZZ_CHECK(back != NULL, "decoded form of \"%s\" refused", in);
		FUZZ_CHECK(strcmp(back, in) == 0,
			"\"%s\" decodes but encodes back as \"%s\"", in, back);
		free(back);
		free(dec);
	}
	free(in);
	return 0;
}
