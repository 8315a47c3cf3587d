/* The in-memory tree the kernel sees: folders as directories, messages as
 * files, each a node with a stable inode number.
 *
 * Directory inode numbers are XXH3-64 of the directory's path in the
 * mount; message inode numbers are XXH3-64 of (folder, UIDVALIDITY, UID),
 * so they survive remounts.  A node lives while it is in the tree or the
 * kernel holds a lookup reference to it (FUSE lookup/forget counting).
 *
 * One mutex guards the whole tree; it is never held across network I/O:
 * listings are fetched unlocked and merged in afterwards.  The listings
 * themselves live in the folder index (src/folder_index.h), which the tree
 * owns and asks for immutable snapshots; background work (refreshes,
 * kernel notifications) runs on one bounded work queue.
 *
 * Lock order: tree lock -> folder index lock, and tree lock -> msg_reader
 * lock (read-ahead is queued under the tree lock).  The work queue's lock
 * is a leaf; its jobs run without it and take the tree lock themselves.
 * Kernel notifications are sent with no lock held and never from inside a
 * request handler for the same directory.
 */
#ifndef MAILFS_FS_TREE_H
#define MAILFS_FS_TREE_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

#include "src/backend.h"
#include "src/msg_reader.h"

struct fs_tree;

struct meta_cache;

/* be, reader and meta (may be NULL) are borrowed and must outlive the
 * tree.  refresh_s: a folder listing older than this is refreshed in the
 * background when its directory is opened. */
struct fs_tree *fs_tree_new(struct backend *be, struct msg_reader *reader,
	struct meta_cache *meta, unsigned refresh_s);
void fs_tree_free(struct fs_tree **tree);

/* Runs run(arg) soon on the tree's bounded pool of background workers,
 * outside any request handler (kernel notifications that must not be
 * sent from inside one).  false when the pool is full or stopping: arg is
 * then still the caller's.  cancel(arg) replaces run(arg) for a job that
 * never ran (unmount). */
bool fs_tree_run_later(struct fs_tree *tree, void (*run)(void *arg),
	void (*cancel)(void *arg), void *arg);

/* Fetches the folder list and rebuilds the directory tree.  Returns 0 or a
 * negative errno with *error_r set. */
int fs_tree_load_folders(struct fs_tree *tree, const char **error_r);

/* Builds the tree from the metadata cache alone (offline start).  Returns
 * 0, or -ENOENT when nothing is cached. */
int fs_tree_load_cached_folders(struct fs_tree *tree);

/* FUSE lookup: fills *e and takes one kernel reference on success.
 * Returns 0 or a negative errno. */
int fs_tree_lookup(struct fs_tree *tree, fuse_ino_t parent, const char *name,
	struct fuse_entry_param *e);

/* For the .parts view: a selectable folder directory's raw name, and
 * with name non-NULL the message file `name` in it (listing the folder
 * if needed).  folder_raw is malloc'd, owned by the caller.  Returns 0,
 * -ENOENT or -ENOTDIR. */
struct fs_msg_id {
	char *folder_raw;
	uint32_t uidvalidity, uid;
	uint64_t size;
	int64_t mtime;
};
int fs_tree_message_id(struct fs_tree *tree, fuse_ino_t dir,
	const char *name, struct fs_msg_id *id_r);

/* FUSE forget: drops n kernel references. */
void fs_tree_forget(struct fs_tree *tree, fuse_ino_t ino, uint64_t n);

/* Attributes of a node; *timeout_r is how long the kernel may keep them. */
int fs_tree_getattr(struct fs_tree *tree, fuse_ino_t ino, struct stat *st,
	double *timeout_r);

/* A directory's entries, taken at opendir so readdir offsets stay valid
 * while the folder changes.  Owned by the caller: fs_dir_snapshot_free. */
struct fs_dir_entry {
	char *name;
	struct stat st;
};
struct fs_dir_snapshot {
	struct fs_dir_entry *entries;   /* ".", "..", then children */
	size_t count;
};
int fs_tree_snapshot_dir(struct fs_tree *tree, fuse_ino_t ino,
	struct fs_dir_snapshot **snap_r);
void fs_dir_snapshot_free(struct fs_dir_snapshot **snap);

/* Takes one kernel reference on ino if it still exists (readdirplus) and
 * fills *e; returns false if the node is gone. */
bool fs_tree_ref_entry(struct fs_tree *tree, fuse_ino_t ino,
	struct fuse_entry_param *e);

/* 0 if ino is a message, 1 if it is one whose size is only an estimate
 * (POP3's LIST: the kernel must not cut reads at it), -EISDIR for a
 * directory, -ENOENT otherwise. */
int fs_tree_check_message(struct fs_tree *tree, fuse_ino_t ino);

/* Reads message content.  Returns bytes read or a negative errno.  When
 * the read shows the message's real size differs from the announced one,
 * the node is corrected and *size_changed_r set. */
ssize_t fs_tree_read(struct fs_tree *tree, fuse_ino_t ino, uint64_t offset,
	size_t length, char *buf, bool *size_changed_r);

/* Extended attributes of a node, as name/value pairs (values are text). */
int fs_tree_getxattr(struct fs_tree *tree, fuse_ino_t ino, const char *name,
	char **value_r);
/* The names, each NUL-terminated, concatenated; malloc'd. */
int fs_tree_listxattr(struct fs_tree *tree, fuse_ino_t ino, char **names_r,
	size_t *len_r);

/* Called (without locks, outside request handlers) for each directory
 * entry that vanished, so the kernel can drop it. */
void fs_tree_set_inval_hook(struct fs_tree *tree,
	void (*hook)(void *ctx, fuse_ino_t parent, const char *name), void *ctx);

/* Enables the write path: trash (raw folder name, NULL: expunge) for
 * unlink, and stage_dir, where files copied in are staged until appended
 * (by a thread fs_tree_start starts).  Returns 0 or a negative errno. */
int fs_tree_enable_writes(struct fs_tree *tree, const char *trash,
	const char *stage_dir);

/* Starts the tree's threads (after daemonizing): the background workers
 * (refreshes and notifications queued before wait for them), the one
 * appending copied-in files, and one watching watch_folder (may be NULL)
 * for changes (IMAP IDLE) so that new mail there appears at once.
 * Returns 0 or a negative errno. */
int fs_tree_start(struct fs_tree *tree, const char *watch_folder);

/* Changes (fs_write.c).  Each returns 0 or a negative errno. */
int fs_tree_unlink(struct fs_tree *tree, fuse_ino_t parent, const char *name);
int fs_tree_rmdir(struct fs_tree *tree, fuse_ino_t parent, const char *name);
int fs_tree_mkdir(struct fs_tree *tree, fuse_ino_t parent, const char *name,
	struct fuse_entry_param *e);
int fs_tree_rename(struct fs_tree *tree, fuse_ino_t parent, const char *name,
	fuse_ino_t newparent, const char *newname, unsigned int flags);
int fs_tree_setxattr(struct fs_tree *tree, fuse_ino_t ino, const char *name,
	const char *value, size_t size);

/* Copy-in (fs_stage.c).  create makes a staged file and opens it (*fd_r,
 * owned by the caller).  open_staged and setattr_staged return 1 when ino
 * is not a staged file. */
int fs_tree_create(struct fs_tree *tree, fuse_ino_t parent, const char *name,
	struct fuse_entry_param *e, int *fd_r);
int fs_tree_open_staged(struct fs_tree *tree, fuse_ino_t ino, int flags,
	int *fd_r);
void fs_tree_wrote_staged(struct fs_tree *tree, fuse_ino_t ino, uint64_t end);
void fs_tree_release_staged(struct fs_tree *tree, fuse_ino_t ino);
/* At each close() of a writer (fd, its descriptor): syncs the bytes and
 * records where they go, so that they survive a crash.  0 or -errno, for
 * close() to report. */
int fs_tree_flush_staged(struct fs_tree *tree, fuse_ino_t ino, int fd);
/* Undoes fs_tree_create when its reply could not be sent. */
void fs_tree_abort_create(struct fs_tree *tree, fuse_ino_t ino);
int fs_tree_setattr_staged(struct fs_tree *tree, fuse_ino_t ino,
	const struct stat *attr, int to_set, struct stat *st_r);

/* The text of the root's user.mailfs.source (copied; may be NULL). */
void fs_tree_set_source(struct fs_tree *tree, const char *text);

/* How many directories the last folder list made (folders and the
 * parents they imply). */
size_t fs_tree_folder_count(struct fs_tree *tree);

/* True when the backend cannot change anything (POP3). */
bool fs_tree_read_only(struct fs_tree *tree);

/* The root's user.mailfs.stats and user.mailfs.status are produced by
 * hook(ctx, "stats" or "status"), a malloc'd string (NULL: out of memory),
 * set by the caller that knows the caches and connections; may be NULL. */
void fs_tree_set_report_hook(struct fs_tree *tree,
	char *(*hook)(void *ctx, const char *what), void *ctx);

#endif
