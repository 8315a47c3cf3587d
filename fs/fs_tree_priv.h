/* Internals of the file-system tree shared by fs_tree.c (listing and
 * reading), fs_write.c (changes) and fs_stage.c (copy-in).  Not for use
 * outside fs/. */
#ifndef MAILFS_FS_TREE_PRIV_H
#define MAILFS_FS_TREE_PRIV_H

#include <pthread.h>
#include <time.h>

#include "fs/fs_tree.h"
#include "src/folder_index.h"

/* Message files never change: let the kernel keep what it learned. */
#define MSG_TIMEOUT 3600.0
/* Directories change as mail arrives. */
#define DIR_TIMEOUT 1.0

struct node {
	fuse_ino_t ino;
	struct node *hnext;     /* hash chain */
	bool is_dir;
	bool attached;          /* reachable from the root */
	uint64_t nlookup;       /* kernel references */
	char *name;
	struct node *parent;    /* valid while attached */

	/* directories */
	char *raw;              /* server folder name; NULL if none */
	bool selectable;
	struct node **dirs;
	size_t n_dirs;
	struct node **prev_dirs;  /* scratch for folder-list merges */
	size_t n_prev_dirs;
	struct node **msgs;     /* sorted by name */
	size_t n_msgs;
	struct node **staged;   /* files being copied in, unordered */
	size_t n_staged;
	bool msgs_loaded;
	uint64_t listing_serial;  /* of the index's listing msgs came from */
	uint32_t uidvalidity;   /* of that listing */
	int64_t list_changed_at;  /* that listing's changed_at */
	int64_t dirs_changed_at;  /* wall clock: a child dir came or went */
	bool child_came;        /* scratch for folder-list merges */
	bool seen;              /* scratch for folder-list merges */
	unsigned pins;          /* in use without the lock: do not free */
	uint64_t merge_stamp;   /* the last merge that placed this message */

	/* messages */
	char *folder_raw;       /* copy: the node may outlive its folder */
	uint32_t msg_uidvalidity;
	uint32_t uid;
	uint64_t size;
	bool size_uncertain;    /* read uncached until a full read settles it */
	int64_t mtime;
	char *flags;

	/* staged files: copy-in not yet appended (fs_stage.c) */
	bool is_staged;
	char *stage_path;       /* the local file holding the bytes; owned */
	unsigned open_count;
	bool mtime_set;         /* the user set the time: use it as date */
	bool flags_set;         /* the user set user.mail.flags */
	bool committing;        /* an APPEND is under way */
	bool final_try;         /* tried once while unmounting */
	time_t changed_at;      /* monotonic: last write, close or setattr */
	time_t retry_at;        /* monotonic: after a failed APPEND */
	char *job_path;         /* its record in the journal; owned */
	bool journaled;         /* that record is on disk */
	bool sent;              /* an APPEND was started: it may be there */
	uint32_t sent_uidvalidity, sent_min_uid;  /* where to look for it */
	unsigned tries;         /* APPENDs failed in a row: the backoff */
	char *failed;           /* refused for good: the reason; owned */
};

/* The tree holds inodes and the names the kernel sees.  What a folder
 * holds, when to fetch it again and what to read ahead are the folder
 * index's and read_ahead's: the tree asks them and installs what they
 * serve (one lock order: tree lock -> index lock, read_ahead lock). */
struct fs_tree {
	pthread_mutex_t lock;
	struct backend *be;
	struct msg_reader *reader;
	unsigned refresh_s;               /* the folder list's period */
	time_t start_time;
	uid_t uid;
	gid_t gid;
	struct node *root;
	struct node **buckets;
	size_t n_buckets;
	size_t n_nodes;
	struct meta_cache *meta;          /* may be NULL */
	struct folder_index *index;       /* owned; listings live there */
	struct work_queue *bg;            /* owned: refreshes, notifications */
	struct read_ahead *ra;            /* owned */
	uint64_t merge_seq;               /* one stamp per listing merge */
	char *source;                     /* user.mailfs.source text */
	char *(*report_hook)(void *ctx, const char *what);
	void *report_ctx;
	void (*inval_hook)(void *ctx, fuse_ino_t parent, const char *name);
	void *inval_ctx;

	/* writing (fs_write.c, fs_stage.c) */
	char *trash;                      /* raw name or NULL */
	char *stage_dir;                  /* NULL: copy-in disabled */
	pthread_t stager;
	bool stager_running;
	bool stopping;
	pthread_cond_t stage_wake;
	pthread_cond_t stage_done;        /* broadcast when an APPEND ends */

	time_t folders_at;                /* monotonic: last folder list */
	size_t n_folders;                 /* directories it made */
	bool folders_installed;           /* later lists are changes */
	bool folders_loading;

};

/* Seconds a copied-in file must stay untouched and closed before it is
 * appended: cp -a and rsync set times and xattrs after close(). */
#define STAGE_QUIET_S 1

/* Entries the kernel may have cached that no longer exist. */
struct inval_list {
	size_t n, cap;
	struct inval_item {
		fuse_ino_t parent;
		char *name;
	} *items;
};


time_t tree_now(void);
fuse_ino_t tree_dir_ino(const char *path);
fuse_ino_t tree_msg_ino(const char *folder, uint32_t uidvalidity,
	uint32_t uid);

/* The inode hash (lock held). */
struct node *tree_find(struct fs_tree *t, fuse_ino_t ino);
void tree_hash_add(struct fs_tree *t, struct node *n);
void tree_hash_remove(struct fs_tree *t, struct node *n);

/* Frees a node nobody can reach any more (lock held). */
void tree_maybe_free(struct fs_tree *t, struct node *n);
void tree_node_free(struct node *n);
void tree_detach_messages(struct fs_tree *t, struct node *dir);
int tree_add_child_dir(struct node *parent, struct node *child);
int tree_install_folders(struct fs_tree *t,
	const struct backend_folder *folders, size_t nf, const char **error_r);

/* Moves dir's mtime forward: its entries changed (lock held). */
void tree_dir_changed(struct fs_tree *t, struct node *dir);

void tree_fill_stat(struct fs_tree *t, const struct node *n, struct stat *st);
void tree_fill_entry(struct fs_tree *t, const struct node *n,
	struct fuse_entry_param *e);
struct node *tree_find_msg(struct node *dir, const char *name);

/* Listings (lock held; may drop it around network I/O, pinning dir).
 * ensure: installs what the folder index serves (fresh: for a listing of
 * the directory, which may start a background refresh).  refresh: fetches
 * now and installs the result. */
int tree_ensure_messages(struct fs_tree *t, struct node *dir, bool fresh);
int tree_refresh_messages(struct fs_tree *t, struct node *dir,
	struct inval_list *il);

/* Removes a message node from its folder's list and listing (lock held).
 * A refresh of dir under way will not bring it back. */
void tree_detach_message(struct fs_tree *t, struct node *dir, struct node *x);
/* dir's listing on the server changed through the mount in a way its next
 * resync must not take on trust (lock held): flags were set, or a message
 * was moved in (which the next lookup must already see: it lists again). */
void tree_note_flags_set(struct fs_tree *t, struct node *dir);
void tree_note_moved_in(struct fs_tree *t, struct node *dir);

/* Staged files (fs_stage.c; lock held). */
struct node *tree_find_staged(struct node *dir, const char *name);
void tree_drop_staged(struct fs_tree *t, struct node *x);
/* When x's APPEND is under way, waits (lock held; released while
 * waiting) until it has ended and returns true: every node pointer the
 * caller holds is then stale.  False at once otherwise. */
bool stage_wait_commit(struct fs_tree *t, struct node *x);
int stage_rename(struct fs_tree *t, struct node *x, struct node *newdir,
	const char *newname);
int stage_setxattr(struct fs_tree *t, struct node *x, const char *name,
	const char *value);
/* user.mail.status of a staged file, malloc'd: "pending" or "failed: ..." */
char *stage_status(const struct node *x);
/* Attributes a message shows but does not take (user.mail.uid,
 * user.mailfs.*): a restore copies them along, and they are ignored. */
bool stage_xattr_ignored(const char *name);
int stage_start(struct fs_tree *t);
void stage_stop(struct fs_tree *t);

void tree_inval_add(struct inval_list *il, fuse_ino_t parent,
	const char *name);
/* Without the lock and outside request handlers for the directory. */
void tree_inval_send(struct fs_tree *t, struct inval_list *il);
/* From inside a request for the directory (with or without the lock): a
 * background worker sends them.  Takes *il over (left empty). */
void tree_inval_later(struct fs_tree *t, struct inval_list *il);

#endif
