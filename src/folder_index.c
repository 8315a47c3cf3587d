#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "src/folder_index.h"
#include "src/log.h"

/* One version of a listing; `pub` points into it.  Immutable while more
 * than the index holds it; the index alone may change it in place. */
struct version {
	struct folder_listing pub;   /* first: folder_listing * casts back */
	unsigned refs;               /* atomic */
	struct backend_message *msgs;
	char **names;
};

struct gone {
	uint32_t uidvalidity, uid;
};

struct settled {
	uint32_t uidvalidity, uid;
	uint64_t size;
};

struct folder {
	char *raw;
	uint64_t id;              /* tells a forgotten and re-added folder */
	struct version *cur;      /* NULL: never listed */
	bool dirty;               /* cur differs from the metadata cache */
	/* What the mount did while refreshes were under way (refreshing > 0);
	 * applied again to each answer as it arrives. */
	unsigned refreshing;
	struct gone *gone;
	size_t n_gone;
	struct settled *settled;
	size_t n_settled;
	bool distrust;

	/* refresh scheduling */
	time_t fetched_at;        /* monotonic: last fetch tried; 0: never */
	bool queued;              /* a background refresh waits in bg */
	bool must_fetch;          /* cur may predate a message moved in */
	uint64_t moved_seq;       /* moves in so far: a fetch that overlapped
	                           * one leaves must_fetch set */
	uint64_t fetches;         /* fetches started */
	uint64_t cur_fetch;       /* the one cur came from: an answer to an
	                           * earlier one is older, and not installed */
};

struct folder_index {
	pthread_mutex_t lock;
	struct backend *be;
	struct meta_cache *meta;
	folder_namer *namer;
	struct folder **folders;
	size_t n_folders;
	uint64_t next_id;
	uint64_t next_serial;

	/* refresh scheduling (set once, before use) */
	unsigned refresh_s;
	struct work_queue *bg;    /* borrowed; NULL: no background refresh */
	pthread_cond_t fetched;   /* a fetch ended */
	void (*changed)(void *ctx, const char *raw);
	void *changed_ctx;

	/* the change watcher */
	pthread_t watcher;
	bool watching, stop_watch;
	char *watch_raw;
};

static time_t mono_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	/* Never 0, which means "never fetched". */
	return ts.tv_sec + 1;
}

static struct version *version_of(struct folder_listing *l)
{
	return (struct version *)l;
}

static void version_free(struct version *v)
{
	if (!v)
		return;
	for (size_t i = 0; v->names && i < v->pub.count; i++)
		free(v->names[i]);
	free(v->names);
	backend_messages_free(&v->msgs, v->pub.count);
	free(v);
}

/* Takes over msgs[0..n) and names (may be NULL on failure: then frees
 * msgs too and returns NULL). */
static struct version *version_new(const struct backend_folder_state *state,
	struct backend_message *msgs, size_t n, char **names)
{
	struct version *v = calloc(1, sizeof(*v));

	if (!v || !names) {
		if (names)
			for (size_t i = 0; i < n; i++)
				free(names[i]);
		free(names);
		backend_messages_free(&msgs, n);
		free(v);
		return NULL;
	}
	v->refs = 1;
	v->msgs = msgs;
	v->names = names;
	v->pub.state = *state;
	v->pub.count = n;
	v->pub.msgs = msgs;
	v->pub.names = names;
	return v;
}

struct folder_listing *folder_listing_ref(struct folder_listing *l)
{
	if (l)
		__atomic_add_fetch(&version_of(l)->refs, 1, __ATOMIC_RELAXED);
	return l;
}

void folder_listing_release(struct folder_listing **lp)
{
	struct folder_listing *l = *lp;

	*lp = NULL;
	if (l && __atomic_sub_fetch(&version_of(l)->refs, 1,
			__ATOMIC_ACQ_REL) == 0)
		version_free(version_of(l));
}

ptrdiff_t folder_listing_find(const struct folder_listing *l, uint32_t uid)
{
	size_t lo = 0, hi = l ? l->count : 0;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (l->msgs[mid].uid == uid)
			return (ptrdiff_t)mid;
		if (l->msgs[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

static int message_copy(struct backend_message *dst,
	const struct backend_message *src)
{
	*dst = *src;
	dst->flags = strdup(src->flags ? src->flags : "");
	dst->header = malloc(src->header_len + 1);
	if (!dst->flags || !dst->header) {
		free(dst->flags);
		free(dst->header);
		dst->flags = dst->header = NULL;
		return -1;
	}
	memcpy(dst->header, src->header, src->header_len);
	dst->header[src->header_len] = '\0';
	return 0;
}

/* A private, changeable copy of v (deep), or NULL. */
static struct version *version_copy(const struct version *v)
{
	size_t n = v->pub.count;
	struct backend_message *m = calloc(n + 1, sizeof(*m));
	char **names = calloc(n + 1, sizeof(*names));
	size_t i = 0;

	for (; m && names && i < n; i++)
		if (message_copy(&m[i], &v->msgs[i]) < 0 ||
		    !(names[i] = strdup(v->names[i])))
			break;
	if (!m || !names || i < n) {
		if (m && i < n)
			free(m[i].flags), free(m[i].header);
		if (names)
			for (size_t j = 0; j < n; j++)
				free(names[j]);
		free(names);
		backend_messages_free(&m, i);
		return NULL;
	}
	struct version *c = version_new(&v->pub.state, m, n, names);

	if (c)
		c->pub.changed_at = v->pub.changed_at;
	return c;
}

/* Makes v the folder's current version (lock held; takes v over). */
static void install(struct folder_index *idx, struct folder *f,
	struct version *v)
{
	struct folder_listing *old = f->cur ? &f->cur->pub : NULL;

	v->pub.serial = ++idx->next_serial;
	folder_listing_release(&old);
	f->cur = v;
}

/* f->cur, made changeable (copied when others hold it); lock held.
 * NULL when there is none or no memory. */
static struct version *writable_cur(struct folder_index *idx,
	struct folder *f)
{
	struct version *v = f->cur;

	if (!v || __atomic_load_n(&v->refs, __ATOMIC_ACQUIRE) == 1)
		return v;
	v = version_copy(f->cur);
	if (v)
		install(idx, f, v);
	return v;
}

struct folder_index *folder_index_new(struct backend *be,
	struct meta_cache *meta, folder_namer *namer)
{
	struct folder_index *idx = calloc(1, sizeof(*idx));

	if (!idx)
		return NULL;
	pthread_mutex_init(&idx->lock, NULL);
	pthread_cond_init(&idx->fetched, NULL);
	idx->be = be;
	idx->meta = meta;
	idx->namer = namer;
	return idx;
}

static void folder_free(struct folder *f)
{
	struct folder_listing *l = f->cur ? &f->cur->pub : NULL;

	folder_listing_release(&l);
	free(f->raw);
	free(f->gone);
	free(f->settled);
	free(f);
}

void folder_index_free(struct folder_index **idxp)
{
	struct folder_index *idx = *idxp;

	if (!idx)
		return;
	folder_index_stop_watch(idx);
	for (size_t i = 0; i < idx->n_folders; i++) {
		struct folder *f = idx->folders[i];

		if (idx->meta && f->dirty && f->cur)
			meta_cache_save_messages(idx->meta, f->raw,
				&f->cur->pub.state, f->cur->pub.changed_at,
				f->cur->msgs, f->cur->pub.count);
		folder_free(f);
	}
	free(idx->folders);
	pthread_mutex_destroy(&idx->lock);
	pthread_cond_destroy(&idx->fetched);
	free(idx);
	*idxp = NULL;
}

/* Lock held.  NULL when unknown (and !add, or no memory). */
static struct folder *folder_find(struct folder_index *idx, const char *raw,
	bool add)
{
	struct folder *f, **grown;

	for (size_t i = 0; i < idx->n_folders; i++)
		if (strcmp(idx->folders[i]->raw, raw) == 0)
			return idx->folders[i];
	if (!add)
		return NULL;
	grown = realloc(idx->folders, (idx->n_folders + 1) * sizeof(*grown));
	if (!grown)
		return NULL;
	idx->folders = grown;
	f = calloc(1, sizeof(*f));
	if (!f || !(f->raw = strdup(raw))) {
		free(f);
		return NULL;
	}
	f->id = ++idx->next_id;
	idx->folders[idx->n_folders++] = f;
	return f;
}

struct folder_listing *folder_index_get(struct folder_index *idx,
	const char *raw)
{
	struct folder_listing *l = NULL;
	struct folder *f;

	pthread_mutex_lock(&idx->lock);
	f = folder_find(idx, raw, false);
	if (f && f->cur)
		l = folder_listing_ref(&f->cur->pub);
	pthread_mutex_unlock(&idx->lock);
	return l;
}

/* Names a listing; NULL when the namer failed. */
static char **name_listing(struct folder_index *idx,
	const struct backend_message *m, size_t n)
{
	char **names = calloc(n + 1, sizeof(*names));

	if (names && idx->namer(m, n, names) < 0) {
		free(names);
		names = NULL;
	}
	return names;
}

static bool is_gone(const struct folder *f, uint32_t uidvalidity,
	uint32_t uid)
{
	for (size_t j = 0; j < f->n_gone; j++)
		if (f->gone[j].uid == uid &&
		    f->gone[j].uidvalidity == uidvalidity)
			return true;
	return false;
}

/* Applies to a fresh answer what the mount did while it was fetched, and
 * keeps sizes full reads settled (lock held). */
static void apply_local(const struct folder *f,
	const struct backend_folder_state *state, struct backend_message *m,
	size_t *n)
{
	const struct version *old = f->cur;
	size_t k = 0;

	for (size_t i = 0; i < *n; i++) {
		if (is_gone(f, state->uidvalidity, m[i].uid)) {
			free(m[i].flags);
			free(m[i].header);
			continue;
		}
		if (m[i].size_uncertain) {
			ptrdiff_t o = old && old->pub.state.uidvalidity ==
				state->uidvalidity ?
				folder_listing_find(&old->pub, m[i].uid) : -1;

			if (o >= 0 && !old->msgs[o].size_uncertain) {
				m[i].size = old->msgs[o].size;
				m[i].size_uncertain = false;
			}
		}
		/* A full read's size beats whatever the server announced. */
		for (size_t j = 0; j < f->n_settled; j++)
			if (f->settled[j].uid == m[i].uid &&
			    f->settled[j].uidvalidity == state->uidvalidity) {
				m[i].size = f->settled[j].size;
				m[i].size_uncertain = false;
			}
		m[k++] = m[i];
	}
	*n = k;
}

/* A change seen now: time moves forward even within one second, so that
 * every change shows. */
static int64_t next_change(int64_t last)
{
	int64_t now = (int64_t)time(NULL);

	return now > last ? now : last + 1;
}

/* When a fresh answer m[0..n) last changed, given the version it
 * replaces (lock held). */
static int64_t changed_at_of(const struct version *old,
	const struct backend_folder_state *state,
	const struct backend_message *m, size_t n)
{
	int64_t newest = 0;
	bool same;

	if (!old) {
		for (size_t i = 0; i < n; i++)
			if (m[i].internaldate > newest)
				newest = m[i].internaldate;
		return newest;
	}
	same = old->pub.state.uidvalidity == state->uidvalidity &&
		old->pub.count == n;
	for (size_t i = 0; same && i < n; i++)
		same = old->msgs[i].uid == m[i].uid;
	return same ? old->pub.changed_at : next_change(old->pub.changed_at);
}

static void save(struct folder_index *idx, const char *raw,
	struct folder_listing *l)
{
	if (idx->meta)
		meta_cache_save_messages(idx->meta, raw, &l->state,
			l->changed_at, version_of(l)->msgs, l->count);
}

enum backend_status folder_index_refresh(struct folder_index *idx,
	const char *raw, struct folder_listing **listing_r,
	const char **error_r)
{
	struct backend_folder_state state;
	struct folder_listing *known = NULL, *out = NULL;
	struct backend_message *m = NULL;
	enum backend_status st;
	size_t n = 0, repeats = 0;
	uint32_t first_repeat;
	char **names = NULL;
	int64_t changed_at = 0;
	struct folder *f;
	uint64_t id, moved, fetch;

	*listing_r = NULL;
	pthread_mutex_lock(&idx->lock);
	f = folder_find(idx, raw, true);
	if (!f) {
		pthread_mutex_unlock(&idx->lock);
		*error_r = "out of memory";
		return BACKEND_TEMP;
	}
	if (f->cur)
		known = folder_listing_ref(&f->cur->pub);
	f->refreshing++;
	id = f->id;
	moved = f->moved_seq;
	fetch = ++f->fetches;
	pthread_mutex_unlock(&idx->lock);

	/* known is immutable while we hold it: no copy needed. */
	if (idx->be->ops->resync_messages && known)
		st = idx->be->ops->resync_messages(idx->be, raw,
			&known->state, version_of(known)->msgs, known->count,
			&state, &m, &n, error_r);
	else
		st = idx->be->ops->list_messages(idx->be, raw, &state, &m, &n,
			error_r);
	folder_listing_release(&known);
	if (st == BACKEND_OK) {
		/* Whatever the backend promised: one entry per UID. */
		n = backend_messages_normalize(m, n, &repeats, &first_repeat);
		if (repeats) {
			log_warn("server error: %s lists UID %u twice", raw,
				first_repeat);
			state.uidnext = 0;   /* list in full next time */
		}
	}

	pthread_mutex_lock(&idx->lock);
	f = folder_find(idx, raw, false);
	if (f && f->id != id)
		f = NULL;
	if (st == BACKEND_OK && !f) {
		st = BACKEND_TEMP;   /* forgotten meanwhile: stay forgotten */
		*error_r = "folder forgotten";
	}
	if (st == BACKEND_OK) {
		apply_local(f, &state, m, &n);
		if (f->n_gone || f->distrust)
			/* The counts cannot vouch for our changes. */
			state.highestmodseq = 0;
		changed_at = changed_at_of(f->cur, &state, m, n);
	}
	pthread_mutex_unlock(&idx->lock);

	/* Names are derived outside the lock, from the answer as applied. */
	if (st == BACKEND_OK) {
		names = name_listing(idx, m, n);
		if (!names) {
			backend_messages_free(&m, n);
			st = BACKEND_TEMP;
			*error_r = "out of memory";
		}
	} else {
		backend_messages_free(&m, n);
	}

	pthread_mutex_lock(&idx->lock);
	f = folder_find(idx, raw, false);
	if (f && f->id != id)
		f = NULL;
	if (st == BACKEND_OK) {
		struct version *v = version_new(&state, m, n, names);

		m = NULL;
		if (!v) {
			st = BACKEND_TEMP;
			*error_r = "out of memory";
		} else if (!f) {
			struct folder_listing *l = &v->pub;

			folder_listing_release(&l);
			st = BACKEND_TEMP;
			*error_r = "folder forgotten";
		} else if (fetch < f->cur_fetch) {
			/* A later fetch answered first: keep its answer. */
			struct folder_listing *l = &v->pub;

			folder_listing_release(&l);
			out = f->cur ? folder_listing_ref(&f->cur->pub) : NULL;
		} else {
			bool late = false;

			/* Removed while we named it (rare): apply again. */
			for (size_t i = 0; i < v->pub.count && !late; i++)
				late = is_gone(f, state.uidvalidity,
					v->msgs[i].uid);
			v->pub.changed_at = f->cur && changed_at <
				f->cur->pub.changed_at ?
				f->cur->pub.changed_at : changed_at;
			if (late)
				v->pub.changed_at = next_change(
					v->pub.changed_at);
			install(idx, f, v);
			f->cur_fetch = fetch;
			for (size_t i = 0; late && i < f->n_gone; i++) {
				ptrdiff_t k = folder_listing_find(&v->pub,
					f->gone[i].uid);

				if (k >= 0 && f->gone[i].uidvalidity ==
				    state.uidvalidity) {
					free(v->msgs[k].flags);
					free(v->msgs[k].header);
					free(v->names[k]);
					memmove(&v->msgs[k], &v->msgs[k + 1],
						(v->pub.count - (size_t)k - 1) *
						sizeof(*v->msgs));
					memmove(&v->names[k], &v->names[k + 1],
						(v->pub.count - (size_t)k - 1) *
						sizeof(*v->names));
					v->pub.count--;
				}
			}
			/* Saved below; an overlapping refresh may save an
			 * older answer after it, so let the exit save too. */
			f->dirty = f->refreshing > 1;
			out = folder_listing_ref(&v->pub);
		}
	}
	if (f) {
		/* Even a failure counts as an attempt: retry after the
		 * period. */
		f->fetched_at = mono_now();
		if (st == BACKEND_OK && f->moved_seq == moved)
			f->must_fetch = false;
	}
	pthread_cond_broadcast(&idx->fetched);
	if (f && --f->refreshing == 0) {
		free(f->gone);
		f->gone = NULL;
		f->n_gone = 0;
		free(f->settled);
		f->settled = NULL;
		f->n_settled = 0;
		f->distrust = false;
	}
	pthread_mutex_unlock(&idx->lock);
	if (out)
		save(idx, raw, out);
	*listing_r = out;
	return st;
}

/* ---- refresh scheduling ---------------------------------------------------- */

void folder_index_schedule(struct folder_index *idx, unsigned refresh_s,
	struct work_queue *bg, void (*changed)(void *ctx, const char *raw),
	void *ctx)
{
	idx->refresh_s = refresh_s;
	idx->bg = bg;
	idx->changed = changed;
	idx->changed_ctx = ctx;
}

struct refresh_job {
	struct folder_index *idx;
	char *raw;
};

static void refresh_job_end(struct refresh_job *job)
{
	struct folder *f;

	pthread_mutex_lock(&job->idx->lock);
	f = folder_find(job->idx, job->raw, false);
	if (f)
		f->queued = false;
	pthread_mutex_unlock(&job->idx->lock);
}

static void refresh_job_run(void *arg)
{
	struct refresh_job *job = arg;
	struct folder_index *idx = job->idx;
	struct folder_listing *l = NULL;
	const char *error = "";
	enum backend_status st;

	refresh_job_end(job);
	st = folder_index_refresh(idx, job->raw, &l, &error);
	folder_listing_release(&l);
	if (st != BACKEND_OK)
		log_debug("cannot list %s: %s", job->raw, error);
	else if (idx->changed)
		idx->changed(idx->changed_ctx, job->raw);
	free(job->raw);
	free(job);
}

static void refresh_job_cancel(void *arg)
{
	struct refresh_job *job = arg;

	refresh_job_end(job);
	free(job->raw);
	free(job);
}

/* Queues a background refresh of f unless one waits or runs (lock held).
 * When the queue is full it is simply not done: the next serve asks
 * again. */
static void queue_refresh(struct folder_index *idx, struct folder *f)
{
	struct refresh_job *job;

	if (!idx->bg || f->queued || f->refreshing ||
	    !(job = malloc(sizeof(*job))))
		return;
	job->idx = idx;
	job->raw = strdup(f->raw);
	if (job->raw && work_queue_submit(idx->bg, refresh_job_run,
			refresh_job_cancel, job)) {
		f->queued = true;
		return;
	}
	free(job->raw);
	free(job);
}

static bool stale(const struct folder_index *idx, const struct folder *f)
{
	return f->fetched_at == 0 ||
		mono_now() - f->fetched_at >= (time_t)idx->refresh_s;
}

/* What folder_index_current answers (lock held). */
static struct folder_listing *current(struct folder_index *idx,
	struct folder *f, bool fresh)
{
	if (!f || !f->cur || f->must_fetch)
		return NULL;
	if (fresh && stale(idx, f))
		queue_refresh(idx, f);
	return folder_listing_ref(&f->cur->pub);
}

struct folder_listing *folder_index_current(struct folder_index *idx,
	const char *raw, bool fresh)
{
	struct folder_listing *l;

	pthread_mutex_lock(&idx->lock);
	l = current(idx, folder_find(idx, raw, false), fresh);
	pthread_mutex_unlock(&idx->lock);
	return l;
}

enum backend_status folder_index_serve(struct folder_index *idx,
	const char *raw, bool fresh, struct folder_listing **listing_r,
	const char **error_r)
{
	struct folder *f;

	pthread_mutex_lock(&idx->lock);
	/* Nothing to serve yet, but a fetch is under way: wait for it rather
	 * than start a second. */
	while ((f = folder_find(idx, raw, false)) && f->refreshing &&
	       (!f->cur || f->must_fetch))
		pthread_cond_wait(&idx->fetched, &idx->lock);
	*listing_r = current(idx, f, fresh);
	pthread_mutex_unlock(&idx->lock);
	if (*listing_r)
		return BACKEND_OK;
	/* None known, the one awaited failed, or it may predate a message
	 * moved in: fetch it ourselves, once. */
	return folder_index_refresh(idx, raw, listing_r, error_r);
}

int folder_index_load(struct folder_index *idx, const char *raw,
	struct folder_listing **listing_r)
{
	struct backend_folder_state state;
	struct backend_message *m = NULL;
	int64_t changed_at = 0;
	struct version *v;
	struct folder *f;
	char **names;
	size_t n = 0;

	*listing_r = NULL;
	if (!idx->meta || meta_cache_load_messages(idx->meta, raw, &state,
			&changed_at, &m, &n) < 0)
		return -1;
	names = name_listing(idx, m, n);
	v = version_new(&state, m, n, names);
	if (!v)
		return -1;
	v->pub.changed_at = changed_at;
	pthread_mutex_lock(&idx->lock);
	f = folder_find(idx, raw, true);
	if (f && !f->cur) {
		install(idx, f, v);
		*listing_r = folder_listing_ref(&v->pub);
	} else {
		/* Something newer came first: serve that. */
		struct folder_listing *l = &v->pub;

		folder_listing_release(&l);
		if (f && f->cur)
			*listing_r = folder_listing_ref(&f->cur->pub);
	}
	pthread_mutex_unlock(&idx->lock);
	return *listing_r ? 0 : -1;
}

void folder_index_remove(struct folder_index *idx, const char *raw,
	uint32_t uidvalidity, uint32_t uid)
{
	struct folder *f;
	struct version *v;

	pthread_mutex_lock(&idx->lock);
	f = folder_find(idx, raw, false);
	if (!f)
		goto out;
	if (f->refreshing) {
		struct gone *g = realloc(f->gone,
			(f->n_gone + 1) * sizeof(*g));

		if (g) {
			f->gone = g;
			f->gone[f->n_gone++] = (struct gone){ uidvalidity, uid };
		} else {
			f->distrust = true;
		}
	}
	v = f->cur && f->cur->pub.state.uidvalidity == uidvalidity ?
		writable_cur(idx, f) : NULL;
	if (v) {
		ptrdiff_t k = folder_listing_find(&v->pub, uid);

		if (k >= 0) {
			size_t tail = v->pub.count - (size_t)k - 1;

			free(v->msgs[k].flags);
			free(v->msgs[k].header);
			free(v->names[k]);
			memmove(&v->msgs[k], &v->msgs[k + 1],
				tail * sizeof(*v->msgs));
			memmove(&v->names[k], &v->names[k + 1],
				tail * sizeof(*v->names));
			v->pub.count--;
			v->pub.changed_at = next_change(v->pub.changed_at);
		}
		/* The counts no longer match the server's: the next resync
		 * compares every UID rather than trust CONDSTORE. */
		v->pub.state.highestmodseq = 0;
		f->dirty = true;
	}
out:
	pthread_mutex_unlock(&idx->lock);
}

void folder_index_settle_size(struct folder_index *idx, const char *raw,
	uint32_t uidvalidity, uint32_t uid, uint64_t size)
{
	struct folder *f;
	struct version *v;

	pthread_mutex_lock(&idx->lock);
	f = folder_find(idx, raw, false);
	if (!f)
		goto out;
	if (f->refreshing) {
		struct settled *s = realloc(f->settled,
			(f->n_settled + 1) * sizeof(*s));

		if (s) {
			f->settled = s;
			f->settled[f->n_settled++] =
				(struct settled){ uidvalidity, uid, size };
		}
	}
	if (f->cur && f->cur->pub.state.uidvalidity == uidvalidity &&
	    folder_listing_find(&f->cur->pub, uid) >= 0 &&
	    (v = writable_cur(idx, f))) {
		ptrdiff_t k = folder_listing_find(&v->pub, uid);

		v->msgs[k].size = size;
		v->msgs[k].size_uncertain = false;
		f->dirty = true;
	}
out:
	pthread_mutex_unlock(&idx->lock);
}

void folder_index_distrust(struct folder_index *idx, const char *raw)
{
	struct folder *f;
	struct version *v;

	pthread_mutex_lock(&idx->lock);
	f = folder_find(idx, raw, false);
	if (f) {
		if (f->refreshing)
			f->distrust = true;
		if ((v = writable_cur(idx, f)) && v->pub.state.highestmodseq) {
			v->pub.state.highestmodseq = 0;
			f->dirty = true;
		}
	}
	pthread_mutex_unlock(&idx->lock);
}

void folder_index_moved_in(struct folder_index *idx, const char *raw)
{
	struct folder *f;

	folder_index_distrust(idx, raw);
	pthread_mutex_lock(&idx->lock);
	f = folder_find(idx, raw, false);
	if (f) {
		f->must_fetch = true;
		f->moved_seq++;
	}
	pthread_mutex_unlock(&idx->lock);
}

void folder_index_forget(struct folder_index *idx, const char *raw)
{
	pthread_mutex_lock(&idx->lock);
	for (size_t i = 0; i < idx->n_folders; i++)
		if (strcmp(idx->folders[i]->raw, raw) == 0) {
			folder_free(idx->folders[i]);
			idx->folders[i] = idx->folders[--idx->n_folders];
			break;
		}
	pthread_mutex_unlock(&idx->lock);
	if (idx->meta)
		meta_cache_drop_messages(idx->meta, raw);
}

static void *watcher_main(void *arg)
{
	struct folder_index *idx = arg;

	for (;;) {
		struct folder_listing *l = NULL;
		enum backend_status st;
		const char *error = "";
		bool stop;

		/* Servers drop IDLE after 30 minutes; renew well before. */
		st = idx->be->ops->wait_changes(idx->be, idx->watch_raw,
			20 * 60, &error);
		pthread_mutex_lock(&idx->lock);
		stop = idx->stop_watch;
		pthread_mutex_unlock(&idx->lock);
		if (stop)
			break;
		if (st != BACKEND_OK) {
			log_debug("watching %s: %s", idx->watch_raw, error);
			continue;
		}
		st = folder_index_refresh(idx, idx->watch_raw, &l, &error);
		folder_listing_release(&l);
		if (st == BACKEND_OK && idx->changed)
			idx->changed(idx->changed_ctx, idx->watch_raw);
		else
			log_debug("cannot list %s: %s", idx->watch_raw, error);
	}
	return NULL;
}

void folder_index_watch(struct folder_index *idx, const char *raw)
{
	if (!idx->be->ops->wait_changes || !idx->be->ops->interrupt_wait ||
	    idx->watching)
		return;
	idx->watch_raw = strdup(raw);
	if (idx->watch_raw &&
	    pthread_create(&idx->watcher, NULL, watcher_main, idx) == 0)
		idx->watching = true;
}

void folder_index_stop_watch(struct folder_index *idx)
{
	if (idx->watching) {
		pthread_mutex_lock(&idx->lock);
		idx->stop_watch = true;
		pthread_mutex_unlock(&idx->lock);
		idx->be->ops->interrupt_wait(idx->be);
		pthread_join(idx->watcher, NULL);
		idx->watching = false;
	}
	free(idx->watch_raw);
	idx->watch_raw = NULL;
}
