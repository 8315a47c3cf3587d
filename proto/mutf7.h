/* Modified UTF-7 (RFC 3501 section 5.1.3), the encoding of IMAP folder names. */
#ifndef MAILFS_MUTF7_H
#define MAILFS_MUTF7_H

#include <stddef.h>

/* Decodes a modified UTF-7 name to UTF-8.  Returns a malloc'd string owned
 * by the caller, or NULL if the input is not valid modified UTF-7 (bad
 * base64, unterminated shift, non-zero padding bits, a shifted run that
 * encodes printable ASCII or '&', invalid UTF-16 surrogates, NUL). */
char *mutf7_decode(const char *in);

/* Encodes a UTF-8 name to modified UTF-7.  Returns a malloc'd string owned
 * by the caller, or NULL if the input is not valid UTF-8 or contains NUL. */
char *mutf7_encode(const char *in);

#endif
