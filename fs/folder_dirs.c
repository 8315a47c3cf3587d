#include "fs/folder_dirs.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "src/file_name.h"
#include "src/log.h"

/* No entry; also the parent of a top-level entry (FOLDER_DIR_TOP). */
#define NONE FOLDER_DIR_TOP

/* An open-addressing set of entry indices (stored as index + 1, 0 is a
 * free slot); what an index is keyed by is up to its user. */
struct dir_index {
	size_t *slot;
	size_t cap;       /* a power of two, or 0 */
	size_t used;
};

struct builder {
	struct folder_dir *w;
	unsigned *next_v;        /* per entry: the next "~N" to try for its
				    name when its path is taken */
	size_t n, cap;
	struct dir_index by_path;    /* key: path */
	struct dir_index by_raw;     /* key: (parent, raw), entries with raw */
};

static uint64_t path_hash(const char *path)
{
	return XXH3_64bits(path, strlen(path));
}

static uint64_t raw_hash(size_t parent, const char *raw)
{
	return XXH3_64bits_withSeed(raw, strlen(raw), (uint64_t)parent + 1);
}

static uint64_t entry_hash(const struct builder *b,
	const struct dir_index *ix, size_t i)
{
	return ix == &b->by_path ? path_hash(b->w[i].path) :
		raw_hash(b->w[i].parent, b->w[i].raw);
}

static bool index_put(struct builder *b, struct dir_index *ix, size_t i);

static bool index_grow(struct builder *b, struct dir_index *ix)
{
	struct dir_index old = *ix;
	size_t cap = old.cap ? old.cap * 2 : 64;

	ix->slot = calloc(cap, sizeof(*ix->slot));
	if (!ix->slot) {
		*ix = old;
		return false;
	}
	ix->cap = cap;
	ix->used = 0;
	for (size_t s = 0; s < old.cap; s++)
		if (old.slot[s])
			index_put(b, ix, old.slot[s] - 1);
	free(old.slot);
	return true;
}

static bool index_put(struct builder *b, struct dir_index *ix, size_t i)
{
	if (2 * (ix->used + 1) > ix->cap && !index_grow(b, ix))
		return false;
	size_t s = entry_hash(b, ix, i) & (ix->cap - 1);

	while (ix->slot[s])
		s = (s + 1) & (ix->cap - 1);
	ix->slot[s] = i + 1;
	ix->used++;
	return true;
}

static size_t find_path(const struct builder *b, const char *path)
{
	const struct dir_index *ix = &b->by_path;

	if (!ix->cap)
		return NONE;
	for (size_t s = path_hash(path) & (ix->cap - 1); ix->slot[s];
	     s = (s + 1) & (ix->cap - 1))
		if (strcmp(b->w[ix->slot[s] - 1].path, path) == 0)
			return ix->slot[s] - 1;
	return NONE;
}

/* The entry directly below parent that stands for server folder raw. */
static size_t find_raw(const struct builder *b, size_t parent,
	const char *raw)
{
	const struct dir_index *ix = &b->by_raw;

	if (!ix->cap)
		return NONE;
	for (size_t s = raw_hash(parent, raw) & (ix->cap - 1); ix->slot[s];
	     s = (s + 1) & (ix->cap - 1)) {
		const struct folder_dir *d = &b->w[ix->slot[s] - 1];

		if (d->parent == parent && strcmp(d->raw, raw) == 0)
			return ix->slot[s] - 1;
	}
	return NONE;
}

/* Gives entry i the server name raw (taken over), indexed by it. */
static bool set_raw(struct builder *b, size_t i, char *raw)
{
	bool had = b->w[i].raw != NULL;

	free(b->w[i].raw);
	b->w[i].raw = raw;
	return had || index_put(b, &b->by_raw, i);
}

/* A new entry for path and name (both taken over).  NONE when out of
 * memory (both freed). */
static size_t add_entry(struct builder *b, char *path, char *name,
	size_t parent, size_t depth)
{
	if (b->n == b->cap) {
		size_t cap = b->cap ? 2 * b->cap : 16;
		struct folder_dir *w = realloc(b->w, cap * sizeof(*w));
		unsigned *nv;

		if (w)
			b->w = w;
		nv = w ? realloc(b->next_v, cap * sizeof(*nv)) : NULL;
		if (!nv) {
			free(path);
			free(name);
			return NONE;
		}
		b->next_v = nv;
		b->cap = cap;
	}
	size_t i = b->n;

	memset(&b->w[i], 0, sizeof(b->w[i]));
	b->w[i].path = path;
	b->w[i].name = name;
	b->w[i].parent = parent;
	b->w[i].depth = depth;
	b->next_v[i] = 2;
	b->n++;
	if (!index_put(b, &b->by_path, i)) {
		b->n--;
		free(path);
		free(name);
		return NONE;
	}
	return i;
}

/* name with "~v" appended, cut at a character boundary so that the
 * result stays within FILE_NAME_MAX bytes. */
static char *dir_name_variant(const char *name, unsigned v)
{
	char suffix[16];
	size_t slen = (size_t)snprintf(suffix, sizeof(suffix), "~%u", v);
	size_t len = strlen(name);
	char *out;

	if (len + slen > FILE_NAME_MAX) {
		len = FILE_NAME_MAX - slen;
		while (len > 0 && ((unsigned char)name[len] & 0xc0) == 0x80)
			len--;
	}
	out = malloc(len + slen + 1);
	if (!out)
		return NULL;
	memcpy(out, name, len);
	memcpy(out + len, suffix, slen + 1);
	return out;
}

/* parent's path joined with name, or NULL (with *too_deep_r set when the
 * path would be too long). */
static char *join_path(const struct builder *b, size_t parent,
	const char *name, bool *too_deep_r)
{
	const char *pp = parent == NONE ? "" : b->w[parent].path;
	size_t plen = strlen(pp), nlen = strlen(name);
	size_t len = plen + (plen ? 1 : 0) + nlen;
	char *p;

	if (len > FOLDER_DIR_PATH_MAX) {
		*too_deep_r = true;
		return NULL;
	}
	p = malloc(len + 1);
	if (!p)
		return NULL;
	memcpy(p, pp, plen);
	if (plen)
		p[plen] = '/';
	memcpy(p + len - nlen, name, nlen + 1);
	return p;
}

/* Whether entry i may stand for folder rp (NULL: unknown): nobody named
 * it yet, or it is that folder. */
static bool usable(const struct builder *b, size_t i, const char *rp)
{
	return !b->w[i].raw || !rp || strcmp(b->w[i].raw, rp) == 0;
}

/* The entry below parent for the folder component part of the folder
 * (or implied parent) with raw name rp (NULL if unknown): the existing
 * one under that name when usable, else the first free or usable
 * "name~N".  NONE when out of memory, or with *too_deep_r set when the
 * path would be too long. */
static size_t place(struct builder *b, size_t parent, const char *part,
	const char *rp, size_t depth, bool *too_deep_r)
{
	char *name = folder_name_sanitize(part), *path;
	size_t base, i;

	*too_deep_r = false;
	if (!name)
		return NONE;
	path = join_path(b, parent, name, too_deep_r);
	if (!path) {
		free(name);
		return NONE;
	}
	base = find_path(b, path);
	if (base == NONE)
		return add_entry(b, path, name, parent, depth);
	free(path);
	if (usable(b, base, rp)) {
		free(name);
		return base;
	}
	/* Taken by another folder.  Variants below next_v all stand for
	 * other folders already: a usable one would have been found by its
	 * raw name before coming here. */
	for (unsigned v = b->next_v[base];; v++) {
		char *alt = dir_name_variant(name, v);

		path = alt ? join_path(b, parent, alt, too_deep_r) : NULL;
		if (!path) {
			free(alt);
			free(name);
			return NONE;
		}
		i = find_path(b, path);
		if (i == NONE || usable(b, i, rp)) {
			b->next_v[base] = v + 1;
			free(name);
			if (i != NONE) {
				free(path);
				free(alt);
				return i;
			}
			return add_entry(b, path, alt, parent, depth);
		}
		free(path);
		free(alt);
	}
}

/* The raw name of the first `levels` levels of raw (a parent implied by a
 * deeper folder), or NULL. */
static char *raw_prefix(const char *raw, char delim, size_t levels)
{
	const char *p = raw;

	if (!delim)
		return NULL;
	for (size_t i = 0; i < levels; i++) {
		p = strchr(p, delim);
		if (!p)
			return NULL;
		if (i + 1 < levels)
			p++;
	}
	return strndup(raw, p - raw);
}

/* Order of naming: parents first; among folders whose names collide once
 * made safe, the one shown unchanged keeps the name; ties go by raw
 * name. */
struct folder_order {
	const struct backend_folder *f;
	bool exact;       /* every component is shown unchanged */
};

static int folder_order_cmp(const void *a, const void *b)
{
	const struct folder_order *x = a, *y = b;

	if (x->f->n_parts != y->f->n_parts)
		return x->f->n_parts < y->f->n_parts ? -1 : 1;
	if (x->exact != y->exact)
		return x->exact ? -1 : 1;
	return strcmp(x->f->raw_name, y->f->raw_name);
}

static bool folder_exact(const struct backend_folder *f)
{
	for (size_t j = 0; j < f->n_parts; j++) {
		char *clean = folder_name_sanitize(f->parts[j]);
		bool same = clean && strcmp(clean, f->parts[j]) == 0;

		free(clean);
		if (!same)
			return false;
	}
	return true;
}

/* Places every component of folder fo.  false when out of memory. */
static bool place_folder(struct builder *b, const struct backend_folder *fo,
	char delim)
{
	size_t parent = NONE;

	for (size_t j = 0; j < fo->n_parts; j++) {
		bool last = j + 1 == fo->n_parts, too_deep;
		char *rp = last ? strdup(fo->raw_name) :
			raw_prefix(fo->raw_name, delim, j + 1);
		size_t d;

		if (last && !rp)
			return false;
		d = rp ? find_raw(b, parent, rp) : NONE;
		if (d == NONE) {
			d = place(b, parent, fo->parts[j], rp, j, &too_deep);
			if (d == NONE) {
				free(rp);
				return too_deep;   /* too deep: skip the rest */
			}
		}
		if (last && !b->w[d].real) {
			if (!set_raw(b, d, rp))
				return false;
			b->w[d].selectable = !fo->noselect;
			b->w[d].real = true;
		} else if (!last && !b->w[d].raw && rp) {
			if (!set_raw(b, d, rp))
				return false;
		} else {
			free(rp);
		}
		parent = d;
	}
	return true;
}

static int dir_cmp(const void *a, const void *b)
{
	const struct folder_dir *x = a, *y = b;

	if (x->depth != y->depth)
		return x->depth < y->depth ? -1 : 1;
	return strcmp(x->path, y->path);
}

/* Sorts the entries parents first and points each at its parent's new
 * place.  The builder's indexes are stale afterwards. */
static bool sort_entries(struct builder *b)
{
	size_t n = b->n ? b->n : 1;
	size_t *old_parent = malloc(n * sizeof(*old_parent));
	size_t *to = malloc(n * sizeof(*to));

	if (!old_parent || !to) {
		free(old_parent);
		free(to);
		return false;
	}
	/* While sorting, parent holds the entry's own old index. */
	for (size_t i = 0; i < b->n; i++) {
		old_parent[i] = b->w[i].parent;
		b->w[i].parent = i;
	}
	qsort(b->w, b->n, sizeof(*b->w), dir_cmp);
	for (size_t i = 0; i < b->n; i++)
		to[b->w[i].parent] = i;
	for (size_t i = 0; i < b->n; i++) {
		size_t op = old_parent[b->w[i].parent];

		b->w[i].parent = op == NONE ? FOLDER_DIR_TOP : to[op];
	}
	free(old_parent);
	free(to);
	return true;
}

struct folder_dir *folder_dirs_build(const struct backend_folder *f,
	size_t nf, char delim, size_t *count_r)
{
	struct builder b = { 0 };
	struct folder_order *order = calloc(nf ? nf : 1, sizeof(*order));
	size_t no = 0;

	if (!order)
		return NULL;
	for (size_t i = 0; i < nf; i++) {
		if (!backend_raw_name_sendable(f[i].raw_name)) {
			char *shown = folder_name_sanitize(f[i].raw_name);

			log_warn("folder '%s': its name holds a line break;"
				" not shown", shown ? shown : "?");
			free(shown);
			continue;
		}
		order[no].f = &f[i];
		order[no].exact = folder_exact(&f[i]);
		no++;
	}
	qsort(order, no, sizeof(*order), folder_order_cmp);
	for (size_t i = 0; i < no; i++)
		if (!place_folder(&b, order[i].f, delim))
			goto fail;
	if (!sort_entries(&b))
		goto fail;
	free(order);
	free(b.next_v);
	free(b.by_path.slot);
	free(b.by_raw.slot);
	if (!b.w && !(b.w = calloc(1, sizeof(*b.w))))
		return NULL;
	*count_r = b.n;
	return b.w;
fail:
	free(order);
	free(b.next_v);
	free(b.by_path.slot);
	free(b.by_raw.slot);
	folder_dirs_free(b.w, b.n);
	return NULL;
}

void folder_dirs_free(struct folder_dir *d, size_t n)
{
	if (!d)
		return;
	for (size_t i = 0; i < n; i++) {
		free(d[i].path);
		free(d[i].name);
		free(d[i].raw);
	}
	free(d);
}
