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

/* On disk a block is this header followed by its data; all integers are
 * little-endian:
 *
 *   0  magic "MFSBLK01"     8 bytes
 *   8  format version (1)   u32
 *  12  flags                u32, bit 0 = end of message, others zero
 *  16  key hi, key lo       u64, u64
 *  32  data length          u64, at most BLOCK_CACHE_BLOCK_SIZE
 *  40  XXH3-64 of the data  u64
 *  48  XXH3-64 of bytes 0..47
 *
 * A file is valid only if its size is exactly header + data length. */
#define BLOCK_CACHE_HEADER_SIZE 56

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

/* XXH3-128 of (account, folder, uidvalidity, uid, index), encoded as
 *   u64 strlen(account), account, u64 strlen(folder), folder,
 *   u32 uidvalidity, u32 uid, u32 index      (all little-endian)
 * so no two distinct tuples share an encoding.  Never fails. */
struct block_key block_key_make(const char *account, const char *folder,
	uint32_t uidvalidity, uint32_t uid, uint32_t index);

/* The key of block `index` of one part of a message (section: its IMAP
 * section, e.g. "1.2"): XXH3-128 of
 *   u64 UINT64_MAX, u64 strlen(account), account, u64 strlen(folder),
 *   folder, u32 uidvalidity, u32 uid, u64 strlen(section), section,
 *   u32 index                                (all little-endian)
 * The leading UINT64_MAX, a length no account name has, keeps these
 * encodings apart from block_key_make's.  Never fails. */
struct block_key block_key_make_part(const char *account, const char *folder,
	uint32_t uidvalidity, uint32_t uid, const char *section,
	uint32_t index);

/* Opens (creating, mode 0700) the cache under dir.  Removes temp files left
 * by a crash, deletes files whose header is invalid, and rebuilds the LRU
 * index from the files' access times; then evicts down to max_bytes.
 * Only one open cache may use a directory at a time: open takes an
 * exclusive flock on <dir>/lock and fails if another holder has it.
 * Returns 0, or -1 with *error_r set (see errfmt()).  The caller owns
 * *cache_r: release with block_cache_close(), which also drops the lock. */
int block_cache_open(const char *dir, uint64_t max_bytes,
	struct block_cache **cache_r, const char **error_r);

void block_cache_close(struct block_cache **cache);

/* Looks a block up.  Returns true and stores its data (at most cap bytes;
 * blocks are never larger than BLOCK_CACHE_BLOCK_SIZE), its length and
 * whether it ends the message; false if absent or corrupt (then deleted).
 * A valid block longer than cap is reported absent and kept.  On false the
 * contents of buf are undefined.  len_r and eom_r may be NULL. */
bool block_cache_get(struct block_cache *cache, const struct block_key *key,
	void *buf, size_t cap, size_t *len_r, bool *eom_r);

/* True if the index holds the key (no file access, no verification): a
 * cheap test for read-ahead, not a promise that get will succeed. */
bool block_cache_contains(struct block_cache *cache,
	const struct block_key *key);

/* Asks the kernel to start reading the key's block file into the page
 * cache (read-ahead for a block about to be wanted); no verification,
 * nothing happens if it is not there. */
void block_cache_warm(struct block_cache *cache, const struct block_key *key);

/* Stores a block; `eom` says it is the message's last block.  Evicts least
 * recently used blocks to stay within the bound.  Returns 0, or -1 when the
 * block could not be stored (the caller carries on without the cache). */
int block_cache_put(struct block_cache *cache, const struct block_key *key,
	const void *data, size_t len, bool eom);

void block_cache_get_stats(struct block_cache *cache,
	struct block_cache_stats *stats_r);

/* Writes the path of key's file, "<dir>/blocks/xx/<32 hex digits>", into
 * buf (cap bytes, NUL included).  For tests and diagnostics; the file need
 * not exist.  Returns 0, or -1 if buf is too small. */
int block_cache_block_path(const struct block_cache *cache,
	const struct block_key *key, char *buf, size_t cap);

#endif
