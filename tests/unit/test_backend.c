/* Unit tests for the write half of src/backend.c: a backend that is
 * read-only, or lacks a slot, answers BACKEND_READ_ONLY (EROFS) through
 * the wrappers, and none of its slots is called. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "src/backend.h"
#include "tests/unit/check.h"

static unsigned calls;

static enum backend_status counted_append(struct backend *be,
	const char *raw, const void *data, size_t len, const char *flags,
	int64_t internaldate, uint32_t *new_uid_r, const char **error_r)
{
	(void)be, (void)raw, (void)data, (void)len, (void)flags;
	(void)internaldate, (void)error_r;
	calls++;
	*new_uid_r = 7;
	return BACKEND_OK;
}

static enum backend_status counted_find(struct backend *be, const char *raw,
	const void *data, size_t len, uint32_t uidvalidity, uint32_t min_uid,
	uint32_t *uid_r, const char **error_r)
{
	(void)be, (void)raw, (void)data, (void)len, (void)uidvalidity;
	(void)min_uid, (void)error_r;
	calls++;
	*uid_r = 0;
	return BACKEND_OK;
}

static char *counted_encode(struct backend *be, const char *raw_parent,
	const char *name, const char **error_r)
{
	(void)be, (void)raw_parent, (void)error_r;
	calls++;
	return strdup(name);
}

/* Every write wrapper answers BACKEND_READ_ONLY with a reason. */
static void check_refuses_writes(struct backend *be)
{
	const char *error;
	uint32_t uid = 0;

#define REFUSED(call) do {						\
	error = NULL;							\
	CHECK((call) == BACKEND_READ_ONLY, #call);			\
	CHECK(error && *error, "no reason for " #call);		\
} while (0)
	REFUSED(backend_expunge(be, "INBOX", 1, 2, NULL, &error));
	REFUSED(backend_move(be, "INBOX", 1, 2, "Archive", &uid, &error));
	REFUSED(backend_append(be, "INBOX", "x", 1, "", -1, &uid, &error));
	REFUSED(backend_find_appended(be, "INBOX", "x", 1, 1, 1, &uid,
		&error));
	REFUSED(backend_set_flags(be, "INBOX", 1, 2, "\\Seen", &error));
	REFUSED(backend_create_folder(be, "New", &error));
	REFUSED(backend_delete_folder(be, "New", &error));
	REFUSED(backend_rename_folder(be, "New", "Old", &error));
#undef REFUSED
	CHECK(backend_status_errno(BACKEND_READ_ONLY) == EROFS);
}

int main(void)
{
	static const struct backend_ops no_slots = { 0 };
	static const struct backend_ops slots = {
		.append = counted_append,
		.find_appended = counted_find,
		.encode_name = counted_encode,
	};
	struct backend bare = { .ops = &no_slots };
	struct backend ro = { .ops = &slots, .read_only = true };
	struct backend rw = { .ops = &slots };
	const char *error = NULL;
	uint32_t uid = 0;
	char *raw;

	/* A backend without write slots (the POP3 view has none). */
	check_refuses_writes(&bare);
	CHECK(backend_encode_name(&bare, NULL, "x", &error) == NULL);
	CHECK(error && *error);

	/* Read-only with the slots present: they are not called. */
	check_refuses_writes(&ro);
	CHECK(calls == 0, "%u slot calls on a read-only backend", calls);

	/* Writable: the wrappers call the slots. */
	CHECK(backend_writable(&rw));
	CHECK(backend_append(&rw, "INBOX", "x", 1, "", -1, &uid, &error) ==
		BACKEND_OK && uid == 7);
	CHECK(backend_find_appended(&rw, "INBOX", "x", 1, 1, 1, &uid,
		&error) == BACKEND_OK && uid == 0);
	raw = backend_encode_name(&rw, NULL, "Folder", &error);
	CHECK(raw && strcmp(raw, "Folder") == 0);
	free(raw);
	CHECK(calls == 3);
	return check_summary("backend");
}
