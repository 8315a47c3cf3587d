/* Names from header bytes (fs/msg_name.h): msg_name_derive,
 * msg_header_date, msg_name_variant and folder_name_sanitize on arbitrary
 * input.
 *
 * Input: the header block, optionally preceded by a line
 * "@<internaldate> <n>\n" giving INTERNALDATE (seconds, may be negative)
 * and the variant number; without it INTERNALDATE is 1700000000, n 2.
 *
 * Properties: every name is valid UTF-8, at most 255 bytes, without '/'
 * or control characters, never "." or ".."; a message name has exactly
 * the documented shape, its date is the Date field's (or INTERNALDATE,
 * clamped to 1900-9999) in UTC, and deriving twice gives the same name;
 * a folder name that is already safe is left alone. */
#include <inttypes.h>
#include <string.h>
#include <time.h>

#include "fs/msg_name.h"
#include "tests/fuzz/fuzz_common.h"

#define TIME_MIN (-2208988800LL)	/* 1900-01-01 00:00:00 UTC */
#define TIME_MAX 253402300799LL		/* 9999-12-31 23:59:59 UTC */

static void check_safe_name(const char *name, const char *what)
{
	size_t len = strlen(name);

	FUZZ_CHECK(len > 0 && len <= MSG_NAME_MAX, "%s: length %zu", what, len);
	FUZZ_CHECK(fuzz_utf8_valid(name, len), "%s: invalid UTF-8", what);
	FUZZ_CHECK(strchr(name, '/') == NULL, "%s: '/' in \"%s\"", what, name);
	FUZZ_CHECK(!fuzz_has_control(name, len), "%s: control character in"
		" \"%s\"", what, name);
	FUZZ_CHECK(strcmp(name, ".") != 0 && strcmp(name, "..") != 0,
		"%s: \"%s\"", what, name);
}

static bool is_digits(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return true;
}

/* "YYYY-MM-DD_HHMM_" for t, as the name must start. */
static void expected_prefix(int64_t t, char *buf, size_t size)
{
	time_t tt;
	struct tm tm;

	if (t < TIME_MIN)
		t = TIME_MIN;
	if (t > TIME_MAX)
		t = TIME_MAX;
	tt = (time_t)t;
	if (gmtime_r(&tt, &tm) == NULL)
		abort();
	snprintf(buf, size, "%04d-%02d-%02d_%02d%02d_", tm.tm_year + 1900,
		tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min);
}

static void check_message_name(const char *name, int64_t when)
{
	size_t len = strlen(name), slug_len;
	char prefix[64];
	const char *slug;

	check_safe_name(name, "message name");
	FUZZ_CHECK(name[0] != '.', "message name \"%s\"", name);
	/* YYYY-MM-DD_HHMM_ + slug + _xxxxxxxx.eml */
	FUZZ_CHECK(len >= 16 + 1 + 13, "short name \"%s\"", name);
	expected_prefix(when, prefix, sizeof(prefix));
	FUZZ_CHECK(strncmp(name, prefix, 16) == 0,
		"name \"%s\" does not start with \"%s\"", name, prefix);
	FUZZ_CHECK(strcmp(name + len - 4, ".eml") == 0, "\"%s\"", name);
	FUZZ_CHECK(name[len - 13] == '_', "\"%s\"", name);
	for (size_t i = len - 12; i < len - 4; i++)
		FUZZ_CHECK((name[i] >= '0' && name[i] <= '9') ||
			(name[i] >= 'a' && name[i] <= 'f'),
			"hash in \"%s\"", name);
	slug = name + 16;
	slug_len = len - 16 - 13;
	FUZZ_CHECK(slug_len > 0 && slug_len <= MSG_NAME_SUBJECT_MAX,
		"slug of %zu bytes in \"%s\"", slug_len, name);
	FUZZ_CHECK(slug[0] != '-' && slug[slug_len - 1] != '-',
		"slug in \"%s\"", name);
	for (size_t i = 0; i < slug_len; i++) {
		unsigned char c = (unsigned char)slug[i];

		FUZZ_CHECK(c >= 0x80 || (c >= 'a' && c <= 'z') ||
			(c >= '0' && c <= '9') || c == '-',
			"byte 0x%02x in the slug of \"%s\"", c, name);
		FUZZ_CHECK(!(c == '-' && i + 1 < slug_len && slug[i + 1] == '-'),
			"\"--\" in the slug of \"%s\"", name);
	}
	FUZZ_CHECK(is_digits(name, 4) && is_digits(name + 5, 2) &&
		is_digits(name + 8, 2) && is_digits(name + 11, 4),
		"\"%s\"", name);
}

static void check_variant(const char *name, unsigned n)
{
	char *v = msg_name_variant(name, n);
	char suffix[32];
	size_t len, slen;

	FUZZ_CHECK(v != NULL, "variant %u of \"%s\"", n, name);
	len = strlen(v);
	if (n < 2) {
		FUZZ_CHECK(strcmp(v, name) == 0, "variant %u: \"%s\"", n, v);
		free(v);
		return;
	}
	FUZZ_CHECK(len <= MSG_NAME_MAX, "variant of %zu bytes", len);
	if (fuzz_utf8_valid(name, strlen(name)))
		FUZZ_CHECK(fuzz_utf8_valid(v, len), "variant \"%s\"", v);
	slen = (size_t)snprintf(suffix, sizeof(suffix), "~%u", n);
	if (strlen(name) >= 4 && strcmp(name + strlen(name) - 4, ".eml") == 0) {
		FUZZ_CHECK(len >= slen + 4 && strcmp(v + len - 4, ".eml") == 0 &&
			strncmp(v + len - 4 - slen, suffix, slen) == 0,
			"variant %u of \"%s\" is \"%s\"", n, name, v);
	} else {
		FUZZ_CHECK(len >= slen && strcmp(v + len - slen, suffix) == 0,
			"variant %u of \"%s\" is \"%s\"", n, name, v);
	}
	free(v);
}

static void check_folder(const char *in)
{
	size_t len = strlen(in);
	char *out = folder_name_sanitize(in);

	FUZZ_CHECK(out != NULL, "folder_name_sanitize returned NULL%s", "");
	check_safe_name(out, "folder name");
	/* A name that is already safe stays as it is. */
	if (len > 0 && len <= MSG_NAME_MAX && fuzz_utf8_valid(in, len) &&
	    !fuzz_has_control(in, len) && strchr(in, '/') == NULL &&
	    strcmp(in, ".") != 0 && strcmp(in, "..") != 0)
		FUZZ_CHECK(strcmp(out, in) == 0, "safe folder name changed"
			" to \"%s\"", out);
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *header = (const char *)data;
	size_t header_len = size;
	int64_t internaldate = 1700000000, date, when;
	unsigned variant = 2;
	char *name, *again, *str;

	if (size > 0 && data[0] == '@') {
		const uint8_t *nl = memchr(data, '\n', size);
		char line[64];
		size_t n = nl ? (size_t)(nl - data) : size;

		if (n >= sizeof(line))
			n = sizeof(line) - 1;
		memcpy(line, data + 1, n - 1);
		line[n - 1] = '\0';
		if (sscanf(line, "%" SCNd64 " %u", &internaldate, &variant) < 1)
			internaldate = 0;
		header += nl ? (size_t)(nl - data) + 1 : size;
		header_len -= nl ? (size_t)(nl - data) + 1 : size;
	}

	name = msg_name_derive(header, header_len, internaldate);
	FUZZ_CHECK(name != NULL, "msg_name_derive returned NULL%s", "");
	when = msg_header_date(header, header_len, &date) ? date : internaldate;
	check_message_name(name, when);
	again = msg_name_derive(header, header_len, internaldate);
	FUZZ_CHECK(again != NULL && strcmp(name, again) == 0,
		"two derivations differ: \"%s\"", name);
	free(again);
	check_variant(name, variant);
	free(name);

	/* The same bytes as a folder name component and as a file name. */
	str = fuzz_strndup((const uint8_t *)header, header_len);
	check_folder(str);
	check_variant(str, variant);
	free(str);
	return 0;
}
