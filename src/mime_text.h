/* Text out of MIME: charsets to UTF-8, RFC 2047 encoded words, RFC 2231
 * parameter values, header blocks for reading and HTML as plain text.
 *
 * Every result is malloc'd and owned by the caller, valid UTF-8 (bytes
 * that cannot be converted become U+FFFD) and NUL-terminated; NULL means
 * out of memory.  Charset conversion is libetpan's charconv (iconv); an
 * unknown charset is read as UTF-8 where valid, else as ISO 8859-1.
 */
#ifndef MAILFS_MIME_TEXT_H
#define MAILFS_MIME_TEXT_H

#include <stddef.h>

/* len bytes of text in `charset` (NULL: unknown) as UTF-8; *out_len_r
 * (may be NULL) gets the length, NULs in the text included. */
char *mime_text_to_utf8(const char *charset, const char *in, size_t len,
	size_t *out_len_r);

/* A header field value (len bytes, possibly folded, possibly with raw
 * 8-bit text) with its RFC 2047 encoded words decoded, line breaks
 * removed and control characters other than tab replaced by blanks. */
char *mime_words_decode(const char *value, size_t len);

/* One MIME parameter as written: name (e.g. "filename", "filename*",
 * "filename*0*") and value (quotes already removed). */
struct mime_param {
	const char *name;
	const char *value;
};

/* The decoded value of parameter `want` (e.g. "filename") among
 * params[0..n): an RFC 2231 value ("want*", or the continuations
 * "want*0", "want*1*", ... joined, at most 64 of them) in its charset
 * wins over a plain "want", which may hold RFC 2047 words.  NULL when
 * absent (or out of memory). */
char *mime_param_get(const struct mime_param *params, size_t n,
	const char *want);

/* A header block (len bytes, up to its first empty line) for reading:
 * one field per line, "Name: value\n", values as mime_words_decode gives
 * them.  Lines that are not fields are left out. */
char *mime_headers_text(const char *block, size_t len, size_t *out_len_r);

/* HTML (UTF-8) as readable text: tags dropped, script, style and head
 * contents dropped, block ends as line breaks, common entities and
 * numeric character references decoded, runs of blanks folded. */
char *mime_html_to_text(const char *html, size_t len, size_t *out_len_r);

#endif
