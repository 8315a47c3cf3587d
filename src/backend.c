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
