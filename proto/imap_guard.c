/* Following an IMAP server's byte stream to refuse what libetpan
 * mishandles, framed as libetpan 1.9.4 frames it (mailimap_parser.c and
 * mailimap_keywords.c with UNSTRICT_SYNTAX):
 *  - mailimap_space_parse() takes any run of SP and TAB, and
 *    mailimap_token_case_insensitive_parse() skips one before every
 *    keyword, so "*\tOK", "OK  [" and "[ BADCHARSET" all parse;
 *  - keywords match as prefixes ("[BADCHARSETS" is BADCHARSET);
 *  - a literal is blanks "{" blanks ["-"] digits blanks "}" and then
 *    blanks and CRLF or LF; a "-" (or a second one) makes it empty, the
 *    count wraps at 2^32, and when no line end follows (a workaround for
 *    Lotus Domino) the literal starts right there, inside the line;
 *  - a quoted string takes any byte but '"' and '\', line ends included;
 *  - text after OK, NO, BAD, BYE, PREAUTH and "+" runs to the line end
 *    and never holds a literal or a quoted string;
 *  - continuation requests ("+ ...") are parsed inside any response. */
#include "proto/imap_guard.h"

#include <string.h>
#include <strings.h>

#include "proto/imap_syntax.h"

void imap_guard_init(struct imap_guard *g)
{
	g->literal_left = 0;
	g->in_line = g->in_quote = g->streaming = false;
	g->response_bytes = 0;
	g->refused = NULL;
	g->len = 0;
}

void imap_guard_streaming(struct imap_guard *g, bool on)
{
	g->streaming = on;
}

static const char *skip_blanks(const char *p, const char *end)
{
	while (p < end && imap_blank(*p))
		p++;
	return p;
}

/* Whether p starts with word, ASCII case ignored (a prefix match, as
 * libetpan's keyword parser does). */
static bool starts_with(const char *p, const char *end, const char *word)
{
	size_t n = strlen(word);

	return (size_t)(end - p) >= n && strncasecmp(p, word, n) == 0;
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

/* Response codes anywhere in the segment: libetpan finds them after
 * blanks, in any case, in status lines and in "+" lines alike. */
static const char *codes_problem(const char *p, const char *end)
{
	for (; (p = memchr(p, '[', (size_t)(end - p))) != NULL; p++) {
		const char *q = skip_blanks(p + 1, end);

		if (starts_with(q, end, "BADCHARSET"))
			return "a BADCHARSET response code";
		if (starts_with(q, end, "PERMANENTFLAGS")) {
			q += strlen("PERMANENTFLAGS");
			if (q >= end || *q != ' ' || !flag_list_ok(q + 1, end))
				return "a malformed PERMANENTFLAGS response"
					" code";
		}
	}
	return NULL;
}

/* mailimap_number_parse(): blanks, an optional "-" (which makes the
 * number 0), digits; the count wraps at 2^32. */
static bool number_at(const char **pp, const char *end, uint32_t *n_r)
{
	const char *q = skip_blanks(*pp, end), *digits;
	bool minus = false;
	uint32_t n = 0;

	if (q < end && *q == '-') {
		minus = true;
		q++;
	}
	for (digits = q; q < end && *q >= '0' && *q <= '9'; q++)
		n = n * 10u + (uint32_t)(*q - '0');
	if (q == digits)
		return false;
	*n_r = minus ? 0 : n;
	*pp = q;
	return true;
}

/* After a "{" at p: the rest of a literal's announcement, up to and
 * with its "}", as mailimap_literal_parse_progress() reads it. */
static bool literal_open(const char *p, const char *end, uint32_t *n_r,
	const char **after_r)
{
	const char *q = p;

	if (!number_at(&q, end, n_r)) {
		/* The "{-N}" workaround: a "-", then a number. */
		q = skip_blanks(p, end);
		if (q >= end || *q != '-')
			return false;
		q++;
		if (!number_at(&q, end, n_r))
			return false;
		*n_r = 0;
	}
	q = skip_blanks(q, end);
	if (q >= end || *q != '}')
		return false;
	*after_r = q + 1;
	return true;
}

/* Whether a response line starting at p (its first segment) is text
 * after its first words: a status response or a continuation request;
 * *tagged_r says it is a tagged one. */
static bool text_line(const char *p, const char *end, bool *tagged_r)
{
	*tagged_r = false;
	p = skip_blanks(p, end);
	if (p < end && *p == '+')
		return true;
	if (p >= end || *p != '*') {
		/* Tagged: only a status may follow the tag. */
		*tagged_r = true;
		return true;
	}
	p = skip_blanks(p + 1, end);
	return starts_with(p, end, "OK") || starts_with(p, end, "NO") ||
		starts_with(p, end, "BAD") || starts_with(p, end, "BYE") ||
		starts_with(p, end, "PREAUTH");
}

const char *imap_guard_segment(const char *seg, size_t len, bool first,
	bool *in_quote, struct imap_segment *out)
{
	const char *end = seg + len, *problem;

	memset(out, 0, sizeof(*out));
	if (memchr(seg, '\0', len) != NULL)
		return "a NUL byte";
	if ((problem = codes_problem(seg, end)) != NULL)
		return problem;
	if (first && !*in_quote && text_line(seg, end, &out->tagged))
		return NULL;
	for (const char *p = seg; p < end; p++) {
		const char *after;
		uint32_t n;

		if (*in_quote) {
			if (*p == '\\' && p + 1 < end &&
			    (p[1] == '"' || p[1] == '\\'))
				p++;
			else if (*p == '"')
				*in_quote = false;
			continue;
		}
		if (*p == '"') {
			*in_quote = true;
			continue;
		}
		if (*p != '{' || !literal_open(p + 1, end, &n, &after))
			continue;
		after = skip_blanks(after, end);
		if (!(after == end || (after + 1 == end && *after == '\r')))
			return "a literal inside a line";
		if (n > IMAP_GUARD_LITERAL_MAX)
			return "a literal larger than 256 MiB";
		out->literal = true;
		out->size = n;
		out->open = (size_t)(p - seg);
		return NULL;
	}
	return NULL;
}

static const char *follow(struct imap_guard *g, const char *data,
	size_t len)
{
	while (len > 0) {
		struct imap_segment s;
		const char *nl = NULL, *problem;
		size_t seg;

		if (g->literal_left > 0) {
			seg = g->literal_left < len ? g->literal_left : len;
			g->literal_left -= (uint32_t)seg;
		} else {
			nl = memchr(data, '\n', len);
			seg = nl ? (size_t)(nl - data) : len;
			if (seg > IMAP_GUARD_LINE_MAX - g->len)
				return "a line longer than 1 MiB";
			memcpy(g->seg + g->len, data, seg);
			g->len += seg;
			if (nl)
				seg++;
		}
		data += seg;
		len -= seg;
		g->response_bytes += seg;
		if (!g->streaming &&
		    g->response_bytes > IMAP_GUARD_RESPONSE_MAX)
			return "a response larger than 16 MiB";
		if (nl == NULL)
			continue;
		/* A segment is complete: up to a line end, after a line end
		 * or a literal. */
		problem = imap_guard_segment(g->seg, g->len, !g->in_line,
			&g->in_quote, &s);
		if (problem)
			return problem;
		g->len = 0;
		g->literal_left = s.literal ? s.size : 0;
		g->in_line = s.literal || g->in_quote;
		if (s.tagged)
			g->response_bytes = 0;
	}
	return NULL;
}

const char *imap_guard_feed(struct imap_guard *g, const char *data,
	size_t len)
{
	if (g->refused == NULL)
		g->refused = follow(g, data, len);
	return g->refused;
}
