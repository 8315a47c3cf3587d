#include <stdlib.h>
#include <string.h>

#include "src/backend.h"

const char *backend_status_name(enum backend_status status)
{
	static const char *const names[] = {
		[BACKEND_OK] = "ok",
		[BACKEND_NOT_FOUND] = "not found",
		[BACKEND_TEMP] = "temporary failure",
		[BACKEND_AUTH] = "authentication failed",
		[BACKEND_READ_ONLY] = "read-only",
		[BACKEND_UNSUPPORTED] = "not supported by the server",
		[BACKEND_EXISTS] = "already exists",
		[BACKEND_INVALID] = "invalid argument",
		[BACKEND_REFUSED] = "refused by the server",
		[BACKEND_NOT_EMPTY] = "not empty",
		[BACKEND_TLS] = "TLS failure",
		[BACKEND_CONNECT] = "cannot connect",
		[BACKEND_PROTOCOL] = "protocol error",
	};

	if ((unsigned)status < sizeof(names) / sizeof(names[0]) && names[status])
		return names[status];
	return "unknown error";
}

bool backend_raw_name_sendable(const char *raw)
{
	return raw && !strpbrk(raw, "\r\n");
}

static int message_uid_cmp(const void *a, const void *b)
{
	const struct backend_message *x = a, *y = b;

	return (x->uid > y->uid) - (x->uid < y->uid);
}

size_t backend_messages_normalize(struct backend_message *msgs, size_t count,
	size_t *n_repeats_r, uint32_t *first_repeat_r)
{
	size_t k = 0, repeats = 0;
	uint32_t first = 0;
	bool ordered = true;

	for (size_t i = 1; i < count && ordered; i++)
		ordered = msgs[i - 1].uid < msgs[i].uid;
	if (!ordered) {
		/* Stable for equal UIDs would be nicer, but any one of the
		 * repeats is as good as another: the server contradicted
		 * itself. */
		qsort(msgs, count, sizeof(*msgs), message_uid_cmp);
		for (size_t i = 0; i < count; i++) {
			if (k > 0 && msgs[k - 1].uid == msgs[i].uid) {
				if (repeats++ == 0)
					first = msgs[i].uid;
				free(msgs[i].flags);
				free(msgs[i].header);
				continue;
			}
			msgs[k++] = msgs[i];
		}
		count = k;
	}
	if (n_repeats_r)
		*n_repeats_r = repeats;
	if (first_repeat_r)
		*first_repeat_r = first;
	return count;
}

void backend_folders_free(struct backend_folder **folders, size_t count)
{
	struct backend_folder *f = *folders;

	if (!f)
		return;
	for (size_t i = 0; i < count; i++) {
		free(f[i].raw_name);
		for (size_t j = 0; j < f[i].n_parts; j++)
			free(f[i].parts[j]);
		free(f[i].parts);
	}
	free(f);
	*folders = NULL;
}

void backend_messages_free(struct backend_message **msgs, size_t count)
{
	struct backend_message *m = *msgs;

	if (!m)
		return;
	for (size_t i = 0; i < count; i++) {
		free(m[i].flags);
		free(m[i].header);
	}
	free(m);
	*msgs = NULL;
}

void backend_destroy(struct backend **be)
{
	if (!*be)
		return;
	(*be)->ops->destroy(*be);
	*be = NULL;
}
