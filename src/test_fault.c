#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "src/test_fault.h"

void test_fault_point(const char *step)
{
	const char *want = getenv("MAILFS_TEST_KILL_AT");

	if (want && strcmp(want, step) == 0)
		kill(getpid(), SIGKILL);
}
