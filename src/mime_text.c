/* Charsets, encoded words, parameters, header blocks and HTML as text;
 * see mime_text.h. */
#include "src/mime_text.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libetpan/charconv.h>
#include <libetpan/mailimf.h>
#include <libetpan/mailmime_decode.h>

#include "src/utf8.h"

/* ---- UTF-8 ------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s[0..left), 0 if none.  utf8_get
 * wants a NUL-terminated string: copy at most 4 bytes and terminate. */
static size_t seq_len(const char *s, size_t left, uint32_t *cp)
{
	unsigned char b[5] = { 0 };

	memcpy(b, s, left < 4 ? left : 4);
	return utf8_get(b, cp);
}

static bool valid_utf8(const char *s, size_t len)
{
	uint32_t cp;

	for (size_t i = 0; i < len;) {
		size_t n = seq_len(s + i, len - i, &cp);

		if (!n)
			return false;
		i += n;
	}
	return true;
}

/* Copies s, each invalid byte replaced by U+FFFD (latin1: decoded as ISO
 * 8859-1 instead). */
static char *utf8_repair(const char *s, size_t len, bool latin1,
	size_t *out_len_r)
{
	char *out = malloc(3 * len + 1), *o = out;
	uint32_t cp;

	if (!out)
		return NULL;
	for (size_t i = 0; i < len;) {
		size_t n = seq_len(s + i, len - i, &cp);
		unsigned char c = (unsigned char)s[i];

		if (n) {
			memcpy(o, s + i, n);
			o += n;
			i += n;
			continue;
		}
		if (latin1) {
			*o++ = (char)(0xc0 | (c >> 6));
			*o++ = (char)(0x80 | (c & 0x3f));
		} else {
			memcpy(o, "\xef\xbf\xbd", 3);
			o += 3;
		}
		i++;
	}
	*o = '\0';
	if (out_len_r)
		*out_len_r = (size_t)(o - out);
	return out;
}

static bool is_utf8_name(const char *charset)
{
	return strcasecmp(charset, "utf-8") == 0 ||
		strcasecmp(charset, "utf8") == 0 ||
		strcasecmp(charset, "us-ascii") == 0;
}

char *mime_text_to_utf8(const char *charset, const char *in, size_t len,
	size_t *out_len_r)
{
	char *conv = NULL, *out;
	size_t conv_len = 0;

	if (charset && *charset && !is_utf8_name(charset) &&
	    charconv_buffer("utf-8", charset, in, len, &conv, &conv_len) ==
	    MAIL_CHARCONV_NO_ERROR && conv) {
		out = utf8_repair(conv, conv_len, false, out_len_r);
		charconv_buffer_free(conv);
		return out;
	}
	/* declared UTF-8 (or ASCII) keeps its valid parts; unknown text
	 * that is not UTF-8 is most likely Latin-1 */
	return utf8_repair(in, len, !(charset && is_utf8_name(charset)) &&
		!valid_utf8(in, len), out_len_r);
}

/* ---- encoded words ---------------------------------------------------- */

/* The value with line breaks removed (RFC 5322 unfolding), a stray CR
 * and NUL turned into blanks, NUL-terminated. */
static char *unfold(const char *v, size_t len)
{
	char *out = malloc(len + 1);
	size_t n = 0;

	if (!out)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		char c = v[i];

		if (c == '\n')
			continue;
		if (c == '\r' && i + 1 < len && v[i + 1] == '\n')
			continue;
		out[n++] = (c == '\0' || c == '\r') ? ' ' : c;
	}
	out[n] = '\0';
	return out;
}

/* Replaces C0 controls but tab, DEL and C1 controls by blanks, in place
 * (C1 controls are two bytes in UTF-8: both become blanks). */
static void blank_controls(char *s)
{
	for (unsigned char *p = (unsigned char *)s; *p; p++) {
		if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
			*p = ' ';
		else if (*p == 0xc2 && p[1] >= 0x80 && p[1] < 0xa0) {
			p[0] = ' ';
			p[1] = ' ';
			p++;
		}
	}
}

char *mime_words_decode(const char *value, size_t len)
{
	char *raw = unfold(value, len), *dec = NULL, *out, *fixed;
	size_t rl, idx = 0;

	if (!raw)
		return NULL;
	rl = strlen(raw);
	if (!strstr(raw, "=?")) {
		/* no encoded word: skip the decoder, which opens an iconv
		 * descriptor per call */
		out = utf8_repair(raw, rl, !valid_utf8(raw, rl), NULL);
		free(raw);
		if (out)
			blank_controls(out);
		return out;
	}
	if (mailmime_encoded_phrase_parse(valid_utf8(raw, rl) ? "utf-8" :
					  "iso-8859-1", raw, rl, &idx,
					  "utf-8", &dec) != MAILIMF_NO_ERROR ||
	    !dec) {
		out = utf8_repair(raw, rl, !valid_utf8(raw, rl), NULL);
	} else {
		/* the decoder gives up silently at a malformed "=?": keep
		 * the rest as written */
		size_t dl = strlen(dec), tail = idx < rl ? rl - idx : 0;
		char *joined = malloc(dl + 1 + tail + 1);

		out = NULL;
		if (joined) {
			memcpy(joined, dec, dl);
			if (tail) {
				joined[dl] = ' ';
				memcpy(joined + dl + 1, raw + idx, tail);
				dl += 1 + tail;
			}
			joined[dl] = '\0';
			out = utf8_repair(joined, dl, false, NULL);
			free(joined);
		}
		free(dec);
	}
	free(raw);
	if (!out)
		return NULL;
	blank_controls(out);
	fixed = realloc(out, strlen(out) + 1);
	return fixed ? fixed : out;
}

/* ---- RFC 2231 parameters ---------------------------------------------- */

#define PARAM_SEGMENTS_MAX 64

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Appends s, %XX-decoded when pct, to buf at *n (room for strlen(s)). */
static void append_segment(char *buf, size_t *n, const char *s, bool pct)
{
	for (; *s; s++) {
		if (pct && s[0] == '%' && hexval((unsigned char)s[1]) >= 0 &&
		    hexval((unsigned char)s[2]) >= 0) {
			buf[(*n)++] = (char)(hexval((unsigned char)s[1]) * 16 +
				hexval((unsigned char)s[2]));
			s += 2;
		} else {
			buf[(*n)++] = *s;
		}
	}
}

/* name is want + suffix (case-insensitive)? */
static bool name_is(const char *name, const char *want, const char *suffix)
{
	size_t wl = strlen(want);

	return strncasecmp(name, want, wl) == 0 &&
		strcasecmp(name + wl, suffix) == 0;
}

/* Finds "want*k" (*ext_r false) or "want*k*" (*ext_r true). */
static const char *segment(const struct mime_param *params, size_t n,
	const char *want, unsigned k, bool *ext_r)
{
	char plain[16], ext[16];

	snprintf(plain, sizeof(plain), "*%u", k);
	snprintf(ext, sizeof(ext), "*%u*", k);
	for (size_t i = 0; i < n; i++) {
		if (!params[i].name || !params[i].value)
			continue;
		if (name_is(params[i].name, want, plain)) {
			*ext_r = false;
			return params[i].value;
		}
		if (name_is(params[i].name, want, ext)) {
			*ext_r = true;
			return params[i].value;
		}
	}
	return NULL;
}

/* Splits "charset'language'rest": *charset_r is a malloc'd copy (NULL if
 * the quotes are missing), returns rest. */
static const char *split_ext(const char *v, char **charset_r)
{
	const char *q1 = strchr(v, '\''), *q2;

	*charset_r = NULL;
	if (!q1 || !(q2 = strchr(q1 + 1, '\'')))
		return v;
	if (q1 > v)
		*charset_r = strndup(v, (size_t)(q1 - v));
	return q2 + 1;
}

char *mime_param_get(const struct mime_param *params, size_t n,
	const char *want)
{
	char *charset = NULL, *buf, *out;
	size_t total = 0, bl = 0;
	bool ext;
	const char *v;

	for (size_t i = 0; i < n; i++) {
		if (params[i].name && params[i].value &&
		    name_is(params[i].name, want, "*")) {
			v = split_ext(params[i].value, &charset);
			buf = malloc(strlen(v) + 1);
			if (!buf) {
				free(charset);
				return NULL;
			}
			append_segment(buf, &bl, v, true);
			out = mime_text_to_utf8(charset, buf, bl, NULL);
			free(buf);
			free(charset);
			return out;
		}
	}
	for (unsigned k = 0; k < PARAM_SEGMENTS_MAX &&
	     (v = segment(params, n, want, k, &ext)); k++)
		total += strlen(v);
	if (segment(params, n, want, 0, &ext)) {
		buf = malloc(total + 1);
		if (!buf)
			return NULL;
		for (unsigned k = 0; k < PARAM_SEGMENTS_MAX &&
		     (v = segment(params, n, want, k, &ext)); k++) {
			if (k == 0 && ext)
				v = split_ext(v, &charset);
			append_segment(buf, &bl, v, ext);
		}
		out = mime_text_to_utf8(charset, buf, bl, NULL);
		free(buf);
		free(charset);
		return out;
	}
	for (size_t i = 0; i < n; i++)
		if (params[i].name && params[i].value &&
		    strcasecmp(params[i].name, want) == 0)
			return mime_words_decode(params[i].value,
				strlen(params[i].value));
	return NULL;
}

/* ---- header blocks ---------------------------------------------------- */

struct growbuf {
	char *p;
	size_t len, cap;
	bool failed;
};

static void gb_add(struct growbuf *g, const char *s, size_t len)
{
	if (g->failed)
		return;
	if (g->len + len + 1 > g->cap) {
		size_t cap = g->cap ? g->cap : 256;
		char *p;

		while (cap < g->len + len + 1)
			cap *= 2;
		p = realloc(g->p, cap);
		if (!p) {
			g->failed = true;
			return;
		}
		g->p = p;
		g->cap = cap;
	}
	memcpy(g->p + g->len, s, len);
	g->len += len;
	g->p[g->len] = '\0';
}

static char *gb_finish(struct growbuf *g, size_t *out_len_r)
{
	if (!g->failed && !g->p)
		gb_add(g, "", 0);
	if (g->failed) {
		free(g->p);
		return NULL;
	}
	if (out_len_r)
		*out_len_r = g->len;
	return g->p;
}

static bool field_name_char(unsigned char c)
{
	return c > 0x20 && c < 0x7f && c != ':';
}

char *mime_headers_text(const char *h, size_t len, size_t *out_len_r)
{
	struct growbuf g = { 0 };
	size_t pos = 0;

	while (pos < len) {
		size_t start = pos, end, name_end;

		if (h[pos] == '\n' ||
		    (h[pos] == '\r' && pos + 1 < len && h[pos + 1] == '\n'))
			break;	/* the empty line ends the header */
		for (;;) {
			const char *nl = memchr(h + pos, '\n', len - pos);

			if (!nl) {
				end = len;
				break;
			}
			pos = (size_t)(nl - h) + 1;
			if (pos >= len || (h[pos] != ' ' && h[pos] != '\t')) {
				end = pos;
				break;
			}
		}
		pos = end;
		name_end = start;
		while (name_end < end && field_name_char((unsigned char)h[name_end]))
			name_end++;
		if (name_end == start)
			continue;	/* not a field */
		size_t colon = name_end;

		while (colon < end && (h[colon] == ' ' || h[colon] == '\t'))
			colon++;
		if (colon >= end || h[colon] != ':')
			continue;
		char *v = mime_words_decode(h + colon + 1, end - colon - 1);
		const char *vs = v;

		if (!v) {
			g.failed = true;
			break;
		}
		while (*vs == ' ' || *vs == '\t')
			vs++;
		size_t vl = strlen(vs);

		while (vl > 0 && (vs[vl - 1] == ' ' || vs[vl - 1] == '\t'))
			vl--;
		gb_add(&g, h + start, name_end - start);
		gb_add(&g, ": ", 2);
		gb_add(&g, vs, vl);
		gb_add(&g, "\n", 1);
		free(v);
	}
	return gb_finish(&g, out_len_r);
}

/* ---- HTML ------------------------------------------------------------- */

static const struct {
	const char *name;
	const char *text;
} entities[] = {
	{ "amp", "&" }, { "lt", "<" }, { "gt", ">" }, { "quot", "\"" },
	{ "apos", "'" }, { "nbsp", " " }, { "copy", "\xc2\xa9" },
	{ "reg", "\xc2\xae" }, { "mdash", "\xe2\x80\x94" },
	{ "ndash", "\xe2\x80\x93" }, { "hellip", "\xe2\x80\xa6" },
	{ "euro", "\xe2\x82\xac" }, { "laquo", "\xc2\xab" },
	{ "raquo", "\xc2\xbb" }, { "rsquo", "\xe2\x80\x99" },
	{ "lsquo", "\xe2\x80\x98" }, { "rdquo", "\xe2\x80\x9d" },
	{ "ldquo", "\xe2\x80\x9c" }, { "bull", "\xe2\x80\xa2" },
};

static size_t put_cp(char *o, uint32_t cp)
{
	if (cp == 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		cp = 0xfffd;
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xc0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xe0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		o[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	o[0] = (char)(0xf0 | (cp >> 18));
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	o[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

/* Decodes the entity at s[0] == '&' into o; returns the input bytes it
 * took (0: not an entity) and the output length in *olen. */
static size_t entity(const char *s, size_t left, char *o, size_t *olen)
{
	size_t i = 1;

	if (i < left && s[i] == '#') {
		uint32_t cp = 0;
		bool hex = i + 1 < left && (s[i + 1] == 'x' || s[i + 1] == 'X');
		size_t digits = 0;

		i += hex ? 2 : 1;
		for (; i < left && digits < 8; i++, digits++) {
			int v = hex ? hexval((unsigned char)s[i]) :
				(s[i] >= '0' && s[i] <= '9' ? s[i] - '0' : -1);

			if (v < 0)
				break;
			cp = cp * (hex ? 16 : 10) + (uint32_t)v;
		}
		if (!digits)
			return 0;
		if (i < left && s[i] == ';')
			i++;
		*olen = put_cp(o, cp);
		return i;
	}
	for (size_t k = 0; k < sizeof(entities) / sizeof(entities[0]); k++) {
		size_t nl = strlen(entities[k].name);

		if (left > nl + 1 && strncmp(s + 1, entities[k].name, nl) == 0 &&
		    s[1 + nl] == ';') {
			*olen = strlen(entities[k].text);
			memcpy(o, entities[k].text, *olen);
			return nl + 2;
		}
	}
	return 0;
}

/* The lowercased tag name after '<' (and '/'), at most cap - 1 bytes. */
static void tag_name(const char *s, size_t left, char *name, size_t cap,
	bool *closing)
{
	size_t i = 0, n = 0;

	*closing = false;
	if (i < left && s[i] == '/') {
		*closing = true;
		i++;
	}
	while (i < left && n + 1 < cap &&
	       ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
		(s[i] >= '0' && s[i] <= '9'))) {
		char c = s[i++];

		name[n++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
	}
	name[n] = '\0';
}

static bool in_list(const char *name, const char *const *list)
{
	for (; *list; list++)
		if (strcmp(name, *list) == 0)
			return true;
	return false;
}

char *mime_html_to_text(const char *html, size_t len, size_t *out_len_r)
{
	static const char *const breaks[] = { "br", "p", "div", "tr", "li",
		"h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol",
		"blockquote", "pre", "hr", "title", NULL };
	static const char *const hidden[] = { "script", "style", "head",
		NULL };
	/* an entity's output (at most 4 bytes) is never longer than its
	 * input (at least 3), so the output fits in len + line ends */
	char *out = malloc(len + 2), *o = out, *fixed;
	char skip_until[16] = "";
	bool blank = false;
	size_t i = 0;

	if (!out)
		return NULL;
	while (i < len) {
		char c = html[i];

		if (c == '<') {
			const char *gt = memchr(html + i, '>', len - i);
			char name[16];
			bool closing;

			if (html + i + 4 <= html + len &&
			    strncmp(html + i, "<!--", 4) == 0) {
				const char *end = memmem(html + i + 4,
					len - i - 4, "-->", 3);

				i = end ? (size_t)(end - html) + 3 : len;
				continue;
			}
			tag_name(html + i + 1, len - i - 1, name, sizeof(name),
				&closing);
			i = gt ? (size_t)(gt - html) + 1 : len;
			if (*skip_until) {
				if (closing && strcmp(name, skip_until) == 0)
					*skip_until = '\0';
				continue;
			}
			if (!closing && in_list(name, hidden)) {
				strcpy(skip_until, name);
				continue;
			}
			if (in_list(name, breaks) && o > out && o[-1] != '\n') {
				*o++ = '\n';
				blank = false;
			}
			continue;
		}
		if (*skip_until) {
			i++;
			continue;
		}
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			blank = true;
			i++;
			continue;
		}
		if (blank && o > out && o[-1] != '\n')
			*o++ = ' ';
		blank = false;
		if (c == '&') {
			size_t olen = 0, took = entity(html + i, len - i, o,
				&olen);

			if (took) {
				o += olen;
				i += took;
				continue;
			}
		}
		*o++ = c;
		i++;
	}
	if (o > out && o[-1] != '\n')
		*o++ = '\n';
	fixed = utf8_repair(out, (size_t)(o - out), false, out_len_r);
	free(out);
	return fixed;
}
