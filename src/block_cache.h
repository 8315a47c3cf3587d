/* The on-disk block cache of message content.
 *
 * Messages are immutable per (folder, UIDVALIDITY, UID), so a block never
 * goes stale: it is only ever evicted.  Each block lives in one file under
 * <dir>/blocks/xx/<32 hex digits of the key>, written as a temp file and
 * renamed into place, with a fixed header (magic, version, the key, the
 * data length, an end-of-message flag, XXH3-64 of the data, and a checksum
 * of the header itself).  Every read verifies both checksums and the key; a
 * block that fails is deleted and reported absent, so wrong bytes are never
 * served.
 *
 * The cache is bounded by max_bytes (bytes on disk, headers included); the
 * least recently used blocks are evicted first.  Directories are 0700 and
 * files 0600.  All functions are thread-safe; no lock is held during file
 * I/O.  Failures to store (ENOSPC, EIO) are not fatal: the cache is simply
 * bypassed for that block.
 */
#ifndef MAILFS_BLOCK_CACHE_H
#define MAILFS_BLOCK_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BLOCK_CACHE_BLOCK_SIZE (1024 * 1024)

struct block_key {
	uint64_t hi, lo;   /* XXH3-128 */
};

struct block_cache;

struct block_cache_stats {
	uint64_t hits;              /* blocks served from disk */
	uint64_t misses;            /* lookups that found no valid block */
	uint64_t checksum_failures; /* blocks discarded as corrupt */
	uint64_t evictions;         /* blocks removed to respect the bound */
	uint64_t bytes_on_disk;     /* current total, headers included */
	uint64_t blocks_on_disk;
	uint64_t store_failures;    /* puts that failed (disk full, ...) */
};

/* XXH3-128 of (account, folder, uidvalidity, uid, index), each field
 * length-prefixed so no two distinct tuples share an encoding. */
struct block_key block_key_make(const char *account, const char *folder,
	uint32_t uidvalidity, uint32_t uid, uint32_t index);

/* Opens (creating, mode 0700) the cache under dir.  Removes temp files left
 * by a crash, deletes files whose header is invalid, and rebuilds the LRU
 * index from the files' access times.  Returns 0, or -1 with *error_r set.
 * The caller owns *cache_r: release with block_cache_close(). */
int block_cache_open(const char *dir, uint64_t max_bytes,
	struct block_cache **cache_r, const char **error_r);

void block_cache_close(struct block_cache **cache);

/* Looks a block up.  Returns true and stores its data (at most cap bytes;
 * blocks are never larger than BLOCK_CACHE_BLOCK_SIZE), its length and
 * whether it ends the message; false if absent or corrupt (then deleted). */
bool block_cache_get(struct block_cache *cache, const struct block_key *key,
	void *buf, size_t cap, size_t *len_r, bool *eom_r);

/* Stores a block; `eom` says it is the message's last block.  Evicts least
 * recently used blocks to stay within the bound.  Returns 0, or -1 when the
 * block could not be stored (the caller carries on without the cache). */
int block_cache_put(struct block_cache *cache, const struct block_key *key,
	const void *data, size_t len, bool eom);

void block_cache_get_stats(struct block_cache *cache,
	struct block_cache_stats *stats_r);

#endif
