/* What /proc says about the processes that use the mount: which process
 * a thread belongs to, and whether a process still holds a descriptor of
 * one of our files.  Used to tell the last close of a writer from the
 * closes of the copies a shell or a thread pool makes on the way.
 *
 * Only /proc is read (fdinfo, never the files themselves), so nothing
 * here calls back into the mount.  Thread-safe.
 */
#ifndef MAILFS_PROC_FDS_H
#define MAILFS_PROC_FDS_H

#include <stdint.h>
#include <sys/types.h>

/* The thread group (process) id of thread tid, or 0 when it cannot be
 * known (tid 0: a caller from another pid namespace; /proc hidden). */
pid_t proc_tgid(pid_t tid);

/* Whether process tgid holds an open descriptor on the inode numbered
 * ino: 1 yes, 0 no (or the process is gone or exiting, having closed
 * them all), -errno when /proc does not say (another user's process). */
int proc_holds_inode(pid_t tgid, uint64_t ino);

#endif
