/* Unit tests for src/read_ahead.c: files read one after another in name
 * order or in key (inode) order queue the next ones; a jump queues
 * nothing; a changed listing is followed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/read_ahead.h"
#include "tests/unit/check.h"

#define N 1000

/* Inode order: the reverse of UID order. */
static uint64_t reverse_key(const char *raw, uint32_t uidvalidity,
	uint32_t uid)
{
	(void)raw, (void)uidvalidity;
	return (uint64_t)(N + 1 - uid);
}

static struct backend_message msgs[N];
static char *names[N];

/* UIDs 1..n; names sort in UID order. */
static struct folder_listing listing(size_t n, uint64_t serial)
{
	for (size_t i = 0; i < n; i++) {
		char buf[32];

		snprintf(buf, sizeof(buf), "m%05zu.eml", i + 1);
		free(names[i]);
		names[i] = strdup(buf);
		msgs[i].uid = (uint32_t)(i + 1);
		msgs[i].size = 100 + i;
	}
	return (struct folder_listing){
		.serial = serial, .state = { .uidvalidity = 5 }, .count = n,
		.msgs = msgs, .names = names,
	};
}

static size_t next(struct read_ahead *ra, const struct folder_listing *l,
	uint32_t uid, uint32_t *first_r)
{
	uint32_t *uids;
	uint64_t *sizes;
	size_t n = read_ahead_next(ra, "INBOX", l, uid, &uids, &sizes);

	*first_r = n ? uids[0] : 0;
	for (size_t i = 0; i < n; i++)
		CHECK(sizes[i] == 100 + uids[i] - 1, "size of UID %u",
			uids[i]);
	free(uids);
	free(sizes);
	return n;
}

int main(void)
{
	struct read_ahead *ra = read_ahead_new(reverse_key);
	struct folder_listing l = listing(N, 1);
	uint32_t first;

	/* Name order: the first read queues nothing, the second the next
	 * READ_AHEAD_FILES, the third nothing more (already queued). */
	CHECK(next(ra, &l, 1, &first) == 0);
	CHECK(next(ra, &l, 2, &first) == READ_AHEAD_FILES && first == 3,
		"first %u", first);
	CHECK(next(ra, &l, 3, &first) == 0);
	/* A jump is no sequence. */
	CHECK(next(ra, &l, 700, &first) == 0);

	/* Inode order (here the reverse): the same from the other end. */
	CHECK(next(ra, &l, N, &first) == 0);
	CHECK(next(ra, &l, N - 1, &first) == READ_AHEAD_FILES &&
		first == N - 2, "first %u", first);

	/* The listing lost messages (new serial): the orders follow it and
	 * nothing is queued past its end. */
	l = listing(10, 2);
	CHECK(next(ra, &l, 1, &first) == 0);
	CHECK(next(ra, &l, 2, &first) == 8 && first == 3, "first %u", first);
	/* A UID the listing does not hold. */
	CHECK(next(ra, &l, 77, &first) == 0);

	read_ahead_free(&ra);
	for (size_t i = 0; i < N; i++)
		free(names[i]);
	return check_summary("read_ahead");
}
