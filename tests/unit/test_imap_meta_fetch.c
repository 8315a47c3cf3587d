/* Unit tests for the listing FETCH (proto/imap_meta_fetch.c): the parser,
 * and the whole command over a socketpair whose other end a thread plays
 * as the server. */
#include "proto/imap_meta_fetch.h"

#include <errno.h>
#include <linux/sockios.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "tests/unit/check.h"

static int parse(const char *resp, struct backend_message *m)
{
	return imap_meta_parse_fetch(resp, strlen(resp), m);
}

static void clear(struct backend_message *m)
{
	free(m->flags);
	free(m->header);
	memset(m, 0, sizeof(*m));
}

static void test_dovecot_listing(void)
{
	struct backend_message m;
	const char *resp = "* 1 FETCH (UID 17 RFC822.SIZE 3985 INTERNALDATE "
		"\"02-Jan-2024 08:17:44 +0100\" FLAGS (\\Flagged \\Recent kw) "
		"BODY[HEADER.FIELDS (DATE SUBJECT MESSAGE-ID FROM)] {12}\r\n"
		"Subject: x\r\n)";

	CHECK(parse(resp, &m) == 1);
	CHECK(m.uid == 17);
	CHECK(m.size == 3985);
	/* 2024-01-02 07:17:44 UTC */
	CHECK(m.internaldate == 1704179864);
	CHECK(m.flags && strcmp(m.flags, "\\Flagged kw") == 0);
	CHECK(m.header_len == 12 && memcmp(m.header, "Subject: x\r\n", 12) == 0);
	CHECK(m.header && m.header[12] == '\0');
	clear(&m);
}

static void test_variants(void)
{
	struct backend_message m;

	/* Any order, MODSEQ, a quoted header, a day with a leading space,
	 * lower case names. */
	CHECK(parse("* 3 FETCH (MODSEQ (12) flags () body[HEADER.FIELDS "
		"(\"DATE\")] \"Date: \\\"x\\\"\" internaldate \" 2-Feb-2020 "
		"00:00:00 -0000\" uid 5 rfc822.size 0)", &m) == 1);
	CHECK(m.uid == 5 && m.size == 0);
	CHECK(m.internaldate == 1580601600);
	CHECK(strcmp(m.flags, "") == 0);
	CHECK(strcmp(m.header, "Date: \"x\"") == 0 && m.header_len == 9);
	clear(&m);

	/* NIL header, no flags: empty strings. */
	CHECK(parse("* 3 FETCH (UID 9 BODY[HEADER.FIELDS (DATE)] NIL)", &m)
		== 1);
	CHECK(strcmp(m.header, "") == 0 && strcmp(m.flags, "") == 0);
	clear(&m);

	/* A flags update without UID: well formed, nothing kept. */
	CHECK(parse("* 3 FETCH (FLAGS (\\Seen))", &m) == 0);

	/* Unknown items of every shape are skipped. */
	CHECK(parse("* 1 FETCH (X-GM-LABELS (\"a b\" c {3}\r\nxyz) "
		"X-THING NIL UID 2 BODY[TEXT]<0> {2}\r\nab)", &m) == 1);
	CHECK(m.uid == 2);
	clear(&m);

	/* A bad date is 0, not a failure. */
	CHECK(parse("* 1 FETCH (UID 2 INTERNALDATE \"yesterday\")", &m) == 1);
	CHECK(m.internaldate == 0);
	clear(&m);

	/* The largest size a file can have. */
	CHECK(parse("* 1 FETCH (UID 2 RFC822.SIZE 9223372036854775807)", &m)
		== 1);
	CHECK(m.size == INT64_MAX);
	clear(&m);
}

static void test_malformed(void)
{
	static const char *const bad[] = {
		"",
		"* 1 FETCH",
		"* 1 FETCH (UID 1",
		"* 1 FETCH (UID)",
		"* 1 FETCH (UID 0)",
		"* 1 FETCH (UID 4294967296)",
		"* 1 FETCH (UID 99999999999999999999999)",
		/* larger than any file can be (off_t) */
		"* 1 FETCH (UID 1 RFC822.SIZE 9223372036854775808)",
		"* 1 FETCH (UID 1 RFC822.SIZE 18446744073709551615)",
		"* 1 FETCH (UID 1 FLAGS (\\Seen)",
		"* 1 FETCH (UID 1 FLAGS (\\))",
		"* 1 FETCH (UID 1 FLAGS \\Seen)",
		"* 1 FETCH (UID 1 INTERNALDATE 5)",
		"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (DATE)] {10}\r\nab)",
		"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (DATE)] {2}ab)",
		"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (DATE) {2}\r\nab)",
		"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (DATE)] \"open)",
		"* 1 FETCH (UID 1 X (((((((((((((((((((((((((((((((((((("
		"((((((((((((((((((((((((((((((((((((((((((((((((((((((()",
		"* 1 FETCH (UID 1) trailing",
		"* 1 EXISTS",
	};
	struct backend_message m;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = parse(bad[i], &m);

		if (r != -1)
			fprintf(stderr, "accepted: %s\n", bad[i]);
		CHECK(r == -1);
		CHECK(m.flags == NULL && m.header == NULL);
	}
	/* A NUL inside the framed bytes is not the end. */
	CHECK(imap_meta_parse_fetch("* 1 FETCH (UID 1)\0junk", 22, &m) == -1);
}

/* ------------------------------------------------------------------ */
/* The whole command over a stream                                     */

/* Bytes of one response outside its literals, as in imap_meta_fetch.c. */
#define LINE_MAX_BYTES (1024u * 1024)
/* Longest wait on either end; a hang fails the test instead. */
#define WAIT_MS 10000
#define MAX_EXCHANGES 3

#define LISTING_ITEMS "(UID RFC822.SIZE INTERNALDATE FLAGS " \
	"BODY.PEEK[HEADER.FIELDS (DATE SUBJECT MESSAGE-ID FROM)])"
#define HDR_ITEM "BODY[HEADER.FIELDS (DATE SUBJECT MESSAGE-ID FROM)]"

static const size_t chop_mixed[] = { 1, 2, 7 };

static void *xrealloc(void *p, size_t size)
{
	p = realloc(p, size);
	if (!p) {
		perror("realloc");
		exit(2);
	}
	return p;
}

/* What the server sends for one command, and where to cut it into pieces
 * that reach the client in reads of their own. */
struct script {
	char *buf;
	size_t len, cap;
	size_t *cuts;
	size_t ncuts, cuts_cap;
	const char *eol;	/* "\r\n", or "\n" for a server of bare LFs */
};

static void sc_reserve(struct script *sc, size_t len)
{
	if (sc->cap - sc->len >= len)
		return;
	while (sc->cap - sc->len < len)
		sc->cap = sc->cap ? sc->cap * 2 : 4096;
	sc->buf = xrealloc(sc->buf, sc->cap);
}

static void sc_add(struct script *sc, const void *data, size_t len)
{
	sc_reserve(sc, len);
	memcpy(sc->buf + sc->len, data, len);
	sc->len += len;
}

static void sc_fill(struct script *sc, char ch, size_t len)
{
	sc_reserve(sc, len);
	memset(sc->buf + sc->len, ch, len);
	sc->len += len;
}

static void sc_str(struct script *sc, const char *s)
{
	sc_add(sc, s, strlen(s));
}

static void sc_line(struct script *sc, const char *s)
{
	sc_str(sc, s);
	sc_str(sc, sc->eol);
}

/* "{len}", the line end, then the len bytes. */
static void sc_lit(struct script *sc, const char *data, size_t len)
{
	char marker[32];

	snprintf(marker, sizeof(marker), "{%zu}%s", len, sc->eol);
	sc_str(sc, marker);
	sc_add(sc, data, len);
}

static void sc_cut_at(struct script *sc, size_t at)
{
	if (sc->ncuts == sc->cuts_cap) {
		sc->cuts_cap = sc->cuts_cap ? sc->cuts_cap * 2 : 64;
		sc->cuts = xrealloc(sc->cuts, sc->cuts_cap * sizeof(*sc->cuts));
	}
	sc->cuts[sc->ncuts++] = at;
}

static void sc_cut(struct script *sc)
{
	sc_cut_at(sc, sc->len);
}

/* Cuts what the script holds so far into pieces of sizes[0], sizes[1],
 * ... in turn. */
static void sc_chop(struct script *sc, const size_t *sizes, size_t n)
{
	size_t at = 0;

	for (size_t i = 0;; i++) {
		at += sizes[i % n];
		if (at >= sc->len)
			break;
		sc_cut_at(sc, at);
	}
}

static int cmp_size(const void *a, const void *b)
{
	size_t x = *(const size_t *)a, y = *(const size_t *)b;

	return x < y ? -1 : x > y;
}

struct exchange {
	char expect[256];	/* the command line the client must send */
	struct script sc;	/* the answer */
};

struct server {
	int fd;
	pthread_t thread;
	struct exchange ex[MAX_EXCHANGES];
	size_t nex;
	bool close_after;	/* close at the end, not when the client does */
	/* Filled in by the thread, checked once it has ended. */
	char got[MAX_EXCHANGES][256];
	bool stalled;		/* the client stopped reading or writing */
	size_t extra;		/* bytes the client sent past its commands */
};

static bool read_command(int fd, char *buf, size_t size)
{
	size_t len = 0;

	while (len + 1 < size) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		char ch;

		if (poll(&pfd, 1, WAIT_MS) != 1 || read(fd, &ch, 1) != 1)
			break;
		buf[len++] = ch;
		if (ch == '\n')
			break;
	}
	buf[len] = '\0';
	return len > 0 && buf[len - 1] == '\n';
}

static bool send_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t w = send(fd, p, len, MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return false;
		p += w;
		len -= (size_t)w;
	}
	return true;
}

/* Waits until the client has read all that was sent, so that the next
 * piece comes alone out of its next read: the socket would merge them. */
static bool wait_drained(int fd)
{
	for (int i = 0; i < WAIT_MS * 20; i++) {
		int queued;

		/* Without SIOCOUTQ, a pause does it nearly always. */
		if (ioctl(fd, SIOCOUTQ, &queued) != 0) {
			usleep(2000);
			return true;
		}
		if (queued == 0)
			return true;
		usleep(50);
	}
	return false;
}

static void *server_main(void *arg)
{
	struct server *sv = arg;

	for (size_t e = 0; e < sv->nex; e++) {
		const struct script *sc = &sv->ex[e].sc;
		size_t from = 0;

		if (!read_command(sv->fd, sv->got[e], sizeof(sv->got[e]))) {
			sv->stalled = true;
			goto out;
		}
		for (size_t i = 0; i <= sc->ncuts; i++) {
			size_t to = i < sc->ncuts ? sc->cuts[i] : sc->len;

			if (to <= from || to > sc->len)
				continue;
			/* A client that has given up may have closed. */
			if (!send_all(sv->fd, sc->buf + from, to - from))
				goto out;
			if (to < sc->len && !wait_drained(sv->fd)) {
				sv->stalled = true;
				goto out;
			}
			from = to;
		}
	}
	/* Unless told to close, hold the connection until the client closes
	 * it: reading past the answer then hangs instead of failing at end of
	 * file. */
	while (!sv->close_after) {
		struct pollfd pfd = { .fd = sv->fd, .events = POLLIN };
		char buf[256];
		ssize_t got;

		if (poll(&pfd, 1, WAIT_MS) != 1) {
			sv->stalled = true;
			break;
		}
		got = read(sv->fd, buf, sizeof(buf));
		if (got <= 0)
			break;
		sv->extra += (size_t)got;
	}
out:
	close(sv->fd);
	return NULL;
}

/* A selected session on one end of a socketpair, the server on the other. */
struct conn {
	mailimap *imap;
	struct imap_session s;
	struct server sv;
	bool no_server;		/* the other end closed at once */
};

/* first_tag: the tag of the first command.  Add the exchanges, then call
 * conn_start. */
static void conn_init(struct conn *c, int first_tag)
{
	memset(c, 0, sizeof(*c));
	c->imap = mailimap_new(0, NULL);
	if (!c->imap)
		exit(2);
	c->imap->imap_tag = first_tag - 1;
	c->imap->imap_state = MAILIMAP_STATE_SELECTED;
	c->s.imap = c->imap;
}

static struct script *conn_exchange(struct conn *c, const char *expect,
	const char *eol)
{
	struct exchange *ex;

	if (c->sv.nex == MAX_EXCHANGES)
		abort();
	ex = &c->sv.ex[c->sv.nex++];
	snprintf(ex->expect, sizeof(ex->expect), "%s", expect);
	ex->sc.eol = eol;
	return &ex->sc;
}

static void conn_start(struct conn *c)
{
	int sp[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0) {
		perror("socketpair");
		exit(2);
	}
	c->imap->imap_stream = mailstream_socket_open(sp[0]);
	if (!c->imap->imap_stream)
		exit(2);
	mailstream_low_set_timeout(mailstream_get_low(c->imap->imap_stream),
		WAIT_MS / 1000);
	c->sv.fd = sp[1];
	if (c->no_server) {
		close(sp[1]);
		return;
	}
	for (size_t e = 0; e < c->sv.nex; e++) {
		struct script *sc = &c->sv.ex[e].sc;

		if (sc->ncuts)
			qsort(sc->cuts, sc->ncuts, sizeof(*sc->cuts), cmp_size);
	}
	if (pthread_create(&c->sv.thread, NULL, server_main, &c->sv) != 0)
		exit(2);
}

/* Closes the client's end (not LOGOUT, which would wait for an answer),
 * waits for the server and checks what it saw. */
static void conn_finish(struct conn *c, const char *what)
{
	mailstream_close(c->imap->imap_stream);
	c->imap->imap_stream = NULL;
	if (!c->no_server)
		pthread_join(c->sv.thread, NULL);
	mailimap_free(c->imap);
	for (size_t e = 0; e < c->sv.nex; e++) {
		CHECK(strcmp(c->sv.got[e], c->sv.ex[e].expect) == 0,
			"%s: sent \"%s\"", what, c->sv.got[e]);
		free(c->sv.ex[e].sc.buf);
		free(c->sv.ex[e].sc.cuts);
	}
	CHECK(!c->sv.stalled, "%s", what);
	CHECK(c->sv.extra == 0, "%s: %zu bytes more", what, c->sv.extra);
}

struct result {
	enum backend_status st;
	const char *error;
	struct backend_message *msgs;
	size_t n;
	double seconds;
};

static void run_fetch(struct conn *c, const struct imap_meta_query *q,
	struct result *r)
{
	struct timespec t0, t1;

	r->error = NULL;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	r->st = imap_meta_fetch(&c->s, "INBOX", q, &r->msgs, &r->n,
		&r->error);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	r->seconds = (double)(t1.tv_sec - t0.tv_sec) +
		(double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	if (!r->error)
		r->error = "";
}

static bool buffered_is(struct conn *c, const char *want)
{
	mailstream *st = c->imap->imap_stream;

	return st->read_buffer_len == strlen(want) &&
		memcmp(st->read_buffer, want, st->read_buffer_len) == 0;
}

struct want {
	uint32_t uid;
	uint64_t size;
	int64_t date;
	const char *flags;
	const char *header;
};

static void check_msgs(const struct result *r, const struct want *w,
	size_t nw, const char *what)
{
	CHECK(r->n == nw, "%s: %zu messages", what, r->n);
	for (size_t i = 0; i < r->n && i < nw; i++) {
		const struct backend_message *m = &r->msgs[i];
		size_t hl = strlen(w[i].header);

		CHECK(m->uid == w[i].uid, "%s: [%zu] uid %u", what, i, m->uid);
		CHECK(m->size == w[i].size, "%s: [%zu]", what, i);
		CHECK(m->internaldate == w[i].date, "%s: [%zu]", what, i);
		CHECK(m->flags && strcmp(m->flags, w[i].flags) == 0,
			"%s: [%zu] flags %s", what, i, m->flags);
		CHECK(m->header && m->header_len == hl &&
			memcmp(m->header, w[i].header, hl) == 0 &&
			m->header[hl] == '\0', "%s: [%zu] header", what, i);
	}
}

/* A header literal holding a line that looks like the tagged answer and
 * ending like a literal marker. */
static const char listing_header[] = "Subject: a\r\n1 OK no\r\nX: {3}\r\n";

static const struct want listing[] = {
	{ 17, 3985, 1704179864, "\\Seen", listing_header },
	{ 18, 10, 1580601600, "", "" },
	{ 25, 7, 0, "\\Answered kw", "Date: 1" },
};

/* Three messages among untagged responses of other kinds and a FETCH
 * without UID, the first with its header as a literal, the second with
 * an empty one. */
static void listing_script(struct script *sc)
{
	sc_line(sc, "* 3 EXISTS");
	sc_str(sc, "* 1 FETCH (UID 17 RFC822.SIZE 3985 INTERNALDATE "
		"\"02-Jan-2024 08:17:44 +0100\" FLAGS (\\Seen \\Recent) "
		HDR_ITEM " ");
	sc_lit(sc, listing_header, strlen(listing_header));
	sc_line(sc, ")");
	sc_line(sc, "* 2 EXPUNGE");
	sc_line(sc, "* 2 FETCH (FLAGS (\\Deleted))");
	sc_line(sc, "* OK [HIGHESTMODSEQ 9] still here");
	sc_str(sc, "* 2 FETCH (UID 18 RFC822.SIZE 10 INTERNALDATE "
		"\" 2-Feb-2020 00:00:00 -0000\" FLAGS () " HDR_ITEM " ");
	sc_lit(sc, "", 0);
	sc_line(sc, ")");
	sc_line(sc, "* 3 FETCH (UID 25 RFC822.SIZE 7 FLAGS (\\Answered kw) "
		HDR_ITEM " \"Date: 1\")");
	sc_line(sc, "* 4 RECENT");
	sc_line(sc, "1 OK Fetch completed.");
}

struct listing_run {
	const char *eol;
	const size_t *sizes;	/* chop pattern, or NULL */
	size_t nsizes;
	size_t cut;		/* one more cut, or 0 */
	struct imap_meta_query q;
	const char *expect;
	const struct want *want;
	size_t nwant;
};

static void run_listing(const struct listing_run *lr, const char *what)
{
	struct conn c;
	struct result r = { 0 };
	struct script *sc;

	conn_init(&c, 1);
	sc = conn_exchange(&c, lr->expect, lr->eol);
	listing_script(sc);
	if (lr->sizes)
		sc_chop(sc, lr->sizes, lr->nsizes);
	if (lr->cut)
		sc_cut_at(sc, lr->cut);
	conn_start(&c);
	run_fetch(&c, &lr->q, &r);
	CHECK(r.st == BACKEND_OK, "%s: %d %s", what, r.st, r.error);
	CHECK(!imap_session_broken(&c.s), "%s", what);
	CHECK(c.imap->imap_tag == 1, "%s", what);
	CHECK(buffered_is(&c, ""), "%s", what);
	check_msgs(&r, lr->want, lr->nwant, what);
	backend_messages_free(&r.msgs, r.n);
	conn_finish(&c, what);
}

/* The listing whole, in pieces of every small size, and cut in two at
 * every byte: inside each "{N}\r\n", between CR and LF, inside the
 * literals; with CRLF and with bare LF line ends. */
static void test_listing_framing(void)
{
	static const size_t ones[] = { 1 }, twos[] = { 2 }, sevens[] = { 7 },
		backwards[] = { 7, 2, 1 };
	static const struct {
		const size_t *sizes;
		size_t n;
	} chops[] = {
		{ NULL, 0 }, { ones, 1 }, { twos, 1 }, { sevens, 1 },
		{ chop_mixed, 3 }, { backwards, 3 },
	};
	static const char *const eols[] = { "\r\n", "\n" };

	for (size_t e = 0; e < 2; e++) {
		struct listing_run lr = {
			.eol = eols[e],
			.q = { .first = 1 },
			.expect = "1 UID FETCH 1:* " LISTING_ITEMS "\r\n",
			.want = listing,
			.nwant = 3,
		};
		struct script probe = { .eol = eols[e] };
		char what[64];

		for (size_t i = 0; i < sizeof(chops) / sizeof(chops[0]); i++) {
			lr.sizes = chops[i].sizes;
			lr.nsizes = chops[i].n;
			snprintf(what, sizeof(what), "%s chop %zu",
				e ? "lf" : "crlf", i);
			run_listing(&lr, what);
		}
		lr.sizes = NULL;
		listing_script(&probe);
		for (size_t cut = 1; cut < probe.len; cut++) {
			lr.cut = cut;
			snprintf(what, sizeof(what), "%s cut at %zu",
				e ? "lf" : "crlf", cut);
			run_listing(&lr, what);
		}
		free(probe.buf);
	}
}

/* min_uid/max_uid keep part of the answer; the UID set goes out as asked. */
static void test_listing_filter(void)
{
	struct listing_run lr = {
		.eol = "\r\n",
		.sizes = chop_mixed,
		.nsizes = 3,
		.q = { .first = 5, .last = 30, .min_uid = 18, .max_uid = 24 },
		.expect = "1 UID FETCH 5:30 " LISTING_ITEMS "\r\n",
		.want = listing + 1,
		.nwant = 1,
	};

	run_listing(&lr, "18..24");
	lr.q = (struct imap_meta_query){ .first = 18, .min_uid = 18 };
	lr.expect = "1 UID FETCH 18:* " LISTING_ITEMS "\r\n";
	lr.nwant = 2;
	run_listing(&lr, "18..");
	lr.q = (struct imap_meta_query){ .first = 1, .max_uid = 17 };
	lr.expect = "1 UID FETCH 1:* " LISTING_ITEMS "\r\n";
	lr.want = listing;
	lr.nwant = 1;
	run_listing(&lr, "..17");
}

static void test_flags_only(void)
{
	static const struct want want[] = {
		{ 4, 0, 0, "\\Seen", "" },
		{ 9, 0, 0, "", "" },
	};
	struct imap_meta_query q = {
		.first = 1, .last = 100, .flags_only = true,
		.changed_since = 12345,
	};
	struct conn c;
	struct result r = { 0 };
	struct script *sc;

	conn_init(&c, 7);
	sc = conn_exchange(&c, "7 UID FETCH 1:100 (UID FLAGS) "
		"(CHANGEDSINCE 12345)\r\n", "\r\n");
	sc_line(sc, "* 1 FETCH (UID 4 MODSEQ (12346) FLAGS (\\Seen))");
	sc_line(sc, "* 2 FETCH (FLAGS () UID 9 MODSEQ (12350))");
	sc_line(sc, "7 OK Conditional FETCH completed");
	sc_chop(sc, chop_mixed, 3);
	conn_start(&c);
	run_fetch(&c, &q, &r);
	CHECK(r.st == BACKEND_OK && !imap_session_broken(&c.s), "%s", r.error);
	check_msgs(&r, want, 2, "flags only");
	backend_messages_free(&r.msgs, r.n);
	conn_finish(&c, "flags only");
}

/* What follows the tagged answer in the same read goes back to libetpan's
 * buffer, where the next command, ours or libetpan's, finds it. */
static void test_bytes_after_answer(void)
{
	static const char unsolicited[] =
		"* 9 FETCH (UID 99 FLAGS (\\Seen))\r\n";
	struct imap_meta_query q = { .first = 1, .flags_only = true };
	struct conn c;
	struct result r = { 0 };
	struct script *sc;

	conn_init(&c, 1);
	/* The tagged OK begins in one read and ends in the next. */
	sc = conn_exchange(&c, "1 UID FETCH 1:* (UID FLAGS)\r\n", "\r\n");
	sc_str(sc, "* 1 FETCH (UID 3 FLAGS ())\r\n1 O");
	sc_cut(sc);
	sc_str(sc, "K done\r\n");
	sc_str(sc, unsolicited);
	sc = conn_exchange(&c, "2 UID FETCH 1:* (UID FLAGS)\r\n", "\r\n");
	sc_str(sc, "2 OK done\r\n* 5 EXISTS\r\n");
	sc = conn_exchange(&c, "3 NOOP\r\n", "\r\n");
	sc_str(sc, "3 OK NOOP completed\r\n");
	conn_start(&c);
	c.imap->imap_selection_info = mailimap_selection_info_new();

	run_fetch(&c, &q, &r);
	CHECK(r.st == BACKEND_OK && !imap_session_broken(&c.s), "%s", r.error);
	CHECK(r.n == 1 && r.msgs[0].uid == 3);
	CHECK(buffered_is(&c, unsolicited));

	run_fetch(&c, &q, &r);
	CHECK(r.st == BACKEND_OK && !imap_session_broken(&c.s), "%s", r.error);
	CHECK(r.n == 2 && r.msgs[1].uid == 99 &&
		strcmp(r.msgs[1].flags, "\\Seen") == 0);
	CHECK(buffered_is(&c, "* 5 EXISTS\r\n"));

	CHECK(c.imap->imap_selection_info != NULL &&
		mailimap_noop(c.imap) == MAILIMAP_NO_ERROR);
	CHECK(c.imap->imap_selection_info != NULL &&
		c.imap->imap_selection_info->sel_exists == 5);
	CHECK(buffered_is(&c, ""));
	backend_messages_free(&r.msgs, r.n);
	conn_finish(&c, "bytes after answer");
}

/* A header literal over IMAP_META_HEADER_MAX is cut to it, one of exactly
 * that size is kept whole, and the responses after them still count. */
static void test_big_header(void)
{
	const size_t max = IMAP_META_HEADER_MAX, big = max + 1000;
	struct imap_meta_query q = { .first = 1 };
	char *data = malloc(big), marker[32];
	struct conn c;
	struct result r = { 0 };
	struct script *sc;
	size_t start;
	int ml;

	if (!data)
		exit(2);
	for (size_t i = 0; i < big; i++)
		data[i] = (char)('a' + (i * 7 + i / 26) % 26);
	conn_init(&c, 1);
	sc = conn_exchange(&c, "1 UID FETCH 1:* " LISTING_ITEMS "\r\n", "\r\n");
	sc_str(sc, "* 1 FETCH (UID 5 RFC822.SIZE 999999 " HDR_ITEM " ");
	/* Cut inside the count, between CR and LF, right after the marker
	 * and around where keeping stops. */
	ml = snprintf(marker, sizeof(marker), "{%zu}\r\n", big);
	sc_add(sc, marker, 3);
	sc_cut(sc);
	sc_add(sc, marker + 3, (size_t)ml - 4);
	sc_cut(sc);
	sc_add(sc, marker + ml - 1, 1);
	start = sc->len;
	sc_add(sc, data, big);
	sc_cut_at(sc, start);
	sc_cut_at(sc, start + 1);
	sc_cut_at(sc, start + max - 1);
	sc_cut_at(sc, start + max);
	sc_cut_at(sc, start + max + 1);
	sc_cut_at(sc, start + big - 1);
	sc_line(sc, ")");
	sc_str(sc, "* 2 FETCH (UID 6 " HDR_ITEM " ");
	ml = snprintf(marker, sizeof(marker), "{%zu}\r\n", max);
	sc_add(sc, marker, (size_t)ml - 1);
	sc_cut(sc);
	sc_add(sc, "\n", 1);
	start = sc->len;
	sc_add(sc, data, max);
	sc_cut_at(sc, start + max - 1);
	sc_line(sc, " FLAGS (\\Draft))");
	sc_line(sc, "* 3 FETCH (UID 7 FLAGS (\\Seen))");
	sc_line(sc, "1 OK done");
	conn_start(&c);
	run_fetch(&c, &q, &r);
	CHECK(r.st == BACKEND_OK && !imap_session_broken(&c.s), "%s", r.error);
	CHECK(r.n == 3);
	if (r.n == 3) {
		CHECK(r.msgs[0].uid == 5 && r.msgs[0].size == 999999);
		CHECK(r.msgs[0].header_len == max &&
			memcmp(r.msgs[0].header, data, max) == 0 &&
			r.msgs[0].header[max] == '\0');
		CHECK(r.msgs[1].uid == 6 && r.msgs[1].header_len == max &&
			memcmp(r.msgs[1].header, data, max) == 0 &&
			strcmp(r.msgs[1].flags, "\\Draft") == 0);
		CHECK(r.msgs[2].uid == 7 &&
			strcmp(r.msgs[2].flags, "\\Seen") == 0);
	}
	backend_messages_free(&r.msgs, r.n);
	conn_finish(&c, "big header");
	free(data);
}

/* A literal of exactly IMAP_META_LITERAL_MAX is read (and dropped past
 * what is kept). */
static void test_literal_at_limit(void)
{
	static const struct want want[] = { { 8, 0, 0, "\\Seen", "" } };
	struct imap_meta_query q = { .first = 1 };
	struct conn c;
	struct result r = { 0 };
	struct script *sc;

	conn_init(&c, 1);
	sc = conn_exchange(&c, "1 UID FETCH 1:* " LISTING_ITEMS "\r\n", "\r\n");
	sc_str(sc, "* 1 FETCH (UID 8 BODY[TEXT] {67108864}\r\n");
	sc_fill(sc, 'x', IMAP_META_LITERAL_MAX);
	sc_line(sc, " FLAGS (\\Seen))");
	sc_line(sc, "1 OK done");
	conn_start(&c);
	run_fetch(&c, &q, &r);
	CHECK(r.st == BACKEND_OK && !imap_session_broken(&c.s), "%s", r.error);
	check_msgs(&r, want, 1, "literal at limit");
	backend_messages_free(&r.msgs, r.n);
	conn_finish(&c, "literal at limit");
}

/* Announced over the limit: refused at once, nothing of it read (the
 * server holds the connection open and sends only its first bytes). */
static void test_literal_over_limit(void)
{
	static const char *const counts[] = {
		"67108865", "9999999999999999999", "99999999999999999999",
	};
	struct imap_meta_query q = { .first = 1 };

	for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
		struct conn c;
		struct result r = { 0 };
		struct script *sc;

		conn_init(&c, 1);
		sc = conn_exchange(&c, "1 UID FETCH 1:* " LISTING_ITEMS "\r\n",
			"\r\n");
		sc_line(sc, "* 1 FETCH (UID 2 FLAGS ())");
		sc_str(sc, "* 2 FETCH (UID 3 " HDR_ITEM " {");
		sc_add(sc, counts[i], 3);
		sc_cut(sc);
		sc_str(sc, counts[i] + 3);
		sc_str(sc, "}\r\n");
		sc_cut(sc);
		sc_str(sc, "Date: x");
		conn_start(&c);
		run_fetch(&c, &q, &r);
		CHECK(r.st == BACKEND_PROTOCOL && imap_session_broken(&c.s),
			"{%s}: %d %s", counts[i], r.st, r.error);
		CHECK(r.seconds < WAIT_MS / 2000.0, "{%s}: %.1f s", counts[i],
			r.seconds);
		CHECK(r.n == 1 && r.msgs[0].uid == 2);
		backend_messages_free(&r.msgs, r.n);
		conn_finish(&c, counts[i]);
	}
}

/* A response of exactly the limit outside literals, line end included,
 * is read; one byte more without a line end is refused. */
static void test_long_line(void)
{
	static const size_t big_pieces[] = { 65536 };
	struct imap_meta_query q = { .first = 1 };
	struct conn c;
	struct result r = { 0 };
	struct script *sc;

	conn_init(&c, 1);
	sc = conn_exchange(&c, "1 UID FETCH 1:* " LISTING_ITEMS "\r\n", "\r\n");
	sc_str(sc, "* OK ");
	sc_fill(sc, 'a', LINE_MAX_BYTES - 7);
	sc_str(sc, "\r\n");
	sc_line(sc, "1 OK done");
	sc_chop(sc, big_pieces, 1);
	conn_start(&c);
	run_fetch(&c, &q, &r);
	CHECK(r.st == BACKEND_OK && !imap_session_broken(&c.s) && r.n == 0,
		"%s", r.error);
	conn_finish(&c, "line at limit");

	conn_init(&c, 1);
	sc = conn_exchange(&c, "1 UID FETCH 1:* " LISTING_ITEMS "\r\n", "\r\n");
	sc_str(sc, "* OK ");
	sc_fill(sc, 'a', LINE_MAX_BYTES - 4);
	sc_chop(sc, big_pieces, 1);
	conn_start(&c);
	run_fetch(&c, &q, &r);
	CHECK(r.st == BACKEND_PROTOCOL && imap_session_broken(&c.s), "%d %s",
		r.st, r.error);
	CHECK(strstr(r.error, "too long") != NULL, "%s", r.error);
	CHECK(r.n == 0);
	conn_finish(&c, "line over limit");
}

/* How the command ends after one good message. */
static void test_endings(void)
{
	static const struct {
		int tag;
		const char *answer;
		enum backend_status st;
		bool broken, close_after;
		const char *words;	/* in the error */
		const char *left;	/* left in the stream's buffer */
	} endings[] = {
		{ 1, "1 OK\r\n* 5 EXISTS\r\n", BACKEND_OK, false, false, "",
		  "* 5 EXISTS\r\n" },
		{ 1, "1 NO [SERVERBUG] Some\001thing\tbad\r\n* 5 EXISTS\r\n",
		  BACKEND_REFUSED, false, false,
		  "UID FETCH in INBOX: refused: NO [SERVERBUG] Some?thing?bad",
		  "* 5 EXISTS\r\n" },
		{ 1, "1 BAD [PARSE] nope\r\n", BACKEND_PROTOCOL, true, false,
		  "protocol error: BAD [PARSE] nope", NULL },
		{ 4, "42 OK done\r\n", BACKEND_PROTOCOL, true, false,
		  "unexpected answer: 42 OK done", NULL },
		{ 1, "2 OK done\r\n", BACKEND_PROTOCOL, true, false,
		  "unexpected answer: 2 OK done", NULL },
		{ 1, "+ go ahead\r\n", BACKEND_PROTOCOL, true, false,
		  "unexpected answer: + go ahead", NULL },
		{ 1, "* BYE Server shutting down\r\n", BACKEND_TEMP, true,
		  false,
		  "closed the connection: BYE Server shutting down", NULL },
		{ 1, "* 2 FETCH (UID 2 FLAGS (\\Seen)\r\n1 OK done\r\n",
		  BACKEND_PROTOCOL, true, false, "malformed FETCH response",
		  NULL },
		{ 1, "* 2 FETCH (UID 2 " HDR_ITEM " {50}\r\nDate: x",
		  BACKEND_TEMP, true, true, "UID FETCH in INBOX", NULL },
		{ 1, "1 O", BACKEND_TEMP, true, true, "UID FETCH in INBOX",
		  NULL },
	};
	struct imap_meta_query q = { .first = 1, .flags_only = true };

	for (size_t i = 0; i < sizeof(endings) / sizeof(endings[0]); i++) {
		struct conn c;
		struct result r = { 0 };
		struct script *sc;
		char expect[64], what[32];

		snprintf(what, sizeof(what), "ending %zu", i);
		snprintf(expect, sizeof(expect),
			"%d UID FETCH 1:* (UID FLAGS)\r\n", endings[i].tag);
		conn_init(&c, endings[i].tag);
		c.sv.close_after = endings[i].close_after;
		sc = conn_exchange(&c, expect, "\r\n");
		sc_line(sc, "* 1 FETCH (UID 3 FLAGS (\\Flagged))");
		sc_chop(sc, chop_mixed, 3);
		sc_cut(sc);
		/* The answer in one piece: the client may stop reading
		 * inside it. */
		sc_str(sc, endings[i].answer);
		conn_start(&c);
		run_fetch(&c, &q, &r);
		CHECK(r.st == endings[i].st, "%s: %d %s", what, r.st, r.error);
		CHECK(imap_session_broken(&c.s) == endings[i].broken, "%s", what);
		CHECK(strstr(r.error, endings[i].words) != NULL, "%s: %s",
			what, r.error);
		if (endings[i].left)
			CHECK(buffered_is(&c, endings[i].left), "%s", what);
		CHECK(r.seconds < WAIT_MS / 2000.0, "%s: %.1f s", what,
			r.seconds);
		CHECK(r.n == 1 && r.msgs[0].uid == 3 &&
			strcmp(r.msgs[0].flags, "\\Flagged") == 0, "%s", what);
		backend_messages_free(&r.msgs, r.n);
		conn_finish(&c, what);
	}
}

/* The command cannot be sent. */
static void test_peer_gone(void)
{
	struct imap_meta_query q = { .first = 1 };
	struct conn c;
	struct result r = { 0 };

	conn_init(&c, 1);
	c.no_server = true;
	conn_start(&c);
	run_fetch(&c, &q, &r);
	CHECK(r.st == BACKEND_TEMP && imap_session_broken(&c.s), "%d %s",
		r.st, r.error);
	CHECK(r.n == 0 && r.msgs == NULL);
	conn_finish(&c, "peer gone");
}

int main(void)
{
	/* Writes to a closed peer fail instead of killing the test. */
	signal(SIGPIPE, SIG_IGN);
	test_dovecot_listing();
	test_variants();
	test_malformed();
	test_listing_framing();
	test_listing_filter();
	test_flags_only();
	test_bytes_after_answer();
	test_big_header();
	test_literal_at_limit();
	test_literal_over_limit();
	test_long_line();
	test_endings();
	test_peer_gone();
	return check_summary("imap_meta_fetch");
}
