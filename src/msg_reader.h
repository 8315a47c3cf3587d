/* Reading message content: memory and disk caches in front of the backend.
 *
 * A message is read in BLOCK_CACHE_BLOCK_SIZE blocks.  A block comes from
 * a small in-memory LRU (the kernel reads 128 KiB at a time, so one block
 * serves several reads), else from the verified on-disk block cache, else
 * from one ranged read from the backend, after which it is stored in both.
 * A block being fetched is fetched once: other readers wait for it.
 *
 * Read-ahead runs on background workers: the next block of a message read
 * sequentially, and the first blocks of the next messages of a folder
 * read file after file (grep -r, cp -r), fetched in one batched command.
 *
 * Thread-safe; no lock is held across network or disk I/O.
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

struct msg_reader_stats {
	uint64_t bytes_fetched;   /* message bytes received from the server */
	uint64_t blocks_fetched;  /* blocks received from the server */
	uint64_t memory_hits;     /* blocks served from the in-memory LRU */
	uint64_t prefetched;      /* blocks fetched by read-ahead */
};

/* be and cache are borrowed and must outlive the reader; cache may be
 * NULL (no disk cache).  account names the cache keys' account. */
struct msg_reader *msg_reader_new(struct backend *be,
	struct block_cache *cache, const char *account);

/* Starts the read-ahead workers (after any fork: threads do not survive
 * daemonizing).  Without them read-ahead requests are dropped. */
void msg_reader_start(struct msg_reader *reader);

/* Stops the workers (waiting for their current fetch, which is bounded
 * by the network timeout) and frees the reader; sets *reader to NULL. */
void msg_reader_free(struct msg_reader **reader);

/* Reads up to `length` bytes at `offset` into buf.  Returns the number of
 * bytes read (short only at the end of the message), or -errno (-EIO when
 * the server cannot be reached and the bytes are not cached, -ENOENT when
 * the message is gone).  When the read reached the real end of the message
 * *true_size_r is set to its real length (which may differ from the
 * announced size), otherwise to 0.  Sequential reads queue read-ahead of
 * the message's next block. */
ssize_t msg_reader_read(struct msg_reader *reader, const struct msg_ref *ref,
	uint64_t offset, size_t length, char *buf, uint64_t *true_size_r);

/* Queues a background fetch of the first block of each listed message of
 * one folder (those not cached or being fetched already), in batches of
 * one command each.  Arrays are copied. */
void msg_reader_prefetch_heads(struct msg_reader *reader, const char *folder,
	uint32_t uidvalidity, const uint32_t *uids, const uint64_t *sizes,
	size_t n);

void msg_reader_get_stats(struct msg_reader *reader,
	struct msg_reader_stats *stats_r);

#endif
