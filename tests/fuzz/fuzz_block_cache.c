/* The on-disk block cache (src/block_cache.h) reading files it did not
 * write.
 *
 * Each run stores one valid block, then replaces its file with bytes
 * from the input and reads the block back, optionally after reopening
 * the cache (the start-up scan).  Input: one control byte, then the new
 * file contents.  Control bits:
 *   0-1  how the bytes are patched before they are written:
 *        0 as they are; 1 header checksum made right; 2 a fully valid
 *        header for this key and the data that follows (magic, version,
 *        key, length and both checksums made right; flags kept);
 *        3 magic, version and header checksum made right, the rest kept
 *   2    reopen the cache (scan) before reading
 *   3    also drop a file named after the first bytes of the data into
 *        blocks/ and blocks/<xx>/ (the scan must remove or keep it
 *        without crashing)
 *   4    read with a buffer smaller than the block
 *
 * Properties: get never returns bytes that fail an independent check of
 * the file (header fields, both XXH3 checksums, the key, the size); it
 * returns the original bytes when the file was left intact; a block it
 * refuses is deleted unless it is valid but larger than the buffer. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "src/block_cache.h"
#include "tests/fuzz/fuzz_common.h"

#define HDR BLOCK_CACHE_HEADER_SIZE
#define ORIG_LEN 300
/* Larger blocks are cut: they only slow the run down. */
#define DATA_MAX (64 * 1024)

static char root[256];
static char cache_dir[300];
static uint8_t buf[BLOCK_CACHE_BLOCK_SIZE];

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

static uint64_t get_le64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

static int rm_entry(const char *path, const struct stat *st, int flag,
	struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void rm_tree(const char *path)
{
	nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void cleanup(void)
{
	if (root[0] != '\0')
		rm_tree(root);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" :
		getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";

	(void)argc;
	(void)argv;
	snprintf(root, sizeof(root), "%s/mailfs-fuzz-cache-XXXXXX", tmp);
	FUZZ_CHECK(mkdtemp(root) != NULL, "mkdtemp %s: %s", root,
		strerror(errno));
	snprintf(cache_dir, sizeof(cache_dir), "%s/c", root);
	atexit(cleanup);
	return 0;
}

/* Writes a file; false when it cannot be created (a directory of that
 * name, say), which only stray_file() allows. */
static bool write_file(const char *path, const uint8_t *data, size_t len,
	bool must)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
		0600);

	if (fd < 0) {
		FUZZ_CHECK(!must, "cannot create %s: %s", path, strerror(errno));
		return false;
	}
	while (len > 0) {
		ssize_t n = write(fd, data, len);

		FUZZ_CHECK(n > 0, "cannot write %s: %s", path, strerror(errno));
		data += n;
		len -= (size_t)n;
	}
	close(fd);
	return true;
}

/* The file's contents, or NULL if it does not exist. */
static uint8_t *read_file(const char *path, size_t *len_r)
{
	struct stat st;
	uint8_t *data;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0) {
		FUZZ_CHECK(errno == ENOENT, "open %s: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) < 0)
		abort();
	data = malloc((size_t)st.st_size + 1);
	if (data == NULL)
		abort();
	n = pread(fd, data, (size_t)st.st_size, 0);
	FUZZ_CHECK(n == st.st_size, "short read of %s", path);
	close(fd);
	*len_r = (size_t)st.st_size;
	return data;
}

/* Everything a reader must check, done here from scratch.  Returns true
 * when file is a valid block for key; *len_r is its data length. */
static bool block_valid(const uint8_t *file, size_t size,
	const struct block_key *key, bool check_data, uint64_t *len_r)
{
	uint64_t len;

	if (size < HDR || memcmp(file, "MFSBLK01", 8) != 0 ||
	    get_le32(file + 8) != 1 || (get_le32(file + 12) & ~1u) != 0 ||
	    get_le64(file + 16) != key->hi || get_le64(file + 24) != key->lo ||
	    get_le64(file + 48) != XXH3_64bits(file, 48))
		return false;
	len = get_le64(file + 32);
	if (len > BLOCK_CACHE_BLOCK_SIZE || size != HDR + len)
		return false;
	if (check_data && get_le64(file + 40) != XXH3_64bits(file + HDR, len))
		return false;
	*len_r = len;
	return true;
}

static struct block_cache *open_cache(void)
{
	struct block_cache *cache = NULL;
	const char *error = NULL;

	FUZZ_CHECK(block_cache_open(cache_dir, 64 * 1024 * 1024, &cache,
		&error) == 0, "block_cache_open: %s", error);
	return cache;
}

/* Drops a file with a name made from the input into dir. */
static void stray_file(const char *dir, const uint8_t *data, size_t size)
{
	char name[64], path[512];
	size_t n = size < 40 ? size : 40;

	for (size_t i = 0; i < n; i++)
		name[i] = (data[i] == '/' || data[i] == '\0') ? '_' : (char)data[i];
	name[n] = '\0';
	if (n == 0 || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		snprintf(name, sizeof(name), "stray");
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	write_file(path, data, size < 200 ? size : 200, false);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct block_key key = block_key_make("user@example.org", "INBOX",
		1234, 42, 0);
	uint8_t orig[ORIG_LEN], *file, *disk, *orig_file;
	char path[512], dir[600];
	struct block_cache *cache;
	unsigned ctl;
	size_t file_len, disk_len, orig_file_len, got_len = 0, cap;
	uint64_t vlen;
	bool eom = false, ok;

	if (size == 0)
		return 0;
	ctl = data[0];
	data++;
	size--;
	if (size > HDR + DATA_MAX)
		size = HDR + DATA_MAX;

	rm_tree(cache_dir);
	for (size_t i = 0; i < ORIG_LEN; i++)
		orig[i] = (uint8_t)(i * 7 + 3);
	cache = open_cache();
	FUZZ_CHECK(block_cache_put(cache, &key, orig, ORIG_LEN, true) == 0,
		"put failed%s", "");
	FUZZ_CHECK(block_cache_block_path(cache, &key, path, sizeof(path)) == 0,
		"no path%s", "");
	orig_file = read_file(path, &orig_file_len);
	FUZZ_CHECK(orig_file != NULL && orig_file_len == HDR + ORIG_LEN,
		"the stored block is missing%s", "");

	/* The replacement file. */
	file_len = size;
	file = malloc(file_len + HDR);
	if (file == NULL)
		abort();
	memcpy(file, data, size);
	switch (ctl & 3) {
	case 1:
		if (file_len >= HDR)
			put_le64(file + 48, XXH3_64bits(file, 48));
		break;
	case 2:
		if (file_len < HDR) {
			memset(file + file_len, 0, HDR - file_len);
			file_len = HDR;
		}
		memcpy(file, "MFSBLK01", 8);
		put_le32(file + 8, 1);
		put_le64(file + 16, key.hi);
		put_le64(file + 24, key.lo);
		put_le64(file + 32, file_len - HDR);
		put_le64(file + 40, XXH3_64bits(file + HDR, file_len - HDR));
		put_le64(file + 48, XXH3_64bits(file, 48));
		break;
	case 3:
		if (file_len >= HDR) {
			memcpy(file, "MFSBLK01", 8);
			put_le32(file + 8, 1);
			put_le64(file + 48, XXH3_64bits(file, 48));
		}
		break;
	default:
		break;
	}
	write_file(path, file, file_len, true);

	if (ctl & 8) {
		char *slash = strrchr(path, '/');

		snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
		stray_file(dir, data, size);
		snprintf(dir, sizeof(dir), "%s/blocks", cache_dir);
		stray_file(dir, data, size);
	}
	if (ctl & 4) {
		block_cache_close(&cache);
		cache = open_cache();
		disk = read_file(path, &disk_len);
		if (disk != NULL)
			FUZZ_CHECK(block_valid(disk, disk_len, &key, false, &vlen),
				"the scan kept an invalid block file%s", "");
		free(disk);
	}

	cap = (ctl & 16) ? 100 : sizeof(buf);
	ok = block_cache_get(cache, &key, buf, cap, &got_len, &eom);
	disk = read_file(path, &disk_len);
	if (ok) {
		/* What was served must be exactly a valid file's data. */
		FUZZ_CHECK(disk != NULL, "served a block whose file is gone%s", "");
		FUZZ_CHECK(block_valid(disk, disk_len, &key, true, &vlen),
			"served a block that fails verification (%zu bytes)",
			got_len);
		FUZZ_CHECK(vlen == got_len && got_len <= cap &&
			memcmp(buf, disk + HDR, got_len) == 0,
			"served bytes differ from the file%s", "");
		FUZZ_CHECK(eom == ((get_le32(disk + 12) & 1) != 0),
			"wrong end-of-message flag%s", "");
	} else if (disk != NULL) {
		/* Kept only when valid and too large for the buffer. */
		FUZZ_CHECK(block_valid(disk, disk_len, &key, false, &vlen) &&
			vlen > cap, "a refused block file was kept%s", "");
	}
	if (file_len == orig_file_len &&
	    memcmp(file, orig_file, file_len) == 0 && cap >= ORIG_LEN)
		FUZZ_CHECK(ok && got_len == ORIG_LEN &&
			memcmp(buf, orig, ORIG_LEN) == 0 && eom,
			"the intact block was not served%s", "");
	free(disk);

	/* A second read agrees with the first. */
	if (ok) {
		size_t len2 = 0;

		FUZZ_CHECK(block_cache_get(cache, &key, buf, cap, &len2, NULL) &&
			len2 == got_len, "second read differs%s", "");
	}
	free(file);
	free(orig_file);
	block_cache_close(&cache);
	return 0;
}
