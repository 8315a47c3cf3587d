/* The FUSE low-level operations of a mailfs mount. */
#ifndef MAILFS_FS_OPS_H
#define MAILFS_FS_OPS_H

#include "fs/fs_tree.h"

/* The operations table; its callbacks expect the fs_tree as userdata. */
extern const struct fuse_lowlevel_ops fs_ops;

/* Lets the operations send invalidations through the session once it
 * exists (size corrections, vanished messages). */
void fs_ops_set_session(struct fuse_session *se);

/* An fs_tree invalidation hook that forwards to the kernel (ctx unused). */
void fs_ops_inval_entry(void *ctx, fuse_ino_t parent, const char *name);

struct fs_outbox;

/* Adds MOUNTPOINT/outbox (ob borrowed; NULL: none). */
void fs_ops_set_outbox(struct fs_outbox *ob);

struct fs_parts;

/* Adds FOLDER/.parts (p borrowed; NULL: none). */
void fs_ops_set_parts(struct fs_parts *p);

#endif
