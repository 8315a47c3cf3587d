/* The parts tree of a raw message (src/mime_parts.h) and its decoders on
 * arbitrary input.
 *
 * Input: a whole message.
 *
 * Properties: the tree respects its bounds (MIME_PARTS_MAX nodes,
 * MIME_DEPTH_MAX levels); every name is valid UTF-8, 1-255 bytes, without
 * '/' or control characters, never "." or "..", never starting with '.',
 * and distinct within its directory; every part's bytes lie inside the
 * message; rendered text is valid UTF-8; decoding a part in chunks of any
 * size gives the bytes decoding it whole gives; a base64 part whose lines
 * are regular throughout, read by decoded range (mime_b64_encoded_range,
 * mime_b64_range_decode), gives the bytes of the whole decoding; a tree
 * serialized for the cache reads back the same, and deserializing the
 * input itself never fails unsafely. */
#include <string.h>

#include "src/mime_decode.h"
#include "src/mime_parts.h"
#include "src/mime_text.h"
#include "tests/fuzz/fuzz_common.h"

static size_t nodes_seen;

static char *decode(enum mime_transfer te, const char *in, size_t len,
	size_t chunk, size_t *out_len)
{
	struct mime_decoder d = { .te = te };
	char *out = malloc(len + 8);
	size_t n = 0;

	FUZZ_CHECK(out != NULL, "out of memory%s", "");
	for (size_t i = 0; i < len; i += chunk)
		n += mime_decoder_feed(&d, in + i, len - i < chunk ? len - i :
			chunk, out + n);
	n += mime_decoder_finish(&d, out + n);
	FUZZ_CHECK(n <= len + 3, "decoded %zu bytes from %zu", n, len);
	*out_len = n;
	return out;
}

static void check_ranges(const char *enc, size_t len, const char *whole,
	size_t wlen)
{
	struct mime_b64_layout l;

	/* Only a body regular throughout (stray characters inside lines
	 * are skipped by whole decoding, taken by ranges) must agree. */
	if (!mime_b64_layout_guess(enc, len, &l) ||
	    !mime_b64_chunk_fits(&l, 0, enc, len))
		return;
	for (uint64_t off = 0; off < wlen; off += 1 + wlen / 5) {
		uint64_t eo, el, skip;
		size_t n, want = wlen - off < 7 ? wlen - off : 7;
		char o[7];

		mime_b64_encoded_range(&l, off, want, &eo, &el, &skip);
		if (eo >= len)
			return;
		if (eo + el > len)
			el = len - eo;
		if (!mime_b64_range_decode(&l, eo, enc + eo, (size_t)el,
		    eo + el == len, skip, want, o, &n))
			continue;	/* irregular: read from the start */
		FUZZ_CHECK(n <= want && memcmp(o, whole + off, n) == 0 &&
			(n == want || eo + el == len),
			"range %llu+%zu differs", (unsigned long long)off, want);
	}
}

static void check_name(const char *name)
{
	size_t len = strlen(name);

	FUZZ_CHECK(len > 0 && len <= 255, "name of %zu bytes", len);
	FUZZ_CHECK(fuzz_utf8_valid(name, len), "invalid UTF-8 in a name%s", "");
	FUZZ_CHECK(!strchr(name, '/'), "'/' in \"%s\"", name);
	FUZZ_CHECK(!fuzz_has_control(name, len), "control in \"%s\"", name);
	FUZZ_CHECK(name[0] != '.', "\"%s\" starts with '.'", name);
}

static void walk(const struct mime_node *d, const char *msg, size_t len,
	int depth)
{
	FUZZ_CHECK(depth <= MIME_DEPTH_MAX + 1, "depth %d", depth);
	for (size_t i = 0; i < d->n_children; i++) {
		const struct mime_node *c = &d->children[i];

		nodes_seen++;
		check_name(c->name);
		for (size_t j = 0; j < i; j++)
			FUZZ_CHECK(strcmp(d->children[j].name, c->name) != 0,
				"two \"%s\"", c->name);
		if (c->kind == MIME_NODE_DIR) {
			walk(c, msg, len, depth + 1);
			continue;
		}
		FUZZ_CHECK(c->has_raw_offset && c->raw_offset <= len &&
			c->encoded_size <= len - c->raw_offset,
			"part %s outside the message", c->section);
		const char *raw = msg + c->raw_offset;
		size_t rl = (size_t)c->encoded_size, n1, n2;

		if (c->kind == MIME_NODE_FILE || c->kind == MIME_NODE_RAW) {
			char *a = decode(c->transfer, raw, rl, rl + 1, &n1);
			char *b = decode(c->transfer, raw, rl, 3, &n2);

			FUZZ_CHECK(n1 == n2 && memcmp(a, b, n1) == 0,
				"chunked decoding of %s differs", c->section);
			if (c->transfer == MIME_TE_BASE64)
				check_ranges(raw, rl, a, n1);
			free(a);
			free(b);
		} else {
			char *t = mime_node_render(c, raw, rl, &n1);

			FUZZ_CHECK(t != NULL, "render failed%s", "");
			FUZZ_CHECK(fuzz_utf8_valid(t, n1), "%s: invalid UTF-8",
				c->name);
			free(t);
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *msg = (const char *)data;
	struct mime_tree *t = mime_tree_from_message(msg, size);
	size_t n;
	char *h;

	FUZZ_CHECK(t != NULL, "no tree%s", "");
	FUZZ_CHECK(t->n_nodes <= MIME_PARTS_MAX, "%zu nodes", t->n_nodes);
	nodes_seen = 0;
	walk(&t->root, msg, size, 0);
	FUZZ_CHECK(nodes_seen <= t->n_nodes, "%zu nodes, %zu counted",
		nodes_seen, t->n_nodes);
	/* the form kept in the block cache reads back as the same tree */
	char *ser, *ser2;
	size_t sl, sl2;
	struct mime_tree *back;

	FUZZ_CHECK(mime_tree_serialize(t, &ser, &sl), "serialize%s", "");
	back = mime_tree_deserialize(ser, sl);
	FUZZ_CHECK(back != NULL, "a serialized tree does not read back%s", "");
	FUZZ_CHECK(mime_tree_serialize(back, &ser2, &sl2) && sl2 == sl &&
		memcmp(ser, ser2, sl) == 0, "the tree changed on the way%s", "");
	free(ser);
	free(ser2);
	mime_tree_free(&back);
	mime_tree_free(&t);
	/* and arbitrary bytes never crash it */
	back = mime_tree_deserialize(msg, size);
	mime_tree_free(&back);

	h = mime_html_to_text(msg, size, &n);
	FUZZ_CHECK(h && fuzz_utf8_valid(h, n), "HTML text not UTF-8%s", "");
	free(h);
	return 0;
}
