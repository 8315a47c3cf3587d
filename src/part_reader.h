/* Reading one part of a message (a node of its mime_tree) from the
 * backend: its bytes as sent, or a decoded byte range of them.
 *
 * IMAP trees are read by section (BODY.PEEK[1.2]<o.l>), trees built from
 * a raw message (POP3) by range of the message.  A decoded range of a
 * base64 part with regular lines costs only the encoded bytes that hold
 * it; quoted-printable, and base64 with irregular lines, are decoded from
 * the start, resuming from a cursor when reads go forward.
 *
 * A part's bytes as sent go through the block cache (when there is one)
 * in PART_BLOCK_SIZE blocks keyed by block_key_make_part; a read smaller
 * than PART_BLOCK_SIZE / 8 whose block is not cached (the probes of a
 * base64 part's first and last lines) is fetched exactly and not kept.
 * Nothing else is kept between calls except in the caller's cursor; all
 * functions are thread-safe if the backend and the cache are.
 */
#ifndef MAILFS_PART_READER_H
#define MAILFS_PART_READER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "src/backend.h"
#include "src/block_cache.h"
#include "src/mime_decode.h"
#include "src/mime_parts.h"

/* Small enough that a read costs about what it asks for, large enough
 * that a part is a handful of blocks. */
#define PART_BLOCK_SIZE (64u * 1024)

/* The message a tree belongs to; all borrowed. */
struct part_source {
	struct backend *be;
	const char *folder;       /* raw server name */
	uint32_t uidvalidity, uid;
	uint64_t *fetched;        /* may be NULL: bytes received are added
	                             here (atomically) */
	struct block_cache *cache;  /* may be NULL */
	const char *account;      /* names the cache keys' account */
};

/* Where a forward decoding stands: zero it before the first read,
 * release it with part_cursor_free. */
struct part_cursor {
	uint64_t enc_pos;       /* encoded bytes decoded so far */
	uint64_t dec_pos;       /* decoded bytes produced so far */
	char *buf;              /* the last decoded bytes, ending at dec_pos;
	                           owned */
	size_t buf_len;
	struct mime_decoder dec;
	bool valid, ended;
	int layout_state;       /* base64: 0 unknown, 1 regular, -1 not */
	struct mime_b64_layout layout;
};

void part_cursor_free(struct part_cursor *cur);

/* Reads up to len encoded bytes at off; fewer means the part ended. */
enum backend_status part_read_encoded(const struct part_source *src,
	const struct mime_node *n, uint64_t off, size_t len, void *buf,
	size_t *got_r, const char **error_r);

/* All the part's encoded bytes, at most max (more: BACKEND_UNSUPPORTED).
 * *buf_r is malloc'd, owned by the caller. */
enum backend_status part_read_all(const struct part_source *src,
	const struct mime_node *n, size_t max, char **buf_r, size_t *len_r,
	const char **error_r);

/* The decoded size of a FILE or RAW node: *exact_r false when it is only
 * an estimate (an upper bound for quoted-printable).  Costs at most two
 * small reads (a base64 part's first and last lines). */
enum backend_status part_decoded_size(const struct part_source *src,
	const struct mime_node *n, uint64_t *size_r, bool *exact_r,
	const char **error_r);

/* Reads up to len decoded bytes at off of a FILE or RAW node; fewer means
 * the part ended.  cur (may be NULL) carries a forward decoding from one
 * call to the next. */
enum backend_status part_read_decoded(const struct part_source *src,
	const struct mime_node *n, struct part_cursor *cur, uint64_t off,
	size_t len, void *buf, size_t *got_r, const char **error_r);

#endif
