/* Unit tests for listings: backend_messages_normalize (src/backend.c) and
 * the metadata cache's repair of a listing saved with a UID twice
 * (src/meta_cache.c). */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "src/backend.h"
#include "src/meta_cache.h"
#include "tests/unit/check.h"

/* A listing of the given UIDs; each message's header names its position,
 * so a test can tell which of two repeats was kept. */
static struct backend_message *listing(const uint32_t *uids, size_t n)
{
	struct backend_message *m = calloc(n + 1, sizeof(*m));

	for (size_t i = 0; m && i < n; i++) {
		char h[32];

		snprintf(h, sizeof(h), "X-Pos: %zu", i);
		m[i].uid = uids[i];
		m[i].size = 100 + i;
		m[i].flags = strdup("\\Seen");
		m[i].header = strdup(h);
		m[i].header_len = strlen(h);
	}
	return m;
}

static void check_strict(const struct backend_message *m, size_t n,
	const char *what)
{
	for (size_t i = 1; i < n; i++)
		CHECK(m[i - 1].uid < m[i].uid, "%s: UID %u before %u", what,
			m[i - 1].uid, m[i].uid);
}

static void test_normalize(void)
{
	static const uint32_t ordered[] = { 1, 2, 5, 9 };
	static const uint32_t mixed[] = { 9, 2, 5, 2, 1, 9, 9 };
	struct backend_message *m;
	size_t n, repeats;
	uint32_t first;

	m = listing(ordered, 4);
	n = backend_messages_normalize(m, 4, &repeats, &first);
	CHECK(n == 4 && repeats == 0);
	CHECK(strcmp(m[2].header, "X-Pos: 2") == 0, "ordered input kept");
	backend_messages_free(&m, n);

	m = listing(mixed, 7);
	n = backend_messages_normalize(m, 7, &repeats, &first);
	CHECK(n == 4, "%zu left", n);
	CHECK(repeats == 3, "%zu repeats", repeats);
	CHECK(first == 2 || first == 9, "first repeat %u", first);
	check_strict(m, n, "mixed");
	CHECK(m[0].uid == 1 && m[3].uid == 9);
	backend_messages_free(&m, n);   /* ASan: nothing leaked or freed twice */

	n = backend_messages_normalize(NULL, 0, &repeats, NULL);
	CHECK(n == 0 && repeats == 0);
}

static int rm_entry(const char *path, const struct stat *st, int flag,
	struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	return remove(path);
}

static void test_cache_repairs_repeats(void)
{
	static const uint32_t bad[] = { 3, 7, 7, 4 };
	struct backend_folder_state state = {
		.uidvalidity = 42, .uidnext = 8, .highestmodseq = 99,
		.exists = 4,
	}, got;
	struct backend_message *m = listing(bad, 4), *back = NULL;
	char dir[] = "/tmp/mailfs-test-listing-XXXXXX";
	struct meta_cache *mc = NULL;
	const char *error;
	int64_t changed = 0;
	size_t n = 0;

	if (!mkdtemp(dir)) {
		CHECK(0, "mkdtemp");
		return;
	}
	CHECK(meta_cache_open(dir, &mc, &error) == 0);
	/* As an older mailfs saved a server's contradictory answer. */
	CHECK(meta_cache_save_messages(mc, "INBOX", &state, 77, m, 4) == 0);
	CHECK(meta_cache_load_messages(mc, "INBOX", &got, &changed, &back,
		&n) == 0);
	CHECK(n == 3, "%zu messages loaded", n);
	CHECK(changed == 77);
	check_strict(back, n, "loaded");
	CHECK(got.uidvalidity == 42 && got.uidnext == 8);
	CHECK(got.highestmodseq == 0, "the saved modseq is not trusted");
	backend_messages_free(&back, n);

	/* A sound listing comes back as it was saved. */
	backend_messages_free(&m, 4);
	m = listing((const uint32_t[]){ 3, 4, 7 }, 3);
	CHECK(meta_cache_save_messages(mc, "INBOX", &state, 78, m, 3) == 0);
	CHECK(meta_cache_load_messages(mc, "INBOX", &got, &changed, &back,
		&n) == 0);
	CHECK(n == 3 && got.highestmodseq == 99 && changed == 78);
	backend_messages_free(&back, n);
	backend_messages_free(&m, 3);
	meta_cache_close(&mc);
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
	test_normalize();
	test_cache_repairs_repeats();
	return check_summary("listing");
}
