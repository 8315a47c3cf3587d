/* Streaming base64 and quoted-printable decoders; see mime_decode.h. */
#include "src/mime_decode.h"

#include <string.h>
#include <strings.h>

enum mime_transfer mime_transfer_parse(const char *name)
{
	static const struct {
		const char *name;
		enum mime_transfer te;
	} known[] = {
		{ "7bit", MIME_TE_IDENTITY }, { "8bit", MIME_TE_IDENTITY },
		{ "binary", MIME_TE_IDENTITY }, { "base64", MIME_TE_BASE64 },
		{ "quoted-printable", MIME_TE_QP },
	};
	size_t len;

	if (!name)
		return MIME_TE_IDENTITY;
	while (*name == ' ' || *name == '\t')
		name++;
	len = strlen(name);
	while (len > 0 && (name[len - 1] == ' ' || name[len - 1] == '\t'))
		len--;
	if (len == 0)
		return MIME_TE_IDENTITY;
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		if (strlen(known[i].name) == len &&
		    strncasecmp(known[i].name, name, len) == 0)
			return known[i].te;
	return MIME_TE_UNKNOWN;
}

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
	if (c == '/')
		return 63;
	return -1;
}

static int hex_value(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Emits the bytes of a partial quantum of n (2 or 3) sextets. */
static size_t b64_partial(const unsigned char *h, unsigned n, char *out)
{
	if (n < 2)
		return 0;
	out[0] = (char)((h[0] << 2) | (h[1] >> 4));
	if (n < 3)
		return 1;
	out[1] = (char)(((h[1] & 0x0f) << 4) | (h[2] >> 2));
	return 2;
}

static size_t b64_feed(struct mime_decoder *d, const char *in, size_t len,
	char *out)
{
	size_t n = 0;

	for (size_t i = 0; i < len && !d->ended; i++) {
		unsigned char c = (unsigned char)in[i];
		int v;

		if (c == '=') {
			/* padding ends the data once it can complete a
			 * quantum; a stray '=' earlier is skipped */
			if (d->n_held >= 2) {
				n += b64_partial(d->held, d->n_held, out + n);
				d->n_held = 0;
				d->ended = true;
			}
			continue;
		}
		v = b64_value(c);
		if (v < 0)
			continue;
		d->held[d->n_held++] = (unsigned char)v;
		if (d->n_held == 4) {
			out[n++] = (char)((d->held[0] << 2) | (d->held[1] >> 4));
			out[n++] = (char)(((d->held[1] & 0x0f) << 4) |
				(d->held[2] >> 2));
			out[n++] = (char)(((d->held[2] & 0x03) << 6) |
				d->held[3]);
			d->n_held = 0;
		}
	}
	return n;
}

/* One byte through the quoted-printable state machine.  held is empty,
 * "=", "=H" (H a hex digit) or "=\r". */
static size_t qp_byte(struct mime_decoder *d, unsigned char c, char *out)
{
	size_t n = 0;

	for (;;) {
		if (d->n_held == 0) {
			if (c == '=') {
				d->held[d->n_held++] = c;
				return n;
			}
			out[n++] = (char)c;
			return n;
		}
		if (d->n_held == 1) {	/* "=" */
			if (hex_value(c) >= 0 || c == '\r') {
				d->held[d->n_held++] = c;
				return n;
			}
			d->n_held = 0;
			if (c == '\n')
				return n;	/* soft line break */
			out[n++] = '=';
			continue;	/* c again, from the empty state */
		}
		/* "=H" or "=\r" */
		if (d->held[1] == '\r') {
			d->n_held = 0;
			if (c == '\n')
				return n;	/* soft line break */
			out[n++] = '=';
			out[n++] = '\r';
			continue;
		}
		d->n_held = 0;
		if (hex_value(c) >= 0) {
			out[n++] = (char)(hex_value(d->held[1]) * 16 +
				hex_value(c));
			return n;
		}
		out[n++] = '=';
		out[n++] = (char)d->held[1];
		continue;
	}
}

size_t mime_decoder_feed(struct mime_decoder *d, const char *in, size_t len,
	char *out)
{
	size_t n = 0;

	switch (d->te) {
	case MIME_TE_BASE64:
		return b64_feed(d, in, len, out);
	case MIME_TE_QP:
		/* each byte emits at most what it and the held bytes were */
		for (size_t i = 0; i < len; i++)
			n += qp_byte(d, (unsigned char)in[i], out + n);
		return n;
	case MIME_TE_IDENTITY:
	case MIME_TE_UNKNOWN:
		break;
	}
	if (len)
		memcpy(out, in, len);
	return len;
}

size_t mime_decoder_finish(struct mime_decoder *d, char *out)
{
	size_t n = 0;

	if (d->te == MIME_TE_BASE64) {
		if (!d->ended)
			n = b64_partial(d->held, d->n_held, out);
	} else if (d->te == MIME_TE_QP && d->n_held == 2) {
		/* "=H" or "=\r" at the very end: kept as written; a lone '='
		 * there is a soft line break */
		out[n++] = '=';
		out[n++] = (char)d->held[1];
	}
	d->n_held = 0;
	d->ended = true;
	return n;
}

bool mime_b64_layout_guess(const char *head, size_t len,
	struct mime_b64_layout *l_r)
{
	size_t i = 0;

	while (i < len && b64_value((unsigned char)head[i]) >= 0)
		i++;
	if (i == 0 || i % 4 != 0 || i > UINT32_MAX / 2)
		return false;
	if (i + 1 < len && head[i] == '\r' && head[i + 1] == '\n')
		l_r->eol_len = 2;
	else if (i < len && head[i] == '\n')
		l_r->eol_len = 1;
	else
		return false;
	l_r->line_chars = (uint32_t)i;
	return true;
}

/* Offset in the body of encoded character number c. */
static uint64_t b64_pos(const struct mime_b64_layout *l, uint64_t c)
{
	return c + c / l->line_chars * l->eol_len;
}

void mime_b64_encoded_range(const struct mime_b64_layout *l,
	uint64_t dec_off, uint64_t dec_len, uint64_t *enc_off_r,
	uint64_t *enc_len_r, uint64_t *skip_r)
{
	uint64_t c0 = dec_off / 3 * 4, c1 = (dec_off + dec_len + 2) / 3 * 4;
	/* whole lines: line_chars is a multiple of 4, so a line starts a
	 * quantum */
	uint64_t first = c0 / l->line_chars * l->line_chars;
	uint64_t last = (c1 + l->line_chars - 1) / l->line_chars *
		l->line_chars;
	uint64_t start = b64_pos(l, first);

	if (first > 0)
		start -= l->eol_len;	/* the line end before: checked */
	*skip_r = dec_off - first / 4 * 3;
	*enc_off_r = start;
	*enc_len_r = b64_pos(l, last) - start;
}

bool mime_b64_chunk_fits(const struct mime_b64_layout *l, uint64_t enc_off,
	const char *chunk, size_t len)
{
	uint64_t period = (uint64_t)l->line_chars + l->eol_len;
	bool tail = false;	/* past the last (short) line */

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)chunk[i];
		uint64_t at = (enc_off + i) % period;

		if (tail) {
			if (c != '\r' && c != '\n' && c != ' ' && c != '\t' &&
			    c != '=')
				return false;
			continue;
		}
		if (at < l->line_chars) {
			if (b64_value(c) >= 0)
				continue;
			if (c == '=' || c == '\r' || c == '\n') {
				tail = true;	/* padding or a short last line */
				continue;
			}
			return false;
		}
		if (c != (l->eol_len == 2 && at == l->line_chars ? '\r' : '\n'))
			return false;
	}
	return true;
}

bool mime_b64_range_decode(const struct mime_b64_layout *l,
	uint64_t enc_off, const char *chunk, size_t len, bool at_end,
	uint64_t skip, size_t want, char *out, size_t *out_len_r)
{
	struct mime_decoder d = { .te = MIME_TE_BASE64 };
	unsigned char tmp[4];
	uint64_t pos = 0;	/* decoded bytes so far */
	size_t n = 0;

	*out_len_r = 0;
	if (!mime_b64_chunk_fits(l, enc_off, chunk, len))
		return false;
	/* decode a quantum at a time so that out never overflows */
	for (size_t i = 0; i < len && n < want; i++) {
		size_t k = mime_decoder_feed(&d, chunk + i, 1, (char *)tmp);

		for (size_t j = 0; j < k; j++, pos++)
			if (pos >= skip && n < want)
				out[n++] = (char)tmp[j];
	}
	if (n < want && at_end) {
		size_t k = mime_decoder_finish(&d, (char *)tmp);

		for (size_t j = 0; j < k; j++, pos++)
			if (pos >= skip && n < want)
				out[n++] = (char)tmp[j];
	}
	*out_len_r = n;
	/* fewer bytes than asked before the body's end: a short line or
	 * padding in the middle of the body */
	return n == want || at_end;
}

uint64_t mime_decoded_size_estimate(enum mime_transfer te, uint64_t encoded)
{
	if (te == MIME_TE_BASE64)
		/* 76 characters and CRLF a line, 4 characters for 3 bytes */
		return encoded / 78 * 57 + (encoded % 78) * 3 / 4;
	return encoded;
}
