/* POP3 backend: one read-only INBOX over one POP3 session at a time.
 *
 * Locking: pb->lock guards `busy`, the kept message bodies, the idle clock
 * and the stop flag, and is never held across network or file I/O.  The
 * thread that set `busy` (or the idle closer, which sets it too) owns the
 * session, the UID map and the slot table until it clears `busy`; readers
 * whose message is already kept never wait for it.
 */
#include "proto/pop3_backend.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libetpan/libetpan.h>
#include <xxhash.h>

#include "proto/mail_conn.h"
#include "src/errfmt.h"
#include "src/log.h"
#include "src/mail_date.h"

#define FOLDER "INBOX"
/* Header bytes read per message (TOP n 0); the rest is ignored. */
#define HEADER_MAX (64 * 1024)
/* Longest identity key: a unique-id, or "hash <32 hex> <size> <n>". */
#define KEY_MAX 100
/* A message up to this size is kept in memory, a larger one in a file;
 * at most BODY_SLOTS are kept, and one slot is freed before a fetch, so
 * memory stays below BODY_SLOTS * BODY_MEM_MAX. */
#define BODY_MEM_MAX (32u << 20)
#define BODY_SLOTS 2
/* Write buffer for messages kept in a file. */
#define BODY_STAGE (1u << 20)
/* Messages larger than this are refused rather than fill the disk. */
#define MESSAGE_MAX (2ULL << 30)
/* QUIT an unused session after this long: the server locks the maildrop
 * while it is open. */
#define IDLE_CLOSE_S 10
#define UIDS_FILE "pop3-uids"
#define HEADERS_FILE "pop3-headers"
#define UIDS_MAGIC "mailfs-pop3-uids 1"
#define HEADERS_MAGIC "mailfs-pop3-headers 1"
/* State files larger than this are taken as damaged. */
#define STATE_FILE_MAX (512u << 20)

/* Every message the UID map knows. */
struct known {
	uint32_t uid;
	char *key;              /* unique-id, or "hash ..." (see header) */
	char *header;           /* Date/Subject/Message-ID/From block, or NULL */
	size_t header_len;
	int64_t first_seen;     /* when a listing first showed it; once the
				   header is known, its arrival_date() */
	int64_t date;           /* internaldate we report */
	uint64_t true_size;     /* after a full RETR; 0 if not yet */
	uint64_t list_size;     /* LIST's count in the last listing */
	bool seen;              /* scratch for one listing */
};

/* Where a UID sits in the current session. */
struct slot {
	uint32_t uid;
	unsigned num;
	uint64_t size;          /* LIST */
};

/* One fully fetched message, shared by readers. */
struct body {
	int refs;               /* the slot it sits in counts as one */
	uint32_t uidvalidity, uid;
	char *mem;              /* the bytes, or NULL when they are in fd */
	int fd;                 /* unlinked temp file, or -1 */
	uint64_t len;
	uint64_t last_use;
};

struct pop3_backend {
	struct backend be;      /* first: the vtable user sees only this */
	const struct mail_endpoint *ep;
	char *dir, *uids_path, *headers_path;

	pthread_mutex_t lock;
	pthread_cond_t cond;    /* busy cleared, session parked, stop */
	bool busy;
	bool stopping;
	bool reaper_started;
	pthread_t reaper;
	int64_t idle_since;     /* monotonic seconds */
	struct body *bodies[BODY_SLOTS];
	uint64_t tick;

	/* Owned by whoever set busy. */
	struct pop3_session *session;
	bool scanned;           /* slots describe this session */
	struct slot *slots;     /* sorted by uid */
	size_t n_slots;
	uint32_t uidvalidity, next_uid;
	struct known *known;    /* sorted by uid */
	size_t n_known, cap_known;
	bool uids_dirty;        /* in-memory UIDs not yet on disk */
	bool headers_dirty;
	struct reconnect_gate gate;
};

static struct pop3_backend *to_pop3(struct backend *be)
{
	return (struct pop3_backend *)be;
}

static int64_t now_mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec;
}

static bool is_inbox(const char *folder)
{
	return folder != NULL && strcasecmp(folder, FOLDER) == 0;
}

/* ------------------------------------------------------------------ */
/* Header fields and dates                                             */

static bool wanted_field(const char *line, size_t len)
{
	static const char *const names[] = {
		"date", "subject", "message-id", "from",
	};
	size_t n = 0;

	while (n < len && line[n] != ':')
		n++;
	if (n == len)
		return false;
	while (n > 0 && (line[n - 1] == ' ' || line[n - 1] == '\t'))
		n--;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strlen(names[i]) == n && strncasecmp(line, names[i], n) == 0)
			return true;
	return false;
}

/* Keeps the Date, Subject, Message-ID and From fields of a raw header
 * block, continuation lines included, in their order, and ends the block
 * with an empty line: what IMAP's BODY.PEEK[HEADER.FIELDS (...)] answers,
 * so that a message gets the same name through either protocol.  Returns
 * a malloc'd, NUL-terminated block, NULL when out of memory. */
static char *filter_header(const char *raw, size_t len, size_t *len_r)
{
	char *out = malloc(len + 5);
	size_t i = 0, o = 0;
	bool keep = false;

	if (out == NULL)
		return NULL;
	while (i < len) {
		const char *line = raw + i;
		const char *nl = memchr(line, '\n', len - i);
		size_t ll = nl != NULL ? (size_t)(nl - line) + 1 : len - i;

		if (line[0] == '\n' || (line[0] == '\r' && ll == 2 &&
		    line[1] == '\n'))
			break;              /* the empty line ends the header */
		if (line[0] != ' ' && line[0] != '\t')
			keep = wanted_field(line, ll);
		if (keep) {
			memcpy(out + o, line, ll);
			o += ll;
		}
		i += ll;
	}
	if (o > 0 && out[o - 1] != '\n') {
		/* cut at HEADER_MAX in mid-line */
		memcpy(out + o, "\r\n", 2);
		o += 2;
	}
	memcpy(out + o, "\r\n", 3);
	*len_r = o + 2;
	return out;
}

/* The unfolded value of the first field called name (of nlen bytes) in
 * header block h, malloc'd; NULL if none. */
static char *field_value(const char *h, size_t len, const char *name,
	size_t nlen)
{
	size_t i = 0;

	while (i < len) {
		const char *line = h + i;
		const char *nl = memchr(line, '\n', len - i);
		size_t ll = nl != NULL ? (size_t)(nl - line) + 1 : len - i;

		i += ll;
		if (ll <= nlen || strncasecmp(line, name, nlen) != 0)
			continue;
		size_t c = nlen;

		while (c < ll && (line[c] == ' ' || line[c] == '\t'))
			c++;
		if (c == ll || line[c] != ':')
			continue;
		/* the value runs on over continuation lines */
		size_t end = i;

		while (end < len && (h[end] == ' ' || h[end] == '\t')) {
			const char *more = memchr(h + end, '\n', len - end);

			end = more != NULL ? (size_t)(more - h) + 1 : len;
		}
		const char *v = line + c + 1;
		size_t vlen = (size_t)(h + end - v), o = 0;
		char *out = malloc(vlen + 1);

		if (out == NULL)
			return NULL;
		for (size_t k = 0; k < vlen; k++)
			if (v[k] != '\r' && v[k] != '\n')
				out[o++] = v[k];
		out[o] = '\0';
		return out;
	}
	return NULL;
}

/* When the server took the message in: the date of the topmost Received
 * field (after its last ';'), or 0 when there is none.  A function of the
 * message alone, so a name derived from it survives a fresh cache. */
static int64_t arrival_date(const char *raw, size_t len)
{
	char *rv = field_value(raw, len, "received", 8);
	char *semi = rv != NULL ? strrchr(rv, ';') : NULL;
	int64_t t = 0;

	if (semi == NULL || !mail_date_parse(semi + 1, &t))
		t = 0;
	free(rv);
	return t;
}

/* Sets k's header, and its date, from a header block: the whole block as
 * TOP sent it when whole, else the filtered block kept in the state file
 * (with the arrival date in k->first_seen). */
static int known_set_header(struct known *k, const char *raw, size_t len,
	bool whole)
{
	size_t flen;
	char *f = filter_header(raw, len, &flen);
	char *dv;

	if (f == NULL)
		return -1;
	free(k->header);
	k->header = f;
	k->header_len = flen;
	if (whole)
		k->first_seen = arrival_date(raw, len);
	k->date = k->first_seen;
	dv = field_value(f, flen, "date", 4);
	if (dv != NULL) {
		int64_t t;

		if (mail_date_parse(dv, &t))
			k->date = t;
		free(dv);
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* The UID map                                                         */

static void known_clear(struct known *k)
{
	free(k->key);
	free(k->header);
	memset(k, 0, sizeof(*k));
}

static uint32_t random_uidvalidity(uint32_t avoid)
{
	uint32_t v = 0;

	while (v == 0 || v == avoid) {
		if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v))
			v = (uint32_t)time(NULL) ^ (uint32_t)getpid() ^ avoid;
	}
	return v;
}

/* Forgets every UID and starts a new UIDVALIDITY. */
static void map_reset(struct pop3_backend *pb, uint32_t old_uidvalidity)
{
	for (size_t i = 0; i < pb->n_known; i++)
		known_clear(&pb->known[i]);
	pb->n_known = 0;
	pb->uidvalidity = random_uidvalidity(old_uidvalidity);
	pb->next_uid = 1;
	pb->n_slots = 0;
	pb->scanned = false;
	pb->uids_dirty = true;
	pb->headers_dirty = true;
}

static int compare_known_uid(const void *a, const void *b)
{
	const struct known *x = a, *y = b;

	return (x->uid > y->uid) - (x->uid < y->uid);
}

static struct known *known_by_uid(struct pop3_backend *pb, uint32_t uid)
{
	struct known key = { .uid = uid };

	return bsearch(&key, pb->known, pb->n_known, sizeof(*pb->known),
		compare_known_uid);
}

static struct known *known_append(struct pop3_backend *pb)
{
	if (pb->n_known == pb->cap_known) {
		size_t cap = pb->cap_known ? pb->cap_known * 2 : 64;
		struct known *grown = realloc(pb->known, cap * sizeof(*grown));

		if (grown == NULL)
			return NULL;
		pb->known = grown;
		pb->cap_known = cap;
	}
	memset(&pb->known[pb->n_known], 0, sizeof(*pb->known));
	return &pb->known[pb->n_known++];
}

static int compare_index_key(const void *a, const void *b, void *ctx)
{
	const struct pop3_backend *pb = ctx;
	const size_t *x = a, *y = b;

	return strcmp(pb->known[*x].key, pb->known[*y].key);
}

/* An index of pb->known sorted by key; NULL (count 0) when empty or out
 * of memory (*nomem_r tells). */
static size_t *key_index(struct pop3_backend *pb, bool *nomem_r)
{
	size_t *idx;

	*nomem_r = false;
	if (pb->n_known == 0)
		return NULL;
	idx = malloc(pb->n_known * sizeof(*idx));
	if (idx == NULL) {
		*nomem_r = true;
		return NULL;
	}
	for (size_t i = 0; i < pb->n_known; i++)
		idx[i] = i;
	qsort_r(idx, pb->n_known, sizeof(*idx), compare_index_key, pb);
	return idx;
}

static struct known *find_key(struct pop3_backend *pb, const size_t *idx,
	size_t n, const char *key)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(key, pb->known[idx[mid]].key);

		if (c == 0)
			return &pb->known[idx[mid]];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

/* ------------------------------------------------------------------ */
/* State files                                                         */

/* Reads a whole file (at most STATE_FILE_MAX) and NUL-terminates it.
 * Returns 0, -1 with errno (ENOENT when missing, EFBIG when too big). */
static int read_whole(const char *path, char **data_r, size_t *len_r)
{
	struct stat sb;
	char *data;
	size_t got = 0;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -1;
	if (fstat(fd, &sb) < 0)
		goto out_close;
	if (!S_ISREG(sb.st_mode) || sb.st_size > STATE_FILE_MAX) {
		errno = EFBIG;
		goto out_close;
	}
	data = malloc((size_t)sb.st_size + 1);
	if (data == NULL)
		goto out_close;
	while (got < (size_t)sb.st_size) {
		ssize_t r = read(fd, data + got, (size_t)sb.st_size - got);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			free(data);
			if (r == 0)
				errno = EIO;   /* shrank under us */
			goto out_close;
		}
		got += (size_t)r;
	}
	close(fd);
	data[got] = '\0';
	*data_r = data;
	*len_r = got;
	return 0;

out_close:
	{
		int e = errno;

		close(fd);
		errno = e;
	}
	return -1;
}

static int write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t w = write(fd, p, len);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -1;
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

/* Replaces path by data: temp file, fsync, rename, fsync of the
 * directory.  Returns 0 or -1 with errno. */
static int write_atomic(struct pop3_backend *pb, const char *path,
	const char *data, size_t len)
{
	char tmp[4096];
	int fd, dfd, e;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
		0600);
	if (fd < 0)
		return -1;
	if (write_all(fd, data, len) < 0 || fsync(fd) < 0)
		goto out_unlink;
	if (close(fd) < 0) {
		fd = -1;
		goto out_unlink;
	}
	fd = -1;
	if (rename(tmp, path) < 0)
		goto out_unlink;
	dfd = open(pb->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
	return 0;

out_unlink:
	e = errno;
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	errno = e;
	return -1;
}

/* A cursor over a state file. */
struct cur {
	const char *p, *end;
};

static bool cur_u64(struct cur *c, uint64_t *v_r)
{
	uint64_t v = 0;
	const char *start = c->p;

	while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
		unsigned d = (unsigned)(*c->p - '0');

		if (v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
		c->p++;
	}
	*v_r = v;
	return c->p > start && c->p - start <= 20;
}

static bool cur_i64(struct cur *c, int64_t *v_r)
{
	bool neg = c->p < c->end && *c->p == '-';
	uint64_t v;

	if (neg)
		c->p++;
	if (!cur_u64(c, &v) || v > INT64_MAX)
		return false;
	*v_r = neg ? -(int64_t)v : (int64_t)v;
	return true;
}

static bool cur_char(struct cur *c, char ch)
{
	if (c->p >= c->end || *c->p != ch)
		return false;
	c->p++;
	return true;
}

static bool cur_word(struct cur *c, const char *word)
{
	size_t len = strlen(word);

	if ((size_t)(c->end - c->p) < len || memcmp(c->p, word, len) != 0)
		return false;
	c->p += len;
	return true;
}

/* A key as stored: printable ASCII, no leading or trailing space. */
static bool key_valid(const char *k, size_t len)
{
	if (len == 0 || len > KEY_MAX || k[0] == ' ' || k[len - 1] == ' ')
		return false;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)k[i] < 0x20 || (unsigned char)k[i] > 0x7e)
			return false;
	return true;
}

/* Parses pop3-uids into the map; false when damaged (*old_r is the
 * UIDVALIDITY it named, if any, so a reset picks another). */
static bool parse_uids(struct pop3_backend *pb, const char *data, size_t len,
	uint32_t *old_r)
{
	struct cur c = { data, data + len };
	uint64_t uv, next, uid, prev = 0;
	bool nomem;
	size_t *idx;

	if (!cur_word(&c, UIDS_MAGIC) || !cur_char(&c, ' ') ||
	    !cur_u64(&c, &uv) || uv == 0 || uv > UINT32_MAX)
		return false;
	*old_r = (uint32_t)uv;
	if (!cur_char(&c, ' ') || !cur_u64(&c, &next) || next == 0 ||
	    next > UINT32_MAX || !cur_char(&c, '\n'))
		return false;
	pb->uidvalidity = (uint32_t)uv;
	pb->next_uid = (uint32_t)next;
	while (c.p < c.end) {
		const char *nl;
		struct known *k;

		if (!cur_u64(&c, &uid) || uid <= prev || uid >= next ||
		    !cur_char(&c, ' '))
			return false;
		nl = memchr(c.p, '\n', (size_t)(c.end - c.p));
		if (nl == NULL || !key_valid(c.p, (size_t)(nl - c.p)))
			return false;
		k = known_append(pb);
		if (k == NULL)
			return false;
		k->uid = (uint32_t)uid;
		k->key = strndup(c.p, (size_t)(nl - c.p));
		if (k->key == NULL) {
			pb->n_known--;
			return false;
		}
		prev = uid;
		c.p = nl + 1;
	}
	/* Two UIDs for one key would make the next listing ambiguous. */
	idx = key_index(pb, &nomem);
	if (nomem)
		return false;
	for (size_t i = 1; i < pb->n_known; i++)
		if (strcmp(pb->known[idx[i]].key,
			   pb->known[idx[i - 1]].key) == 0) {
			free(idx);
			return false;
		}
	free(idx);
	return true;
}

static void load_uids(struct pop3_backend *pb)
{
	uint32_t old = 0;
	char *data;
	size_t len;

	if (read_whole(pb->uids_path, &data, &len) < 0) {
		if (errno != ENOENT)
			log_warn("pop3: cannot read %s (%s); starting a new"
				" UIDVALIDITY", pb->uids_path, strerror(errno));
		map_reset(pb, 0);
		return;
	}
	if (!parse_uids(pb, data, len, &old)) {
		log_warn("pop3: %s is damaged; starting a new UIDVALIDITY",
			pb->uids_path);
		map_reset(pb, old);
	}
	free(data);
}

/* Attaches pop3-headers to the map; anything odd drops them all (they
 * are read again from the server). */
static void load_headers(struct pop3_backend *pb)
{
	struct cur c;
	uint64_t uv, uid, size, hlen;
	int64_t first_seen;
	char *data;
	size_t len;
	bool ok = false;

	if (read_whole(pb->headers_path, &data, &len) < 0)
		return;
	c.p = data;
	c.end = data + len;
	if (!cur_word(&c, HEADERS_MAGIC) || !cur_char(&c, ' ') ||
	    !cur_u64(&c, &uv) || !cur_char(&c, '\n'))
		goto out_free;
	if (uv != pb->uidvalidity) {
		ok = true;          /* from an older map: just stale */
		goto out_free;
	}
	while (c.p < c.end) {
		struct known *k;

		if (!cur_u64(&c, &uid) || !cur_char(&c, ' ') ||
		    !cur_i64(&c, &first_seen) || !cur_char(&c, ' ') ||
		    !cur_u64(&c, &size) || !cur_char(&c, ' ') ||
		    !cur_u64(&c, &hlen) || !cur_char(&c, '\n') ||
		    hlen > HEADER_MAX + 8 || hlen + 1 > (uint64_t)(c.end - c.p) ||
		    c.p[hlen] != '\n' || uid > UINT32_MAX)
			goto out_free;
		k = known_by_uid(pb, (uint32_t)uid);
		if (k != NULL && k->header == NULL) {
			k->first_seen = first_seen;
			k->true_size = size;
			if (known_set_header(k, c.p, (size_t)hlen, false) < 0)
				goto out_free;
		}
		c.p += hlen + 1;
	}
	ok = true;
out_free:
	free(data);
	if (!ok) {
		log_debug("pop3: %s is damaged; headers will be read again",
			pb->headers_path);
		for (size_t i = 0; i < pb->n_known; i++) {
			free(pb->known[i].header);
			pb->known[i].header = NULL;
			pb->known[i].header_len = 0;
			pb->known[i].true_size = 0;
		}
	}
}

/* Writes pop3-uids.  New UIDs must be on disk before anyone sees them;
 * when that fails the old file goes, so that the next mount starts a new
 * UIDVALIDITY instead of handing the same UIDs to other messages. */
static enum backend_status save_uids(struct pop3_backend *pb,
	const char **error_r)
{
	char *data = NULL;
	size_t len = 0;
	FILE *f;
	int e;

	f = open_memstream(&data, &len);
	if (f == NULL)
		goto out_fail;
	fprintf(f, "%s %u %u\n", UIDS_MAGIC, pb->uidvalidity, pb->next_uid);
	for (size_t i = 0; i < pb->n_known; i++)
		fprintf(f, "%u %s\n", pb->known[i].uid, pb->known[i].key);
	if (fclose(f) != 0)
		goto out_fail;
	if (write_atomic(pb, pb->uids_path, data, len) < 0)
		goto out_fail;
	free(data);
	return BACKEND_OK;

out_fail:
	e = errno;
	free(data);
	if (unlink(pb->uids_path) == 0 || errno == ENOENT) {
		log_warn("pop3: cannot save %s (%s); the next mount will"
			" start a new UIDVALIDITY", pb->uids_path, strerror(e));
		return BACKEND_OK;
	}
	*error_r = errfmt("cannot save %s: %s", pb->uids_path, strerror(e));
	return BACKEND_TEMP;
}

/* Writes pop3-headers; a failure only costs TOPs at the next mount. */
static void save_headers(struct pop3_backend *pb)
{
	char *data = NULL;
	size_t len = 0;
	FILE *f;

	f = open_memstream(&data, &len);
	if (f == NULL)
		goto out_fail;
	fprintf(f, "%s %u\n", HEADERS_MAGIC, pb->uidvalidity);
	for (size_t i = 0; i < pb->n_known; i++) {
		const struct known *k = &pb->known[i];

		if (k->header == NULL)
			continue;
		fprintf(f, "%u %lld %llu %zu\n", k->uid,
			(long long)k->first_seen,
			(unsigned long long)k->true_size, k->header_len);
		fwrite(k->header, 1, k->header_len, f);
		fputc('\n', f);
	}
	if (fclose(f) != 0)
		goto out_fail;
	if (write_atomic(pb, pb->headers_path, data, len) < 0)
		goto out_fail;
	free(data);
	pb->headers_dirty = false;
	return;

out_fail:
	log_warn("pop3: cannot save %s: %s", pb->headers_path,
		strerror(errno));
	free(data);
}

/* ------------------------------------------------------------------ */
/* Kept message bodies                                                 */

static void body_free(struct body *b)
{
	if (b == NULL)
		return;
	if (b->fd >= 0)
		close(b->fd);
	free(b->mem);
	free(b);
}

/* Drops one reference; lock held.  Returns the body when it must be
 * freed (by the caller, after unlocking). */
static struct body *body_unref_locked(struct body *b)
{
	return --b->refs == 0 ? b : NULL;
}

static struct body *body_lookup(struct pop3_backend *pb, uint32_t uidvalidity,
	uint32_t uid)
{
	struct body *found = NULL;

	pthread_mutex_lock(&pb->lock);
	for (int i = 0; i < BODY_SLOTS; i++) {
		struct body *b = pb->bodies[i];

		if (b != NULL && b->uid == uid && b->uidvalidity == uidvalidity) {
			b->refs++;
			b->last_use = ++pb->tick;
			found = b;
			break;
		}
	}
	pthread_mutex_unlock(&pb->lock);
	return found;
}

static void body_put(struct pop3_backend *pb, struct body **bp)
{
	struct body *dead;

	pthread_mutex_lock(&pb->lock);
	dead = body_unref_locked(*bp);
	pthread_mutex_unlock(&pb->lock);
	body_free(dead);
	*bp = NULL;
}

/* Empties the least recently used slot; with `all`, every slot. */
static void body_evict(struct pop3_backend *pb, bool all)
{
	struct body *dead[BODY_SLOTS] = { NULL };
	int victim = -1, used = 0;

	pthread_mutex_lock(&pb->lock);
	for (int i = 0; i < BODY_SLOTS; i++) {
		if (pb->bodies[i] == NULL)
			continue;
		used++;
		if (all) {
			dead[i] = body_unref_locked(pb->bodies[i]);
			pb->bodies[i] = NULL;
		} else if (victim < 0 || pb->bodies[i]->last_use <
			   pb->bodies[victim]->last_use) {
			victim = i;
		}
	}
	if (!all && used == BODY_SLOTS) {
		dead[0] = body_unref_locked(pb->bodies[victim]);
		pb->bodies[victim] = NULL;
	}
	pthread_mutex_unlock(&pb->lock);
	for (int i = 0; i < BODY_SLOTS; i++)
		body_free(dead[i]);
}

/* Keeps b (the caller keeps its own reference too). */
static void body_keep(struct pop3_backend *pb, struct body *b)
{
	struct body *dead = NULL;
	int slot = 0;

	pthread_mutex_lock(&pb->lock);
	for (int i = 0; i < BODY_SLOTS; i++) {
		if (pb->bodies[i] == NULL) {
			slot = i;
			break;
		}
		if (pb->bodies[i]->last_use < pb->bodies[slot]->last_use)
			slot = i;
	}
	if (pb->bodies[slot] != NULL)
		dead = body_unref_locked(pb->bodies[slot]);
	b->refs++;
	b->last_use = ++pb->tick;
	pb->bodies[slot] = b;
	pthread_mutex_unlock(&pb->lock);
	body_free(dead);
}

static enum backend_status body_copy(const struct body *b, uint64_t offset,
	size_t length, void *buf, size_t *got_r, const char **error_r)
{
	size_t n, done = 0;

	*got_r = 0;
	if (offset >= b->len)
		return BACKEND_OK;
	n = b->len - offset < length ? (size_t)(b->len - offset) : length;
	if (b->mem != NULL) {
		memcpy(buf, b->mem + offset, n);
		*got_r = n;
		return BACKEND_OK;
	}
	while (done < n) {
		ssize_t r = pread(b->fd, (char *)buf + done, n - done,
			(off_t)(offset + done));

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			*error_r = errfmt("cannot read back a fetched message: %s",
				r < 0 ? strerror(errno) : "file shrank");
			return BACKEND_TEMP;
		}
		done += (size_t)r;
	}
	*got_r = n;
	return BACKEND_OK;
}

/* Collects a RETR: in memory up to BODY_MEM_MAX, then in an unlinked
 * file in the state directory. */
struct body_fill {
	struct pop3_backend *pb;
	struct body *b;
	size_t cap;             /* of b->mem */
	char *stage;            /* file mode: bytes not yet written */
	size_t stage_len;
	int err;
};

static int open_spill_file(const char *dir)
{
	char path[4096];
	int fd;

	fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd >= 0)
		return fd;
	/* file systems without O_TMPFILE */
	if (snprintf(path, sizeof(path), "%s/pop3-body.XXXXXX", dir) >=
	    (int)sizeof(path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	fd = mkostemp(path, O_CLOEXEC);
	if (fd < 0)
		return -1;
	unlink(path);
	return fd;
}

static int fill_stage_flush(struct body_fill *f)
{
	if (f->stage_len > 0 &&
	    write_all(f->b->fd, f->stage, f->stage_len) < 0) {
		f->err = errno;
		return -1;
	}
	f->stage_len = 0;
	return 0;
}

static int fill_spill(struct body_fill *f)
{
	struct body *b = f->b;

	b->fd = open_spill_file(f->pb->dir);
	if (b->fd < 0) {
		f->err = errno;
		return -1;
	}
	f->stage = malloc(BODY_STAGE);
	if (f->stage == NULL) {
		f->err = ENOMEM;
		return -1;
	}
	if (b->len > 0 && write_all(b->fd, b->mem, (size_t)b->len) < 0) {
		f->err = errno;
		return -1;
	}
	free(b->mem);
	b->mem = NULL;
	f->cap = 0;
	return 0;
}

static int body_sink(void *ctx, const char *data, size_t len)
{
	struct body_fill *f = ctx;
	struct body *b = f->b;

	if (len > MESSAGE_MAX - b->len) {
		f->err = EFBIG;
		return -1;
	}
	if (b->fd < 0 && b->len + len > BODY_MEM_MAX && fill_spill(f) < 0)
		return -1;
	if (b->fd >= 0) {
		if (f->stage_len + len > BODY_STAGE && fill_stage_flush(f) < 0)
			return -1;
		if (len >= BODY_STAGE) {
			if (write_all(b->fd, data, len) < 0) {
				f->err = errno;
				return -1;
			}
		} else {
			memcpy(f->stage + f->stage_len, data, len);
			f->stage_len += len;
		}
		b->len += len;
		return 0;
	}
	if (b->len + len > f->cap) {
		size_t cap = f->cap ? f->cap : 64 * 1024;
		char *grown;

		while (cap < b->len + len)
			cap *= 2;
		if (cap > BODY_MEM_MAX)
			cap = BODY_MEM_MAX;
		grown = realloc(b->mem, cap);
		if (grown == NULL) {
			f->err = ENOMEM;
			return -1;
		}
		b->mem = grown;
		f->cap = cap;
	}
	memcpy(b->mem + b->len, data, len);
	b->len += len;
	return 0;
}

/* RETRs message num of the current session into a new body (one
 * reference, the caller's).  *local_r tells a failure here (memory, disk,
 * size) from one of the server. */
static enum backend_status fetch_body(struct pop3_backend *pb, unsigned num,
	uint64_t list_size, uint32_t uid, struct body **body_r,
	bool *local_r, const char **error_r)
{
	struct body_fill f = { .pb = pb };
	enum backend_status st;
	struct body *b;

	b = calloc(1, sizeof(*b));
	if (b == NULL) {
		*error_r = "out of memory";
		return BACKEND_TEMP;
	}
	b->fd = -1;
	b->refs = 1;
	b->uid = uid;
	b->uidvalidity = pb->uidvalidity;
	f.b = b;
	/* Trust LIST only as far as the memory bound. */
	if (list_size > BODY_MEM_MAX) {
		if (fill_spill(&f) < 0)
			goto out_fill;
	} else if (list_size > 0) {
		f.cap = (size_t)list_size + 4096;
		if (f.cap > BODY_MEM_MAX)
			f.cap = BODY_MEM_MAX;
		b->mem = malloc(f.cap);
		if (b->mem == NULL) {
			f.err = ENOMEM;
			goto out_fill;
		}
	}
	st = pop3_session_retr(pb->session, num, body_sink, &f, error_r);
	if (st == BACKEND_OK && b->fd >= 0 && fill_stage_flush(&f) < 0)
		goto out_fill;
	free(f.stage);
	if (st != BACKEND_OK) {
		if (f.err != 0)
			goto out_fill_error;
		body_free(b);
		return st;
	}
	*body_r = b;
	return BACKEND_OK;

out_fill:
	free(f.stage);
out_fill_error:
	*local_r = true;
	if (f.err == EFBIG)
		*error_r = errfmt("message %u is larger than %llu bytes", uid,
			(unsigned long long)MESSAGE_MAX);
	else if (f.err == ENOMEM)
		*error_r = "out of memory";
	else
		*error_r = errfmt("cannot keep message %u in %s: %s", uid,
			pb->dir, strerror(f.err));
	body_free(b);
	return BACKEND_TEMP;
}

/* ------------------------------------------------------------------ */
/* The session                                                         */

static void session_acquire(struct pop3_backend *pb)
{
	pthread_mutex_lock(&pb->lock);
	while (pb->busy)
		pthread_cond_wait(&pb->cond, &pb->lock);
	pb->busy = true;
	pthread_mutex_unlock(&pb->lock);
}

static void session_release(struct pop3_backend *pb)
{
	struct pop3_session *dead = NULL;

	if (pb->session != NULL && pop3_session_broken(pb->session)) {
		dead = pb->session;
		pb->session = NULL;
		pb->scanned = false;
	}
	/* Closed outside the lock but before anyone else may log in. */
	pop3_session_close(&dead);
	pthread_mutex_lock(&pb->lock);
	pb->busy = false;
	pb->idle_since = now_mono();
	pthread_cond_broadcast(&pb->cond);
	pthread_mutex_unlock(&pb->lock);
}

static void session_drop(struct pop3_backend *pb)
{
	pop3_session_close(&pb->session);
	pb->scanned = false;
	pb->n_slots = 0;
}

/* Opens a session unless one is open, backing off after failures. */
static enum backend_status session_ensure(struct pop3_backend *pb,
	const char **error_r)
{
	enum backend_status st;
	const char *error;

	if (pb->session != NULL && pop3_session_broken(pb->session))
		session_drop(pb);
	if (pb->session != NULL)
		return BACKEND_OK;
	if (reconnect_gate_closed(&pb->gate, &st, error_r))
		return st;
	pb->scanned = false;
	pb->n_slots = 0;
	st = pop3_session_open(pb->ep, &pb->session, &error);
	if (st != BACKEND_OK) {
		reconnect_gate_failed(&pb->gate, st, error);
		*error_r = errfmt("%s", error);
		return st;
	}
	reconnect_gate_opened(&pb->gate);
	return BACKEND_OK;
}

/* QUITs the session once it has been idle for IDLE_CLOSE_S, so other
 * clients can lock the maildrop. */
static void *idle_closer(void *arg)
{
	struct pop3_backend *pb = arg;

	pthread_mutex_lock(&pb->lock);
	while (!pb->stopping) {
		if (pb->busy || pb->session == NULL) {
			pthread_cond_wait(&pb->cond, &pb->lock);
			continue;
		}
		int64_t due = pb->idle_since + IDLE_CLOSE_S;

		if (now_mono() < due) {
			struct timespec ts;

			clock_gettime(CLOCK_MONOTONIC, &ts);
			ts.tv_sec += due - now_mono();
			pthread_cond_timedwait(&pb->cond, &pb->lock, &ts);
			continue;
		}
		struct pop3_session *s = pb->session;

		pb->session = NULL;
		pb->scanned = false;
		pb->n_slots = 0;
		pb->busy = true;
		pthread_mutex_unlock(&pb->lock);
		log_debug("pop3 %s: closing idle session", s->label);
		pop3_session_close(&s);
		pthread_mutex_lock(&pb->lock);
		pb->busy = false;
		pthread_cond_broadcast(&pb->cond);
	}
	pthread_mutex_unlock(&pb->lock);
	return NULL;
}

/* ------------------------------------------------------------------ */
/* Scanning a session                                                  */

static int compare_slot_uid(const void *a, const void *b)
{
	const struct slot *x = a, *y = b;

	return (x->uid > y->uid) - (x->uid < y->uid);
}

static const struct slot *slot_by_uid(struct pop3_backend *pb, uint32_t uid)
{
	struct slot key = { .uid = uid };

	return bsearch(&key, pb->slots, pb->n_slots, sizeof(*pb->slots),
		compare_slot_uid);
}

/* Entries sorted by a string, ties in message order. */
struct by_str {
	const char *str;
	size_t i;
};

static int compare_by_str(const void *a, const void *b)
{
	const struct by_str *x = a, *y = b;
	int c = strcmp(x->str, y->str);

	if (c != 0)
		return c;
	return (x->i > y->i) - (x->i < y->i);
}

/* A unique-id two messages share identifies neither. */
static void drop_shared_uidls(struct pop3_session *s,
	struct pop3_scan_entry *e, size_t n)
{
	struct by_str *v = malloc((n + 1) * sizeof(*v));
	size_t m = 0, shared = 0;

	if (v == NULL) {
		/* without the check, use none of them */
		for (size_t i = 0; i < n; i++)
			e[i].uidl[0] = '\0';
		return;
	}
	for (size_t i = 0; i < n; i++)
		if (e[i].uidl[0] != '\0')
			v[m++] = (struct by_str){ e[i].uidl, i };
	qsort(v, m, sizeof(*v), compare_by_str);
	for (size_t a = 0; a < m;) {
		size_t b = a + 1;

		while (b < m && strcmp(v[a].str, v[b].str) == 0)
			b++;
		if (b - a > 1)
			for (size_t i = a; i < b; i++) {
				e[v[i].i].uidl[0] = '\0';
				shared++;
			}
		a = b;
	}
	free(v);
	if (shared > 0)
		log_warn("pop3 %s: %zu messages share unique-ids; they are"
			" known by their headers", s->label, shared);
}

/* Identity keys of every entry: the unique-id, or a hash of the header
 * (read with TOP into raw[i]).  keys[i] stays NULL when the server would
 * give neither. */
static enum backend_status make_keys(struct pop3_backend *pb,
	struct pop3_scan_entry *e, size_t n, char **keys,
	struct pop3_header *raw, const char **error_r)
{
	struct pop3_session *s = pb->session;
	struct pop3_header *got = NULL;
	struct by_str *v = NULL;
	enum backend_status st;
	unsigned *nums = NULL;
	size_t *where = NULL;
	size_t need = 0, m = 0, refused = 0;

	drop_shared_uidls(s, e, n);
	for (size_t i = 0; i < n; i++)
		need += e[i].uidl[0] == '\0';
	if (need > 0) {
		nums = malloc(need * sizeof(*nums));
		where = malloc(need * sizeof(*where));
		got = calloc(need, sizeof(*got));
		v = malloc(need * sizeof(*v));
		if (nums == NULL || where == NULL || got == NULL || v == NULL)
			goto out_nomem;
		for (size_t i = 0, j = 0; i < n; i++)
			if (e[i].uidl[0] == '\0') {
				nums[j] = e[i].num;
				where[j++] = i;
			}
		st = pop3_session_headers(s, nums, need, HEADER_MAX, got,
			error_r);
		if (st != BACKEND_OK)
			goto out_free;
	}
	for (size_t j = 0; j < need; j++) {
		size_t i = where[j];
		XXH128_hash_t h;
		char key[KEY_MAX + 1];

		raw[i] = got[j];
		got[j].data = NULL;
		if (raw[i].refused) {
			refused++;
			continue;
		}
		h = XXH3_128bits(raw[i].data, raw[i].len);
		snprintf(key, sizeof(key), "hash %016llx%016llx %llu",
			(unsigned long long)h.high64,
			(unsigned long long)h.low64,
			(unsigned long long)e[i].size);
		keys[i] = strdup(key);
		if (keys[i] == NULL)
			goto out_nomem;
		v[m++] = (struct by_str){ keys[i], i };
	}
	/* Identical headers and size: number them in message order. */
	if (m > 1)
		qsort(v, m, sizeof(*v), compare_by_str);
	for (size_t a = 0; a < m;) {
		size_t b = a + 1;

		while (b < m && strcmp(v[a].str, v[b].str) == 0)
			b++;
		for (size_t k = a + 1; k < b; k++) {
			char key[KEY_MAX + 1];
			size_t i = v[k].i;

			snprintf(key, sizeof(key), "%s %zu", keys[i], k - a + 1);
			free(keys[i]);
			keys[i] = strdup(key);
			if (keys[i] == NULL)
				goto out_nomem;
		}
		a = b;
	}
	for (size_t i = 0; i < n; i++)
		if (e[i].uidl[0] != '\0' && (keys[i] = strdup(e[i].uidl)) == NULL)
			goto out_nomem;
	if (refused > 0)
		log_warn("pop3 %s: %zu messages without unique-id whose headers"
			" the server refuses; not shown", s->label, refused);
	st = BACKEND_OK;
	goto out_free;

out_nomem:
	*error_r = "out of memory";
	st = BACKEND_TEMP;
out_free:
	if (got != NULL)
		for (size_t j = 0; j < need; j++)
			free(got[j].data);
	free(got);
	free(nums);
	free(where);
	free(v);
	return st;
}

/* Reads the headers of listed messages that have none yet, reusing those
 * make_keys already read. */
static enum backend_status fill_headers(struct pop3_backend *pb,
	const struct pop3_scan_entry *e, size_t n, const uint32_t *uid_of,
	const struct pop3_header *raw, const char **error_r)
{
	struct pop3_header *got = NULL;
	enum backend_status st = BACKEND_OK;
	unsigned *nums = NULL;
	size_t *where = NULL;
	size_t need = 0, j = 0;
	struct known *k;

	for (size_t i = 0; i < n; i++) {
		k = uid_of[i] != 0 ? known_by_uid(pb, uid_of[i]) : NULL;
		if (k == NULL || k->header != NULL)
			continue;
		if (raw[i].data != NULL) {
			if (known_set_header(k, raw[i].data, raw[i].len, true) < 0)
				goto out_nomem;
			pb->headers_dirty = true;
			continue;
		}
		need++;
	}
	if (need == 0)
		return BACKEND_OK;
	nums = malloc(need * sizeof(*nums));
	where = malloc(need * sizeof(*where));
	got = calloc(need, sizeof(*got));
	if (nums == NULL || where == NULL || got == NULL)
		goto out_nomem;
	for (size_t i = 0; i < n && j < need; i++) {
		k = uid_of[i] != 0 ? known_by_uid(pb, uid_of[i]) : NULL;
		if (k != NULL && k->header == NULL) {
			nums[j] = e[i].num;
			where[j++] = i;
		}
	}
	need = j;
	log_debug("pop3 %s: reading %zu headers", pb->session->label, need);
	st = pop3_session_headers(pb->session, nums, need, HEADER_MAX, got,
		error_r);
	if (st != BACKEND_OK)
		goto out_free;
	for (j = 0; j < need; j++) {
		/* A refused one is tried again at the next listing. */
		if (got[j].refused)
			continue;
		k = known_by_uid(pb, uid_of[where[j]]);
		if (known_set_header(k, got[j].data, got[j].len, true) < 0)
			goto out_nomem;
		pb->headers_dirty = true;
	}
	goto out_free;

out_nomem:
	*error_r = "out of memory";
	st = BACKEND_TEMP;
out_free:
	if (got != NULL)
		for (j = 0; j < need; j++)
			free(got[j].data);
	free(got);
	free(nums);
	free(where);
	return st;
}

/* Scans the current session: finds every message's UID and builds the
 * slot table.  A listing (`listing`) also hands out UIDs to new messages,
 * forgets vanished ones, saves the map and reads missing headers; a scan
 * for a read only looks messages up. */
static enum backend_status scan_session(struct pop3_backend *pb,
	bool listing, const char **error_r)
{
	struct pop3_scan_entry *e = NULL;
	struct pop3_header *raw = NULL;
	struct slot *slots = NULL;
	uint32_t *uid_of = NULL;
	enum backend_status st;
	size_t n = 0, ns = 0, n_idx, *idx;
	char **keys = NULL;
	bool have_uidl, nomem;

	pb->scanned = false;
	pb->n_slots = 0;
	st = pop3_session_scan(pb->session, &e, &n, &have_uidl, error_r);
	if (st != BACKEND_OK)
		return st;
	if (!have_uidl && n > 0)
		log_debug("pop3 %s: no UIDL; messages are known by their"
			" headers", pb->session->label);
	keys = calloc(n + 1, sizeof(*keys));
	raw = calloc(n + 1, sizeof(*raw));
	uid_of = calloc(n + 1, sizeof(*uid_of));
	slots = calloc(n + 1, sizeof(*slots));
	if (keys == NULL || raw == NULL || uid_of == NULL || slots == NULL)
		goto out_nomem;
	st = make_keys(pb, e, n, keys, raw, error_r);
	if (st != BACKEND_OK)
		goto out_free;

	/* Running out of UIDs: renumber under a new UIDVALIDITY. */
	if (listing && n > UINT32_MAX - 1 - pb->next_uid) {
		log_warn("pop3: UIDs exhausted; starting a new UIDVALIDITY");
		map_reset(pb, pb->uidvalidity);
	}
	idx = key_index(pb, &nomem);
	if (nomem)
		goto out_nomem;
	n_idx = pb->n_known;
	for (size_t i = 0; i < pb->n_known; i++)
		pb->known[i].seen = false;
	for (size_t i = 0; i < n; i++) {
		struct known *k = keys[i] != NULL ?
			find_key(pb, idx, n_idx, keys[i]) : NULL;

		if (k != NULL) {
			k->seen = true;
			k->list_size = e[i].size;
			uid_of[i] = k->uid;
		}
	}
	free(idx);

	if (listing) {
		size_t w = 0;

		/* New ones in message order, so UIDs follow arrival; they
		 * are larger than every UID before, which keeps pb->known
		 * sorted. */
		for (size_t i = 0; i < n; i++) {
			struct known *k;

			if (keys[i] == NULL || uid_of[i] != 0)
				continue;
			k = known_append(pb);
			if (k == NULL)
				goto out_nomem;
			k->uid = pb->next_uid++;
			k->first_seen = time(NULL);
			k->key = keys[i];
			keys[i] = NULL;
			k->list_size = e[i].size;
			k->seen = true;
			uid_of[i] = k->uid;
			pb->uids_dirty = true;
		}
		/* Forget what is gone; its UID is never handed out again. */
		for (size_t r = 0; r < pb->n_known; r++) {
			if (!pb->known[r].seen) {
				known_clear(&pb->known[r]);
				pb->uids_dirty = true;
				pb->headers_dirty = true;
				continue;
			}
			if (w != r)
				pb->known[w] = pb->known[r];
			w++;
		}
		pb->n_known = w;
		if (pb->uids_dirty) {
			st = save_uids(pb, error_r);
			if (st != BACKEND_OK)
				goto out_free;
			pb->uids_dirty = false;
		}
	}

	for (size_t i = 0; i < n; i++)
		if (uid_of[i] != 0)
			slots[ns++] = (struct slot){ uid_of[i], e[i].num,
				e[i].size };
	qsort(slots, ns, sizeof(*slots), compare_slot_uid);
	free(pb->slots);
	pb->slots = slots;
	pb->n_slots = ns;
	slots = NULL;
	pb->scanned = true;

	if (listing) {
		st = fill_headers(pb, e, n, uid_of, raw, error_r);
		if (st == BACKEND_OK && pb->headers_dirty)
			save_headers(pb);
	}
out_free:
	for (size_t i = 0; i < n; i++) {
		free(keys != NULL ? keys[i] : NULL);
		free(raw != NULL ? raw[i].data : NULL);
	}
	free(keys);
	free(raw);
	free(uid_of);
	free(slots);
	free(e);
	return st;

out_nomem:
	*error_r = "out of memory";
	st = BACKEND_TEMP;
	goto out_free;
}

/* ------------------------------------------------------------------ */
/* Backend operations                                                  */

static enum backend_status pop3_list_folders(struct backend *be,
	struct backend_folder **folders_r, size_t *count_r,
	const char **error_r)
{
	struct backend_folder *f = calloc(1, sizeof(*f));

	if (f == NULL)
		goto out_nomem;
	f->raw_name = strdup(FOLDER);
	f->parts = calloc(1, sizeof(*f->parts));
	if (f->raw_name == NULL || f->parts == NULL)
		goto out_free;
	f->parts[0] = strdup(FOLDER);
	if (f->parts[0] == NULL)
		goto out_free;
	f->n_parts = 1;
	*folders_r = f;
	*count_r = 1;
	return BACKEND_OK;

out_free:
	free(f->parts);
	free(f->raw_name);
	free(f);
out_nomem:
	*error_r = "out of memory";
	return BACKEND_TEMP;
}

static enum backend_status build_list(struct pop3_backend *pb,
	struct backend_folder_state *state_r, struct backend_message **msgs_r,
	size_t *count_r, const char **error_r)
{
	struct backend_message *msgs = calloc(pb->n_known + 1, sizeof(*msgs));

	if (msgs == NULL)
		goto out_nomem;
	for (size_t i = 0; i < pb->n_known; i++) {
		const struct known *k = &pb->known[i];
		struct backend_message *m = &msgs[i];

		m->uid = k->uid;
		m->size = k->true_size != 0 ? k->true_size : k->list_size;
		m->size_uncertain = k->true_size == 0;
		m->internaldate = k->header != NULL ? k->date : k->first_seen;
		m->flags = strdup("");
		m->header_len = k->header != NULL ? k->header_len : 0;
		m->header = malloc(m->header_len + 1);
		if (m->flags == NULL || m->header == NULL) {
			backend_messages_free(&msgs, i + 1);
			goto out_nomem;
		}
		if (m->header_len > 0)
			memcpy(m->header, k->header, m->header_len);
		m->header[m->header_len] = '\0';
	}
	memset(state_r, 0, sizeof(*state_r));
	state_r->uidvalidity = pb->uidvalidity;
	state_r->uidnext = pb->next_uid;
	state_r->exists = (uint32_t)pb->n_known;
	*msgs_r = msgs;
	*count_r = pb->n_known;
	return BACKEND_OK;

out_nomem:
	*error_r = "out of memory";
	return BACKEND_TEMP;
}

static enum backend_status pop3_list_messages(struct backend *be,
	const char *folder, struct backend_folder_state *state_r,
	struct backend_message **msgs_r, size_t *count_r,
	const char **error_r)
{
	struct pop3_backend *pb = to_pop3(be);
	enum backend_status st;

	*msgs_r = NULL;
	*count_r = 0;
	if (!is_inbox(folder)) {
		*error_r = errfmt("a POP3 mailbox has no folder %s", folder);
		return BACKEND_NOT_FOUND;
	}
	session_acquire(pb);
	/* A session's view is frozen at login: new mail needs a new one. */
	if (pb->session != NULL && pb->scanned)
		session_drop(pb);
	st = session_ensure(pb, error_r);
	if (st == BACKEND_OK)
		st = scan_session(pb, true, error_r);
	if (st == BACKEND_OK)
		st = build_list(pb, state_r, msgs_r, count_r, error_r);
	session_release(pb);
	return st;
}

/* Finds uid in the session (a new one if the current one lacks it or
 * fails) and fetches it whole.  Called with busy set. */
static enum backend_status retrieve(struct pop3_backend *pb,
	uint32_t uidvalidity, uint32_t uid, struct body **body_r,
	const char **error_r)
{
	enum backend_status st;
	const struct slot *slot;
	struct known *k;

	if (uidvalidity != pb->uidvalidity) {
		*error_r = errfmt("POP3 message numbering was reset"
			" (UIDVALIDITY %u, expected %u)", pb->uidvalidity,
			uidvalidity);
		return BACKEND_NOT_FOUND;
	}
	if (known_by_uid(pb, uid) == NULL) {
		*error_r = errfmt("message UID %u is gone from %s", uid, FOLDER);
		return BACKEND_NOT_FOUND;
	}
	for (int attempt = 0;; attempt++) {
		bool reused = pb->session != NULL && !pop3_session_broken(pb->session);
		bool local = false;

		st = session_ensure(pb, error_r);
		if (st != BACKEND_OK)
			return st;
		if (!pb->scanned) {
			st = scan_session(pb, false, error_r);
			if (st != BACKEND_OK)
				goto out_retry;
		}
		slot = slot_by_uid(pb, uid);
		if (slot == NULL) {
			/* Older than the listing that showed it? */
			if (reused && attempt == 0) {
				session_drop(pb);
				continue;
			}
			*error_r = errfmt("message UID %u is gone from %s", uid,
				FOLDER);
			return BACKEND_NOT_FOUND;
		}
		/* Room first, so at most one kept body and this one exist. */
		body_evict(pb, false);
		st = fetch_body(pb, slot->num, slot->size, uid, body_r, &local,
			error_r);
		if (st == BACKEND_OK)
			break;
out_retry:
		/* A session that sat idle may have been dropped by the
		 * server: once more with a new one. */
		if (reused && attempt == 0 && !local && pb->session != NULL &&
		    pop3_session_broken(pb->session)) {
			session_drop(pb);
			continue;
		}
		return st;
	}
	k = known_by_uid(pb, uid);
	if (k != NULL && k->true_size != (*body_r)->len) {
		if (k->list_size != (*body_r)->len)
			log_debug("pop3: UID %u is %llu bytes, LIST said %llu",
				uid, (unsigned long long)(*body_r)->len,
				(unsigned long long)k->list_size);
		k->true_size = (*body_r)->len;
		pb->headers_dirty = true;
	}
	body_keep(pb, *body_r);
	return BACKEND_OK;
}

static enum backend_status pop3_read_range(struct backend *be,
	const char *folder, uint32_t uidvalidity, uint32_t uid,
	uint64_t offset, size_t length, void *buf, size_t *got_r,
	const char **error_r)
{
	struct pop3_backend *pb = to_pop3(be);
	enum backend_status st = BACKEND_OK;
	struct body *b;

	*got_r = 0;
	if (!is_inbox(folder)) {
		*error_r = errfmt("a POP3 mailbox has no folder %s", folder);
		return BACKEND_NOT_FOUND;
	}
	b = body_lookup(pb, uidvalidity, uid);
	if (b == NULL) {
		session_acquire(pb);
		/* Another reader may have fetched it while we waited. */
		b = body_lookup(pb, uidvalidity, uid);
		if (b == NULL)
			st = retrieve(pb, uidvalidity, uid, &b, error_r);
		session_release(pb);
		if (st != BACKEND_OK)
			return st;
	}
	st = body_copy(b, offset, length, buf, got_r, error_r);
	body_put(pb, &b);
	return st;
}

static void pop3_free(struct pop3_backend *pb)
{
	if (pb->reaper_started) {
		pthread_mutex_lock(&pb->lock);
		pb->stopping = true;
		pthread_cond_broadcast(&pb->cond);
		pthread_mutex_unlock(&pb->lock);
		pthread_join(pb->reaper, NULL);
	}
	session_drop(pb);
	if (pb->headers_dirty && pb->headers_path != NULL)
		save_headers(pb);
	body_evict(pb, true);
	for (size_t i = 0; i < pb->n_known; i++)
		known_clear(&pb->known[i]);
	free(pb->known);
	free(pb->slots);
	free(pb->uids_path);
	free(pb->headers_path);
	free(pb->dir);
	pthread_cond_destroy(&pb->cond);
	pthread_mutex_destroy(&pb->lock);
	free(pb);
}

static void pop3_destroy(struct backend *be)
{
	pop3_free(to_pop3(be));
}

static const struct backend_ops pop3_backend_ops = {
	.list_folders = pop3_list_folders,
	.list_messages = pop3_list_messages,
	.read_range = pop3_read_range,
	.destroy = pop3_destroy,
};

struct backend *pop3_backend_new(const struct mail_endpoint *ep,
	const char *state_dir, struct pop3_session *first)
{
	struct pop3_backend *pb = calloc(1, sizeof(*pb));
	pthread_condattr_t ca;

	if (pb == NULL) {
		pop3_session_close(&first);
		return NULL;
	}
	pb->be.ops = &pop3_backend_ops;
	pb->be.delimiter = '/';
	pb->gate.what = "POP3 server";
	pb->be.read_only = true;
	pb->ep = ep;
	pthread_mutex_init(&pb->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&pb->cond, &ca);
	pthread_condattr_destroy(&ca);
	pb->session = first;
	pb->idle_since = now_mono();

	pb->dir = strdup(state_dir);
	if (pb->dir == NULL)
		goto out_free;
	if (asprintf(&pb->uids_path, "%s/%s", state_dir, UIDS_FILE) < 0) {
		pb->uids_path = NULL;
		goto out_free;
	}
	if (asprintf(&pb->headers_path, "%s/%s", state_dir, HEADERS_FILE) < 0) {
		pb->headers_path = NULL;
		goto out_free;
	}
	load_uids(pb);
	load_headers(pb);
	pb->headers_dirty = false;
	if (pthread_create(&pb->reaper, NULL, idle_closer, pb) != 0)
		goto out_free;
	pb->reaper_started = true;
	log_debug("pop3: UIDVALIDITY %u, %zu messages known", pb->uidvalidity,
		pb->n_known);
	return &pb->be;

out_free:
	pop3_free(pb);
	return NULL;
}
