/* Copy-in: a new file written into a folder becomes a message.
 *
 * The bytes are staged in a local file until the file has been closed and
 * left alone for STAGE_QUIET_S seconds, because cp -a, rsync -a and mv set
 * times and xattrs after close().  Then one APPEND files it with the flags
 * from user.mail.flags and the date from the file's mtime (if one was set),
 * else its Date header, else now; and the folder shows it under its usual
 * derived name.  Names starting with '.' (rsync's temporary files, drafts)
 * are never appended: only once renamed to a plain name.
 *
 * Nothing written is lost: at each close() of a writer the bytes are
 * fsynced and a record of where they go is written to the journal
 * (stage_journal.h) before close() returns, and every change of name,
 * folder, flags or date rewrites it.  The record says "sending" before an
 * APPEND goes out, so after a crash the message is looked for on the
 * server before it is appended again: each copy-in arrives once.  At
 * start the journal's copy-ins are listed in their folders again and
 * appended.  A copy-in the server refuses for good stays listed, with the
 * reason in user.mail.status, and is not tried again until it is renamed
 * or its flags or date change. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs/fs_tree_priv.h"
#include "fs/msg_name.h"
#include "fs/stage_journal.h"
#include "src/fault_point.h"
#include "src/log.h"

/* Pauses between tries after temporary failures: 10 s, doubling, at most
 * this long. */
#define RETRY_MAX_S 300

struct node *tree_find_staged(struct node *dir, const char *name)
{
	for (size_t i = 0; i < dir->n_staged; i++)
		if (strcmp(dir->staged[i]->name, name) == 0)
			return dir->staged[i];
	return NULL;
}

static void unlist_staged(struct node *x)
{
	struct node *dir = x->parent;

	for (size_t i = 0; dir && i < dir->n_staged; i++)
		if (dir->staged[i] == x) {
			memmove(&dir->staged[i], &dir->staged[i + 1],
				(dir->n_staged - i - 1) * sizeof(*dir->staged));
			dir->n_staged--;
			break;
		}
}

static int list_staged(struct node *dir, struct node *x)
{
	struct node **s = realloc(dir->staged,
		(dir->n_staged + 1) * sizeof(*s));

	if (!s)
		return -ENOMEM;
	dir->staged = s;
	dir->staged[dir->n_staged++] = x;
	x->parent = dir;
	return 0;
}

/* ---- the journal -------------------------------------------------------- */

/* Writes x's record as it would be in folder `folder` under `name` (lock
 * held).  Returns 0 or -errno. */
static int journal_save_as(const struct node *x, const char *folder,
	const char *name)
{
	struct stage_record r = {
		.folder = (char *)folder,
		.name = (char *)name,
		.flags = x->flags ? x->flags : "",
		.date = x->mtime_set ? x->mtime : -1,
		.state = x->failed ? STAGE_FAILED :
			x->sent ? STAGE_SENDING : STAGE_READY,
		.uidvalidity = x->sent_uidvalidity,
		.min_uid = x->sent_min_uid,
		.reason = x->failed,
	};
	int ret;

	if (!folder)
		return -EIO;
	ret = stage_record_save(x->job_path, &r);
	if (ret < 0)
		log_warn("cannot record the copy-in %s in %s: %s", name,
			x->job_path, strerror(-ret));
	return ret;
}

static int journal_save(struct node *x)
{
	int ret = journal_save_as(x, x->parent ? x->parent->raw : NULL,
		x->name);

	if (ret == 0)
		x->journaled = true;
	return ret;
}

/* After the user changed something: what was refused may pass now. */
static void user_changed(struct node *x)
{
	free(x->failed);
	x->failed = NULL;
	x->tries = 0;
	x->retry_at = 0;
	x->changed_at = tree_now();
}

void tree_drop_staged(struct fs_tree *t, struct node *x)
{
	unlist_staged(x);
	/* The record first: bytes without a record are never appended. */
	if (x->job_path && x->journaled)
		stage_record_remove(x->job_path);
	x->journaled = false;
	if (x->stage_path)
		unlink(x->stage_path);
	x->attached = false;
	tree_maybe_free(t, x);
}

static bool appendable(const struct node *x)
{
	return x->name[0] != '.';
}

char *stage_status(const struct node *x)
{
	char *v = NULL;

	if (!x->failed)
		return strdup("pending");
	if (asprintf(&v, "failed: %s", x->failed) < 0)
		return NULL;
	return v;
}

bool stage_xattr_ignored(const char *name)
{
	return (strncmp(name, "user.mail.", 10) == 0 &&
		strcmp(name, "user.mail.flags") != 0) ||
		strncmp(name, "user.mailfs.", 12) == 0;
}

/* A staged node for the file at path (lock held); takes path and
 * job_path. */
static struct node *new_staged(struct fs_tree *t, struct node *dir,
	const char *name, char **path, char **job_path)
{
	struct node *x = calloc(1, sizeof(*x));

	if (!x || !(x->name = strdup(name)) || !(x->flags = strdup("")) ||
	    list_staged(dir, x) < 0) {
		if (x) {
			free(x->name);
			free(x->flags);
		}
		free(x);
		return NULL;
	}
	/* Any free inode number will do: a staged file never comes back. */
	x->ino = tree_dir_ino(*path);
	while (tree_find(t, x->ino))
		x->ino++;
	x->is_staged = true;
	x->stage_path = *path;
	x->job_path = *job_path;
	*path = *job_path = NULL;
	x->mtime = time(NULL);
	x->changed_at = tree_now();
	x->attached = true;
	tree_hash_add(t, x);
	return x;
}

int fs_tree_create(struct fs_tree *t, fuse_ino_t parent, const char *name,
	struct fuse_entry_param *e, int *fd_r)
{
	struct node *dir, *x;
	char *path = NULL, *job = NULL;
	int fd = -1, ret;

	if (!t->stage_dir || !backend_writable(t->be))
		return -EROFS;
	pthread_mutex_lock(&t->lock);
	dir = tree_find(t, parent);
	if (!dir || !dir->is_dir) {
		ret = -ENOENT;
		goto out_unlock;
	}
	if (!dir->selectable) {
		ret = -EPERM;   /* no messages can live here */
		goto out_unlock;
	}
	if ((ret = tree_ensure_messages(t, dir, false)) < 0)
		goto out_unlock;
	if (tree_find_msg(dir, name) || tree_find_staged(dir, name)) {
		ret = -EEXIST;
		goto out_unlock;
	}
	for (size_t i = 0; i < dir->n_dirs; i++)
		if (strcmp(dir->dirs[i]->name, name) == 0) {
			ret = -EEXIST;
			goto out_unlock;
		}
	fd = stage_file_create(t->stage_dir, &path, &job);
	if (fd < 0) {
		ret = fd;
		goto out_unlock;
	}
	x = new_staged(t, dir, name, &path, &job);
	if (!x) {
		close(fd);
		ret = -ENOMEM;
		goto out_unlock;
	}
	x->open_count = 1;
	x->nlookup = 1;
	tree_fill_entry(t, x, e);
	/* Its attributes change while it is written. */
	e->attr_timeout = e->entry_timeout = 0;
	*fd_r = fd;
	ret = 0;
out_unlock:
	pthread_mutex_unlock(&t->lock);
	if (path)
		unlink(path);
	free(path);
	free(job);
	return ret;
}

void fs_tree_abort_create(struct fs_tree *t, fuse_ino_t ino)
{
	struct node *x;

	pthread_mutex_lock(&t->lock);
	x = tree_find(t, ino);
	/* The kernel never learned of it: no forget will come, and nobody
	 * wrote anything into it. */
	if (x && x->is_staged) {
		if (x->nlookup)
			x->nlookup--;
		if (x->open_count)
			x->open_count--;
		if (x->attached)
			tree_drop_staged(t, x);
		else
			tree_maybe_free(t, x);
	}
	pthread_mutex_unlock(&t->lock);
}

int fs_tree_open_staged(struct fs_tree *t, fuse_ino_t ino, int flags,
	int *fd_r)
{
	struct node *x;
	int fd, ret = 0;

	pthread_mutex_lock(&t->lock);
	x = tree_find(t, ino);
	if (!x || !x->is_staged || !x->attached) {
		pthread_mutex_unlock(&t->lock);
		return 1;   /* not staged: the caller handles it */
	}
	fd = open(x->stage_path, (flags & (O_ACCMODE | O_TRUNC)) | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
	} else {
		x->open_count++;
		x->changed_at = tree_now();
		if ((flags & O_ACCMODE) != O_RDONLY)
			user_changed(x);
		if (flags & O_TRUNC)
			x->size = 0;
		*fd_r = fd;
	}
	pthread_mutex_unlock(&t->lock);
	return ret;
}

void fs_tree_wrote_staged(struct fs_tree *t, fuse_ino_t ino, uint64_t end)
{
	struct node *x;

	pthread_mutex_lock(&t->lock);
	x = tree_find(t, ino);
	if (x && x->is_staged) {
		if (end > x->size)
			x->size = end;
		x->changed_at = tree_now();
	}
	pthread_mutex_unlock(&t->lock);
}

int fs_tree_flush_staged(struct fs_tree *t, fuse_ino_t ino, int fd)
{
	struct node *x;
	int ret = 0;

	/* The bytes first, without the lock: this may take a while. */
	if (fsync(fd) < 0)
		return -errno;
	pthread_mutex_lock(&t->lock);
	x = tree_find(t, ino);
	if (x && x->is_staged && x->attached)
		ret = journal_save(x);
	pthread_mutex_unlock(&t->lock);
	if (ret == 0)
		fault_point("copyin-journaled");
	return ret;
}

void fs_tree_release_staged(struct fs_tree *t, fuse_ino_t ino)
{
	bool quiet = false;
	struct node *x;

	pthread_mutex_lock(&t->lock);
	x = tree_find(t, ino);
	if (x && x->is_staged) {
		if (x->open_count)
			x->open_count--;
		x->changed_at = tree_now();
		quiet = !x->open_count && x->journaled;
		pthread_cond_signal(&t->stage_wake);
	}
	pthread_mutex_unlock(&t->lock);
	if (quiet)
		fault_point("copyin-quiet");   /* the quiet period starts */
}

/* Syncs the bytes of a staged file changed other than through a writer's
 * descriptor (a truncate). */
static int sync_path(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC), ret = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

int fs_tree_setattr_staged(struct fs_tree *t, fuse_ino_t ino,
	const struct stat *attr, int to_set, struct stat *st_r)
{
	struct node *x;
	int ret = 0;

	pthread_mutex_lock(&t->lock);
	x = tree_find(t, ino);
	if (!x || !x->is_staged) {
		pthread_mutex_unlock(&t->lock);
		return 1;
	}
	if (to_set & FUSE_SET_ATTR_SIZE) {
		if (truncate(x->stage_path, attr->st_size) < 0 ||
		    (x->journaled && sync_path(x->stage_path) < 0))
			ret = -errno;
		else
			x->size = (uint64_t)attr->st_size;
	}
	if (ret == 0 && (to_set & (FUSE_SET_ATTR_MTIME |
				   FUSE_SET_ATTR_MTIME_NOW))) {
		int64_t old = x->mtime;
		bool old_set = x->mtime_set;

		x->mtime = to_set & FUSE_SET_ATTR_MTIME_NOW ? time(NULL) :
			attr->st_mtime;
		x->mtime_set = true;
		if (x->journaled && (x->mtime != old || !old_set) &&
		    (ret = journal_save(x)) < 0) {
			x->mtime = old;
			x->mtime_set = old_set;
		}
	}
	/* Mode, owner and atime have no meaning for a message: accepted
	 * and ignored, so cp -a and rsync -a do not fail. */
	if (ret == 0 && (to_set & (FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_MTIME |
				   FUSE_SET_ATTR_MTIME_NOW)))
		user_changed(x);
	x->changed_at = tree_now();
	tree_fill_stat(t, x, st_r);
	pthread_mutex_unlock(&t->lock);
	return ret;
}

/* Flags are IMAP atoms, \\-prefixed for system flags, separated by
 * spaces: refuse anything else now, where cp -a can report it, rather
 * than have every APPEND fail later. */
static bool flags_valid(const char *v)
{
	bool start = true;

	for (; *v; v++) {
		unsigned char c = (unsigned char)*v;

		if (c == ' ') {
			start = true;
			continue;
		}
		if (c == '\\' ? !start :
		    c < 0x21 || c > 0x7e || strchr("(){%*\"]", c))
			return false;
		start = false;
	}
	return true;
}

int stage_setxattr(struct fs_tree *t, struct node *x, const char *name,
	const char *value)
{
	if (strcmp(name, "user.mail.flags") == 0) {
		char *f, *old;
		int ret;

		if (!flags_valid(value))
			return -EINVAL;
		f = strdup(value);
		if (!f)
			return -ENOMEM;
		if (x->flags && strcmp(x->flags, f) == 0) {
			free(f);
			x->changed_at = tree_now();
			return 0;
		}
		old = x->flags;
		x->flags = f;
		if (x->journaled && (ret = journal_save(x)) < 0) {
			x->flags = old;
			free(f);
			return ret;
		}
		free(old);
		x->flags_set = true;
		user_changed(x);
		return 0;
	}
	/* A restore copies user.mail.uid along: it names the old copy's
	 * place and means nothing here. */
	if (stage_xattr_ignored(name))
		return 0;
	return -ENOTSUP;
}

bool stage_wait_commit(struct fs_tree *t, struct node *x)
{
	fuse_ino_t ino = x->ino;

	if (!x->committing)
		return false;
	do
		pthread_cond_wait(&t->stage_done, &t->lock);
	while ((x = tree_find(t, ino)) && x->is_staged && x->committing);
	return true;
}

int stage_rename(struct fs_tree *t, struct node *x, struct node *newdir,
	const char *newname)
{
	struct node *old;
	bool was_failed;
	char *n;
	int ret;

	if (!newdir->selectable)
		return -EPERM;
	if (tree_find_msg(newdir, newname))
		return -EEXIST;
	for (size_t i = 0; i < newdir->n_dirs; i++)
		if (strcmp(newdir->dirs[i]->name, newname) == 0)
			return -EISDIR;
	n = strdup(newname);
	if (!n)
		return -ENOMEM;
	/* Recorded before it is done: a crash in between keeps the old
	 * record or the new one, never none. */
	if (x->journaled &&
	    (ret = journal_save_as(x, newdir->raw, newname)) < 0) {
		free(n);
		return ret;
	}
	old = tree_find_staged(newdir, newname);
	if (old && old != x)
		tree_drop_staged(t, old);   /* rename replaces the target */
	unlist_staged(x);
	free(x->name);
	x->name = n;
	list_staged(newdir, x);
	was_failed = x->failed != NULL;
	user_changed(x);
	if (x->journaled && was_failed)
		journal_save(x);   /* no longer failed */
	pthread_cond_signal(&t->stage_wake);
	return 0;
}

/* ---- committing --------------------------------------------------------- */

struct commit {
	fuse_ino_t ino, dir_ino;
	char *path, *folder, *flags, *name;
	int64_t date;              /* -1: look at the Date header */
	bool sent;                 /* an earlier APPEND may have arrived */
	uint32_t uidvalidity, min_uid;
};

static void commit_free(struct commit *c)
{
	free(c->path);
	free(c->folder);
	free(c->flags);
	free(c->name);
}

/* Picks one staged file ready to append (lock held); false if none. */
static bool next_ready(struct fs_tree *t, bool all, struct commit *c)
{
	time_t now = tree_now();
	struct node **dirs = NULL;
	size_t n = 0, cap = 0;
	bool found = false;

	/* A walk over the folders; copy-ins are few at any time. */
	dirs = calloc(1, sizeof(*dirs));
	if (!dirs)
		return false;
	dirs[n++] = t->root;
	cap = 1;
	for (size_t i = 0; i < n && !found; i++) {
		struct node *d = dirs[i];

		for (size_t k = 0; k < d->n_staged && !found; k++) {
			struct node *x = d->staged[k];

			if (x->committing || x->open_count || !appendable(x) ||
			    x->failed || !d->raw ||
			    (all && x->final_try) ||
			    (!all && (now - x->changed_at < STAGE_QUIET_S ||
				      now < x->retry_at)))
				continue;
			/* Unmounting: one last try each; what is left is
			 * appended at the next start. */
			x->final_try = all;
			x->committing = true;
			c->ino = x->ino;
			c->dir_ino = d->ino;
			c->path = strdup(x->stage_path);
			c->folder = strdup(d->raw);
			c->flags = strdup(x->flags ? x->flags : "");
			c->name = strdup(x->name);
			c->date = x->mtime_set ? x->mtime : -1;
			c->sent = x->sent;
			c->uidvalidity = x->sent_uidvalidity;
			c->min_uid = x->sent_min_uid;
			found = true;
		}
		if (n + d->n_dirs > cap) {
			struct node **nd = realloc(dirs,
				(n + d->n_dirs) * sizeof(*dirs));
			if (!nd)
				break;
			dirs = nd;
			cap = n + d->n_dirs;
		}
		for (size_t k = 0; k < d->n_dirs; k++)
			dirs[n++] = d->dirs[k];
	}
	free(dirs);
	return found;
}

static char *read_whole(const char *path, size_t *len_r)
{
	struct stat st;
	char *data;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t done = 0;

	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) < 0 || !(data = malloc(st.st_size ? st.st_size : 1))) {
		close(fd);
		return NULL;
	}
	while (done < (size_t)st.st_size) {
		ssize_t r = read(fd, data + done, st.st_size - done);

		if (r <= 0) {
			free(data);
			close(fd);
			return NULL;
		}
		done += r;
	}
	close(fd);
	*len_r = done;
	return data;
}

/* Whether a refusal is for good: the same APPEND would be refused again. */
static bool refused_for_good(enum backend_status st)
{
	switch (st) {
	case BACKEND_REFUSED:
	case BACKEND_INVALID:
	case BACKEND_NOT_FOUND:
	case BACKEND_UNSUPPORTED:
	case BACKEND_READ_ONLY:
		return true;
	default:
		return false;
	}
}

/* Records that an APPEND is about to go out, and where its message would
 * be found (lock not held).  False when it cannot be recorded: then it
 * must not go out. */
static bool mark_sending(struct fs_tree *t, struct commit *c)
{
	struct node *x;
	bool ok = false;

	pthread_mutex_lock(&t->lock);
	x = tree_find(t, c->ino);
	if (x && x->is_staged && x->attached) {
		struct node *dir = x->parent;
		bool was = x->sent;
		uint32_t uv = x->sent_uidvalidity, min = x->sent_min_uid;

		/* UIDs only grow: the last listing's UIDNEXT is a floor
		 * for the UID this APPEND gets. */
		struct folder_listing *l = dir->raw ?
			folder_index_get(t->index, dir->raw) : NULL;

		x->sent = true;
		x->sent_uidvalidity = l ? l->state.uidvalidity : 0;
		x->sent_min_uid = l ? l->state.uidnext : 0;
		folder_listing_release(&l);
		if (was && uv && uv == x->sent_uidvalidity && min < x->sent_min_uid)
			x->sent_min_uid = min;   /* an older try may be there */
		ok = !x->journaled || journal_save(x) == 0;
		if (!ok) {
			x->sent = was;
			x->sent_uidvalidity = uv;
			x->sent_min_uid = min;
		}
	}
	pthread_mutex_unlock(&t->lock);
	return ok;
}

/* Appends one staged file, unless an earlier try is found on the server.
 * Lock not held. */
/* Wakes renames waiting for an APPEND to end (stage_wait_commit); lock
 * held, right before it is let go for good. */
static void commit_ended(struct fs_tree *t)
{
	pthread_cond_broadcast(&t->stage_done);
}

static void commit_one(struct fs_tree *t, struct commit *c)
{
	struct inval_list il = { 0 };
	enum backend_status st = BACKEND_TEMP;
	const char *error = "cannot read the staged file";
	struct node *x, *dir;
	uint32_t new_uid = 0;
	size_t len = 0;
	char *data = read_whole(c->path, &len);

	if (data) {
		if (c->date < 0 && !msg_header_date(data, len, &c->date))
			c->date = -1;
		st = BACKEND_OK;
		if (c->sent) {
			st = backend_find_appended(t->be, c->folder, data,
				len, c->uidvalidity, c->min_uid, &new_uid,
				&error);
			if (st == BACKEND_OK && new_uid)
				log_info("%s was appended to %s before (UID %u)",
					c->name, c->folder, new_uid);
			else if (st == BACKEND_NOT_FOUND)
				st = BACKEND_OK;   /* no folder, no message */
			else if (refused_for_good(st))
				st = BACKEND_TEMP;   /* the search, not the APPEND */
		}
		if (st == BACKEND_OK && !new_uid) {
			if (mark_sending(t, c)) {
				fault_point("copyin-sending");
				st = backend_append(t->be, c->folder, data,
					len, c->flags, c->date, &new_uid,
					&error);
			} else {
				st = BACKEND_TEMP;
				error = "cannot record the APPEND in the journal";
			}
		}
		free(data);
	}
	if (st == BACKEND_OK)
		fault_point("copyin-appended");
	pthread_mutex_lock(&t->lock);
	x = tree_find(t, c->ino);
	if (st != BACKEND_OK) {
		if (!x || !x->is_staged) {
			commit_ended(t);
			pthread_mutex_unlock(&t->lock);
			return;
		}
		x->committing = false;
		if (refused_for_good(st) && x->attached) {
			log_warn("the server refused %s for %s: %s; it stays "
				"there, with user.mail.status, and is not "
				"tried again", c->name, c->folder, error);
			free(x->failed);
			x->failed = strdup(error);
			if (!x->failed)
				x->retry_at = tree_now() + 10;
			else if (x->journaled)
				journal_save(x);
		} else {
			unsigned pause = 10;

			for (unsigned i = 0; i < x->tries && pause < RETRY_MAX_S;
			     i++)
				pause *= 2;
			if (pause > RETRY_MAX_S)
				pause = RETRY_MAX_S;
			x->tries++;
			x->retry_at = tree_now() + pause;
			log_warn("cannot append %s to %s: %s (will retry in "
				"%u s)", c->name, c->folder, error, pause);
		}
		commit_ended(t);
	pthread_mutex_unlock(&t->lock);
		return;
	}
	log_debug("appended %s to %s as UID %u", c->name, c->folder, new_uid);
	/* The folder's listing must show the message before the staged name
	 * goes, so the file never vanishes in between: list it again (the
	 * folder index never installs an answer to a fetch started before
	 * one it installed). */
	dir = tree_find(t, c->dir_ino);
	if (dir && dir->attached && dir->selectable) {
		tree_refresh_messages(t, dir, &il);
		tree_maybe_free(t, dir);
	}
	x = tree_find(t, c->ino);
	if (x && x->is_staged) {
		x->committing = false;
		if (x->attached)
			tree_inval_add(&il, c->dir_ino, x->name);
		tree_drop_staged(t, x);
	}
	commit_ended(t);
	pthread_mutex_unlock(&t->lock);
	tree_inval_send(t, &il);
}

static void *stager_main(void *arg)
{
	struct fs_tree *t = arg;
	struct timespec ts;

	pthread_mutex_lock(&t->lock);
	for (;;) {
		struct commit c = { 0 };
		bool stopping = t->stopping;

		if (next_ready(t, stopping, &c)) {
			pthread_mutex_unlock(&t->lock);
			commit_one(t, &c);
			commit_free(&c);
			pthread_mutex_lock(&t->lock);
			continue;
		}
		if (stopping)
			break;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 300 * 1000 * 1000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&t->stage_wake, &t->lock, &ts);
	}
	pthread_mutex_unlock(&t->lock);
	return NULL;
}

/* ---- the journal at start ----------------------------------------------- */

/* The folder of a raw name (lock held), or NULL. */
static struct node *folder_by_raw(struct node *d, const char *raw)
{
	if (d->raw && strcmp(d->raw, raw) == 0)
		return d;
	for (size_t i = 0; i < d->n_dirs; i++) {
		struct node *x = folder_by_raw(d->dirs[i], raw);

		if (x)
			return x;
	}
	return NULL;
}

/* Lists one copy-in from the journal in its folder again (lock held).
 * job is the record's path, r what it holds.  False when it is not
 * listed. */
static bool resume_one(struct fs_tree *t, const char *job,
	const struct stage_record *r)
{
	char *path = strndup(job, strlen(job) - 4), *jp = strdup(job);
	char *name = NULL;
	struct node *dir, *x;
	struct stat st;
	bool ok = false;

	if (!path || !jp)
		goto out;
	if (stat(path, &st) < 0) {
		/* Appended and removed, all but the record. */
		log_debug("%s: no bytes for this record; removed", job);
		stage_record_remove(job);
		goto out;
	}
	dir = folder_by_raw(t->root, r->folder);
	if (!dir || !dir->selectable) {
		log_warn("a file copied into %s, a folder that no longer "
			"exists, is kept in %s", r->folder, path);
		goto out;
	}
	name = strdup(r->name);
	/* Two copy-ins under one name: the later one is shown as a variant
	 * (a crash between a rename's two steps). */
	for (unsigned n = 2; name && tree_find_staged(dir, name); n++) {
		free(name);
		name = msg_name_variant(r->name, n);
	}
	if (!name || !(x = new_staged(t, dir, name, &path, &jp)))
		goto out;
	free(x->flags);
	x->flags = strdup(r->flags);
	x->flags_set = *r->flags != '\0';
	if (r->date >= 0) {
		x->mtime = r->date;
		x->mtime_set = true;
	} else {
		x->mtime = st.st_mtime;
	}
	x->size = (uint64_t)st.st_size;
	x->journaled = true;
	x->sent = r->state == STAGE_SENDING;
	x->sent_uidvalidity = r->uidvalidity;
	x->sent_min_uid = r->min_uid;
	if (r->state == STAGE_FAILED)
		x->failed = strdup(r->reason ? r->reason : "refused");
	x->changed_at = 0;   /* left alone long enough */
	if (strcmp(name, r->name) != 0)
		journal_save(x);
	ok = true;
out:
	free(name);
	free(path);
	free(jp);
	return ok;
}

/* Reads the journal: lists its copy-ins again, and removes what no record
 * names (bytes whose close() never returned, half-written records). */
static void resume_journal(struct fs_tree *t)
{
	unsigned legacy = 0, resumed = 0, refused = 0;
	struct dirent *de;
	DIR *d = opendir(t->stage_dir);

	if (!d)
		return;
	pthread_mutex_lock(&t->lock);
	while ((de = readdir(d))) {
		struct stage_record r;
		char *p = NULL;
		size_t nl = strlen(de->d_name);
		int ret;

		if (de->d_name[0] == '.' || strncmp(de->d_name, "outbox.", 7) == 0)
			continue;
		if (asprintf(&p, "%s/%s", t->stage_dir, de->d_name) < 0)
			break;
		if (stage_is_record_name(de->d_name)) {
			ret = stage_record_load(p, &r);
			if (ret < 0) {
				log_warn("cannot read the copy-in record %s: "
					"%s; it is left there", p,
					strerror(-ret));
			} else {
				if (!resume_one(t, p, &r))
					;
				else if (r.state == STAGE_FAILED)
					refused++;
				else
					resumed++;
				stage_record_clear(&r);
			}
		} else if (stage_is_data_name(de->d_name)) {
			char *job = NULL;

			if (asprintf(&job, "%s.job", p) >= 0 &&
			    access(job, F_OK) < 0 && errno == ENOENT) {
				log_debug("%s: never closed; removed", p);
				unlink(p);
			}
			free(job);
		} else if (nl > 8 && strcmp(de->d_name + nl - 8, ".job.tmp") == 0) {
			unlink(p);
		} else {
			legacy++;
		}
		free(p);
	}
	pthread_mutex_unlock(&t->lock);
	closedir(d);
	if (resumed)
		log_info("%u file(s) copied in earlier are appended now",
			resumed);
	if (refused)
		log_warn("%u file(s) copied in earlier were refused by the "
			"server; they stay listed (see user.mail.status)",
			refused);
	if (legacy)
		log_warn("%u file(s) copied in before a crash by an older "
			"version were never appended; they are kept in %s",
			legacy, t->stage_dir);
}

int stage_start(struct fs_tree *t)
{
	if (mkdir(t->stage_dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	resume_journal(t);
	pthread_cond_init(&t->stage_wake, NULL);
	pthread_cond_init(&t->stage_done, NULL);
	if (pthread_create(&t->stager, NULL, stager_main, t) != 0)
		return -EAGAIN;
	t->stager_running = true;
	return 0;
}

void stage_stop(struct fs_tree *t)
{
	if (!t->stager_running)
		return;
	/* The stager appends whatever is complete, then ends. */
	pthread_mutex_lock(&t->lock);
	t->stopping = true;
	pthread_cond_signal(&t->stage_wake);
	pthread_mutex_unlock(&t->lock);
	pthread_join(t->stager, NULL);
	t->stager_running = false;
	pthread_cond_destroy(&t->stage_wake);
	pthread_cond_destroy(&t->stage_done);
}
