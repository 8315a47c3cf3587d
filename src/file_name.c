#include "src/file_name.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "src/utf8.h"

char *folder_name_sanitize(const char *component)
{
	const unsigned char *p = (const unsigned char *)
		(component ? component : "");
	size_t len = strlen((const char *)p);
	char *out, *cut;
	size_t n = 0;

	/* each input byte yields at most one output byte; +2 for "_.." */
	out = malloc(len + 3);
	if (!out)
		return NULL;
	while (*p) {
		uint32_t c;
		size_t cl = utf8_get(p, &c);

		if (!cl) {
			out[n++] = '_';
			p++;
			continue;
		}
		if (c < 0x20 || c == 0x7f || (c >= 0x80 && c < 0xa0) ||
		    c == '/') {
			out[n++] = '_';
		} else {
			memcpy(out + n, p, cl);
			n += cl;
		}
		p += cl;
	}
	out[n] = '\0';

	if (n == 0 || strcmp(out, ".") == 0 || strcmp(out, "..") == 0) {
		memmove(out + 1, out, n + 1);
		out[0] = '_';
		n++;
	}
	n = utf8_cut(out, n, FILE_NAME_MAX);
	out[n] = '\0';
	cut = realloc(out, n + 1);
	return cut ? cut : out;
}
