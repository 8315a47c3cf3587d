/* Modified UTF-7 (RFC 3501 section 5.1.3).
 *
 * Printable ASCII other than '&' stands for itself, '&' is written "&-",
 * and everything else is UTF-16BE in a base64 variant (',' instead of '/',
 * no '=' padding) between '&' and '-'.
 *
 * The decoder accepts only the form the encoder produces, so that a name
 * can be decoded for display and encoded again to address the same folder
 * on the server: mutf7_encode(mutf7_decode(s)) is s whenever decode
 * succeeds.
 */
#include "proto/mutf7.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "src/utf8.h"

static const char b64_chars[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

static int b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == ',')
		return 63;
	return -1;
}

static bool is_direct(uint32_t c)
{
	return c >= 0x20 && c <= 0x7e && c != '&';
}

/* Appends code point c (a valid scalar value) to out as UTF-8. */
static size_t put_utf8(char *out, uint32_t c)
{
	if (c < 0x80) {
		out[0] = (char)c;
		return 1;
	}
	if (c < 0x800) {
		out[0] = (char)(0xc0 | (c >> 6));
		out[1] = (char)(0x80 | (c & 0x3f));
		return 2;
	}
	if (c < 0x10000) {
		out[0] = (char)(0xe0 | (c >> 12));
		out[1] = (char)(0x80 | ((c >> 6) & 0x3f));
		out[2] = (char)(0x80 | (c & 0x3f));
		return 3;
	}
	out[0] = (char)(0xf0 | (c >> 18));
	out[1] = (char)(0x80 | ((c >> 12) & 0x3f));
	out[2] = (char)(0x80 | ((c >> 6) & 0x3f));
	out[3] = (char)(0x80 | (c & 0x3f));
	return 4;
}

/* Decodes one shifted run starting just after its '&' and ending at (and
 * consuming) its '-'.  Appends UTF-8 to out.  Returns the number of input
 * bytes consumed, or 0 if the run is invalid. */
static size_t decode_run(const unsigned char *in, char *out, size_t *outlen)
{
	const unsigned char *p = in;
	uint32_t bits = 0;
	unsigned nbits = 0;
	uint32_t high = 0;	/* pending high surrogate, 0 if none */
	size_t units = 0;

	for (;; p++) {
		int v = b64_value(*p);

		if (v < 0)
			break;
		bits = (bits << 6) | (uint32_t)v;
		nbits += 6;
		if (nbits < 16)
			continue;

		nbits -= 16;
		uint32_t u = (bits >> nbits) & 0xffff;

		bits &= (1u << nbits) - 1;
		units++;
		if (high) {
			if (u < 0xdc00 || u > 0xdfff)
				return 0;
			u = 0x10000 + ((high - 0xd800) << 10) + (u - 0xdc00);
			high = 0;
		} else if (u >= 0xd800 && u <= 0xdbff) {
			high = u;
			continue;
		} else if (u >= 0xdc00 && u <= 0xdfff) {
			return 0;
		} else if (u == 0 || is_direct(u) || u == '&') {
			/* NUL is never allowed; ASCII must not be shifted */
			return 0;
		}
		*outlen += put_utf8(out + *outlen, u);
	}

	/* must end with '-', hold a whole number of UTF-16 units and pad
	 * with fewer than six zero bits */
	if (*p != '-' || units == 0 || high || nbits >= 6 || bits != 0)
		return 0;
	return (size_t)(p - in) + 1;
}

char *mutf7_decode(const char *in)
{
	if (!in)
		return NULL;

	size_t len = strlen(in);

	/* a UTF-16 unit takes at least 2.67 base64 chars and becomes at
	 * most 3 UTF-8 bytes; direct chars map 1:1 */
	if (len > (SIZE_MAX - 1) / 2)
		return NULL;
	char *out = malloc(len * 2 + 1);
	if (!out)
		return NULL;

	const unsigned char *p = (const unsigned char *)in;
	size_t n = 0;
	bool after_run = false;

	while (*p) {
		if (*p != '&') {
			if (!is_direct(*p))
				goto bad;
			out[n++] = (char)*p++;
			after_run = false;
			continue;
		}
		p++;
		if (*p == '-') {
			out[n++] = '&';
			p++;
			after_run = false;
			continue;
		}
		/* two runs back to back would be written as one */
		if (after_run)
			goto bad;
		size_t used = decode_run(p, out, &n);
		if (!used)
			goto bad;
		p += used;
		after_run = true;
	}
	out[n] = '\0';
	return out;
bad:
	free(out);
	return NULL;
}

struct b64_writer {
	char *out;
	size_t n;
	uint32_t bits;
	unsigned nbits;
};

static void put_unit(struct b64_writer *w, uint32_t u)
{
	w->bits = (w->bits << 16) | u;
	w->nbits += 16;
	while (w->nbits >= 6) {
		w->nbits -= 6;
		w->out[w->n++] = b64_chars[(w->bits >> w->nbits) & 0x3f];
	}
	w->bits &= (1u << w->nbits) - 1;
}

static void end_run(struct b64_writer *w)
{
	if (w->nbits)
		w->out[w->n++] = b64_chars[(w->bits << (6 - w->nbits)) & 0x3f];
	w->bits = 0;
	w->nbits = 0;
	w->out[w->n++] = '-';
}

char *mutf7_encode(const char *in)
{
	if (!in)
		return NULL;

	size_t len = strlen(in);

	/* worst case is a lone control char between ASCII: 1 byte -> "&AAE-" */
	if (len > (SIZE_MAX - 1) / 5)
		return NULL;

	struct b64_writer w = { .out = malloc(len * 5 + 1) };
	if (!w.out)
		return NULL;

	const unsigned char *p = (const unsigned char *)in;
	bool shifted = false;

	while (*p) {
		uint32_t c;
		size_t used = utf8_get(p, &c);

		if (!used) {
			free(w.out);
			return NULL;
		}
		p += used;

		if (c >= 0x20 && c <= 0x7e) {
			if (shifted) {
				end_run(&w);
				shifted = false;
			}
			w.out[w.n++] = (char)c;
			if (c == '&')
				w.out[w.n++] = '-';
			continue;
		}
		if (!shifted) {
			w.out[w.n++] = '&';
			shifted = true;
		}
		if (c >= 0x10000) {
			c -= 0x10000;
			put_unit(&w, 0xd800 | (c >> 10));
			put_unit(&w, 0xdc00 | (c & 0x3ff));
		} else {
			put_unit(&w, c);
		}
	}
	if (shifted)
		end_run(&w);
	w.out[w.n] = '\0';
	return w.out;
}
