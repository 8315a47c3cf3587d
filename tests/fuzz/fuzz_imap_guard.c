/* Differential: the IMAP stream guard (proto/imap_guard.c) against
 * libetpan's response parser, which it protects.
 *
 * Input: one byte choosing how libetpan reads (odd: with a message body
 * handler, as mailfs's body reads do), then what a server sends after
 * login.  When the guard lets all of it through (fed whole and byte by
 * byte: the verdict must not depend on how the bytes arrive), libetpan
 * parses it response after response, as after commands tagged 1, 2, 3...,
 * until an answer is not OK.  Any crash, leak or sanitizer report there,
 * or an allocation over libFuzzer's malloc limit (a literal the guard
 * should have refused), is a bug of the guard.
 *
 * A refusal by the guard stops the stream at the read that carried it:
 * libetpan then sees a prefix of the input, which is an input of its own
 * here. */
#include <string.h>

#include <libetpan/libetpan.h>

#include "proto/imap_guard.h"
#include "tests/fuzz/fuzz_common.h"

#define INPUT_MAX (256 * 1024)

static struct imap_guard guard;

/* A stream over the input, failing at its end as proto/net_stream.c does
 * when the server closes (libetpan loops forever on reads that return 0
 * inside a literal). */
struct input {
	const uint8_t *p;
	size_t left;
};

static ssize_t input_read(mailstream_low *low, void *buf, size_t len)
{
	struct input *in = low->data;

	if (in->left == 0)
		return -1;
	if (len > in->left)
		len = in->left;
	memcpy(buf, in->p, len);
	in->p += len;
	in->left -= len;
	return (ssize_t)len;
}

static ssize_t input_write(mailstream_low *low, const void *buf, size_t len)
{
	(void)low;
	(void)buf;
	return (ssize_t)len;
}

static int input_close(mailstream_low *low)
{
	(void)low;
	return 0;
}

static int input_get_fd(mailstream_low *low)
{
	(void)low;
	return -1;
}

static void input_free(mailstream_low *low)
{
	free(low);
}

static void input_cancel(mailstream_low *low)
{
	(void)low;
}

static struct mailstream_cancel *input_get_cancel(mailstream_low *low)
{
	(void)low;
	return NULL;
}

static mailstream_low_driver input_driver = {
	.mailstream_read = input_read,
	.mailstream_write = input_write,
	.mailstream_close = input_close,
	.mailstream_get_fd = input_get_fd,
	.mailstream_free = input_free,
	.mailstream_cancel = input_cancel,
	.mailstream_get_cancel = input_get_cancel,
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

static bool passes(const uint8_t *data, size_t size)
{
	bool whole, bytes = true;

	imap_guard_init(&guard);
	whole = imap_guard_feed(&guard, (const char *)data, size) == NULL;
	imap_guard_init(&guard);
	for (size_t i = 0; i < size && bytes; i++)
		bytes = imap_guard_feed(&guard, (const char *)data + i, 1) ==
			NULL;
	FUZZ_CHECK(whole == bytes, "the guard's verdict depends on how the "
		"bytes arrive (whole: %d)", whole);
	return whole;
}

static bool count_body(int type, struct mailimap_msg_att_body_section *s,
	const char *bytes, size_t len, void *ctx)
{
	(void)type;
	(void)s;
	(void)bytes;
	*(size_t *)ctx += len;
	return true;
}

static void parse_all(const uint8_t *data, size_t size, bool handler)
{
	struct input in = { data, size };
	struct mailimap_response *resp;
	mailstream_low *low;
	mailstream *stream = NULL;
	mailimap *imap;
	size_t body = 0;

	low = mailstream_low_new(&in, &input_driver);
	if (low && !(stream = mailstream_new(low, 8192)))
		mailstream_low_free(low);
	imap = mailimap_new(0, NULL);
	if (!stream || !imap) {
		if (stream)
			mailstream_close(stream);
		if (imap)
			mailimap_free(imap);
		return;
	}
	/* A logged-in session with a folder selected, as after EXAMINE. */
	imap->imap_stream = stream;
	imap->imap_state = MAILIMAP_STATE_SELECTED;
	imap->imap_connection_info = mailimap_connection_info_new();
	imap->imap_selection_info = mailimap_selection_info_new();
	if (handler)
		mailimap_set_msg_body_handler(imap, count_body, &body);
	for (imap->imap_tag = 1; ; imap->imap_tag++) {
		if (mailimap_read_line(imap) == NULL)
			break;
		if (mailimap_parse_response(imap, &resp) != MAILIMAP_NO_ERROR)
			break;
		mailimap_response_free(resp);
	}
	/* mailimap_free() would send LOGOUT on a stream still attached. */
	mailstream_close(imap->imap_stream);
	imap->imap_stream = NULL;
	mailimap_free(imap);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > INPUT_MAX)
		return 0;
	if (!passes(data + 1, size - 1))
		return 0;
	parse_all(data + 1, size - 1, data[0] & 1);
	return 0;
}
