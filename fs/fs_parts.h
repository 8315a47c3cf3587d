/* The `.parts` view: FOLDER/.parts/<message name without .eml>/ holds the
 * message's text, html, headers, attachments and nested messages
 * (src/mime_parts.h), decoded, read-only.
 *
 * `.parts` is found by lookup in every folder directory but never listed
 * by readdir, so ls, find, grep -r, rsync -a, cp -a and tar of the mount
 * do not see it (as ZFS hides `.zfs`); a server folder named ".parts" is
 * shadowed by it.  A message's structure is fetched when its directory is
 * first looked up (IMAP: BODYSTRUCTURE; POP3: the whole message, parsed),
 * and a part's bytes only when it is read, through the block cache: a
 * decoded range of a base64 attachment costs the encoded bytes that hold
 * it (src/part_reader.h).
 *
 * Inode numbers: FS_OUTBOX_INO_BIT set and the low two bits clear, which
 * neither folders and messages (the bit is clear) nor the outbox (low
 * bits not both clear) ever use.  `.parts` of a folder is XXH3 of the
 * folder's inode and ".parts", a message's directory XXH3 of that and
 * the message file's inode, every other node XXH3 of its parent's inode
 * and its name, so numbers are stable while the message is.  Two
 * nodes whose numbers coincide (a 61-bit hash) fail the second lookup
 * with EIO rather than alias.
 *
 * Nodes live while the kernel references them (lookup/forget).  All
 * functions are thread-safe; no lock is held across network I/O.
 */
#ifndef MAILFS_FS_PARTS_H
#define MAILFS_FS_PARTS_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "fs/fs_outbox.h"
#include "fs/fs_tree.h"

#define FS_PARTS_NAME ".parts"

struct fs_parts;

static inline bool fs_parts_owns(fuse_ino_t ino)
{
	return (ino & FS_OUTBOX_INO_BIT) != 0 && (ino & 3) == 0;
}

struct block_cache;

/* be, tree and cache (may be NULL) are borrowed and must outlive the
 * view; part bytes are cached under account (copied). */
struct fs_parts *fs_parts_new(struct backend *be, struct fs_tree *tree,
	struct block_cache *cache, const char *account);
void fs_parts_free(struct fs_parts **parts);

/* Whether a lookup of name under parent is the view's: parent is one of
 * its nodes, or name is ".parts". */
static inline bool fs_parts_is_lookup(fuse_ino_t parent, const char *name)
{
	return fs_parts_owns(parent) || __builtin_strcmp(name, FS_PARTS_NAME) == 0;
}

/* As the fs_tree functions of the same names; each returns 0 or a
 * negative errno. */
int fs_parts_lookup(struct fs_parts *p, fuse_ino_t parent, const char *name,
	struct fuse_entry_param *e);
void fs_parts_forget(struct fs_parts *p, fuse_ino_t ino, uint64_t n);
int fs_parts_getattr(struct fs_parts *p, fuse_ino_t ino, struct stat *st,
	double *timeout_r);
int fs_parts_snapshot_dir(struct fs_parts *p, fuse_ino_t ino,
	struct fs_dir_snapshot **snap_r);

/* Opens a file for reading (anything else: EROFS).  *fh_r is the handle
 * for read and release; *direct_io_r says its size is only an estimate
 * until it has been read to the end. */
int fs_parts_open(struct fs_parts *p, fuse_ino_t ino, int flags,
	uint64_t *fh_r, bool *direct_io_r);
/* Returns bytes read or a negative errno; *size_changed_r is set when the
 * read found the file's real size differs from what getattr said. */
ssize_t fs_parts_read(struct fs_parts *p, uint64_t fh, uint64_t offset,
	size_t length, char *buf, bool *size_changed_r);
void fs_parts_release(struct fs_parts *p, uint64_t fh);

struct fs_parts_stats {
	uint64_t bytes_fetched;       /* part bytes received (POP3: whole
	                                 messages taken apart included) */
	uint64_t structures_fetched;  /* message structures asked of the
	                                 server (not found in the cache) */
};

void fs_parts_get_stats(struct fs_parts *p, struct fs_parts_stats *st_r);

#endif
