/* The listing FETCH, framed and parsed without libetpan's response tree. */
#include "proto/imap_meta_fetch.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "proto/imap_syntax.h"
#include "proto/mail_conn.h"
#include "proto/net_stream.h"
#include "src/errfmt.h"

/* Bytes of one response outside its literals (a long FLAGS list, say). */
#define LINE_MAX_BYTES (1024u * 1024)
/* Literals in one response: the listing asks for one (the header
 * fields); each is kept up to IMAP_META_HEADER_MAX bytes. */
#define LITERALS_MAX 4
#define FLAGS_MAX 4096

/* ------------------------------------------------------------------ */
/* Parsing one response in place                                       */

struct cursor {
	const char *p, *end;
};

static bool at_end(const struct cursor *c)
{
	return c->p >= c->end;
}

static bool peek_is(const struct cursor *c, char ch)
{
	return c->p < c->end && *c->p == ch;
}

static bool eat(struct cursor *c, char ch)
{
	if (!peek_is(c, ch))
		return false;
	c->p++;
	return true;
}

/* An atom (or a "\Flag": a backslash then atom characters); returns its
 * length, 0 if none. */
static size_t take_atom(struct cursor *c, const char **start_r)
{
	const char *s = c->p;

	if (peek_is(c, '\\'))
		c->p++;
	while (!at_end(c) && imap_atom_char((unsigned char)*c->p))
		c->p++;
	*start_r = s;
	return (size_t)(c->p - s);
}

static bool take_number(struct cursor *c, uint64_t *v_r)
{
	uint64_t v = 0;
	const char *s = c->p;

	while (!at_end(c) && *c->p >= '0' && *c->p <= '9') {
		if (v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(*c->p - '0');
		c->p++;
	}
	*v_r = v;
	return c->p > s;
}

/* A literal as framed by read_response: "{len}\r\n" then len bytes. */
static bool take_literal(struct cursor *c, const char **data_r,
	size_t *len_r)
{
	uint64_t len;

	if (!eat(c, '{') || !take_number(c, &len) || !eat(c, '}') ||
	    !eat(c, '\r') || !eat(c, '\n') ||
	    len > (uint64_t)(c->end - c->p))
		return false;
	*data_r = c->p;
	*len_r = (size_t)len;
	c->p += len;
	return true;
}

/* A quoted string; *data_r and *len_r span it with its escapes still in. */
static bool take_quoted(struct cursor *c, const char **data_r,
	size_t *len_r)
{
	const char *s;

	if (!eat(c, '"'))
		return false;
	s = c->p;
	while (!at_end(c) && *c->p != '"') {
		if (*c->p == '\r' || *c->p == '\n')
			return false;
		if (*c->p == '\\') {
			c->p++;
			if (at_end(c))
				return false;
		}
		c->p++;
	}
	if (!eat(c, '"'))
		return false;
	*data_r = s;
	*len_r = (size_t)(c->p - 1 - s);
	return true;
}

/* Skips any value: atom, number, NIL, quoted, literal or a parenthesised
 * list of values (nesting bounded). */
static bool skip_value(struct cursor *c, int depth)
{
	const char *d;
	size_t len;

	if (depth > 32 || at_end(c))
		return false;
	if (*c->p == '"')
		return take_quoted(c, &d, &len);
	if (*c->p == '{')
		return take_literal(c, &d, &len);
	if (eat(c, '(')) {
		while (!eat(c, ')')) {
			if (!skip_value(c, depth + 1))
				return false;
			if (!peek_is(c, ')') && !eat(c, ' '))
				return false;
		}
		return true;
	}
	/* Atoms here may carry a section ("BODY[...]") in rare answers. */
	const char *s = c->p;

	while (!at_end(c) && (imap_atom_char((unsigned char)*c->p) ||
	       *c->p == '\\' || *c->p == '*' || *c->p == '%' || *c->p == ']'))
		c->p++;
	return c->p > s;
}

/* An FETCH attribute name, including a section ("BODY[HEADER.FIELDS
 * (DATE)]", spaces and all) and a partial origin ("<0>"). */
static size_t take_att_name(struct cursor *c, const char **start_r)
{
	const char *s = c->p;

	while (!at_end(c) && imap_atom_char((unsigned char)*c->p) && *c->p != '[')
		c->p++;
	if (eat(c, '[')) {
		while (!at_end(c) && *c->p != ']' && *c->p != '\r' &&
		       *c->p != '\n')
			c->p++;
		if (!eat(c, ']'))
			return 0;
		if (eat(c, '<')) {
			uint64_t origin;

			if (!take_number(c, &origin) || !eat(c, '>'))
				return 0;
		}
	}
	*start_r = s;
	return (size_t)(c->p - s);
}

static bool name_starts(const char *s, size_t len, const char *want)
{
	size_t wl = strlen(want);

	return len >= wl && strncasecmp(s, want, wl) == 0;
}

static int two_digits(const char *s)
{
	if (s[0] < '0' || s[0] > '9' || s[1] < '0' || s[1] > '9')
		return -1;
	return (s[0] - '0') * 10 + (s[1] - '0');
}

/* "dd-Mon-yyyy hh:mm:ss +zzzz" (day may be " d") to seconds since the
 * epoch; anything unparsable or out of range is 0, as a date the server
 * got wrong should not fail the listing. */
static int64_t internaldate_to_epoch(const char *s, size_t len)
{
	static const char months[] = "janfebmaraprmayjunjulaugsepoctnovdec";
	struct tm tm = { 0 };
	char day[2];
	int year, zone_h, zone_m, sign;

	if (len != 26 || s[2] != '-' || s[6] != '-' || s[11] != ' ' ||
	    s[14] != ':' || s[17] != ':' || s[20] != ' ' ||
	    (s[21] != '+' && s[21] != '-'))
		return 0;
	day[0] = s[0] == ' ' ? '0' : s[0];
	day[1] = s[1];
	tm.tm_mday = two_digits(day);
	tm.tm_mon = -1;
	for (int i = 0; i < 12; i++)
		if (strncasecmp(s + 3, months + 3 * i, 3) == 0)
			tm.tm_mon = i;
	year = two_digits(s + 7) * 100 + two_digits(s + 9);
	tm.tm_hour = two_digits(s + 12);
	tm.tm_min = two_digits(s + 15);
	tm.tm_sec = two_digits(s + 18);
	zone_h = two_digits(s + 22);
	zone_m = two_digits(s + 24);
	if (tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_mon < 0 ||
	    two_digits(s + 7) < 0 || two_digits(s + 9) < 0 || year < 1900 ||
	    tm.tm_hour < 0 || tm.tm_hour > 23 || tm.tm_min < 0 ||
	    tm.tm_min > 59 || tm.tm_sec < 0 || tm.tm_sec > 60)
		return 0;
	tm.tm_year = year - 1900;
	sign = s[21] == '-' ? -1 : 1;
	/* A zone beyond +-23:59 is garbage: take the time as UTC. */
	if (zone_h < 0 || zone_m < 0 || zone_h > 23 || zone_m > 59)
		zone_h = zone_m = 0;
	return (int64_t)timegm(&tm) - sign * (zone_h * 3600 + zone_m * 60);
}

/* FLAGS (...) into "\\Seen \\Flagged kw"; \Recent is per-session noise
 * and dropped, flags that do not fit FLAGS_MAX are dropped too. */
static char *parse_flags(struct cursor *c)
{
	char buf[FLAGS_MAX];
	size_t len = 0;

	if (!eat(c, '('))
		return NULL;
	while (!eat(c, ')')) {
		const char *f;
		size_t fl = take_atom(c, &f);

		if (fl == 0 || (fl == 1 && f[0] == '\\'))
			return NULL;
		if (!peek_is(c, ')') && !eat(c, ' '))
			return NULL;
		if (imap_word_is(f, fl, "\\Recent"))
			continue;
		if (len + (len ? 1 : 0) + fl >= sizeof(buf))
			continue;
		if (len)
			buf[len++] = ' ';
		memcpy(buf + len, f, fl);
		len += fl;
	}
	return strndup(buf, len);
}

/* The header section's nstring: a literal, a quoted string (unescaped)
 * or NIL (empty). */
static char *parse_header(struct cursor *c, size_t *len_r)
{
	const char *d;
	size_t len;
	char *out;

	if (peek_is(c, '{')) {
		if (!take_literal(c, &d, &len))
			return NULL;
		out = malloc(len + 1);
		if (out) {
			memcpy(out, d, len);
			out[len] = '\0';
			*len_r = len;
		}
		return out;
	}
	if (peek_is(c, '"')) {
		size_t k = 0;

		if (!take_quoted(c, &d, &len))
			return NULL;
		out = malloc(len + 1);
		if (!out)
			return NULL;
		for (size_t i = 0; i < len; i++) {
			if (d[i] == '\\')
				i++;
			out[k++] = d[i];
		}
		out[k] = '\0';
		*len_r = k;
		return out;
	}
	if (c->end - c->p >= 3 && strncasecmp(c->p, "NIL", 3) == 0) {
		c->p += 3;
		*len_r = 0;
		return strdup("");
	}
	return NULL;
}

static int parse_fail(struct backend_message *m)
{
	free(m->flags);
	free(m->header);
	memset(m, 0, sizeof(*m));
	return -1;
}

int imap_meta_parse_fetch(const char *resp, size_t len,
	struct backend_message *m)
{
	struct cursor c = { resp, resp + len };
	const char *name;
	uint64_t num;
	size_t nl;

	memset(m, 0, sizeof(*m));
	if (!eat(&c, '*') || !eat(&c, ' ') || !take_number(&c, &num) ||
	    !eat(&c, ' '))
		return -1;
	nl = take_att_name(&c, &name);
	if (!imap_word_is(name, nl, "FETCH") || !eat(&c, ' ') || !eat(&c, '('))
		return -1;
	while (!eat(&c, ')')) {
		nl = take_att_name(&c, &name);
		if (nl == 0 || !eat(&c, ' '))
			return parse_fail(m);
		if (imap_word_is(name, nl, "UID")) {
			if (!take_number(&c, &num) || num == 0 ||
			    num > UINT32_MAX)
				return parse_fail(m);
			m->uid = (uint32_t)num;
		} else if (imap_word_is(name, nl, "RFC822.SIZE")) {
			/* No file can be larger (off_t). */
			if (!take_number(&c, &num) || num > INT64_MAX)
				return parse_fail(m);
			m->size = num;
		} else if (imap_word_is(name, nl, "INTERNALDATE")) {
			const char *d;
			size_t dl;

			if (!take_quoted(&c, &d, &dl))
				return parse_fail(m);
			m->internaldate = internaldate_to_epoch(d, dl);
		} else if (imap_word_is(name, nl, "FLAGS")) {
			free(m->flags);
			m->flags = parse_flags(&c);
			if (!m->flags)
				return parse_fail(m);
		} else if (name_starts(name, nl, "BODY[HEADER.FIELDS") ||
			   name_starts(name, nl, "BODY[HEADER")) {
			free(m->header);
			m->header = parse_header(&c, &m->header_len);
			if (!m->header)
				return parse_fail(m);
		} else if (!skip_value(&c, 0)) {
			return parse_fail(m);
		}
		if (!peek_is(&c, ')') && !eat(&c, ' '))
			return parse_fail(m);
	}
	if (!at_end(&c))
		return parse_fail(m);
	if (!m->flags)
		m->flags = strdup("");
	if (!m->header) {
		m->header = strdup("");
		m->header_len = 0;
	}
	if (!m->flags || !m->header)
		return parse_fail(m);
	if (m->uid == 0) {
		parse_fail(m);
		return 0;
	}
	return 1;
}

/* ------------------------------------------------------------------ */
/* Framing responses off the stream                                    */

/* Bytes taken from the stream but not yet framed (a window: what was
 * read past the end of the command's answer goes back to the stream). */
struct reader {
	mailstream *st;
	char *buf;
	size_t pos, len, cap;
};

/* One framed response: its bytes (literals cut to what is kept, their
 * "{len}" rewritten to match) and the count outside literals. */
struct response {
	char *buf;
	size_t len, cap, line_bytes;
	size_t seg;             /* where the segment being read starts */
	bool in_quote;          /* it starts inside a quoted string */
	unsigned literals;
	const char *refused;    /* why, with READ_REFUSED */
};

enum read_result {
	READ_OK, READ_STREAM, READ_TOO_BIG, READ_NOMEM, READ_REFUSED
};

/* Moves what libetpan's stream buffer holds, or the next read from the
 * connection, into the window. */
static enum read_result reader_more(struct reader *r)
{
	mailstream *st = r->st;

	if (r->pos == r->len)
		r->pos = r->len = 0;
	if (st->read_buffer_len == 0) {
		ssize_t got = mailstream_low_read(st->low, st->read_buffer,
			st->buffer_max_size);

		if (got <= 0)
			return READ_STREAM;
		st->read_buffer_len = (size_t)got;
	}
	if (r->cap - r->len < st->read_buffer_len) {
		size_t cap = r->len + st->read_buffer_len;
		char *grown;

		if (r->pos > 0) {
			memmove(r->buf, r->buf + r->pos, r->len - r->pos);
			r->len -= r->pos;
			r->pos = 0;
		}
		if (r->cap - r->len < st->read_buffer_len) {
			grown = realloc(r->buf, cap);
			if (!grown)
				return READ_NOMEM;
			r->buf = grown;
			r->cap = cap;
		}
	}
	memcpy(r->buf + r->len, st->read_buffer, st->read_buffer_len);
	r->len += st->read_buffer_len;
	st->read_buffer_len = 0;
	return READ_OK;
}

/* Hands bytes read past the answer back to libetpan's stream buffer.
 * They came from the last read, which was at most its buffer size, and
 * the buffer was emptied then. */
static void reader_give_back(struct reader *r)
{
	size_t left = r->len - r->pos;

	if (left > 0 && r->st->read_buffer_len == 0 &&
	    left <= r->st->buffer_max_size) {
		memcpy(r->st->read_buffer, r->buf + r->pos, left);
		r->st->read_buffer_len = left;
	}
	r->pos = r->len = 0;
}

static bool resp_append(struct response *rp, const char *data, size_t len)
{
	if (len == 0)
		return true;
	if (rp->cap - rp->len < len + 1) {
		size_t cap = rp->cap ? rp->cap : 4096;
		char *grown;

		while (cap - rp->len < len + 1)
			cap *= 2;
		grown = realloc(rp->buf, cap);
		if (!grown)
			return false;
		rp->buf = grown;
		rp->cap = cap;
	}
	memcpy(rp->buf + rp->len, data, len);
	rp->len += len;
	rp->buf[rp->len] = '\0';
	return true;
}

/* Frames the segment of rp that a line end just completed the way the
 * stream guard does (imap_guard_segment), so that both agree on which
 * bytes are literal data: the guard checks only the others, and what is
 * read past this answer goes back to libetpan.  Returns NULL or why the
 * answer is refused; *seg_r says whether a literal follows (the marker
 * is then cut off) and how long it is. */
static const char *frame_segment(struct response *rp,
	struct imap_segment *seg_r)
{
	const char *why;

	why = imap_guard_segment(rp->buf + rp->seg, rp->len - 1 - rp->seg,
		rp->seg == 0, &rp->in_quote, seg_r);
	if (why == NULL && seg_r->literal)
		rp->len = rp->seg + seg_r->open;
	return why;
}

/* Frames the next whole response (up to its final line end, which is
 * dropped) into rp. */
static enum read_result read_response(struct reader *r, struct response *rp)
{
	rp->len = rp->line_bytes = rp->seg = 0;
	rp->in_quote = false;
	rp->literals = 0;
	for (;;) {
		enum read_result res;

		if (r->pos == r->len && (res = reader_more(r)) != READ_OK)
			return res;

		char *nl = memchr(r->buf + r->pos, '\n', r->len - r->pos);
		size_t take = nl ? (size_t)(nl - (r->buf + r->pos)) + 1 :
			r->len - r->pos;
		struct imap_segment seg;

		rp->line_bytes += take;
		if (rp->line_bytes > LINE_MAX_BYTES)
			return READ_TOO_BIG;
		if (!resp_append(rp, r->buf + r->pos, take))
			return READ_NOMEM;
		r->pos += take;
		if (!nl)
			continue;
		if ((rp->refused = frame_segment(rp, &seg)) != NULL)
			return READ_REFUSED;
		if (!seg.literal && rp->in_quote) {
			rp->seg = rp->len;      /* the string runs on */
			continue;
		}
		if (!seg.literal) {
			/* Complete: drop the line end. */
			rp->len--;
			if (rp->len > 0 && rp->buf[rp->len - 1] == '\r')
				rp->len--;
			rp->buf[rp->len] = '\0';
			return READ_OK;
		}
		if (++rp->literals > LITERALS_MAX)
			return READ_TOO_BIG;
		uint64_t lit = seg.size;
		if (lit > IMAP_META_LITERAL_MAX)
			return READ_TOO_BIG;
		size_t keep = lit < IMAP_META_HEADER_MAX ? (size_t)lit :
			IMAP_META_HEADER_MAX;
		char marker[32];
		int ml = snprintf(marker, sizeof(marker), "{%zu}\r\n", keep);

		if (!resp_append(rp, marker, (size_t)ml))
			return READ_NOMEM;
		while (lit > 0) {
			size_t avail = r->len - r->pos;
			size_t chunk = avail < lit ? avail : (size_t)lit;
			size_t kept = chunk < keep ? chunk : keep;

			if (chunk == 0) {
				if ((res = reader_more(r)) != READ_OK)
					return res;
				continue;
			}
			if (kept && !resp_append(rp, r->buf + r->pos, kept))
				return READ_NOMEM;
			keep -= kept;
			r->pos += chunk;
			lit -= chunk;
		}
		rp->seg = rp->len;
	}
}

/* ------------------------------------------------------------------ */
/* The command                                                         */

static enum backend_status send_command(struct imap_session *s,
	const struct imap_meta_query *q, char *tag, size_t tag_size)
{
	mailstream *st = s->imap->imap_stream;
	char cmd[256];
	int len;

	if (mailimap_send_current_tag(s->imap) != MAILIMAP_NO_ERROR)
		return BACKEND_TEMP;
	snprintf(tag, tag_size, "%d", s->imap->imap_tag);
	if (q->last)
		len = snprintf(cmd, sizeof(cmd), "UID FETCH %u:%u", q->first,
			q->last);
	else
		len = snprintf(cmd, sizeof(cmd), "UID FETCH %u:*", q->first);
	if (q->flags_only)
		len += snprintf(cmd + len, sizeof(cmd) - (size_t)len,
			" (UID FLAGS)");
	else
		len += snprintf(cmd + len, sizeof(cmd) - (size_t)len,
			" (UID RFC822.SIZE INTERNALDATE FLAGS "
			"BODY.PEEK[HEADER.FIELDS (DATE SUBJECT MESSAGE-ID "
			"FROM)])");
	if (q->changed_since)
		len += snprintf(cmd + len, sizeof(cmd) - (size_t)len,
			" (CHANGEDSINCE %llu)",
			(unsigned long long)q->changed_since);
	len += snprintf(cmd + len, sizeof(cmd) - (size_t)len, "\r\n");
	if (mailstream_write(st, cmd, (size_t)len) != len ||
	    mailstream_flush(st) == -1)
		return BACKEND_TEMP;
	return BACKEND_OK;
}

static bool append_message(struct backend_message **msgs, size_t *n,
	size_t *cap, const struct backend_message *m)
{
	if (*n + 1 >= *cap) {
		size_t want = *cap ? *cap * 2 : 256;
		struct backend_message *grown = realloc(*msgs,
			want * sizeof(**msgs));

		if (!grown)
			return false;
		*msgs = grown;
		*cap = want;
	}
	(*msgs)[(*n)++] = *m;
	return true;
}

/* "tag OK|NO|BAD text": the status of the command. */
static enum backend_status tagged_status(struct imap_session *s,
	const char *folder, const char *text, const char **error_r)
{
	char words[200];

	if (strncasecmp(text, "OK", 2) == 0 &&
	    (text[2] == ' ' || text[2] == '\0'))
		return BACKEND_OK;
	mail_copy_printable(words, sizeof(words), text, strlen(text));
	if (strncasecmp(text, "NO", 2) == 0 &&
	    (text[2] == ' ' || text[2] == '\0')) {
		*error_r = errfmt("UID FETCH in %s: refused: %s", folder, words);
		return BACKEND_REFUSED;
	}
	imap_session_set_state(s, IMAP_BROKEN);
	*error_r = errfmt("UID FETCH in %s: protocol error: %s", folder, words);
	return BACKEND_PROTOCOL;
}

enum backend_status imap_meta_fetch(struct imap_session *s,
	const char *folder, const struct imap_meta_query *q,
	struct backend_message **msgs, size_t *n, const char **error_r)
{
	struct reader r = { .st = s->imap->imap_stream };
	struct response rp = { 0 };
	enum backend_status st;
	size_t cap = *n, tag_len;
	char tag[24];

	/* Responses are handled one at a time here, not held whole. */
	imap_guard_streaming(&s->guard, true);
	st = send_command(s, q, tag, sizeof(tag));
	if (st != BACKEND_OK) {
		imap_guard_streaming(&s->guard, false);
		imap_session_set_state(s, IMAP_BROKEN);
		*error_r = errfmt("UID FETCH in %s: %s", folder,
			net_stream_last_error(r.st));
		return st;
	}
	tag_len = strlen(tag);
	for (;;) {
		enum read_result res = read_response(&r, &rp);
		struct backend_message m;

		if (res != READ_OK) {
			imap_session_set_state(s, IMAP_BROKEN);
			st = res == READ_NOMEM ? BACKEND_TEMP :
				res == READ_TOO_BIG || res == READ_REFUSED ?
				BACKEND_PROTOCOL : BACKEND_TEMP;
			*error_r = res == READ_STREAM ?
				errfmt("UID FETCH in %s: %s", folder,
					net_stream_last_error(r.st)) :
				res == READ_NOMEM ? "out of memory" :
				res == READ_REFUSED ?
				errfmt("UID FETCH in %s: refused answer: %s",
					folder, rp.refused) :
				errfmt("UID FETCH in %s: the server's answer "
					"is too long", folder);
			break;
		}
		if (rp.len > 2 && rp.buf[0] == '*' && rp.buf[1] == ' ') {
			const char *p = rp.buf + 2;

			if (*p >= '0' && *p <= '9') {
				while (*p >= '0' && *p <= '9')
					p++;
				if (strncasecmp(p, " FETCH ", 7) != 0)
					continue;   /* EXISTS, EXPUNGE, RECENT */
				int got = imap_meta_parse_fetch(rp.buf, rp.len,
					&m);

				if (got < 0) {
					imap_session_set_state(s, IMAP_BROKEN);
					st = BACKEND_PROTOCOL;
					*error_r = errfmt("UID FETCH in %s: "
						"malformed FETCH response",
						folder);
					break;
				}
				if (got == 0)
					continue;
				if (m.uid < q->min_uid ||
				    (q->max_uid && m.uid > q->max_uid)) {
					free(m.flags);
					free(m.header);
				} else if (!append_message(msgs, n, &cap, &m)) {
					free(m.flags);
					free(m.header);
					/* The answer is left unread. */
					imap_session_set_state(s,
						IMAP_BROKEN);
					st = BACKEND_TEMP;
					*error_r = "out of memory";
					break;
				}
				continue;
			}
			if (strncasecmp(p, "BYE", 3) == 0) {
				char words[200];

				mail_copy_printable(words, sizeof(words), p, strlen(p));
				imap_session_set_state(s, IMAP_BROKEN);
				st = BACKEND_TEMP;
				*error_r = errfmt("UID FETCH in %s: the server "
					"closed the connection: %s", folder,
					words);
				break;
			}
			continue;   /* OK, NO, FLAGS... with no bearing here */
		}
		if (rp.len > tag_len && memcmp(rp.buf, tag, tag_len) == 0 &&
		    rp.buf[tag_len] == ' ') {
			st = tagged_status(s, folder, rp.buf + tag_len + 1,
				error_r);
			break;
		}
		/* A continuation request or another command's tag. */
		char words[200];

		mail_copy_printable(words, sizeof(words), rp.buf, rp.len);
		imap_session_set_state(s, IMAP_BROKEN);
		st = BACKEND_PROTOCOL;
		*error_r = errfmt("UID FETCH in %s: unexpected answer: %s",
			folder, words);
		break;
	}
	imap_guard_streaming(&s->guard, false);
	if (!imap_session_broken(s))
		reader_give_back(&r);
	free(r.buf);
	free(rp.buf);
	return st;
}
