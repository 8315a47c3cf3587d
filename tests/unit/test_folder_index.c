/* Unit tests for src/folder_index.c against an in-process backend: a
 * folder held in memory, whose answers a test can make contradictory
 * (repeated or unordered UIDs) and during whose "network" wait a test can
 * act on the index, as rm or a full read would through the mount. */
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/folder_index.h"
#include "src/work_queue.h"
#include "tests/unit/check.h"

#define MAX_MSGS 64

struct fake {
	struct backend be;
	uint32_t uidvalidity, uidnext;
	uint32_t uids[MAX_MSGS];
	uint64_t sizes[MAX_MSGS];
	bool uncertain;         /* sizes are estimates (like POP3 LIST) */
	size_t n;
	/* the next answer: these UIDs in this order instead of uids[] */
	const uint32_t *answer;
	size_t n_answer;
	/* called while "waiting on the server", after the answer is fixed */
	void (*during)(struct fake *fk);
	struct folder_index *idx;
	unsigned lists, resyncs;
	size_t last_known;      /* n_known of the last resync */
};

static struct fake *fake_of(struct backend *be)
{
	return (struct fake *)be;
}

static void fill(struct fake *fk, struct backend_message *m, uint32_t uid)
{
	char h[48];

	snprintf(h, sizeof(h), "Subject: message %u", uid);
	m->uid = uid;
	m->size = 1000 + uid;
	for (size_t i = 0; i < fk->n; i++)
		if (fk->uids[i] == uid)
			m->size = fk->sizes[i];
	m->size_uncertain = fk->uncertain;
	m->internaldate = 1700000000;
	m->flags = strdup("");
	m->header = strdup(h);
	m->header_len = strlen(h);
}

static enum backend_status answer(struct fake *fk,
	struct backend_folder_state *state_r, struct backend_message **msgs_r,
	size_t *count_r)
{
	const uint32_t *uids = fk->answer ? fk->answer : fk->uids;
	size_t n = fk->answer ? fk->n_answer : fk->n;
	struct backend_message *m = calloc(n + 1, sizeof(*m));

	for (size_t i = 0; i < n; i++)
		fill(fk, &m[i], uids[i]);
	*state_r = (struct backend_folder_state){
		.uidvalidity = fk->uidvalidity, .uidnext = fk->uidnext,
		.highestmodseq = 7, .exists = (uint32_t)n,
	};
	fk->answer = NULL;
	if (fk->during) {
		void (*during)(struct fake *) = fk->during;

		fk->during = NULL;
		during(fk);
	}
	*msgs_r = m;
	*count_r = n;
	return BACKEND_OK;
}

static enum backend_status fake_list(struct backend *be, const char *raw,
	struct backend_folder_state *state_r, struct backend_message **msgs_r,
	size_t *count_r, const char **error_r)
{
	(void)raw, (void)error_r;
	fake_of(be)->lists++;
	return answer(fake_of(be), state_r, msgs_r, count_r);
}

static enum backend_status fake_resync(struct backend *be, const char *raw,
	const struct backend_folder_state *known_state,
	const struct backend_message *known, size_t n_known,
	struct backend_folder_state *state_r, struct backend_message **msgs_r,
	size_t *count_r, const char **error_r)
{
	struct fake *fk = fake_of(be);

	(void)raw, (void)known_state, (void)error_r;
	fk->resyncs++;
	fk->last_known = n_known;
	/* Reads every known entry, as a backend copying them would: the
	 * sanitizers see it if the index let them change meanwhile. */
	for (size_t i = 0; i < n_known; i++)
		CHECK(known[i].header && known[i].flags &&
			strlen(known[i].header) == known[i].header_len);
	return answer(fk, state_r, msgs_r, count_r);
}

static const struct backend_ops fake_ops = {
	.list_messages = fake_list,
	.resync_messages = fake_resync,
};

static int namer(const struct backend_message *m, size_t n, char **names_r)
{
	for (size_t i = 0; i < n; i++) {
		char buf[32];

		snprintf(buf, sizeof(buf), "uid-%u.eml", m[i].uid);
		names_r[i] = strdup(buf);
	}
	return 0;
}

static void fake_init(struct fake *fk, uint32_t uidvalidity, size_t n)
{
	memset(fk, 0, sizeof(*fk));
	fk->be.ops = &fake_ops;
	fk->be.delimiter = '/';
	fk->uidvalidity = uidvalidity;
	for (size_t i = 0; i < n; i++) {
		fk->uids[i] = (uint32_t)(i + 1);
		fk->sizes[i] = 1000 + i + 1;
	}
	fk->n = n;
	fk->uidnext = (uint32_t)n + 1;
}

static void fake_expunge(struct fake *fk, uint32_t uid)
{
	for (size_t i = 0; i < fk->n; i++)
		if (fk->uids[i] == uid) {
			memmove(&fk->uids[i], &fk->uids[i + 1],
				(fk->n - i - 1) * sizeof(*fk->uids));
			memmove(&fk->sizes[i], &fk->sizes[i + 1],
				(fk->n - i - 1) * sizeof(*fk->sizes));
			fk->n--;
			return;
		}
}

static void fake_add(struct fake *fk)
{
	fk->uids[fk->n] = fk->uidnext++;
	fk->sizes[fk->n] = 1000 + fk->uids[fk->n];
	fk->n++;
}

/* The UIDs of a listing, e.g. "1 3 4". */
static const char *uids_of(const struct folder_listing *l)
{
	static char buf[512];
	size_t len = 0;

	buf[0] = '\0';
	for (size_t i = 0; l && i < l->count && len < sizeof(buf) - 12; i++)
		len += (size_t)snprintf(buf + len, sizeof(buf) - len, "%s%u",
			i ? " " : "", l->msgs[i].uid);
	return buf;
}

static void check_well_formed(const struct folder_listing *l)
{
	for (size_t i = 0; i < l->count; i++) {
		char want[32];

		snprintf(want, sizeof(want), "uid-%u.eml", l->msgs[i].uid);
		CHECK(strcmp(l->names[i], want) == 0, "%s for UID %u",
			l->names[i], l->msgs[i].uid);
		if (i)
			CHECK(l->msgs[i - 1].uid < l->msgs[i].uid);
	}
}

static struct folder_listing *refresh(struct folder_index *idx)
{
	struct folder_listing *l = NULL;
	const char *error = NULL;

	CHECK(folder_index_refresh(idx, "INBOX", &l, &error) == BACKEND_OK);
	if (l)
		check_well_formed(l);
	return l;
}

static void test_vanished_and_new(void)
{
	struct fake fk;
	struct folder_index *idx;
	struct folder_listing *first, *l;

	fake_init(&fk, 10, 5);
	idx = folder_index_new(&fk.be, NULL, namer);
	first = refresh(idx);
	CHECK(strcmp(uids_of(first), "1 2 3 4 5") == 0, "%s",
		uids_of(first));
	CHECK(fk.lists == 1 && fk.resyncs == 0);

	fake_expunge(&fk, 2);
	fake_expunge(&fk, 5);
	fake_add(&fk);
	l = refresh(idx);
	CHECK(fk.resyncs == 1 && fk.last_known == 5);
	CHECK(strcmp(uids_of(l), "1 3 4 6") == 0, "%s", uids_of(l));
	/* An older snapshot is untouched by the newer version. */
	CHECK(strcmp(uids_of(first), "1 2 3 4 5") == 0);
	folder_listing_release(&first);
	folder_listing_release(&l);
	l = folder_index_get(idx, "INBOX");
	CHECK(strcmp(uids_of(l), "1 3 4 6") == 0);
	folder_listing_release(&l);
	CHECK(folder_index_get(idx, "Other") == NULL);
	folder_index_free(&idx);
}

static void test_uidvalidity_change(void)
{
	struct fake fk;
	struct folder_index *idx;
	struct folder_listing *l;

	fake_init(&fk, 10, 3);
	idx = folder_index_new(&fk.be, NULL, namer);
	l = refresh(idx);
	folder_listing_release(&l);
	/* The folder was recreated: same UIDs, another UIDVALIDITY. */
	fk.uidvalidity = 11;
	fake_add(&fk);
	l = refresh(idx);
	CHECK(l && l->state.uidvalidity == 11);
	CHECK(strcmp(uids_of(l), "1 2 3 4") == 0, "%s", uids_of(l));
	folder_listing_release(&l);
	/* A removal noted under the old UIDVALIDITY touches nothing. */
	folder_index_remove(idx, "INBOX", 10, 2);
	l = folder_index_get(idx, "INBOX");
	CHECK(strcmp(uids_of(l), "1 2 3 4") == 0, "%s", uids_of(l));
	folder_listing_release(&l);
	folder_index_free(&idx);
}

static void test_repeated_and_unordered(void)
{
	static const uint32_t contradictory[] = { 4, 2, 2, 9, 1, 4 };
	struct fake fk;
	struct folder_index *idx;
	struct folder_listing *l;

	fake_init(&fk, 10, 0);
	fk.uidnext = 10;
	idx = folder_index_new(&fk.be, NULL, namer);
	fk.answer = contradictory;
	fk.n_answer = 6;
	l = refresh(idx);
	CHECK(strcmp(uids_of(l), "1 2 4 9") == 0, "%s", uids_of(l));
	CHECK(l && l->state.uidnext == 0, "a contradictory answer anchors "
		"no incremental resync");
	folder_listing_release(&l);
	folder_index_free(&idx);
}

/* What the mount does while the refresh waits on the server. */
static void rm_two(struct fake *fk)
{
	folder_index_remove(fk->idx, "INBOX", 10, 1);
	folder_index_remove(fk->idx, "INBOX", 10, 4);
}

static void settle_three(struct fake *fk)
{
	folder_index_settle_size(fk->idx, "INBOX", 10, 3, 4242);
}

static void test_changes_during_refresh(void)
{
	struct fake fk;
	struct folder_index *idx;
	struct folder_listing *before, *l;

	fake_init(&fk, 10, 4);
	fk.uncertain = true;
	idx = folder_index_new(&fk.be, NULL, namer);
	fk.idx = idx;
	before = refresh(idx);

	/* rm of the first and the last while the answer (from before the
	 * expunges reached the server) is on its way. */
	fk.during = rm_two;
	l = refresh(idx);
	CHECK(strcmp(uids_of(l), "2 3") == 0, "rm undone: %s", uids_of(l));
	CHECK(l && l->state.highestmodseq == 0,
		"the counts are not trusted after local changes");
	CHECK(strcmp(uids_of(before), "1 2 3 4") == 0, "snapshot changed");
	folder_listing_release(&l);
	l = folder_index_get(idx, "INBOX");
	CHECK(strcmp(uids_of(l), "2 3") == 0, "%s", uids_of(l));
	folder_listing_release(&l);
	/* Removed outside a refresh too: the next answer has them gone. */
	fake_expunge(&fk, 1);
	fake_expunge(&fk, 4);
	folder_index_remove(idx, "INBOX", 10, 2);
	fake_expunge(&fk, 2);
	l = refresh(idx);
	CHECK(strcmp(uids_of(l), "3") == 0, "%s", uids_of(l));
	folder_listing_release(&l);

	/* A full read settles a size while the refresh waits: the estimate
	 * in the answer does not undo it, nor does the next refresh. */
	fk.during = settle_three;
	l = refresh(idx);
	CHECK(l && l->count == 1 && l->msgs[0].size == 4242 &&
		!l->msgs[0].size_uncertain, "size %llu",
		l && l->count ? (unsigned long long)l->msgs[0].size : 0ULL);
	folder_listing_release(&l);
	l = refresh(idx);
	CHECK(l && l->count == 1 && l->msgs[0].size == 4242);
	folder_listing_release(&l);
	/* A size the server announced wrongly, corrected by a full read
	 * while a refresh waits: the correction stays too. */
	fk.uncertain = false;
	fk.during = settle_three;
	fk.sizes[0] = 999;
	l = refresh(idx);
	CHECK(l && l->count == 1 && l->msgs[0].size == 4242, "size %llu",
		l && l->count ? (unsigned long long)l->msgs[0].size : 0ULL);
	folder_listing_release(&l);
	folder_listing_release(&before);
	folder_index_free(&idx);
}

static int rm_entry(const char *path, const struct stat *st, int flag,
	struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	return remove(path);
}

static void test_metadata_cache(void)
{
	char dir[] = "/tmp/mailfs-test-folder-index-XXXXXX";
	struct meta_cache *mc = NULL;
	struct folder_index *idx;
	struct folder_listing *l;
	const char *error;
	struct fake fk;

	if (!mkdtemp(dir) || meta_cache_open(dir, &mc, &error) < 0) {
		CHECK(0, "cache directory");
		return;
	}
	fake_init(&fk, 10, 3);
	idx = folder_index_new(&fk.be, mc, namer);
	l = refresh(idx);
	folder_listing_release(&l);
	folder_index_remove(idx, "INBOX", 10, 2);   /* saved at the end */
	folder_index_free(&idx);

	idx = folder_index_new(&fk.be, mc, namer);
	CHECK(folder_index_load(idx, "INBOX", &l) == 0);
	CHECK(strcmp(uids_of(l), "1 3") == 0, "%s", uids_of(l));
	if (l)
		check_well_formed(l);
	folder_listing_release(&l);
	/* The next refresh starts from the cached listing. */
	fake_expunge(&fk, 2);
	l = refresh(idx);
	CHECK(fk.resyncs == 1 && fk.last_known == 2);
	folder_listing_release(&l);
	folder_index_forget(idx, "INBOX");
	CHECK(folder_index_get(idx, "INBOX") == NULL);
	folder_index_free(&idx);
	idx = folder_index_new(&fk.be, mc, namer);
	CHECK(folder_index_load(idx, "INBOX", &l) < 0, "forgotten on disk");
	folder_index_free(&idx);
	meta_cache_close(&mc);
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A fetch started earlier answers after one started later: its answer
 * is older and must not replace the newer one. */
static void newer_fetch_meanwhile(struct fake *fk)
{
	struct folder_listing *l = NULL;
	const char *error = NULL;

	fake_add(fk);
	CHECK(folder_index_refresh(fk->idx, "INBOX", &l, &error) ==
		BACKEND_OK);
	CHECK(strcmp(uids_of(l), "1 2 3") == 0, "%s", uids_of(l));
	folder_listing_release(&l);
}

static void test_overlapping_fetches(void)
{
	struct fake fk;
	struct folder_index *idx;
	struct folder_listing *l;

	fake_init(&fk, 10, 2);
	idx = folder_index_new(&fk.be, NULL, namer);
	fk.idx = idx;
	fk.during = newer_fetch_meanwhile;
	l = refresh(idx);
	CHECK(strcmp(uids_of(l), "1 2 3") == 0, "older answer installed: %s",
		uids_of(l));
	folder_listing_release(&l);
	l = folder_index_get(idx, "INBOX");
	CHECK(strcmp(uids_of(l), "1 2 3") == 0, "%s", uids_of(l));
	folder_listing_release(&l);
	folder_index_free(&idx);
}

/* Background refreshes: the changed callback counts them. */
static pthread_mutex_t bg_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t bg_cond = PTHREAD_COND_INITIALIZER;
static unsigned bg_done;

static void bg_changed(void *ctx, const char *raw)
{
	(void)ctx;
	CHECK(strcmp(raw, "INBOX") == 0);
	pthread_mutex_lock(&bg_lock);
	bg_done++;
	pthread_cond_broadcast(&bg_cond);
	pthread_mutex_unlock(&bg_lock);
}

static void wait_bg(unsigned n)
{
	pthread_mutex_lock(&bg_lock);
	while (bg_done < n)
		pthread_cond_wait(&bg_cond, &bg_lock);
	pthread_mutex_unlock(&bg_lock);
}

static void move_in_meanwhile(struct fake *fk)
{
	fake_add(fk);
	folder_index_moved_in(fk->idx, "INBOX");
}

static void test_scheduling(void)
{
	char dir[] = "/tmp/mailfs-test-folder-index-XXXXXX";
	struct meta_cache *mc = NULL;
	struct folder_index *idx;
	struct folder_listing *l;
	struct work_queue *bg;
	const char *error;
	struct fake fk;

	if (!mkdtemp(dir) || meta_cache_open(dir, &mc, &error) < 0) {
		CHECK(0, "cache directory");
		return;
	}
	fake_init(&fk, 10, 2);
	bg = work_queue_new(1, 8);
	CHECK(bg && work_queue_start(bg) == 0);
	idx = folder_index_new(&fk.be, mc, namer);
	folder_index_schedule(idx, 3600, bg, bg_changed, NULL);
	fk.idx = idx;

	/* Never listed: nothing to serve at once; serve fetches. */
	CHECK(folder_index_current(idx, "INBOX", true) == NULL);
	CHECK(folder_index_serve(idx, "INBOX", true, &l, &error) ==
		BACKEND_OK);
	CHECK(strcmp(uids_of(l), "1 2") == 0 && fk.lists == 1);
	folder_listing_release(&l);
	/* Fresh: served as it is, nothing queued. */
	l = folder_index_current(idx, "INBOX", true);
	CHECK(strcmp(uids_of(l), "1 2") == 0);
	folder_listing_release(&l);
	CHECK(fk.lists + fk.resyncs == 1);

	/* A message moved in: the next serve fetches first, and again when
	 * the fetch under way may predate a second move. */
	fake_add(&fk);
	folder_index_moved_in(idx, "INBOX");
	CHECK(folder_index_current(idx, "INBOX", false) == NULL);
	fk.during = move_in_meanwhile;
	CHECK(folder_index_serve(idx, "INBOX", false, &l, &error) ==
		BACKEND_OK);
	folder_listing_release(&l);
	CHECK(fk.resyncs == 1);
	CHECK(folder_index_current(idx, "INBOX", false) == NULL,
		"a fetch that overlapped a move vouches for nothing");
	CHECK(folder_index_serve(idx, "INBOX", false, &l, &error) ==
		BACKEND_OK);
	CHECK(strcmp(uids_of(l), "1 2 3 4") == 0, "%s", uids_of(l));
	CHECK(fk.resyncs == 2);
	folder_listing_release(&l);
	folder_index_free(&idx);

	/* From the metadata cache: served at once, stale, so a listing
	 * (fresh) refreshes it in the background, once. */
	idx = folder_index_new(&fk.be, mc, namer);
	folder_index_schedule(idx, 3600, bg, bg_changed, NULL);
	fk.idx = idx;
	CHECK(folder_index_load(idx, "INBOX", &l) == 0);
	folder_listing_release(&l);
	fake_add(&fk);
	l = folder_index_current(idx, "INBOX", false);
	CHECK(strcmp(uids_of(l), "1 2 3 4") == 0, "%s", uids_of(l));
	folder_listing_release(&l);
	CHECK(fk.resyncs == 2, "a lookup refreshes nothing");
	l = folder_index_current(idx, "INBOX", true);
	CHECK(strcmp(uids_of(l), "1 2 3 4") == 0, "served before refreshed");
	folder_listing_release(&l);
	wait_bg(1);
	CHECK(fk.resyncs == 3);
	l = folder_index_current(idx, "INBOX", true);
	CHECK(strcmp(uids_of(l), "1 2 3 4 5") == 0, "%s", uids_of(l));
	folder_listing_release(&l);
	CHECK(fk.resyncs == 3, "fetched within the period: not again");
	work_queue_free(&bg);
	folder_index_free(&idx);
	meta_cache_close(&mc);
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
	test_vanished_and_new();
	test_uidvalidity_change();
	test_repeated_and_unordered();
	test_changes_during_refresh();
	test_metadata_cache();
	test_overlapping_fetches();
	test_scheduling();
	return check_summary("folder_index");
}
