/* The outbox spool.  See outbox_spool.h for the layout and the contract.
 *
 * Crash safety comes from the order of steps, each made durable before
 * the next:
 *  - queueing: tmp file written and fsynced, renamed into queue/ (never
 *    replacing), queue/ fsynced;
 *  - a state change: tmp file, fsync, rename over state/NAME, fsync;
 *  - delivery done: queue/NAME removed (fsync) before state/NAME, so a
 *    crash in between leaves an orphan state file (removed at start-up),
 *    never a message without the record of whom it already reached;
 *  - moving to failed/: the message is renamed first, then NAME.error is
 *    added, then the state removed; a crash leaves at worst a failed
 *    message without its explanation.
 */
#include "src/outbox_spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "src/errfmt.h"
#include "src/log.h"
#include "src/outbox_message.h"
#include "src/owned_dir.h"

#define DIR_MODE 0700
#define FILE_MODE 0600
#define SPOOL_MARKER ".mailfs-spool"
#define TMP_NAME_MAX 64
#define TMP_ATTEMPTS 16
#define FAILED_SUFFIX_MAX 99
#define ERROR_SUFFIX ".error"
#define STATE_MAGIC "mailfs-outbox-state 1"
#define STATE_LINE_MAX (OUTBOX_ADDRESS_MAX + OUTBOX_REPLY_MAX + 64)
/* A state file larger than this is not one of ours. */
#define STATE_FILE_MAX (4 * 1024 * 1024)

struct spool_entry {
	char *name;
	uint64_t size;
	int64_t queued;
	int64_t next_attempt;
	unsigned attempts;
	char *last_reply;
	uint64_t seq;          /* queue order among equal times */
	bool sending;          /* claimed by the sender */
	bool busy;             /* being queued or removed: invisible */
};

struct outbox_spool {
	char *dir;
	char *drafts_dir;
	int lock_fd, tmp_fd, queue_fd, state_fd, failed_fd;
	atomic_uint tmp_seq;

	pthread_mutex_t lock;          /* guards everything below */
	struct spool_entry *entries;
	size_t n, cap;
	uint64_t next_seq;
	void (*notify)(void *ctx);
	void *notify_ctx;

	pthread_mutex_t failed_lock;   /* serialises changes to failed/ */
};

/* ------------------------------------------------------------------ */
/* Names                                                               */

static bool has_suffix(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Valid UTF-8 with no control character. */
static bool printable_utf8(const char *name)
{
	const unsigned char *s = (const unsigned char *)name;

	while (*s != '\0') {
		size_t n, i;

		if (*s < 0x20 || *s == 0x7f)
			return false;
		if (*s < 0x80) {
			s++;
			continue;
		}
		if (*s >= 0xc2 && *s <= 0xdf)
			n = 2;
		else if (*s >= 0xe0 && *s <= 0xef)
			n = 3;
		else if (*s >= 0xf0 && *s <= 0xf4)
			n = 4;
		else
			return false;
		for (i = 1; i < n; i++)
			if ((s[i] & 0xc0) != 0x80)
				return false;
		/* Overlong 3/4-byte forms, surrogates, > U+10FFFF. */
		if ((s[0] == 0xe0 && s[1] < 0xa0) ||
		    (s[0] == 0xed && s[1] >= 0xa0) ||
		    (s[0] == 0xf0 && s[1] < 0x90) ||
		    (s[0] == 0xf4 && s[1] >= 0x90))
			return false;
		/* C1 controls. */
		if (s[0] == 0xc2 && s[1] < 0xa0)
			return false;
		s += n;
	}
	return true;
}

int outbox_spool_name_check(const char *name, const char **error_r)
{
	size_t len = strlen(name);

	if (len == 0) {
		*error_r = "empty file name";
		return -EINVAL;
	}
	if (len > OUTBOX_NAME_MAX) {
		*error_r = errfmt("file name longer than %d bytes",
			OUTBOX_NAME_MAX);
		return -ENAMETOOLONG;
	}
	if (name[0] == '.') {
		*error_r = "names starting with '.' are not queued";
		return -EINVAL;
	}
	if (strchr(name, '/') != NULL) {
		*error_r = "file name contains '/'";
		return -EINVAL;
	}
	if (!printable_utf8(name)) {
		*error_r = "file name has a control character or is not UTF-8";
		return -EINVAL;
	}
	if (has_suffix(name, ERROR_SUFFIX)) {
		*error_r = "names ending in \".error\" are reserved for"
			" failed/";
		return -EINVAL;
	}
	return 0;
}

/* Looser check for names that only need to be safe to open: what the
 * user sees in failed/ includes the .error files. */
static int plain_name_check(const char *name)
{
	if (name[0] == '\0' || name[0] == '.' || strchr(name, '/') != NULL)
		return -ENOENT;
	if (strlen(name) > NAME_MAX)
		return -ENAMETOOLONG;
	return 0;
}

/* ------------------------------------------------------------------ */
/* File helpers                                                        */

static int write_all(int fd, const char *data, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, data, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

static int fsync_dir(int fd)
{
	if (fsync(fd) < 0 && errno != EINVAL)
		return -errno;
	return 0;
}

/* Writes data to a new file in tmp/, fsynced and closed; its name goes
 * to tmp_name. */
static int write_tmp(struct outbox_spool *spool, const char *data,
	size_t len, char tmp_name[TMP_NAME_MAX], const char **error_r)
{
	int fd = -1, res, i;

	for (i = 0; i < TMP_ATTEMPTS; i++) {
		snprintf(tmp_name, TMP_NAME_MAX, "t.%ld.%u", (long)getpid(),
			atomic_fetch_add(&spool->tmp_seq, 1));
		fd = openat(spool->tmp_fd, tmp_name,
			O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, FILE_MODE);
		if (fd >= 0 || errno != EEXIST)
			break;
	}
	if (fd < 0) {
		res = -errno;
		*error_r = errfmt("cannot create a file in %s/tmp: %s",
			spool->dir, strerror(-res));
		return res;
	}
	res = write_all(fd, data, len);
	if (res == 0 && fsync(fd) < 0)
		res = -errno;
	if (close(fd) < 0 && res == 0)
		res = -errno;
	if (res < 0) {
		*error_r = errfmt("cannot write to %s/tmp: %s", spool->dir,
			strerror(-res));
		unlinkat(spool->tmp_fd, tmp_name, 0);
	}
	return res;
}

/* A directory stream of its own over dir_fd's directory: a dup() would
 * share the read position with every other user of dir_fd. */
static DIR *dir_stream(int dir_fd)
{
	int fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *dir;

	if (fd < 0)
		return NULL;
	dir = fdopendir(fd);
	if (dir == NULL)
		close(fd);
	return dir;
}

/* rename that fails with EEXIST instead of replacing. */
static int rename_noreplace(int from_fd, const char *from, int to_fd,
	const char *to)
{
	if (renameat2(from_fd, from, to_fd, to, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno != EINVAL && errno != ENOSYS)
		return -errno;
	/* File systems without RENAME_NOREPLACE: link refuses to replace. */
	if (linkat(from_fd, from, to_fd, to, 0) < 0)
		return -errno;
	unlinkat(from_fd, from, 0);
	return 0;
}

static int read_file_at(int dir_fd, const char *name, size_t max,
	char **data_r, size_t *len_r)
{
	struct stat st;
	char *buf;
	size_t got = 0;
	int fd, res = 0;

	fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		res = -errno;
		goto out_close;
	}
	if (!S_ISREG(st.st_mode)) {
		res = -EINVAL;
		goto out_close;
	}
	if ((uint64_t)st.st_size > max) {
		res = -EFBIG;
		goto out_close;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL) {
		res = -ENOMEM;
		goto out_close;
	}
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			res = n < 0 ? -errno : -EIO;
			free(buf);
			goto out_close;
		}
		got += (size_t)n;
	}
	buf[got] = '\0';
	*data_r = buf;
	*len_r = got;
out_close:
	close(fd);
	return res;
}

/* ------------------------------------------------------------------ */
/* State                                                               */

void outbox_state_clear(struct outbox_state *state)
{
	size_t i;

	for (i = 0; i < state->n_rcpts; i++) {
		free(state->rcpts[i].addr);
		free(state->rcpts[i].reply);
	}
	free(state->rcpts);
	free(state->last_reply);
	memset(state, 0, sizeof(*state));
}

/* A copy of reply fit for one line: control characters become spaces,
 * runs of white space one space, at most OUTBOX_REPLY_MAX bytes without
 * cutting a UTF-8 sequence. */
static char *reply_dup(const char *reply)
{
	size_t len = strlen(reply), i, o = 0;
	char *s;

	if (len > OUTBOX_REPLY_MAX)
		len = OUTBOX_REPLY_MAX;
	s = malloc(len + 1);
	if (s == NULL)
		return NULL;
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)reply[i];

		if (c < 0x20 || c == 0x7f)
			c = ' ';
		if (c == ' ' && (o == 0 || s[o - 1] == ' '))
			continue;
		s[o++] = (char)c;
	}
	if (strlen(reply) > len)
		while (o > 0 && ((unsigned char)s[o - 1] & 0xc0) == 0x80)
			o--;
	if (o > 0 && ((unsigned char)s[o - 1] & 0xc0) == 0xc0)
		o--;
	while (o > 0 && s[o - 1] == ' ')
		o--;
	s[o] = '\0';
	return s;
}

static int replace_reply(char **slot, const char *reply)
{
	char *copy = NULL;

	if (reply != NULL) {
		copy = reply_dup(reply);
		if (copy == NULL)
			return -ENOMEM;
	}
	free(*slot);
	*slot = copy;
	return 0;
}

int outbox_rcpt_set_reply(struct outbox_rcpt *rcpt, const char *reply)
{
	return replace_reply(&rcpt->reply, reply);
}

int outbox_state_set_reply(struct outbox_state *state, const char *reply)
{
	return replace_reply(&state->last_reply, reply);
}

struct outbox_rcpt *outbox_state_rcpt(struct outbox_state *state,
	const char *addr)
{
	struct outbox_rcpt *p, *r;
	size_t i;

	for (i = 0; i < state->n_rcpts; i++)
		if (outbox_address_equal(state->rcpts[i].addr, addr))
			return &state->rcpts[i];
	p = realloc(state->rcpts, (state->n_rcpts + 1) * sizeof(*p));
	if (p == NULL)
		return NULL;
	state->rcpts = p;
	r = &p[state->n_rcpts];
	memset(r, 0, sizeof(*r));
	r->addr = strdup(addr);
	if (r->addr == NULL)
		return NULL;
	r->status = OUTBOX_RCPT_PENDING;
	state->n_rcpts++;
	return r;
}

static const char *const rcpt_status_names[] = {
	[OUTBOX_RCPT_PENDING] = "pending",
	[OUTBOX_RCPT_INFLIGHT] = "inflight",
	[OUTBOX_RCPT_SENT] = "sent",
	[OUTBOX_RCPT_FAILED] = "failed",
};

int outbox_state_format(const struct outbox_state *state, char **text_r,
	size_t *len_r)
{
	char *text = NULL;
	size_t len = 0, i;
	FILE *f = open_memstream(&text, &len);

	if (f == NULL)
		return -ENOMEM;
	fprintf(f, "%s\nqueued %" PRId64 "\nnext %" PRId64 "\nattempts %u\n"
		"filed %d\n", STATE_MAGIC, state->queued, state->next_attempt,
		state->attempts, state->filed ? 1 : 0);
	if (state->filing && !state->filed)
		fputs("filing 1\n", f);
	if (state->last_reply != NULL)
		fprintf(f, "reply %s\n", state->last_reply);
	for (i = 0; i < state->n_rcpts; i++) {
		const struct outbox_rcpt *r = &state->rcpts[i];

		fprintf(f, "rcpt %s %s%s%s\n", rcpt_status_names[r->status],
			r->addr, r->reply != NULL ? " " : "",
			r->reply != NULL ? r->reply : "");
	}
	fputs("end\n", f);
	if (ferror(f)) {
		fclose(f);
		free(text);
		return -ENOMEM;
	}
	if (fclose(f) != 0) {
		free(text);
		return -ENOMEM;
	}
	*text_r = text;
	*len_r = len;
	return 0;
}

static int parse_i64(const char *s, int64_t *v_r)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0')
		return -1;
	*v_r = v;
	return 0;
}

static int parse_rcpt_line(char *rest, struct outbox_state *st,
	const char **error_r)
{
	char *status = rest, *addr, *reply;
	struct outbox_rcpt *r;
	int k, found = -1;

	addr = strchr(status, ' ');
	if (addr == NULL)
		goto out_bad;
	*addr++ = '\0';
	reply = strchr(addr, ' ');
	if (reply != NULL)
		*reply++ = '\0';
	for (k = 0; k < (int)(sizeof(rcpt_status_names) /
			sizeof(rcpt_status_names[0])); k++)
		if (strcmp(status, rcpt_status_names[k]) == 0)
			found = k;
	if (found < 0 || outbox_address_check(addr, error_r) < 0)
		goto out_bad;
	r = outbox_state_rcpt(st, addr);
	if (r == NULL || outbox_rcpt_set_reply(r, reply) < 0) {
		*error_r = "out of memory";
		return -1;
	}
	r->status = (enum outbox_rcpt_status)found;
	return 0;
out_bad:
	*error_r = "bad recipient line";
	return -1;
}

/* Applies one line of a state file (after the magic, not "end"). */
static int state_line(char *line, unsigned lineno, struct outbox_state *st,
	const char **error_r)
{
	char *rest = strchr(line, ' ');
	int64_t v;

	if (rest == NULL)
		return 0;   /* unknown flag words from a newer version */
	*rest++ = '\0';
	if (strcmp(line, "queued") == 0 || strcmp(line, "next") == 0 ||
	    strcmp(line, "attempts") == 0 || strcmp(line, "filed") == 0 ||
	    strcmp(line, "filing") == 0) {
		if (parse_i64(rest, &v) < 0 || v < 0) {
			*error_r = errfmt("bad number on line %u of the state"
				" file", lineno);
			return -1;
		}
		if (line[0] == 'q')
			st->queued = v;
		else if (line[0] == 'n')
			st->next_attempt = v;
		else if (line[0] == 'a')
			st->attempts = v > UINT_MAX ? UINT_MAX : (unsigned)v;
		else if (strcmp(line, "filed") == 0)
			st->filed = v != 0;
		else
			st->filing = v != 0;
	} else if (strcmp(line, "reply") == 0) {
		if (outbox_state_set_reply(st, rest) < 0) {
			*error_r = "out of memory";
			return -1;
		}
	} else if (strcmp(line, "rcpt") == 0) {
		return parse_rcpt_line(rest, st, error_r);
	}
	return 0;
}

/* The next complete line of text at *pos into line (NUL-terminated);
 * 1, 0 at the end (or a last line without its line end), -1 for a line
 * too long or holding a NUL (skipped). */
static int next_line(const char *text, size_t len, size_t *pos,
	char line[STATE_LINE_MAX + 1])
{
	const char *nl;
	size_t n;

	if (*pos >= len)
		return 0;
	nl = memchr(text + *pos, '\n', len - *pos);
	if (nl == NULL)
		return 0;
	n = (size_t)(nl - (text + *pos));
	if (n > STATE_LINE_MAX || memchr(text + *pos, '\0', n) != NULL) {
		*pos += n + 1;
		return -1;
	}
	memcpy(line, text + *pos, n);
	line[n] = '\0';
	*pos += n + 1;
	return 1;
}

int outbox_state_parse(const char *text, size_t len,
	struct outbox_state *state_r, const char **error_r)
{
	struct outbox_state st = { 0 };
	char line[STATE_LINE_MAX + 1];
	size_t pos = 0;
	bool magic = false, ended = false;
	unsigned lineno = 0;

	while (pos < len && !ended) {
		int r = next_line(text, len, &pos, line);

		lineno++;
		if (r == 0) {
			*error_r = "truncated state file";
			goto out_bad;
		}
		if (r < 0) {
			*error_r = errfmt("line %u of the state file is bad",
				lineno);
			goto out_bad;
		}
		if (!magic) {
			if (strcmp(line, STATE_MAGIC) != 0) {
				*error_r = "not a mailfs outbox state file";
				goto out_bad;
			}
			magic = true;
		} else if (strcmp(line, "end") == 0) {
			ended = true;
		} else if (state_line(line, lineno, &st, error_r) < 0) {
			goto out_bad;
		}
	}
	if (!ended) {
		*error_r = "truncated state file";
		goto out_bad;
	}
	*state_r = st;
	return 0;
out_bad:
	outbox_state_clear(&st);
	return -1;
}

void outbox_state_salvage(const char *text, size_t len,
	struct outbox_state *state_r)
{
	struct outbox_state st = { 0 };
	char line[STATE_LINE_MAX + 1];
	const char *ignored;
	size_t pos = 0;
	unsigned lineno = 0;
	int r;

	/* Only whole lines: a cut "rcpt sent bob@example.net.au" must not
	 * pass for another recipient, bob@example.net, being done. */
	while ((r = next_line(text, len, &pos, line)) != 0) {
		lineno++;
		if (r > 0 && strcmp(line, STATE_MAGIC) != 0 &&
		    strcmp(line, "end") != 0)
			state_line(line, lineno, &st, &ignored);
	}
	*state_r = st;
}

/* ------------------------------------------------------------------ */
/* Index (spool->lock held)                                            */

static struct spool_entry *entry_find(struct outbox_spool *spool,
	const char *name)
{
	size_t i;

	for (i = 0; i < spool->n; i++)
		if (strcmp(spool->entries[i].name, name) == 0)
			return &spool->entries[i];
	return NULL;
}

static struct spool_entry *entry_add(struct outbox_spool *spool,
	const char *name)
{
	struct spool_entry *e;

	if (spool->n == spool->cap) {
		size_t cap = spool->cap != 0 ? 2 * spool->cap : 16;
		struct spool_entry *p = realloc(spool->entries,
			cap * sizeof(*p));

		if (p == NULL)
			return NULL;
		spool->entries = p;
		spool->cap = cap;
	}
	e = &spool->entries[spool->n];
	memset(e, 0, sizeof(*e));
	e->name = strdup(name);
	if (e->name == NULL)
		return NULL;
	e->seq = spool->next_seq++;
	spool->n++;
	return e;
}

static void entry_remove(struct outbox_spool *spool, struct spool_entry *e)
{
	free(e->name);
	free(e->last_reply);
	*e = spool->entries[--spool->n];
}

static void entry_set_state(struct spool_entry *e,
	const struct outbox_state *st)
{
	char *reply = NULL;

	if (st->last_reply != NULL)
		reply = strdup(st->last_reply);
	e->queued = st->queued;
	e->next_attempt = st->next_attempt;
	e->attempts = st->attempts;
	/* Out of memory only loses the text of the status string. */
	free(e->last_reply);
	e->last_reply = reply;
}

static bool entry_before(const struct spool_entry *a,
	const struct spool_entry *b)
{
	if (a->queued != b->queued)
		return a->queued < b->queued;
	return a->seq < b->seq;
}

static void format_status(const struct spool_entry *e, time_t now,
	char *buf, size_t size)
{
	char when[64];
	struct tm tm;
	time_t t;

	if (e->sending) {
		snprintf(buf, size, "sending");
		return;
	}
	if (e->next_attempt <= now || e->attempts == 0) {
		snprintf(buf, size, "queued");
		return;
	}
	t = (time_t)e->next_attempt;
	if (localtime_r(&t, &tm) == NULL ||
	    strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S %z", &tm) == 0)
		snprintf(when, sizeof(when), "%" PRId64, e->next_attempt);
	snprintf(buf, size, "deferred until %s: %s", when,
		e->last_reply != NULL ? e->last_reply : "temporary failure");
}

/* ------------------------------------------------------------------ */
/* Open and close                                                      */

static int open_subdir(struct outbox_spool *spool, int dir_fd,
	const char *name, int *fd_r, const char **error_r)
{
	int fd;

	if (mkdirat(dir_fd, name, DIR_MODE) < 0 && errno != EEXIST)
		goto out_err;
	fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC |
		O_NOFOLLOW);
	if (fd < 0)
		goto out_err;
	/* A umask may have taken our own write bit. */
	if (fchmod(fd, DIR_MODE) < 0) {
		close(fd);
		goto out_err;
	}
	*fd_r = fd;
	return 0;
out_err:
	*error_r = errfmt("cannot open %s/%s: %s", spool->dir, name,
		strerror(errno));
	return -errno;
}

/* Whether dir_fd holds only what an earlier mailfs, which marked nothing,
 * put in a spool. */
static bool earlier_spool(int dir_fd)
{
	static const char *const dirs[] = { "tmp", "queue", "state", "failed",
		"drafts", NULL };
	static const char *const files[] = { "lock", NULL };

	return owned_dir_only(dir_fd, dirs, files);
}

static void clean_tmp(struct outbox_spool *spool)
{
	struct dirent *d;
	DIR *dir = dir_stream(spool->tmp_fd);

	if (dir == NULL)
		return;
	while ((d = readdir(dir)) != NULL) {
		if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
			continue;
		if (unlinkat(spool->tmp_fd, d->d_name, 0) == 0)
			log_debug("outbox: removed leftover %s/tmp/%s",
				spool->dir, d->d_name);
	}
	closedir(dir);
}

/* state/NAME into *st (zeroed when there is none).  Never loses a
 * message for its bookkeeping: of a damaged file, what it still says is
 * kept, so recipients it records as done are not sent to again; the
 * others are (a possible duplicate). */
static void read_state(struct outbox_spool *spool, const char *name,
	struct outbox_state *st)
{
	const char *why;
	char *text;
	size_t len;
	int r;

	memset(st, 0, sizeof(*st));
	r = read_file_at(spool->state_fd, name, STATE_FILE_MAX, &text, &len);
	if (r == 0) {
		if (outbox_state_parse(text, len, st, &why) < 0) {
			log_warn("outbox: state of %s damaged (%s); it will be"
				" sent again to every recipient it does not"
				" record as done", name, why);
			outbox_state_salvage(text, len, st);
		}
		free(text);
	} else if (r != -ENOENT) {
		log_warn("outbox: cannot read the state of %s (%s); it will be"
			" sent to every recipient again", name, strerror(-r));
	}
}

/* Loads queue/NAME into the index. */
static int scan_one(struct outbox_spool *spool, const char *name)
{
	struct outbox_state st;
	struct spool_entry *e;
	const char *why;
	struct stat sb;

	if (fstatat(spool->queue_fd, name, &sb, AT_SYMLINK_NOFOLLOW) < 0 ||
	    !S_ISREG(sb.st_mode))
		return 0;
	if (outbox_spool_name_check(name, &why) < 0) {
		log_warn("outbox: ignoring %s/queue/%s: %s", spool->dir, name,
			why);
		return 0;
	}
	read_state(spool, name, &st);
	if (st.queued == 0)
		st.queued = sb.st_mtime;

	e = entry_add(spool, name);
	if (e == NULL) {
		outbox_state_clear(&st);
		return -ENOMEM;
	}
	e->size = (uint64_t)sb.st_size;
	entry_set_state(e, &st);
	outbox_state_clear(&st);
	return 0;
}

static int scan_queue(struct outbox_spool *spool)
{
	struct dirent *d;
	DIR *dir = dir_stream(spool->queue_fd);
	int res = 0;

	if (dir == NULL)
		return -errno;
	while ((d = readdir(dir)) != NULL && res == 0) {
		if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
			continue;
		res = scan_one(spool, d->d_name);
	}
	closedir(dir);
	return res;
}

/* Removes state files whose message is gone (a crash during removal). */
static void scan_states(struct outbox_spool *spool)
{
	struct dirent *d;
	bool removed = false;
	DIR *dir = dir_stream(spool->state_fd);

	if (dir == NULL)
		return;
	while ((d = readdir(dir)) != NULL) {
		if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
			continue;
		if (entry_find(spool, d->d_name) != NULL)
			continue;
		if (unlinkat(spool->state_fd, d->d_name, 0) == 0)
			removed = true;
	}
	closedir(dir);
	if (removed)
		fsync_dir(spool->state_fd);
}

int outbox_spool_open(const char *dir, struct outbox_spool **spool_r,
	const char **error_r)
{
	struct outbox_spool *spool;
	int dir_fd = -1, drafts_fd, res;

	*spool_r = NULL;
	spool = calloc(1, sizeof(*spool));
	if (spool == NULL) {
		*error_r = "out of memory";
		return -ENOMEM;
	}
	spool->lock_fd = spool->tmp_fd = spool->queue_fd = -1;
	spool->state_fd = spool->failed_fd = -1;
	pthread_mutex_init(&spool->lock, NULL);
	pthread_mutex_init(&spool->failed_lock, NULL);
	spool->dir = strdup(dir);
	if (spool->dir == NULL ||
	    asprintf(&spool->drafts_dir, "%s/drafts", dir) < 0) {
		spool->drafts_dir = NULL;
		*error_r = "out of memory";
		res = -ENOMEM;
		goto out_close;
	}

	/* Only a directory of mailfs's own: tmp/ is emptied at every open. */
	dir_fd = owned_dir_open(dir, SPOOL_MARKER, "outbox spool",
		earlier_spool, error_r);
	if (dir_fd < 0) {
		res = dir_fd;
		goto out_close;
	}
	spool->lock_fd = openat(dir_fd, "lock", O_RDWR | O_CREAT | O_CLOEXEC,
		FILE_MODE);
	if (spool->lock_fd < 0) {
		res = -errno;
		*error_r = errfmt("cannot open %s/lock: %s", dir,
			strerror(-res));
		goto out_close;
	}
	if (flock(spool->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		res = errno == EWOULDBLOCK ? -EBUSY : -errno;
		*error_r = errfmt("the outbox spool %s is in use by another"
			" mailfs", dir);
		goto out_close;
	}
	if ((res = open_subdir(spool, dir_fd, "tmp", &spool->tmp_fd,
			error_r)) < 0 ||
	    (res = open_subdir(spool, dir_fd, "queue", &spool->queue_fd,
			error_r)) < 0 ||
	    (res = open_subdir(spool, dir_fd, "state", &spool->state_fd,
			error_r)) < 0 ||
	    (res = open_subdir(spool, dir_fd, "failed", &spool->failed_fd,
			error_r)) < 0 ||
	    (res = open_subdir(spool, dir_fd, "drafts", &drafts_fd,
			error_r)) < 0)
		goto out_close;
	close(drafts_fd);
	fsync_dir(dir_fd);

	clean_tmp(spool);
	res = scan_queue(spool);
	if (res < 0) {
		*error_r = errfmt("cannot read %s/queue: %s", dir,
			strerror(-res));
		goto out_close;
	}
	scan_states(spool);
	if (spool->n > 0)
		log_info("outbox: %zu message%s waiting in %s", spool->n,
			spool->n == 1 ? "" : "s", dir);
	close(dir_fd);
	*spool_r = spool;
	return 0;

out_close:
	if (dir_fd >= 0)
		close(dir_fd);
	outbox_spool_close(&spool);
	return res;
}

void outbox_spool_close(struct outbox_spool **spool_p)
{
	struct outbox_spool *spool = *spool_p;
	size_t i;

	if (spool == NULL)
		return;
	*spool_p = NULL;
	for (i = 0; i < spool->n; i++) {
		free(spool->entries[i].name);
		free(spool->entries[i].last_reply);
	}
	free(spool->entries);
	if (spool->tmp_fd >= 0)
		close(spool->tmp_fd);
	if (spool->queue_fd >= 0)
		close(spool->queue_fd);
	if (spool->state_fd >= 0)
		close(spool->state_fd);
	if (spool->failed_fd >= 0)
		close(spool->failed_fd);
	if (spool->lock_fd >= 0)
		close(spool->lock_fd);    /* drops the flock */
	pthread_mutex_destroy(&spool->lock);
	pthread_mutex_destroy(&spool->failed_lock);
	free(spool->dir);
	free(spool->drafts_dir);
	free(spool);
}

const char *outbox_spool_drafts_dir(const struct outbox_spool *spool)
{
	return spool->drafts_dir;
}

void outbox_spool_set_notify(struct outbox_spool *spool,
	void (*fn)(void *ctx), void *ctx)
{
	pthread_mutex_lock(&spool->lock);
	spool->notify = fn;
	spool->notify_ctx = ctx;
	pthread_mutex_unlock(&spool->lock);
}

/* ------------------------------------------------------------------ */
/* Queueing                                                            */

int outbox_spool_enqueue(struct outbox_spool *spool, const char *name,
	const char *data, size_t len, time_t now, const char **error_r)
{
	char tmp[TMP_NAME_MAX];
	struct spool_entry *e;
	void (*notify)(void *);
	void *notify_ctx;
	int res;

	res = outbox_spool_name_check(name, error_r);
	if (res < 0)
		return res;
	res = write_tmp(spool, data, len, tmp, error_r);
	if (res < 0)
		return res;

	/* Reserve the name so a concurrent queueing of it fails. */
	pthread_mutex_lock(&spool->lock);
	if (entry_find(spool, name) != NULL) {
		pthread_mutex_unlock(&spool->lock);
		*error_r = errfmt("a message named %s is already queued", name);
		res = -EEXIST;
		goto out_tmp;
	}
	e = entry_add(spool, name);
	if (e != NULL) {
		e->busy = true;
		e->size = len;
		e->queued = now;
	}
	pthread_mutex_unlock(&spool->lock);
	if (e == NULL) {
		*error_r = "out of memory";
		res = -ENOMEM;
		goto out_tmp;
	}

	/* A leftover state file would attach old recipients' fates: the
	 * new message would skip whoever got the old one.  Its removal is
	 * made durable before the message is, or nothing is queued. */
	if (unlinkat(spool->state_fd, name, 0) == 0)
		res = fsync_dir(spool->state_fd);
	else
		res = errno == ENOENT ? 0 : -errno;
	if (res < 0) {
		*error_r = errfmt("cannot remove %s/state/%s: %s", spool->dir,
			name, strerror(-res));
		pthread_mutex_lock(&spool->lock);
		entry_remove(spool, entry_find(spool, name));
		pthread_mutex_unlock(&spool->lock);
		goto out_tmp;
	}
	res = rename_noreplace(spool->tmp_fd, tmp, spool->queue_fd, name);
	if (res == 0)
		res = fsync_dir(spool->queue_fd);
	if (res < 0) {
		if (res == -EEXIST)
			*error_r = errfmt("a message named %s is already"
				" queued", name);
		else
			*error_r = errfmt("cannot queue %s in %s: %s", name,
				spool->dir, strerror(-res));
		/* After a failed directory fsync the rename may or may not
		 * survive a crash; close() reports failure either way, and
		 * the file is withdrawn so that the report holds now. */
		if (res != -EEXIST)
			unlinkat(spool->queue_fd, name, 0);
	}

	pthread_mutex_lock(&spool->lock);
	e = entry_find(spool, name);
	if (res < 0)
		entry_remove(spool, e);
	else
		e->busy = false;
	notify = spool->notify;
	notify_ctx = spool->notify_ctx;
	pthread_mutex_unlock(&spool->lock);
	if (res < 0)
		goto out_tmp;
	if (notify != NULL)
		notify(notify_ctx);
	return 0;

out_tmp:
	unlinkat(spool->tmp_fd, tmp, 0);
	return res;
}

int outbox_spool_submit(struct outbox_spool *spool, const char *name,
	const char *data, size_t len, const char *default_from, time_t now,
	const char **error_r)
{
	struct outbox_message msg;
	char reason[OUTBOX_REPLY_MAX + 128];
	const char *why;
	char *out;
	size_t out_len;
	bool queued;
	int res;

	res = outbox_spool_name_check(name, error_r);
	if (res < 0)
		return res;
	pthread_mutex_lock(&spool->lock);
	queued = entry_find(spool, name) != NULL;
	pthread_mutex_unlock(&spool->lock);
	if (queued) {
		*error_r = errfmt("a message named %s is already queued", name);
		return -EEXIST;
	}

	if (outbox_message_parse(data, len, default_from, &msg, &why) < 0) {
		snprintf(reason, sizeof(reason), "%s", why);
		res = outbox_spool_store_failed(spool, name, data, len, reason,
			NULL, &why);
		if (res < 0)
			log_error("outbox: cannot keep the invalid message %s"
				" in failed/: %s", name, why);
		*error_r = errfmt("%s", reason);
		return -EINVAL;
	}
	res = outbox_message_render(data, len, &msg, OUTBOX_RENDER_COMPLETE,
		now, &out, &out_len, error_r);
	outbox_message_clear(&msg);
	if (res < 0)
		return -ENOMEM;
	res = outbox_spool_enqueue(spool, name, out, out_len, now, error_r);
	free(out);
	return res;
}

/* ------------------------------------------------------------------ */
/* failed/                                                             */

/* Picks NAME, NAME~2, ... such that neither it nor its .error exists.
 * spool->failed_lock held. */
static int failed_pick_name(struct outbox_spool *spool, const char *name,
	char *buf, size_t size)
{
	char err[NAME_MAX + 8];
	int i;

	for (i = 1; i <= FAILED_SUFFIX_MAX; i++) {
		if (i == 1)
			snprintf(buf, size, "%s", name);
		else
			snprintf(buf, size, "%s~%d", name, i);
		snprintf(err, sizeof(err), "%s%s", buf, ERROR_SUFFIX);
		if (faccessat(spool->failed_fd, buf, F_OK,
			AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT &&
		    faccessat(spool->failed_fd, err, F_OK,
			AT_SYMLINK_NOFOLLOW) < 0 && errno == ENOENT)
			return 0;
	}
	return -EEXIST;
}

/* Moves the file `from` (in from_fd) to failed/ beside a new .error file
 * holding reason.  The message goes first: see the top of the file. */
static int failed_put(struct outbox_spool *spool, int from_fd,
	const char *from, const char *name, const char *reason,
	char **name_r, const char **error_r)
{
	char tmp[TMP_NAME_MAX], final[NAME_MAX + 1], err[NAME_MAX + 8];
	size_t rlen = strlen(reason);
	char *text;
	int res;

	/* The .error text ends with a newline like any text file. */
	text = malloc(rlen + 2);
	if (text == NULL) {
		*error_r = "out of memory";
		return -ENOMEM;
	}
	memcpy(text, reason, rlen);
	text[rlen] = '\n';
	res = write_tmp(spool, text, rlen + (rlen > 0 &&
		reason[rlen - 1] == '\n' ? 0 : 1), tmp, error_r);
	free(text);
	if (res < 0)
		return res;

	pthread_mutex_lock(&spool->failed_lock);
	res = failed_pick_name(spool, name, final, sizeof(final));
	if (res == 0)
		res = rename_noreplace(from_fd, from, spool->failed_fd, final);
	if (res < 0) {
		pthread_mutex_unlock(&spool->failed_lock);
		*error_r = errfmt("cannot move %s to %s/failed: %s", name,
			spool->dir, strerror(-res));
		unlinkat(spool->tmp_fd, tmp, 0);
		return res;
	}
	snprintf(err, sizeof(err), "%s%s", final, ERROR_SUFFIX);
	res = rename_noreplace(spool->tmp_fd, tmp, spool->failed_fd, err);
	if (res == 0)
		res = fsync_dir(spool->failed_fd);
	pthread_mutex_unlock(&spool->failed_lock);
	if (res < 0) {
		/* The message is there; only the explanation is missing. */
		log_error("outbox: cannot write %s/failed/%s: %s", spool->dir,
			err, strerror(-res));
		unlinkat(spool->tmp_fd, tmp, 0);
	}
	if (name_r != NULL)
		*name_r = strdup(final);
	return 0;
}

int outbox_spool_store_failed(struct outbox_spool *spool, const char *name,
	const char *data, size_t len, const char *reason, char **name_r,
	const char **error_r)
{
	char tmp[TMP_NAME_MAX];
	int res;

	if (name_r != NULL)
		*name_r = NULL;
	res = outbox_spool_name_check(name, error_r);
	if (res < 0)
		return res;
	res = write_tmp(spool, data, len, tmp, error_r);
	if (res < 0)
		return res;
	res = failed_put(spool, spool->tmp_fd, tmp, name, reason, name_r,
		error_r);
	if (res < 0)
		unlinkat(spool->tmp_fd, tmp, 0);
	return res;
}

/* ------------------------------------------------------------------ */
/* The fs side                                                         */

void outbox_entries_free(struct outbox_entry *entries, size_t count)
{
	size_t i;

	for (i = 0; i < count; i++) {
		free(entries[i].name);
		free(entries[i].status);
	}
	free(entries);
}

static int list_queue(struct outbox_spool *spool,
	struct outbox_entry **entries_r, size_t *count_r)
{
	struct outbox_entry *out;
	struct spool_entry **order;
	char status[OUTBOX_REPLY_MAX + 128];
	time_t now = time(NULL);
	size_t i, j, n = 0;
	int res = 0;

	pthread_mutex_lock(&spool->lock);
	order = calloc(spool->n + 1, sizeof(*order));
	out = calloc(spool->n + 1, sizeof(*out));
	if (order == NULL || out == NULL) {
		res = -ENOMEM;
		goto out_unlock;
	}
	for (i = 0; i < spool->n; i++)
		if (!spool->entries[i].busy)
			order[n++] = &spool->entries[i];
	/* Insertion sort: queues are short. */
	for (i = 1; i < n; i++) {
		struct spool_entry *e = order[i];

		for (j = i; j > 0 && entry_before(e, order[j - 1]); j--)
			order[j] = order[j - 1];
		order[j] = e;
	}
	for (i = 0; i < n; i++) {
		format_status(order[i], now, status, sizeof(status));
		out[i].name = strdup(order[i]->name);
		out[i].status = strdup(status);
		out[i].size = order[i]->size;
		out[i].mtime = order[i]->queued;
		if (out[i].name == NULL || out[i].status == NULL) {
			outbox_entries_free(out, i + 1);
			out = NULL;
			res = -ENOMEM;
			goto out_unlock;
		}
	}
	*entries_r = out;
	*count_r = n;
	out = NULL;
out_unlock:
	pthread_mutex_unlock(&spool->lock);
	free(order);
	free(out);
	return res;
}

static int entry_name_cmp(const void *a, const void *b)
{
	return strcmp(((const struct outbox_entry *)a)->name,
		((const struct outbox_entry *)b)->name);
}

static int list_failed(struct outbox_spool *spool,
	struct outbox_entry **entries_r, size_t *count_r)
{
	struct outbox_entry *out = NULL;
	size_t n = 0, cap = 0;
	struct dirent *d;
	DIR *dir = dir_stream(spool->failed_fd);
	int res = 0;

	if (dir == NULL)
		return -errno;
	while ((d = readdir(dir)) != NULL) {
		struct stat sb;

		if (d->d_name[0] == '.')
			continue;
		if (fstatat(spool->failed_fd, d->d_name, &sb,
			AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(sb.st_mode))
			continue;
		if (n == cap) {
			size_t ncap = cap != 0 ? 2 * cap : 16;
			struct outbox_entry *p = realloc(out,
				ncap * sizeof(*p));

			if (p == NULL) {
				res = -ENOMEM;
				break;
			}
			out = p;
			cap = ncap;
		}
		memset(&out[n], 0, sizeof(out[n]));
		out[n].name = strdup(d->d_name);
		if (out[n].name == NULL) {
			res = -ENOMEM;
			break;
		}
		out[n].size = (uint64_t)sb.st_size;
		out[n].mtime = sb.st_mtime;
		n++;
	}
	closedir(dir);
	if (res < 0) {
		outbox_entries_free(out, n);
		return res;
	}
	if (n > 1)
		qsort(out, n, sizeof(*out), entry_name_cmp);
	*entries_r = out;
	*count_r = n;
	return 0;
}

int outbox_spool_list(struct outbox_spool *spool, enum outbox_area area,
	struct outbox_entry **entries_r, size_t *count_r)
{
	*entries_r = NULL;
	*count_r = 0;
	if (area == OUTBOX_QUEUE)
		return list_queue(spool, entries_r, count_r);
	return list_failed(spool, entries_r, count_r);
}

int outbox_spool_status(struct outbox_spool *spool, const char *name,
	char *buf, size_t size)
{
	struct spool_entry *e;
	int res = 0;

	pthread_mutex_lock(&spool->lock);
	e = entry_find(spool, name);
	if (e == NULL || e->busy)
		res = -ENOENT;
	else
		format_status(e, time(NULL), buf, size);
	pthread_mutex_unlock(&spool->lock);
	return res;
}

int outbox_spool_open_file(struct outbox_spool *spool, enum outbox_area area,
	const char *name)
{
	int res = plain_name_check(name), fd;

	if (res < 0)
		return res;
	fd = openat(area == OUTBOX_QUEUE ? spool->queue_fd : spool->failed_fd,
		name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	return fd < 0 ? -errno : fd;
}

static int remove_failed(struct outbox_spool *spool, const char *name)
{
	char err[NAME_MAX + 8];
	int res = 0;

	pthread_mutex_lock(&spool->failed_lock);
	if (unlinkat(spool->failed_fd, name, 0) < 0)
		res = -errno;
	if (res == 0 && !has_suffix(name, ERROR_SUFFIX) &&
	    strlen(name) + strlen(ERROR_SUFFIX) < sizeof(err)) {
		snprintf(err, sizeof(err), "%s%s", name, ERROR_SUFFIX);
		unlinkat(spool->failed_fd, err, 0);
	}
	if (res == 0)
		fsync_dir(spool->failed_fd);
	pthread_mutex_unlock(&spool->failed_lock);
	return res;
}

/* Deletes queue/NAME then state/NAME, in that order: the record of who
 * has the message goes only once the message itself is surely gone. */
static int unlink_queued(struct outbox_spool *spool, const char *name)
{
	int res;

	if (unlinkat(spool->queue_fd, name, 0) < 0 && errno != ENOENT)
		return -errno;
	res = fsync_dir(spool->queue_fd);
	if (res < 0)
		return res;
	if (unlinkat(spool->state_fd, name, 0) == 0)
		fsync_dir(spool->state_fd);
	return 0;
}

int outbox_spool_remove(struct outbox_spool *spool, enum outbox_area area,
	const char *name)
{
	struct spool_entry *e;
	int res = plain_name_check(name);

	if (res < 0)
		return res;
	if (area == OUTBOX_FAILED)
		return remove_failed(spool, name);

	pthread_mutex_lock(&spool->lock);
	e = entry_find(spool, name);
	if (e == NULL || e->busy)
		res = -ENOENT;
	else if (e->sending)
		res = -EBUSY;
	else
		e->busy = true;
	pthread_mutex_unlock(&spool->lock);
	if (res < 0)
		return res;

	res = unlink_queued(spool, name);

	pthread_mutex_lock(&spool->lock);
	e = entry_find(spool, name);
	if (res == 0)
		entry_remove(spool, e);
	else
		e->busy = false;
	pthread_mutex_unlock(&spool->lock);
	return res;
}

/* ------------------------------------------------------------------ */
/* The sender side                                                     */

int outbox_spool_claim(struct outbox_spool *spool, time_t now,
	char **name_r, int64_t *next_due_r)
{
	struct spool_entry *best = NULL;
	int64_t next_due = INT64_MAX;
	size_t i;
	int res = 0;

	*name_r = NULL;
	pthread_mutex_lock(&spool->lock);
	for (i = 0; i < spool->n; i++) {
		struct spool_entry *e = &spool->entries[i];

		if (e->busy || e->sending)
			continue;
		if (e->next_attempt > now) {
			if (e->next_attempt < next_due)
				next_due = e->next_attempt;
			continue;
		}
		if (best == NULL || entry_before(e, best))
			best = e;
	}
	if (best != NULL) {
		*name_r = strdup(best->name);
		if (*name_r != NULL) {
			best->sending = true;
			res = 1;
		} else {
			/* Out of memory: try again shortly. */
			next_due = now + 1;
		}
	}
	pthread_mutex_unlock(&spool->lock);
	*next_due_r = next_due;
	return res;
}

void outbox_spool_release(struct outbox_spool *spool, const char *name)
{
	struct spool_entry *e;

	pthread_mutex_lock(&spool->lock);
	e = entry_find(spool, name);
	if (e != NULL)
		e->sending = false;
	pthread_mutex_unlock(&spool->lock);
}

int outbox_spool_load(struct outbox_spool *spool, const char *name,
	char **data_r, size_t *len_r, struct outbox_state *state_r,
	const char **error_r)
{
	struct spool_entry *e;
	int64_t queued = 0;
	int res;

	memset(state_r, 0, sizeof(*state_r));
	pthread_mutex_lock(&spool->lock);
	e = entry_find(spool, name);
	if (e != NULL)
		queued = e->queued;
	pthread_mutex_unlock(&spool->lock);
	if (e == NULL) {
		*error_r = errfmt("%s is not queued", name);
		return -ENOENT;
	}

	res = read_file_at(spool->queue_fd, name, SIZE_MAX / 2 - 1, data_r,
		len_r);
	if (res < 0) {
		*error_r = errfmt("cannot read %s/queue/%s: %s", spool->dir,
			name, strerror(-res));
		return res;
	}
	read_state(spool, name, state_r);
	if (state_r->queued == 0)
		state_r->queued = queued;
	return 0;
}

int outbox_spool_save(struct outbox_spool *spool, const char *name,
	const struct outbox_state *state, const char **error_r)
{
	char tmp[TMP_NAME_MAX];
	struct spool_entry *e;
	char *text;
	size_t len;
	int res;

	res = outbox_state_format(state, &text, &len);
	if (res < 0) {
		*error_r = "out of memory";
		return res;
	}
	res = write_tmp(spool, text, len, tmp, error_r);
	free(text);
	if (res < 0)
		return res;
	if (renameat(spool->tmp_fd, tmp, spool->state_fd, name) < 0) {
		res = -errno;
		unlinkat(spool->tmp_fd, tmp, 0);
	} else {
		res = fsync_dir(spool->state_fd);
	}
	if (res < 0) {
		*error_r = errfmt("cannot write %s/state/%s: %s", spool->dir,
			name, strerror(-res));
		return res;
	}

	pthread_mutex_lock(&spool->lock);
	e = entry_find(spool, name);
	if (e != NULL)
		entry_set_state(e, state);
	pthread_mutex_unlock(&spool->lock);
	return 0;
}

int outbox_spool_finish(struct outbox_spool *spool, const char *name,
	const char *failure, const char **error_r)
{
	struct spool_entry *e;
	int res;

	if (failure == NULL) {
		res = unlink_queued(spool, name);
		if (res < 0)
			*error_r = errfmt("cannot remove %s/queue/%s: %s",
				spool->dir, name, strerror(-res));
	} else {
		res = failed_put(spool, spool->queue_fd, name, name, failure,
			NULL, error_r);
		/* As in unlink_queued(): the state goes last. */
		if (res == 0 && fsync_dir(spool->queue_fd) == 0 &&
		    unlinkat(spool->state_fd, name, 0) == 0)
			fsync_dir(spool->state_fd);
	}

	pthread_mutex_lock(&spool->lock);
	e = entry_find(spool, name);
	if (e != NULL) {
		if (res == 0)
			entry_remove(spool, e);
		else
			e->sending = false;
	}
	pthread_mutex_unlock(&spool->lock);
	return res;
}
