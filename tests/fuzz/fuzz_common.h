/* Shared helpers for the libFuzzer targets in tests/fuzz/. */
#ifndef MAILFS_FUZZ_COMMON_H
#define MAILFS_FUZZ_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Where property violations are reported: a copy of stderr taken before
 * libFuzzer's -close_fd_mask=2 (used to silence mailfs's own log lines)
 * closes it. */
static int fuzz_report_fd = 2;

__attribute__((constructor)) static void fuzz_report_init(void)
{
	int fd = dup(2);

	if (fd >= 0)
		fuzz_report_fd = fd;
}

/* A property the code under test must keep.  A violation aborts, which
 * libFuzzer reports as a crash and saves the input. */
#define FUZZ_CHECK(cond, ...) do {					\
	if (!(cond)) {							\
		dprintf(fuzz_report_fd, "%s:%d: property violated: %s: ",\
			__FILE__, __LINE__, #cond);			\
		dprintf(fuzz_report_fd, __VA_ARGS__);			\
		dprintf(fuzz_report_fd, "\n");				\
		abort();						\
	}								\
} while (0)

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing
 * above U+10FFFF.  Checks s[0..len). */
static inline bool fuzz_utf8_valid(const char *str, size_t len)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0;

	while (i < len) {
		unsigned char c = s[i];
		uint32_t cp, min;
		size_t n;

		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf) {
			n = 2; cp = c & 0x1f; min = 0x80;
		} else if (c >= 0xe0 && c <= 0xef) {
			n = 3; cp = c & 0x0f; min = 0x800;
		} else if (c >= 0xf0 && c <= 0xf4) {
			n = 4; cp = c & 0x07; min = 0x10000;
		} else {
			return false;
		}
		if (len - i < n)
			return false;
		for (size_t k = 1; k < n; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += n;
	}
	return true;
}

/* True if the valid UTF-8 string s[0..len) holds a C0 control, DEL or a
 * C1 control (U+0080-U+009F, encoded as C2 80 - C2 9F). */
static inline bool fuzz_has_control(const char *str, size_t len)
{
	const unsigned char *s = (const unsigned char *)str;

	for (size_t i = 0; i < len; i++) {
		if (s[i] < 0x20 || s[i] == 0x7f)
			return true;
		if (s[i] == 0xc2 && i + 1 < len && s[i + 1] >= 0x80 &&
		    s[i + 1] <= 0x9f)
			return true;
	}
	return false;
}

/* A NUL-terminated copy of data[0..size); aborts when out of memory. */
static inline char *fuzz_strndup(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);

	if (s == NULL)
		abort();
	for (size_t i = 0; i < size; i++)
		s[i] = (char)data[i];
	s[size] = '\0';
	return s;
}

#endif
