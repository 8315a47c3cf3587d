/* Changes made through the file system: rm, mv, mkdir, rmdir, renaming
 * folders and setting flags.  Each checks what it needs under the tree
 * lock, talks to the server without it, then applies the result. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/fs_tree_priv.h"
#include "fs/msg_name.h"
#include "src/log.h"

static bool writable(struct fs_tree *t)
{
	return backend_writable(t->be);
}

void tree_detach_message(struct fs_tree *t, struct node *dir, struct node *x)
{
	for (size_t i = 0; i < dir->n_msgs; i++)
		if (dir->msgs[i] == x) {
			memmove(&dir->msgs[i], &dir->msgs[i + 1],
				(dir->n_msgs - i - 1) * sizeof(*dir->msgs));
			dir->n_msgs--;
			break;
		}
	folder_index_remove(t->index, x->folder_raw, x->msg_uidvalidity,
		x->uid);
	if (dir->raw) {
		/* The index moved the listing's time forward. */
		struct folder_listing *l = folder_index_get(t->index,
			dir->raw);

		if (l && l->changed_at > dir->list_changed_at)
			dir->list_changed_at = l->changed_at;
		folder_listing_release(&l);
	}
	x->attached = false;
	tree_maybe_free(t, x);
}

void tree_note_flags_set(struct fs_tree *t, struct node *dir)
{
	if (dir->raw)
		folder_index_distrust(t->index, dir->raw);
}

void tree_note_moved_in(struct fs_tree *t, struct node *dir)
{
	if (dir->raw)
		folder_index_moved_in(t->index, dir->raw);
}

/* The server found no message (or folder) to rm or mv: another client
 * removed it.  List the folder again, so that its entry goes, rather
 * than trust a name that would only fail again (lock held; dropped
 * around the network). */
static void relist_after_vanished(struct fs_tree *t, fuse_ino_t dir_ino)
{
	struct inval_list il = { 0 };
	struct node *dir = tree_find(t, dir_ino);

	if (dir && dir->is_dir && dir->raw && dir->selectable)
		tree_refresh_messages(t, dir, &il);
	tree_inval_later(t, &il);
}

static struct node *child_dir(struct node *dir, const char *name)
{
	for (size_t i = 0; i < dir->n_dirs; i++)
		if (strcmp(dir->dirs[i]->name, name) == 0)
			return dir->dirs[i];
	return NULL;
}

/* A message to act on: its identity, copied out from under the lock. */
struct msg_target {
	fuse_ino_t ino, dir_ino;
	char *folder;
	uint32_t uidvalidity, uid;
};

static int take_message(struct fs_tree *t, fuse_ino_t parent,
	const char *name, struct msg_target *mt)
{
	struct node *dir = tree_find(t, parent), *x;

	if (!dir || !dir->is_dir)
		return -ENOENT;
	x = tree_find_msg(dir, name);
	if (!x)
		return child_dir(dir, name) ? -EISDIR : -ENOENT;
	mt->ino = x->ino;
	mt->dir_ino = dir->ino;
	mt->uid = x->uid;
	mt->uidvalidity = x->msg_uidvalidity;
	mt->folder = strdup(x->folder_raw);
	return mt->folder ? 0 : -ENOMEM;
}

int fs_tree_unlink(struct fs_tree *t, fuse_ino_t parent, const char *name)
{
	struct msg_target mt = { 0 };
	enum backend_status st;
	const char *error;
	struct node *dir, *x;
	int ret;

	pthread_mutex_lock(&t->lock);
	dir = tree_find(t, parent);
	x = dir && dir->is_dir ? tree_find_staged(dir, name) : NULL;
	if (x) {
		tree_drop_staged(t, x);
		pthread_mutex_unlock(&t->lock);
		return 0;
	}
	if (dir && dir->is_dir && !tree_find_msg(dir, name) &&
	    !child_dir(dir, name))
		tree_ensure_messages(t, dir, false);
	ret = take_message(t, parent, name, &mt);
	pthread_mutex_unlock(&t->lock);
	if (ret < 0)
		return ret;
	if (!writable(t)) {
		free(mt.folder);
		return -EROFS;
	}
	st = backend_expunge(t->be, mt.folder, mt.uidvalidity, mt.uid,
		t->trash, &error);
	if (st != BACKEND_OK) {
		log_warn("cannot delete %s in %s: %s", name, mt.folder, error);
		free(mt.folder);
		if (st == BACKEND_NOT_FOUND) {
			pthread_mutex_lock(&t->lock);
			relist_after_vanished(t, mt.dir_ino);
			pthread_mutex_unlock(&t->lock);
		}
		return -backend_status_errno(st);
	}
	log_debug("deleted UID %u from %s", mt.uid, mt.folder);
	pthread_mutex_lock(&t->lock);
	dir = tree_find(t, mt.dir_ino);
	x = tree_find(t, mt.ino);
	if (dir && x && x->attached && x->parent == dir)
		tree_detach_message(t, dir, x);
	pthread_mutex_unlock(&t->lock);
	free(mt.folder);
	return 0;
}

int fs_tree_rmdir(struct fs_tree *t, fuse_ino_t parent, const char *name)
{
	struct inval_list il = { 0 };
	enum backend_status st;
	struct node *dir, *d;
	const char *error;
	char *raw = NULL;
	int ret = 0;

	if (!writable(t))
		return -EROFS;
	pthread_mutex_lock(&t->lock);
	dir = tree_find(t, parent);
	d = dir && dir->is_dir ? child_dir(dir, name) : NULL;
	if (!d) {
		ret = dir && dir->is_dir && tree_find_msg(dir, name) ?
			-ENOTDIR : -ENOENT;
		goto out_unlock;
	}
	/* Empty on the server, not just in a possibly stale listing:
	 * DELETE would take every message with it. */
	if (d->selectable) {
		ret = tree_refresh_messages(t, d, &il);
		if (ret < 0)
			goto out_unlock;
	}
	if (d->n_msgs || d->n_dirs || d->n_staged) {
		ret = -ENOTEMPTY;
		goto out_unlock;
	}
	if (!d->raw) {
		ret = -ENOENT;
		goto out_unlock;
	}
	raw = strdup(d->raw);
	pthread_mutex_unlock(&t->lock);
	if (!raw)
		return -ENOMEM;

	st = backend_delete_folder(t->be, raw, &error);
	if (st == BACKEND_NOT_FOUND) {
		/* A parent that only existed through its children goes away
		 * with the last of them: gone is what rmdir wanted. */
		log_debug("folder %s is already gone: %s", raw, error);
	} else if (st != BACKEND_OK) {
		log_warn("cannot delete folder %s: %s", raw, error);
		free(raw);
		return -backend_status_errno(st);
	}
	folder_index_forget(t->index, raw);
	pthread_mutex_lock(&t->lock);
	dir = tree_find(t, parent);
	d = dir ? child_dir(dir, name) : NULL;
	if (d) {
		for (size_t i = 0; i < dir->n_dirs; i++)
			if (dir->dirs[i] == d) {
				memmove(&dir->dirs[i], &dir->dirs[i + 1],
					(dir->n_dirs - i - 1) *
					sizeof(*dir->dirs));
				dir->n_dirs--;
				break;
			}
		tree_dir_changed(t, dir);
		d->attached = false;
		tree_detach_messages(t, d);
		tree_maybe_free(t, d);
	}
	pthread_mutex_unlock(&t->lock);
	free(raw);
	/* Implied parents that vanished with it stay until rmdir'ed too
	 * (DELETE then finds nothing, which is what rmdir wanted) or until
	 * the next folder refresh. */
	return 0;
out_unlock:
	pthread_mutex_unlock(&t->lock);
	free(raw);
	/* Entries of a folder found non-empty: rare, and inside a request
	 * for its parent, so they are left to time out. */
	for (size_t i = 0; i < il.n; i++)
		free(il.items[i].name);
	free(il.items);
	return ret;
}

/* The raw name a new child `name` of dir would have, or NULL (*err_r). */
static char *child_raw_name(struct fs_tree *t, struct node *dir,
	const char *name, int *err_r)
{
	const char *error;
	char *clean, *raw;

	/* Only names that show up unchanged in the tree may be created. */
	clean = folder_name_sanitize(name);
	if (!clean || strcmp(clean, name) != 0 || strchr(name, '\r') ||
	    strchr(name, '\n')) {
		free(clean);
		*err_r = -EINVAL;
		return NULL;
	}
	free(clean);
	if (dir != t->root && !dir->raw) {
		*err_r = -ENOENT;
		return NULL;
	}
	raw = backend_encode_name(t->be, dir == t->root ? NULL : dir->raw,
		name, &error);
	if (!raw) {
		log_warn("refusing folder name '%s': %s", name, error);
		*err_r = -EINVAL;
	}
	return raw;
}

int fs_tree_mkdir(struct fs_tree *t, fuse_ino_t parent, const char *name,
	struct fuse_entry_param *e)
{
	enum backend_status st;
	const char *error;
	struct node *dir;
	char *raw;
	int ret = 0;

	if (!writable(t))
		return -EROFS;
	pthread_mutex_lock(&t->lock);
	dir = tree_find(t, parent);
	if (!dir || !dir->is_dir) {
		pthread_mutex_unlock(&t->lock);
		return -ENOENT;
	}
	if (child_dir(dir, name) || tree_find_msg(dir, name) ||
	    tree_find_staged(dir, name)) {
		pthread_mutex_unlock(&t->lock);
		return -EEXIST;
	}
	raw = child_raw_name(t, dir, name, &ret);
	pthread_mutex_unlock(&t->lock);
	if (!raw)
		return ret;

	st = backend_create_folder(t->be, raw, &error);
	free(raw);
	if (st != BACKEND_OK) {
		log_warn("cannot create folder '%s': %s", name, error);
		return -backend_status_errno(st);
	}
	ret = fs_tree_load_folders(t, &error);
	if (ret < 0)
		return ret;
	return fs_tree_lookup(t, parent, name, e);
}

/* Rewrites the raw names under a renamed folder (lock held). */
static void rename_raw_subtree(struct node *d, const char *old_raw,
	const char *new_raw)
{
	size_t ol = strlen(old_raw);
	char *n;

	if (d->raw && strncmp(d->raw, old_raw, ol) == 0 &&
	    asprintf(&n, "%s%s", new_raw, d->raw + ol) >= 0) {
		free(d->raw);
		d->raw = n;
		for (size_t i = 0; i < d->n_msgs; i++) {
			struct node *x = d->msgs[i];

			if (asprintf(&n, "%s", d->raw) >= 0) {
				free(x->folder_raw);
				x->folder_raw = n;
			}
		}
	}
	for (size_t i = 0; i < d->n_dirs; i++)
		rename_raw_subtree(d->dirs[i], old_raw, new_raw);
}

static int rename_folder(struct fs_tree *t, struct node *dir, struct node *d,
	struct node *newdir, const char *newname)
{
	char *old_raw, *new_raw;
	enum backend_status st;
	const char *error;
	int ret = 0;

	if (child_dir(newdir, newname) || tree_find_msg(newdir, newname))
		return -EEXIST;
	for (struct node *p = newdir; p; p = p->parent)
		if (p == d)
			return -EINVAL;   /* into itself */
	if (!d->raw)
		return -ENOENT;
	new_raw = child_raw_name(t, newdir, newname, &ret);
	if (!new_raw)
		return ret;
	old_raw = strdup(d->raw);
	if (!old_raw) {
		free(new_raw);
		return -ENOMEM;
	}
	d->pins++;
	pthread_mutex_unlock(&t->lock);
	st = backend_rename_folder(t->be, old_raw, new_raw, &error);
	pthread_mutex_lock(&t->lock);
	d->pins--;
	if (st != BACKEND_OK) {
		log_warn("cannot rename folder %s: %s", old_raw, error);
		ret = -backend_status_errno(st);
		goto out;
	}
	/* Move the node itself, so the kernel's inode stays valid. */
	for (size_t i = 0; i < dir->n_dirs; i++)
		if (dir->dirs[i] == d) {
			memmove(&dir->dirs[i], &dir->dirs[i + 1],
				(dir->n_dirs - i - 1) * sizeof(*dir->dirs));
			dir->n_dirs--;
			break;
		}
	tree_dir_changed(t, dir);
	tree_dir_changed(t, newdir);
	free(d->name);
	d->name = strdup(newname);
	tree_add_child_dir(newdir, d);
	rename_raw_subtree(d, old_raw, new_raw);
	folder_index_forget(t->index, old_raw);
out:
	free(old_raw);
	free(new_raw);
	return ret;
}

static int move_message(struct fs_tree *t, struct node *dir, struct node *x,
	struct node *newdir, const char *newname)
{
	struct msg_target mt = { 0 };
	enum backend_status st;
	const char *error;
	uint32_t new_uid = 0;
	char *to;
	int ret;

	if (!newdir->selectable || !newdir->raw)
		return -EPERM;
	if (tree_find_msg(newdir, newname) || child_dir(newdir, newname))
		return -EEXIST;
	if (!writable(t))
		return -EROFS;
	ret = take_message(t, dir->ino, x->name, &mt);
	if (ret < 0)
		return ret;
	to = strdup(newdir->raw);
	pthread_mutex_unlock(&t->lock);
	if (to)
		st = backend_move(t->be, mt.folder, mt.uidvalidity, mt.uid,
			to, &new_uid, &error);
	else
		st = BACKEND_TEMP, error = "out of memory";
	pthread_mutex_lock(&t->lock);
	if (st != BACKEND_OK) {
		log_warn("cannot move UID %u from %s to %s: %s", mt.uid,
			mt.folder, to ? to : "?", error);
		if (st == BACKEND_NOT_FOUND)
			relist_after_vanished(t, mt.dir_ino);
		ret = -backend_status_errno(st);
		goto out;
	}
	dir = tree_find(t, mt.dir_ino);
	x = tree_find(t, mt.ino);
	if (dir && x && x->attached && x->parent == dir)
		tree_detach_message(t, dir, x);
	/* The target learns of it at its next listing, which must not be
	 * served from before the move. */
	tree_note_moved_in(t, newdir);
	ret = 0;
out:
	free(mt.folder);
	free(to);
	return ret;
}

int fs_tree_rename(struct fs_tree *t, fuse_ino_t parent, const char *name,
	fuse_ino_t newparent, const char *newname, unsigned int flags)
{
	struct node *dir, *newdir, *x, *d;
	int ret;

	if (flags & ~RENAME_NOREPLACE)
		return -EINVAL;
	if (t->be->read_only)
		return -EROFS;
	pthread_mutex_lock(&t->lock);
again:
	dir = tree_find(t, parent);
	newdir = tree_find(t, newparent);
	if (!dir || !newdir || !dir->is_dir || !newdir->is_dir) {
		ret = -ENOENT;
		goto out;
	}
	if ((x = tree_find_staged(dir, name))) {
		/* Its APPEND would land in the old folder: once it has, the
		 * staged name is gone (ENOENT) or, if it failed, renamed. */
		if (stage_wait_commit(t, x))
			goto again;
		ret = stage_rename(t, x, newdir, newname);
	} else if ((d = child_dir(dir, name))) {
		ret = writable(t) ? rename_folder(t, dir, d, newdir, newname) :
			-EROFS;
	} else if ((x = tree_find_msg(dir, name))) {
		if (newdir == dir)
			/* Names come from the message's headers. */
			ret = strcmp(name, newname) == 0 ? 0 : -EPERM;
		else
			ret = move_message(t, dir, x, newdir, newname);
	} else {
		ret = -ENOENT;
	}
out:
	pthread_mutex_unlock(&t->lock);
	return ret;
}

int fs_tree_setxattr(struct fs_tree *t, fuse_ino_t ino, const char *name,
	const char *value, size_t size)
{
	struct node *x, *dir;
	enum backend_status st;
	const char *error;
	char *flags, *folder;
	uint32_t uid, uidvalidity;
	fuse_ino_t dir_ino;

	if (t->be->read_only)
		return -EROFS;
	flags = strndup(value, size);
	if (!flags)
		return -ENOMEM;
	pthread_mutex_lock(&t->lock);
	x = tree_find(t, ino);
	if (!x || x->is_dir) {
		pthread_mutex_unlock(&t->lock);
		free(flags);
		return x ? -ENOTSUP : -ENOENT;
	}
	if (x->is_staged) {
		int ret = stage_setxattr(t, x, name, flags);

		pthread_mutex_unlock(&t->lock);
		free(flags);
		return ret;
	}
	if (strcmp(name, "user.mail.flags") != 0) {
		pthread_mutex_unlock(&t->lock);
		free(flags);
		return stage_xattr_ignored(name) ? 0 : -ENOTSUP;
	}
	if (!writable(t)) {
		pthread_mutex_unlock(&t->lock);
		free(flags);
		return -EROFS;
	}
	folder = strdup(x->folder_raw);
	uid = x->uid;
	uidvalidity = x->msg_uidvalidity;
	dir_ino = x->parent ? x->parent->ino : 0;
	pthread_mutex_unlock(&t->lock);
	if (!folder) {
		free(flags);
		return -ENOMEM;
	}
	st = backend_set_flags(t->be, folder, uidvalidity, uid, flags,
		&error);
	if (st != BACKEND_OK) {
		log_warn("cannot set flags of UID %u in %s: %s", uid, folder,
			error);
		free(folder);
		free(flags);
		return -backend_status_errno(st);
	}
	pthread_mutex_lock(&t->lock);
	x = tree_find(t, ino);
	if (x && !x->is_dir) {
		free(x->flags);
		x->flags = strdup(flags);
	}
	dir = tree_find(t, dir_ino);
	if (dir)
		/* Flags we set are flags we must not miss on resync. */
		tree_note_flags_set(t, dir);
	pthread_mutex_unlock(&t->lock);
	free(folder);
	free(flags);
	return 0;
}
