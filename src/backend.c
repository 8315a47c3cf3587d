#include <errno.h>
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

int backend_status_errno(enum backend_status status)
{
	switch (status) {
	case BACKEND_OK: return 0;
	case BACKEND_NOT_FOUND: return ENOENT;
	case BACKEND_READ_ONLY: return EROFS;
	case BACKEND_UNSUPPORTED: return ENOTSUP;
	case BACKEND_EXISTS: return EEXIST;
	case BACKEND_INVALID: return EINVAL;
	case BACKEND_REFUSED: return EPERM;
	case BACKEND_NOT_EMPTY: return ENOTEMPTY;
	case BACKEND_AUTH: return EACCES;
	case BACKEND_TEMP:
	case BACKEND_TLS:
	case BACKEND_CONNECT:
	case BACKEND_PROTOCOL:
		break;
	}
	return EIO;
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

bool backend_writable(const struct backend *be)
{
	return !be->read_only;
}

static enum backend_status read_only(const char **error_r)
{
	*error_r = "the mailbox is read-only";
	return BACKEND_READ_ONLY;
}

enum backend_status backend_expunge(struct backend *be, const char *raw_folder,
	uint32_t uidvalidity, uint32_t uid, const char *trash_folder,
	const char **error_r)
{
	if (be->read_only || !be->ops->expunge)
		return read_only(error_r);
	return be->ops->expunge(be, raw_folder, uidvalidity, uid, trash_folder,
		error_r);
}

enum backend_status backend_move(struct backend *be, const char *raw_from,
	uint32_t uidvalidity, uint32_t uid, const char *raw_to,
	uint32_t *new_uid_r, const char **error_r)
{
	if (be->read_only || !be->ops->move)
		return read_only(error_r);
	return be->ops->move(be, raw_from, uidvalidity, uid, raw_to, new_uid_r,
		error_r);
}

enum backend_status backend_append(struct backend *be, const char *raw_folder,
	const void *data, size_t len, const char *flags, int64_t internaldate,
	uint32_t *new_uid_r, const char **error_r)
{
	if (be->read_only || !be->ops->append)
		return read_only(error_r);
	return be->ops->append(be, raw_folder, data, len, flags, internaldate,
		new_uid_r, error_r);
}

enum backend_status backend_find_appended(struct backend *be,
	const char *raw_folder, const void *data, size_t len,
	uint32_t uidvalidity, uint32_t min_uid, uint32_t *uid_r,
	const char **error_r)
{
	if (be->read_only || !be->ops->find_appended)
		return read_only(error_r);
	return be->ops->find_appended(be, raw_folder, data, len, uidvalidity,
		min_uid, uid_r, error_r);
}

enum backend_status backend_set_flags(struct backend *be,
	const char *raw_folder, uint32_t uidvalidity, uint32_t uid,
	const char *flags, const char **error_r)
{
	if (be->read_only || !be->ops->set_flags)
		return read_only(error_r);
	return be->ops->set_flags(be, raw_folder, uidvalidity, uid, flags,
		error_r);
}

enum backend_status backend_create_folder(struct backend *be,
	const char *raw_name, const char **error_r)
{
	if (be->read_only || !be->ops->create_folder)
		return read_only(error_r);
	return be->ops->create_folder(be, raw_name, error_r);
}

enum backend_status backend_delete_folder(struct backend *be,
	const char *raw_name, const char **error_r)
{
	if (be->read_only || !be->ops->delete_folder)
		return read_only(error_r);
	return be->ops->delete_folder(be, raw_name, error_r);
}

enum backend_status backend_rename_folder(struct backend *be,
	const char *raw_from, const char *raw_to, const char **error_r)
{
	if (be->read_only || !be->ops->rename_folder)
		return read_only(error_r);
	return be->ops->rename_folder(be, raw_from, raw_to, error_r);
}

char *backend_encode_name(struct backend *be, const char *raw_parent,
	const char *name, const char **error_r)
{
	if (!be->ops->encode_name) {
		*error_r = "this source has no folders to name";
		return NULL;
	}
	return be->ops->encode_name(be, raw_parent, name, error_r);
}
