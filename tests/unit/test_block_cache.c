/* Unit tests for src/block_cache.c.  Each test works in its own directory
 * under a mkdtemp() root that is removed at the end. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <xxhash.h>

#include "src/block_cache.h"
#include "tests/unit/check.h"

#define HDR BLOCK_CACHE_HEADER_SIZE
#define BLK BLOCK_CACHE_BLOCK_SIZE
#define PATH_LEN 4096
#define DIR_LEN 256	/* test directories; leaves room below them */

static char root[64];
static int dir_counter;

/* Helpers */

static void fresh_dir(char *buf, size_t cap, const char *what)
{
	snprintf(buf, cap, "%s/%02d-%s", root, dir_counter++, what);
}

static struct block_cache *open_cache(const char *dir, uint64_t max_bytes)
{
	struct block_cache *cache = NULL;
	const char *error = NULL;

	if (block_cache_open(dir, max_bytes, &cache, &error) < 0) {
		fprintf(stderr, "block_cache_open(%s): %s\n", dir, error);
		failures++;
		return NULL;
	}
	return cache;
}

static struct block_key key_n(uint32_t n)
{
	return block_key_make("user@example.org", "INBOX", 1234, n, 0);
}

/* Deterministic contents for (seed, len), so any copy can be checked. */
struct pattern {
	uint64_t x;
};

static struct pattern pattern_start(uint32_t seed)
{
	return (struct pattern){ .x = seed * 0x9e3779b97f4a7c15ull + 1 };
}

static uint8_t pattern_next(struct pattern *p)
{
	p->x ^= p->x << 13;
	p->x ^= p->x >> 7;
	p->x ^= p->x << 17;
	return (uint8_t)p->x;
}

static void fill(uint8_t *buf, size_t len, uint32_t seed)
{
	struct pattern p = pattern_start(seed);

	for (size_t i = 0; i < len; i++)
		buf[i] = pattern_next(&p);
}

static bool matches(const uint8_t *buf, size_t len, uint32_t seed)
{
	struct pattern p = pattern_start(seed);

	for (size_t i = 0; i < len; i++)
		if (buf[i] != pattern_next(&p))
			return false;
	return true;
}

static void key_path(struct block_cache *cache, const struct block_key *key,
	char *buf)
{
	if (block_cache_block_path(cache, key, buf, PATH_LEN) < 0) {
		fprintf(stderr, "block_cache_block_path failed\n");
		exit(2);
	}
}

static bool exists(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0;
}

static int mode_of(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0 ? (int)(st.st_mode & 07777) : -1;
}

static void write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	if (fd < 0 || write(fd, data, len) != (ssize_t)len) {
		fprintf(stderr, "write %s: %s\n", path, strerror(errno));
		exit(2);
	}
	close(fd);
}

static void flip_byte(const char *path, off_t off)
{
	int fd = open(path, O_RDWR);
	uint8_t b;

	if (fd < 0 || pread(fd, &b, 1, off) != 1) {
		fprintf(stderr, "flip %s: %s\n", path, strerror(errno));
		exit(2);
	}
	b ^= 0x5a;
	if (pwrite(fd, &b, 1, off) != 1)
		exit(2);
	close(fd);
}

static void copy_file(const char *from, const char *to)
{
	static uint8_t buf[HDR + 65536];
	int fd = open(from, O_RDONLY);
	ssize_t n;

	if (fd < 0 || (n = read(fd, buf, sizeof(buf))) < 0) {
		fprintf(stderr, "copy %s: %s\n", from, strerror(errno));
		exit(2);
	}
	close(fd);
	write_file(to, buf, (size_t)n);
}

/* Number of entries in a directory, "." and ".." aside. */
static int count_entries(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *de;
	int n = 0;

	if (!d)
		return -1;
	while ((de = readdir(d)) != NULL)
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
			n++;
	closedir(d);
	return n;
}

static uint64_t disk_bytes, disk_files;

static int disk_visit(const char *path, const struct stat *st, int type,
	struct FTW *ftw)
{
	if (type == FTW_F) {
		disk_bytes += (uint64_t)st->st_size;
		disk_files++;
	}
	return 0;
}

/* Total size and count of files under <dir>/blocks. */
static void disk_usage(const char *dir, uint64_t *bytes, uint64_t *files)
{
	char path[PATH_LEN];

	snprintf(path, sizeof(path), "%s/blocks", dir);
	disk_bytes = disk_files = 0;
	nftw(path, disk_visit, 16, FTW_PHYS);
	*bytes = disk_bytes;
	*files = disk_files;
}

static int rm_visit(const char *path, const struct stat *st, int type,
	struct FTW *ftw)
{
	chmod(path, 0700);	/* some tests leave directories read-only */
	return remove(path) < 0 && errno != ENOENT ? -1 : 0;
}

static int chmod_visit(const char *path, const struct stat *st, int type,
	struct FTW *ftw)
{
	if (type == FTW_D)
		chmod(path, 0700);
	return 0;
}

static void rm_rf(const char *path)
{
	nftw(path, chmod_visit, 16, FTW_PHYS);
	nftw(path, rm_visit, 16, FTW_DEPTH | FTW_PHYS);
}

static struct block_cache_stats stats_of(struct block_cache *cache)
{
	struct block_cache_stats st;

	block_cache_get_stats(cache, &st);
	return st;
}

/* Tests */

static void test_roundtrip(void)
{
	static const size_t sizes[] = { 0, 1, 4096, BLK };
	uint8_t *data = malloc(BLK), *out = malloc(BLK);
	char dir[DIR_LEN];
	struct block_cache *cache;
	struct block_cache_stats st;
	uint64_t bytes = 0;
	size_t len;
	bool eom;

	fresh_dir(dir, sizeof(dir), "roundtrip");
	cache = open_cache(dir, 64ull << 20);
	if (!cache || !data || !out)
		goto out;

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		struct block_key key = key_n((uint32_t)i);

		fill(data, sizes[i], (uint32_t)i);
		CHECK(block_cache_put(cache, &key, data, sizes[i], i % 2) == 0,
		      "size %zu", sizes[i]);
		bytes += HDR + sizes[i];
		memset(out, 0xee, BLK);
		len = 12345;
		eom = i % 2 == 0;
		CHECK(block_cache_get(cache, &key, out, BLK, &len, &eom),
		      "size %zu", sizes[i]);
		CHECK(len == sizes[i], "len %zu, want %zu", len, sizes[i]);
		CHECK(eom == (i % 2 == 1), "eom for size %zu", sizes[i]);
		CHECK(matches(out, len, (uint32_t)i), "data of size %zu", sizes[i]);
	}

	/* A never-stored key misses. */
	{
		struct block_key other = key_n(999);

		CHECK(!block_cache_get(cache, &other, out, BLK, &len, &eom),
		      "absent key hit");
	}

	/* A buffer smaller than the block: reported absent, kept. */
	{
		struct block_key key = key_n(2);	/* 4096 bytes */
		char path[PATH_LEN];

		CHECK(!block_cache_get(cache, &key, out, 100, &len, &eom),
		      "block larger than cap returned");
		key_path(cache, &key, path);
		CHECK(exists(path), "block removed after a short buffer");
		CHECK(block_cache_get(cache, &key, out, BLK, NULL, NULL),
		      "block lost after a short buffer");
	}

	st = stats_of(cache);
	CHECK(st.hits == 5, "hits %" PRIu64, st.hits);
	CHECK(st.misses == 2, "misses %" PRIu64, st.misses);
	CHECK(st.blocks_on_disk == 4, "blocks %" PRIu64, st.blocks_on_disk);
	CHECK(st.bytes_on_disk == bytes, "bytes %" PRIu64 " want %" PRIu64,
	      st.bytes_on_disk, bytes);
	CHECK(st.checksum_failures == 0 && st.evictions == 0 &&
	      st.store_failures == 0, "unexpected failure counts");

	/* Too big for a block, or for the whole cache: refused. */
	CHECK(block_cache_put(cache, &(struct block_key){ 1, 2 }, data, BLK + 1,
			      false) < 0, "oversized block stored");
	CHECK(stats_of(cache).store_failures == 1, "store failure not counted");

	/* Putting a key again replaces it and keeps the accounting right. */
	{
		struct block_key key = key_n(1);	/* was 1 byte */

		fill(data, 300, 77);
		CHECK(block_cache_put(cache, &key, data, 300, true) == 0, "re-put");
		CHECK(block_cache_get(cache, &key, out, BLK, &len, &eom) &&
		      len == 300 && eom && matches(out, 300, 77), "re-put data");
		st = stats_of(cache);
		CHECK(st.blocks_on_disk == 4, "blocks after re-put %" PRIu64,
		      st.blocks_on_disk);
		CHECK(st.bytes_on_disk == bytes - 1 + 300,
		      "bytes after re-put %" PRIu64, st.bytes_on_disk);
	}
out:
	block_cache_close(&cache);
	CHECK(cache == NULL, "close did not clear the pointer");
	block_cache_close(&cache);	/* harmless on NULL */
	free(data);
	free(out);
}

/* The key must be XXH3-128 of exactly the encoding the header documents. */
static struct block_key reference_key(const char *account, const char *folder,
	uint32_t uidvalidity, uint32_t uid, uint32_t index)
{
	size_t alen = strlen(account), flen = strlen(folder);
	size_t n = 8 + alen + 8 + flen + 12, off = 0;
	uint8_t *buf = malloc(n);
	XXH128_hash_t h;
	uint64_t v;

	if (!buf)
		exit(2);
	v = alen;
	for (int i = 0; i < 8; i++)
		buf[off++] = (uint8_t)(v >> (8 * i));
	memcpy(buf + off, account, alen);
	off += alen;
	v = flen;
	for (int i = 0; i < 8; i++)
		buf[off++] = (uint8_t)(v >> (8 * i));
	memcpy(buf + off, folder, flen);
	off += flen;
	for (int i = 0; i < 4; i++)
		buf[off++] = (uint8_t)(uidvalidity >> (8 * i));
	for (int i = 0; i < 4; i++)
		buf[off++] = (uint8_t)(uid >> (8 * i));
	for (int i = 0; i < 4; i++)
		buf[off++] = (uint8_t)(index >> (8 * i));
	h = XXH3_128bits(buf, n);
	free(buf);
	return (struct block_key){ .hi = h.high64, .lo = h.low64 };
}

static bool key_eq(struct block_key a, struct block_key b)
{
	return a.hi == b.hi && a.lo == b.lo;
}

static void test_keys(void)
{
	struct block_key base = block_key_make("acct", "INBOX", 7, 42, 3);
	struct block_key variants[] = {
		block_key_make("acct2", "INBOX", 7, 42, 3),
		block_key_make("acct", "INBOX2", 7, 42, 3),
		block_key_make("acct", "INBOX", 8, 42, 3),
		block_key_make("acct", "INBOX", 7, 43, 3),
		block_key_make("acct", "INBOX", 7, 42, 4),
		block_key_make("", "INBOX", 7, 42, 3),
		block_key_make("acct", "", 7, 42, 3),
		/* integers must not bleed into each other */
		block_key_make("acct", "INBOX", 42, 7, 3),
		block_key_make("acct", "INBOX", 3, 42, 7),
	};
	size_t nv = sizeof(variants) / sizeof(variants[0]);
	char *long_a, *long_f;

	CHECK(key_eq(base, block_key_make("acct", "INBOX", 7, 42, 3)),
	      "key not deterministic");
	for (size_t i = 0; i < nv; i++) {
		CHECK(!key_eq(base, variants[i]), "variant %zu equals base", i);
		for (size_t j = i + 1; j < nv; j++)
			CHECK(!key_eq(variants[i], variants[j]),
			      "variants %zu and %zu equal", i, j);
	}
	CHECK(!key_eq(block_key_make("ab", "c", 1, 1, 0),
		      block_key_make("a", "bc", 1, 1, 0)), "ab|c == a|bc");
	CHECK(!key_eq(block_key_make("a", "", 1, 1, 0),
		      block_key_make("", "a", 1, 1, 0)), "a| == |a");

	CHECK(key_eq(base, reference_key("acct", "INBOX", 7, 42, 3)),
	      "key differs from the documented encoding");

	/* Names long enough to take the streaming path hash the same bytes. */
	long_a = malloc(3000);
	long_f = malloc(5000);
	if (!long_a || !long_f)
		exit(2);
	memset(long_a, 'a', 2999);
	long_a[2999] = '\0';
	memset(long_f, 'f', 4999);
	long_f[4999] = '\0';
	CHECK(key_eq(block_key_make(long_a, "INBOX", 1, 2, 3),
		     reference_key(long_a, "INBOX", 1, 2, 3)), "long account");
	CHECK(key_eq(block_key_make("x", long_f, 1, 2, 3),
		     reference_key("x", long_f, 1, 2, 3)), "long folder");
	/* Right at the boundary of the stack buffer. */
	for (size_t n = 990; n < 1010; n++) {
		long_f[n] = '\0';
		CHECK(key_eq(block_key_make("", long_f, 1, 2, 3),
			     reference_key("", long_f, 1, 2, 3)),
		      "folder of %zu bytes", n);
		long_f[n] = 'f';
	}
	free(long_a);
	free(long_f);
}

static void test_persistence(void)
{
	uint8_t data[5000], out[5000];
	char dir[DIR_LEN];
	struct block_cache *cache, *second;
	struct block_cache_stats st;
	const char *error = NULL;
	size_t len;
	bool eom;

	fresh_dir(dir, sizeof(dir), "persist");
	cache = open_cache(dir, 1 << 20);
	if (!cache)
		return;
	for (uint32_t i = 0; i < 5; i++) {
		struct block_key key = key_n(i);

		fill(data, 1000 * i, i);
		CHECK(block_cache_put(cache, &key, data, 1000 * i, i == 4) == 0,
		      "put %u", i);
	}

	/* The directory belongs to one cache at a time. */
	second = NULL;
	CHECK(block_cache_open(dir, 1 << 20, &second, &error) < 0,
	      "second open of a busy directory succeeded");
	CHECK(second == NULL && error && strstr(error, "in use"),
	      "error: %s", error ? error : "(none)");
	block_cache_close(&second);

	block_cache_close(&cache);
	cache = open_cache(dir, 1 << 20);
	if (!cache)
		return;
	st = stats_of(cache);
	CHECK(st.blocks_on_disk == 5, "blocks after reopen %" PRIu64,
	      st.blocks_on_disk);
	CHECK(st.bytes_on_disk == 5 * HDR + 10000, "bytes after reopen %" PRIu64,
	      st.bytes_on_disk);
	for (uint32_t i = 0; i < 5; i++) {
		struct block_key key = key_n(i);

		CHECK(block_cache_get(cache, &key, out, sizeof(out), &len, &eom),
		      "block %u lost", i);
		CHECK(len == 1000 * i && eom == (i == 4) && matches(out, len, i),
		      "block %u changed", i);
	}
	block_cache_close(&cache);
}

/* Stores one block, damages its file with fn, and expects a counted miss
 * and the file gone. */
static void expect_discarded(const char *what, void (*damage)(const char *),
	bool counts_checksum)
{
	uint8_t data[3000], out[3000];
	char dir[DIR_LEN], path[PATH_LEN];
	struct block_key key = key_n(1), other = key_n(2);
	struct block_cache *cache;
	struct block_cache_stats st;
	size_t len;
	bool eom;

	fresh_dir(dir, sizeof(dir), what);
	cache = open_cache(dir, 1 << 20);
	if (!cache)
		return;
	fill(data, sizeof(data), 5);
	CHECK(block_cache_put(cache, &key, data, sizeof(data), true) == 0, "%s",
	      what);
	CHECK(block_cache_put(cache, &other, data, sizeof(data), true) == 0,
	      "%s", what);
	key_path(cache, &key, path);
	damage(path);

	CHECK(!block_cache_get(cache, &key, out, sizeof(out), &len, &eom),
	      "%s: damaged block served", what);
	CHECK(!exists(path), "%s: damaged file kept", what);
	st = stats_of(cache);
	CHECK(st.checksum_failures == (counts_checksum ? 1 : 0),
	      "%s: checksum_failures %" PRIu64, what, st.checksum_failures);
	CHECK(st.misses == 1, "%s: misses %" PRIu64, what, st.misses);
	CHECK(st.blocks_on_disk == 1 && st.bytes_on_disk == HDR + sizeof(data),
	      "%s: accounting %" PRIu64 "/%" PRIu64, what, st.blocks_on_disk,
	      st.bytes_on_disk);

	/* Later lookups miss cheaply; the other block is untouched. */
	CHECK(!block_cache_get(cache, &key, out, sizeof(out), &len, &eom),
	      "%s: second lookup", what);
	CHECK(stats_of(cache).checksum_failures == (counts_checksum ? 1 : 0),
	      "%s: counted twice", what);
	CHECK(block_cache_get(cache, &other, out, sizeof(out), &len, &eom) &&
	      matches(out, len, 5), "%s: neighbour lost", what);

	/* And the key can be stored again. */
	CHECK(block_cache_put(cache, &key, data, sizeof(data), true) == 0 &&
	      block_cache_get(cache, &key, out, sizeof(out), &len, &eom) &&
	      matches(out, len, 5), "%s: re-store", what);
	block_cache_close(&cache);
}

static void damage_data_first(const char *path) { flip_byte(path, HDR); }
static void damage_data_last(const char *path) { flip_byte(path, HDR + 2999); }
static void damage_magic(const char *path) { flip_byte(path, 0); }
static void damage_flags(const char *path) { flip_byte(path, 12); }
static void damage_key(const char *path) { flip_byte(path, 20); }
static void damage_length(const char *path) { flip_byte(path, 32); }
static void damage_data_hash(const char *path) { flip_byte(path, 40); }
static void damage_header_hash(const char *path) { flip_byte(path, 50); }

static void damage_truncate(const char *path)
{
	if (truncate(path, HDR + 1000) < 0)
		exit(2);
}

static void damage_truncate_header(const char *path)
{
	if (truncate(path, 20) < 0)
		exit(2);
}

static void damage_extend(const char *path)
{
	int fd = open(path, O_WRONLY | O_APPEND);

	if (fd < 0 || write(fd, "x", 1) != 1)
		exit(2);
	close(fd);
}

static void damage_swap(const char *path)
{
	/* A valid block of another key under this name. */
	const char *slash = strstr(path, "/blocks/");
	struct block_key k = key_n(2);
	char other[PATH_LEN];

	if (!slash || slash - path > DIR_LEN)
		exit(2);
	snprintf(other, sizeof(other), "%.*s/blocks/%02x/%016" PRIx64 "%016"
		 PRIx64, (int)(slash - path), path, (unsigned)(k.hi >> 56),
		 k.hi, k.lo);
	copy_file(other, path);
}

static void damage_remove(const char *path)
{
	unlink(path);
}

static void test_corruption(void)
{
	expect_discarded("data-first", damage_data_first, true);
	expect_discarded("data-last", damage_data_last, true);
	expect_discarded("magic", damage_magic, true);
	expect_discarded("flags", damage_flags, true);
	expect_discarded("key", damage_key, true);
	expect_discarded("length", damage_length, true);
	expect_discarded("data-hash", damage_data_hash, true);
	expect_discarded("header-hash", damage_header_hash, true);
	expect_discarded("truncated", damage_truncate, true);
	expect_discarded("truncated-header", damage_truncate_header, true);
	expect_discarded("extended", damage_extend, true);
	expect_discarded("swapped", damage_swap, true);
	/* Deleted behind the cache's back: a plain miss. */
	expect_discarded("removed", damage_remove, false);
}


static void test_startup_scan(void)
{
	uint8_t data[2000], out[2000];
	char dir[DIR_LEN], path[PATH_LEN], good[PATH_LEN];
	char p2[PATH_LEN], p3[PATH_LEN], p4[PATH_LEN];
	struct block_key k1 = key_n(1), k2 = key_n(2), k3 = key_n(3),
			 k4 = key_n(4);
	struct block_cache *cache;
	struct block_cache_stats st;
	char *slash;

	fresh_dir(dir, sizeof(dir), "scan");
	cache = open_cache(dir, 1 << 20);
	if (!cache)
		return;
	fill(data, sizeof(data), 9);
	CHECK(block_cache_put(cache, &k1, data, sizeof(data), false) == 0, "put");
	CHECK(block_cache_put(cache, &k2, data, sizeof(data), false) == 0, "put");
	CHECK(block_cache_put(cache, &k3, data, sizeof(data), false) == 0, "put");
	CHECK(block_cache_put(cache, &k4, data, sizeof(data), false) == 0, "put");
	key_path(cache, &k1, good);
	key_path(cache, &k2, p2);
	key_path(cache, &k3, p3);
	key_path(cache, &k4, p4);
	block_cache_close(&cache);

	/* Crash leftovers in tmp/. */
	snprintf(path, sizeof(path), "%s/tmp/123.4", dir);
	write_file(path, "half a block", 12);
	snprintf(path, sizeof(path), "%s/tmp/subdir", dir);
	mkdir(path, 0700);
	snprintf(path, sizeof(path), "%s/tmp/subdir/x", dir);
	write_file(path, "x", 1);

	/* Garbage in blocks/. */
	snprintf(path, sizeof(path), "%s/blocks/README", dir);
	write_file(path, "hello", 5);
	snprintf(path, sizeof(path), "%s/blocks/zz", dir);
	mkdir(path, 0700);
	snprintf(path, sizeof(path), "%s/blocks/zz/file", dir);
	write_file(path, "junk", 4);
	snprintf(path, sizeof(path), "%s/blocks/ab", dir);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/blocks/ab/not-a-key", dir);
	write_file(path, "junk", 4);
	snprintf(path, sizeof(path), "%s/blocks/ab/nested", dir);
	mkdir(path, 0700);
	/* A key-shaped name with garbage inside. */
	snprintf(path, sizeof(path),
		 "%s/blocks/ab/ab000000000000000000000000000000", dir);
	write_file(path, "garbage garbage garbage garbage garbage garbage "
		   "garbage garbage garbage garbage garbage garbage", 80);
	/* A valid block filed under another key's name, in another
	 * directory and in its own. */
	snprintf(path, sizeof(path),
		 "%s/blocks/ab/ab111111111111111111111111111111", dir);
	copy_file(good, path);
	snprintf(path, sizeof(path), "%s", good);
	slash = strrchr(path, '/');
	memset(slash + 3, '0', 30);
	copy_file(good, path);
	/* Upper-case hex is not a name the cache writes. */
	snprintf(path, sizeof(path),
		 "%s/blocks/ab/AB111111111111111111111111111111", dir);
	write_file(path, "x", 1);
	/* A symlink where a block should be. */
	snprintf(path, sizeof(path),
		 "%s/blocks/ab/ab222222222222222222222222222222", dir);
	if (symlink(good, path) < 0)
		exit(2);
	/* Real blocks: one grown by a byte, one with a broken header, one
	 * cut short, and one with loose permissions (kept, tightened). */
	damage_extend(p2);
	damage_header_hash(p3);
	damage_truncate(p4);
	chmod(good, 0644);

	cache = open_cache(dir, 1 << 20);
	if (!cache)
		return;
	snprintf(path, sizeof(path), "%s/tmp", dir);
	CHECK(count_entries(path) == 0, "tmp/ not emptied: %d",
	      count_entries(path));
	snprintf(path, sizeof(path), "%s/blocks/README", dir);
	CHECK(!exists(path), "blocks/README kept");
	snprintf(path, sizeof(path), "%s/blocks/zz", dir);
	CHECK(!exists(path), "blocks/zz kept");
	snprintf(path, sizeof(path), "%s/blocks/ab", dir);
	CHECK(count_entries(path) == 0, "blocks/ab holds %d entries",
	      count_entries(path));
	CHECK(mode_of(path) == 0700, "blocks/ab mode %o", mode_of(path));
	CHECK(exists(good), "valid block removed");
	CHECK(mode_of(good) == 0600, "block mode %o", mode_of(good));
	CHECK(!exists(p2), "block of the wrong size kept");
	CHECK(!exists(p3), "block with a bad header kept");
	CHECK(!exists(p4), "truncated block kept");
	st = stats_of(cache);
	CHECK(st.blocks_on_disk == 1 && st.bytes_on_disk == HDR + sizeof(data),
	      "accounting after scan %" PRIu64 "/%" PRIu64, st.blocks_on_disk,
	      st.bytes_on_disk);
	CHECK(block_cache_get(cache, &k1, out, sizeof(out), NULL, NULL) &&
	      matches(out, sizeof(out), 9), "valid block unreadable");
	CHECK(!block_cache_get(cache, &k2, out, sizeof(out), NULL, NULL),
	      "removed block served");
	block_cache_close(&cache);
}

static void set_atime(const char *path, time_t sec)
{
	struct timespec ts[2] = {
		{ .tv_sec = sec },
		{ .tv_nsec = UTIME_OMIT },
	};

	if (utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW) < 0)
		exit(2);
}

static void test_lru(void)
{
	enum { S = 1000 };
	uint8_t data[S], out[S];
	const uint64_t unit = HDR + S;
	char dir[DIR_LEN], pa[PATH_LEN], pb[PATH_LEN];
	struct block_key a = key_n(1), b = key_n(2), c = key_n(3), d = key_n(4);
	struct block_cache *cache;
	struct block_cache_stats st;

	fresh_dir(dir, sizeof(dir), "lru");
	cache = open_cache(dir, 2 * unit + unit / 2);
	if (!cache)
		return;
	fill(data, S, 1);
	CHECK(block_cache_put(cache, &a, data, S, false) == 0, "put A");
	CHECK(block_cache_put(cache, &b, data, S, false) == 0, "put B");
	CHECK(block_cache_get(cache, &a, out, S, NULL, NULL), "get A");
	key_path(cache, &a, pa);
	key_path(cache, &b, pb);
	CHECK(block_cache_put(cache, &c, data, S, false) == 0, "put C");
	CHECK(!exists(pb), "B not evicted");
	CHECK(exists(pa), "A evicted");
	CHECK(!block_cache_get(cache, &b, out, S, NULL, NULL), "B still served");
	CHECK(block_cache_get(cache, &a, out, S, NULL, NULL), "A lost");
	CHECK(block_cache_get(cache, &c, out, S, NULL, NULL), "C lost");
	/* Now C is the most recent: D pushes A out. */
	CHECK(block_cache_put(cache, &d, data, S, false) == 0, "put D");
	CHECK(!block_cache_get(cache, &a, out, S, NULL, NULL), "A still served");
	CHECK(block_cache_get(cache, &c, out, S, NULL, NULL), "C lost");
	CHECK(block_cache_get(cache, &d, out, S, NULL, NULL), "D lost");
	st = stats_of(cache);
	CHECK(st.evictions == 2, "evictions %" PRIu64, st.evictions);
	CHECK(st.blocks_on_disk == 2 && st.bytes_on_disk == 2 * unit,
	      "accounting %" PRIu64 "/%" PRIu64, st.blocks_on_disk,
	      st.bytes_on_disk);
	block_cache_close(&cache);

	/* A block bigger than the whole cache is not kept, and evicts
	 * nothing. */
	fresh_dir(dir, sizeof(dir), "tiny");
	cache = open_cache(dir, HDR + 100);
	if (!cache)
		return;
	CHECK(block_cache_put(cache, &a, data, 100, false) == 0, "fitting put");
	CHECK(block_cache_put(cache, &b, data, 101, false) < 0,
	      "oversized put accepted");
	st = stats_of(cache);
	CHECK(st.store_failures == 1 && st.evictions == 0 &&
	      st.blocks_on_disk == 1, "after oversized put: %" PRIu64 " %"
	      PRIu64 " %" PRIu64, st.store_failures, st.evictions,
	      st.blocks_on_disk);
	CHECK(block_cache_get(cache, &a, out, S, NULL, NULL), "A lost");
	block_cache_close(&cache);
}

static void test_bound(void)
{
	enum { S = 4096, N = 200 };
	uint8_t data[S], out[S];
	const uint64_t max = 10 * (HDR + S);
	char dir[DIR_LEN];
	struct block_cache *cache;
	struct block_cache_stats st;
	uint64_t bytes, files;
	size_t len;

	fresh_dir(dir, sizeof(dir), "bound");
	cache = open_cache(dir, max);
	if (!cache)
		return;
	for (uint32_t i = 0; i < N; i++) {
		struct block_key key = key_n(i);
		size_t n = 1 + (i * 997) % S;

		fill(data, n, i);
		CHECK(block_cache_put(cache, &key, data, n, false) == 0, "put %u",
		      i);
		st = stats_of(cache);
		CHECK(st.bytes_on_disk <= max, "bound broken after put %u: %"
		      PRIu64, i, st.bytes_on_disk);
		/* The block just written survives its own put. */
		CHECK(block_cache_get(cache, &key, out, S, &len, NULL) &&
		      len == n && matches(out, n, i), "block %u lost", i);
	}
	st = stats_of(cache);
	disk_usage(dir, &bytes, &files);
	CHECK(bytes == st.bytes_on_disk && files == st.blocks_on_disk,
	      "disk %" PRIu64 "/%" PRIu64 " vs stats %" PRIu64 "/%" PRIu64,
	      bytes, files, st.bytes_on_disk, st.blocks_on_disk);
	CHECK(st.evictions + st.blocks_on_disk == N, "evictions %" PRIu64,
	      st.evictions);
	block_cache_close(&cache);
}

/* Enough blocks to make the index grow several times. */
static void test_many(void)
{
	enum { N = 5000 };
	uint8_t data[64], out[64];
	char dir[DIR_LEN];
	struct block_cache *cache;
	struct block_cache_stats st;
	size_t len;
	int bad = 0;

	fresh_dir(dir, sizeof(dir), "many");
	cache = open_cache(dir, 1 << 30);
	if (!cache)
		return;
	for (uint32_t i = 0; i < N; i++) {
		struct block_key key = key_n(i);

		fill(data, i % 64, i);
		if (block_cache_put(cache, &key, data, i % 64, false) < 0)
			bad++;
	}
	CHECK(bad == 0, "%d puts failed", bad);
	for (int round = 0; round < 2; round++) {
		st = stats_of(cache);
		CHECK(st.blocks_on_disk == N, "round %d: blocks %" PRIu64,
		      round, st.blocks_on_disk);
		bad = 0;
		for (uint32_t i = 0; i < N; i++) {
			struct block_key key = key_n(i);

			if (!block_cache_get(cache, &key, out, sizeof(out), &len,
					     NULL) || len != i % 64 ||
			    !matches(out, len, i))
				bad++;
		}
		CHECK(bad == 0, "round %d: %d blocks lost", round, bad);
		block_cache_close(&cache);
		if (round == 0 && !(cache = open_cache(dir, 1 << 30)))
			return;
	}
}

static void test_recency_across_restart(void)
{
	enum { S = 500, N = 10 };
	uint8_t data[S], out[S];
	const uint64_t unit = HDR + S;
	char dir[DIR_LEN], paths[N][PATH_LEN];
	struct block_cache *cache;
	struct block_cache_stats st;
	struct stat sb;
	time_t base = 1600000000;

	fresh_dir(dir, sizeof(dir), "recency");
	cache = open_cache(dir, 1 << 20);
	if (!cache)
		return;
	for (uint32_t i = 0; i < N; i++) {
		struct block_key key = key_n(i);

		fill(data, S, i);
		CHECK(block_cache_put(cache, &key, data, S, false) == 0, "put");
		key_path(cache, &key, paths[i]);
	}
	block_cache_close(&cache);

	/* Use order by atime: 0 oldest ... 9 newest, but 2 newest of all. */
	for (int i = 0; i < N; i++)
		set_atime(paths[i], base + 10 * i);
	set_atime(paths[2], base + 1000);

	/* Reading a block refreshes its atime, and the order survives a
	 * restart: block 0 becomes the newest. */
	cache = open_cache(dir, 1 << 20);
	if (!cache)
		return;
	{
		struct block_key key = key_n(0);

		CHECK(block_cache_get(cache, &key, out, S, NULL, NULL), "get 0");
	}
	CHECK(stat(paths[0], &sb) == 0 && sb.st_atime > base + 1000,
	      "atime not refreshed by a hit");
	block_cache_close(&cache);

	/* Reopen with room for three: 0, 2 and 9 stay. */
	cache = open_cache(dir, 3 * unit);
	if (!cache)
		return;
	st = stats_of(cache);
	CHECK(st.blocks_on_disk == 3 && st.bytes_on_disk == 3 * unit,
	      "after shrink %" PRIu64 "/%" PRIu64, st.blocks_on_disk,
	      st.bytes_on_disk);
	CHECK(st.evictions == N - 3, "evictions %" PRIu64, st.evictions);
	for (int i = 0; i < N; i++) {
		bool want = i == 0 || i == 2 || i == 9;

		CHECK(exists(paths[i]) == want, "block %d %s", i,
		      want ? "evicted" : "kept");
	}
	/* The in-memory order matches: 9 is now least recent. */
	{
		struct block_key k10 = key_n(10);

		fill(data, S, 10);
		CHECK(block_cache_put(cache, &k10, data, S, false) == 0, "put");
		CHECK(!exists(paths[9]) && exists(paths[0]) && exists(paths[2]),
		      "wrong victim after restart");
	}
	block_cache_close(&cache);
}

static void check_modes(const char *dir, struct block_cache *cache,
	const struct block_key *key, mode_t mask)
{
	char path[PATH_LEN], *slash;

	CHECK(mode_of(dir) == 0700, "umask %03o: dir mode %o", mask,
	      mode_of(dir));
	snprintf(path, sizeof(path), "%s/blocks", dir);
	CHECK(mode_of(path) == 0700, "umask %03o: blocks mode %o", mask,
	      mode_of(path));
	snprintf(path, sizeof(path), "%s/tmp", dir);
	CHECK(mode_of(path) == 0700, "umask %03o: tmp mode %o", mask,
	      mode_of(path));
	snprintf(path, sizeof(path), "%s/lock", dir);
	CHECK(mode_of(path) == 0600, "umask %03o: lock mode %o", mask,
	      mode_of(path));
	key_path(cache, key, path);
	CHECK(mode_of(path) == 0600, "umask %03o: block mode %o", mask,
	      mode_of(path));
	slash = strrchr(path, '/');
	*slash = '\0';
	CHECK(mode_of(path) == 0700, "umask %03o: fan-out mode %o", mask,
	      mode_of(path));
}

static void test_permissions(void)
{
	static const mode_t masks[] = { 0, 022, 077, 0277 };
	uint8_t data[100] = { 0 };
	char dir[DIR_LEN], sub[DIR_LEN + 16];
	struct block_key key = key_n(1);
	struct block_cache *cache;

	for (size_t i = 0; i < sizeof(masks) / sizeof(masks[0]); i++) {
		mode_t old = umask(masks[i]);

		/* Missing parents are created too. */
		fresh_dir(dir, sizeof(dir), "perm");
		snprintf(sub, sizeof(sub), "%s/a/b", dir);
		cache = open_cache(sub, 1 << 20);
		if (cache) {
			CHECK(block_cache_put(cache, &key, data, sizeof(data),
					      true) == 0, "put");
			check_modes(sub, cache, &key, masks[i]);
			block_cache_close(&cache);
		}
		snprintf(sub, sizeof(sub), "%s/a", dir);
		CHECK(mode_of(sub) == 0700, "umask %03o: parent mode %o",
		      masks[i], mode_of(sub));
		umask(old);
	}

	/* An existing, too open directory is tightened. */
	fresh_dir(dir, sizeof(dir), "perm-open");
	mkdir(dir, 0777);
	chmod(dir, 0777);
	cache = open_cache(dir, 1 << 20);
	if (!cache)
		return;
	CHECK(mode_of(dir) == 0700, "existing dir mode %o", mode_of(dir));
	block_cache_close(&cache);

	/* A path that is not a directory fails cleanly. */
	{
		const char *error = NULL;

		snprintf(sub, sizeof(sub), "%s/lock/x", dir);
		CHECK(block_cache_open(sub, 1 << 20, &cache, &error) < 0 &&
		      cache == NULL && error, "open under a file succeeded");
	}
}

/* Stores must fail cleanly, leaving the cache usable. */
static void test_store_failures(void)
{
	enum { S = 4096 };
	uint8_t data[S], out[S];
	char dir[DIR_LEN], tmp[PATH_LEN], blocks[PATH_LEN], path[PATH_LEN];
	struct block_key a = key_n(1), b = key_n(2), c = key_n(3);
	struct block_cache *cache;
	struct rlimit old_limit, limit;
	int put_ret;
	pid_t pid;
	int status;

	fresh_dir(dir, sizeof(dir), "readonly");
	cache = open_cache(dir, 1 << 20);
	if (!cache)
		return;
	fill(data, S, 3);
	CHECK(block_cache_put(cache, &a, data, S, true) == 0, "put A");
	snprintf(tmp, sizeof(tmp), "%s/tmp", dir);
	snprintf(blocks, sizeof(blocks), "%s/blocks", dir);

	/* tmp/ replaced by a file. */
	CHECK(rmdir(tmp) == 0, "rmdir tmp: %s", strerror(errno));
	write_file(tmp, "x", 1);
	CHECK(block_cache_put(cache, &b, data, S, true) < 0,
	      "put without tmp/ succeeded");
	CHECK(!block_cache_get(cache, &b, out, S, NULL, NULL), "B served");
	CHECK(block_cache_get(cache, &a, out, S, NULL, NULL), "A lost");
	CHECK(stats_of(cache).store_failures == 1, "store failure not counted");
	unlink(tmp);
	mkdir(tmp, 0700);

	/* Read-only directories.  Root ignores the mode bits, so a child
	 * gives up its privileges first. */
	chmod(tmp, 0500);
	chmod(blocks, 0500);
	pid = fork();
	if (pid == 0) {
		if (geteuid() == 0 &&
		    (setresgid(65534, 65534, 65534) < 0 ||
		     setresuid(65534, 65534, 65534) < 0))
			_exit(3);
		if (block_cache_put(cache, &b, data, S, true) == 0)
			_exit(1);
		if (stats_of(cache).store_failures != 2)
			_exit(2);
		_exit(0);
	}
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
	      WEXITSTATUS(status) == 0, "read-only put: child status %#x",
	      status);
	chmod(tmp, 0700);
	chmod(blocks, 0700);
	CHECK(count_entries(tmp) == 0, "temp file left behind");
	CHECK(block_cache_get(cache, &a, out, S, NULL, NULL), "A lost");

	/* A full disk, simulated by a file size limit: the write fails
	 * half way.  Nothing is printed while the limit is on. */
	signal(SIGXFSZ, SIG_IGN);
	getrlimit(RLIMIT_FSIZE, &old_limit);
	limit = old_limit;
	limit.rlim_cur = 1000;
	setrlimit(RLIMIT_FSIZE, &limit);
	put_ret = block_cache_put(cache, &c, data, S, true);
	setrlimit(RLIMIT_FSIZE, &old_limit);
	signal(SIGXFSZ, SIG_DFL);
	CHECK(put_ret < 0, "put past the size limit succeeded");
	CHECK(count_entries(tmp) == 0, "partial temp file left behind");
	key_path(cache, &c, path);
	CHECK(!exists(path), "partial block in place");
	CHECK(stats_of(cache).store_failures == 2, "store failures %" PRIu64,
	      stats_of(cache).store_failures);
	CHECK(!block_cache_get(cache, &c, out, S, NULL, NULL), "C served");

	/* All well again: the fan-out directory even reappears. */
	key_path(cache, &b, path);
	*strrchr(path, '/') = '\0';
	rm_rf(path);
	CHECK(block_cache_put(cache, &b, data, S, true) == 0, "put B after");
	CHECK(block_cache_put(cache, &c, data, S, true) == 0, "put C after");
	CHECK(block_cache_get(cache, &b, out, S, NULL, NULL) &&
	      block_cache_get(cache, &c, out, S, NULL, NULL) &&
	      matches(out, S, 3), "blocks after recovery");
	block_cache_close(&cache);
}

/* Concurrency: threads put and get overlapping keys under a bound small
 * enough to evict all the time; a hit must always be exactly right. */
enum { STRESS_THREADS = 4, STRESS_KEYS = 48, STRESS_OPS = 3000 };

struct stress_arg {
	struct block_cache *cache;
	unsigned seed;
	bool vandal;		/* damages files instead */
	const char *dir;
	int failures;
	unsigned hits;
};

static size_t stress_len(uint32_t k)
{
	return (k * 7919u) % 60000u + (k % 5 == 0 ? 0 : 1);
}

static void *stress_thread(void *p)
{
	struct stress_arg *arg = p;
	uint8_t *buf = malloc(BLK);
	char path[PATH_LEN];

	if (!buf) {
		arg->failures++;
		return NULL;
	}
	for (int op = 0; op < STRESS_OPS; op++) {
		uint32_t k = (uint32_t)rand_r(&arg->seed) % STRESS_KEYS;
		struct block_key key = block_key_make("stress", "INBOX", 1, k,
						      k % 3);
		size_t want = stress_len(k), len;
		bool eom;

		if (arg->vandal) {
			int fd;

			key_path(arg->cache, &key, path);
			fd = open(path, O_RDWR);
			if (fd >= 0) {
				uint8_t b = 0xff;
				off_t off = (off_t)((unsigned)rand_r(&arg->seed) %
						    (HDR + want + 1));

				if (pwrite(fd, &b, 1, off) < 0)
					arg->failures++;
				close(fd);
			}
			continue;
		}
		if (rand_r(&arg->seed) % 5 < 2) {
			fill(buf, want, k);
			block_cache_put(arg->cache, &key, buf, want, k % 2);
		} else if (block_cache_get(arg->cache, &key, buf, BLK, &len,
					   &eom)) {
			arg->hits++;
			if (len != want || eom != (k % 2 == 1) ||
			    !matches(buf, len, k)) {
				fprintf(stderr, "stress: key %u served wrong "
					"bytes (len %zu, want %zu)\n", k, len,
					want);
				arg->failures++;
			}
		}
	}
	free(buf);
	return NULL;
}

static void stress_run(const char *what, bool with_vandal)
{
	struct stress_arg args[STRESS_THREADS + 1];
	pthread_t threads[STRESS_THREADS + 1];
	int nthreads = STRESS_THREADS + (with_vandal ? 1 : 0);
	uint64_t total = 0, max, bytes, files;
	char dir[DIR_LEN], path[PATH_LEN];
	struct block_cache *cache;
	struct block_cache_stats st;
	unsigned hits = 0;

	for (uint32_t k = 0; k < STRESS_KEYS; k++)
		total += HDR + stress_len(k);
	max = total / 3;
	fresh_dir(dir, sizeof(dir), what);
	cache = open_cache(dir, max);
	if (!cache)
		return;
	for (int i = 0; i < nthreads; i++) {
		args[i] = (struct stress_arg){
			.cache = cache, .seed = 17u + (unsigned)i, .dir = dir,
			.vandal = i == STRESS_THREADS,
		};
		if (pthread_create(&threads[i], NULL, stress_thread, &args[i])) {
			fprintf(stderr, "pthread_create failed\n");
			exit(2);
		}
	}
	for (int i = 0; i < nthreads; i++) {
		pthread_join(threads[i], NULL);
		failures += args[i].failures;
		hits += args[i].hits;
	}
	st = stats_of(cache);
	CHECK(hits > 0, "%s: no hits at all", what);
	CHECK(st.hits == hits, "%s: hits %" PRIu64 " vs %u", what, st.hits,
	      hits);
	CHECK(st.bytes_on_disk <= max, "%s: bound broken: %" PRIu64, what,
	      st.bytes_on_disk);
	CHECK(st.evictions > 0, "%s: nothing evicted", what);
	CHECK(with_vandal || st.checksum_failures == 0,
	      "%s: checksum failures %" PRIu64, what, st.checksum_failures);
	disk_usage(dir, &bytes, &files);
	/* The index may over-count (see block_cache.c), never under-count. */
	CHECK(bytes <= st.bytes_on_disk && files <= st.blocks_on_disk,
	      "%s: disk %" PRIu64 "/%" PRIu64 " above stats %" PRIu64 "/%"
	      PRIu64, what, bytes, files, st.bytes_on_disk, st.blocks_on_disk);
	snprintf(path, sizeof(path), "%s/tmp", dir);
	CHECK(count_entries(path) == 0, "%s: temp files left", what);
	if (with_vandal)
		printf("stress with damage: %" PRIu64 " hits, %" PRIu64
		       " checksum failures, %" PRIu64 " evictions\n", st.hits,
		       st.checksum_failures, st.evictions);
	block_cache_close(&cache);

	/* Whatever is left reloads cleanly and reads back right. */
	cache = open_cache(dir, max);
	if (!cache)
		return;
	disk_usage(dir, &bytes, &files);
	st = stats_of(cache);
	CHECK(bytes == st.bytes_on_disk && files == st.blocks_on_disk,
	      "%s: reload disk %" PRIu64 "/%" PRIu64 " vs stats %" PRIu64 "/%"
	      PRIu64, what, bytes, files, st.bytes_on_disk, st.blocks_on_disk);
	{
		uint8_t *buf = malloc(BLK);
		size_t len;

		for (uint32_t k = 0; buf && k < STRESS_KEYS; k++) {
			struct block_key key = block_key_make("stress", "INBOX",
							      1, k, k % 3);

			if (block_cache_get(cache, &key, buf, BLK, &len, NULL))
				CHECK(len == stress_len(k) &&
				      matches(buf, len, k),
				      "%s: key %u wrong after reload", what, k);
		}
		free(buf);
	}
	block_cache_close(&cache);
}

static void test_stress(void)
{
	stress_run("stress", false);
	stress_run("stress-damage", true);
}

int main(void)
{
	snprintf(root, sizeof(root), "/tmp/mailfs-block-cache-XXXXXX");
	if (!mkdtemp(root)) {
		perror("mkdtemp");
		return 2;
	}

	test_keys();
	test_roundtrip();
	test_persistence();
	test_corruption();
	test_startup_scan();
	test_lru();
	test_bound();
	test_many();
	test_recency_across_restart();
	test_permissions();
	test_store_failures();
	test_stress();

	rm_rf(root);
	return check_summary("block_cache");
}
