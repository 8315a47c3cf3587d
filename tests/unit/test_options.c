/* Unit tests for the default cache and spool directories (src/options.c):
 * XDG first, then HOME, then the passwd entry's home; never /tmp. */
#include "src/options.h"

#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/unit/check.h"

static void expect_dir(const char *what, char *got, const char *error,
		       const char *want, int line)
{
	checks++;
	if (!got || strcmp(got, want) != 0) {
		failures++;
		fprintf(stderr, "%s:%d: FAIL: %s = %s (%s), want %s\n",
			__FILE__, line, what, got ? got : "NULL",
			got ? "" : error, want);
	}
	free(got);
}

#define CACHE(url, want) do {						\
	const char *error_ = "";					\
	char *got_ = options_default_cache_dir(url, &error_);		\
	expect_dir("cache_dir", got_, error_, want, __LINE__);		\
} while (0)

#define SPOOL(url, want) do {						\
	const char *error_ = "";					\
	char *got_ = options_default_spool_dir(url, &error_);		\
	expect_dir("spool_dir", got_, error_, want, __LINE__);		\
} while (0)

static void clear_env(void)
{
	unsetenv("HOME");
	unsetenv("XDG_CACHE_HOME");
	unsetenv("XDG_STATE_HOME");
}

int main(void)
{
	struct mail_url url = { .scheme = SCHEME_IMAPS, .user = "me@example.com",
				.host = "imap.example.com", .port = 993 };
	struct mail_url slash = { .scheme = SCHEME_IMAPS, .user = "a/../b",
				  .host = "h", .port = 993 };
	const struct passwd *pw = getpwuid(getuid());
	char want[4096];
	struct stat st;

	clear_env();
	setenv("HOME", "/home/me", 1);
	CACHE(&url, "/home/me/.cache/mailfs/me@example.com@imap.example.com");
	SPOOL(&url, "/home/me/.local/state/mailfs/me@example.com@"
		"imap.example.com/outbox");

	setenv("XDG_CACHE_HOME", "/x/cache", 1);
	setenv("XDG_STATE_HOME", "/x/state", 1);
	CACHE(&url, "/x/cache/mailfs/me@example.com@imap.example.com");
	SPOOL(&url, "/x/state/mailfs/me@example.com@imap.example.com/outbox");

	/* A relative XDG directory is ignored, as the specification says. */
	setenv("XDG_CACHE_HOME", "cache", 1);
	setenv("XDG_STATE_HOME", "", 1);
	CACHE(&url, "/home/me/.cache/mailfs/me@example.com@imap.example.com");
	SPOOL(&url, "/home/me/.local/state/mailfs/me@example.com@"
		"imap.example.com/outbox");

	/* The account is one path component in both. */
	CACHE(&slash, "/home/me/.cache/mailfs/a_.._b@h");
	SPOOL(&slash, "/home/me/.local/state/mailfs/a_.._b@h/outbox");

	/* Without HOME (or with a relative one): the passwd entry's home,
	 * when it exists; never a shared directory. */
	CHECK(pw != NULL, "uid %u has no passwd entry", (unsigned)getuid());
	if (pw && stat(pw->pw_dir, &st) == 0 && S_ISDIR(st.st_mode)) {
		for (int i = 0; i < 2; i++) {
			clear_env();
			if (i)
				setenv("HOME", "relative/home", 1);
			snprintf(want, sizeof(want), "%s/.cache/mailfs/%s",
				pw->pw_dir, "me@example.com@imap.example.com");
			CACHE(&url, want);
			snprintf(want, sizeof(want),
				"%s/.local/state/mailfs/%s/outbox", pw->pw_dir,
				"me@example.com@imap.example.com");
			SPOOL(&url, want);
		}
	} else if (pw) {
		const char *error = NULL;
		char *got;

		clear_env();
		got = options_default_cache_dir(&url, &error);
		CHECK(got == NULL && error && strstr(error, "cache_dir="),
			"%s", got ? got : error);
		free(got);
		got = options_default_spool_dir(&url, &error);
		CHECK(got == NULL && error && strstr(error, "spool_dir="),
			"%s", got ? got : error);
		free(got);
	}
	return check_summary("options");
}
