#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "src/log.h"
#include "src/msg_reader.h"

#define BLOCK BLOCK_CACHE_BLOCK_SIZE

struct msg_reader {
	struct backend *be;
	struct block_cache *cache;
	char *account;
};

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
	return r;
}

void msg_reader_free(struct msg_reader **reader)
{
	if (!*reader)
		return;
	free((*reader)->account);
	free(*reader);
	*reader = NULL;
}

static int status_to_errno(enum backend_status st)
{
	switch (st) {
	case BACKEND_OK: return 0;
	case BACKEND_NOT_FOUND: return ENOENT;
	default: return EIO;
	}
}

/* Gets block `index` into buf (BLOCK bytes of room): from the cache, or
 * from the server and then into the cache.  Returns its length or -errno;
 * *eom_r says whether the message ends in this block. */
static ssize_t get_block(struct msg_reader *r, const struct msg_ref *ref,
	uint32_t index, char *buf, bool *eom_r)
{
	struct block_key key = { 0, 0 };
	enum backend_status st;
	const char *error;
	size_t len;

	if (r->cache) {
		key = block_key_make(r->account, ref->folder, ref->uidvalidity,
			ref->uid, index);
		if (block_cache_get(r->cache, &key, buf, BLOCK, &len, eom_r))
			return (ssize_t)len;
	}
	st = r->be->ops->read_range(r->be, ref->folder, ref->uidvalidity,
		ref->uid, (uint64_t)index * BLOCK, BLOCK, buf, &len, &error);
	if (st != BACKEND_OK) {
		log_debug("read of %s UID %u block %u failed: %s", ref->folder,
			ref->uid, index, error);
		return -status_to_errno(st);
	}
	/* Only a short block proves the end: the announced size may be
	 * wrong, so a full block is never taken as the last one. */
	*eom_r = len < BLOCK;
	if (r->cache)
		block_cache_put(r->cache, &key, buf, len, *eom_r);
	return (ssize_t)len;
}

ssize_t msg_reader_read(struct msg_reader *r, const struct msg_ref *ref,
	uint64_t offset, size_t length, char *buf, uint64_t *true_size_r)
{
	char *block = NULL;
	size_t done = 0;

	*true_size_r = 0;
	while (done < length) {
		uint64_t pos = offset + done;
		uint32_t index = (uint32_t)(pos / BLOCK);
		size_t in_block = pos % BLOCK, n;
		bool eom = false;
		ssize_t len;

		if (!block) {
			block = malloc(BLOCK);
			if (!block)
				return -ENOMEM;
		}
		len = get_block(r, ref, index, block, &eom);
		if (len < 0) {
			free(block);
			/* Bytes already copied are valid: return them. */
			return done ? (ssize_t)done : len;
		}
		if ((size_t)len <= in_block) {
			*true_size_r = (uint64_t)index * BLOCK + len;
			break;
		}
		n = (size_t)len - in_block;
		if (n > length - done)
			n = length - done;
		memcpy(buf + done, block + in_block, n);
		done += n;
		if (eom && in_block + n == (size_t)len)
			*true_size_r = (uint64_t)index * BLOCK + len;
		if (eom && done < length)
			break;
	}
	free(block);
	return (ssize_t)done;
}
