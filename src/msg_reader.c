#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "src/log.h"
#include "src/msg_reader.h"

#define BLOCK BLOCK_CACHE_BLOCK_SIZE
#define MEM_BLOCKS 256             /* in-memory LRU entries */
#define MEM_BYTES (32u * 1024 * 1024)  /* ... holding at most this much */
#define WORKERS 3                  /* read-ahead threads */
#define BLOCKS_AHEAD WORKERS       /* of a message read in order */
#define QUEUE_MAX 64               /* pending read-ahead jobs */
#define HEADS_PER_BATCH 128        /* messages per batched fetch */
#define HEADS_BYTES_PER_BATCH (8u * 1024 * 1024)

struct mem_block {
	struct block_key key;
	bool used;
	bool eom;
	size_t len;
	uint64_t stamp;            /* last use, for LRU */
	char *data;                /* BLOCK bytes */
};

struct inflight {
	struct block_key key;
	struct inflight *next;
};

/* One read-ahead job: either the next block of one message, or the first
 * blocks of several messages of a folder. */
struct job {
	struct job *next;
	char *folder;
	uint32_t uidvalidity;
	uint32_t index;            /* block index (single-message jobs) */
	size_t n;
	uint32_t *uids;
	uint64_t *sizes;
	bool urgent;               /* queued ahead of the others */
};

struct msg_reader {
	struct backend *be;
	struct block_cache *cache;
	char *account;

	pthread_mutex_t lock;
	pthread_cond_t fetched;    /* an in-flight block finished */
	struct inflight *inflight;
	struct mem_block mem[MEM_BLOCKS];
	size_t mem_bytes;
	uint64_t clock;
	struct msg_reader_stats stats;

	pthread_cond_t work;
	struct job *queue, **queue_tail;
	size_t queued;
	bool stopping;
	pthread_t workers[WORKERS];
	size_t n_workers;
};

static struct block_key key_of(struct msg_reader *r, const char *folder,
	uint32_t uidvalidity, uint32_t uid, uint32_t index)
{
	return block_key_make(r->account, folder, uidvalidity, uid, index);
}

static bool key_eq(const struct block_key *a, const struct block_key *b)
{
	return a->hi == b->hi && a->lo == b->lo;
}

/* ---- in-memory LRU (lock held) ------------------------------------------- */

static struct mem_block *mem_find(struct msg_reader *r,
	const struct block_key *key)
{
	for (int i = 0; i < MEM_BLOCKS; i++)
		if (r->mem[i].used && key_eq(&r->mem[i].key, key))
			return &r->mem[i];
	return NULL;
}

static struct mem_block *mem_lru(struct msg_reader *r)
{
	struct mem_block *lru = NULL;

	for (int i = 0; i < MEM_BLOCKS; i++)
		if (r->mem[i].used && (!lru || r->mem[i].stamp < lru->stamp))
			lru = &r->mem[i];
	return lru;
}

static void mem_drop(struct msg_reader *r, struct mem_block *mb)
{
	r->mem_bytes -= mb->len;
	free(mb->data);
	mb->data = NULL;
	mb->len = 0;
	mb->used = false;
}

/* Blocks are kept at their own size, so many small messages fit. */
static void mem_store(struct msg_reader *r, const struct block_key *key,
	const char *data, size_t len, bool eom)
{
	struct mem_block *slot = mem_find(r, key), *lru;

	if (slot)
		mem_drop(r, slot);
	while (r->mem_bytes + len > MEM_BYTES && (lru = mem_lru(r)))
		mem_drop(r, lru);
	for (int i = 0; !slot && i < MEM_BLOCKS; i++)
		if (!r->mem[i].used)
			slot = &r->mem[i];
	if (!slot) {
		slot = mem_lru(r);
		mem_drop(r, slot);
	}
	slot->data = malloc(len ? len : 1);
	if (!slot->data)
		return;
	if (len)
		memcpy(slot->data, data, len);
	slot->key = *key;
	slot->len = len;
	slot->eom = eom;
	slot->used = true;
	slot->stamp = ++r->clock;
	r->mem_bytes += len;
}

/* ---- in-flight blocks (lock held) ---------------------------------------- */

static bool inflight_has(struct msg_reader *r, const struct block_key *key)
{
	for (struct inflight *f = r->inflight; f; f = f->next)
		if (key_eq(&f->key, key))
			return true;
	return false;
}

static bool inflight_add(struct msg_reader *r, const struct block_key *key)
{
	struct inflight *f = malloc(sizeof(*f));

	if (!f)
		return false;
	f->key = *key;
	f->next = r->inflight;
	r->inflight = f;
	return true;
}

static void inflight_remove(struct msg_reader *r, const struct block_key *key)
{
	for (struct inflight **p = &r->inflight; *p; p = &(*p)->next)
		if (key_eq(&(*p)->key, key)) {
			struct inflight *f = *p;

			*p = f->next;
			free(f);
			return;
		}
}

/* ---- getting one block ----------------------------------------------------- */

/* A block received from the server: into both caches. */
static void store_block(struct msg_reader *r, const struct block_key *key,
	const char *data, size_t len, bool eom)
{
	if (r->cache)
		block_cache_put(r->cache, key, data, len, eom);
	pthread_mutex_lock(&r->lock);
	mem_store(r, key, data, len, eom);
	r->stats.bytes_fetched += len;
	r->stats.blocks_fetched++;
	pthread_mutex_unlock(&r->lock);
}

/* The queued job that will fetch this block, not started yet: a heads
 * job for block 0 or a job for this one block.  Lock held. */
static struct job **queued_job_for(struct msg_reader *r,
	const struct msg_ref *ref, uint32_t index)
{
	for (struct job **at = &r->queue; *at; at = &(*at)->next) {
		struct job *j = *at;

		if (j->uidvalidity != ref->uidvalidity ||
		    strcmp(j->folder, ref->folder) != 0)
			continue;
		if (j->index == UINT32_MAX) {
			for (size_t k = 0; index == 0 && k < j->n; k++)
				if (j->uids[k] == ref->uid)
					return at;
		} else if (j->index == index && j->uids[0] == ref->uid) {
			return at;
		}
	}
	return NULL;
}

/* Moves a queued job to the front.  Lock held. */
static void queue_promote(struct msg_reader *r, struct job **at)
{
	struct job *j = *at;

	if (at == &r->queue)
		return;
	*at = j->next;
	if (!j->next)
		r->queue_tail = at;
	j->next = r->queue;
	r->queue = j;
	j->urgent = true;
}

/* Copies what a block of len bytes has of [off, off + want) to dst;
 * returns how much. */
static size_t copy_slice(char *dst, const char *block, size_t len,
	size_t off, size_t want)
{
	size_t n = len > off ? (len - off < want ? len - off : want) : 0;

	if (n)
		memcpy(dst, block + off, n);
	return n;
}

/* Copies bytes [off, off + want) of block `index` (or what of them the
 * block has) to dst, setting *copied_r.  A block from memory is copied
 * from there directly; one read from disk or the server passes through
 * *scratch (BLOCK bytes, allocated on first need, owned by the caller).
 * Returns the block's length or -errno; *eom_r says whether the message
 * ends in this block.  Only a short block proves the end: the announced
 * size may be wrong. */
static ssize_t get_block(struct msg_reader *r, const struct msg_ref *ref,
	uint32_t index, size_t off, size_t want, char *dst, size_t *copied_r,
	char **scratch, bool *eom_r)
{
	struct block_key key = key_of(r, ref->folder, ref->uidvalidity,
		ref->uid, index);
	struct mem_block *mb;
	enum backend_status st;
	const char *error;
	size_t len;
	char *buf;

	pthread_mutex_lock(&r->lock);
	for (;;) {
		mb = mem_find(r, &key);
		if (mb) {
			len = mb->len;
			*copied_r = copy_slice(dst, mb->data, len, off, want);
			*eom_r = mb->eom;
			mb->stamp = ++r->clock;
			r->stats.memory_hits++;
			pthread_mutex_unlock(&r->lock);
			return (ssize_t)len;
		}
		if (!inflight_has(r, &key)) {
			/* Read-ahead that will fetch it, not started yet: a
			 * reader moves it to the front and waits for it
			 * rather than spend a round trip of its own (a
			 * worker, dst NULL, does not wait for the queue). */
			struct job **at = dst ? queued_job_for(r, ref, index) :
				NULL;

			if (!at)
				break;
			queue_promote(r, at);
		}
		/* Someone (often read-ahead) is fetching it: wait. */
		pthread_cond_wait(&r->fetched, &r->lock);
	}
	inflight_add(r, &key);
	/* A worker claiming a block of its job: readers waiting for that
	 * job while it was queued look again.  (A reader claims only what
	 * no queued job will fetch, so nobody waits for its claim.) */
	if (!dst)
		pthread_cond_broadcast(&r->fetched);
	pthread_mutex_unlock(&r->lock);

	if (!*scratch)
		*scratch = malloc(BLOCK);
	buf = *scratch;
	if (!buf) {
		pthread_mutex_lock(&r->lock);
		inflight_remove(r, &key);
		pthread_cond_broadcast(&r->fetched);
		pthread_mutex_unlock(&r->lock);
		return -ENOMEM;
	}
	if (r->cache && block_cache_get(r->cache, &key, buf, BLOCK, &len,
			eom_r)) {
		pthread_mutex_lock(&r->lock);
		mem_store(r, &key, buf, len, *eom_r);
		goto out_done;
	}
	st = r->be->ops->read_range(r->be, ref->folder, ref->uidvalidity,
		ref->uid, (uint64_t)index * BLOCK, BLOCK, buf, &len, &error);
	if (st != BACKEND_OK) {
		log_debug("read of %s UID %u block %u failed: %s", ref->folder,
			ref->uid, index, error);
		pthread_mutex_lock(&r->lock);
		inflight_remove(r, &key);
		pthread_cond_broadcast(&r->fetched);
		pthread_mutex_unlock(&r->lock);
		return -backend_status_errno(st);
	}
	*eom_r = len < BLOCK;
	store_block(r, &key, buf, len, *eom_r);
	pthread_mutex_lock(&r->lock);
out_done:
	inflight_remove(r, &key);
	pthread_cond_broadcast(&r->fetched);
	pthread_mutex_unlock(&r->lock);
	*copied_r = copy_slice(dst, buf, len, off, want);
	return (ssize_t)len;
}

/* ---- read-ahead --------------------------------------------------------------- */

static void job_free(struct job *j)
{
	free(j->folder);
	free(j->uids);
	free(j->sizes);
	free(j);
}

/* Queues a job (takes it), dropping it when the queue is full: read-ahead
 * is an optimisation, and a stale job is worth less than a new one.
 * Urgent jobs (the next blocks of a message being read) go before the
 * others: the reader will wait for them before any of the next files. */
static void queue_job(struct msg_reader *r, struct job *j, bool urgent)
{
	pthread_mutex_lock(&r->lock);
	if (r->stopping || r->queued >= QUEUE_MAX || r->n_workers == 0) {
		pthread_mutex_unlock(&r->lock);
		job_free(j);
		return;
	}
	struct job **at = &r->queue;

	j->urgent = urgent;
	if (urgent)
		while (*at && (*at)->urgent)
			at = &(*at)->next;
	else
		at = r->queue_tail;
	j->next = *at;
	*at = j;
	if (!j->next)
		r->queue_tail = &j->next;
	r->queued++;
	pthread_cond_signal(&r->work);
	pthread_mutex_unlock(&r->lock);
}

struct heads_ctx {
	struct msg_reader *r;
	const struct job *job;
};

static void got_head(void *ctx, uint32_t uid, const void *data, size_t len)
{
	struct heads_ctx *hc = ctx;
	struct msg_reader *r = hc->r;
	struct block_key key = key_of(r, hc->job->folder,
		hc->job->uidvalidity, uid, 0);

	store_block(r, &key, data, len, len < BLOCK);
	pthread_mutex_lock(&r->lock);
	r->stats.prefetched++;
	pthread_mutex_unlock(&r->lock);
}

static void run_heads_job(struct msg_reader *r, struct job *j)
{
	struct heads_ctx hc = { r, j };
	struct block_key *keys = calloc(j->n ? j->n : 1, sizeof(*keys));
	uint32_t *uids = calloc(j->n ? j->n : 1, sizeof(*uids));
	enum backend_status st;
	const char *error;
	size_t n = 0;

	if (!keys || !uids)
		goto out_free;
	/* Claim the heads nobody has or is fetching. */
	for (size_t i = 0; i < j->n; i++) {
		struct block_key key = key_of(r, j->folder, j->uidvalidity,
			j->uids[i], 0);

		if (r->cache && block_cache_contains(r->cache, &key)) {
			/* Cached: have the disk start on it now. */
			block_cache_warm(r->cache, &key);
			continue;
		}
		pthread_mutex_lock(&r->lock);
		if (!mem_find(r, &key) && !inflight_has(r, &key) &&
		    inflight_add(r, &key)) {
			keys[n] = key;
			uids[n++] = j->uids[i];
		}
		pthread_mutex_unlock(&r->lock);
	}
	/* Readers waiting for this job while queued look again. */
	pthread_mutex_lock(&r->lock);
	pthread_cond_broadcast(&r->fetched);
	pthread_mutex_unlock(&r->lock);
	if (n == 0)
		goto out_free;
	st = r->be->ops->read_heads(r->be, j->folder, j->uidvalidity, uids, n,
		BLOCK, got_head, &hc, &error);
	if (st != BACKEND_OK)
		log_debug("read-ahead in %s failed: %s", j->folder, error);
	pthread_mutex_lock(&r->lock);
	for (size_t i = 0; i < n; i++)
		inflight_remove(r, &keys[i]);
	pthread_cond_broadcast(&r->fetched);
	pthread_mutex_unlock(&r->lock);
out_free:
	free(keys);
	free(uids);
}

static void run_block_job(struct msg_reader *r, struct job *j)
{
	struct msg_ref ref = {
		.folder = j->folder, .uidvalidity = j->uidvalidity,
		.uid = j->uids[0], .size = j->sizes[0],
	};
	struct block_key key = key_of(r, j->folder, j->uidvalidity,
		j->uids[0], j->index);
	char *buf = NULL;
	size_t n;
	bool eom, known;

	if (r->cache && block_cache_contains(r->cache, &key)) {
		block_cache_warm(r->cache, &key);
		return;
	}
	/* Someone has it or is at it: waiting would only hold a worker. */
	pthread_mutex_lock(&r->lock);
	known = mem_find(r, &key) || inflight_has(r, &key);
	pthread_mutex_unlock(&r->lock);
	if (known)
		return;
	if (get_block(r, &ref, j->index, 0, 0, NULL, &n, &buf, &eom) >= 0) {
		pthread_mutex_lock(&r->lock);
		r->stats.prefetched++;
		pthread_mutex_unlock(&r->lock);
	}
	free(buf);
}

static void *worker_main(void *arg)
{
	struct msg_reader *r = arg;

	pthread_mutex_lock(&r->lock);
	for (;;) {
		struct job *j;

		while (!r->queue && !r->stopping)
			pthread_cond_wait(&r->work, &r->lock);
		if (r->stopping)
			break;
		j = r->queue;
		r->queue = j->next;
		if (!r->queue)
			r->queue_tail = &r->queue;
		r->queued--;
		pthread_mutex_unlock(&r->lock);
		if (j->n > 1 || j->index == UINT32_MAX)
			run_heads_job(r, j);
		else
			run_block_job(r, j);
		job_free(j);
		pthread_mutex_lock(&r->lock);
	}
	pthread_mutex_unlock(&r->lock);
	return NULL;
}

static struct job *job_new(const char *folder, uint32_t uidvalidity,
	size_t n)
{
	struct job *j = calloc(1, sizeof(*j));

	if (!j)
		return NULL;
	j->folder = strdup(folder);
	j->uids = calloc(n ? n : 1, sizeof(*j->uids));
	j->sizes = calloc(n ? n : 1, sizeof(*j->sizes));
	if (!j->folder || !j->uids || !j->sizes) {
		job_free(j);
		return NULL;
	}
	j->uidvalidity = uidvalidity;
	j->n = n;
	return j;
}

static void prefetch_block(struct msg_reader *r, const struct msg_ref *ref,
	uint32_t index, bool urgent)
{
	struct block_key key = key_of(r, ref->folder, ref->uidvalidity,
		ref->uid, index);
	struct job *j;
	bool known;

	if ((uint64_t)index * BLOCK >= ref->size)
		return;
	pthread_mutex_lock(&r->lock);
	/* A reader going through a large message asks for the same blocks
	 * on every read. */
	known = mem_find(r, &key) || inflight_has(r, &key) ||
		queued_job_for(r, ref, index);
	pthread_mutex_unlock(&r->lock);
	if (known || (r->cache && block_cache_contains(r->cache, &key)))
		return;
	j = job_new(ref->folder, ref->uidvalidity, 1);
	if (!j)
		return;
	j->uids[0] = ref->uid;
	j->sizes[0] = ref->size;
	j->index = index;
	queue_job(r, j, urgent);
}

void msg_reader_prefetch_heads(struct msg_reader *r, const char *folder,
	uint32_t uidvalidity, const uint32_t *uids, const uint64_t *sizes,
	size_t n)
{
	size_t i = 0;

	if (!r->be->ops->read_heads)
		return;
	while (i < n) {
		size_t start = i, bytes = 0;
		struct job *j;

		/* Batches bounded in count and in bytes: the whole answer of
		 * one command is held in memory. */
		while (i < n && i - start < HEADS_PER_BATCH &&
		       (bytes == 0 || bytes + (sizes[i] < BLOCK ? sizes[i] :
				BLOCK) <= HEADS_BYTES_PER_BATCH)) {
			bytes += sizes[i] < BLOCK ? sizes[i] : BLOCK;
			i++;
		}
		j = job_new(folder, uidvalidity, i - start);
		if (!j)
			return;
		memcpy(j->uids, uids + start, (i - start) * sizeof(*uids));
		memcpy(j->sizes, sizes + start, (i - start) * sizeof(*sizes));
		j->index = UINT32_MAX;   /* marks a heads job */
		queue_job(r, j, false);
		/* A folder read file after file reads the large ones whole:
		 * queue their next blocks too, rather than wait a round trip
		 * for each when the reader gets there. */
		for (size_t k = start; k < i; k++) {
			struct msg_ref ref = {
				.folder = folder, .uidvalidity = uidvalidity,
				.uid = uids[k], .size = sizes[k],
			};

			for (uint32_t b = 1; b <= BLOCKS_AHEAD; b++)
				prefetch_block(r, &ref, b, false);
		}
	}
}

/* ---- public ------------------------------------------------------------------- */

struct msg_reader *msg_reader_new(struct backend *be,
	struct block_cache *cache, const char *account)
{
	struct msg_reader *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	r->be = be;
	r->cache = cache;
	r->account = strdup(account);
	if (!r->account) {
		free(r);
		return NULL;
	}
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->fetched, NULL);
	pthread_cond_init(&r->work, NULL);
	r->queue_tail = &r->queue;
	return r;
}

void msg_reader_start(struct msg_reader *r)
{
	for (int i = r->n_workers; i < WORKERS; i++)
		if (pthread_create(&r->workers[r->n_workers], NULL,
				worker_main, r) == 0)
			r->n_workers++;
}

void msg_reader_free(struct msg_reader **rp)
{
	struct msg_reader *r = *rp;

	if (!r)
		return;
	pthread_mutex_lock(&r->lock);
	r->stopping = true;
	pthread_cond_broadcast(&r->work);
	pthread_mutex_unlock(&r->lock);
	for (size_t i = 0; i < r->n_workers; i++)
		pthread_join(r->workers[i], NULL);
	while (r->queue) {
		struct job *j = r->queue;

		r->queue = j->next;
		job_free(j);
	}
	while (r->inflight)
		inflight_remove(r, &r->inflight->key);
	for (int i = 0; i < MEM_BLOCKS; i++)
		free(r->mem[i].data);
	pthread_mutex_destroy(&r->lock);
	pthread_cond_destroy(&r->fetched);
	pthread_cond_destroy(&r->work);
	free(r->account);
	free(r);
	*rp = NULL;
}

void msg_reader_get_stats(struct msg_reader *r,
	struct msg_reader_stats *stats_r)
{
	pthread_mutex_lock(&r->lock);
	*stats_r = r->stats;
	pthread_mutex_unlock(&r->lock);
}

ssize_t msg_reader_read(struct msg_reader *r, const struct msg_ref *ref,
	uint64_t offset, size_t length, char *buf, uint64_t *true_size_r)
{
	char *block = NULL;
	size_t done = 0;
	uint32_t last_index = 0;

	*true_size_r = 0;
	while (done < length) {
		uint64_t pos = offset + done;
		uint32_t index;
		size_t in_block = pos % BLOCK, n;
		bool eom = false;
		ssize_t len;

		/* Block keys number blocks in 32 bits (UINT32_MAX marks a
		 * batch of heads): past that, no block can be named. */
		if (pos / BLOCK >= UINT32_MAX) {
			free(block);
			return -EFBIG;
		}
		index = (uint32_t)(pos / BLOCK);
		len = get_block(r, ref, index, in_block, length - done,
			buf + done, &n, &block, &eom);
		if (len < 0) {
			free(block);
			/* Never a short read: the kernel would take it for the
			 * end of the file. */
			return len;
		}
		last_index = index;
		if ((size_t)len <= in_block) {
			*true_size_r = (uint64_t)index * BLOCK + len;
			break;
		}
		done += n;
		if (eom && in_block + n == (size_t)len)
			*true_size_r = (uint64_t)index * BLOCK + len;
		if (eom && done < length)
			break;
	}
	free(block);
	/* Past the first part of a block, a reader going forward will want
	 * the next one: fetch it while this one is being consumed. */
	if (done > 0 && !*true_size_r && (offset + done) % BLOCK >= BLOCK / 4)
		for (uint32_t k = 1; k <= BLOCKS_AHEAD; k++)
			prefetch_block(r, ref, last_index + k, true);
	return (ssize_t)done;
}
