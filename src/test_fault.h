/* Fault points for the tests: the daemon kills itself (SIGKILL, as a
 * crash would) at a named step when the environment variable
 * MAILFS_TEST_KILL_AT names that step.  Unset, nothing happens. */
#ifndef MAILFS_TEST_FAULT_H
#define MAILFS_TEST_FAULT_H

void test_fault_point(const char *step);

#endif
