/* Following an IMAP server's byte stream to refuse what libetpan
 * mishandles. */
#include "proto/imap_guard.h"

#include <string.h>
#include <strings.h>

#include "proto/imap_syntax.h"

void imap_guard_init(struct imap_guard *g)
{
	memset(g, 0, sizeof(*g));
}

/* "(" [flag *(SP flag)] ")" then "]": flags are "\*", "\atom" or atom. */
static bool flag_list_ok(const char *p, const char *end)
{
	if (p >= end || *p++ != '(')
		return false;
	if (p < end && *p == ')')
		return p + 1 < end && p[1] == ']';
	for (;;) {
		const char *s;

		if (p < end && *p == '\\') {
			p++;
			if (p < end && *p == '*') {
				p++;
				goto next;
			}
		}
		for (s = p; p < end && imap_atom_char((unsigned char)*p); p++)
			;
		if (p == s)
			return false;
next:
		if (p < end && *p == ')')
			return p + 1 < end && p[1] == ']';
		if (p >= end || *p++ != ' ')
			return false;
	}
}

/* The response code after '[' at p. */
static const char *code_problem(const char *p, const char *end)
{
	const char *name = p;

	while (p < end && imap_atom_char((unsigned char)*p))
		p++;
	if (imap_word_is(name, (size_t)(p - name), "BADCHARSET"))
		return "a BADCHARSET response code";
	if (imap_word_is(name, (size_t)(p - name), "PERMANENTFLAGS") &&
	    (p >= end || *p != ' ' || !flag_list_ok(p + 1, end)))
		return "a malformed PERMANENTFLAGS response code";
	return NULL;
}

/* Looks at the start of a response (up to IMAP_GUARD_HEAD bytes of its
 * first line, without the line end).  Returns why it is refused or NULL;
 * *status_r says whether it is a status response or a continuation
 * request, whose text never holds a literal. */
static const char *check_head(const char *line, size_t len, bool *status_r)
{
	const char *p = line, *end = line + len, *word;

	*status_r = false;
	if (p < end && *p == '+') {
		/* Continuation requests are read and checked by mailfs
		 * itself (imap_session_continuation), never by libetpan. */
		*status_r = true;
		return NULL;
	} else {
		while (p < end && *p != ' ')
			p++;            /* "*" or the tag */
		if (p < end)
			p++;
		for (word = p; p < end && *p != ' '; p++)
			;
		*status_r = imap_word_is(word, (size_t)(p - word), "OK") ||
			imap_word_is(word, (size_t)(p - word), "NO") ||
			imap_word_is(word, (size_t)(p - word), "BAD") ||
			imap_word_is(word, (size_t)(p - word), "BYE") ||
			imap_word_is(word, (size_t)(p - word), "PREAUTH");
		if (!*status_r)
			return NULL;
	}
	while (p < end && *p == ' ')
		p++;
	if (p < end && *p == '[')
		return code_problem(p + 1, end);
	return NULL;
}

/* The literal announced at the end of a line ("{N}" or "{N+}" before
 * the line end, given its last bytes), or false.  Counts too long to
 * hold are UINT64_MAX. */
static bool literal_at_end(const char *tail, size_t len, bool cut,
	uint64_t *n_r)
{
	uint64_t n = 0, scale = 1;
	size_t i, digits = 0;

	if (len > 0 && tail[len - 1] == '\n')
		len--;
	if (len > 0 && tail[len - 1] == '\r')
		len--;
	if (len < 3 || tail[len - 1] != '}')
		return false;
	i = len - 1;
	if (tail[i - 1] == '+')
		i--;
	for (; i > 0 && tail[i - 1] >= '0' && tail[i - 1] <= '9'; i--) {
		if (++digits > 19)
			n = UINT64_MAX;
		else
			n += (uint64_t)(tail[i - 1] - '0') * scale;
		scale *= 10;
	}
	if (digits == 0)
		return false;
	if (i == 0) {
		if (!cut)
			return false;
		/* The tail was cut inside the digits: more than fit. */
		*n_r = UINT64_MAX;
		return true;
	}
	if (tail[i - 1] != '{')
		return false;
	*n_r = n;
	return true;
}

static void keep(struct imap_guard *g, const char *data, size_t n)
{
	size_t room = IMAP_GUARD_HEAD - g->head_len;
	size_t t = sizeof(g->tail);

	g->line_len += n;
	memcpy(g->head + g->head_len, data, n < room ? n : room);
	g->head_len += n < room ? n : room;
	if (n >= t) {
		memcpy(g->tail, data + n - t, t);
		g->tail_len = t;
	} else {
		size_t drop = g->tail_len + n > t ? g->tail_len + n - t : 0;

		memmove(g->tail, g->tail + drop, g->tail_len - drop);
		memcpy(g->tail + g->tail_len - drop, data, n);
		g->tail_len += n - drop;
	}
}

const char *imap_guard_feed(struct imap_guard *g, const char *data,
	size_t len)
{
	while (len > 0) {
		const char *nl, *problem;
		size_t seg;
		uint64_t lit;
		bool status;

		if (g->literal_left > 0) {
			seg = g->literal_left < len ? (size_t)g->literal_left :
				len;
			g->literal_left -= seg;
			data += seg;
			len -= seg;
			continue;
		}
		nl = memchr(data, '\n', len);
		seg = nl ? (size_t)(nl - data) + 1 : len;
		keep(g, data, seg);
		data += seg;
		len -= seg;
		if (!nl)
			break;

		/* A line (or the rest of one after a literal) is complete. */
		status = false;
		if (!g->in_response) {
			size_t hl = g->head_len;

			while (hl > 0 && (g->head[hl - 1] == '\n' ||
					  g->head[hl - 1] == '\r'))
				hl--;
			problem = check_head(g->head, hl, &status);
			if (problem)
				return problem;
		}
		g->head_len = 0;
		if (!status && literal_at_end(g->tail, g->tail_len,
				g->line_len > g->tail_len, &lit)) {
			if (lit > IMAP_GUARD_LITERAL_MAX)
				return "a literal larger than 256 MiB";
			g->literal_left = lit;
			g->in_response = true;
		} else {
			g->in_response = false;
		}
		g->tail_len = 0;
		g->line_len = 0;
	}
	return NULL;
}
