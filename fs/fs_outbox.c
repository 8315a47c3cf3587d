#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "fs/fs_outbox.h"
#include "fs/proc_fds.h"
#include "src/log.h"
#include "src/outbox_spool.h"

#define OB_DIR_INO (FS_OUTBOX_INO_BIT | 1)
#define OB_FAILED_INO (FS_OUTBOX_INO_BIT | 2)
#define FAILED_NAME "failed"

enum ob_kind { OB_DIR, OB_FAILED_DIR, OB_QUEUED, OB_FAILED, OB_DRAFT };

struct ob_node {
	struct ob_node *next;
	fuse_ino_t ino;
	enum ob_kind kind;
	char *name;
	uint64_t nlookup;
	/* drafts: files not (yet) handed to the spool, kept as the spool's
	 * drafts/NAME so that they outlive the mount */
	char *stage_path;
	uint64_t size;
	int64_t mtime;
	bool dirty;             /* written since opened for writing: taken
	                           when its writer is done with it */
	bool refused;           /* its writer's close() was told it could not
	                           be queued: the last close (whose result
	                           nobody sees) must not queue it after all */
	int write_error;        /* a write failed (errno): what is there is
	                           not what was written, never to be sent */
	pid_t writer;           /* the process (thread group) that last opened
	                           it for writing; 0: unknown */
};

struct fs_outbox {
	pthread_mutex_t lock;
	struct outbox_spool *spool;
	char *default_from;
	char *drafts_dir;
	uint64_t seq;
	struct ob_node *nodes;
	uid_t uid;
	gid_t gid;
	time_t start_time;
};

static fuse_ino_t entry_ino(enum ob_kind kind, const char *name)
{
	XXH64_hash_t h = XXH3_64bits_withSeed(name, strlen(name),
		kind == OB_FAILED ? 0x6661696c : 0x71756575);

	h = (h | FS_OUTBOX_INO_BIT) & ~(uint64_t)3;
	return h | 3;   /* never OB_DIR_INO or OB_FAILED_INO */
}

/* A fresh number for a draft: a name written again after an rm must not
 * get the number the kernel may still hold for the old file, nor a draft
 * of another mount the same (writers are told apart by these numbers in
 * /proc, see proc_fds.h). */
static fuse_ino_t draft_ino(struct fs_outbox *ob, const char *name)
{
	char key[96 + NAME_MAX];

	snprintf(key, sizeof(key), "%llu/%d/%lld/%s",
		(unsigned long long)++ob->seq, (int)getpid(),
		(long long)ob->start_time, name);
	return entry_ino(OB_DRAFT, key);
}

/* ---- nodes (lock held) ---------------------------------------------------- */

static struct ob_node *node_by_ino(struct fs_outbox *ob, fuse_ino_t ino)
{
	for (struct ob_node *n = ob->nodes; n; n = n->next)
		if (n->ino == ino)
			return n;
	return NULL;
}

static struct ob_node *draft_by_name(struct fs_outbox *ob, const char *name)
{
	for (struct ob_node *n = ob->nodes; n; n = n->next)
		if (n->kind == OB_DRAFT && strcmp(n->name, name) == 0)
			return n;
	return NULL;
}

static struct ob_node *node_get(struct fs_outbox *ob, enum ob_kind kind,
	fuse_ino_t ino, const char *name)
{
	struct ob_node *n = node_by_ino(ob, ino);

	if (n && n->kind == kind && strcmp(n->name, name) == 0)
		return n;
	if (n)
		ino++;   /* a collision: a drafts' number then differs */
	n = calloc(1, sizeof(*n));
	if (!n || !(n->name = strdup(name))) {
		free(n);
		return NULL;
	}
	n->ino = ino;
	n->kind = kind;
	n->next = ob->nodes;
	ob->nodes = n;
	return n;
}

static void node_unlink_free(struct fs_outbox *ob, struct ob_node *n)
{
	for (struct ob_node **p = &ob->nodes; *p; p = &(*p)->next)
		if (*p == n) {
			*p = n->next;
			break;
		}
	free(n->name);
	free(n->stage_path);
	free(n);
}

/* A node the kernel no longer holds and that stands for nothing of its
 * own (queued and failed entries live in the spool) can go. */
static void node_maybe_free(struct fs_outbox *ob, struct ob_node *n)
{
	if (n->nlookup == 0 && n->kind != OB_DRAFT &&
	    n->kind != OB_DIR && n->kind != OB_FAILED_DIR)
		node_unlink_free(ob, n);
}

/* ---- attributes ------------------------------------------------------------- */

static void dir_stat(struct fs_outbox *ob, fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = S_IFDIR | 0700;
	st->st_nlink = ino == OB_DIR_INO ? 3 : 2;
	st->st_uid = ob->uid;
	st->st_gid = ob->gid;
	st->st_mtime = st->st_atime = st->st_ctime = ob->start_time;
}

static void file_stat(struct fs_outbox *ob, fuse_ino_t ino, uint64_t size,
	int64_t mtime, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = S_IFREG | 0600;
	st->st_nlink = 1;
	st->st_uid = ob->uid;
	st->st_gid = ob->gid;
	st->st_size = (off_t)size;
	st->st_blocks = (size + 511) / 512;
	st->st_mtime = st->st_atime = st->st_ctime = (time_t)mtime;
}

/* Size and time of a spool entry; -ENOENT when it is gone. */
static int spool_entry_stat(struct fs_outbox *ob, enum ob_kind kind,
	const char *name, fuse_ino_t ino, struct stat *st)
{
	struct outbox_entry *e = NULL;
	size_t n = 0;
	int ret = -ENOENT;

	if (outbox_spool_list(ob->spool, kind == OB_FAILED ? OUTBOX_FAILED :
			OUTBOX_QUEUE, &e, &n) < 0)
		return -EIO;
	for (size_t i = 0; i < n; i++)
		if (strcmp(e[i].name, name) == 0) {
			file_stat(ob, ino, e[i].size, e[i].mtime, st);
			ret = 0;
			break;
		}
	outbox_entries_free(e, n);
	return ret;
}

static int node_stat(struct fs_outbox *ob, struct ob_node *n, struct stat *st)
{
	switch (n->kind) {
	case OB_DIR:
	case OB_FAILED_DIR:
		dir_stat(ob, n->ino, st);
		return 0;
	case OB_DRAFT:
		file_stat(ob, n->ino, n->size, n->mtime, st);
		return 0;
	default:
		return spool_entry_stat(ob, n->kind, n->name, n->ino, st);
	}
}

static void fill_entry(struct fuse_entry_param *e, const struct stat *st)
{
	memset(e, 0, sizeof(*e));
	e->ino = st->st_ino;
	e->generation = 1;
	e->attr = *st;
	/* The queue changes behind the kernel's back: no caching. */
	e->attr_timeout = e->entry_timeout = 0;
}

/* ---- public ------------------------------------------------------------------- */

/* A draft node for drafts/NAME, as found there or just created. */
static struct ob_node *draft_add(struct fs_outbox *ob, const char *name,
	const char *path, uint64_t size, int64_t mtime)
{
	struct ob_node *n = node_get(ob, OB_DRAFT, draft_ino(ob, name), name);

	if (!n || !(n->stage_path = strdup(path))) {
		if (n) {
			n->kind = OB_QUEUED;
			node_maybe_free(ob, n);
		}
		return NULL;
	}
	n->size = size;
	n->mtime = mtime;
	return n;
}

/* Lists again what the last mount left in drafts/: drafts, files whose
 * close() failed, and files being written when it ended.  None of them
 * is taken until written or renamed again: the writer of a file cut off
 * by a crash never learnt whether it was complete. */
static void load_drafts(struct fs_outbox *ob)
{
	DIR *dir = opendir(ob->drafts_dir);
	struct dirent *d;
	struct stat st;
	const char *why;
	char *path;

	if (!dir)
		return;
	while ((d = readdir(dir)) != NULL) {
		if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
			continue;
		if (asprintf(&path, "%s/%s", ob->drafts_dir, d->d_name) < 0)
			break;
		if (lstat(path, &st) < 0 || !S_ISREG(st.st_mode) ||
		    strcmp(d->d_name, FAILED_NAME) == 0 ||
		    (d->d_name[0] != '.' &&
		     outbox_spool_name_check(d->d_name, &why) < 0)) {
			free(path);
			continue;
		}
		if (spool_entry_stat(ob, OB_QUEUED, d->d_name, 0, &st) == 0) {
			/* Queued just before a crash that kept the draft's
			 * removal from happening. */
			unlink(path);
		} else if (!draft_add(ob, d->d_name, path,
				(uint64_t)st.st_size, st.st_mtime)) {
			free(path);
			break;
		} else {
			log_info("outbox: %s kept from an earlier mount, not "
				"sent", d->d_name);
		}
		free(path);
	}
	closedir(dir);
}

struct fs_outbox *fs_outbox_new(struct outbox_spool *spool,
	const char *default_from)
{
	struct fs_outbox *ob = calloc(1, sizeof(*ob));

	if (!ob)
		return NULL;
	pthread_mutex_init(&ob->lock, NULL);
	ob->spool = spool;
	ob->default_from = default_from ? strdup(default_from) : NULL;
	ob->drafts_dir = strdup(outbox_spool_drafts_dir(spool));
	ob->uid = getuid();
	ob->gid = getgid();
	ob->start_time = time(NULL);
	if (!ob->drafts_dir || !node_get(ob, OB_DIR, OB_DIR_INO, "outbox") ||
	    !node_get(ob, OB_FAILED_DIR, OB_FAILED_INO, FAILED_NAME)) {
		fs_outbox_free(&ob);
		return NULL;
	}
	load_drafts(ob);
	return ob;
}

void fs_outbox_free(struct fs_outbox **obp)
{
	struct fs_outbox *ob = *obp;

	if (!ob)
		return;
	/* Drafts stay in drafts/ for the next mount. */
	while (ob->nodes)
		node_unlink_free(ob, ob->nodes);
	pthread_mutex_destroy(&ob->lock);
	free(ob->default_from);
	free(ob->drafts_dir);
	free(ob);
	*obp = NULL;
}

void fs_outbox_root_entry(struct fs_outbox *ob, struct fuse_entry_param *e,
	bool take_ref)
{
	struct stat st;

	pthread_mutex_lock(&ob->lock);
	dir_stat(ob, OB_DIR_INO, &st);
	fill_entry(e, &st);
	e->attr_timeout = e->entry_timeout = 1.0;
	if (take_ref)
		node_by_ino(ob, OB_DIR_INO)->nlookup++;
	pthread_mutex_unlock(&ob->lock);
}

int fs_outbox_lookup(struct fs_outbox *ob, fuse_ino_t parent,
	const char *name, struct fuse_entry_param *e)
{
	struct ob_node *n = NULL;
	struct stat st;
	int ret;

	pthread_mutex_lock(&ob->lock);
	if (parent == OB_DIR_INO && strcmp(name, FAILED_NAME) == 0) {
		n = node_by_ino(ob, OB_FAILED_INO);
	} else if (parent == OB_DIR_INO) {
		n = draft_by_name(ob, name);
		if (!n && spool_entry_stat(ob, OB_QUEUED, name, 0, &st) == 0)
			n = node_get(ob, OB_QUEUED,
				entry_ino(OB_QUEUED, name), name);
	} else if (parent == OB_FAILED_INO) {
		if (spool_entry_stat(ob, OB_FAILED, name, 0, &st) == 0)
			n = node_get(ob, OB_FAILED,
				entry_ino(OB_FAILED, name), name);
	} else {
		pthread_mutex_unlock(&ob->lock);
		return -ENOTDIR;
	}
	ret = n ? node_stat(ob, n, &st) : -ENOENT;
	if (ret == 0) {
		n->nlookup++;
		fill_entry(e, &st);
	} else if (n) {
		node_maybe_free(ob, n);
	}
	pthread_mutex_unlock(&ob->lock);
	return ret;
}

void fs_outbox_forget(struct fs_outbox *ob, fuse_ino_t ino, uint64_t count)
{
	struct ob_node *n;

	pthread_mutex_lock(&ob->lock);
	n = node_by_ino(ob, ino);
	if (n) {
		n->nlookup = n->nlookup > count ? n->nlookup - count : 0;
		node_maybe_free(ob, n);
	}
	pthread_mutex_unlock(&ob->lock);
}

int fs_outbox_getattr(struct fs_outbox *ob, fuse_ino_t ino, struct stat *st)
{
	struct ob_node *n;
	int ret;

	pthread_mutex_lock(&ob->lock);
	n = node_by_ino(ob, ino);
	ret = n ? node_stat(ob, n, st) : -ENOENT;
	pthread_mutex_unlock(&ob->lock);
	return ret;
}

static int snap_add(struct fs_dir_snapshot *s, size_t *cap, const char *name,
	const struct stat *st)
{
	if (s->count == *cap) {
		size_t nc = *cap ? *cap * 2 : 16;
		struct fs_dir_entry *ne = realloc(s->entries,
			nc * sizeof(*ne));

		if (!ne)
			return -ENOMEM;
		s->entries = ne;
		*cap = nc;
	}
	s->entries[s->count].name = strdup(name);
	if (!s->entries[s->count].name)
		return -ENOMEM;
	s->entries[s->count++].st = *st;
	return 0;
}

int fs_outbox_snapshot_dir(struct fs_outbox *ob, fuse_ino_t ino,
	struct fs_dir_snapshot **snap_r)
{
	struct fs_dir_snapshot *s = calloc(1, sizeof(*s));
	struct outbox_entry *e = NULL;
	enum ob_kind kind;
	struct stat st;
	size_t cap = 0, n = 0;
	int ret = 0;

	if (!s)
		return -ENOMEM;
	if (ino != OB_DIR_INO && ino != OB_FAILED_INO) {
		free(s);
		return -ENOTDIR;
	}
	pthread_mutex_lock(&ob->lock);
	dir_stat(ob, ino, &st);
	ret |= snap_add(s, &cap, ".", &st);
	dir_stat(ob, ino == OB_DIR_INO ? FUSE_ROOT_ID : OB_DIR_INO, &st);
	ret |= snap_add(s, &cap, "..", &st);
	if (ino == OB_DIR_INO) {
		dir_stat(ob, OB_FAILED_INO, &st);
		ret |= snap_add(s, &cap, FAILED_NAME, &st);
		for (struct ob_node *d = ob->nodes; d; d = d->next)
			if (d->kind == OB_DRAFT) {
				file_stat(ob, d->ino, d->size, d->mtime, &st);
				ret |= snap_add(s, &cap, d->name, &st);
			}
	}
	kind = ino == OB_DIR_INO ? OB_QUEUED : OB_FAILED;
	if (outbox_spool_list(ob->spool, kind == OB_QUEUED ? OUTBOX_QUEUE :
			OUTBOX_FAILED, &e, &n) < 0)
		ret = -EIO;
	for (size_t i = 0; ret == 0 && i < n; i++) {
		file_stat(ob, entry_ino(kind, e[i].name), e[i].size,
			e[i].mtime, &st);
		ret |= snap_add(s, &cap, e[i].name, &st);
	}
	outbox_entries_free(e, n);
	pthread_mutex_unlock(&ob->lock);
	if (ret < 0) {
		fs_dir_snapshot_free(&s);
		return -ENOMEM;
	}
	*snap_r = s;
	return 0;
}

int fs_outbox_open(struct fs_outbox *ob, fuse_ino_t ino, int flags,
	pid_t pid, int *fd_r)
{
	struct ob_node *n;
	int fd, ret = 0;

	pthread_mutex_lock(&ob->lock);
	n = node_by_ino(ob, ino);
	if (!n) {
		ret = -ENOENT;
	} else if (n->kind == OB_DIR || n->kind == OB_FAILED_DIR) {
		ret = -EISDIR;
	} else if (n->kind == OB_DRAFT) {
		fd = open(n->stage_path, (flags & (O_ACCMODE | O_TRUNC)) |
			O_CLOEXEC);
		if (fd < 0) {
			ret = -errno;
		} else {
			*fd_r = fd;
			if (flags & O_TRUNC)
				n->size = 0;
			if ((flags & O_ACCMODE) != O_RDONLY) {
				n->dirty = true;
				n->refused = false;
				n->write_error = 0;
				n->writer = proc_tgid(pid);
			}
		}
	} else if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC)) {
		ret = -EPERM;   /* queued mail is not edited in place */
	} else {
		fd = outbox_spool_open_file(ob->spool, n->kind == OB_FAILED ?
			OUTBOX_FAILED : OUTBOX_QUEUE, n->name);
		if (fd < 0)
			ret = fd;
		else
			*fd_r = fd;
	}
	pthread_mutex_unlock(&ob->lock);
	return ret;
}

int fs_outbox_create(struct fs_outbox *ob, fuse_ino_t parent,
	const char *name, pid_t pid, struct fuse_entry_param *e, int *fd_r)
{
	struct ob_node *n;
	struct stat st;
	const char *error;
	char *path = NULL;
	int fd, ret = 0;

	if (parent != OB_DIR_INO)
		return -EPERM;   /* failed/ only holds what the spool put */
	if (name[0] != '.' && (ret = outbox_spool_name_check(name, &error)) < 0) {
		log_warn("outbox: refusing name '%s': %s", name, error);
		return ret;
	}
	pthread_mutex_lock(&ob->lock);
	if (strcmp(name, FAILED_NAME) == 0 || draft_by_name(ob, name) ||
	    spool_entry_stat(ob, OB_QUEUED, name, 0, &st) == 0) {
		ret = -EEXIST;
		goto out_unlock;
	}
	if (asprintf(&path, "%s/%s", ob->drafts_dir, name) < 0) {
		path = NULL;
		ret = -ENOMEM;
		goto out_unlock;
	}
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		ret = -errno;
		goto out_unlock;
	}
	n = draft_add(ob, name, path, 0, time(NULL));
	if (!n) {
		close(fd);
		unlink(path);
		ret = -ENOMEM;
		goto out_unlock;
	}
	n->dirty = true;
	n->writer = proc_tgid(pid);
	n->nlookup = 1;
	file_stat(ob, n->ino, 0, n->mtime, &st);
	fill_entry(e, &st);
	*fd_r = fd;
out_unlock:
	pthread_mutex_unlock(&ob->lock);
	free(path);
	return ret;
}

int fs_outbox_wrote(struct fs_outbox *ob, fuse_ino_t ino, uint64_t end,
	int error)
{
	struct ob_node *n;
	int ret = 0;

	pthread_mutex_lock(&ob->lock);
	n = node_by_ino(ob, ino);
	if (n && n->kind == OB_DRAFT) {
		if (error != 0)
			n->write_error = error;
		else if (end > n->size)
			n->size = end;
		n->dirty = true;
	} else {
		/* Already queued (or refused): these bytes would be lost. */
		ret = -EIO;
	}
	pthread_mutex_unlock(&ob->lock);
	return ret;
}

static char *read_file(const char *path, size_t *len_r)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	char *data = NULL;
	size_t done = 0;

	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) == 0 && (data = malloc(st.st_size + 1))) {
		while (done < (size_t)st.st_size) {
			ssize_t r = read(fd, data + done, st.st_size - done);

			if (r <= 0)
				break;
			done += r;
		}
		if (done != (size_t)st.st_size) {
			free(data);
			data = NULL;
		}
	}
	close(fd);
	*len_r = done;
	return data;
}

/* Hands a draft to the spool under `name` (lock held).  On success and on
 * refusal (the spool keeps a refused message in failed/) the draft is
 * gone; on other errors it stays. */
static int submit_draft(struct fs_outbox *ob, struct ob_node *n,
	const char *name)
{
	const char *error = "";
	size_t len = 0;
	char *data = read_file(n->stage_path, &len);
	int ret;

	if (!data)
		return -EIO;
	ret = outbox_spool_submit(ob->spool, name, data, len,
		ob->default_from, time(NULL), &error);
	free(data);
	if (ret < 0 && ret != -EINVAL) {
		log_warn("outbox: cannot queue %s: %s", name, error);
		return ret;
	}
	if (ret == -EINVAL)
		log_warn("outbox: %s refused: %s (kept in outbox/failed/)",
			name, error);
	else
		log_info("outbox: %s queued", name);
	unlink(n->stage_path);
	free(n->stage_path);
	n->stage_path = NULL;
	/* The kernel may still hold the inode: it now stands for the
	 * queued entry (or for nothing, once refused). */
	n->kind = OB_QUEUED;
	if (strcmp(n->name, name) != 0) {
		char *c = strdup(name);

		if (c) {
			free(n->name);
			n->name = c;
		}
	}
	node_maybe_free(ob, n);
	return ret;
}

/* Whether a close ends the writing of n (lock held): a close by thread
 * pid (final false), or the end of one open file (final true). */
static bool writing_done(const struct ob_node *n, pid_t pid, bool final)
{
	int holds;

	if (n->kind != OB_DRAFT || !n->dirty || n->refused ||
	    n->name[0] == '.')
		return false;   /* drafts (dot names) wait for their rename */
	if (n->writer == 0)
		return final;
	/* Children that inherited the descriptor (`{ cat a; cat b; } >
	 * outbox/x`) close it before the message is complete; any thread
	 * of the writing process counts as the writer. */
	if (!final && proc_tgid(pid) != n->writer)
		return false;
	/* The writer may hold further copies: a shell's `exec 3> x; echo a
	 * >&3` dups fd 3 onto stdout and closes that copy after each echo.
	 * The close() that leaves it none is the end. */
	holds = proc_holds_inode(n->writer, n->ino);
	if (holds < 0)
		return final;   /* cannot tell: only the very last close */
	return holds == 0;
}

int fs_outbox_flush(struct fs_outbox *ob, fuse_ino_t ino, pid_t pid,
	bool final)
{
	struct ob_node *n;
	int ret = 0;

	pthread_mutex_lock(&ob->lock);
	n = node_by_ino(ob, ino);
	/* Taken when its writing process is done with it: what that close()
	 * returns says whether it was queued. */
	if (!n || !writing_done(n, pid, final)) {
		/* not (yet) */
	} else if (n->write_error != 0) {
		/* Programs that ignore a failed write (a shell's echo) would
		 * otherwise have a message with a hole sent. */
		log_warn("outbox: %s not queued: a write to it failed (%s)",
			n->name, strerror(n->write_error));
		ret = -n->write_error;
		n->refused = true;
	} else {
		ret = submit_draft(ob, n, n->name);
		/* Still a draft (submit_draft keeps it only then): the writer
		 * learns of the failure now; queueing it at the last close,
		 * say once the spool has room again, would send a message
		 * its writer was told was not taken. */
		if (ret < 0 && ret != -EINVAL && !final)
			n->refused = true;
	}
	pthread_mutex_unlock(&ob->lock);
	return ret;
}

int fs_outbox_unlink(struct fs_outbox *ob, fuse_ino_t parent,
	const char *name)
{
	struct ob_node *n;
	int ret;

	pthread_mutex_lock(&ob->lock);
	if (parent == OB_DIR_INO && strcmp(name, FAILED_NAME) == 0) {
		ret = -EISDIR;
	} else if (parent == OB_DIR_INO && (n = draft_by_name(ob, name))) {
		unlink(n->stage_path);
		free(n->stage_path);
		n->stage_path = NULL;
		n->kind = OB_QUEUED;   /* now stands for nothing */
		node_maybe_free(ob, n);
		ret = 0;
	} else {
		ret = outbox_spool_remove(ob->spool, parent == OB_FAILED_INO ?
			OUTBOX_FAILED : OUTBOX_QUEUE, name);
	}
	pthread_mutex_unlock(&ob->lock);
	return ret;
}

int fs_outbox_rename(struct fs_outbox *ob, fuse_ino_t parent,
	const char *name, fuse_ino_t newparent, const char *newname)
{
	struct ob_node *n;
	struct stat st;
	const char *error;
	int ret;

	if (parent != OB_DIR_INO || newparent != OB_DIR_INO)
		return -EPERM;
	pthread_mutex_lock(&ob->lock);
	n = draft_by_name(ob, name);
	if (!n) {
		ret = -EPERM;   /* queued and failed mail is not renamed */
		goto out_unlock;
	}
	if (draft_by_name(ob, newname) || strcmp(newname, FAILED_NAME) == 0 ||
	    spool_entry_stat(ob, OB_QUEUED, newname, 0, &st) == 0) {
		ret = -EEXIST;
		goto out_unlock;
	}
	if (newname[0] == '.') {
		char *c = strdup(newname), *path = NULL;

		if (!c || asprintf(&path, "%s/%s", ob->drafts_dir,
				newname) < 0) {
			free(c);
			ret = -ENOMEM;
			goto out_unlock;
		}
		if (renameat2(AT_FDCWD, n->stage_path, AT_FDCWD, path,
				RENAME_NOREPLACE) < 0) {
			ret = -errno;
			free(c);
			free(path);
			goto out_unlock;
		}
		free(n->name);
		n->name = c;
		free(n->stage_path);
		n->stage_path = path;
		ret = 0;
		goto out_unlock;
	}
	ret = outbox_spool_name_check(newname, &error);
	if (ret < 0) {
		log_warn("outbox: refusing name '%s': %s", newname, error);
		goto out_unlock;
	}
	/* A draft renamed to a plain name is taken now. */
	ret = submit_draft(ob, n, newname);
out_unlock:
	pthread_mutex_unlock(&ob->lock);
	return ret;
}

int fs_outbox_setattr(struct fs_outbox *ob, fuse_ino_t ino,
	const struct stat *attr, int to_set, struct stat *st_r)
{
	struct ob_node *n;
	int ret = 0;

	pthread_mutex_lock(&ob->lock);
	n = node_by_ino(ob, ino);
	if (!n) {
		ret = -ENOENT;
	} else if (n->kind == OB_DRAFT) {
		if ((to_set & FUSE_SET_ATTR_SIZE) &&
		    truncate(n->stage_path, attr->st_size) < 0)
			ret = -errno;
		else if (to_set & FUSE_SET_ATTR_SIZE) {
			n->size = (uint64_t)attr->st_size;
			n->dirty = true;
		}
		if (to_set & FUSE_SET_ATTR_MTIME)
			n->mtime = attr->st_mtime;
	} else if ((to_set & FUSE_SET_ATTR_SIZE) &&
		   n->kind != OB_DIR && n->kind != OB_FAILED_DIR) {
		ret = -EPERM;
	}
	/* Times and modes of queued mail: accepted and ignored, so mv and
	 * cp -p into outbox/ do not fail after the message was queued. */
	if (ret == 0)
		ret = node_stat(ob, n, st_r);
	pthread_mutex_unlock(&ob->lock);
	return ret;
}

int fs_outbox_getxattr(struct fs_outbox *ob, fuse_ino_t ino,
	const char *name, char **value_r)
{
	char buf[OUTBOX_REPLY_MAX + 128];
	struct ob_node *n;
	int ret = -ENODATA;

	pthread_mutex_lock(&ob->lock);
	n = node_by_ino(ob, ino);
	if (!n)
		ret = -ENOENT;
	else if (n->kind == OB_QUEUED &&
		 strcmp(name, "user.mail.status") == 0 &&
		 outbox_spool_status(ob->spool, n->name, buf, sizeof(buf)) >= 0)
		ret = (*value_r = strdup(buf)) ? 0 : -ENOMEM;
	else if (n->kind == OB_DRAFT && strcmp(name, "user.mail.status") == 0)
		ret = (*value_r = strdup(n->name[0] == '.' ? "draft" :
			n->dirty && !n->refused ? "writing" :
			"not queued")) ? 0 : -ENOMEM;
	pthread_mutex_unlock(&ob->lock);
	return ret;
}

int fs_outbox_listxattr(struct fs_outbox *ob, fuse_ino_t ino, char **names_r,
	size_t *len_r)
{
	static const char status[] = "user.mail.status";
	struct ob_node *n;
	bool has;

	pthread_mutex_lock(&ob->lock);
	n = node_by_ino(ob, ino);
	has = n && (n->kind == OB_QUEUED || n->kind == OB_DRAFT);
	pthread_mutex_unlock(&ob->lock);
	*names_r = malloc(sizeof(status));
	if (!*names_r)
		return -ENOMEM;
	memcpy(*names_r, status, sizeof(status));
	*len_r = has ? sizeof(status) : 0;
	return 0;
}
