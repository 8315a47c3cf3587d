/* Fault points for the tests: named places where the process kills
 * itself, to show that what it promised survives a crash there.
 *
 * fault_point("step") raises SIGKILL when the environment variable
 * MAILFS_TEST_KILL_AT equals "step"; it does nothing when the variable is
 * unset, which is how mailfs always runs outside the tests. */
#ifndef MAILFS_FAULT_POINT_H
#define MAILFS_FAULT_POINT_H

void fault_point(const char *step);

#endif
