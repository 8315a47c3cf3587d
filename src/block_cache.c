/* The on-disk block cache.  See block_cache.h for the contract and the file
 * format.
 *
 * Index: a hash map from key to entry (chained; keys are already uniform
 * hashes, so the low bits pick the bucket) plus a doubly linked LRU list,
 * most recent at the head.  One mutex guards the index and the counters; it
 * is never held across file I/O.
 *
 * Invariant: every block file on disk has an entry, except for the moment
 * between a put's rename and its insertion.  The reverse may briefly not
 * hold: an entry can outlive its file when an eviction's unlink (done after
 * the lock is dropped) races with a put of the same key.  That only makes
 * bytes_on_disk an over-estimate, which keeps the bound safe, and the next
 * get of that key finds no file and drops the entry.
 *
 * No fsync: a block that a crash left empty, short or half-written fails
 * the size, header or data checksum on its next read (or at the start-up
 * scan) and is then deleted, so durability would buy nothing but latency.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <xxhash.h>

#include "src/block_cache.h"
#include "src/errfmt.h"
#include "src/owned_dir.h"

#define HDR_MAGIC "MFSBLK01"
#define HDR_MAGIC_LEN 8
#define HDR_VERSION 1
#define HDR_FLAG_EOM 0x1u
#define HDR_HASHED_LEN 48	/* bytes covered by the header checksum */

#define DIR_MODE 0700
#define FILE_MODE 0600
#define CACHE_MARKER ".mailfs-cache"

/* "blocks/xx/" + 32 hex digits + NUL */
#define REL_PATH_MAX 48
#define TMP_NAME_MAX 64
#define TMP_ATTEMPTS 8
#define RM_DEPTH_MAX 8
#define BUCKETS_MIN 1024

struct cache_entry {
	struct block_key key;
	uint64_t size;		/* bytes on disk, header included */
	uint64_t gen;		/* changes on every put of this key */
	struct cache_entry *hash_next;	/* also links eviction victims */
	struct cache_entry *lru_prev, *lru_next;
};

struct block_cache {
	char *dir;		/* as given, for block_cache_block_path() */
	int dir_fd;		/* every path below is relative to this */
	int lock_fd;		/* holds the flock on <dir>/lock */
	uint64_t max_bytes;
	uint64_t tmp_seq;	/* atomic; names temp files */

	pthread_mutex_t lock;	/* guards everything below */
	struct cache_entry **buckets;
	size_t bucket_mask;
	struct cache_entry *lru_head, *lru_tail;
	uint64_t next_gen;
	struct block_cache_stats stats;
};

struct block_header {
	uint32_t flags;
	struct block_key key;
	uint64_t len;
	uint64_t data_hash;
};

/* Little-endian encoding */

static void put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_le32(const uint8_t *p)
{
	uint32_t v = 0;

	for (int i = 3; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static uint64_t get_le64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

/* Keys */

#define KEY_STACK_BUF 1024
#define KEY_FIXED_LEN (8 + 8 + 4 + 4 + 4)

static struct block_key key_from_hash(XXH128_hash_t h)
{
	return (struct block_key){ .hi = h.high64, .lo = h.low64 };
}

/* Names too long for the stack buffer: hash the same bytes piecewise. */
static struct block_key key_make_streaming(const char *account, size_t alen,
	const char *folder, size_t flen, const uint8_t ints[12])
{
	XXH3_state_t *state = XXH3_createState();
	uint8_t len[8];
	XXH128_hash_t h;

	/* The key decides which bytes are served; no safe fallback exists. */
	if (!state) {
		fputs("mailfs: out of memory hashing a block key\n", stderr);
		abort();
	}
	XXH3_128bits_reset(state);
	put_le64(len, alen);
	XXH3_128bits_update(state, len, sizeof(len));
	XXH3_128bits_update(state, account, alen);
	put_le64(len, flen);
	XXH3_128bits_update(state, len, sizeof(len));
	XXH3_128bits_update(state, folder, flen);
	XXH3_128bits_update(state, ints, 12);
	h = XXH3_128bits_digest(state);
	XXH3_freeState(state);
	return key_from_hash(h);
}

struct block_key block_key_make(const char *account, const char *folder,
	uint32_t uidvalidity, uint32_t uid, uint32_t index)
{
	size_t alen = strlen(account), flen = strlen(folder);
	uint8_t ints[12], buf[KEY_STACK_BUF], *p = buf;

	put_le32(ints, uidvalidity);
	put_le32(ints + 4, uid);
	put_le32(ints + 8, index);

	if (alen > sizeof(buf) - KEY_FIXED_LEN ||
	    flen > sizeof(buf) - KEY_FIXED_LEN - alen)
		return key_make_streaming(account, alen, folder, flen, ints);

	put_le64(p, alen);
	memcpy(p + 8, account, alen);
	p += 8 + alen;
	put_le64(p, flen);
	memcpy(p + 8, folder, flen);
	p += 8 + flen;
	memcpy(p, ints, sizeof(ints));
	p += sizeof(ints);
	return key_from_hash(XXH3_128bits(buf, (size_t)(p - buf)));
}

struct block_key block_key_make_part(const char *account, const char *folder,
	uint32_t uidvalidity, uint32_t uid, const char *section,
	uint32_t index)
{
	XXH3_state_t *state = XXH3_createState();
	const char *strs[3] = { account, folder, section };
	uint8_t word[8], ints[8];
	XXH128_hash_t h;

	if (!state) {
		fputs("mailfs: out of memory hashing a block key\n", stderr);
		abort();
	}
	XXH3_128bits_reset(state);
	/* a length no account name has: never a message block's encoding */
	put_le64(word, UINT64_MAX);
	XXH3_128bits_update(state, word, sizeof(word));
	for (size_t i = 0; i < 3; i++) {
		size_t len = strlen(strs[i]);

		put_le64(word, len);
		XXH3_128bits_update(state, word, sizeof(word));
		XXH3_128bits_update(state, strs[i], len);
		if (i == 1) {
			put_le32(ints, uidvalidity);
			put_le32(ints + 4, uid);
			XXH3_128bits_update(state, ints, sizeof(ints));
		}
	}
	put_le32(ints, index);
	XXH3_128bits_update(state, ints, 4);
	h = XXH3_128bits_digest(state);
	XXH3_freeState(state);
	return key_from_hash(h);
}

static bool key_equal(const struct block_key *a, const struct block_key *b)
{
	return a->hi == b->hi && a->lo == b->lo;
}

/* "blocks/xx/<32 hex>", the file's path relative to dir_fd. */
static void key_rel_path(const struct block_key *key, char buf[REL_PATH_MAX])
{
	snprintf(buf, REL_PATH_MAX, "blocks/%02x/%016" PRIx64 "%016" PRIx64,
		 (unsigned)(key->hi >> 56), key->hi, key->lo);
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;	/* upper case is not a name we write */
}

/* Parses exactly 32 lower-case hex digits. */
static bool key_parse(const char *name, struct block_key *key_r)
{
	uint64_t half[2] = { 0, 0 };

	for (int i = 0; i < 32; i++) {
		int v = hex_value(name[i]);

		if (v < 0)
			return false;
		half[i / 16] = (half[i / 16] << 4) | (uint64_t)v;
	}
	if (name[32] != '\0')
		return false;
	key_r->hi = half[0];
	key_r->lo = half[1];
	return true;
}

/* Headers */

static void header_encode(uint8_t out[BLOCK_CACHE_HEADER_SIZE],
	const struct block_header *h)
{
	memcpy(out, HDR_MAGIC, HDR_MAGIC_LEN);
	put_le32(out + 8, HDR_VERSION);
	put_le32(out + 12, h->flags);
	put_le64(out + 16, h->key.hi);
	put_le64(out + 24, h->key.lo);
	put_le64(out + 32, h->len);
	put_le64(out + 40, h->data_hash);
	put_le64(out + 48, XXH3_64bits(out, HDR_HASHED_LEN));
}

/* Checks everything the header alone can tell. */
static bool header_decode(const uint8_t in[BLOCK_CACHE_HEADER_SIZE],
	struct block_header *h_r)
{
	if (memcmp(in, HDR_MAGIC, HDR_MAGIC_LEN) != 0 ||
	    get_le32(in + 8) != HDR_VERSION ||
	    get_le64(in + 48) != XXH3_64bits(in, HDR_HASHED_LEN))
		return false;
	h_r->flags = get_le32(in + 12);
	h_r->key.hi = get_le64(in + 16);
	h_r->key.lo = get_le64(in + 24);
	h_r->len = get_le64(in + 32);
	h_r->data_hash = get_le64(in + 40);
	return (h_r->flags & ~HDR_FLAG_EOM) == 0 &&
	       h_r->len <= BLOCK_CACHE_BLOCK_SIZE;
}

/* File helpers */

static int write_full(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0) {
			errno = ENOSPC;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Returns the bytes read; fewer than len only at end of file. */
static ssize_t pread_full(int fd, void *buf, size_t len, off_t off)
{
	uint8_t *p = buf;
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, p + done, len - done, off + (off_t)done);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0)
			break;
		done += (size_t)n;
	}
	return (ssize_t)done;
}

static bool is_dot_entry(const char *name)
{
	return strcmp(name, ".") == 0 || strcmp(name, "..") == 0;
}

/* mkdirat with an exact mode, whatever the umask.  0 if it exists. */
static int mkdir_private_at(int dfd, const char *path)
{
	if (mkdirat(dfd, path, DIR_MODE) == 0)
		return fchmodat(dfd, path, DIR_MODE, 0);
	return errno == EEXIST ? 0 : -1;
}

/* Removes name under dfd whatever it is, without following symlinks.
 * Best effort: what cannot be removed stays (unindexed, so never served). */
static void remove_tree_at(int dfd, const char *name, int depth)
{
	struct dirent *de;
	DIR *d;
	int fd;

	if (unlinkat(dfd, name, 0) == 0 || errno == ENOENT)
		return;
	if ((errno != EISDIR && errno != EPERM) || depth >= RM_DEPTH_MAX)
		return;
	fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return;
	}
	while ((de = readdir(d)) != NULL) {
		if (is_dot_entry(de->d_name))
			continue;
		remove_tree_at(dirfd(d), de->d_name, depth + 1);
	}
	closedir(d);
	unlinkat(dfd, name, AT_REMOVEDIR);
}

/* Index; all of these need cache->lock. */

static struct cache_entry **bucket_of(struct block_cache *cache,
	const struct block_key *key)
{
	return &cache->buckets[key->lo & cache->bucket_mask];
}

static struct cache_entry *index_find(struct block_cache *cache,
	const struct block_key *key)
{
	struct cache_entry *e;

	for (e = *bucket_of(cache, key); e; e = e->hash_next)
		if (key_equal(&e->key, key))
			return e;
	return NULL;
}

static void lru_unlink(struct block_cache *cache, struct cache_entry *e)
{
	if (e->lru_prev)
		e->lru_prev->lru_next = e->lru_next;
	else
		cache->lru_head = e->lru_next;
	if (e->lru_next)
		e->lru_next->lru_prev = e->lru_prev;
	else
		cache->lru_tail = e->lru_prev;
	e->lru_prev = e->lru_next = NULL;
}

static void lru_push_front(struct block_cache *cache, struct cache_entry *e)
{
	e->lru_prev = NULL;
	e->lru_next = cache->lru_head;
	if (cache->lru_head)
		cache->lru_head->lru_prev = e;
	else
		cache->lru_tail = e;
	cache->lru_head = e;
}

/* Doubles the table when it gets full; on allocation failure the chains
 * just grow longer. */
static void index_maybe_grow(struct block_cache *cache)
{
	size_t n = cache->bucket_mask + 1, i;
	struct cache_entry **nb, *e, *next;

	if (cache->stats.blocks_on_disk < n || n > SIZE_MAX / 2 / sizeof(*nb))
		return;
	nb = calloc(n * 2, sizeof(*nb));
	if (!nb)
		return;
	for (i = 0; i < n; i++) {
		for (e = cache->buckets[i]; e; e = next) {
			next = e->hash_next;
			e->hash_next = nb[e->key.lo & (n * 2 - 1)];
			nb[e->key.lo & (n * 2 - 1)] = e;
		}
	}
	free(cache->buckets);
	cache->buckets = nb;
	cache->bucket_mask = n * 2 - 1;
}

/* Inserts e as most recent; e must not be indexed yet. */
static void index_insert(struct block_cache *cache, struct cache_entry *e)
{
	struct cache_entry **b;

	index_maybe_grow(cache);
	b = bucket_of(cache, &e->key);
	e->hash_next = *b;
	*b = e;
	lru_push_front(cache, e);
	cache->stats.blocks_on_disk++;
	cache->stats.bytes_on_disk += e->size;
}

static void index_remove(struct block_cache *cache, struct cache_entry *e)
{
	struct cache_entry **pp = bucket_of(cache, &e->key);

	while (*pp != e)
		pp = &(*pp)->hash_next;
	*pp = e->hash_next;
	e->hash_next = NULL;
	lru_unlink(cache, e);
	cache->stats.blocks_on_disk--;
	cache->stats.bytes_on_disk -= e->size;
}

/* Drops key's entry if no put has replaced it since gen was read. */
static void index_forget(struct block_cache *cache,
	const struct block_key *key, uint64_t gen)
{
	struct cache_entry *e = index_find(cache, key);

	if (e && e->gen == gen) {
		index_remove(cache, e);
		free(e);
	}
}

/* Takes least recently used entries out of the index until the bound
 * holds, returning them as a list for evict_unlink() to delete once the
 * lock is dropped.  keep is never chosen. */
static struct cache_entry *evict_collect(struct block_cache *cache,
	const struct cache_entry *keep)
{
	struct cache_entry *victims = NULL, *e;

	while (cache->stats.bytes_on_disk > cache->max_bytes) {
		e = cache->lru_tail;
		if (!e || e == keep)
			break;
		index_remove(cache, e);
		cache->stats.evictions++;
		e->hash_next = victims;
		victims = e;
	}
	return victims;
}

/* Called without the lock. */
static void evict_unlink(struct block_cache *cache, struct cache_entry *victims)
{
	char path[REL_PATH_MAX];
	struct cache_entry *e;

	while ((e = victims) != NULL) {
		victims = e->hash_next;
		key_rel_path(&e->key, path);
		unlinkat(cache->dir_fd, path, 0);
		free(e);
	}
}

/* Put */

static void count_store_failure(struct block_cache *cache)
{
	pthread_mutex_lock(&cache->lock);
	cache->stats.store_failures++;
	pthread_mutex_unlock(&cache->lock);
}

/* Creates a fresh temp file; its name goes to name (TMP_NAME_MAX). */
static int tmp_create(struct block_cache *cache, char *name)
{
	for (int i = 0; i < TMP_ATTEMPTS; i++) {
		uint64_t seq = __atomic_fetch_add(&cache->tmp_seq, 1,
						  __ATOMIC_RELAXED);
		int fd;

		snprintf(name, TMP_NAME_MAX, "tmp/%ld.%" PRIu64,
			 (long)getpid(), seq);
		fd = openat(cache->dir_fd, name, O_WRONLY | O_CREAT | O_EXCL |
			    O_NOFOLLOW | O_CLOEXEC, FILE_MODE);
		if (fd >= 0)
			return fd;
		if (errno != EEXIST)
			return -1;
	}
	return -1;
}

/* Renames the temp file into place, recreating the fan-out directory if
 * it has gone missing. */
static int tmp_commit(struct block_cache *cache, const char *tmp,
	const char *path)
{
	char sub[REL_PATH_MAX];

	if (renameat(cache->dir_fd, tmp, cache->dir_fd, path) == 0)
		return 0;
	if (errno != ENOENT)
		return -1;
	/* path is "blocks/xx/...": cut after "blocks/xx" */
	snprintf(sub, sizeof(sub), "%.9s", path);
	if (mkdir_private_at(cache->dir_fd, "blocks") < 0 ||
	    mkdir_private_at(cache->dir_fd, sub) < 0)
		return -1;
	return renameat(cache->dir_fd, tmp, cache->dir_fd, path);
}

int block_cache_put(struct block_cache *cache, const struct block_key *key,
	const void *data, size_t len, bool eom)
{
	uint8_t hdr[BLOCK_CACHE_HEADER_SIZE];
	char tmp[TMP_NAME_MAX], path[REL_PATH_MAX];
	struct block_header h = {
		.flags = eom ? HDR_FLAG_EOM : 0,
		.key = *key,
		.len = len,
	};
	struct cache_entry *e, *old, *victims;
	int fd, saved_errno;

	/* A block that alone breaks the bound is not worth writing. */
	if (len > BLOCK_CACHE_BLOCK_SIZE ||
	    BLOCK_CACHE_HEADER_SIZE + len > cache->max_bytes)
		goto out_count;

	/* Allocated up front: after the rename there is no way back. */
	e = calloc(1, sizeof(*e));
	if (!e)
		goto out_count;
	e->key = *key;
	e->size = BLOCK_CACHE_HEADER_SIZE + len;

	h.data_hash = XXH3_64bits(data, len);
	header_encode(hdr, &h);
	key_rel_path(key, path);

	fd = tmp_create(cache, tmp);
	if (fd < 0)
		goto out_free_entry;
	/* The umask may have taken bits from the owner too. */
	if (fchmod(fd, FILE_MODE) < 0 ||
	    write_full(fd, hdr, sizeof(hdr)) < 0 ||
	    write_full(fd, data, len) < 0) {
		close(fd);
		goto out_unlink_tmp;
	}
	/* Some file systems report a full disk only here. */
	if (close(fd) < 0)
		goto out_unlink_tmp;
	if (tmp_commit(cache, tmp, path) < 0)
		goto out_unlink_tmp;

	pthread_mutex_lock(&cache->lock);
	e->gen = ++cache->next_gen;
	old = index_find(cache, key);
	if (old) {
		/* Same key put twice: the newer file replaced the older. */
		index_remove(cache, old);
		free(old);
	}
	index_insert(cache, e);
	victims = evict_collect(cache, e);
	pthread_mutex_unlock(&cache->lock);

	evict_unlink(cache, victims);
	return 0;

out_unlink_tmp:
	saved_errno = errno;
	unlinkat(cache->dir_fd, tmp, 0);
	errno = saved_errno;
out_free_entry:
	free(e);
out_count:
	count_store_failure(cache);
	return -1;
}

/* Get */

enum read_result {
	READ_OK,
	READ_MISSING,	/* no file */
	READ_SKIP,	/* cannot use it now, but nothing is wrong with it */
	READ_CORRUPT,	/* delete it */
};

/* Recency is recorded in atime for the order of eviction after a
 * restart; an hour's precision is plenty, and not touching a file read
 * recently keeps reads from dirtying inodes. */
#define ATIME_PRECISION_S 3600

static enum read_result block_read(struct block_cache *cache,
	const char *path, const struct block_key *key, void *buf, size_t cap,
	struct block_header *h_r)
{
	const struct timespec touch[2] = {
		{ .tv_nsec = UTIME_NOW },
		{ .tv_nsec = UTIME_OMIT },
	};
	uint8_t hdr[BLOCK_CACHE_HEADER_SIZE], extra;
	/* Header and data in one read; a byte past them means the file is
	 * longer than its header says. */
	struct iovec iov[3] = {
		{ hdr, sizeof(hdr) }, { buf, cap }, { &extra, 1 },
	};
	enum read_result res = READ_CORRUPT;
	struct timespec now;
	struct stat st;
	ssize_t n;
	int fd;

	fd = openat(cache->dir_fd, path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC |
		O_NONBLOCK);
	if (fd < 0)
		return errno == ENOENT ? READ_MISSING : READ_SKIP;
	if (fstat(fd, &st) < 0) {
		res = READ_SKIP;
		goto out_close;
	}
	if (!S_ISREG(st.st_mode) || st.st_size < BLOCK_CACHE_HEADER_SIZE)
		goto out_close;
	do
		n = preadv(fd, iov, 3, 0);
	while (n < 0 && errno == EINTR);
	if (n < (ssize_t)sizeof(hdr) || !header_decode(hdr, h_r) ||
	    !key_equal(&h_r->key, key) ||
	    (uint64_t)st.st_size != BLOCK_CACHE_HEADER_SIZE + h_r->len)
		goto out_close;
	if (h_r->len > cap) {
		/* Well formed, only too big for this reader: keep it. */
		res = READ_SKIP;
		goto out_close;
	}
	if ((uint64_t)n != BLOCK_CACHE_HEADER_SIZE + h_r->len ||
	    XXH3_64bits(buf, h_r->len) != h_r->data_hash)
		goto out_close;
	clock_gettime(CLOCK_REALTIME, &now);
	if (now.tv_sec - st.st_atim.tv_sec > ATIME_PRECISION_S)
		futimens(fd, touch);   /* best effort */
	res = READ_OK;
out_close:
	close(fd);
	return res;
}

void block_cache_warm(struct block_cache *cache, const struct block_key *key)
{
	char path[REL_PATH_MAX];
	int fd;

	key_rel_path(key, path);
	fd = openat(cache->dir_fd, path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC |
		O_NONBLOCK);
	if (fd < 0)
		return;
	posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED);
	close(fd);
}

bool block_cache_contains(struct block_cache *cache,
	const struct block_key *key)
{
	bool found;

	pthread_mutex_lock(&cache->lock);
	found = index_find(cache, key) != NULL;
	pthread_mutex_unlock(&cache->lock);
	return found;
}

bool block_cache_get(struct block_cache *cache, const struct block_key *key,
	void *buf, size_t cap, size_t *len_r, bool *eom_r)
{
	char path[REL_PATH_MAX];
	struct block_header h;
	struct cache_entry *e;
	enum read_result res;
	uint64_t gen;

	pthread_mutex_lock(&cache->lock);
	e = index_find(cache, key);
	if (!e) {
		cache->stats.misses++;
		pthread_mutex_unlock(&cache->lock);
		return false;
	}
	gen = e->gen;
	pthread_mutex_unlock(&cache->lock);

	key_rel_path(key, path);
	res = block_read(cache, path, key, buf, cap, &h);
	if (res == READ_CORRUPT)
		unlinkat(cache->dir_fd, path, 0);

	pthread_mutex_lock(&cache->lock);
	switch (res) {
	case READ_OK:
		/* Evicted meanwhile or not, the bytes were good. */
		e = index_find(cache, key);
		if (e) {
			lru_unlink(cache, e);
			lru_push_front(cache, e);
		}
		cache->stats.hits++;
		break;
	case READ_CORRUPT:
		cache->stats.checksum_failures++;
		/* fall through */
	case READ_MISSING:
		/* Unless a put has since written a new file under this key. */
		index_forget(cache, key, gen);
		/* fall through */
	case READ_SKIP:
		cache->stats.misses++;
		break;
	}
	pthread_mutex_unlock(&cache->lock);

	if (res != READ_OK)
		return false;
	if (len_r)
		*len_r = h.len;
	if (eom_r)
		*eom_r = (h.flags & HDR_FLAG_EOM) != 0;
	return true;
}

/* Open: scan */

struct scan_item {
	struct block_key key;
	uint64_t size;
	struct timespec atime, mtime;
};

struct scan_list {
	struct scan_item *items;
	size_t count, cap;
};

static int scan_add(struct scan_list *list, const struct scan_item *item)
{
	if (list->count == list->cap) {
		size_t ncap = list->cap ? list->cap * 2 : 256;
		struct scan_item *n;

		if (ncap > SIZE_MAX / sizeof(*n))
			return -1;
		n = realloc(list->items, ncap * sizeof(*n));
		if (!n)
			return -1;
		list->items = n;
		list->cap = ncap;
	}
	list->items[list->count++] = *item;
	return 0;
}

static int timespec_cmp(const struct timespec *a, const struct timespec *b)
{
	if (a->tv_sec != b->tv_sec)
		return a->tv_sec < b->tv_sec ? -1 : 1;
	if (a->tv_nsec != b->tv_nsec)
		return a->tv_nsec < b->tv_nsec ? -1 : 1;
	return 0;
}

/* Oldest use first; the key makes the order total. */
static int scan_item_cmp(const void *pa, const void *pb)
{
	const struct scan_item *a = pa, *b = pb;
	int c = timespec_cmp(&a->atime, &b->atime);

	if (c == 0)
		c = timespec_cmp(&a->mtime, &b->mtime);
	if (c == 0 && a->key.hi != b->key.hi)
		c = a->key.hi < b->key.hi ? -1 : 1;
	if (c == 0 && a->key.lo != b->key.lo)
		c = a->key.lo < b->key.lo ? -1 : 1;
	return c;
}

/* Checks one file of blocks/<prefix>/.  Its data is verified at first
 * read, not here, to keep start-up cheap. */
static bool scan_file_valid(int subfd, const char *name, unsigned prefix,
	struct scan_item *item_r)
{
	uint8_t hdr[BLOCK_CACHE_HEADER_SIZE];
	struct block_header h;
	struct stat st;
	bool ok = false;
	int fd;

	if (!key_parse(name, &item_r->key) ||
	    (item_r->key.hi >> 56) != prefix)
		return false;
	/* Reading the header must not pass for a use of the block: the
	 * atime is the LRU order.  O_NOATIME needs ownership. */
	fd = openat(subfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME);
	if (fd < 0 && errno == EPERM)
		fd = openat(subfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return false;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    st.st_size < BLOCK_CACHE_HEADER_SIZE)
		goto out_close;
	if (pread_full(fd, hdr, sizeof(hdr), 0) != (ssize_t)sizeof(hdr) ||
	    !header_decode(hdr, &h) || !key_equal(&h.key, &item_r->key) ||
	    (uint64_t)st.st_size != BLOCK_CACHE_HEADER_SIZE + h.len)
		goto out_close;
	if ((st.st_mode & 07777) != FILE_MODE && fchmod(fd, FILE_MODE) < 0)
		goto out_close;
	item_r->size = (uint64_t)st.st_size;
	item_r->atime = st.st_atim;
	item_r->mtime = st.st_mtim;
	ok = true;
out_close:
	close(fd);
	return ok;
}

static int scan_subdir(int blocks_fd, const char *sub, unsigned prefix,
	struct scan_list *list, const char **error_r)
{
	struct scan_item item;
	struct dirent *de;
	int fd, ret = 0;
	DIR *d;

	if (fchmodat(blocks_fd, sub, DIR_MODE, 0) < 0)
		goto out_error;
	fd = openat(blocks_fd, sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
		    O_CLOEXEC);
	if (fd < 0)
		goto out_error;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		goto out_error;
	}
	while ((de = readdir(d)) != NULL) {
		if (is_dot_entry(de->d_name))
			continue;
		if (!scan_file_valid(dirfd(d), de->d_name, prefix, &item)) {
			remove_tree_at(dirfd(d), de->d_name, 0);
			continue;
		}
		if (scan_add(list, &item) < 0) {
			*error_r = "out of memory";
			ret = -1;
			break;
		}
	}
	closedir(d);
	return ret;

out_error:
	*error_r = errfmt("blocks/%s: %s", sub, strerror(errno));
	return -1;
}

static int scan_blocks(int dir_fd, struct scan_list *list,
	const char **error_r)
{
	struct dirent *de;
	int fd, ret = 0;
	DIR *d;

	fd = openat(dir_fd, "blocks", O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
		    O_CLOEXEC);
	if (fd < 0) {
		*error_r = errfmt("blocks: %s", strerror(errno));
		return -1;
	}
	d = fdopendir(fd);
	if (!d) {
		*error_r = errfmt("blocks: %s", strerror(errno));
		close(fd);
		return -1;
	}
	while (ret == 0 && (de = readdir(d)) != NULL) {
		const char *n = de->d_name;
		struct stat st;
		int hi, lo;

		if (is_dot_entry(n))
			continue;
		hi = hex_value(n[0]);
		lo = hi < 0 ? -1 : hex_value(n[1]);
		if (lo < 0 || n[2] != '\0' ||
		    fstatat(dirfd(d), n, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISDIR(st.st_mode)) {
			remove_tree_at(dirfd(d), n, 0);
			continue;
		}
		ret = scan_subdir(dirfd(d), n, (unsigned)(hi << 4 | lo), list,
				  error_r);
	}
	closedir(d);
	return ret;
}

/* Empties tmp/: anything there is a put that never finished. */
static int clear_tmp(int dir_fd, const char **error_r)
{
	struct dirent *de;
	DIR *d;
	int fd;

	fd = openat(dir_fd, "tmp", O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
		    O_CLOEXEC);
	if (fd < 0 || !(d = fdopendir(fd))) {
		*error_r = errfmt("tmp: %s", strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		if (is_dot_entry(de->d_name))
			continue;
		remove_tree_at(dirfd(d), de->d_name, 0);
	}
	closedir(d);
	return 0;
}

/* Open */

/* Whether blocks/ (blocks_fd) holds only subdirectories named by two hex
 * digits, as key_rel_path() makes them. */
static bool blocks_only_prefixes(int blocks_fd)
{
	int fd = dup(blocks_fd);
	struct dirent *de;
	struct stat st;
	bool ok = true;
	DIR *d;

	if (fd < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return false;
	}
	while (ok && (de = readdir(d)) != NULL) {
		const char *n = de->d_name;

		if (is_dot_entry(n))
			continue;
		ok = hex_value(n[0]) >= 0 && hex_value(n[1]) >= 0 &&
			n[2] == '\0' &&
			fstatat(blocks_fd, n, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
			S_ISDIR(st.st_mode);
	}
	closedir(d);
	return ok;
}

/* Whether dir_fd holds only what an earlier mailfs, which marked nothing,
 * put in a cache directory. */
static bool earlier_cache(int dir_fd)
{
	static const char *const dirs[] = { "blocks", "tmp", "meta", "pop3",
		"staging", NULL };
	static const char *const files[] = { "lock", NULL };
	int fd;
	bool ok;

	if (!owned_dir_only(dir_fd, dirs, files))
		return false;
	fd = openat(dir_fd, "blocks", O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
		    O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT;
	ok = blocks_only_prefixes(fd);
	close(fd);
	return ok;
}

static int cache_prepare_dirs(struct block_cache *cache, const char **error_r)
{
	/* Everything below deletes and chmods: only in a directory that is
	 * mailfs's own. */
	cache->dir_fd = owned_dir_open(cache->dir, CACHE_MARKER, "cache",
		earlier_cache, error_r);
	if (cache->dir_fd < 0) {
		cache->dir_fd = -1;
		return -1;
	}

	cache->lock_fd = openat(cache->dir_fd, "lock", O_RDWR | O_CREAT |
				O_NOFOLLOW | O_CLOEXEC, FILE_MODE);
	if (cache->lock_fd < 0 || fchmod(cache->lock_fd, FILE_MODE) < 0) {
		*error_r = errfmt("%s/lock: %s", cache->dir, strerror(errno));
		return -1;
	}
	/* Two owners would clear each other's temp files and each keep
	 * its own notion of the bound. */
	if (flock(cache->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		*error_r = errno == EWOULDBLOCK ?
			errfmt("%s is in use by another cache", cache->dir) :
			errfmt("%s/lock: %s", cache->dir, strerror(errno));
		return -1;
	}

	if (mkdir_private_at(cache->dir_fd, "blocks") < 0 ||
	    fchmodat(cache->dir_fd, "blocks", DIR_MODE, 0) < 0) {
		*error_r = errfmt("%s/blocks: %s", cache->dir, strerror(errno));
		return -1;
	}
	if (mkdir_private_at(cache->dir_fd, "tmp") < 0 ||
	    fchmodat(cache->dir_fd, "tmp", DIR_MODE, 0) < 0) {
		*error_r = errfmt("%s/tmp: %s", cache->dir, strerror(errno));
		return -1;
	}
	return 0;
}

static int cache_load(struct block_cache *cache, const char **error_r)
{
	struct scan_list list = { 0 };
	struct cache_entry *victims;
	const char *error;
	int ret = -1;

	if (clear_tmp(cache->dir_fd, &error) < 0 ||
	    scan_blocks(cache->dir_fd, &list, &error) < 0) {
		*error_r = errfmt("%s: %s", cache->dir, error);
		goto out_free_list;
	}
	if (list.count > 0)
		qsort(list.items, list.count, sizeof(*list.items),
		      scan_item_cmp);

	pthread_mutex_lock(&cache->lock);
	for (size_t i = 0; i < list.count; i++) {
		struct cache_entry *e = calloc(1, sizeof(*e));

		if (!e) {
			pthread_mutex_unlock(&cache->lock);
			*error_r = errfmt("%s: out of memory", cache->dir);
			goto out_free_list;
		}
		e->key = list.items[i].key;
		e->size = list.items[i].size;
		e->gen = ++cache->next_gen;
		index_insert(cache, e);	/* newest ends up in front */
	}
	/* max_bytes may be smaller than last time. */
	victims = evict_collect(cache, NULL);
	pthread_mutex_unlock(&cache->lock);
	evict_unlink(cache, victims);
	ret = 0;

out_free_list:
	free(list.items);
	return ret;
}

int block_cache_open(const char *dir, uint64_t max_bytes,
	struct block_cache **cache_r, const char **error_r)
{
	struct block_cache *cache;

	*cache_r = NULL;
	if (!dir || dir[0] == '\0') {
		*error_r = "block cache: empty directory name";
		return -1;
	}
	cache = calloc(1, sizeof(*cache));
	if (!cache) {
		*error_r = "block cache: out of memory";
		return -1;
	}
	cache->dir_fd = -1;
	cache->lock_fd = -1;
	cache->max_bytes = max_bytes;
	cache->dir = strdup(dir);
	cache->buckets = calloc(BUCKETS_MIN, sizeof(*cache->buckets));
	cache->bucket_mask = BUCKETS_MIN - 1;
	if (!cache->dir || !cache->buckets) {
		*error_r = "block cache: out of memory";
		goto out_free;
	}
	if (pthread_mutex_init(&cache->lock, NULL) != 0) {
		*error_r = "block cache: cannot create a mutex";
		goto out_free;
	}
	if (cache_prepare_dirs(cache, error_r) < 0 ||
	    cache_load(cache, error_r) < 0) {
		block_cache_close(&cache);
		return -1;
	}
	*cache_r = cache;
	return 0;

out_free:
	free(cache->buckets);
	free(cache->dir);
	free(cache);
	return -1;
}

void block_cache_close(struct block_cache **cachep)
{
	struct block_cache *cache = *cachep;
	struct cache_entry *e, *next;

	if (!cache)
		return;
	*cachep = NULL;
	for (e = cache->lru_head; e; e = next) {
		next = e->lru_next;
		free(e);
	}
	free(cache->buckets);
	if (cache->lock_fd >= 0)
		close(cache->lock_fd);	/* releases the flock */
	if (cache->dir_fd >= 0)
		close(cache->dir_fd);
	pthread_mutex_destroy(&cache->lock);
	free(cache->dir);
	free(cache);
}

void block_cache_get_stats(struct block_cache *cache,
	struct block_cache_stats *stats_r)
{
	pthread_mutex_lock(&cache->lock);
	*stats_r = cache->stats;
	pthread_mutex_unlock(&cache->lock);
}

int block_cache_block_path(const struct block_cache *cache,
	const struct block_key *key, char *buf, size_t cap)
{
	char rel[REL_PATH_MAX];
	int n;

	key_rel_path(key, rel);
	n = snprintf(buf, cap, "%s/%s", cache->dir, rel);
	return n < 0 || (size_t)n >= cap ? -1 : 0;
}
