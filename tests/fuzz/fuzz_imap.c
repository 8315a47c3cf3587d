/* The IMAP client (proto/imap_session.c, proto/imap_backend.c and the
 * libetpan parser under them) against a server that says anything.
 *
 * Input: one byte choosing what the client does after logging in (the
 * byte minus '0', modulo 13, so '0'-'9', ':', ';' and '<' in the seeds),
 * then the bytes the server sends before it closes its side (at once, or
 * in pieces at FUZZ_SERVER_PAUSE markers: see fuzz_server.h):
 *   0 nothing (greeting, CAPABILITY, LOGIN, LIST "" "" and LOGOUT)
 *   1 list folders                 2 list messages of INBOX
 *   3 read two ranges of INBOX UID 1 (UIDVALIDITY 1)
 *   4 read the heads of UIDs 1-3   5 resync INBOX from a known listing
 *   6 append to Drafts             7 move UID 1 to Trash
 *   8 expunge UID 1                9 set flags of UID 1
 *  10 create, rename, delete       11 list folders, list INBOX, read
 *  12 wait for changes in INBOX: EXAMINE, IDLE, DONE at once (the wait
 *     is interrupted beforehand; the watcher opens its own session, so
 *     here it is the only one)
 *
 * Properties: no crash, leak or undefined behaviour; results the backend
 * returns are well formed (counts match, strings terminated, reads within
 * the buffer). */
#include <string.h>
#include <strings.h>

#include "proto/imap_backend.h"
#include "proto/imap_session.h"
#include "src/backend.h"
#include "tests/fuzz/fuzz_common.h"
#include "tests/fuzz/fuzz_server.h"

#define SCENARIOS 13
#define SCENARIO_IDLE 12
#define READ_LEN 64
/* libetpan 1.9.4 allocates what a literal announces before reading it
 * (in a LIST answer, say); proto/imap_guard.c refuses literals over
 * 256 MiB, but inputs announcing more than this are skipped to keep
 * fuzzing within its memory limit. */
#define LITERAL_MAX (1024 * 1024)

/* MAILFS_FUZZ_NO_SKIP set: run inputs the target would skip (to see
 * whether the known libetpan problems below still reproduce). */
static bool no_skip;


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
	no_skip = getenv("MAILFS_FUZZ_NO_SKIP") != NULL;
	return 0;
}

static void check_folders(struct backend *be)
{
	struct backend_folder *f = NULL;
	const char *error;
	size_t n = 0;

	if (fuzz_trace("list_folders",
		be->ops->list_folders(be, &f, &n, &error),
		error) != BACKEND_OK)
		return;
	for (size_t i = 0; i < n; i++) {
		FUZZ_CHECK(f[i].raw_name != NULL && f[i].n_parts > 0,
			"folder %zu", i);
		for (size_t k = 0; k < f[i].n_parts; k++)
			FUZZ_CHECK(f[i].parts[k] != NULL, "part %zu", k);
		(void)strlen(f[i].raw_name);
	}
	backend_folders_free(&f, n);
}

static void check_messages(const struct backend_message *m, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		FUZZ_CHECK(m[i].uid != 0, "message %zu has UID 0", i);
		FUZZ_CHECK(m[i].flags != NULL && m[i].header != NULL,
			"message %zu", i);
		(void)strlen(m[i].flags);
		FUZZ_CHECK(m[i].header[m[i].header_len] == '\0',
			"header of message %zu", i);
		if (i > 0)
			FUZZ_CHECK(m[i - 1].uid < m[i].uid, "UID order at %zu",
				i);
	}
}

static uint32_t list_inbox(struct backend *be, uint32_t *uidvalidity_r)
{
	struct backend_folder_state state;
	struct backend_message *m = NULL;
	const char *error;
	size_t n = 0;
	uint32_t uid = 1;

	*uidvalidity_r = 1;
	if (fuzz_trace("list_messages",
		be->ops->list_messages(be, "INBOX", &state,
		&m, &n, &error), error) != BACKEND_OK)
		return uid;
	check_messages(m, n);
	if (n > 0)
		uid = m[0].uid;
	*uidvalidity_r = state.uidvalidity;
	backend_messages_free(&m, n);
	return uid;
}

static void read_range(struct backend *be, uint32_t uidvalidity,
	uint32_t uid, uint64_t offset)
{
	/* Canaries around the buffer catch a read past length. */
	unsigned char buf[READ_LEN + 16];
	const char *error;
	size_t got = 0;

	memset(buf, 0xa5, sizeof(buf));
	if (fuzz_trace("read_range",
		be->ops->read_range(be, "INBOX", uidvalidity,
		uid, offset, READ_LEN, buf, &got, &error), error) != BACKEND_OK)
		return;
	FUZZ_CHECK(got <= READ_LEN, "read %zu bytes", got);
	for (size_t i = READ_LEN; i < sizeof(buf); i++)
		FUZZ_CHECK(buf[i] == 0xa5, "wrote past the buffer%s", "");
}

static void got_head(void *ctx, uint32_t uid, const void *data, size_t len)
{
	unsigned *count = ctx;

	FUZZ_CHECK(len <= READ_LEN, "head of UID %u: %zu bytes", uid, len);
	if (len > 0)
		FUZZ_CHECK(data != NULL, "head of UID %u", uid);
	/* Touch every byte: ASan checks they are real. */
	for (size_t i = 0; i < len; i++)
		*count += ((const unsigned char *)data)[i] & 1;
}

static void resync(struct backend *be)
{
	static char flags1[] = "\\Seen", flags2[] = "";
	static char hdr1[] = "Subject: a\r\n", hdr2[] = "Subject: b\r\n";
	const struct backend_message known[] = {
		{ .uid = 1, .size = 10, .flags = flags1, .header = hdr1,
		  .header_len = sizeof(hdr1) - 1 },
		{ .uid = 2, .size = 20, .flags = flags2, .header = hdr2,
		  .header_len = sizeof(hdr2) - 1 },
	};
	const struct backend_folder_state known_state = {
		.uidvalidity = 1, .uidnext = 3, .highestmodseq = 5, .exists = 2,
	};
	struct backend_folder_state state;
	struct backend_message *m = NULL;
	const char *error;
	size_t n = 0;

	if (fuzz_trace("resync_messages", be->ops->resync_messages(be, "INBOX",
		&known_state, known, 2, &state, &m, &n, &error), error) !=
	    BACKEND_OK)
		return;
	check_messages(m, n);
	backend_messages_free(&m, n);
}

static void run(struct backend *be, unsigned scenario)
{
	static const char message[] = "From: a@example.org\r\n"
		"Subject: hello\r\n\r\nbody\r\n";
	const uint32_t uids[] = { 1, 2, 3 };
	uint32_t uidvalidity = 1, new_uid = 0, uid;
	unsigned count = 0;
	const char *error;

	switch (scenario) {
	case 1:
		check_folders(be);
		break;
	case 2:
		list_inbox(be, &uidvalidity);
		break;
	case 3:
		read_range(be, 1, 1, 0);
		read_range(be, 1, 1, 10);
		break;
	case 4:
		fuzz_trace("read_heads",
			be->ops->read_heads(be, "INBOX", 1, uids,
			3, READ_LEN, got_head, &count, &error), error);
		break;
	case 5:
		resync(be);
		break;
	case 6:
		fuzz_trace("append", be->ops->append(be, "Drafts", message,
			sizeof(message) - 1, "\\Seen $label", 1700000000,
			&new_uid, &error), error);
		break;
	case 7:
		fuzz_trace("move", be->ops->move(be, "INBOX", 1, 1, "Trash",
			&new_uid, &error), error);
		break;
	case 8:
		fuzz_trace("expunge", be->ops->expunge(be, "INBOX", 1, 1, NULL,
			&error), error);
		break;
	case 9:
		fuzz_trace("set_flags", be->ops->set_flags(be, "INBOX", 1, 1,
			"\\Seen \\Flagged", &error), error);
		break;
	case 10:
		fuzz_trace("create", be->ops->create_folder(be, "New", &error),
			error);
		fuzz_trace("rename", be->ops->rename_folder(be, "New", "Old",
			&error), error);
		fuzz_trace("delete", be->ops->delete_folder(be, "Old", &error),
			error);
		break;
	case 11:
		check_folders(be);
		uid = list_inbox(be, &uidvalidity);
		read_range(be, uidvalidity, uid, 0);
		break;
	default:
		break;
	}
}

/* True if data holds "{N}" or "{N+}" with N > LITERAL_MAX. */
static bool literal_too_big(const uint8_t *data, size_t size)
{
	for (size_t i = 0; i < size; i++) {
		uint64_t n = 0;
		size_t k = i + 1;

		if (data[i] != '{')
			continue;
		while (k < size && data[k] >= '0' && data[k] <= '9') {
			n = n * 10 + (data[k] - '0');
			if (n > LITERAL_MAX)
				return true;
			k++;
		}
	}
	return false;
}

/* The watcher's IDLE: wait_changes opens a session of its own, the
 * first connection of the round, so no other is opened before. */
static void run_idle(void)
{
	struct backend *be = imap_backend_new(&ep, 1, NULL);
	const char *error;

	FUZZ_CHECK(be != NULL, "imap_backend_new failed%s", "");
	/* Woken at once: no wait for the server, no pause after a failure. */
	be->ops->interrupt_wait(be);
	fuzz_trace("wait_changes",
		be->ops->wait_changes(be, "INBOX", 1, &error),
		error);
	backend_destroy(&be);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct imap_session *s = NULL;
	struct backend *be;
	const char *error;
	unsigned scenario;

	if (size == 0)
		return 0;
	if (!no_skip) {
		size_t len;
		uint8_t *seen = fuzz_server_stripped(data + 1, size - 1, &len);
		bool skip = literal_too_big(seen, len);

		free(seen);
		if (skip)
			return 0;
	}
	/* (data[0] - '0') modulo SCENARIOS: '0' is scenario 0. */
	scenario = (data[0] + SCENARIOS - '0' % SCENARIOS) % SCENARIOS;
	fuzz_server_serve(data + 1, size - 1);
	if (scenario == SCENARIO_IDLE) {
		run_idle();
	} else if (fuzz_trace("open",
		imap_session_open(&ep, &s, &error), error) ==
	    BACKEND_OK) {
		be = imap_backend_new(&ep, 1, s);
		FUZZ_CHECK(be != NULL, "imap_backend_new failed%s", "");
		run(be, scenario);
		backend_destroy(&be);
	}
	fuzz_server_finish();
	return 0;
}
