/* Copy-in: a new file written into a folder becomes a message.
 *
 * The bytes are staged in a local file until the file has been closed and
 * left alone for STAGE_QUIET_S seconds, because cp -a, rsync -a and mv set
 * times and xattrs after close().  Then one APPEND files it with the flags
 * from user.mail.flags and the date from the file's mtime (if one was set),
 * else its Date header, else now; and the folder shows it under its usual
 * derived name.  Names starting with '.' (rsync's temporary files, drafts)
 * are never appended: only once renamed to a plain name. */
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
#include "src/log.h"

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

void tree_drop_staged(struct fs_tree *t, struct node *x)
{
	unlist_staged(x);
	if (x->stage_path)
		unlink(x->stage_path);
	x->attached = false;
	tree_maybe_free(t, x);
}

static bool appendable(const struct node *x)
{
	return x->name[0] != '.';
}

int fs_tree_create(struct fs_tree *t, fuse_ino_t parent, const char *name,
	struct fuse_entry_param *e, int *fd_r)
{
	struct node *dir, *x;
	char *path = NULL;
	int fd, ret;

	if (!t->stage_dir || t->be->read_only || !t->be->ops->append)
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
	if (!dir->msgs_loaded && (ret = tree_ensure_messages(t, dir, false)) < 0)
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
	if (asprintf(&path, "%s/%llu.%d", t->stage_dir,
			(unsigned long long)++t->stage_seq, (int)getpid()) < 0) {
		path = NULL;
		ret = -ENOMEM;
		goto out_unlock;
	}
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		ret = -errno;
		goto out_unlock;
	}
	x = calloc(1, sizeof(*x));
	if (!x || !(x->name = strdup(name))) {
		free(x);
		close(fd);
		unlink(path);
		ret = -ENOMEM;
		goto out_unlock;
	}
	/* Any free inode number will do: a staged file never comes back. */
	x->ino = tree_dir_ino(path);
	while (tree_find(t, x->ino))
		x->ino++;
	x->is_staged = true;
	x->stage_path = path;
	path = NULL;
	x->flags = strdup("");
	x->mtime = time(NULL);
	x->open_count = 1;
	x->changed_at = tree_now();
	x->attached = true;
	x->nlookup = 1;
	tree_hash_add(t, x);
	list_staged(dir, x);
	tree_fill_entry(t, x, e);
	/* Its attributes change while it is written. */
	e->attr_timeout = e->entry_timeout = 0;
	*fd_r = fd;
	ret = 0;
out_unlock:
	pthread_mutex_unlock(&t->lock);
	free(path);
	return ret;
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

void fs_tree_release_staged(struct fs_tree *t, fuse_ino_t ino)
{
	struct node *x;

	pthread_mutex_lock(&t->lock);
	x = tree_find(t, ino);
	if (x && x->is_staged) {
		if (x->open_count)
			x->open_count--;
		x->changed_at = tree_now();
		pthread_cond_signal(&t->stage_wake);
	}
	pthread_mutex_unlock(&t->lock);
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
		if (truncate(x->stage_path, attr->st_size) < 0)
			ret = -errno;
		else
			x->size = (uint64_t)attr->st_size;
	}
	if (to_set & FUSE_SET_ATTR_MTIME) {
		x->mtime = attr->st_mtime;
		x->mtime_set = true;
	}
	if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
		x->mtime = time(NULL);
		x->mtime_set = true;
	}
	/* Mode, owner and atime have no meaning for a message: accepted
	 * and ignored, so cp -a and rsync -a do not fail. */
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
		char *f;

		if (!flags_valid(value))
			return -EINVAL;
		f = strdup(value);

		if (!f)
			return -ENOMEM;
		free(x->flags);
		x->flags = f;
		x->flags_set = true;
		x->changed_at = tree_now();
		return 0;
	}
	/* A restore copies user.mail.uid along: it names the old copy's
	 * place and means nothing here. */
	if (strncmp(name, "user.mail.", 10) == 0)
		return 0;
	return -ENOTSUP;
}

int stage_rename(struct fs_tree *t, struct node *x, struct node *newdir,
	const char *newname)
{
	struct node *old;
	char *n;

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
	old = tree_find_staged(newdir, newname);
	if (old && old != x)
		tree_drop_staged(t, old);   /* rename replaces the target */
	unlist_staged(x);
	free(x->name);
	x->name = n;
	list_staged(newdir, x);
	x->changed_at = tree_now();
	pthread_cond_signal(&t->stage_wake);
	return 0;
}

/* ---- committing --------------------------------------------------------- */

struct commit {
	fuse_ino_t ino, dir_ino;
	char *path, *folder, *flags, *name;
	int64_t date;              /* -1: look at the Date header */
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
			    (all && x->final_try) ||
			    (!all && (now - x->changed_at < STAGE_QUIET_S ||
				      now < x->retry_at)))
				continue;
			/* Unmounting: one last try each, then the file stays
			 * in the staging directory. */
			x->final_try = all;
			x->committing = true;
			c->ino = x->ino;
			c->dir_ino = d->ino;
			c->path = strdup(x->stage_path);
			c->folder = strdup(d->raw);
			c->flags = strdup(x->flags ? x->flags : "");
			c->name = strdup(x->name);
			c->date = x->mtime_set ? x->mtime : -1;
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

/* Appends one staged file.  Lock not held. */
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
		st = t->be->ops->append(t->be, c->folder, data, len, c->flags,
			c->date, &new_uid, &error);
		free(data);
	}
	pthread_mutex_lock(&t->lock);
	x = tree_find(t, c->ino);
	if (st != BACKEND_OK) {
		log_warn("cannot append %s to %s: %s (will retry)", c->name,
			c->folder, error);
		if (x) {
			x->committing = false;
			x->retry_at = tree_now() + 10;
		}
		pthread_mutex_unlock(&t->lock);
		return;
	}
	log_debug("appended %s to %s as UID %u", c->name, c->folder, new_uid);
	/* The folder's listing must show the message before the staged name
	 * goes, so the file never vanishes in between.  A listing already
	 * under way may predate the APPEND: wait for it, then list again. */
	dir = tree_find(t, c->dir_ino);
	if (dir && dir->attached && dir->selectable) {
		dir->pins++;
		while (dir->loading)
			pthread_cond_wait(&t->loaded, &t->lock);
		tree_refresh_messages(t, dir, &il);
		dir->pins--;
		tree_maybe_free(t, dir);
	}
	x = tree_find(t, c->ino);
	if (x && x->is_staged) {
		if (x->attached)
			tree_inval_add(&il, c->dir_ino, x->name);
		tree_drop_staged(t, x);
	}
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

int stage_start(struct fs_tree *t)
{
	DIR *d;
	struct dirent *de;
	unsigned leftovers = 0;

	if (mkdir(t->stage_dir, 0700) < 0 && errno != EEXIST)
		return -errno;
	d = opendir(t->stage_dir);
	if (d) {
		while ((de = readdir(d)))
			leftovers += de->d_name[0] != '.';
		closedir(d);
	}
	if (leftovers)
		log_warn("%u file(s) copied in before a crash were never "
			"appended; they are kept in %s", leftovers,
			t->stage_dir);
	pthread_cond_init(&t->stage_wake, NULL);
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
}
