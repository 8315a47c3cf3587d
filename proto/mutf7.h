/* Modified UTF-7 (RFC 3501 section 5.1.3), the encoding of IMAP folder names. */
#ifndef MAILFS_MUTF7_H
#define MAILFS_MUTF7_H

#include <stddef.h>

/* Decodes a modified UTF-7 name to UTF-8.  Returns a malloc'd string owned
 * by the caller, or NULL if the input is NULL or not valid modified UTF-7
 * (a raw byte outside printable ASCII, bad base64, unterminated shift, a
 * shift holding no whole UTF-16 unit, leftover bits that are non-zero or
 * fill a base64 char, a shifted run that encodes printable ASCII or '&',
 * invalid UTF-16 surrogates, an encoded NUL, two shifted runs back to
 * back).  "&-" is '&'.  Only the form mutf7_encode produces is accepted,
 * so encoding the result gives the input back. */
char *mutf7_decode(const char *in);

/* Encodes a UTF-8 name to modified UTF-7.  Returns a malloc'd string owned
 * by the caller, or NULL if the input is NULL or not valid UTF-8 (overlong
 * forms, encoded surrogates and values above U+10FFFF are invalid).  The
 * string ends at its NUL, so NUL itself is never encoded. */
char *mutf7_encode(const char *in);

#endif
