/* Fault points for the tests; see fault_point.h. */
#include "src/fault_point.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

void fault_point(const char *step)
{
	const char *want = getenv("MAILFS_TEST_KILL_AT");

	if (want && strcmp(want, step) == 0)
		raise(SIGKILL);
}
