/* FUSE low-level operations: translate kernel requests into fs_tree calls.
 * Nothing here speaks a mail protocol. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "fs/fs_ops.h"
#include "fs/fs_outbox.h"
#include "fs/fs_parts.h"
#include "src/block_cache.h"
#include "src/log.h"

/* Notifications may come from background threads; the lock keeps them
 * from using a session that is being torn down. */
static struct fuse_session *session;
static pthread_rwlock_t session_lock = PTHREAD_RWLOCK_INITIALIZER;

void fs_ops_set_session(struct fuse_session *se)
{
	pthread_rwlock_wrlock(&session_lock);
	session = se;
	pthread_rwlock_unlock(&session_lock);
}

void fs_ops_inval_entry(void *ctx, fuse_ino_t parent, const char *name)
{
	pthread_rwlock_rdlock(&session_lock);
	if (session)
		fuse_lowlevel_notify_inval_entry(session, parent, name,
			strlen(name));
	pthread_rwlock_unlock(&session_lock);
}

static struct fs_tree *tree_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/* The outbox/ directory, when SMTP is configured; its inodes are told
 * apart by FS_OUTBOX_INO_BIT. */
static struct fs_outbox *outbox;

void fs_ops_set_outbox(struct fs_outbox *ob)
{
	outbox = ob;
}

static bool is_outbox(fuse_ino_t ino)
{
	return outbox && fs_outbox_owns(ino);
}

/* The .parts view (fs_parts.h); its inodes are told apart by
 * fs_parts_owns. */
static struct fs_parts *parts;

void fs_ops_set_parts(struct fs_parts *p)
{
	parts = p;
}

static bool is_parts(fuse_ino_t ino)
{
	return parts && fs_parts_owns(ino);
}

/* Nothing under .parts can change: replies EROFS for its inodes. */
static bool parts_refuse(fuse_req_t req, fuse_ino_t ino)
{
	if (!is_parts(ino))
		return false;
	fuse_reply_err(req, EROFS);
	return true;
}

static bool is_outbox_root_name(fuse_ino_t parent, const char *name)
{
	return outbox && parent == FUSE_ROOT_ID &&
		strcmp(name, FS_OUTBOX_NAME) == 0;
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	if (conn->capable & FUSE_CAP_READDIRPLUS)
		conn->want |= FUSE_CAP_READDIRPLUS;
	/* Several reads of one file may run at once on the session pool. */
	if (conn->capable & FUSE_CAP_ASYNC_READ)
		conn->want |= FUSE_CAP_ASYNC_READ;
	conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	int r;

	if (is_outbox_root_name(parent, name)) {
		fs_outbox_root_entry(outbox, &e, true);
		fuse_reply_entry(req, &e);
		return;
	}
	r = parts && !is_outbox(parent) && fs_parts_is_lookup(parent, name) ?
		fs_parts_lookup(parts, parent, name, &e) :
		is_outbox(parent) ? fs_outbox_lookup(outbox, parent, name, &e) :
		fs_tree_lookup(tree_of(req), parent, name, &e);

	if (r == -ENOENT) {
		/* Negative entries are not cached: new mail may arrive. */
		memset(&e, 0, sizeof(e));
		fuse_reply_entry(req, &e);
		return;
	}
	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_entry(req, &e);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	if (is_parts(ino))
		fs_parts_forget(parts, ino, nlookup);
	else if (is_outbox(ino))
		fs_outbox_forget(outbox, ino, nlookup);
	else
		fs_tree_forget(tree_of(req), ino, nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count,
	struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++) {
		if (is_parts(forgets[i].ino))
			fs_parts_forget(parts, forgets[i].ino,
				forgets[i].nlookup);
		else if (is_outbox(forgets[i].ino))
			fs_outbox_forget(outbox, forgets[i].ino,
				forgets[i].nlookup);
		else
			fs_tree_forget(tree_of(req), forgets[i].ino,
				forgets[i].nlookup);
	}
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino,
	struct fuse_file_info *fi)
{
	struct stat st;
	double timeout = 0;
	int r = is_parts(ino) ? fs_parts_getattr(parts, ino, &st, &timeout) :
		is_outbox(ino) ? fs_outbox_getattr(outbox, ino, &st) :
		fs_tree_getattr(tree_of(req), ino, &st, &timeout);

	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_attr(req, &st, timeout);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
	int to_set, struct fuse_file_info *fi)
{
	struct stat st;

	if (parts_refuse(req, ino))
		return;
	int r = is_outbox(ino) ?
		fs_outbox_setattr(outbox, ino, attr, to_set, &st) :
		fs_tree_setattr_staged(tree_of(req), ino, attr, to_set, &st);

	if (r == 0) {
		fuse_reply_attr(req, &st, 0);
		return;
	}
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	/* A message on the server never changes.  Setting what it already
	 * has (times and mode, as cp -a and rsync -a do) is not a change. */
	double timeout;
	if (fs_tree_getattr(tree_of(req), ino, &st, &timeout) < 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	/* Directories are folders: their times and modes mean nothing on
	 * the server, and cp -a and rsync -a set them after a restore. */
	if (S_ISDIR(st.st_mode) && !(to_set & FUSE_SET_ATTR_SIZE)) {
		fuse_reply_attr(req, &st, timeout);
		return;
	}
	if ((to_set & FUSE_SET_ATTR_SIZE) ||
	    ((to_set & FUSE_SET_ATTR_MTIME) && attr->st_mtime != st.st_mtime) ||
	    (to_set & FUSE_SET_ATTR_MTIME_NOW)) {
		fuse_reply_err(req, fs_tree_read_only(tree_of(req)) ?
			EROFS : EPERM);
		return;
	}
	fuse_reply_attr(req, &st, timeout);
}

/* File handles: 0 for a message on the server (no state at all), fd + 1
 * for a local file (copy-in, outbox), with FH_WRITE when opened for
 * writing. */
#define FH_WRITE (1ULL << 40)

static int fh_fd(const struct fuse_file_info *fi)
{
	return fi->fh ? (int)((fi->fh & ~FH_WRITE) - 1) : -1;
}

static uint64_t fh_make(int fd, int flags)
{
	return ((uint64_t)fd + 1) |
		((flags & O_ACCMODE) != O_RDONLY ? FH_WRITE : 0);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	int fd, r;

	if (is_parts(ino)) {
		bool direct_io = false;

		r = fs_parts_open(parts, ino, fi->flags, &fi->fh, &direct_io);
		if (r < 0) {
			fuse_reply_err(req, -r);
			return;
		}
		fi->direct_io = direct_io;   /* a size still estimated */
		fi->keep_cache = !direct_io;
		fi->noflush = 1;
		if (fuse_reply_open(req, fi) == -ENOENT)
			fs_parts_release(parts, fi->fh);
		return;
	}
	if (is_outbox(ino)) {
		r = fs_outbox_open(outbox, ino, fi->flags,
			fuse_req_ctx(req)->pid, &fd);
		if (r < 0) {
			fuse_reply_err(req, -r);
			return;
		}
		fi->fh = fh_make(fd, fi->flags);
		fi->direct_io = 1;
		fuse_reply_open(req, fi);
		return;
	}
	r = fs_tree_open_staged(tree_of(req), ino, fi->flags, &fd);

	if (r == 0) {
		fi->fh = fh_make(fd, fi->flags);
		fi->direct_io = 1;   /* its content is still changing */
		fuse_reply_open(req, fi);
		return;
	}
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	r = fs_tree_check_message(tree_of(req), ino);
	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		/* Messages on an IMAP server are immutable; a POP3 view
		 * changes nothing at all. */
		fuse_reply_err(req, fs_tree_read_only(tree_of(req)) ?
			EROFS : EPERM);
		return;
	}
	fi->fh = 0;
	fi->noflush = 1;
	if (r == 1)
		/* The size is a guess until one full read: the page cache
		 * would cut reads at it, so read around it this once. */
		fi->direct_io = 1;
	else
		/* Content never changes for an inode: keep the page cache. */
		fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name,
	mode_t mode, struct fuse_file_info *fi)
{
	struct fuse_entry_param e;

	if (parts_refuse(req, parent))
		return;
	int fd, r = is_outbox(parent) ?
		fs_outbox_create(outbox, parent, name,
			fuse_req_ctx(req)->pid, &e, &fd) :
		fs_tree_create(tree_of(req), parent, name, &e, &fd);

	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	fi->fh = fh_make(fd, O_WRONLY);
	fi->direct_io = 1;
	if (fuse_reply_create(req, &e, fi) != 0) {
		close(fd);
		if (!is_outbox(parent))
			fs_tree_abort_create(tree_of(req), e.ino);
	}
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
	size_t size, off_t off, struct fuse_file_info *fi)
{
	int fd = fh_fd(fi);
	ssize_t n;

	if (fd < 0) {
		fuse_reply_err(req, EPERM);
		return;
	}
	n = pwrite(fd, buf, size, off);
	if (n < 0) {
		int e = errno;

		if (is_outbox(ino))
			fs_outbox_wrote(outbox, ino, 0, e);
		fuse_reply_err(req, e);
		return;
	}
	if (is_outbox(ino)) {
		int r = fs_outbox_wrote(outbox, ino, (uint64_t)off + n, 0);

		if (r < 0) {
			fuse_reply_err(req, -r);
			return;
		}
	} else
		fs_tree_wrote_staged(tree_of(req), ino, (uint64_t)off + n);
	fuse_reply_write(req, (size_t)n);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
	struct fuse_file_info *fi)
{
	int fd = fh_fd(fi);

	if (fd >= 0 && (datasync ? fdatasync(fd) : fsync(fd)) < 0) {
		fuse_reply_err(req, errno);
		return;
	}
	fuse_reply_err(req, 0);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	/* This is where close() learns whether an outbox message was
	 * queued, or a copy-in made durable: release cannot report
	 * anything.  For the outbox, read-only descriptors count too: the
	 * writer's last one may be one. */
	int r = 0;

	if (is_outbox(ino)) {
		if (fi->fh)
			r = fs_outbox_flush(outbox, ino,
				fuse_req_ctx(req)->pid, false);
	} else if (fi->fh & FH_WRITE) {
		r = fs_tree_flush_staged(tree_of(req), ino, fh_fd(fi));
	}
	fuse_reply_err(req, -r);
}

static void notify_size_run(void *arg)
{
	fuse_ino_t ino = (fuse_ino_t)(uintptr_t)arg;

	pthread_rwlock_rdlock(&session_lock);
	if (session)
		fuse_lowlevel_notify_inval_inode(session, ino, 0, 0);
	pthread_rwlock_unlock(&session_lock);
}

/* The kernel must relearn the size; telling it from inside the read that
 * found out could deadlock, so a background worker does it.  Dropped when
 * the pool is full: the attributes then time out as usual. */
static void notify_size_changed(struct fs_tree *t, fuse_ino_t ino)
{
	fs_tree_run_later(t, notify_size_run, NULL, (void *)(uintptr_t)ino);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
	struct fuse_file_info *fi)
{
	struct fs_tree *t = tree_of(req);   /* req is gone once answered */
	bool size_changed = false;
	char *buf = malloc(size ? size : 1);
	ssize_t got;
	int fd = fh_fd(fi);

	if (buf && is_parts(ino)) {
		got = fs_parts_read(parts, fi->fh, (uint64_t)off, size, buf,
			&size_changed);
		if (got < 0)
			fuse_reply_err(req, (int)-got);
		else
			fuse_reply_buf(req, buf, (size_t)got);
		free(buf);
		if (size_changed)
			notify_size_changed(t, ino);
		return;
	}
	if (buf && fd >= 0) {
		got = pread(fd, buf, size, off);
		if (got < 0)
			fuse_reply_err(req, errno);
		else
			fuse_reply_buf(req, buf, (size_t)got);
		free(buf);
		return;
	}
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	got = fs_tree_read(t, ino, (uint64_t)off, size, buf, &size_changed);
	if (got < 0)
		fuse_reply_err(req, (int)-got);
	else
		fuse_reply_buf(req, buf, (size_t)got);
	free(buf);
	if (size_changed)
		notify_size_changed(t, ino);
}

static void op_release(fuse_req_t req, fuse_ino_t ino,
	struct fuse_file_info *fi)
{
	int fd = fh_fd(fi);

	if (is_parts(ino)) {
		fs_parts_release(parts, fi->fh);
		fd = -1;
	}
	if (fd >= 0) {
		close(fd);
		if (!is_outbox(ino))
			fs_tree_release_staged(tree_of(req), ino);
		else if (fi->fh & FH_WRITE)
			/* A file opened for writing ends: take what no flush
			 * could (its writer unknown); errors can only be
			 * logged now. */
			fs_outbox_flush(outbox, ino, 0, true);
	}
	fuse_reply_err(req, 0);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino,
	struct fuse_file_info *fi)
{
	struct fs_dir_snapshot *snap;
	int r = is_parts(ino) ? fs_parts_snapshot_dir(parts, ino, &snap) :
		is_outbox(ino) ? fs_outbox_snapshot_dir(outbox, ino, &snap) :
		fs_tree_snapshot_dir(tree_of(req), ino, &snap);

	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	if (ino == FUSE_ROOT_ID && outbox) {
		struct fs_dir_entry *ne = realloc(snap->entries,
			(snap->count + 1) * sizeof(*ne));
		struct fuse_entry_param e;

		if (ne) {
			snap->entries = ne;
			fs_outbox_root_entry(outbox, &e, false);
			ne[snap->count].name = strdup(FS_OUTBOX_NAME);
			ne[snap->count].st = e.attr;
			if (ne[snap->count].name)
				snap->count++;
		}
	}
	fi->fh = (uint64_t)(uintptr_t)snap;
	if (fuse_reply_open(req, fi) == -ENOENT)
		fs_dir_snapshot_free(&snap);   /* the opener was interrupted */
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
	struct fuse_file_info *fi, bool plus)
{
	struct fs_dir_snapshot *snap = (void *)(uintptr_t)fi->fh;
	char *buf = malloc(size ? size : 1);
	size_t used = 0;

	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	for (size_t i = (size_t)off; i < snap->count; i++) {
		const struct fs_dir_entry *de = &snap->entries[i];
		size_t need;

		if (!plus) {
			need = fuse_add_direntry(req, buf + used, size - used,
				de->name, &de->st, (off_t)i + 1);
			if (need > size - used)
				break;
			used += need;
			continue;
		}
		struct fuse_entry_param e;
		bool dot = i < 2;

		memset(&e, 0, sizeof(e));
		e.attr = de->st;
		/* Check the fit before taking a reference the kernel would
		 * never know of. */
		need = fuse_add_direntry_plus(req, NULL, 0, de->name, &e, 0);
		if (need > size - used)
			break;
		if (!dot && (fs_outbox_owns(de->st.st_ino) ||
			     !fs_tree_ref_entry(tree_of(req), de->st.st_ino,
						&e))) {
			memset(&e, 0, sizeof(e));
			e.attr = de->st;
		}
		if (dot)
			e.attr.st_ino = de->st.st_ino;
		used += fuse_add_direntry_plus(req, buf + used, size - used,
			de->name, &e, (off_t)i + 1);
	}
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
	struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size,
	off_t off, struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, true);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino,
	struct fuse_file_info *fi)
{
	struct fs_dir_snapshot *snap = (void *)(uintptr_t)fi->fh;

	fs_dir_snapshot_free(&snap);
	fuse_reply_err(req, 0);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
	size_t size)
{
	char *value;
	int r = is_parts(ino) ? -ENODATA :
		is_outbox(ino) ? fs_outbox_getxattr(outbox, ino, name, &value) :
		fs_tree_getxattr(tree_of(req), ino, name, &value);
	size_t len;

	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	len = strlen(value);
	if (size == 0)
		fuse_reply_xattr(req, len);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, value, len);
	free(value);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	char *names;
	size_t len;
	int r = is_parts(ino) ? ((names = strdup("")) ? (len = 0, 0) :
			-ENOMEM) :
		is_outbox(ino) ? fs_outbox_listxattr(outbox, ino, &names, &len) :
		fs_tree_listxattr(tree_of(req), ino, &names, &len);

	if (r < 0) {
		fuse_reply_err(req, -r);
		return;
	}
	if (size == 0)
		fuse_reply_xattr(req, len);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, names, len);
	free(names);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
	const char *value, size_t size, int flags)
{
	if (parts_refuse(req, ino))
		return;
	if (is_outbox(ino)) {
		fuse_reply_err(req, ENOTSUP);
		return;
	}
	fuse_reply_err(req, -fs_tree_setxattr(tree_of(req), ino, name, value,
		size));
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	fuse_reply_err(req, fs_tree_read_only(tree_of(req)) ? EROFS : EPERM);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv;

	memset(&sv, 0, sizeof(sv));
	sv.f_bsize = BLOCK_CACHE_BLOCK_SIZE;
	sv.f_frsize = 512;
	sv.f_namemax = 255;
	fuse_reply_statfs(req, &sv);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
	mode_t mode)
{
	struct fuse_entry_param e;
	int r;

	if (parts_refuse(req, parent))
		return;
	if (is_outbox(parent) || is_outbox_root_name(parent, name)) {
		fuse_reply_err(req, is_outbox(parent) ? EPERM : EEXIST);
		return;
	}
	r = fs_tree_mkdir(tree_of(req), parent, name, &e);

	if (r < 0)
		fuse_reply_err(req, -r);
	else
		fuse_reply_entry(req, &e);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	if (parts_refuse(req, parent))
		return;
	if (is_outbox(parent))
		fuse_reply_err(req, -fs_outbox_unlink(outbox, parent, name));
	else
		fuse_reply_err(req, -fs_tree_unlink(tree_of(req), parent, name));
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	if (parts_refuse(req, parent))
		return;
	if (is_outbox(parent) || is_outbox_root_name(parent, name))
		fuse_reply_err(req, EPERM);
	else
		fuse_reply_err(req, -fs_tree_rmdir(tree_of(req), parent, name));
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
	fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	if (parts_refuse(req, parent) || parts_refuse(req, newparent))
		return;
	if (is_outbox(parent) && is_outbox(newparent))
		fuse_reply_err(req, -fs_outbox_rename(outbox, parent, name,
			newparent, newname));
	else if (is_outbox(parent) || is_outbox(newparent) ||
		 is_outbox_root_name(parent, name) ||
		 is_outbox_root_name(newparent, newname))
		/* Between the outbox and the folders: copy and delete, as
		 * between file systems. */
		fuse_reply_err(req, EXDEV);
	else
		fuse_reply_err(req, -fs_tree_rename(tree_of(req), parent, name,
			newparent, newname, flags));
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
	mode_t mode, dev_t rdev)
{
	/* Only regular files can become messages (through create). */
	fuse_reply_err(req, fs_tree_read_only(tree_of(req)) ? EROFS : EPERM);
}

const struct fuse_lowlevel_ops fs_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.open = op_open,
	.read = op_read,
	.release = op_release,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.releasedir = op_releasedir,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.setxattr = op_setxattr,
	.removexattr = op_removexattr,
	.statfs = op_statfs,
	.mkdir = op_mkdir,
	.rmdir = op_rmdir,
	.unlink = op_unlink,
	.rename = op_rename,
	.create = op_create,
	.write = op_write,
	.flush = op_flush,
	.fsync = op_fsync,
	.mknod = op_mknod,
};
