/* Reading message content: the block cache in front of the backend.
 *
 * A message is read in BLOCK_CACHE_BLOCK_SIZE blocks; each block is served
 * from the block cache when present and verified, otherwise fetched with
 * one ranged read from the backend and stored.  Thread-safe; no lock is
 * held across network I/O.
 */
#ifndef MAILFS_MSG_READER_H
#define MAILFS_MSG_READER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "src/backend.h"
#include "src/block_cache.h"

/* Which message to read.  All fields borrowed for the call. */
struct msg_ref {
	const char *folder;     /* raw server name */
	uint32_t uidvalidity;
	uint32_t uid;
	uint64_t size;          /* announced size (RFC822.SIZE) */
};

struct msg_reader;

/* be and cache are borrowed and must outlive the reader; cache may be
 * NULL (no caching).  account names the cache keys' account. */
struct msg_reader *msg_reader_new(struct backend *be,
	struct block_cache *cache, const char *account);
void msg_reader_free(struct msg_reader **reader);

/* Reads up to `length` bytes at `offset` into buf.  Returns the number of
 * bytes read (short only at the end of the message), or -errno (-EIO when
 * the server cannot be reached and the bytes are not cached, -ENOENT when
 * the message is gone).  When the read reached the real end of the message
 * *true_size_r is set to its real length (which may differ from the
 * announced size), otherwise to 0. */
ssize_t msg_reader_read(struct msg_reader *reader, const struct msg_ref *ref,
	uint64_t offset, size_t length, char *buf, uint64_t *true_size_r);

#endif
