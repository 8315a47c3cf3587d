/* Content-Transfer-Encoding decoders (RFC 2045) that work on a stream,
 * and the map from a byte range of a base64 part's decoded content to the
 * range of its encoded bytes that holds it.
 *
 * Decoding is lenient the way Python's email package and most readers
 * are: base64 skips every byte outside its alphabet and stops at the
 * padding that ends a quantum; quoted-printable keeps an '=' that does not
 * start a valid escape or soft line break as it is.  Nothing allocates.
 */
#ifndef MAILFS_MIME_DECODE_H
#define MAILFS_MIME_DECODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum mime_transfer {
	MIME_TE_IDENTITY,   /* 7bit, 8bit, binary: the bytes as they are */
	MIME_TE_BASE64,
	MIME_TE_QP,         /* quoted-printable */
	MIME_TE_UNKNOWN,    /* anything else: cannot be decoded */
};

/* The encoding named by a Content-Transfer-Encoding value (any case,
 * surrounding blanks ignored); NULL or empty is identity. */
enum mime_transfer mime_transfer_parse(const char *name);

/* One decoding in progress: zero it, set te, then feed the encoded bytes
 * in order in chunks of any size, then finish. */
struct mime_decoder {
	enum mime_transfer te;  /* MIME_TE_UNKNOWN decodes as identity */
	unsigned char held[4];  /* bytes kept across chunk ends */
	unsigned n_held;
	bool ended;             /* base64 padding seen: the rest is ignored */
};

/* Decodes len bytes of in and appends the result to out, which must have
 * room for len + 3 bytes.  Returns the number of bytes written. */
size_t mime_decoder_feed(struct mime_decoder *d, const char *in, size_t len,
	char *out);

/* Flushes what the last chunk left undecided (out: room for 4 bytes).
 * Returns the number of bytes written. */
size_t mime_decoder_finish(struct mime_decoder *d, char *out);

/* Line layout of a base64 body: every line but the last holds line_chars
 * encoded characters (a multiple of 4) followed by eol_len bytes of line
 * end (1: LF, 2: CRLF).  Most writers use 76 + CRLF. */
struct mime_b64_layout {
	uint32_t line_chars;
	uint32_t eol_len;
};

/* Reads the layout from the start of a base64 body (at least its first
 * line and line end).  False if the first line is not a run of base64
 * characters whose length is a positive multiple of 4 followed by a line
 * end. */
bool mime_b64_layout_guess(const char *head, size_t len,
	struct mime_b64_layout *l_r);

/* For decoded bytes [dec_off, dec_off + dec_len) of a body with layout l:
 * the encoded range [*enc_off_r, *enc_off_r + *enc_len_r) to fetch, and
 * the number of leading decoded bytes (*skip_r) to drop from its
 * decoding.  The range covers whole lines and the line end before the
 * first (and after the last), so that mime_b64_range_decode can check
 * that the lines lie where the layout says. */
void mime_b64_encoded_range(const struct mime_b64_layout *l,
	uint64_t dec_off, uint64_t dec_len, uint64_t *enc_off_r,
	uint64_t *enc_len_r, uint64_t *skip_r);

/* Whether chunk (fetched at encoded offset enc_off) agrees with layout
 * l: a line end exactly where the layout puts one, base64 characters (or
 * '=') everywhere else, and after a short line or padding only blanks. */
bool mime_b64_chunk_fits(const struct mime_b64_layout *l, uint64_t enc_off,
	const char *chunk, size_t len);

/* Decodes the chunk fetched for a range by mime_b64_encoded_range
 * (len bytes; at_end: it reaches the end of the body) and stores up to
 * want bytes after the first skip into out (room for want bytes).
 * Returns false when the chunk shows the body's lines are irregular
 * (then the range must be decoded from the start of the body). */
bool mime_b64_range_decode(const struct mime_b64_layout *l,
	uint64_t enc_off, const char *chunk, size_t len, bool at_end,
	uint64_t skip, size_t want, char *out, size_t *out_len_r);

/* An estimate of the decoded size of `encoded` bytes in this encoding:
 * exact for identity, within a few bytes for base64 with regular lines,
 * an upper bound for quoted-printable. */
uint64_t mime_decoded_size_estimate(enum mime_transfer te, uint64_t encoded);

#endif
