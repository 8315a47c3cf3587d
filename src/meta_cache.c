#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "src/errfmt.h"
#include "src/log.h"
#include "src/meta_cache.h"

#define META_MAGIC "MFSMETA1"
#define META_VERSION 3
#define HEADER_SIZE 24          /* magic 8, version 4, length 4, xxh 8 */
#define MAX_PAYLOAD (1U << 30)  /* refuse absurd files instead of reading them */

struct meta_cache {
	char *dir;                  /* <cache_dir>/meta */
};

/* ---- a growable little-endian buffer ------------------------------------- */

struct wbuf {
	unsigned char *data;
	size_t len, cap;
	bool failed;
};

static void w_bytes(struct wbuf *w, const void *p, size_t n)
{
	if (w->failed)
		return;
	if (w->len + n > w->cap) {
		size_t cap = w->cap ? w->cap : 4096;
		unsigned char *d;

		while (cap < w->len + n)
			cap *= 2;
		d = realloc(w->data, cap);
		if (!d) {
			w->failed = true;
			return;
		}
		w->data = d;
		w->cap = cap;
	}
	memcpy(w->data + w->len, p, n);
	w->len += n;
}

static void w_u32(struct wbuf *w, uint32_t v)
{
	unsigned char b[4] = { v, v >> 8, v >> 16, v >> 24 };

	w_bytes(w, b, 4);
}

static void w_u64(struct wbuf *w, uint64_t v)
{
	w_u32(w, (uint32_t)v);
	w_u32(w, (uint32_t)(v >> 32));
}

static void w_str(struct wbuf *w, const char *s, size_t len)
{
	w_u32(w, (uint32_t)len);
	w_bytes(w, s, len);
}

struct rbuf {
	const unsigned char *p, *end;
	bool failed;
};

static uint32_t r_u32(struct rbuf *r)
{
	uint32_t v;

	if (r->failed || r->end - r->p < 4) {
		r->failed = true;
		return 0;
	}
	v = r->p[0] | r->p[1] << 8 | r->p[2] << 16 | (uint32_t)r->p[3] << 24;
	r->p += 4;
	return v;
}

static uint64_t r_u64(struct rbuf *r)
{
	uint64_t lo = r_u32(r);

	return lo | (uint64_t)r_u32(r) << 32;
}

/* A malloc'd NUL-terminated copy; *len_r gets its length. */
static char *r_str(struct rbuf *r, size_t *len_r)
{
	uint32_t len = r_u32(r);
	char *s;

	if (r->failed || (size_t)(r->end - r->p) < len) {
		r->failed = true;
		return NULL;
	}
	s = malloc((size_t)len + 1);
	if (!s) {
		r->failed = true;
		return NULL;
	}
	memcpy(s, r->p, len);
	s[len] = '\0';
	r->p += len;
	if (len_r)
		*len_r = len;
	return s;
}

/* ---- files ------------------------------------------------------------------ */

static char *folder_path(struct meta_cache *mc, const char *raw)
{
	XXH128_hash_t h = XXH3_128bits(raw, strlen(raw));
	char *path;

	if (asprintf(&path, "%s/f-%016llx%016llx", mc->dir,
			(unsigned long long)h.high64,
			(unsigned long long)h.low64) < 0)
		return NULL;
	return path;
}

static int write_file(struct meta_cache *mc, const char *path,
	const struct wbuf *payload)
{
	unsigned char header[HEADER_SIZE];
	uint64_t sum = XXH3_64bits(payload->data, payload->len);
	uint32_t len = (uint32_t)payload->len;
	char tmp[4096];
	int fd, ret = -1;

	memcpy(header, META_MAGIC, 8);
	for (int i = 0; i < 4; i++) {
		header[8 + i] = (unsigned char)(META_VERSION >> (8 * i));
		header[12 + i] = (unsigned char)(len >> (8 * i));
	}
	for (int i = 0; i < 8; i++)
		header[16 + i] = (unsigned char)(sum >> (8 * i));
	static _Atomic unsigned long counter;

	snprintf(tmp, sizeof(tmp), "%s/tmp.%ld.%lu", mc->dir, (long)gettid(),
		++counter);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	if (write(fd, header, sizeof(header)) == (ssize_t)sizeof(header) &&
	    write(fd, payload->data, payload->len) == (ssize_t)payload->len &&
	    fsync(fd) == 0)
		ret = 0;
	if (close(fd) < 0)
		ret = -1;
	if (ret == 0 && rename(tmp, path) < 0)
		ret = -1;
	if (ret < 0) {
		log_debug("cannot write %s: %s", path, strerror(errno));
		unlink(tmp);
	}
	return ret;
}

/* Reads and verifies a file; returns the payload (malloc'd) or NULL. */
static unsigned char *read_file(const char *path, size_t *len_r)
{
	unsigned char header[HEADER_SIZE], *data = NULL;
	uint32_t version = 0, len = 0;
	uint64_t sum = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;

	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) < 0 ||
	    read(fd, header, sizeof(header)) != (ssize_t)sizeof(header) ||
	    memcmp(header, META_MAGIC, 8) != 0)
		goto out_close;
	for (int i = 0; i < 4; i++) {
		version |= (uint32_t)header[8 + i] << (8 * i);
		len |= (uint32_t)header[12 + i] << (8 * i);
	}
	for (int i = 0; i < 8; i++)
		sum |= (uint64_t)header[16 + i] << (8 * i);
	if (version != META_VERSION || len > MAX_PAYLOAD ||
	    (uint64_t)st.st_size != HEADER_SIZE + (uint64_t)len)
		goto out_close;
	data = malloc(len ? len : 1);
	if (!data)
		goto out_close;
	if (read(fd, data, len) != (ssize_t)len ||
	    XXH3_64bits(data, len) != sum) {
		log_warn("metadata cache file %s is corrupt; ignoring it", path);
		free(data);
		data = NULL;
		goto out_close;
	}
	*len_r = len;
out_close:
	close(fd);
	return data;
}

/* ---- public API ------------------------------------------------------------- */

int meta_cache_open(const char *dir, struct meta_cache **mc_r,
	const char **error_r)
{
	struct meta_cache *mc = calloc(1, sizeof(*mc));
	struct dirent *de;
	DIR *d;

	if (!mc || asprintf(&mc->dir, "%s/meta", dir) < 0) {
		free(mc);
		*error_r = "out of memory";
		return -1;
	}
	if ((mkdir(mc->dir, 0700) < 0 && errno != EEXIST) ||
	    chmod(mc->dir, 0700) < 0) {
		*error_r = errfmt("cannot create %s: %s", mc->dir,
			strerror(errno));
		free(mc->dir);
		free(mc);
		return -1;
	}
	d = opendir(mc->dir);
	if (d) {
		while ((de = readdir(d)))
			if (strncmp(de->d_name, "tmp.", 4) == 0)
				unlinkat(dirfd(d), de->d_name, 0);
		closedir(d);
	}
	*mc_r = mc;
	return 0;
}

void meta_cache_close(struct meta_cache **mc)
{
	if (!*mc)
		return;
	free((*mc)->dir);
	free(*mc);
	*mc = NULL;
}

int meta_cache_save_folders(struct meta_cache *mc,
	const struct backend_folder *f, size_t count)
{
	struct wbuf w = { 0 };
	char *path;
	int ret = -1;

	w_u32(&w, (uint32_t)count);
	for (size_t i = 0; i < count; i++) {
		w_str(&w, f[i].raw_name, strlen(f[i].raw_name));
		w_u32(&w, f[i].noselect);
		w_u32(&w, (uint32_t)f[i].n_parts);
		for (size_t j = 0; j < f[i].n_parts; j++)
			w_str(&w, f[i].parts[j], strlen(f[i].parts[j]));
	}
	if (!w.failed && asprintf(&path, "%s/folders", mc->dir) >= 0) {
		ret = write_file(mc, path, &w);
		free(path);
	}
	free(w.data);
	return ret;
}

int meta_cache_load_folders(struct meta_cache *mc,
	struct backend_folder **folders_r, size_t *count_r)
{
	struct backend_folder *f = NULL;
	unsigned char *data;
	struct rbuf r;
	size_t len = 0, n = 0;
	uint32_t count;
	char *path;

	if (asprintf(&path, "%s/folders", mc->dir) < 0)
		return -1;
	data = read_file(path, &len);
	free(path);
	if (!data)
		return -1;
	r = (struct rbuf){ data, data + len, false };
	count = r_u32(&r);
	/* Each entry takes at least 12 bytes: bound the allocation. */
	if (r.failed || count > len / 12 + 1)
		goto fail;
	f = calloc(count + 1, sizeof(*f));
	if (!f)
		goto fail;
	for (; n < count; n++) {
		uint32_t parts;

		f[n].raw_name = r_str(&r, NULL);
		f[n].noselect = r_u32(&r) != 0;
		parts = r_u32(&r);
		if (r.failed || parts > len / 4)
			goto fail_n;
		f[n].parts = calloc(parts + 1, sizeof(char *));
		if (!f[n].parts)
			goto fail_n;
		for (uint32_t j = 0; j < parts && !r.failed; j++) {
			f[n].parts[j] = r_str(&r, NULL);
			f[n].n_parts = j + 1;
		}
		if (r.failed)
			goto fail_n;
	}
	free(data);
	*folders_r = f;
	*count_r = n;
	return 0;
fail_n:
	n++;
fail:
	backend_folders_free(&f, n);
	free(data);
	return -1;
}

int meta_cache_save_dir_times(struct meta_cache *mc,
	const struct meta_dir_time *times, size_t count)
{
	struct wbuf w = { 0 };
	char *path;
	int ret = -1;

	w_u32(&w, (uint32_t)count);
	for (size_t i = 0; i < count; i++) {
		w_str(&w, times[i].path, strlen(times[i].path));
		w_u64(&w, (uint64_t)times[i].changed_at);
	}
	if (!w.failed && asprintf(&path, "%s/dirs", mc->dir) >= 0) {
		ret = write_file(mc, path, &w);
		free(path);
	}
	free(w.data);
	return ret;
}

void meta_dir_times_free(struct meta_dir_time **times, size_t count)
{
	for (size_t i = 0; *times && i < count; i++)
		free((*times)[i].path);
	free(*times);
	*times = NULL;
}

int meta_cache_load_dir_times(struct meta_cache *mc,
	struct meta_dir_time **times_r, size_t *count_r)
{
	struct meta_dir_time *t = NULL;
	unsigned char *data;
	size_t len = 0, n = 0;
	uint32_t count;
	struct rbuf r;
	char *path;

	if (asprintf(&path, "%s/dirs", mc->dir) < 0)
		return -1;
	data = read_file(path, &len);
	free(path);
	if (!data)
		return -1;
	r = (struct rbuf){ data, data + len, false };
	count = r_u32(&r);
	/* Each entry takes at least 12 bytes: bound the allocation. */
	if (r.failed || count > len / 12 + 1 ||
	    !(t = calloc(count + 1, sizeof(*t))))
		goto fail;
	for (; n < count; n++) {
		t[n].path = r_str(&r, NULL);
		t[n].changed_at = (int64_t)r_u64(&r);
		if (r.failed) {
			n++;
			goto fail;
		}
	}
	free(data);
	*times_r = t;
	*count_r = n;
	return 0;
fail:
	meta_dir_times_free(&t, n);
	free(data);
	return -1;
}

int meta_cache_save_messages(struct meta_cache *mc, const char *raw,
	const struct backend_folder_state *state, int64_t changed_at,
	const struct backend_message *m, size_t count)
{
	struct wbuf w = { 0 };
	char *path = folder_path(mc, raw);
	int ret = -1;

	if (!path)
		return -1;
	/* The folder's own name first: a hash collision is then detected
	 * instead of serving another folder's listing. */
	w_str(&w, raw, strlen(raw));
	w_u32(&w, state->uidvalidity);
	w_u32(&w, state->uidnext);
	w_u64(&w, state->highestmodseq);
	w_u32(&w, state->exists);
	w_u64(&w, (uint64_t)changed_at);
	w_u32(&w, (uint32_t)count);
	for (size_t i = 0; i < count; i++) {
		w_u32(&w, m[i].uid);
		w_u64(&w, m[i].size);
		w_u64(&w, (uint64_t)m[i].internaldate);
		w_u32(&w, m[i].size_uncertain ? 1 : 0);
		w_str(&w, m[i].flags ? m[i].flags : "",
			m[i].flags ? strlen(m[i].flags) : 0);
		w_str(&w, m[i].header ? m[i].header : "", m[i].header_len);
	}
	if (!w.failed)
		ret = write_file(mc, path, &w);
	free(w.data);
	free(path);
	return ret;
}

int meta_cache_load_messages(struct meta_cache *mc, const char *raw,
	struct backend_folder_state *state_r, int64_t *changed_at_r,
	struct backend_message **msgs_r, size_t *count_r)
{
	struct backend_message *m = NULL;
	char *path = folder_path(mc, raw), *name = NULL;
	unsigned char *data;
	size_t len = 0, n = 0;
	uint32_t count;
	struct rbuf r;

	if (!path)
		return -1;
	data = read_file(path, &len);
	free(path);
	if (!data)
		return -1;
	r = (struct rbuf){ data, data + len, false };
	name = r_str(&r, NULL);
	if (r.failed || strcmp(name, raw) != 0)
		goto fail;
	state_r->uidvalidity = r_u32(&r);
	state_r->uidnext = r_u32(&r);
	state_r->highestmodseq = r_u64(&r);
	state_r->exists = r_u32(&r);
	*changed_at_r = (int64_t)r_u64(&r);
	count = r_u32(&r);
	/* Each message takes at least 32 bytes: bound the allocation. */
	if (r.failed || count > len / 32 + 1)
		goto fail;
	m = calloc(count + 1, sizeof(*m));
	if (!m)
		goto fail;
	for (; n < count; n++) {
		m[n].uid = r_u32(&r);
		m[n].size = r_u64(&r);
		m[n].internaldate = (int64_t)r_u64(&r);
		m[n].size_uncertain = (r_u32(&r) & 1) != 0;
		m[n].flags = r_str(&r, NULL);
		m[n].header = r_str(&r, &m[n].header_len);
		if (r.failed) {
			n++;
			goto fail;
		}
	}
	size_t repeats;

	n = backend_messages_normalize(m, n, &repeats, NULL);
	if (repeats) {
		/* Written by an older mailfs from a server that listed a UID
		 * twice: keep the rest, and let the next resync compare every
		 * UID rather than trust the saved counts. */
		log_warn("metadata cache of %s listed %zu message(s) twice; "
			"repaired", raw, repeats);
		state_r->highestmodseq = 0;
	}
	free(name);
	free(data);
	*msgs_r = m;
	*count_r = n;
	return 0;
fail:
	backend_messages_free(&m, n);
	free(name);
	free(data);
	return -1;
}

void meta_cache_drop_messages(struct meta_cache *mc, const char *raw)
{
	char *path = folder_path(mc, raw);

	if (path)
		unlink(path);
	free(path);
}
