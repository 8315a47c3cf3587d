/* The POP3 client (proto/pop3_session.c, and libetpan's greeting and
 * login code under it) against a server that says anything.
 *
 * Input: one byte choosing what the client does after logging in (the
 * byte modulo 6: '0'-'5' in the seeds), then the bytes the server sends
 * before it closes its side (at once, or in pieces at FUZZ_SERVER_PAUSE
 * markers: see fuzz_server.h):
 *   0 nothing (greeting, CAPA, USER, PASS, CAPA, QUIT)
 *   1 scan (LIST, UIDL)          2 headers of messages 1-3
 *   3 RETR 1                     4 scan, headers of what it listed, RETR
 *   5 RETR 1 with a sink that gives up after 100 bytes
 *
 * Properties: no crash, leak or undefined behaviour; the scan is sorted
 * by message number without duplicates and every unique-id is valid or
 * empty; headers are NUL-terminated, within max_len, NULL exactly when
 * refused; a sink that aborts is never called again. */
#include <string.h>

#include "proto/pop3_session.h"
#include "tests/fuzz/fuzz_common.h"
#include "tests/fuzz/fuzz_server.h"

#define SCENARIOS 6
#define HEADER_MAX 4096



static struct mail_endpoint ep = {
	.host = "127.0.0.1",
	.tls = MAIL_TLS_NONE,
	.user = "user",
	.password = "secret",
	.timeout_s = 5,
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fuzz_server_start();
	ep.port = fuzz_server_port();
	fuzz_trace_init();
	return 0;
}

struct sink {
	size_t bytes, limit;
	unsigned sum;
	bool aborted;
};

static int sink(void *ctx, const char *data, size_t len)
{
	struct sink *k = ctx;

	FUZZ_CHECK(!k->aborted, "sink called after it aborted%s", "");
	FUZZ_CHECK(len > 0 && data != NULL, "empty chunk%s", "");
	/* Touch every byte: ASan checks they are real. */
	for (size_t i = 0; i < len; i++)
		k->sum += (unsigned char)data[i];
	k->bytes += len;
	if (k->limit && k->bytes > k->limit) {
		k->aborted = true;
		return -1;
	}
	return 0;
}

static size_t scan(struct pop3_session *s, unsigned *nums, size_t max)
{
	struct pop3_scan_entry *e = NULL;
	const char *error;
	size_t n = 0, k = 0;
	bool have_uidl;

	if (fuzz_trace("scan", pop3_session_scan(s, &e, &n, &have_uidl, &error),
		error) != BACKEND_OK) {
		FUZZ_CHECK(e == NULL && n == 0, "failed scan left entries%s", "");
		return 0;
	}
	FUZZ_CHECK(e != NULL || n == 0, "no entries%s", "");
	for (size_t i = 0; i < n; i++) {
		size_t len = strlen(e[i].uidl);

		FUZZ_CHECK(e[i].num > 0, "message number 0%s", "");
		if (i > 0)
			FUZZ_CHECK(e[i - 1].num < e[i].num,
				"numbers %u, %u out of order", e[i - 1].num,
				e[i].num);
		FUZZ_CHECK(len == 0 || pop3_uidl_valid(e[i].uidl, len),
			"unique-id \"%s\"", e[i].uidl);
		if (!have_uidl)
			FUZZ_CHECK(len == 0, "unique-id without UIDL%s", "");
		if (k < max)
			nums[k++] = e[i].num;
	}
	free(e);
	return k;
}

static void headers(struct pop3_session *s, const unsigned *nums, size_t n)
{
	struct pop3_header out[8];
	const char *error;

	if (fuzz_trace("headers",
		pop3_session_headers(s, nums, n, HEADER_MAX, out,
		&error), error) != BACKEND_OK) {
		for (size_t i = 0; i < n; i++)
			FUZZ_CHECK(out[i].data == NULL, "failed headers left"
				" data%s", "");
		return;
	}
	for (size_t i = 0; i < n; i++) {
		if (out[i].refused) {
			FUZZ_CHECK(out[i].data == NULL, "refused with data%s", "");
			continue;
		}
		FUZZ_CHECK(out[i].data != NULL && out[i].len <= HEADER_MAX &&
			out[i].data[out[i].len] == '\0', "header %zu", i);
		free(out[i].data);
	}
}

static void retr(struct pop3_session *s, unsigned num, size_t limit)
{
	struct sink k = { .limit = limit };
	const char *error;

	fuzz_trace("retr", pop3_session_retr(s, num, sink, &k, &error), error);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const unsigned first[] = { 1, 2, 3 };
	struct pop3_session *s = NULL;
	unsigned nums[8];
	const char *error;
	size_t n;

	if (size == 0)
		return 0;
	fuzz_server_serve(data + 1, size - 1);
	if (fuzz_trace("open", pop3_session_open(&ep, &s, &error), error) ==
	    BACKEND_OK) {
		switch (data[0] % SCENARIOS) {
		case 1:
			scan(s, nums, 8);
			break;
		case 2:
			headers(s, first, 3);
			break;
		case 3:
			retr(s, 1, 0);
			break;
		case 4:
			n = scan(s, nums, 5);
			if (n > 0) {
				headers(s, nums, n);
				retr(s, nums[0], 0);
			}
			break;
		case 5:
			retr(s, 1, 100);
			break;
		default:
			break;
		}
		pop3_session_close(&s);
	}
	fuzz_server_finish();
	return 0;
}
