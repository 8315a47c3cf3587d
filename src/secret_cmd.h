/* Running a command that prints a secret (password_cmd, token_cmd).
 *
 * The command runs as `/bin/sh -c CMD` in a process group of its own, with
 * stdin from /dev/null.  Its standard output is read up to
 * SECRET_CMD_OUT_MAX bytes and only its first line is kept; nothing it
 * prints on standard output is ever logged.  Its standard error goes to
 * the log line by line (cut at 200 bytes a line, 20 lines a run), marked
 * with the label.  A command still running after the timeout is killed
 * with its whole process group.  Thread-safe: nothing is shared between
 * runs.
 */
#ifndef MAILFS_SECRET_CMD_H
#define MAILFS_SECRET_CMD_H

#define SECRET_CMD_OUT_MAX (64u << 10)

/* Runs cmd and returns the first line of its output without the line end,
 * malloc'd and owned by the caller (wipe it with secret_free).  Fails,
 * returning NULL with *error_r set, when the command cannot be started,
 * runs past timeout_ms, exits with a status other than 0, prints nothing
 * but an empty first line, or prints a NUL.  label names the command in
 * errors and in the log ("password_cmd"). */
char *secret_cmd_run(const char *cmd, const char *label, int timeout_ms,
	const char **error_r);

#endif
