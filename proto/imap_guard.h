/* A check of everything an IMAP server sends, before libetpan parses it.
 *
 * libetpan 1.9.4 crashes on some response codes (two BADCHARSET codes in
 * one response: a double free; a PERMANENTFLAGS list that is not closed
 * properly: a NULL dereference) and allocates whatever size a literal
 * announces.  The guard follows the byte stream as it arrives (lines,
 * and literals, which it skips) and refuses, by failing the stream:
 *  - a BADCHARSET response code (mailfs never searches with a charset,
 *    so a server has no reason to send one);
 *  - a PERMANENTFLAGS code whose argument is not a well-formed flag list;
 *  - a literal announcing more than IMAP_GUARD_LITERAL_MAX bytes (mailfs
 *    never asks for more than a few MiB in one piece).
 * Continuation requests are left to imap_session_continuation(), which
 * reads them itself.  Everything else passes untouched; the guard never
 * changes bytes.
 */
#ifndef MAILFS_IMAP_GUARD_H
#define MAILFS_IMAP_GUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IMAP_GUARD_LITERAL_MAX (256u * 1024 * 1024)
/* The start of a line kept for the check: response codes come first. */
#define IMAP_GUARD_HEAD 4096

struct imap_guard {
	uint64_t literal_left;    /* bytes of a literal still to skip */
	bool in_response;         /* past the first segment of a response */
	size_t head_len;          /* bytes kept of the current line */
	size_t line_len;          /* bytes of the current line so far */
	char head[IMAP_GUARD_HEAD];
	char tail[24];            /* the last bytes of the line */
	size_t tail_len;
};

/* Starts a guard at the beginning of a server's stream. */
void imap_guard_init(struct imap_guard *g);

/* Follows len more bytes of the stream.  Returns NULL if they may be
 * handed to libetpan, else a static string saying what was refused (the
 * stream must then be failed; the guard is spent). */
const char *imap_guard_feed(struct imap_guard *g, const char *data,
	size_t len);

#endif
