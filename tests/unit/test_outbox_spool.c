/* Unit tests for src/outbox_spool.c (and the retry schedule of
 * src/outbox_sender.c).  Each test works in its own directory under a
 * mkdtemp() root that is removed at the end. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "src/outbox_sender.h"
#include "src/outbox_spool.h"
#include "tests/unit/check.h"

#define PATH_LEN 4096

static char root[64];
static int dir_counter;

#define S(x) ((x) != NULL ? (x) : "(null)")

static const char valid_msg[] =
	"From: alice@example.org\n"
	"To: bob@example.com\n"
	"Bcc: carol@example.net\n"
	"Subject: test\n"
	"\n"
	"Hello\n";

/* ------------------------------------------------------------------ */
/* Helpers                                                             */

static void fresh_dir(char *buf, size_t cap, const char *what)
{
	snprintf(buf, cap, "%s/%02d-%s", root, dir_counter++, what);
}

static struct outbox_spool *open_spool(const char *dir)
{
	struct outbox_spool *spool = NULL;
	const char *error = NULL;
	int r = outbox_spool_open(dir, &spool, &error);

	if (r < 0) {
		fprintf(stderr, "outbox_spool_open(%s): %s\n", dir, error);
		failures++;
		return NULL;
	}
	return spool;
}

static char *slurp(const char *dir, const char *sub, const char *name,
	size_t *len_r)
{
	char path[PATH_LEN];
	struct stat st;
	char *buf;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s/%s", dir, sub, name);
	f = fopen(path, "rb");
	if (f == NULL)
		return NULL;
	if (fstat(fileno(f), &st) < 0) {
		fclose(f);
		return NULL;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL)
		abort();
	if (fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
		fclose(f);
		free(buf);
		return NULL;
	}
	buf[st.st_size] = '\0';
	fclose(f);
	if (len_r != NULL)
		*len_r = (size_t)st.st_size;
	return buf;
}

static bool exists(const char *dir, const char *sub, const char *name)
{
	char path[PATH_LEN];

	snprintf(path, sizeof(path), "%s/%s/%s", dir, sub, name);
	return access(path, F_OK) == 0;
}

static int mode_of(const char *dir, const char *sub, const char *name)
{
	char path[PATH_LEN];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s%s%s", dir, sub,
		name[0] != '\0' ? "/" : "", name);
	if (stat(path, &st) < 0)
		return -1;
	return (int)(st.st_mode & 07777);
}

static size_t dir_count(const char *dir, const char *sub)
{
	char path[PATH_LEN];
	struct dirent *d;
	size_t n = 0;
	DIR *dp;

	snprintf(path, sizeof(path), "%s/%s", dir, sub);
	dp = opendir(path);
	if (dp == NULL)
		return (size_t)-1;
	while ((d = readdir(dp)) != NULL)
		if (strcmp(d->d_name, ".") != 0 && strcmp(d->d_name, "..") != 0)
			n++;
	closedir(dp);
	return n;
}

static void write_file(const char *dir, const char *sub, const char *name,
	const char *text)
{
	char path[PATH_LEN];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s/%s", dir, sub, name);
	f = fopen(path, "wb");
	if (f == NULL) {
		perror(path);
		failures++;
		return;
	}
	fputs(text, f);
	fclose(f);
}

static int enqueue(struct outbox_spool *spool, const char *name,
	const char *text, time_t now)
{
	const char *error = NULL;
	int r = outbox_spool_enqueue(spool, name, text, strlen(text), now,
		&error);

	if (r < 0 && r != -EEXIST)
		fprintf(stderr, "enqueue %s: %s\n", name, S(error));
	return r;
}

static char *status_of(struct outbox_spool *spool, const char *name)
{
	static char buf[1024];

	if (outbox_spool_status(spool, name, buf, sizeof(buf)) < 0)
		return NULL;
	return buf;
}

/* ------------------------------------------------------------------ */

static void test_names(void)
{
	static const char *const bad[] = {
		"", ".", "..", ".hidden", "a/b", "tab\there", "x.error",
		"bell\a", "\xff\xfe", "c1\xc2\x85",
	};
	char longname[OUTBOX_NAME_MAX + 2];
	const char *error;
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CHECK(outbox_spool_name_check(bad[i], &error) == -EINVAL,
			"name \"%s\" accepted", bad[i]);
	CHECK(outbox_spool_name_check("report.eml", &error) == 0, "plain");
	CHECK(outbox_spool_name_check("Gr\xc3\xbc\xc3\x9f" "e.eml", &error) == 0,
		"UTF-8");
	CHECK(outbox_spool_name_check("a.error.eml", &error) == 0, "inner .error");
	memset(longname, 'n', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	CHECK(outbox_spool_name_check(longname, &error) == -ENAMETOOLONG,
		"too long");
	longname[OUTBOX_NAME_MAX] = '\0';
	CHECK(outbox_spool_name_check(longname, &error) == 0, "max length");
}

static int notified;

static void count_notify(void *ctx)
{
	(void)ctx;
	notified++;
}

static void test_enqueue(void)
{
	char dir[PATH_LEN];
	struct outbox_spool *spool;
	struct outbox_entry *list = NULL;
	size_t n = 0, len;
	char *data;
	int fd;

	fresh_dir(dir, sizeof(dir), "enqueue");
	umask(0);            /* the spool must not rely on the umask */
	spool = open_spool(dir);
	umask(022);
	if (spool == NULL)
		return;
	CHECK(mode_of(dir, "", "") == 0700, "spool dir mode %o",
		mode_of(dir, "", ""));
	CHECK(mode_of(dir, "queue", "") == 0700, "queue mode");
	CHECK(mode_of(dir, "failed", "") == 0700, "failed mode");

	notified = 0;
	outbox_spool_set_notify(spool, count_notify, NULL);
	CHECK(enqueue(spool, "one.eml", "raw bytes\n", 1000) == 0, "enqueue");
	CHECK(notified == 1, "notify %d", notified);
	data = slurp(dir, "queue", "one.eml", &len);
	CHECK(data != NULL && strcmp(data, "raw bytes\n") == 0, "content");
	free(data);
	CHECK(mode_of(dir, "queue", "one.eml") == 0600, "file mode %o",
		mode_of(dir, "queue", "one.eml"));
	CHECK(dir_count(dir, "tmp") == 0, "tmp empty");

	/* The same name again: refused, original untouched. */
	CHECK(enqueue(spool, "one.eml", "other\n", 1001) == -EEXIST, "EEXIST");
	data = slurp(dir, "queue", "one.eml", NULL);
	CHECK(data != NULL && strcmp(data, "raw bytes\n") == 0, "kept");
	free(data);
	CHECK(notified == 1, "no notify on failure");
	CHECK(enqueue(spool, "../evil", "x", 1) == -EINVAL, "bad name");
	CHECK(dir_count(dir, "tmp") == 0, "tmp empty after failures");

	CHECK(enqueue(spool, "two.eml", "second\n", 999) == 0, "second");
	CHECK(outbox_spool_list(spool, OUTBOX_QUEUE, &list, &n) == 0, "list");
	CHECK(n == 2, "%zu entries", n);
	if (n == 2) {
		/* Queue order is by time. */
		CHECK(strcmp(list[0].name, "two.eml") == 0 &&
			strcmp(list[1].name, "one.eml") == 0, "order");
		CHECK(strcmp(list[1].status, "queued") == 0, "status %s",
			list[1].status);
		CHECK(list[1].size == 10 && list[1].mtime == 1000, "size/mtime");
	}
	outbox_entries_free(list, n);
	CHECK(status_of(spool, "one.eml") != NULL &&
		strcmp(status_of(spool, "one.eml"), "queued") == 0, "xattr");
	CHECK(status_of(spool, "nope") == NULL, "absent status");

	fd = outbox_spool_open_file(spool, OUTBOX_QUEUE, "two.eml");
	CHECK(fd >= 0, "open_file %d", fd);
	if (fd >= 0) {
		char buf[16] = "";

		CHECK(read(fd, buf, sizeof(buf) - 1) == 7 &&
			strcmp(buf, "second\n") == 0, "read back");
		close(fd);
	}
	CHECK(outbox_spool_open_file(spool, OUTBOX_QUEUE, "../lock") < 0,
		"no escape");

	CHECK(outbox_spool_remove(spool, OUTBOX_QUEUE, "two.eml") == 0, "rm");
	CHECK(!exists(dir, "queue", "two.eml"), "gone");
	CHECK(outbox_spool_remove(spool, OUTBOX_QUEUE, "two.eml") == -ENOENT,
		"rm twice");
	outbox_spool_close(&spool);
	CHECK(spool == NULL, "close NULLs");
}

static void test_lock(void)
{
	char dir[PATH_LEN];
	struct outbox_spool *a, *b = NULL;
	const char *error = NULL;

	fresh_dir(dir, sizeof(dir), "lock");
	a = open_spool(dir);
	CHECK(outbox_spool_open(dir, &b, &error) == -EBUSY && b == NULL,
		"second open: %s", S(error));
	outbox_spool_close(&a);
	b = open_spool(dir);
	CHECK(b != NULL, "reopen after close");
	outbox_spool_close(&b);
}

/* A message queued by a process that then dies without closing anything
 * is there for the next one: what close() promises. */
static void test_durability(void)
{
	char dir[PATH_LEN];
	struct outbox_spool *spool;
	struct outbox_state st;
	char *data, *name;
	size_t len;
	int64_t next;
	pid_t pid;
	int status;
	const char *error;
	/* In the future, so that the status says "deferred". */
	int64_t due = (int64_t)time(NULL) + 3600;

	fresh_dir(dir, sizeof(dir), "durable");
	pid = fork();
	if (pid == 0) {
		struct outbox_spool *child = NULL;
		struct outbox_state cs = { .queued = 500, .next_attempt = due,
			.attempts = 2 };

		if (outbox_spool_open(dir, &child, &error) < 0 ||
		    outbox_spool_submit(child, "crash.eml", valid_msg,
			strlen(valid_msg), NULL, 500, &error) < 0 ||
		    outbox_state_set_reply(&cs, "451 try later") < 0 ||
		    outbox_spool_save(child, "crash.eml", &cs, &error) < 0)
			_exit(1);
		_exit(0);   /* no close, no flush of anything */
	}
	CHECK(pid > 0 && waitpid(pid, &status, 0) == pid &&
		WIFEXITED(status) && WEXITSTATUS(status) == 0, "child");

	spool = open_spool(dir);
	if (spool == NULL)
		return;
	CHECK(outbox_spool_claim(spool, due - 1, &name, &next) == 0 &&
		next == due, "not due yet (next %" PRId64 ")", next);
	CHECK(strncmp(S(status_of(spool, "crash.eml")), "deferred until ", 15)
		== 0 && strstr(S(status_of(spool, "crash.eml")),
		": 451 try later") != NULL, "status %s",
		S(status_of(spool, "crash.eml")));
	CHECK(outbox_spool_claim(spool, due, &name, &next) == 1 &&
		strcmp(name, "crash.eml") == 0, "due now");
	CHECK(strcmp(S(status_of(spool, "crash.eml")), "sending") == 0,
		"sending");
	CHECK(outbox_spool_remove(spool, OUTBOX_QUEUE, "crash.eml") == -EBUSY,
		"busy while sending");
	CHECK(outbox_spool_load(spool, "crash.eml", &data, &len, &st,
		&error) == 0, "load: %s", error);
	/* Submitted form: CRLF, Date and Message-ID added, Bcc kept. */
	CHECK(strstr(data, "\r\nDate: ") != NULL &&
		strstr(data, "\r\nMessage-ID: <") != NULL &&
		strstr(data, "Bcc: carol@example.net\r\n") != NULL &&
		strstr(data, "\r\n\r\nHello\r\n") != NULL, "spool form: %s", data);
	CHECK(st.queued == 500 && st.next_attempt == due && st.attempts == 2 &&
		strcmp(S(st.last_reply), "451 try later") == 0, "state back");
	free(data);
	outbox_state_clear(&st);
	outbox_spool_release(spool, "crash.eml");
	free(name);
	outbox_spool_close(&spool);
}

static void test_state_round_trip(void)
{
	struct outbox_state st = { .queued = 1717500000, .next_attempt = 1717503600,
		.attempts = 3, .filed = true }, back;
	struct outbox_rcpt *r;
	const char *error = NULL;
	char *text, *cut;
	size_t len;

	outbox_state_set_reply(&st, "451 4.7.1\r\nGreylisted,\tcome back later");
	r = outbox_state_rcpt(&st, "sent@example.org");
	r->status = OUTBOX_RCPT_SENT;
	r = outbox_state_rcpt(&st, "bad@example.org");
	r->status = OUTBOX_RCPT_FAILED;
	outbox_rcpt_set_reply(r, "550 5.1.1 <bad@example.org>: unknown");
	r = outbox_state_rcpt(&st, "fly@example.org");
	r->status = OUTBOX_RCPT_INFLIGHT;
	r = outbox_state_rcpt(&st, "later@example.org");
	outbox_rcpt_set_reply(r, "452 4.2.2 mailbox full");
	/* The same address in another case is the same recipient. */
	CHECK(outbox_state_rcpt(&st, "SENT@example.org")->status ==
		OUTBOX_RCPT_SENT && st.n_rcpts == 4, "case-insensitive");
	CHECK(strcmp(st.last_reply,
		"451 4.7.1 Greylisted, come back later") == 0,
		"sanitised: %s", st.last_reply);

	CHECK(outbox_state_format(&st, &text, &len) == 0, "format");
	CHECK(outbox_state_parse(text, len, &back, &error) == 0, "parse: %s",
		S(error));
	CHECK(back.queued == st.queued && back.next_attempt == st.next_attempt &&
		back.attempts == 3 && back.filed && back.n_rcpts == 4 &&
		strcmp(back.last_reply, st.last_reply) == 0, "fields");
	if (back.n_rcpts == 4) {
		CHECK(back.rcpts[0].status == OUTBOX_RCPT_SENT &&
			back.rcpts[0].reply == NULL, "sent");
		CHECK(back.rcpts[1].status == OUTBOX_RCPT_FAILED &&
			strcmp(back.rcpts[1].reply,
			"550 5.1.1 <bad@example.org>: unknown") == 0, "failed");
		CHECK(back.rcpts[2].status == OUTBOX_RCPT_INFLIGHT, "inflight");
		CHECK(back.rcpts[3].status == OUTBOX_RCPT_PENDING &&
			strcmp(back.rcpts[3].reply, "452 4.2.2 mailbox full") == 0,
			"pending");
	}
	outbox_state_clear(&back);
	free(text);

	/* The decision to file a Sent copy survives a restart. */
	st.filed = false;
	st.filing = true;
	CHECK(outbox_state_format(&st, &text, &len) == 0, "format filing");
	CHECK(outbox_state_parse(text, len, &back, &error) == 0 &&
		back.filing && !back.filed, "filing: %s", S(error));
	outbox_state_clear(&back);
	st.filed = true;

	/* Truncated anywhere: refused, never half-read. */
	for (size_t cut_at = 0; cut_at < len; cut_at++) {
		if (outbox_state_parse(text, cut_at, &back, &error) == 0) {
			CHECK(0, "accepted a state cut at %zu", cut_at);
			outbox_state_clear(&back);
		}
	}
	CHECK(outbox_state_parse("garbage\nend\n", 12, &back, &error) < 0,
		"magic");
	cut = strdup("mailfs-outbox-state 1\nrcpt sent a@b.c\r\nDATA\nend\n");
	CHECK(outbox_state_parse(cut, strlen(cut), &back, &error) < 0,
		"CR in address");
	free(cut);
	cut = strdup("mailfs-outbox-state 1\nrcpt bogus a@b.c\nend\n");
	CHECK(outbox_state_parse(cut, strlen(cut), &back, &error) < 0,
		"unknown status");
	free(cut);
	cut = strdup("mailfs-outbox-state 1\nqueued -5\nend\n");
	CHECK(outbox_state_parse(cut, strlen(cut), &back, &error) < 0,
		"negative time");
	free(cut);
	/* Unknown keys from a newer version are skipped. */
	cut = strdup("mailfs-outbox-state 1\nqueued 7\nfuture 1 2\nend\n");
	CHECK(outbox_state_parse(cut, strlen(cut), &back, &error) == 0 &&
		back.queued == 7, "forward compatible");
	outbox_state_clear(&back);
	free(cut);

	free(text);
	outbox_state_clear(&st);
}

static void test_rescan(void)
{
	char dir[PATH_LEN];
	struct outbox_spool *spool;
	struct outbox_entry *list = NULL;
	size_t n = 0;

	fresh_dir(dir, sizeof(dir), "rescan");
	spool = open_spool(dir);
	if (spool == NULL)
		return;
	CHECK(enqueue(spool, "kept.eml", "kept\n", 100) == 0, "enqueue");
	outbox_spool_close(&spool);

	/* What a crash can leave: temp files, an orphan state file, a
	 * message queued without state. */
	write_file(dir, "tmp", "t.123.4", "half a message");
	write_file(dir, "tmp", "t.123.5", "");
	write_file(dir, "state", "orphan.eml", "mailfs-outbox-state 1\nend\n");
	write_file(dir, "queue", "nostate.eml", "x\n");
	write_file(dir, "state", "kept.eml", "mailfs-outbox-state 1\n"
		"queued 100\nnext 200\nattempts 1\nfiled 0\nreply 421 bye\nend\n");

	spool = open_spool(dir);
	if (spool == NULL)
		return;
	CHECK(dir_count(dir, "tmp") == 0, "tmp cleaned (%zu left)",
		dir_count(dir, "tmp"));
	CHECK(!exists(dir, "state", "orphan.eml"), "orphan state removed");
	CHECK(exists(dir, "state", "kept.eml"), "live state kept");
	CHECK(outbox_spool_list(spool, OUTBOX_QUEUE, &list, &n) == 0 && n == 2,
		"%zu queued", n);
	outbox_entries_free(list, n);
	CHECK(strcmp(S(status_of(spool, "nostate.eml")), "queued") == 0,
		"no state: queued");
	outbox_spool_close(&spool);
}

/* A state file left behind by an earlier message of the same name goes
 * before the new message is queued; if it cannot, nothing is queued: it
 * would mark the new message's recipients as done. */
static void test_stale_state(void)
{
	char dir[PATH_LEN], path[PATH_LEN + 64];
	struct outbox_spool *spool;

	fresh_dir(dir, sizeof(dir), "stale");
	spool = open_spool(dir);
	if (spool == NULL)
		return;
	write_file(dir, "state", "old.eml", "mailfs-outbox-state 1\n"
		"rcpt sent bob@example.com\nend\n");
	CHECK(enqueue(spool, "old.eml", "To: bob@example.com\n\nx\n", 100)
		== 0, "enqueue over a stale state");
	CHECK(!exists(dir, "state", "old.eml"), "stale state removed");

	/* One that cannot be removed (here: a directory that is not empty). */
	snprintf(path, sizeof(path), "%s/state/stuck.eml", dir);
	CHECK(mkdir(path, 0700) == 0, "mkdir");
	write_file(dir, "state/stuck.eml", "x", "y");
	CHECK(enqueue(spool, "stuck.eml", "To: bob@example.com\n\nx\n", 100)
		< 0, "queued over a stale state it could not remove");
	CHECK(!exists(dir, "queue", "stuck.eml"), "nothing queued");
	CHECK(dir_count(dir, "tmp") == 0, "tmp empty");
	CHECK(status_of(spool, "stuck.eml") == NULL, "not listed");
	outbox_spool_close(&spool);
}

/* A damaged state file: recipients it still records as delivered are not
 * sent to again; nothing it no longer says counts as done. */
static void test_damaged_state(void)
{
	static const char damaged[] =
		"mailfs-outbox-state 1\n"
		"queued 100\n"
		"rcpt sent bob@example.com\n"
		"rcpt s\xff\x01nt carol@example.net\n"
		"attempts x\n"
		"rcpt failed dave@example.org 550 no such user\n"
		"rcpt sent erin@example.com.au";   /* cut: no line end */
	struct outbox_state st, salvaged;
	struct outbox_spool *spool;
	char dir[PATH_LEN], *data = NULL, *name = NULL;
	const char *error = NULL;
	int64_t next;
	size_t len;

	outbox_state_salvage(damaged, sizeof(damaged) - 1, &salvaged);
	CHECK(salvaged.queued == 100 && salvaged.n_rcpts == 2, "salvaged %zu",
		salvaged.n_rcpts);
	outbox_state_clear(&salvaged);

	fresh_dir(dir, sizeof(dir), "damaged");
	spool = open_spool(dir);
	if (spool == NULL)
		return;
	CHECK(enqueue(spool, "d.eml", "To: bob@example.com, "
		"carol@example.net, erin@example.com\n\nx\n", 100) == 0,
		"enqueue");
	outbox_spool_close(&spool);
	write_file(dir, "state", "d.eml", damaged);

	spool = open_spool(dir);
	if (spool == NULL)
		return;
	CHECK(outbox_spool_claim(spool, 200, &name, &next) == 1, "claim");
	CHECK(outbox_spool_load(spool, "d.eml", &data, &len, &st,
		&error) == 0, "load: %s", S(error));
	CHECK(outbox_state_rcpt(&st, "bob@example.com")->status ==
		OUTBOX_RCPT_SENT, "bob is done");
	CHECK(outbox_state_rcpt(&st, "dave@example.org")->status ==
		OUTBOX_RCPT_FAILED, "dave failed");
	CHECK(outbox_state_rcpt(&st, "carol@example.net")->status ==
		OUTBOX_RCPT_PENDING, "carol's line is garbage: pending");
	CHECK(outbox_state_rcpt(&st, "erin@example.com")->status ==
		OUTBOX_RCPT_PENDING, "a cut line names nobody");
	outbox_state_clear(&st);
	free(data);
	free(name);
	outbox_spool_close(&spool);
}

static void test_failed(void)
{
	char dir[PATH_LEN], *text, *name = NULL;
	struct outbox_spool *spool;
	struct outbox_entry *list = NULL;
	const char *error = NULL;
	size_t n = 0, len;
	int64_t next;
	int r;

	fresh_dir(dir, sizeof(dir), "failed");
	spool = open_spool(dir);
	if (spool == NULL)
		return;

	/* Invalid at close: EINVAL, kept in failed/ with the reason. */
	r = outbox_spool_submit(spool, "bad.eml", "Subject: no one\n\nx\n", 19,
		NULL, 10, &error);
	CHECK(r == -EINVAL && strstr(S(error), "no sender") != NULL,
		"r %d: %s", r, S(error));
	text = slurp(dir, "failed", "bad.eml", &len);
	CHECK(text != NULL && strcmp(text, "Subject: no one\n\nx\n") == 0,
		"original bytes kept");
	free(text);
	text = slurp(dir, "failed", "bad.eml.error", NULL);
	CHECK(text != NULL && strstr(text, "no sender") != NULL &&
		text[strlen(text) - 1] == '\n', "reason: %s", S(text));
	free(text);
	CHECK(mode_of(dir, "failed", "bad.eml") == 0600, "mode");

	/* The same name again does not replace the first. */
	r = outbox_spool_submit(spool, "bad.eml", "To: x@y.z\n\n", 11, NULL, 11,
		&error);
	CHECK(r == -EINVAL, "second invalid");
	CHECK(exists(dir, "failed", "bad.eml~2") &&
		exists(dir, "failed", "bad.eml~2.error"), "suffix ~2");

	/* A bad name stores nothing. */
	CHECK(outbox_spool_submit(spool, "x.error", "junk", 4, NULL, 1,
		&error) == -EINVAL, "reserved name");
	CHECK(outbox_spool_submit(spool, "ok.eml", valid_msg,
		strlen(valid_msg), NULL, 20, &error) == 0, "valid: %s", S(error));
	CHECK(outbox_spool_submit(spool, "ok.eml", valid_msg,
		strlen(valid_msg), NULL, 21, &error) == -EEXIST, "dup");

	CHECK(outbox_spool_list(spool, OUTBOX_FAILED, &list, &n) == 0 && n == 4,
		"%zu failed files", n);
	if (n == 4)
		CHECK(strcmp(list[0].name, "bad.eml") == 0 &&
			strcmp(list[1].name, "bad.eml.error") == 0 &&
			strcmp(list[2].name, "bad.eml~2") == 0 &&
			list[0].status == NULL, "sorted");
	outbox_entries_free(list, n);

	/* Sending ended in a permanent failure. */
	CHECK(outbox_spool_claim(spool, 100, &name, &next) == 1, "claim");
	CHECK(outbox_spool_finish(spool, name, "Not delivered to:\n  bob: 550\n",
		&error) == 0, "finish: %s", S(error));
	CHECK(!exists(dir, "queue", "ok.eml") && !exists(dir, "state", "ok.eml"),
		"left the queue");
	text = slurp(dir, "failed", "ok.eml.error", NULL);
	CHECK(text != NULL && strcmp(text, "Not delivered to:\n  bob: 550\n") == 0,
		"error text: %s", S(text));
	free(text);
	free(name);
	CHECK(outbox_spool_claim(spool, 100, &name, &next) == 0 &&
		next == INT64_MAX, "empty queue");

	/* The user deletes: NAME takes NAME.error along. */
	CHECK(outbox_spool_remove(spool, OUTBOX_FAILED, "bad.eml") == 0, "rm");
	CHECK(!exists(dir, "failed", "bad.eml") &&
		!exists(dir, "failed", "bad.eml.error"), "both gone");
	CHECK(outbox_spool_remove(spool, OUTBOX_FAILED, "bad.eml~2.error") == 0 &&
		exists(dir, "failed", "bad.eml~2"), "error file alone");
	CHECK(outbox_spool_remove(spool, OUTBOX_FAILED, "nope") == -ENOENT,
		"absent");
	outbox_spool_close(&spool);
}

static void test_send_cycle(void)
{
	char dir[PATH_LEN], *name = NULL;
	struct outbox_spool *spool;
	struct outbox_state st;
	const char *error;
	char *data;
	size_t len;
	int64_t next;

	fresh_dir(dir, sizeof(dir), "cycle");
	spool = open_spool(dir);
	if (spool == NULL)
		return;
	CHECK(enqueue(spool, "b.eml", valid_msg, 50) == 0, "b");
	CHECK(enqueue(spool, "a.eml", valid_msg, 40) == 0, "a");
	CHECK(outbox_spool_claim(spool, 60, &name, &next) == 1 &&
		strcmp(name, "a.eml") == 0, "oldest first");
	CHECK(outbox_spool_load(spool, name, &data, &len, &st, &error) == 0,
		"load");
	CHECK(st.queued == 40 && st.attempts == 0 && st.n_rcpts == 0,
		"fresh state");
	free(data);
	st.attempts = 1;
	st.next_attempt = 120;
	outbox_state_set_reply(&st, "cannot connect");
	CHECK(outbox_spool_save(spool, name, &st, &error) == 0, "save");
	outbox_spool_release(spool, name);
	outbox_state_clear(&st);
	free(name);
	CHECK(outbox_spool_claim(spool, 60, &name, &next) == 1 &&
		strcmp(name, "b.eml") == 0, "then the next");
	CHECK(outbox_spool_finish(spool, name, NULL, &error) == 0, "delivered");
	CHECK(!exists(dir, "queue", "b.eml"), "removed");
	free(name);
	CHECK(outbox_spool_claim(spool, 60, &name, &next) == 0 && next == 120,
		"a waits until 120");
	outbox_spool_close(&spool);
}

static void test_retry_delay(void)
{
	CHECK(outbox_retry_delay(1, 60, 3600) == 60, "first");
	CHECK(outbox_retry_delay(2, 60, 3600) == 120, "second");
	CHECK(outbox_retry_delay(6, 60, 3600) == 1920, "sixth");
	CHECK(outbox_retry_delay(7, 60, 3600) == 3600, "capped");
	CHECK(outbox_retry_delay(1000, 60, 3600) == 3600, "no overflow");
	CHECK(outbox_retry_delay(40, 4000000000u, 4000000000u) == 4000000000u,
		"huge");
}

static int rm_entry(const char *path, const struct stat *sb, int flag,
	struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

int main(void)
{
	snprintf(root, sizeof(root), "/tmp/test_outbox_spool.XXXXXX");
	if (mkdtemp(root) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	test_names();
	test_enqueue();
	test_lock();
	test_durability();
	test_state_round_trip();
	test_rescan();
	test_stale_state();
	test_damaged_state();
	test_failed();
	test_send_cycle();
	test_retry_delay();
	nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	return check_summary("outbox_spool");
}
