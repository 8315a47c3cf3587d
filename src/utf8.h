/* UTF-8 decoding shared by file names (fs/msg_name.c) and folder names
 * (proto/mutf7.c).
 *
 * Only well-formed UTF-8 is accepted: overlong forms, encoded surrogates
 * (U+D800..U+DFFF) and values above U+10FFFF are invalid.  Nothing here
 * allocates or keeps a pointer: the strings are the caller's and are only
 * read during the call.
 */
#ifndef MAILFS_UTF8_H
#define MAILFS_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Reads one UTF-8 sequence from the NUL-terminated s and stores its code
 * point in *cp.  Returns its length (1 to 4), or 0 if s does not start
 * with a valid sequence; *cp is then left alone.  A NUL inside a sequence
 * makes it invalid, so no byte past the terminator is read.  The NUL
 * itself is a valid one-byte sequence (U+0000). */
size_t utf8_get(const unsigned char *s, uint32_t *cp);

/* Length of the longest prefix of s (len bytes, valid or not) that is at
 * most max bytes and does not end inside a UTF-8 sequence. */
size_t utf8_cut(const char *s, size_t len, size_t max);

/* Returns true if the NUL-terminated s is valid UTF-8 throughout. */
bool utf8_valid(const char *s);

#endif
