/* Reading parts from the backend; see part_reader.h. */
#include "src/part_reader.h"

#include <stdlib.h>
#include <string.h>

#include "src/block_cache.h"
#include "src/errfmt.h"

/* Bytes asked of the server in one command. */
#define CHUNK (256u * 1024)
/* Enough for a base64 part's first or last line. */
#define EDGE 1024

static enum backend_status read_encoded(const struct part_source *src,
	const struct mime_node *n, uint64_t off, size_t len, void *buf,
	size_t *got_r, const char **error_r)
{
	if (n->has_raw_offset) {
		if (off >= n->encoded_size || len == 0)
			return BACKEND_OK;
		if (len > n->encoded_size - off)
			len = (size_t)(n->encoded_size - off);
		return src->be->ops->read_range(src->be, src->folder,
			src->uidvalidity, src->uid, n->raw_offset + off, len,
			buf, got_r, error_r);
	}
	if (!src->be->ops->read_section) {
		*error_r = "the server cannot read parts";
		return BACKEND_UNSUPPORTED;
	}
	if (len == 0)
		return BACKEND_OK;
	return src->be->ops->read_section(src->be, src->folder,
		src->uidvalidity, src->uid, n->section, off, len, buf, got_r,
		error_r);
}

static enum backend_status fetch_counted(const struct part_source *src,
	const struct mime_node *n, uint64_t off, size_t len, void *buf,
	size_t *got_r, const char **error_r)
{
	enum backend_status st;

	*got_r = 0;
	st = read_encoded(src, n, off, len, buf, got_r, error_r);
	if (st == BACKEND_OK && src->fetched)
		__atomic_add_fetch(src->fetched, (uint64_t)*got_r,
			__ATOMIC_RELAXED);
	return st;
}

static struct block_key part_key(const struct part_source *src,
	const struct mime_node *n, uint32_t index)
{
	return block_key_make_part(src->account ? src->account : "",
		src->folder, src->uidvalidity, src->uid, n->section, index);
}

/* Blocks first..first+count-1, fetched in one command and stored; data
 * (count * PART_BLOCK_SIZE bytes) gets them, *got_r how many bytes. */
static enum backend_status fetch_blocks(const struct part_source *src,
	const struct mime_node *n, uint32_t first, uint32_t count, char *data,
	size_t *got_r, const char **error_r)
{
	uint64_t start = (uint64_t)first * PART_BLOCK_SIZE;
	enum backend_status st = fetch_counted(src, n, start,
		(size_t)count * PART_BLOCK_SIZE, data, got_r, error_r);

	if (st != BACKEND_OK)
		return st;
	for (uint32_t k = 0; k < count; k++) {
		size_t at = (size_t)k * PART_BLOCK_SIZE, blen;
		struct block_key key = part_key(src, n, first + k);

		if (at > *got_r || (at == *got_r && k > 0))
			break;
		blen = *got_r - at < PART_BLOCK_SIZE ? *got_r - at :
			PART_BLOCK_SIZE;
		block_cache_put(src->cache, &key, data + at, blen,
			blen < PART_BLOCK_SIZE);
		if (blen < PART_BLOCK_SIZE)
			break;
	}
	return BACKEND_OK;
}

/* Blocks fetched at once on a miss: at most 1 MiB a command. */
#define RUN_MAX 16

enum backend_status part_read_encoded(const struct part_source *src,
	const struct mime_node *n, uint64_t off, size_t len, void *buf,
	size_t *got_r, const char **error_r)
{
	char *data;
	size_t done = 0;
	enum backend_status st = BACKEND_OK;

	*got_r = 0;
	if (!src->cache || off / PART_BLOCK_SIZE + (len / PART_BLOCK_SIZE) + 2 >
	    UINT32_MAX)
		return fetch_counted(src, n, off, len, buf, got_r, error_r);
	data = malloc((size_t)RUN_MAX * PART_BLOCK_SIZE);
	if (!data) {
		*error_r = "out of memory";
		return BACKEND_TEMP;
	}
	while (done < len) {
		uint64_t pos = off + done;
		uint32_t k = (uint32_t)(pos / PART_BLOCK_SIZE);
		size_t within = (size_t)(pos % PART_BLOCK_SIZE), blen = 0, take;
		struct block_key key = part_key(src, n, k);
		bool eom = false;

		if (!block_cache_get(src->cache, &key, data, PART_BLOCK_SIZE,
				     &blen, &eom)) {
			uint32_t run = 1, want_blocks;
			size_t got;

			if (len - done < PART_BLOCK_SIZE / 8) {
				/* a probe: exactly what it asks, not kept */
				st = fetch_counted(src, n, pos, len - done,
					(char *)buf + done, &got, error_r);
				if (st == BACKEND_OK)
					done += got;
				break;
			}
			want_blocks = (uint32_t)((off + len - 1) /
				PART_BLOCK_SIZE - k + 1);
			while (run < want_blocks && run < RUN_MAX) {
				struct block_key nk = part_key(src, n, k + run);

				if (block_cache_contains(src->cache, &nk))
					break;
				run++;
			}
			st = fetch_blocks(src, n, k, run, data, &got, error_r);
			if (st != BACKEND_OK)
				break;
			/* serve from what came, all blocks of the run */
			if (within >= got)
				break;
			take = got - within < len - done ? got - within :
				len - done;
			memcpy((char *)buf + done, data + within, take);
			done += take;
			if (got < (size_t)run * PART_BLOCK_SIZE)
				break;	/* the part ended */
			continue;
		}
		if (within >= blen)
			break;
		take = blen - within < len - done ? blen - within : len - done;
		memcpy((char *)buf + done, data + within, take);
		done += take;
		if (eom || blen < PART_BLOCK_SIZE)
			break;
	}
	free(data);
	*got_r = done;
	return st;
}

enum backend_status part_read_all(const struct part_source *src,
	const struct mime_node *n, size_t max, char **buf_r, size_t *len_r,
	const char **error_r)
{
	size_t len = 0, cap = 0;
	char *buf = NULL;

	for (;;) {
		size_t got = 0, want = CHUNK;
		enum backend_status st;

		if (len + want > cap) {
			char *nb;

			cap = len + want;
			nb = realloc(buf, cap + 1);
			if (!nb) {
				free(buf);
				*error_r = "out of memory";
				return BACKEND_TEMP;
			}
			buf = nb;
		}
		st = part_read_encoded(src, n, len, want, buf + len, &got,
			error_r);
		if (st != BACKEND_OK) {
			free(buf);
			return st;
		}
		len += got;
		if (got < want)
			break;
		if (len > max) {
			free(buf);
			*error_r = errfmt("part %s is larger than %zu bytes",
				n->section, max);
			return BACKEND_UNSUPPORTED;
		}
	}
	buf[len] = '\0';
	*buf_r = buf;
	*len_r = len;
	return BACKEND_OK;
}

/* The layout of a base64 part, read from its first line. */
static enum backend_status b64_layout(const struct part_source *src,
	const struct mime_node *n, struct mime_b64_layout *l, bool *ok_r,
	const char **error_r)
{
	char head[EDGE];
	size_t got;
	enum backend_status st = part_read_encoded(src, n, 0, sizeof(head),
		head, &got, error_r);

	*ok_r = st == BACKEND_OK && mime_b64_layout_guess(head, got, l) &&
		mime_b64_chunk_fits(l, 0, head, got);
	return st;
}

enum backend_status part_decoded_size(const struct part_source *src,
	const struct mime_node *n, uint64_t *size_r, bool *exact_r,
	const char **error_r)
{
	struct mime_b64_layout l;
	char tail[EDGE];
	uint64_t size = n->encoded_size, toff;
	size_t got, end;
	unsigned pads = 0;
	bool ok;
	enum backend_status st;

	*exact_r = n->kind == MIME_NODE_RAW || n->transfer == MIME_TE_IDENTITY;
	*size_r = *exact_r ? size :
		mime_decoded_size_estimate(n->transfer, size);
	if (*exact_r || n->transfer != MIME_TE_BASE64 || size == 0)
		return BACKEND_OK;
	st = b64_layout(src, n, &l, &ok, error_r);
	if (st != BACKEND_OK || !ok)
		return st;
	toff = size > sizeof(tail) ? size - sizeof(tail) : 0;
	st = part_read_encoded(src, n, toff, sizeof(tail), tail, &got,
		error_r);
	if (st != BACKEND_OK)
		return st;
	if (toff + got != size || !mime_b64_chunk_fits(&l, toff, tail, got))
		return BACKEND_OK;	/* irregular: the estimate stands */
	end = got;
	while (end > 0 && (tail[end - 1] == '\r' || tail[end - 1] == '\n' ||
			   tail[end - 1] == ' ' || tail[end - 1] == '\t'))
		end--;
	while (end > 0 && tail[end - 1] == '=' && pads < 2) {
		end--;
		pads++;
	}
	if (end == 0)
		return BACKEND_OK;
	/* end - 1 is the last data character; count the characters
	 * before it line by line */
	uint64_t p = toff + end - 1, period = (uint64_t)l.line_chars + l.eol_len;
	uint64_t chars = p / period * l.line_chars + p % period + 1;

	if (p % period >= l.line_chars || (chars + pads) % 4 != 0)
		return BACKEND_OK;
	*size_r = chars / 4 * 3 + (chars % 4 ? chars % 4 - 1 : 0);
	*exact_r = true;
	return BACKEND_OK;
}

void part_cursor_free(struct part_cursor *cur)
{
	free(cur->buf);
	cur->buf = NULL;
	cur->buf_len = 0;
	cur->valid = false;
}

/* Copies what the cursor's buffer holds of [off, off + len) to buf at
 * *done (reads go forward, so only the part from *done on). */
static void serve(const struct part_cursor *cur, uint64_t off, size_t len,
	char *buf, size_t *done)
{
	uint64_t start = cur->dec_pos - cur->buf_len, at = off + *done;
	uint64_t end = off + len < cur->dec_pos ? off + len : cur->dec_pos;

	if (at < start || at >= end)
		return;
	memcpy(buf + *done, cur->buf + (at - start), (size_t)(end - at));
	*done += (size_t)(end - at);
}

/* Decodes forward from the cursor (from the start when the cursor is
 * past off) until off + len is covered or the part ends. */
static enum backend_status read_forward(const struct part_source *src,
	const struct mime_node *n, struct part_cursor *cur, uint64_t off,
	size_t len, char *buf, size_t *got_r, const char **error_r)
{
	enum backend_status st = BACKEND_OK;
	size_t done = 0;
	char *enc = NULL;

	if (!cur->valid || off < cur->dec_pos - cur->buf_len) {
		int ls = cur->layout_state;
		struct mime_b64_layout l = cur->layout;

		part_cursor_free(cur);
		memset(cur, 0, sizeof(*cur));
		cur->layout_state = ls;
		cur->layout = l;
		cur->dec.te = n->kind == MIME_NODE_RAW ? MIME_TE_IDENTITY :
			n->transfer;
		cur->buf = malloc(CHUNK + 8);
		if (!cur->buf) {
			*error_r = "out of memory";
			return BACKEND_TEMP;
		}
		cur->valid = true;
	}
	serve(cur, off, len, buf, &done);
	while (done < len && !cur->ended) {
		size_t got = 0;

		if (!enc && !(enc = malloc(CHUNK))) {
			*error_r = "out of memory";
			st = BACKEND_TEMP;
			break;
		}
		st = part_read_encoded(src, n, cur->enc_pos, CHUNK, enc, &got,
			error_r);
		if (st != BACKEND_OK) {
			cur->valid = false;	/* the decoder state is lost */
			break;
		}
		cur->buf_len = mime_decoder_feed(&cur->dec, enc, got, cur->buf);
		if (got < CHUNK) {
			cur->buf_len += mime_decoder_finish(&cur->dec,
				cur->buf + cur->buf_len);
			cur->ended = true;
		}
		cur->enc_pos += got;
		cur->dec_pos += cur->buf_len;
		serve(cur, off, len, buf, &done);
	}
	free(enc);
	*got_r = done;
	return st;
}

enum backend_status part_read_decoded(const struct part_source *src,
	const struct mime_node *n, struct part_cursor *cur, uint64_t off,
	size_t len, void *buf, size_t *got_r, const char **error_r)
{
	struct part_cursor local = { 0 };
	enum backend_status st;
	bool ok;

	*got_r = 0;
	if (n->kind == MIME_NODE_RAW || n->transfer == MIME_TE_IDENTITY)
		return part_read_encoded(src, n, off, len, buf, got_r, error_r);
	if (!cur) {
		st = part_read_decoded(src, n, &local, off, len, buf, got_r,
			error_r);
		part_cursor_free(&local);
		return st;
	}
	if (n->transfer == MIME_TE_BASE64 && cur->layout_state == 0) {
		st = b64_layout(src, n, &cur->layout, &ok, error_r);
		if (st != BACKEND_OK)
			return st;
		cur->layout_state = ok ? 1 : -1;
	}
	if (n->transfer == MIME_TE_BASE64 && cur->layout_state == 1) {
		uint64_t eo, el, skip;
		size_t got = 0;
		char *enc;
		bool fits;

		mime_b64_encoded_range(&cur->layout, off, len, &eo, &el, &skip);
		enc = malloc(el + 1);
		if (!enc) {
			*error_r = "out of memory";
			return BACKEND_TEMP;
		}
		st = part_read_encoded(src, n, eo, (size_t)el, enc, &got,
			error_r);
		fits = st == BACKEND_OK && mime_b64_range_decode(&cur->layout, eo,
			enc, got, got < el || eo + got >= n->encoded_size, skip,
			len, buf, got_r);
		free(enc);
		if (st != BACKEND_OK || fits)
			return st;
		/* the lines are irregular after all: decode forward */
		*got_r = 0;
		cur->layout_state = -1;
	}
	return read_forward(src, n, cur, off, len, buf, got_r, error_r);
}
