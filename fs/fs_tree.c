#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY  /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "fs/folder_dirs.h"
#include "fs/fs_outbox.h"
#include "fs/fs_tree_priv.h"
#include "fs/msg_name.h"
#include "src/errfmt.h"
#include "src/log.h"
#include "src/meta_cache.h"
#include "src/read_ahead.h"
#include "src/work_queue.h"

time_t tree_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec;
}

/* ---- inode numbers and the inode hash ---------------------------------- */

static fuse_ino_t ino_fix(uint64_t h)
{
	/* The top bit marks the outbox's inodes (fs_outbox.h); 0 is invalid
	 * and 1 is the root. */
	h &= ~FS_OUTBOX_INO_BIT;
	return h <= FUSE_ROOT_ID ? h + 2 : h;
}

fuse_ino_t tree_dir_ino(const char *path)
{
	return ino_fix(XXH3_64bits_withSeed(path, strlen(path), 0x646972));
}

fuse_ino_t tree_msg_ino(const char *folder, uint32_t uidvalidity,
	uint32_t uid)
{
	XXH3_state_t st;

	XXH3_64bits_reset_withSeed(&st, 0x6d7367);
	XXH3_64bits_update(&st, folder, strlen(folder) + 1);
	XXH3_64bits_update(&st, &uidvalidity, sizeof(uidvalidity));
	XXH3_64bits_update(&st, &uid, sizeof(uid));
	return ino_fix(XXH3_64bits_digest(&st));
}

struct node *tree_find(struct fs_tree *t, fuse_ino_t ino)
{
	struct node *n;

	for (n = t->buckets[ino & (t->n_buckets - 1)]; n; n = n->hnext)
		if (n->ino == ino)
			return n;
	return NULL;
}

static void hash_grow(struct fs_tree *t)
{
	size_t nb = t->n_buckets * 2;
	struct node **b = calloc(nb, sizeof(*b));

	if (!b)
		return;   /* keep the longer chains; still correct */
	for (size_t i = 0; i < t->n_buckets; i++) {
		struct node *n = t->buckets[i], *next;

		for (; n; n = next) {
			next = n->hnext;
			n->hnext = b[n->ino & (nb - 1)];
			b[n->ino & (nb - 1)] = n;
		}
	}
	free(t->buckets);
	t->buckets = b;
	t->n_buckets = nb;
}

void tree_hash_add(struct fs_tree *t, struct node *n)
{
	struct node **b;

	if (t->n_nodes >= t->n_buckets)
		hash_grow(t);
	b = &t->buckets[n->ino & (t->n_buckets - 1)];
	n->hnext = *b;
	*b = n;
	t->n_nodes++;
}

void tree_hash_remove(struct fs_tree *t, struct node *n)
{
	struct node **p = &t->buckets[n->ino & (t->n_buckets - 1)];

	for (; *p; p = &(*p)->hnext)
		if (*p == n) {
			*p = n->hnext;
			t->n_nodes--;
			return;
		}
}

void tree_node_free(struct node *n)
{
	free(n->name);
	free(n->raw);
	free(n->dirs);
	free(n->msgs);
	free(n->folder_raw);
	free(n->flags);
	free(n->staged);
	free(n->prev_dirs);
	free(n->stage_path);
	free(n->job_path);
	free(n->failed);
	free(n);
}

/* Frees a node nobody can reach any more. */
void tree_maybe_free(struct fs_tree *t, struct node *n)
{
	if (n->attached || n->nlookup > 0 || n->pins ||
	    n == t->root)
		return;
	tree_hash_remove(t, n);
	tree_node_free(n);
}

void tree_detach_messages(struct fs_tree *t, struct node *dir)
{
	for (size_t i = 0; i < dir->n_msgs; i++) {
		dir->msgs[i]->attached = false;
		tree_maybe_free(t, dir->msgs[i]);
	}
	free(dir->msgs);
	dir->msgs = NULL;
	dir->n_msgs = 0;
	dir->msgs_loaded = false;
	dir->listing_serial = 0;
}

/* ---- creation ------------------------------------------------------------ */

static folder_namer tree_name_listing;
static void folder_changed(void *ctx, const char *raw);
static void save_dir_times(struct fs_tree *t);

struct fs_tree *fs_tree_new(struct backend *be, struct msg_reader *reader,
	struct meta_cache *meta, unsigned refresh_s)
{
	struct fs_tree *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	t->n_buckets = 1024;
	t->buckets = calloc(t->n_buckets, sizeof(*t->buckets));
	t->root = calloc(1, sizeof(*t->root));
	if (!t->buckets || !t->root) {
		free(t->buckets);
		free(t->root);
		free(t);
		return NULL;
	}
	/* Refreshes and kernel notifications: two at a time is plenty, and
	 * the queue only ever holds a few per folder. */
	t->bg = work_queue_new(2, 256);
	t->index = t->bg ? folder_index_new(be, meta, tree_name_listing) :
		NULL;
	t->ra = t->index ? read_ahead_new(tree_msg_ino) : NULL;
	if (!t->ra) {
		folder_index_free(&t->index);
		work_queue_free(&t->bg);
		free(t->buckets);
		free(t->root);
		free(t);
		return NULL;
	}
	folder_index_schedule(t->index, refresh_s, t->bg, folder_changed, t);
	pthread_mutex_init(&t->lock, NULL);
	t->meta = meta;
	t->be = be;
	t->reader = reader;
	t->refresh_s = refresh_s;
	t->start_time = time(NULL);
	t->uid = getuid();
	t->gid = getgid();
	t->root->ino = FUSE_ROOT_ID;
	t->root->is_dir = true;
	t->root->attached = true;
	t->root->name = strdup("");
	t->root->msgs_loaded = true;
	tree_hash_add(t, t->root);
	return t;
}

void fs_tree_free(struct fs_tree **tp)
{
	struct fs_tree *t = *tp;

	if (!t)
		return;
	folder_index_stop_watch(t->index);
	stage_stop(t);
	/* Background jobs hold pointers into the tree; each is bounded by
	 * the network timeout.  Those not started are dropped. */
	pthread_mutex_lock(&t->lock);
	t->stopping = true;
	pthread_mutex_unlock(&t->lock);
	work_queue_free(&t->bg);
	save_dir_times(t);
	/* No other thread is left: listings changed since they were saved
	 * (sizes reads corrected, messages removed) are saved now. */
	folder_index_free(&t->index);
	read_ahead_free(&t->ra);
	for (size_t i = 0; i < t->n_buckets; i++) {
		struct node *n = t->buckets[i], *next;

		for (; n; n = next) {
			next = n->hnext;
			tree_node_free(n);
		}
	}
	free(t->buckets);
	pthread_mutex_destroy(&t->lock);
	free(t->trash);
	free(t->stage_dir);
	free(t->source);
	free(t);
	*tp = NULL;
}

/* Finds the directory of a raw folder name (lock held). */
static struct node *dir_by_raw(struct node *d, const char *raw)
{
	if (d->raw && strcmp(d->raw, raw) == 0)
		return d;
	for (size_t i = 0; i < d->n_dirs; i++) {
		struct node *x = dir_by_raw(d->dirs[i], raw);

		if (x)
			return x;
	}
	return NULL;
}

static int merge_latest(struct fs_tree *t, struct node *dir,
	struct inval_list *il);

/* The folder index refreshed raw in the background (stale, or another
 * client changed it): show the new listing.  From a worker or the
 * index's watcher thread, outside any request. */
static void folder_changed(void *ctx, const char *raw)
{
	struct fs_tree *t = ctx;
	struct inval_list il = { 0 };
	struct node *dir;

	pthread_mutex_lock(&t->lock);
	dir = dir_by_raw(t->root, raw);
	if (dir && dir->selectable && !t->stopping)
		merge_latest(t, dir, &il);
	pthread_mutex_unlock(&t->lock);
	tree_inval_send(t, &il);
}

int fs_tree_enable_writes(struct fs_tree *t, const char *trash,
	const char *stage_dir)
{
	t->trash = trash ? strdup(trash) : NULL;
	t->stage_dir = strdup(stage_dir);
	if (!t->stage_dir || (trash && !t->trash))
		return -ENOMEM;
	return 0;
}

int fs_tree_start(struct fs_tree *t, const char *watch_folder)
{
	int ret = work_queue_start(t->bg);

	if (ret == 0 && t->stage_dir)
		ret = stage_start(t);

	if (watch_folder)
		folder_index_watch(t->index, watch_folder);
	return ret;
}

void fs_tree_set_inval_hook(struct fs_tree *t,
	void (*hook)(void *ctx, fuse_ino_t parent, const char *name), void *ctx)
{
	t->inval_hook = hook;
	t->inval_ctx = ctx;
}

void fs_tree_set_source(struct fs_tree *t, const char *text)
{
	free(t->source);
	t->source = text ? strdup(text) : NULL;
}

size_t fs_tree_folder_count(struct fs_tree *t)
{
	size_t n;

	pthread_mutex_lock(&t->lock);
	n = t->n_folders;
	pthread_mutex_unlock(&t->lock);
	return n;
}

bool fs_tree_read_only(struct fs_tree *t)
{
	return t->be->read_only;
}

void fs_tree_set_report_hook(struct fs_tree *t,
	char *(*hook)(void *ctx, const char *what), void *ctx)
{
	t->report_hook = hook;
	t->report_ctx = ctx;
}

/* ---- the folder tree ----------------------------------------------------- */

static void collect_dirs(struct node *d, struct node ***all, size_t *n,
	size_t *cap)
{
	if (*n == *cap) {
		size_t nc = *cap ? *cap * 2 : 64;
		struct node **na = realloc(*all, nc * sizeof(**all));

		if (!na)
			return;
		*all = na;
		*cap = nc;
	}
	(*all)[(*n)++] = d;
	for (size_t i = 0; i < d->n_dirs; i++)
		collect_dirs(d->dirs[i], all, n, cap);
}

int tree_add_child_dir(struct node *parent, struct node *child)
{
	struct node **nd = realloc(parent->dirs,
		(parent->n_dirs + 1) * sizeof(*nd));

	if (!nd)
		return -1;
	parent->dirs = nd;
	parent->dirs[parent->n_dirs++] = child;
	child->parent = parent;
	return 0;
}

static void preload_cached_listings(struct fs_tree *t);

static int dir_name_cmp(const void *a, const void *b)
{
	const struct node *const *x = a, *const *y = b;

	return strcmp((*x)->name, (*y)->name);
}

static int dir_time_cmp(const void *a, const void *b)
{
	const struct meta_dir_time *x = a, *y = b;

	return strcmp(x->path, y->path);
}

/* The saved entry of the directory at path (sorted table), or NULL. */
static const struct meta_dir_time *saved_dir(
	const struct meta_dir_time *saved, size_t n, const char *path)
{
	struct meta_dir_time key = { .path = (char *)path };

	return n ? bsearch(&key, saved, n, sizeof(*saved), dir_time_cmp) :
		NULL;
}

static int64_t saved_dir_time(const struct meta_dir_time *saved, size_t n,
	const char *path)
{
	const struct meta_dir_time *hit = saved_dir(saved, n, path);

	return hit ? hit->changed_at : 0;
}

static int want_path_cmp(const void *a, const void *b)
{
	const struct folder_dir *const *x = a, *const *y = b;

	return strcmp((*x)->path, (*y)->path);
}

/* The first list of a mount against the directories the last mount saw
 * (saved, sorted): a folder made or removed meanwhile is a change of the
 * directory listing it (lock held). */
static void note_changes_since_saved(struct fs_tree *t,
	const struct meta_dir_time *saved, size_t n_saved,
	struct folder_dir *want, size_t nw)
{
	struct folder_dir **by_path = malloc((nw + 1) * sizeof(*by_path));

	if (!by_path || !saved_dir(saved, n_saved, ""))
		goto out;
	for (size_t i = 0; i < nw; i++)
		by_path[i] = &want[i];
	qsort(by_path, nw, sizeof(*by_path), want_path_cmp);
	/* Made: a new directory whose parent was there. */
	for (size_t i = 0; i < nw; i++) {
		const char *parent_path = want[i].parent == FOLDER_DIR_TOP ? "" :
			want[want[i].parent].path;
		struct node *parent = want[i].parent == FOLDER_DIR_TOP ?
			t->root : want[want[i].parent].node;

		if (want[i].node && parent &&
		    !saved_dir(saved, n_saved, want[i].path) &&
		    saved_dir(saved, n_saved, parent_path))
			parent->child_came = true;
	}
	/* Removed: a saved directory gone whose parent is still there. */
	for (size_t i = 0; i < n_saved; i++) {
		const char *slash = strrchr(saved[i].path, '/');
		struct folder_dir key = { .path = saved[i].path }, *kp = &key,
			**hit;
		struct node *parent = NULL;

		if (!saved[i].path[0] || bsearch(&kp, by_path, nw,
				sizeof(*by_path), want_path_cmp))
			continue;
		if (!slash) {
			parent = t->root;
		} else {
			key.path = strndup(saved[i].path,
				(size_t)(slash - saved[i].path));
			hit = key.path ? bsearch(&kp, by_path, nw,
				sizeof(*by_path), want_path_cmp) : NULL;
			parent = hit ? (*hit)->node : NULL;
			free(key.path);
		}
		if (parent)
			parent->child_came = true;
	}
	for (size_t i = 0; i < nw; i++)
		if (want[i].node && want[i].node->child_came) {
			want[i].node->child_came = false;
			tree_dir_changed(t, want[i].node);
		}
	if (t->root->child_came) {
		t->root->child_came = false;
		tree_dir_changed(t, t->root);
	}
out:
	free(by_path);
}

/* A directory listing folders and no messages of its own (the root, a
 * \Noselect folder, an implied parent) or one with subfolders, seen for
 * the first time: its time starts now, and moves only with its folders
 * (lock held). */
static void first_sight(struct node *d)
{
	if (d->dirs_changed_at == 0 &&
	    (!d->parent || !d->selectable || d->n_dirs))
		d->dirs_changed_at = (int64_t)time(NULL);
}

/* The path of directory d in the mount, "" for the root; malloc'd. */
static char *dir_path(const struct fs_tree *t, const struct node *d)
{
	size_t len = 0;
	char *p;

	for (const struct node *x = d; x && x != t->root; x = x->parent)
		len += strlen(x->name) + 1;
	p = malloc(len + 1);
	if (!p)
		return NULL;
	p[len] = '\0';
	for (const struct node *x = d; x && x != t->root; x = x->parent) {
		size_t n = strlen(x->name);

		len -= n;
		memcpy(p + len, x->name, n);
		p[--len] = '/';
	}
	if (p[0] == '/')
		memmove(p, p + 1, strlen(p));   /* "A/B", not "/A/B" */
	return p;
}

/* Saves the times of the directories' lists of folders (file I/O:
 * without the lock). */
static void save_dir_times(struct fs_tree *t)
{
	struct meta_dir_time *times;
	struct node **dirs = NULL;
	size_t n = 0, cap = 0, k = 0;

	if (!t->meta)
		return;
	pthread_mutex_lock(&t->lock);
	collect_dirs(t->root, &dirs, &n, &cap);
	times = calloc(n + 1, sizeof(*times));
	/* Every directory, with 0 for one without a time: the next mount
	 * tells from the paths which folders were made or removed. */
	for (size_t i = 0; times && i < n; i++)
		if ((times[k].path = dir_path(t, dirs[i])))
			times[k++].changed_at = dirs[i]->dirs_changed_at;
	pthread_mutex_unlock(&t->lock);
	free(dirs);
	if (times)
		meta_cache_save_dir_times(t->meta, times, k);
	meta_dir_times_free(&times, k);
}

/* Rebuilds the directory tree from a folder list (borrowed). */
int tree_install_folders(struct fs_tree *t,
	const struct backend_folder *folders, size_t nf, const char **error_r)
{
	struct node **old = NULL;
	struct folder_dir *want;
	size_t nw = 0, n_old = 0, cap_old = 0;

	struct meta_dir_time *saved = NULL;
	size_t n_saved = 0;
	bool first;

	want = folder_dirs_build(folders, nf, t->be->delimiter, &nw);
	if (!want) {
		*error_r = "out of memory";
		return -ENOMEM;
	}
	pthread_mutex_lock(&t->lock);
	first = !t->folders_installed;
	pthread_mutex_unlock(&t->lock);
	/* The first list of this mount: the directories' times from the
	 * last (file I/O, without the lock). */
	if (first && t->meta &&
	    meta_cache_load_dir_times(t->meta, &saved, &n_saved) == 0)
		qsort(saved, n_saved, sizeof(*saved), dir_time_cmp);

	pthread_mutex_lock(&t->lock);
	if (first && t->root->dirs_changed_at == 0)
		t->root->dirs_changed_at = saved_dir_time(saved, n_saved, "");
	t->n_folders = nw;
	collect_dirs(t->root, &old, &n_old, &cap_old);
	/* Children are matched by name under their parent, so a directory
	 * keeps its node (and inode number) across renames and refreshes. */
	for (size_t i = 0; i < n_old; i++) {
		old[i]->seen = false;
		free(old[i]->prev_dirs);
		old[i]->prev_dirs = old[i]->dirs;
		old[i]->n_prev_dirs = old[i]->n_dirs;
		old[i]->dirs = NULL;
		old[i]->n_dirs = 0;
		if (old[i]->n_prev_dirs > 1)
			qsort(old[i]->prev_dirs, old[i]->n_prev_dirs,
				sizeof(*old[i]->prev_dirs), dir_name_cmp);
	}
	t->root->seen = true;
	for (size_t i = 0; i < nw; i++) {
		struct node *d = NULL, *parent = t->root, key, *kp = &key,
			**found;

		if (want[i].parent != FOLDER_DIR_TOP) {
			parent = want[want[i].parent].node;
			if (!parent)
				continue;
		}
		key.name = want[i].name;
		found = parent->n_prev_dirs ? bsearch(&kp, parent->prev_dirs,
			parent->n_prev_dirs, sizeof(*parent->prev_dirs),
			dir_name_cmp) : NULL;
		if (found)
			d = *found;
		if (!d) {
			fuse_ino_t ino = tree_dir_ino(want[i].path);

			if (t->folders_installed)
				parent->child_came = true;

			while (tree_find(t, ino))
				ino++;   /* collision (or a renamed dir's old
					    number): any free one will do */
			d = calloc(1, sizeof(*d));
			if (!d || !(d->name = strdup(want[i].name))) {
				free(d);
				continue;
			}
			d->ino = ino;
			d->is_dir = true;
			d->dirs_changed_at = saved_dir_time(saved, n_saved,
				want[i].path);
			tree_hash_add(t, d);
		}
		if (d->raw && (!want[i].raw || strcmp(d->raw, want[i].raw))) {
			/* A different server folder now: forget its list. */
			tree_detach_messages(t, d);
		}
		free(d->raw);
		d->raw = want[i].raw;
		want[i].raw = NULL;
		d->selectable = want[i].real && want[i].selectable;
		if (!d->selectable)
			d->msgs_loaded = true;
		d->attached = true;
		d->seen = true;
		want[i].node = d;
		tree_add_child_dir(parent, d);
	}
	for (size_t i = 0; i < n_old; i++) {
		free(old[i]->prev_dirs);
		old[i]->prev_dirs = NULL;
		old[i]->n_prev_dirs = 0;
	}
	/* Now that every child is back in place, so a parent's time only
	 * moves forward. */
	for (size_t i = 0; i < n_old; i++)
		if (!old[i]->seen && old[i]->parent && old[i]->parent->seen)
			old[i]->parent->child_came = true;
	for (size_t i = 0; i < n_old; i++)
		if (old[i]->seen && old[i]->child_came) {
			old[i]->child_came = false;
			tree_dir_changed(t, old[i]);
		}
	t->folders_installed = true;
	for (size_t i = 0; i < n_old; i++) {
		if (old[i]->seen)
			continue;
		old[i]->attached = false;
		tree_detach_messages(t, old[i]);
		tree_maybe_free(t, old[i]);
	}
	if (first && saved)
		note_changes_since_saved(t, saved, n_saved, want, nw);
	first_sight(t->root);
	for (size_t i = 0; i < nw; i++)
		if (want[i].node)
			first_sight(want[i].node);
	pthread_mutex_unlock(&t->lock);
	free(old);
	folder_dirs_free(want, nw);
	meta_dir_times_free(&saved, n_saved);
	save_dir_times(t);
	preload_cached_listings(t);
	return 0;
}

int fs_tree_load_folders(struct fs_tree *t, const char **error_r)
{
	struct backend_folder *folders = NULL;
	enum backend_status st;
	size_t nf = 0;
	int ret;

	st = t->be->ops->list_folders(t->be, &folders, &nf, error_r);
	if (st != BACKEND_OK)
		return -backend_status_errno(st);
	if (t->meta)
		meta_cache_save_folders(t->meta, folders, nf);
	ret = tree_install_folders(t, folders, nf, error_r);
	backend_folders_free(&folders, nf);
	pthread_mutex_lock(&t->lock);
	t->folders_at = tree_now();
	pthread_mutex_unlock(&t->lock);
	return ret;
}

int fs_tree_load_cached_folders(struct fs_tree *t)
{
	struct backend_folder *folders = NULL;
	const char *error;
	size_t nf = 0;
	int ret;

	if (!t->meta || meta_cache_load_folders(t->meta, &folders, &nf) < 0)
		return -ENOENT;
	ret = tree_install_folders(t, folders, nf, &error);
	backend_folders_free(&folders, nf);
	return ret;
}

/* ---- messages of one folder ---------------------------------------------- */

struct named_msg {
	char *name;
	size_t index;     /* into the backend's UID-ordered array */
};

static int named_cmp_uid(const void *a, const void *b)
{
	const struct named_msg *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	if (c)
		return c;
	return (x->index > y->index) - (x->index < y->index);
}

static int node_uid_cmp(const void *a, const void *b)
{
	const struct node *const *x = a, *const *y = b;

	return ((*x)->uid > (*y)->uid) - ((*x)->uid < (*y)->uid);
}

static int node_name_cmp(const void *a, const void *b)
{
	const struct node *const *x = a, *const *y = b;

	return strcmp((*x)->name, (*y)->name);
}

/* Derives every message's name; equal names get ~2, ~3, ... in UID order. */
static struct named_msg *name_messages(const struct backend_message *m,
	size_t n)
{
	struct named_msg *nm = calloc(n ? n : 1, sizeof(*nm));

	if (!nm)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		nm[i].index = i;
		nm[i].name = msg_name_derive(m[i].header, m[i].header_len,
			m[i].internaldate);
		if (!nm[i].name)
			goto fail;
	}
	qsort(nm, n, sizeof(*nm), named_cmp_uid);
	for (size_t i = 1, run = 1; i < n; i++) {
		if (strcmp(nm[i].name, nm[i - run].name) != 0) {
			run = 1;
			continue;
		}
		char *v = msg_name_variant(nm[i - run].name, run + 1);

		if (!v)
			goto fail;
		free(nm[i].name);
		nm[i].name = v;
		run++;
	}
	return nm;
fail:
	for (size_t i = 0; i < n; i++)
		free(nm[i].name);
	free(nm);
	return NULL;
}

/* The folder index's namer: the same names, in UID order. */
static int tree_name_listing(const struct backend_message *m, size_t n,
	char **names_r)
{
	struct named_msg *nm = name_messages(m, n);

	if (!nm)
		return -1;
	for (size_t i = 0; i < n; i++)
		names_r[nm[i].index] = nm[i].name;
	free(nm);
	return 0;
}

void tree_inval_add(struct inval_list *il, fuse_ino_t parent,
	const char *name)
{
	if (il->n == il->cap) {
		size_t cap = il->cap ? il->cap * 2 : 16;
		struct inval_item *items = realloc(il->items,
			cap * sizeof(*items));

		if (!items)
			return;   /* the kernel's entry then just times out */
		il->items = items;
		il->cap = cap;
	}
	il->items[il->n].parent = parent;
	il->items[il->n].name = strdup(name);
	if (il->items[il->n].name)
		il->n++;
}

/* Tells the kernel about vanished entries.  Must run without the tree lock
 * and outside any request handler for the same directory (the kernel
 * would wait for that handler while it waits for us). */
void tree_inval_send(struct fs_tree *t, struct inval_list *il)
{
	for (size_t i = 0; i < il->n; i++) {
		if (t->inval_hook)
			t->inval_hook(t->inval_ctx, il->items[i].parent,
				il->items[i].name);
		free(il->items[i].name);
	}
	free(il->items);
	memset(il, 0, sizeof(*il));
}

/* Installs a listing (borrowed) into dir, reusing nodes the kernel knows.
 * Vanished messages are added to *il. */
static int merge_messages(struct fs_tree *t, struct node *dir,
	const struct folder_listing *l, struct inval_list *il)
{
	size_t n = l->count;
	struct node **list = calloc(n ? n : 1, sizeof(*list));
	uint32_t uidvalidity = l->state.uidvalidity;
	uint64_t stamp = ++t->merge_seq;
	size_t k = 0;

	if (!list)
		return -ENOMEM;
	/* Known messages are matched by UID first, so nodes keep their inode
	 * numbers even after their folder was renamed. */
	struct node **by_uid = calloc(dir->n_msgs + 1, sizeof(*by_uid));

	if (!by_uid) {
		free(list);
		return -ENOMEM;
	}
	if (dir->n_msgs) {
		memcpy(by_uid, dir->msgs, dir->n_msgs * sizeof(*by_uid));
		qsort(by_uid, dir->n_msgs, sizeof(*by_uid), node_uid_cmp);
	}
	for (size_t i = 0; i < dir->n_msgs; i++)
		dir->msgs[i]->seen = false;
	for (size_t i = 0; i < n; i++) {
		const struct backend_message *bm = &l->msgs[i];
		struct node key = { .uid = bm->uid }, *kp = &key, **hit;
		struct node *x = NULL;
		fuse_ino_t ino = tree_msg_ino(dir->raw, uidvalidity, bm->uid);

		hit = dir->n_msgs ? bsearch(&kp, by_uid, dir->n_msgs,
			sizeof(*by_uid), node_uid_cmp) : NULL;
		if (hit && (*hit)->msg_uidvalidity == uidvalidity)
			x = *hit;
		if (!x) {
			x = tree_find(t, ino);
			if (x && (x->is_dir || x->is_staged ||
				  x->uid != bm->uid ||
				  strcmp(x->folder_raw, dir->raw) != 0)) {
				/* A collision: any free number will do. */
				while (tree_find(t, ino))
					ino++;
				x = NULL;
			}
		}
		if (x && x->merge_stamp == stamp)
			continue;   /* never one node under two names */
		if (!x) {
			x = calloc(1, sizeof(*x));
			if (!x)
				continue;
			x->ino = ino;
			x->uid = bm->uid;
			x->msg_uidvalidity = uidvalidity;
			x->folder_raw = strdup(dir->raw);
			x->size = bm->size;
			x->mtime = bm->internaldate;
			x->size_uncertain = bm->size_uncertain;
			tree_hash_add(t, x);
		} else if (x->name && strcmp(x->name, l->names[i]) != 0 &&
			   x->attached) {
			tree_inval_add(il, dir->ino, x->name);
		}
		/* A size a full read settled beats an estimate (the index
		 * keeps it too, from folder_index_settle_size). */
		if (x->size_uncertain) {
			x->size = bm->size;
			x->size_uncertain = bm->size_uncertain;
		}
		if (!x->name || strcmp(x->name, l->names[i]) != 0) {
			free(x->name);
			x->name = strdup(l->names[i]);
		}
		if (!x->name) {
			/* Not listed this time; the node stays findable. */
			x->attached = false;
			continue;
		}
		free(x->flags);
		x->flags = strdup(bm->flags ? bm->flags : "");
		x->parent = dir;
		x->attached = true;
		x->seen = true;
		x->merge_stamp = stamp;
		list[k++] = x;
	}
	for (size_t i = 0; i < dir->n_msgs; i++) {
		struct node *x = dir->msgs[i];

		if (x->seen)
			continue;
		tree_inval_add(il, dir->ino, x->name);
		x->attached = false;
		tree_maybe_free(t, x);
	}
	free(by_uid);
	free(dir->msgs);
	qsort(list, k, sizeof(*list), node_name_cmp);
	dir->msgs = list;
	dir->n_msgs = k;
	dir->listing_serial = l->serial;
	dir->uidvalidity = uidvalidity;
	dir->list_changed_at = l->changed_at;
	dir->msgs_loaded = true;
	return 0;
}

/* Installs the index's latest listing of dir when it is newer than the
 * one installed (lock held).  Read under the lock, it already shows what
 * rm and mv did: an answer fetched before them is never installed. */
static int merge_latest(struct fs_tree *t, struct node *dir,
	struct inval_list *il)
{
	struct folder_listing *l = dir->raw ?
		folder_index_get(t->index, dir->raw) : NULL;
	int ret = 0;

	if (l && l->serial != dir->listing_serial)
		ret = merge_messages(t, dir, l, il);
	folder_listing_release(&l);
	return ret;
}

/* Fetches dir's listing now through the folder index (incrementally when
 * one is known) and installs it.  Called with the lock held; drops it
 * around the network.  Returns 0 or a negative errno. */
int tree_refresh_messages(struct fs_tree *t, struct node *dir,
	struct inval_list *il)
{
	struct folder_listing *l = NULL;
	enum backend_status st;
	const char *error = "";
	char *raw;
	int ret = 0;

	raw = strdup(dir->raw);
	if (!raw)
		return -ENOMEM;
	dir->pins++;   /* it may be detached while we wait */
	pthread_mutex_unlock(&t->lock);

	st = folder_index_refresh(t->index, raw, &l, &error);
	folder_listing_release(&l);
	if (st != BACKEND_OK)
		log_debug("cannot list %s: %s", raw, error);

	pthread_mutex_lock(&t->lock);
	dir->pins--;
	if (dir->raw && strcmp(dir->raw, raw) == 0)
		ret = merge_latest(t, dir, il);
	if (st != BACKEND_OK && !dir->msgs_loaded)
		/* Keep serving an older listing rather than nothing. */
		ret = -backend_status_errno(st);
	free(raw);
	return ret;
}

bool fs_tree_run_later(struct fs_tree *t, void (*run)(void *arg),
	void (*cancel)(void *arg), void *arg)
{
	return work_queue_submit(t->bg, run, cancel, arg);
}

static void inval_list_free(struct inval_list *il)
{
	for (size_t i = 0; i < il->n; i++)
		free(il->items[i].name);
	free(il->items);
	memset(il, 0, sizeof(*il));
}

struct inval_job {
	struct fs_tree *t;
	struct inval_list il;
};

static void inval_job_run(void *arg)
{
	struct inval_job *job = arg;

	tree_inval_send(job->t, &job->il);
	free(job);
}

static void inval_job_cancel(void *arg)
{
	struct inval_job *job = arg;

	inval_list_free(&job->il);
	free(job);
}

void tree_inval_later(struct fs_tree *t, struct inval_list *il)
{
	struct inval_job *job;

	if (!il->n)
		return;
	job = malloc(sizeof(*job));
	if (job) {
		job->t = t;
		job->il = *il;
		memset(il, 0, sizeof(*il));
	}
	if (!job || !fs_tree_run_later(t, inval_job_run, inval_job_cancel,
			job)) {
		if (job)
			*il = job->il;
		free(job);
		inval_list_free(il);
	}
}

/* Makes sure dir's message list is the one the folder index serves:
 * whether it is fetched first or refreshed in the background (`fresh`:
 * a listing of the directory) is the index's decision.  Called and
 * returns with the lock held; drops it only when the index must fetch
 * first. */
int tree_ensure_messages(struct fs_tree *t, struct node *dir, bool fresh)
{
	struct folder_listing *l;
	struct inval_list il = { 0 };
	enum backend_status st = BACKEND_OK;
	const char *error = "";
	int ret;

	if (!dir->raw || !dir->selectable)
		return 0;
	l = folder_index_current(t->index, dir->raw, fresh);
	if (!l) {
		char *raw = strdup(dir->raw);

		if (!raw)
			return -ENOMEM;
		dir->pins++;   /* it may be detached while we wait */
		pthread_mutex_unlock(&t->lock);
		st = folder_index_serve(t->index, raw, fresh, &l, &error);
		if (st != BACKEND_OK)
			log_debug("cannot list %s: %s", raw, error);
		pthread_mutex_lock(&t->lock);
		dir->pins--;   /* the caller's kernel reference keeps it */
		if (!dir->raw || strcmp(dir->raw, raw) != 0)
			st = BACKEND_NOT_FOUND;
		free(raw);
	}
	folder_listing_release(&l);
	if (st != BACKEND_OK)
		return -backend_status_errno(st);
	ret = merge_latest(t, dir, &il);
	/* We are inside a request for this directory. */
	tree_inval_later(t, &il);
	return ret;
}

/* Installs cached listings for folders not yet listed, so that a remount
 * lists every folder at once; they count as stale and are resynchronised
 * in the background when first opened. */
static void preload_cached_listings(struct fs_tree *t)
{
	struct node **dirs = NULL;
	char **raws = NULL;
	size_t n = 0, cap = 0, k = 0;

	if (!t->meta)
		return;
	pthread_mutex_lock(&t->lock);
	collect_dirs(t->root, &dirs, &n, &cap);
	raws = calloc(n + 1, sizeof(*raws));
	for (size_t i = 0; raws && i < n; i++)
		if (dirs[i]->raw && dirs[i]->selectable &&
		    !dirs[i]->msgs_loaded &&
		    (raws[k] = strdup(dirs[i]->raw)))
			k++;
	pthread_mutex_unlock(&t->lock);
	free(dirs);

	for (size_t i = 0; i < k; i++) {
		struct folder_listing *l = NULL;
		struct inval_list il = { 0 };
		struct node *d;

		/* File I/O: without the tree lock. */
		if (folder_index_load(t->index, raws[i], &l) == 0) {
			pthread_mutex_lock(&t->lock);
			d = dir_by_raw(t->root, raws[i]);
			if (d && d->selectable && !d->msgs_loaded)
				merge_latest(t, d, &il);
			pthread_mutex_unlock(&t->lock);
		}
		folder_listing_release(&l);
		for (size_t j = 0; j < il.n; j++)
			free(il.items[j].name);
		free(il.items);
		free(raws[i]);
	}
	free(raws);
}

/* ---- attributes and lookups ---------------------------------------------- */

/* A directory's own change time: its listing's, or a child directory's
 * coming or going. */
static int64_t dir_changed_at(const struct node *d)
{
	return d->list_changed_at > d->dirs_changed_at ? d->list_changed_at :
		d->dirs_changed_at;
}

/* A directory's mtime moves forward when its entries change and stays
 * put otherwise, also across remounts: the folder index keeps listing
 * times in the metadata cache, and the tree the times of the lists of
 * folders ("dirs" there).  A directory of folders starts at the time it
 * was first seen (see first_sight); a folder not yet listed shows the
 * mount's start until its listing comes. */
static int64_t dir_mtime(const struct fs_tree *t, const struct node *d)
{
	int64_t m = dir_changed_at(d);

	return m ? m : (int64_t)t->start_time;
}

void tree_dir_changed(struct fs_tree *t, struct node *dir)
{
	int64_t now = (int64_t)time(NULL), last = dir_mtime(t, dir);

	dir->dirs_changed_at = now > last ? now : last + 1;
}

void tree_fill_stat(struct fs_tree *t, const struct node *n, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = n->ino;
	st->st_uid = t->uid;
	st->st_gid = t->gid;
	if (n->is_dir) {
		st->st_mode = S_IFDIR | 0700;
		st->st_nlink = 2 + n->n_dirs;
		st->st_mtime = st->st_atime = st->st_ctime =
			(time_t)dir_mtime(t, n);
		return;
	}
	st->st_mode = S_IFREG | 0600;
	st->st_nlink = 1;
	st->st_size = (off_t)n->size;
	st->st_blocks = (n->size + 511) / 512;
	st->st_mtime = st->st_atime = st->st_ctime = (time_t)n->mtime;
}

void tree_fill_entry(struct fs_tree *t, const struct node *n,
	struct fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	e->ino = n->ino;
	e->generation = 1;
	tree_fill_stat(t, n, &e->attr);
	e->attr_timeout = e->entry_timeout =
		n->is_dir ? DIR_TIMEOUT : MSG_TIMEOUT;
}

struct node *tree_find_msg(struct node *dir, const char *name)
{
	size_t lo = 0, hi = dir->n_msgs;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = strcmp(name, dir->msgs[mid]->name);

		if (c == 0)
			return dir->msgs[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

int fs_tree_lookup(struct fs_tree *t, fuse_ino_t parent, const char *name,
	struct fuse_entry_param *e)
{
	struct node *dir, *found = NULL;
	int ret;

	pthread_mutex_lock(&t->lock);
	dir = tree_find(t, parent);
	if (!dir || !dir->is_dir) {
		ret = dir ? -ENOTDIR : -ENOENT;
		goto out;
	}
	for (size_t i = 0; i < dir->n_dirs; i++)
		if (strcmp(dir->dirs[i]->name, name) == 0) {
			found = dir->dirs[i];
			break;
		}
	if (!found)
		found = tree_find_staged(dir, name);
	if (!found) {
		ret = tree_ensure_messages(t, dir, false);
		if (ret < 0)
			goto out;
		found = tree_find_msg(dir, name);
	}
	if (!found) {
		ret = -ENOENT;
		goto out;
	}
	found->nlookup++;
	tree_fill_entry(t, found, e);
	if (found->is_staged)
		e->attr_timeout = e->entry_timeout = 0;
	ret = 0;
out:
	pthread_mutex_unlock(&t->lock);
	return ret;
}

/* ---- for the .parts view (fs/fs_parts.c) ---- */
int fs_tree_message_id(struct fs_tree *t, fuse_ino_t dir_ino,
	const char *name, struct fs_msg_id *id_r)
{
	struct node *dir, *x = NULL;
	int ret = 0;

	memset(id_r, 0, sizeof(*id_r));
	pthread_mutex_lock(&t->lock);
	dir = tree_find(t, dir_ino);
	if (!dir || !dir->is_dir || !dir->raw || !dir->selectable) {
		ret = dir && !dir->is_dir ? -ENOTDIR : -ENOENT;
		goto out;
	}
	if (name) {
		ret = tree_ensure_messages(t, dir, false);
		if (ret == 0 && !(x = tree_find_msg(dir, name)))
			ret = -ENOENT;
		if (ret < 0)
			goto out;
		id_r->uidvalidity = x->msg_uidvalidity;
		id_r->uid = x->uid;
		id_r->size = x->size;
		id_r->mtime = x->mtime;
	}
	id_r->folder_raw = strdup(x ? x->folder_raw : dir->raw);
	if (!id_r->folder_raw)
		ret = -ENOMEM;
out:
	pthread_mutex_unlock(&t->lock);
	return ret;
}
/* ---- end of the .parts view's accessor ---- */

void fs_tree_forget(struct fs_tree *t, fuse_ino_t ino, uint64_t n)
{
	struct node *x;

	pthread_mutex_lock(&t->lock);
	x = tree_find(t, ino);
	if (x) {
		x->nlookup = x->nlookup > n ? x->nlookup - n : 0;
		tree_maybe_free(t, x);
	}
	pthread_mutex_unlock(&t->lock);
}

bool fs_tree_ref_entry(struct fs_tree *t, fuse_ino_t ino,
	struct fuse_entry_param *e)
{
	struct node *x;

	pthread_mutex_lock(&t->lock);
	x = tree_find(t, ino);
	if (x) {
		x->nlookup++;
		tree_fill_entry(t, x, e);
	}
	pthread_mutex_unlock(&t->lock);
	return x != NULL;
}

int fs_tree_getattr(struct fs_tree *t, fuse_ino_t ino, struct stat *st,
	double *timeout_r)
{
	struct node *x;

	pthread_mutex_lock(&t->lock);
	x = tree_find(t, ino);
	if (x) {
		tree_fill_stat(t, x, st);
		*timeout_r = x->is_dir ? DIR_TIMEOUT :
			x->is_staged ? 0 : MSG_TIMEOUT;
	}
	pthread_mutex_unlock(&t->lock);
	return x ? 0 : -ENOENT;
}

/* ---- directory snapshots --------------------------------------------------- */

static void folders_job_cancel(void *arg)
{
	struct fs_tree *t = arg;

	pthread_mutex_lock(&t->lock);
	t->folders_loading = false;
	t->folders_at = tree_now();
	pthread_mutex_unlock(&t->lock);
}

static void folders_job_run(void *arg)
{
	struct fs_tree *t = arg;
	const char *error;

	if (fs_tree_load_folders(t, &error) < 0)
		log_debug("cannot refresh the folder list: %s", error);
	folders_job_cancel(t);
}

/* Folders made or removed by other clients show up when the root is read
 * and the list is older than the refresh period (lock held). */
static void refresh_folders_async(struct fs_tree *t)
{
	if (t->folders_loading ||
	    tree_now() - t->folders_at < (time_t)t->refresh_s)
		return;
	t->folders_loading = true;
	if (!work_queue_submit(t->bg, folders_job_run,
			folders_job_cancel, t))
		t->folders_loading = false;
}

int fs_tree_snapshot_dir(struct fs_tree *t, fuse_ino_t ino,
	struct fs_dir_snapshot **snap_r)
{
	struct fs_dir_snapshot *snap;
	struct node *dir;
	size_t k = 0;
	int ret;

	pthread_mutex_lock(&t->lock);
	dir = tree_find(t, ino);
	if (!dir || !dir->is_dir) {
		ret = dir ? -ENOTDIR : -ENOENT;
		goto out;
	}
	if (dir == t->root)
		refresh_folders_async(t);
	ret = tree_ensure_messages(t, dir, true);
	if (ret < 0)
		goto out;
	snap = calloc(1, sizeof(*snap));
	if (snap)
		snap->entries = calloc(2 + dir->n_dirs + dir->n_msgs +
			dir->n_staged, sizeof(*snap->entries));
	if (!snap || !snap->entries) {
		free(snap);
		ret = -ENOMEM;
		goto out;
	}
	snap->entries[k].name = strdup(".");
	tree_fill_stat(t, dir, &snap->entries[k++].st);
	snap->entries[k].name = strdup("..");
	tree_fill_stat(t, dir->parent && dir->attached ? dir->parent : t->root,
		&snap->entries[k++].st);
	for (size_t i = 0; i < dir->n_dirs; i++) {
		snap->entries[k].name = strdup(dir->dirs[i]->name);
		tree_fill_stat(t, dir->dirs[i], &snap->entries[k++].st);
	}
	for (size_t i = 0; i < dir->n_msgs; i++) {
		snap->entries[k].name = strdup(dir->msgs[i]->name);
		tree_fill_stat(t, dir->msgs[i], &snap->entries[k++].st);
	}
	for (size_t i = 0; i < dir->n_staged; i++) {
		/* A staged name the listing already shows is on its way out. */
		if (tree_find_msg(dir, dir->staged[i]->name))
			continue;
		snap->entries[k].name = strdup(dir->staged[i]->name);
		tree_fill_stat(t, dir->staged[i], &snap->entries[k++].st);
	}
	snap->count = k;
	for (size_t i = 0; i < k; i++)
		if (!snap->entries[i].name) {
			snap->count = k;
			fs_dir_snapshot_free(&snap);
			ret = -ENOMEM;
			goto out;
		}
	*snap_r = snap;
	ret = 0;
out:
	pthread_mutex_unlock(&t->lock);
	return ret;
}

void fs_dir_snapshot_free(struct fs_dir_snapshot **snapp)
{
	struct fs_dir_snapshot *snap = *snapp;

	if (!snap)
		return;
	for (size_t i = 0; i < snap->count; i++)
		free(snap->entries[i].name);
	free(snap->entries);
	free(snap);
	*snapp = NULL;
}

/* ---- content and extended attributes ------------------------------------- */

int fs_tree_check_message(struct fs_tree *t, fuse_ino_t ino)
{
	struct node *x;
	int ret;

	pthread_mutex_lock(&t->lock);
	x = tree_find(t, ino);
	ret = !x ? -ENOENT : x->is_dir ? -EISDIR : x->size_uncertain ? 1 : 0;
	pthread_mutex_unlock(&t->lock);
	return ret;
}

/* A full read showed the message's real size: remember it, also in the
 * folder index (which saves it in the metadata cache). */
static void settle_size(struct fs_tree *t, struct node *x, uint64_t true_size)
{
	x->size_uncertain = false;
	folder_index_settle_size(t->index, x->folder_raw, x->msg_uidvalidity,
		x->uid, true_size);
}

/* A folder read file after file (grep -r, cp -r, rsync): queue the heads
 * of the messages the reader will want next, as the read-ahead order
 * says for the folder's current listing.  Without the lock. */
static void read_ahead(struct fs_tree *t, const struct msg_ref *ref)
{
	struct folder_listing *l = folder_index_get(t->index, ref->folder);
	uint32_t *uids;
	uint64_t *sizes;
	size_t n;

	if (!l || l->state.uidvalidity != ref->uidvalidity) {
		folder_listing_release(&l);
		return;
	}
	n = read_ahead_next(t->ra, ref->folder, l, ref->uid, &uids, &sizes);
	if (n)
		msg_reader_prefetch_heads(t->reader, ref->folder,
			ref->uidvalidity, uids, sizes, n);
	free(uids);
	free(sizes);
	folder_listing_release(&l);
}

ssize_t fs_tree_read(struct fs_tree *t, fuse_ino_t ino, uint64_t offset,
	size_t length, char *buf, bool *size_changed_r)
{
	struct msg_ref ref;
	uint64_t true_size;
	char *folder;
	struct node *x;
	ssize_t got;

	*size_changed_r = false;
	pthread_mutex_lock(&t->lock);
	x = tree_find(t, ino);
	if (!x || x->is_dir) {
		pthread_mutex_unlock(&t->lock);
		return x ? -EISDIR : -ENOENT;
	}
	folder = strdup(x->folder_raw);
	ref.uidvalidity = x->msg_uidvalidity;
	ref.uid = x->uid;
	ref.size = x->size;
	pthread_mutex_unlock(&t->lock);
	if (!folder)
		return -ENOMEM;
	ref.folder = folder;
	if (offset == 0)
		read_ahead(t, &ref);

	got = msg_reader_read(t->reader, &ref, offset, length, buf, &true_size);
	free(folder);
	if (got >= 0 && true_size) {
		pthread_mutex_lock(&t->lock);
		x = tree_find(t, ino);
		if (x && !x->is_dir && (x->size_uncertain ||
					x->size != true_size))
			settle_size(t, x, true_size);
		pthread_mutex_unlock(&t->lock);
	}
	if (got >= 0 && true_size && true_size != ref.size) {
		pthread_mutex_lock(&t->lock);
		x = tree_find(t, ino);
		if (x && !x->is_dir && x->size != true_size) {
			log_info("UID %u: server announced %llu bytes, message "
				"has %llu; size corrected", ref.uid,
				(unsigned long long)x->size,
				(unsigned long long)true_size);
			x->size = true_size;
			*size_changed_r = true;
		}
		pthread_mutex_unlock(&t->lock);
	}
	return got;
}

static const char *const msg_xattrs[] = { "user.mail.flags", "user.mail.uid" };

int fs_tree_getxattr(struct fs_tree *t, fuse_ino_t ino, const char *name,
	char **value_r)
{
	struct node *x;
	char *v = NULL;
	int ret = 0;

	if (ino == FUSE_ROOT_ID && strcmp(name, "user.mailfs.source") == 0) {
		*value_r = strdup(t->source ? t->source : "");
		return *value_r ? 0 : -ENOMEM;
	}
	if (ino == FUSE_ROOT_ID && (strcmp(name, "user.mailfs.stats") == 0 ||
				    strcmp(name, "user.mailfs.status") == 0)) {
		v = t->report_hook ? t->report_hook(t->report_ctx,
			name + strlen("user.mailfs.")) : strdup("");
		if (!v)
			return -ENOMEM;
		*value_r = v;
		return 0;
	}
	/* Only user.* exists here.  Saying so (rather than ENODATA) lets ls
	 * stop asking for security.selinux and ACLs on every file. */
	if (strncmp(name, "user.", 5) != 0)
		return -ENOTSUP;
	pthread_mutex_lock(&t->lock);
	x = tree_find(t, ino);
	if (!x)
		ret = -ENOENT;
	else if (x->is_dir)
		ret = -ENODATA;
	else if (strcmp(name, "user.mail.flags") == 0)
		v = strdup(x->flags ? x->flags : "");
	else if (strcmp(name, "user.mail.uid") == 0 && x->is_staged)
		ret = -ENODATA;
	else if (strcmp(name, "user.mail.status") == 0 && x->is_staged)
		v = stage_status(x);
	else if (strcmp(name, "user.mail.uid") == 0)
		ret = asprintf(&v, "%u", x->uid) < 0 ? -ENOMEM : 0;
	else
		ret = -ENODATA;
	pthread_mutex_unlock(&t->lock);
	if (ret == 0 && !v)
		ret = -ENOMEM;
	if (ret == 0)
		*value_r = v;
	return ret;
}

int fs_tree_listxattr(struct fs_tree *t, fuse_ino_t ino, char **names_r,
	size_t *len_r)
{
	const char *const *names;
	size_t count, len = 0;
	struct node *x;
	char *out;
	bool is_dir;

	pthread_mutex_lock(&t->lock);
	x = tree_find(t, ino);
	is_dir = x && x->is_dir;
	pthread_mutex_unlock(&t->lock);
	if (!x)
		return -ENOENT;
	/* Directories list none: user.mailfs.* on the root are status reports
	 * asked for by name, not data a backup should copy. */
	if (is_dir) {
		names = NULL;
		count = 0;
	} else {
		names = msg_xattrs;
		count = sizeof(msg_xattrs) / sizeof(*msg_xattrs);
	}
	for (size_t i = 0; i < count; i++)
		len += strlen(names[i]) + 1;
	out = malloc(len ? len : 1);
	if (!out)
		return -ENOMEM;
	len = 0;
	for (size_t i = 0; i < count; i++) {
		memcpy(out + len, names[i], strlen(names[i]) + 1);
		len += strlen(names[i]) + 1;
	}
	*names_r = out;
	*len_r = len;
	return 0;
}
