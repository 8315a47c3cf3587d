/* File names for messages and folders; see msg_name.h for the scheme.
 *
 * Header fields are split here rather than with mailimf_fields_parse():
 * that parser stops at the first malformed line (losing every field after
 * it), needs a line end after the last field, and hands back Message-ID
 * without the brackets and comments that the hash is defined on.  libetpan
 * does the hard parts: the RFC 5322 date-time and RFC 2047 words.
 */
#include "fs/msg_name.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libetpan/mailimf.h>
#include <xxhash.h>

#include "src/mail_date.h"
#include "src/mime_text.h"
#include "src/utf8.h"

/* Earliest and latest instants a name can show: the date field is always
 * four digits, and no mail predates 1900. */
#define NAME_TIME_MIN (-2208988800LL)	/* 1900-01-01 00:00:00 UTC */
#define NAME_TIME_MAX 253402300799LL	/* 9999-12-31 23:59:59 UTC */

/* ---- subject slug --------------------------------------------------- */

struct cp_range {
	uint32_t lo, hi;
};

/* Non-ASCII code points treated as word separators: C1 controls, spaces,
 * punctuation of common scripts, invisible format and bidi controls,
 * look-alikes of '/', noncharacters and U+FFFD.  Deliberately short: any
 * other character, letters of all scripts included, is kept as is. */
static const struct cp_range separators[] = {
	{ 0x0080, 0x00a9 }, { 0x00ab, 0x00b1 }, { 0x00b4, 0x00b4 },
	{ 0x00b6, 0x00b8 }, { 0x00bb, 0x00bb }, { 0x00bf, 0x00bf },
	{ 0x00d7, 0x00d7 }, { 0x00f7, 0x00f7 }, { 0x037e, 0x037e },
	{ 0x0387, 0x0387 }, { 0x055a, 0x055f }, { 0x0589, 0x058a },
	{ 0x05be, 0x05be }, { 0x05c0, 0x05c0 }, { 0x05c3, 0x05c3 },
	{ 0x05c6, 0x05c6 }, { 0x05f3, 0x05f4 }, { 0x060c, 0x060d },
	{ 0x061b, 0x061f }, { 0x066a, 0x066d }, { 0x06d4, 0x06d4 },
	{ 0x0964, 0x0965 }, { 0x0970, 0x0970 }, { 0x0e4f, 0x0e4f },
	{ 0x0e5a, 0x0e5b }, { 0x10fb, 0x10fb }, { 0x1360, 0x1368 },
	{ 0x1680, 0x1680 }, { 0x180e, 0x180e }, { 0x2000, 0x200b },
	/* U+200C/D (ZWNJ/ZWJ) are kept: some scripts and emoji need them */
	{ 0x200e, 0x206f }, { 0x2215, 0x2215 }, { 0x29f8, 0x29f9 },
	{ 0x2e00, 0x2e7f }, { 0x3000, 0x3003 }, { 0x3008, 0x3011 },
	{ 0x3014, 0x301f }, { 0x3030, 0x3030 }, { 0x303d, 0x303d },
	{ 0x3164, 0x3164 }, { 0xfd3e, 0xfd3f }, { 0xfdd0, 0xfdef },
	{ 0xfe10, 0xfe19 }, { 0xfe30, 0xfe6f }, { 0xfeff, 0xfeff },
	{ 0xff01, 0xff0f }, { 0xff1a, 0xff20 }, { 0xff3b, 0xff40 },
	{ 0xff5b, 0xff65 }, { 0xffa0, 0xffa0 }, { 0xfff0, 0xffff },
	{ 0xe0000, 0xe007f },
};

static bool is_separator(uint32_t c)
{
	size_t lo = 0, hi = sizeof(separators) / sizeof(separators[0]);

	if ((c & 0xfffe) == 0xfffe)	/* noncharacters of every plane */
		return true;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (c < separators[mid].lo)
			hi = mid;
		else if (c > separators[mid].hi)
			lo = mid + 1;
		else
			return true;
	}
	return false;
}

/* Writes the slug of the UTF-8 (possibly invalid) text s into out, which
 * has room for MSG_NAME_SUBJECT_MAX bytes plus NUL.  ASCII letters and
 * digits are kept (lowercased), other ASCII and recognised separators
 * collapse into one '-' between kept characters, invalid bytes count as
 * separators.  The slug therefore never holds '.', '_', '~' or '/', and
 * never starts or ends with '-'. */
static void make_slug(const char *s, char *out)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t n = 0;
	bool sep = false;

	while (*p) {
		uint32_t c;
		size_t len = utf8_get(p, &c);
		const unsigned char *ch = p;

		if (!len) {
			p++;
			sep = true;
			continue;
		}
		p += len;
		if (c < 0x80) {
			if (c >= 'A' && c <= 'Z') {
				c += 'a' - 'A';
			} else if (!(c >= 'a' && c <= 'z') &&
				   !(c >= '0' && c <= '9')) {
				sep = true;
				continue;
			}
		} else if (is_separator(c)) {
			sep = true;
			continue;
		}

		size_t need = len + (sep && n > 0);

		if (n + need > MSG_NAME_SUBJECT_MAX)
			break;	/* cut before a character, never inside */
		if (sep && n > 0)
			out[n++] = '-';
		sep = false;
		if (len == 1) {
			out[n++] = (char)c;	/* lowercased */
		} else {
			memcpy(out + n, ch, len);
			n += len;
		}
	}
	if (n == 0) {
		strcpy(out, "no-subject");
		return;
	}
	out[n] = '\0';
}

/* ---- header fields -------------------------------------------------- */

struct span {
	const char *p;
	size_t len;
	bool found;
};

struct wanted_fields {
	struct span date, subject, msgid;
};

/* If the field starting at f (len bytes) is named name, case-insensitive,
 * returns the offset of its value (just after the colon), else 0. */
static size_t field_value_at(const char *f, size_t len, const char *name)
{
	size_t nl = strlen(name);
	size_t i;

	if (len <= nl || strncasecmp(f, name, nl) != 0)
		return 0;
	/* obsolete syntax allows blanks before the colon */
	for (i = nl; i < len && (f[i] == ' ' || f[i] == '\t'); i++)
		;
	if (i >= len || f[i] != ':')
		return 0;
	return i + 1;
}

static void take_field(const char *f, size_t len, const char *name,
		       struct span *sp)
{
	size_t v;

	if (sp->found)
		return;	/* the first occurrence wins */
	v = field_value_at(f, len, name);
	if (!v)
		return;
	sp->p = f + v;
	sp->len = len - v;
	sp->found = true;
}

/* Splits the header block into logical fields (a line plus the lines after
 * it that start with a blank), up to the first empty line.  Lines that are
 * not fields are skipped, so garbage cannot hide the fields after it. */
static void scan_fields(const char *h, size_t len, struct wanted_fields *w)
{
	size_t pos = 0;

	while (pos < len) {
		size_t start = pos, end;

		if (h[pos] == '\n' ||
		    (h[pos] == '\r' && pos + 1 < len && h[pos + 1] == '\n'))
			break;	/* end of the header */
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
		take_field(h + start, end - start, "date", &w->date);
		take_field(h + start, end - start, "subject", &w->subject);
		take_field(h + start, end - start, "message-id", &w->msgid);
	}
}

/* Returns a malloc'd copy of the field value with line breaks removed
 * (RFC 5322 unfolding) and NUL bytes turned into blanks, so libetpan's
 * string functions see all of it. */
static char *unfold(const struct span *sp)
{
	char *out = malloc(sp->len + 1);
	size_t n = 0;

	if (!out)
		return NULL;
	for (size_t i = 0; i < sp->len; i++) {
		char c = sp->p[i];

		if (c == '\n')
			continue;
		if (c == '\r' && i + 1 < sp->len && sp->p[i + 1] == '\n')
			continue;
		out[n++] = c ? c : ' ';
	}
	out[n] = '\0';
	return out;
}

/* ---- names ---------------------------------------------------------- */

/* Decodes the Subject value into UTF-8 (src/mime_text.h: encoded words,
 * bare 8-bit text as UTF-8 when valid, else ISO-8859-1).  Returns a
 * malloc'd string, NULL if out of memory. */
static char *decode_subject(const struct span *sp)
{
	return mime_words_decode(sp->p, sp->len);
}


bool msg_header_date(const char *header, size_t header_len, int64_t *date_r)
{
	struct wanted_fields w = { 0 };
	bool ok = false;
	char *v;

	scan_fields(header, header_len, &w);
	if (!w.date.found)
		return false;
	v = unfold(&w.date);
	if (v)
		ok = mail_date_parse(v, date_r);
	free(v);
	return ok;
}

char *msg_name_derive(const char *header, size_t header_len,
	int64_t internaldate)
{
	struct wanted_fields w = { 0 };
	int64_t t = internaldate;
	char slug[MSG_NAME_SUBJECT_MAX + 1];
	uint32_t hash;

	if (!header) {
		header = "";
		header_len = 0;
	}
	scan_fields(header, header_len, &w);

	if (w.date.found) {
		char *v = unfold(&w.date);
		int64_t parsed;

		if (!v)
			return NULL;
		if (mail_date_parse(v, &parsed))
			t = parsed;
		free(v);
	}

	strcpy(slug, "no-subject");
	if (w.subject.found) {
		char *text = decode_subject(&w.subject);

		if (!text)
			return NULL;
		make_slug(text, slug);
		free(text);
	}

	hash = 0;
	if (w.msgid.found) {
		char *v = unfold(&w.msgid);
		size_t a = 0, b;

		if (!v)
			return NULL;
		b = strlen(v);
		while (a < b && (v[a] == ' ' || v[a] == '\t' || v[a] == '\r'))
			a++;
		while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t' ||
				 v[b - 1] == '\r'))
			b--;
		if (b > a)
			hash = (uint32_t)XXH3_64bits(v + a, b - a);
		else
			w.msgid.found = false;	/* empty: as if absent */
		free(v);
	}
	if (!w.msgid.found)
		hash = (uint32_t)XXH3_64bits(header, header_len);

	if (t < NAME_TIME_MIN)
		t = NAME_TIME_MIN;
	if (t > NAME_TIME_MAX)
		t = NAME_TIME_MAX;

	int64_t days = (t >= 0 ? t : t - 86399) / 86400;
	int64_t sec = t - days * 86400;
	int y, mo, d;

	mail_civil_from_days(days, &y, &mo, &d);

	char buf[MSG_NAME_MAX + 1];

	snprintf(buf, sizeof(buf), "%04d-%02d-%02d_%02d%02d_%s_%08" PRIx32
		 ".eml", y, mo, d, (int)(sec / 3600), (int)(sec / 60 % 60),
		 slug, hash);
	return strdup(buf);
}

char *msg_name_variant(const char *name, unsigned n)
{
	static const char ext[] = ".eml";
	char suffix[16];
	const char *tail;
	size_t len, stem, slen, tlen;
	char *out;

	if (!name)
		return NULL;
	if (n < 2)
		return strdup(name);	/* the first keeps the base name */
	len = strlen(name);
	slen = (size_t)snprintf(suffix, sizeof(suffix), "~%u", n);
	tlen = sizeof(ext) - 1;
	if (len < tlen || strcmp(name + len - tlen, ext) != 0)
		tlen = 0;	/* no ".eml": append the suffix */
	tail = name + len - tlen;
	stem = len - tlen;
	if (stem + slen + tlen > MSG_NAME_MAX)
		stem = utf8_cut(name, stem, MSG_NAME_MAX - slen - tlen);

	out = malloc(stem + slen + tlen + 1);
	if (!out)
		return NULL;
	memcpy(out, name, stem);
	memcpy(out + stem, suffix, slen);
	memcpy(out + stem + slen, tail, tlen);
	out[stem + slen + tlen] = '\0';
	return out;
}
