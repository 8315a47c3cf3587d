/* Small pieces of IMAP syntax shared by the code that reads server
 * answers without libetpan (imap_session.c, imap_meta_fetch.c,
 * imap_guard.c). */
#ifndef MAILFS_IMAP_SYNTAX_H
#define MAILFS_IMAP_SYNTAX_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

/* ATOM-CHAR of RFC 3501, without the ']' that ends a response code or a
 * section (callers that allow it there say so). */
static inline bool imap_atom_char(unsigned char ch)
{
	return ch > 0x20 && ch < 0x7f && strchr("(){%*\"\\]", ch) == NULL;
}

/* What libetpan's parser (built with UNSTRICT_SYNTAX) takes for a
 * space: it accepts a run of them wherever IMAP has one SP. */
static inline bool imap_blank(char ch)
{
	return ch == ' ' || ch == '\t';
}

/* True if p[0..n) is word, ASCII case ignored. */
static inline bool imap_word_is(const char *p, size_t n, const char *word)
{
	return n == strlen(word) && strncasecmp(p, word, n) == 0;
}

#endif
