/* Telling a service manager how mailfs is doing (systemd's notify
 * protocol): one datagram of "KEY=value" lines, such as "READY=1" or
 * "STATUS=connecting", sent to the AF_UNIX socket NOTIFY_SOCKET names.
 * Without NOTIFY_SOCKET every call does nothing.
 */
#ifndef MAILFS_SD_NOTIFY_H
#define MAILFS_SD_NOTIFY_H

/* Takes the socket's address from NOTIFY_SOCKET ("/path", or "@name" for
 * an abstract socket) and removes the variable, so that programs mailfs
 * runs (password_cmd) do not report in its name.  Call once, first thing,
 * before any thread starts. */
void sd_notify_init(void);

/* Sends the lines of state (e.g. "READY=1", "STOPPING=1").  Never
 * blocks; a manager that does not listen is ignored. */
void sd_notify_send(const char *state);

/* Sends "STATUS=<text>": one line, control characters shown as '?' so
 * that no text (a server's error message) can add assignments of its own.
 * prefix, when not NULL, is a line sent first in the same datagram
 * ("READY=1"). */
void sd_notify_status(const char *prefix, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#endif
