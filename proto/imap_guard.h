/* A check of everything an IMAP server sends, before libetpan parses it.
 *
 * libetpan 1.9.4 crashes on some response codes (two BADCHARSET codes in
 * one response: a double free; a PERMANENTFLAGS list that is not closed
 * properly: a NULL dereference), allocates whatever size a literal
 * announces, and keeps a whole response, of any length, in memory.  The
 * guard follows the byte stream as it arrives and frames it the way
 * libetpan's parser does (built with UNSTRICT_SYNTAX, as Debian builds
 * it: runs of SP and TAB wherever one SP goes, blanks before "[", "{",
 * "}" and the line end, "{-N}" as an empty literal, quoted strings that
 * run over line ends, "+" lines inside any response).  It refuses, by
 * failing the stream:
 *  - a BADCHARSET response code anywhere (mailfs never searches with a
 *    charset, so a server has no reason to send one);
 *  - a PERMANENTFLAGS code whose argument is not a well-formed flag list
 *    in the plain form "[PERMANENTFLAGS (\a b \*)]";
 *  - a literal announcing more than IMAP_GUARD_LITERAL_MAX bytes, and a
 *    literal that does not end its line (libetpan reads one there too);
 *  - a line longer than IMAP_GUARD_LINE_MAX outside literals, a NUL byte
 *    outside literals, and more than IMAP_GUARD_RESPONSE_MAX bytes in
 *    one response unless the reader streams it (imap_guard_streaming).
 * Everything else passes untouched; the guard never changes bytes.
 * tests/fuzz/fuzz_imap_guard.c feeds what it lets through to libetpan.
 */
#ifndef MAILFS_IMAP_GUARD_H
#define MAILFS_IMAP_GUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IMAP_GUARD_LITERAL_MAX (256u * 1024 * 1024)
/* A line outside literals: the BODYSTRUCTURE of a message of some 10,000
 * parts fits.  The buffer is only touched as far as lines reach. */
#define IMAP_GUARD_LINE_MAX (1024u * 1024)
/* One response read by libetpan, which holds all of it (a LIST of some
 * 200000 folders fits). */
#define IMAP_GUARD_RESPONSE_MAX (16u * 1024 * 1024)

struct imap_guard {
	uint32_t literal_left;    /* bytes of a literal still to skip */
	bool in_line;             /* the next segment continues a line
	                             (after a literal or inside a quote) */
	bool in_quote;            /* inside a quoted string */
	bool streaming;           /* see imap_guard_streaming */
	uint64_t response_bytes;  /* bytes since the last tagged line */
	const char *refused;      /* what imap_guard_feed refused, or NULL */
	size_t len;               /* bytes of the current segment */
	char seg[IMAP_GUARD_LINE_MAX];
};

/* Starts a guard at the beginning of a server's stream. */
void imap_guard_init(struct imap_guard *g);

/* Follows len more bytes of the stream.  Returns NULL if they may be
 * handed to libetpan, else a static string saying what was refused (the
 * stream must then be failed; the guard is spent, and keeps the string
 * in g->refused). */
const char *imap_guard_feed(struct imap_guard *g, const char *data,
	size_t len);

/* On while a reader that does not hold whole responses in memory (the
 * listing FETCH of imap_meta_fetch.c) reads: lifts the response bound. */
void imap_guard_streaming(struct imap_guard *g, bool on);

/* How libetpan frames one segment of a line: the bytes from the start
 * of a line, or from the end of a literal, up to the line end (the '\n'
 * not included).  `first` says it starts a response line; *in_quote
 * says whether it starts inside a quoted string and is updated.
 * Returns NULL, or why the segment must be refused; on NULL, *out says
 * whether the segment ends by announcing a literal (its size as
 * libetpan reads it, and the offset of its "{"), and whether it is a
 * tagged line, which ends a response. */
struct imap_segment {
	bool literal;
	uint32_t size;
	size_t open;
	bool tagged;      /* a first segment that ends a response */
};
const char *imap_guard_segment(const char *seg, size_t len, bool first,
	bool *in_quote, struct imap_segment *out);

#endif
