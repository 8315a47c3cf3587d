/* The outbox/ directory: files dropped there are sent by SMTP.
 *
 * outbox/NAME          a message queued in the spool (read-only; rm
 *                      cancels it unless it is being sent); its
 *                      user.mail.status says queued, sending or deferred
 * outbox/failed/NAME   a message that could not be sent, and NAME.error
 *                      with the reason; rm removes them
 *
 * A new file is kept in the spool's drafts/ while written and handed to
 * the spool when the process writing it closes its last descriptor of it
 * (a flush that leaves it none), so that close() itself reports a refused
 * message (EINVAL) and returns 0 only once the message is durably queued.
 * Names starting with '.' are drafts: taken only when renamed to a plain
 * name.  Files not taken (drafts, refusals for want of space, files cut
 * off by a crash) stay in drafts/ and are listed again by the next mount,
 * unsent.
 *
 * Outbox inodes have FS_OUTBOX_INO_BIT set; fs_ops sends every request for
 * such an inode here.  Thread-safe.
 */
#ifndef MAILFS_FS_OUTBOX_H
#define MAILFS_FS_OUTBOX_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "fs/fs_tree.h"

#define FS_OUTBOX_INO_BIT (1ULL << 63)
#define FS_OUTBOX_NAME "outbox"

struct outbox_spool;
struct fs_outbox;

/* spool is borrowed and must outlive the outbox; default_from (may be
 * NULL) is copied.  Files being written live in the spool's drafts/. */
struct fs_outbox *fs_outbox_new(struct outbox_spool *spool,
	const char *default_from);
void fs_outbox_free(struct fs_outbox **ob);

static inline bool fs_outbox_owns(fuse_ino_t ino)
{
	/* the outbox's inodes have one of the low two bits set; with both
	 * clear they belong to the .parts view (fs_parts.h) */
	return (ino & FS_OUTBOX_INO_BIT) != 0 && (ino & 3) != 0;
}

/* The entry for MOUNTPOINT/outbox, for the root's lookups and listing. */
void fs_outbox_root_entry(struct fs_outbox *ob, struct fuse_entry_param *e,
	bool take_ref);

/* FUSE operations on outbox inodes; the same contracts as fs_tree's.
 * File handles are fd + 1 (0: none). */
int fs_outbox_lookup(struct fs_outbox *ob, fuse_ino_t parent,
	const char *name, struct fuse_entry_param *e);
void fs_outbox_forget(struct fs_outbox *ob, fuse_ino_t ino, uint64_t n);
int fs_outbox_getattr(struct fs_outbox *ob, fuse_ino_t ino, struct stat *st);
int fs_outbox_snapshot_dir(struct fs_outbox *ob, fuse_ino_t ino,
	struct fs_dir_snapshot **snap_r);
int fs_outbox_open(struct fs_outbox *ob, fuse_ino_t ino, int flags,
	pid_t pid, int *fd_r);
int fs_outbox_create(struct fs_outbox *ob, fuse_ino_t parent,
	const char *name, pid_t pid, struct fuse_entry_param *e, int *fd_r);
/* After a write that ended at end, or failed with errno error (then the
 * file is never queued until opened for writing again); -EIO when the
 * file was already handed to the spool. */
int fs_outbox_wrote(struct fs_outbox *ob, fuse_ino_t ino, uint64_t end,
	int error);
/* Hands a written file to the spool once its writer is done.  Called at
 * each close() of a descriptor (flush, by thread pid, whose result
 * close() returns) and when an open file ends (release, final: errors
 * can only be logged).  The file is taken at the close by any thread of
 * the process that last opened it for writing that leaves that process
 * no descriptor of it; closes by other processes (children that
 * inherited it) do not count.  Where /proc cannot tell, it is taken at
 * the end of the last open file. */
int fs_outbox_flush(struct fs_outbox *ob, fuse_ino_t ino, pid_t pid,
	bool final);
int fs_outbox_unlink(struct fs_outbox *ob, fuse_ino_t parent,
	const char *name);
int fs_outbox_rename(struct fs_outbox *ob, fuse_ino_t parent,
	const char *name, fuse_ino_t newparent, const char *newname);
int fs_outbox_setattr(struct fs_outbox *ob, fuse_ino_t ino,
	const struct stat *attr, int to_set, struct stat *st_r);
int fs_outbox_getxattr(struct fs_outbox *ob, fuse_ino_t ino,
	const char *name, char **value_r);
int fs_outbox_listxattr(struct fs_outbox *ob, fuse_ino_t ino,
	char **names_r, size_t *len_r);

#endif
