/* Unit tests for folder directory names (fs/folder_dirs.c). */
#include "fs/folder_dirs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/unit/check.h"

/* Folders from raw names split at delim, the components taken as they
 * are (as if decoding were the identity). */
static struct backend_folder *folders_of(const char *const *raw, size_t n,
	char delim)
{
	struct backend_folder *f = calloc(n, sizeof(*f));

	for (size_t i = 0; i < n; i++) {
		const char *p = raw[i];

		f[i].raw_name = strdup(raw[i]);
		f[i].parts = calloc(strlen(raw[i]) + 1, sizeof(char *));
		for (;;) {
			const char *e = delim ? strchr(p, delim) : NULL;

			f[i].parts[f[i].n_parts++] =
				e ? strndup(p, e - p) : strdup(p);
			if (!e)
				break;
			p = e + 1;
		}
	}
	return f;
}

static void folders_free(struct backend_folder *f, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		for (size_t j = 0; j < f[i].n_parts; j++)
			free(f[i].parts[j]);
		free(f[i].parts);
		free(f[i].raw_name);
	}
	free(f);
}

static const struct folder_dir *by_raw(const struct folder_dir *d, size_t n,
	const char *raw)
{
	for (size_t i = 0; i < n; i++)
		if (d[i].raw && strcmp(d[i].raw, raw) == 0)
			return &d[i];
	return NULL;
}

/* Every entry's parent is its path's parent, parents come first, and no
 * two entries share a path. */
static void check_shape(const struct folder_dir *d, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const char *slash = strrchr(d[i].path, '/');

		CHECK(strcmp(slash ? slash + 1 : d[i].path, d[i].name) == 0,
			"%s", d[i].path);
		if (!slash) {
			CHECK(d[i].parent == FOLDER_DIR_TOP && d[i].depth == 0,
				"%s", d[i].path);
			continue;
		}
		CHECK(d[i].parent < i, "%s", d[i].path);
		if (d[i].parent >= i)
			continue;
		const struct folder_dir *p = &d[d[i].parent];

		CHECK(strlen(p->path) == (size_t)(slash - d[i].path) &&
		      strncmp(p->path, d[i].path, slash - d[i].path) == 0,
		      "%s below %s", d[i].path, p->path);
		CHECK(d[i].depth == p->depth + 1, "%s", d[i].path);
	}
	for (size_t i = 1; i < n; i++)
		CHECK(d[i - 1].depth < d[i].depth ||
		      strcmp(d[i - 1].path, d[i].path) < 0,
		      "%s, %s", d[i - 1].path, d[i].path);
}

static void test_hierarchy(void)
{
	const char *raw[] = { "INBOX", "Work/Projects/mailfs", "Work",
		"Archive/2024" };
	struct backend_folder *f = folders_of(raw, 4, '/');
	size_t n = 0;
	struct folder_dir *d = folder_dirs_build(f, 4, '/', &n);

	CHECK(d && n == 6, "n=%zu", n);
	check_shape(d, n);
	CHECK(by_raw(d, n, "Work/Projects/mailfs") &&
	      strcmp(by_raw(d, n, "Work/Projects/mailfs")->path,
		     "Work/Projects/mailfs") == 0);
	/* an implied parent has the raw name of its prefix, and is not real */
	const struct folder_dir *proj = by_raw(d, n, "Work/Projects");

	CHECK(proj && !proj->real && strcmp(proj->path, "Work/Projects") == 0);
	CHECK(by_raw(d, n, "Work") && by_raw(d, n, "Work")->real);
	CHECK(by_raw(d, n, "Archive") && !by_raw(d, n, "Archive")->real);
	folder_dirs_free(d, n);
	folders_free(f, 4);
}

/* Colliding names: the exact one keeps the name, the others get ~2, ~3,
 * ... by raw name, never stacked, whatever the listing's order. */
static void test_collisions(void)
{
	const char *raw[] = { "x\x01", "x_", "x\x03", "x\x02", "x_~3" };
	const char *want[][2] = {
		{ "x_", "x_" }, { "x_~3", "x_~3" }, { "x\x01", "x_~2" },
		{ "x\x02", "x_~4" }, { "x\x03", "x_~5" },
	};
	uint32_t seed = 7;

	for (int round = 0; round < 20; round++) {
		const char *shuffled[5];
		size_t n = 0;

		memcpy(shuffled, raw, sizeof(raw));
		for (size_t i = 4; i > 0; i--) {
			size_t j = check_xorshift(&seed) % (i + 1);
			const char *tmp = shuffled[i];

			shuffled[i] = shuffled[j];
			shuffled[j] = tmp;
		}
		struct backend_folder *f = folders_of(shuffled, 5, '/');
		struct folder_dir *d = folder_dirs_build(f, 5, '/', &n);

		CHECK(d && n == 5, "n=%zu", n);
		check_shape(d, n);
		for (size_t i = 0; d && i < 5; i++) {
			const struct folder_dir *e = by_raw(d, n, want[i][0]);

			CHECK(e && strcmp(e->path, want[i][1]) == 0,
				"round %d: %s", round, e ? e->path : "none");
		}
		folder_dirs_free(d, n);
		folders_free(f, 5);
	}
}

/* A folder "a/b" in a flat namespace and a parent "a" with a child "b"
 * under '/' cannot meet; but a flat "a_b" and a hierarchy's "a/b" made
 * safe do not collide either, while two children that collide below the
 * same parent do. */
static void test_children_collide(void)
{
	const char *raw[] = { "P/c\x01", "P/c\x02", "Q/c\x01" };
	struct backend_folder *f = folders_of(raw, 3, '/');
	size_t n = 0;
	struct folder_dir *d = folder_dirs_build(f, 3, '/', &n);

	CHECK(d && n == 5, "n=%zu", n);
	check_shape(d, n);
	CHECK(strcmp(by_raw(d, n, "P/c\x01")->path, "P/c_") == 0);
	CHECK(strcmp(by_raw(d, n, "P/c\x02")->path, "P/c_~2") == 0);
	CHECK(strcmp(by_raw(d, n, "Q/c\x01")->path, "Q/c_") == 0);
	folder_dirs_free(d, n);
	folders_free(f, 3);
}

/* Many colliding names: each gets its own ~N, in raw-name order. */
static void test_many_collisions(void)
{
	enum { N = 10000 };
	char **raw = calloc(N, sizeof(*raw));
	size_t n = 0;

	/* "x" and three lone continuation bytes: all shown as "x___" */
	for (size_t i = 0; i < N; i++) {
		raw[i] = malloc(5);
		raw[i][0] = 'x';
		raw[i][1] = (char)(0x80 + i / 4096);
		raw[i][2] = (char)(0x80 + i / 64 % 64);
		raw[i][3] = (char)(0x80 + i % 64);
		raw[i][4] = '\0';
	}
	struct backend_folder *f = folders_of((const char *const *)raw, N, 0);
	struct folder_dir *d = folder_dirs_build(f, N, 0, &n);

	CHECK(d && n == N, "n=%zu", n);
	if (d && n == N) {
		check_shape(d, n);
		size_t plain = 0, bad = 0;

		for (size_t i = 0; i < n; i++) {
			unsigned v;
			char tail;

			if (strcmp(d[i].path, "x___") == 0)
				plain++;
			else if (sscanf(d[i].path, "x___~%u%c", &v,
					&tail) != 1 || v < 2 || v > N)
				bad++;
		}
		CHECK(plain == 1 && bad == 0, "plain %zu bad %zu", plain, bad);
	}
	folder_dirs_free(d, n);
	folders_free(f, N);
	for (size_t i = 0; i < N; i++)
		free(raw[i]);
	free(raw);
}

/* A path too long to show: the folder and what lies below are left out. */
static void test_too_deep(void)
{
	char *deep = malloc(300 * 20);
	size_t n = 0;

	deep[0] = '\0';
	for (int i = 0; i < 20; i++) {
		char part[300];

		memset(part, 'a' + i, 250);
		part[250] = '\0';
		if (i)
			strcat(deep, "/");
		strcat(deep, part);
	}
	const char *raw[] = { deep, "INBOX" };
	struct backend_folder *f = folders_of(raw, 2, '/');
	struct folder_dir *d = folder_dirs_build(f, 2, '/', &n);

	CHECK(d != NULL);
	check_shape(d, n);
	for (size_t i = 0; d && i < n; i++)
		CHECK(strlen(d[i].path) <= FOLDER_DIR_PATH_MAX);
	CHECK(d && by_raw(d, n, "INBOX"));
	CHECK(d && !by_raw(d, n, deep));
	folder_dirs_free(d, n);
	folders_free(f, 2);
	free(deep);
}

int main(void)
{
	test_hierarchy();
	test_collisions();
	test_children_collide();
	test_many_collisions();
	test_too_deep();
	return check_summary("folder_dirs");
}
