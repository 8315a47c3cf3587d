#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "src/read_ahead.h"

/* One reading order of a listing: order[p] is the listing index read at
 * position p, pos[i] the position of listing index i. */
struct order {
	uint32_t *order, *pos;
	size_t last;      /* position+1 of the message last read from 0 */
	size_t upto;      /* queued up to this position */
};

struct folder_ra {
	char *raw;
	uint64_t serial;  /* of the listing the orders were built from */
	uint32_t uidvalidity;
	size_t count;
	struct order by_name, by_key;
};

struct read_ahead {
	pthread_mutex_t lock;
	read_ahead_key *key;
	struct folder_ra **folders;
	size_t n_folders;
};

struct read_ahead *read_ahead_new(read_ahead_key *key)
{
	struct read_ahead *ra = calloc(1, sizeof(*ra));

	if (!ra)
		return NULL;
	pthread_mutex_init(&ra->lock, NULL);
	ra->key = key;
	return ra;
}

static void order_clear(struct order *o)
{
	free(o->order);
	free(o->pos);
	memset(o, 0, sizeof(*o));
}

void read_ahead_free(struct read_ahead **rap)
{
	struct read_ahead *ra = *rap;

	if (!ra)
		return;
	for (size_t i = 0; i < ra->n_folders; i++) {
		order_clear(&ra->folders[i]->by_name);
		order_clear(&ra->folders[i]->by_key);
		free(ra->folders[i]->raw);
		free(ra->folders[i]);
	}
	free(ra->folders);
	pthread_mutex_destroy(&ra->lock);
	free(ra);
	*rap = NULL;
}

/* Lock held.  NULL when there is no memory. */
static struct folder_ra *folder_of(struct read_ahead *ra, const char *raw)
{
	struct folder_ra *f, **grown;

	for (size_t i = 0; i < ra->n_folders; i++)
		if (strcmp(ra->folders[i]->raw, raw) == 0)
			return ra->folders[i];
	grown = realloc(ra->folders, (ra->n_folders + 1) * sizeof(*grown));
	if (!grown)
		return NULL;
	ra->folders = grown;
	f = calloc(1, sizeof(*f));
	if (!f || !(f->raw = strdup(raw))) {
		free(f);
		return NULL;
	}
	ra->folders[ra->n_folders++] = f;
	return f;
}

struct keyed {
	uint64_t key;
	const char *name;
	uint32_t index;
};

static int keyed_name_cmp(const void *a, const void *b)
{
	const struct keyed *x = a, *y = b;

	return strcmp(x->name, y->name);
}

static int keyed_key_cmp(const void *a, const void *b)
{
	const struct keyed *x = a, *y = b;

	return (x->key > y->key) - (x->key < y->key);
}

static int order_build(struct order *o, struct keyed *k, size_t n,
	int (*cmp)(const void *, const void *))
{
	order_clear(o);
	o->order = malloc((n + 1) * sizeof(*o->order));
	o->pos = malloc((n + 1) * sizeof(*o->pos));
	if (!o->order || !o->pos) {
		order_clear(o);
		return -1;
	}
	qsort(k, n, sizeof(*k), cmp);
	for (size_t p = 0; p < n; p++) {
		o->order[p] = k[p].index;
		o->pos[k[p].index] = (uint32_t)p;
	}
	return 0;
}

static void fill_keys(struct read_ahead *ra, struct keyed *k,
	const char *raw, const struct folder_listing *l)
{
	for (size_t i = 0; i < l->count; i++) {
		k[i].index = (uint32_t)i;
		k[i].name = l->names[i];
		k[i].key = ra->key(raw, l->state.uidvalidity, l->msgs[i].uid);
	}
}

/* Builds both orders of l for f (lock held); 0 or -1. */
static int rebuild(struct read_ahead *ra, struct folder_ra *f,
	const char *raw, const struct folder_listing *l)
{
	size_t n = l->count;
	struct keyed *k = malloc((n + 1) * sizeof(*k));
	int ret = -1;

	f->count = 0;
	if (!k || n > UINT32_MAX)
		goto out;
	fill_keys(ra, k, raw, l);
	if (order_build(&f->by_name, k, n, keyed_name_cmp) < 0)
		goto out;
	fill_keys(ra, k, raw, l);
	if (order_build(&f->by_key, k, n, keyed_key_cmp) < 0)
		goto out;
	f->serial = l->serial;
	f->uidvalidity = l->state.uidvalidity;
	f->count = n;
	ret = 0;
out:
	free(k);
	return ret;
}

/* One reading order: the next files to queue when the reader went on
 * from the previous one (or the one before).  Lock held. */
static size_t order_next(struct order *o, const struct folder_listing *l,
	size_t i, uint32_t *uids, uint64_t *sizes, size_t k)
{
	bool sequential = o->last && o->last <= i + 1 && o->last + 2 >= i + 1;
	size_t from, to;

	o->last = i + 1;
	if (!sequential || o->upto >= i + READ_AHEAD_FILES / 2)
		return k;
	from = o->upto > i + 1 ? o->upto : i + 1;
	to = i + 1 + READ_AHEAD_FILES;
	if (to > l->count)
		to = l->count;
	for (size_t p = from; p < to; p++) {
		const struct backend_message *m = &l->msgs[o->order[p]];

		uids[k] = m->uid;
		sizes[k++] = m->size;
	}
	if (to > from)
		o->upto = to;
	return k;
}

size_t read_ahead_next(struct read_ahead *ra, const char *raw,
	const struct folder_listing *l, uint32_t uid, uint32_t **uids_r,
	uint64_t **sizes_r)
{
	ptrdiff_t i = folder_listing_find(l, uid);
	uint32_t *uids = NULL;
	uint64_t *sizes = NULL;
	struct folder_ra *f;
	size_t k = 0;

	*uids_r = NULL;
	*sizes_r = NULL;
	if (i < 0)
		return 0;
	pthread_mutex_lock(&ra->lock);
	f = folder_of(ra, raw);
	if (!f || ((f->serial != l->serial || f->count != l->count ||
		    f->uidvalidity != l->state.uidvalidity) &&
		   rebuild(ra, f, raw, l) < 0))
		goto out;
	uids = malloc(2 * READ_AHEAD_FILES * sizeof(*uids));
	sizes = malloc(2 * READ_AHEAD_FILES * sizeof(*sizes));
	if (!uids || !sizes)
		goto out;
	k = order_next(&f->by_name, l, f->by_name.pos[i], uids, sizes, k);
	k = order_next(&f->by_key, l, f->by_key.pos[i], uids, sizes, k);
out:
	pthread_mutex_unlock(&ra->lock);
	if (k == 0) {
		free(uids);
		free(sizes);
		return 0;
	}
	*uids_r = uids;
	*sizes_r = sizes;
	return k;
}
