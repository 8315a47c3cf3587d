/* Checks for the C unit tests.  A failed check is reported and counted but
 * does not stop the test, so one run shows every failure.  Each test
 * program includes this once; the counters are its own. */
#ifndef MAILFS_TEST_CHECK_H
#define MAILFS_TEST_CHECK_H

#include <stdint.h>
#include <stdio.h>

static int failures;	/* a test may add its own failures here */
static int checks;

/* CHECK(cond) or CHECK(cond, fmt, ...): the printf-style message, when
 * given, follows the failed condition in the report. */
#define CHECK(cond, ...) do {						\
	checks++;							\
	if (!(cond)) {							\
		failures++;						\
		fprintf(stderr, "%s:%d: FAIL: %s", __FILE__, __LINE__,	\
			#cond);						\
		__VA_OPT__(fputs(": ", stderr);				\
			   fprintf(stderr, __VA_ARGS__);)		\
		fputc('\n', stderr);					\
	}								\
} while (0)

/* Prints the tally under the test's name; returns main's exit status. */
static inline int check_summary(const char *name)
{
	printf("%s: %d checks, %d failed\n", name, checks, failures);
	return failures ? 1 : 0;
}

/* xorshift32: the same pseudo-random inputs on every run.  *state is
 * the test's own, seeded with any value but 0. */
static inline uint32_t check_xorshift(uint32_t *state)
{
	*state ^= *state << 13;
	*state ^= *state >> 17;
	*state ^= *state << 5;
	return *state;
}

#endif
