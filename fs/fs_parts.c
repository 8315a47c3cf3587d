/* The `.parts` view; see fs_parts.h. */
#include "fs/fs_parts.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define XXH_STATIC_LINKING_ONLY  /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "fs/fs_tree_priv.h"
#include "src/block_cache.h"
#include "src/log.h"
#include "src/mime_parts.h"
#include "src/part_reader.h"

/* text, html and headers are rendered whole, in memory: up to this */
#define TEXT_MAX (16u << 20)
/* a message parsed whole (POP3): up to this */
#define MESSAGE_MAX (256u << 20)
#define READ_CHUNK (1u << 20)
#define BUCKETS 4096
/* Parts never change, but sizes that were estimates get corrected. */
#define ATTR_TIMEOUT 1.0

/* One message's tree, shared by the nodes that show it. */
struct pmsg {
	struct pmsg *next;
	char *folder_raw;
	uint32_t uidvalidity, uid;
	int64_t mtime;
	struct mime_tree *tree;
	unsigned refs;
};

enum pkind { PE_PARTS, PE_NODE };

struct pent {
	struct pent *hnext;
	fuse_ino_t ino;
	enum pkind kind;
	fuse_ino_t folder_ino;         /* the folder whose view this is */
	struct pmsg *msg;              /* PE_NODE: holds one reference */
	const struct mime_node *node;  /* PE_NODE: in msg's tree */
	uint64_t nlookup;
	unsigned opens;
	uint64_t size;
	bool size_exact;
	char *text;                    /* text, html, headers: rendered */
	size_t text_len;
};

struct pfile {
	pthread_mutex_t lock;
	struct pent *ent;              /* kept alive by ent->opens */
	struct part_cursor cur;
};

struct fs_parts {
	pthread_mutex_t lock;
	struct backend *be;
	struct fs_tree *tree;
	struct pent *buckets[BUCKETS];
	struct pmsg *msgs;
	uint64_t fetched;
	uint64_t structures;
	struct block_cache *cache;     /* may be NULL */
	char *account;
	uid_t uid;
	gid_t gid;
	time_t start;
};

static fuse_ino_t child_ino(fuse_ino_t parent, const char *name)
{
	XXH3_state_t st;

	XXH3_64bits_reset_withSeed(&st, 0x7061727473);
	XXH3_64bits_update(&st, &parent, sizeof(parent));
	XXH3_64bits_update(&st, name, strlen(name) + 1);
	return (XXH3_64bits_digest(&st) | FS_OUTBOX_INO_BIT) & ~(uint64_t)3;
}

/* A message's directory is numbered after the message's own inode, so a
 * message that replaces another of the same name (a new UID) never takes
 * over the number of the old one's directory. */
static fuse_ino_t msg_dir_ino(fuse_ino_t parent, fuse_ino_t msg_ino)
{
	XXH3_state_t st;

	XXH3_64bits_reset_withSeed(&st, 0x6d73676469);
	XXH3_64bits_update(&st, &parent, sizeof(parent));
	XXH3_64bits_update(&st, &msg_ino, sizeof(msg_ino));
	return (XXH3_64bits_digest(&st) | FS_OUTBOX_INO_BIT) & ~(uint64_t)3;
}

struct fs_parts *fs_parts_new(struct backend *be, struct fs_tree *tree,
	struct block_cache *cache, const char *account)
{
	struct fs_parts *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->account = strdup(account ? account : "");
	if (!p->account) {
		free(p);
		return NULL;
	}
	p->cache = cache;
	pthread_mutex_init(&p->lock, NULL);
	p->be = be;
	p->tree = tree;
	p->uid = getuid();
	p->gid = getgid();
	p->start = time(NULL);
	return p;
}

static void msg_put(struct fs_parts *p, struct pmsg *m)
{
	if (--m->refs)
		return;
	for (struct pmsg **pp = &p->msgs; *pp; pp = &(*pp)->next)
		if (*pp == m) {
			*pp = m->next;
			break;
		}
	mime_tree_free(&m->tree);
	free(m->folder_raw);
	free(m);
}

static void ent_free(struct fs_parts *p, struct pent *e)
{
	if (e->msg)
		msg_put(p, e->msg);
	free(e->text);
	free(e);
}

void fs_parts_free(struct fs_parts **pp)
{
	struct fs_parts *p = *pp;

	if (!p)
		return;
	for (size_t i = 0; i < BUCKETS; i++)
		while (p->buckets[i]) {
			struct pent *e = p->buckets[i];

			p->buckets[i] = e->hnext;
			ent_free(p, e);
		}
	pthread_mutex_destroy(&p->lock);
	free(p->account);
	free(p);
	*pp = NULL;
}

void fs_parts_get_stats(struct fs_parts *p, struct fs_parts_stats *st_r)
{
	st_r->bytes_fetched = __atomic_load_n(&p->fetched, __ATOMIC_RELAXED);
	st_r->structures_fetched = __atomic_load_n(&p->structures,
		__ATOMIC_RELAXED);
}

/* ---- the inode table (lock held) ----------------------------------------- */

static struct pent *ent_find(struct fs_parts *p, fuse_ino_t ino)
{
	for (struct pent *e = p->buckets[(ino >> 2) % BUCKETS]; e; e = e->hnext)
		if (e->ino == ino)
			return e;
	return NULL;
}

static void ent_add(struct fs_parts *p, struct pent *e)
{
	size_t b = (e->ino >> 2) % BUCKETS;

	e->hnext = p->buckets[b];
	p->buckets[b] = e;
}

/* Unlinks and frees e once nothing references it. */
static void ent_maybe_free(struct fs_parts *p, struct pent *e)
{
	if (e->nlookup || e->opens)
		return;
	for (struct pent **pp = &p->buckets[(e->ino >> 2) % BUCKETS]; *pp;
	     pp = &(*pp)->hnext)
		if (*pp == e) {
			*pp = e->hnext;
			break;
		}
	ent_free(p, e);
}

static bool is_dir(const struct pent *e)
{
	return e->kind == PE_PARTS || e->node->kind == MIME_NODE_DIR;
}

static void fill_stat(const struct fs_parts *p, const struct pent *e,
	struct stat *st)
{
	time_t t = e->msg ? (time_t)e->msg->mtime : p->start;

	memset(st, 0, sizeof(*st));
	st->st_ino = e->ino;
	st->st_uid = p->uid;
	st->st_gid = p->gid;
	if (is_dir(e)) {
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
	} else {
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = (off_t)e->size;
		st->st_blocks = (blkcnt_t)((e->size + 511) / 512);
	}
	st->st_atime = st->st_mtime = st->st_ctime = t;
}

static void fill_entry(const struct fs_parts *p, const struct pent *e,
	struct fuse_entry_param *fe)
{
	memset(fe, 0, sizeof(*fe));
	fe->ino = e->ino;
	fe->attr_timeout = ATTR_TIMEOUT;
	fe->entry_timeout = ATTR_TIMEOUT;
	fill_stat(p, e, &fe->attr);
}

/* Takes a kernel reference on the entry ino if it exists and is the same
 * node; 1 if it does not exist, -EIO if another node has that number. */
static int ref_existing(struct fs_parts *p, fuse_ino_t ino, enum pkind kind,
	fuse_ino_t folder_ino, const struct pmsg *m, const char *name,
	struct fuse_entry_param *fe)
{
	struct pent *e = ent_find(p, ino);

	if (!e)
		return 1;
	if (e->kind != kind || e->folder_ino != folder_ino ||
	    (m && (e->msg->uid != m->uid ||
		   e->msg->uidvalidity != m->uidvalidity ||
		   strcmp(e->node->name, name) != 0))) {
		log_warn(".parts: inode number %llu is taken",
			(unsigned long long)ino);
		return -EIO;
	}
	e->nlookup++;
	fill_entry(p, e, fe);
	return 0;
}

/* ---- fetching ------------------------------------------------------------- */

static struct part_source source_of(struct fs_parts *p, const struct pmsg *m)
{
	struct part_source s = { p->be, m->folder_raw, m->uidvalidity, m->uid,
		&p->fetched, p->cache, p->account };

	return s;
}

/* A message's tree as the block cache keeps it: under the part key of
 * section "", which no part's bytes use. */
static struct block_key tree_key(struct fs_parts *p, const struct fs_msg_id *id)
{
	return block_key_make_part(p->account, id->folder_raw, id->uidvalidity,
		id->uid, "", 0);
}

static struct mime_tree *cached_tree(struct fs_parts *p,
	const struct fs_msg_id *id)
{
	struct block_key key = tree_key(p, id);
	struct mime_tree *t = NULL;
	size_t len = 0;
	char *buf;

	if (!p->cache || !block_cache_contains(p->cache, &key))
		return NULL;
	buf = malloc(BLOCK_CACHE_BLOCK_SIZE);
	if (buf && block_cache_get(p->cache, &key, buf, BLOCK_CACHE_BLOCK_SIZE,
				   &len, NULL))
		t = mime_tree_deserialize(buf, len);
	free(buf);
	return t;
}

static void cache_tree(struct fs_parts *p, const struct fs_msg_id *id,
	const struct mime_tree *t)
{
	struct block_key key = tree_key(p, id);
	char *buf;
	size_t len;

	if (!p->cache || !mime_tree_serialize(t, &buf, &len))
		return;
	if (len <= BLOCK_CACHE_BLOCK_SIZE)
		block_cache_put(p->cache, &key, buf, len, true);
	free(buf);
}

/* The tree of a message: from the block cache, else its structure
 * (IMAP), else the whole message read and parsed (POP3). */
static int build_tree(struct fs_parts *p, const struct fs_msg_id *id,
	struct mime_tree **tree_r)
{
	const char *err = "";
	enum backend_status st;
	char *buf = NULL;
	size_t len = 0;

	*tree_r = cached_tree(p, id);
	if (*tree_r)
		return 0;
	__atomic_add_fetch(&p->structures, 1, __ATOMIC_RELAXED);
	if (p->be->ops->fetch_parts) {
		st = p->be->ops->fetch_parts(p->be, id->folder_raw,
			id->uidvalidity, id->uid, tree_r, &err);
		goto out;
	}
	for (;;) {
		size_t got = 0;
		char *nb;

		if (len + READ_CHUNK > MESSAGE_MAX) {
			st = BACKEND_UNSUPPORTED;
			err = "message too large to take apart";
			goto out;
		}
		nb = realloc(buf, len + READ_CHUNK);
		if (!nb) {
			st = BACKEND_TEMP;
			err = "out of memory";
			goto out;
		}
		buf = nb;
		st = p->be->ops->read_range(p->be, id->folder_raw,
			id->uidvalidity, id->uid, len, READ_CHUNK, buf + len,
			&got, &err);
		if (st != BACKEND_OK)
			goto out;
		__atomic_add_fetch(&p->fetched, (uint64_t)got, __ATOMIC_RELAXED);
		len += got;
		if (got < READ_CHUNK)
			break;
	}
	*tree_r = mime_tree_from_message(buf, len);
	if (!*tree_r) {
		st = BACKEND_TEMP;
		err = "out of memory";
	}
out:
	free(buf);
	if (st != BACKEND_OK) {
		log_warn(".parts: structure of UID %u: %s", id->uid, err);
		return -backend_status_errno(st);
	}
	cache_tree(p, id, *tree_r);
	return 0;
}

/* text, html or headers as shown (malloc'd into *text_r): its bytes
 * come from the block cache after the first time.  Network I/O: called
 * without the lock, m referenced. */
static int render(struct fs_parts *p, const struct pmsg *m,
	const struct mime_node *n, char **text_r, size_t *len_r)
{
	struct part_source src = source_of(p, m);
	const char *err = "";
	char *raw = NULL;
	size_t len = 0;
	enum backend_status st = part_read_all(&src, n, TEXT_MAX, &raw, &len,
		&err);

	if (st == BACKEND_OK) {
		*text_r = mime_node_render(n, raw, len, len_r);
		if (!*text_r) {
			st = BACKEND_TEMP;
			err = "out of memory";
		}
	}
	free(raw);
	if (st != BACKEND_OK) {
		log_warn(".parts: %s of UID %u: %s", n->section, m->uid, err);
		return -backend_status_errno(st);
	}
	return 0;
}

/* Sizes a new entry: renders text, html and headers (the text is kept
 * only while the file is open), asks a part's decoded size.  Network
 * I/O: called without the lock, m referenced. */
static int size_entry(struct fs_parts *p, const struct pmsg *m,
	struct pent *e)
{
	struct part_source src = source_of(p, m);
	const struct mime_node *n = e->node;
	const char *err = "";
	enum backend_status st;
	char *text = NULL;
	int r;

	if (n->kind == MIME_NODE_DIR)
		return 0;
	if (n->kind == MIME_NODE_TEXT || n->kind == MIME_NODE_HTML ||
	    n->kind == MIME_NODE_HEADERS) {
		r = render(p, m, n, &text, &e->text_len);
		free(text);
		e->size = e->text_len;
		e->size_exact = true;
		return r;
	}
	st = part_decoded_size(&src, n, &e->size, &e->size_exact, &err);
	if (st != BACKEND_OK) {
		log_warn(".parts: %s of UID %u: %s", n->section, m->uid, err);
		return -backend_status_errno(st);
	}
	return 0;
}

static bool is_text(const struct pent *e)
{
	return e->kind == PE_NODE && (e->node->kind == MIME_NODE_TEXT ||
		e->node->kind == MIME_NODE_HTML ||
		e->node->kind == MIME_NODE_HEADERS);
}

/* ---- lookup --------------------------------------------------------------- */

static int lookup_parts_dir(struct fs_parts *p, fuse_ino_t folder,
	struct fuse_entry_param *fe)
{
	struct fs_msg_id id;
	fuse_ino_t ino = child_ino(folder, FS_PARTS_NAME);
	struct pent *e;
	int r = fs_tree_message_id(p->tree, folder, NULL, &id);

	free(id.folder_raw);
	if (r < 0)
		return r == -ENOTDIR ? -ENOTDIR : -ENOENT;
	pthread_mutex_lock(&p->lock);
	r = ref_existing(p, ino, PE_PARTS, folder, NULL, NULL, fe);
	if (r == 1) {
		e = calloc(1, sizeof(*e));
		if (!e) {
			r = -ENOMEM;
		} else {
			e->ino = ino;
			e->kind = PE_PARTS;
			e->folder_ino = folder;
			e->nlookup = 1;
			ent_add(p, e);
			fill_entry(p, e, fe);
			r = 0;
		}
	}
	pthread_mutex_unlock(&p->lock);
	return r;
}

/* The shared tree of a message, referenced; built if nobody has it. */
static int get_msg(struct fs_parts *p, struct fs_msg_id *id,
	struct pmsg **m_r)
{
	struct mime_tree *tree;
	struct pmsg *m;
	int r;

	pthread_mutex_lock(&p->lock);
	for (m = p->msgs; m; m = m->next)
		if (m->uid == id->uid && m->uidvalidity == id->uidvalidity &&
		    strcmp(m->folder_raw, id->folder_raw) == 0) {
			m->refs++;
			*m_r = m;
			pthread_mutex_unlock(&p->lock);
			return 0;
		}
	pthread_mutex_unlock(&p->lock);
	r = build_tree(p, id, &tree);
	if (r < 0)
		return r;
	m = calloc(1, sizeof(*m));
	if (!m) {
		mime_tree_free(&tree);
		return -ENOMEM;
	}
	m->folder_raw = id->folder_raw;
	id->folder_raw = NULL;
	m->uidvalidity = id->uidvalidity;
	m->uid = id->uid;
	m->mtime = id->mtime;
	m->tree = tree;
	m->refs = 1;
	pthread_mutex_lock(&p->lock);
	m->next = p->msgs;	/* a twin built meanwhile is harmless */
	p->msgs = m;
	pthread_mutex_unlock(&p->lock);
	*m_r = m;
	return 0;
}

/* Adds the entry for node n of m under the number ino (m's reference
 * passes to the entry, or is dropped). */
static int add_node(struct fs_parts *p, fuse_ino_t ino, fuse_ino_t folder,
	struct pmsg *m, const struct mime_node *n,
	struct fuse_entry_param *fe)
{
	struct pent *e = calloc(1, sizeof(*e));
	int r;

	if (!e) {
		pthread_mutex_lock(&p->lock);
		msg_put(p, m);
		pthread_mutex_unlock(&p->lock);
		return -ENOMEM;
	}
	e->ino = ino;
	e->kind = PE_NODE;
	e->folder_ino = folder;
	e->msg = m;
	e->node = n;
	e->nlookup = 1;
	r = size_entry(p, m, e);
	pthread_mutex_lock(&p->lock);
	if (r == 0)
		r = ref_existing(p, ino, PE_NODE, folder, m, n->name, fe);
	if (r == 1) {
		ent_add(p, e);
		fill_entry(p, e, fe);
		r = 0;
	} else {
		ent_free(p, e);	/* an error, or another lookup won */
	}
	pthread_mutex_unlock(&p->lock);
	return r;
}

static int lookup_message(struct fs_parts *p, struct pent *parent_snapshot,
	fuse_ino_t parent, const char *name, struct fuse_entry_param *fe)
{
	fuse_ino_t folder = parent_snapshot->folder_ino, ino;
	struct fs_msg_id id;
	struct pmsg *m;
	size_t nl = strlen(name);
	char *file = malloc(nl + 5);
	int r;

	if (!file)
		return -ENOMEM;
	memcpy(file, name, nl);
	memcpy(file + nl, ".eml", 5);
	r = fs_tree_message_id(p->tree, folder, file, &id);
	free(file);
	if (r < 0) {
		free(id.folder_raw);
		return r == -ENOTDIR ? -ENOENT : r;
	}
	ino = msg_dir_ino(parent, tree_msg_ino(id.folder_raw, id.uidvalidity,
		id.uid));
	pthread_mutex_lock(&p->lock);
	r = ref_existing(p, ino, PE_NODE, folder, NULL, NULL, fe);
	if (r == 0 || r == -EIO) {
		struct pent *e = ent_find(p, ino);

		/* the same message, or another one with a clashing number */
		if (r == 0 && (e->msg->uid != id.uid ||
			       e->msg->uidvalidity != id.uidvalidity)) {
			e->nlookup--;
			r = -EIO;
		}
		pthread_mutex_unlock(&p->lock);
		free(id.folder_raw);
		return r;
	}
	pthread_mutex_unlock(&p->lock);
	r = get_msg(p, &id, &m);
	free(id.folder_raw);
	if (r < 0)
		return r;
	return add_node(p, ino, folder, m, &m->tree->root, fe);
}

int fs_parts_lookup(struct fs_parts *p, fuse_ino_t parent, const char *name,
	struct fuse_entry_param *fe)
{
	struct pent *pe, snap;
	const struct mime_node *n;
	struct pmsg *m;
	fuse_ino_t ino;
	int r;

	if (!fs_parts_owns(parent))
		return lookup_parts_dir(p, parent, fe);
	pthread_mutex_lock(&p->lock);
	pe = ent_find(p, parent);
	if (!pe || !is_dir(pe)) {
		pthread_mutex_unlock(&p->lock);
		return pe ? -ENOTDIR : -ENOENT;
	}
	snap = *pe;
	if (pe->kind == PE_PARTS) {
		pthread_mutex_unlock(&p->lock);
		return lookup_message(p, &snap, parent, name, fe);
	}
	n = mime_node_child(pe->node, name);
	if (!n) {
		pthread_mutex_unlock(&p->lock);
		return -ENOENT;
	}
	ino = child_ino(parent, name);
	r = ref_existing(p, ino, PE_NODE, pe->folder_ino, pe->msg, name, fe);
	if (r <= 0) {
		pthread_mutex_unlock(&p->lock);
		return r;
	}
	m = pe->msg;
	m->refs++;	/* keeps n alive while unlocked */
	pthread_mutex_unlock(&p->lock);
	return add_node(p, ino, snap.folder_ino, m, n, fe);
}

void fs_parts_forget(struct fs_parts *p, fuse_ino_t ino, uint64_t n)
{
	struct pent *e;

	pthread_mutex_lock(&p->lock);
	e = ent_find(p, ino);
	if (e) {
		e->nlookup = e->nlookup > n ? e->nlookup - n : 0;
		ent_maybe_free(p, e);
	}
	pthread_mutex_unlock(&p->lock);
}

int fs_parts_getattr(struct fs_parts *p, fuse_ino_t ino, struct stat *st,
	double *timeout_r)
{
	struct pent *e;

	*timeout_r = ATTR_TIMEOUT;
	pthread_mutex_lock(&p->lock);
	e = ent_find(p, ino);
	if (e)
		fill_stat(p, e, st);
	pthread_mutex_unlock(&p->lock);
	return e ? 0 : -ENOENT;
}

/* ---- directories ---------------------------------------------------------- */

static int snap_add(struct fs_dir_snapshot *s, size_t *cap, const char *name,
	fuse_ino_t ino, mode_t mode, uint64_t size)
{
	struct fs_dir_entry *de;

	if (s->count == *cap) {
		size_t nc = *cap ? *cap * 2 : 16;

		de = realloc(s->entries, nc * sizeof(*de));
		if (!de)
			return -ENOMEM;
		s->entries = de;
		*cap = nc;
	}
	de = &s->entries[s->count];
	memset(de, 0, sizeof(*de));
	de->name = strdup(name);
	if (!de->name)
		return -ENOMEM;
	de->st.st_ino = ino;
	de->st.st_mode = mode;
	de->st.st_size = (off_t)size;
	s->count++;
	return 0;
}

int fs_parts_snapshot_dir(struct fs_parts *p, fuse_ino_t ino,
	struct fs_dir_snapshot **snap_r)
{
	struct fs_dir_snapshot *s = calloc(1, sizeof(*s)), *folder = NULL;
	struct pent *e, copy;
	size_t cap = 0;
	int r = 0;

	if (!s)
		return -ENOMEM;
	pthread_mutex_lock(&p->lock);
	e = ent_find(p, ino);
	if (!e || !is_dir(e)) {
		pthread_mutex_unlock(&p->lock);
		free(s);
		return e ? -ENOTDIR : -ENOENT;
	}
	copy = *e;
	if (e->kind == PE_NODE) {
		r = snap_add(s, &cap, ".", ino, S_IFDIR | 0555, 0);
		if (!r)
			r = snap_add(s, &cap, "..", ino, S_IFDIR | 0555, 0);
		for (size_t i = 0; !r && i < e->node->n_children; i++) {
			const struct mime_node *c = &e->node->children[i];
			fuse_ino_t ci = child_ino(ino, c->name);
			struct pent *ce = ent_find(p, ci);

			r = snap_add(s, &cap, c->name, ci,
				c->kind == MIME_NODE_DIR ? S_IFDIR | 0555 :
				S_IFREG | 0444, ce ? ce->size :
				mime_decoded_size_estimate(c->transfer,
					c->encoded_size));
		}
		pthread_mutex_unlock(&p->lock);
		goto out;
	}
	pthread_mutex_unlock(&p->lock);
	/* .parts: the folder's messages, as directories */
	r = fs_tree_snapshot_dir(p->tree, copy.folder_ino, &folder);
	if (!r)
		r = snap_add(s, &cap, ".", ino, S_IFDIR | 0555, 0);
	if (!r)
		r = snap_add(s, &cap, "..", copy.folder_ino, S_IFDIR | 0555, 0);
	for (size_t i = 2; !r && i < folder->count; i++) {
		const char *name = folder->entries[i].name;
		size_t nl = strlen(name);

		if (!S_ISREG(folder->entries[i].st.st_mode) || nl <= 4 ||
		    strcmp(name + nl - 4, ".eml") != 0)
			continue;
		char *stem = strndup(name, nl - 4);

		r = stem ? snap_add(s, &cap, stem, msg_dir_ino(ino,
			folder->entries[i].st.st_ino), S_IFDIR | 0555, 0) :
			-ENOMEM;
		free(stem);
	}
	fs_dir_snapshot_free(&folder);
out:
	if (r < 0) {
		fs_dir_snapshot_free(&s);
		return r;
	}
	*snap_r = s;
	return 0;
}

/* ---- files ---------------------------------------------------------------- */

int fs_parts_open(struct fs_parts *p, fuse_ino_t ino, int flags,
	uint64_t *fh_r, bool *direct_io_r)
{
	struct pfile *f;
	struct pent *e;

	if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC))
		return -EROFS;
	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	pthread_mutex_lock(&p->lock);
	e = ent_find(p, ino);
	if (!e || is_dir(e)) {
		pthread_mutex_unlock(&p->lock);
		free(f);
		return e ? -EISDIR : -ENOENT;
	}
	e->opens++;
	*direct_io_r = !e->size_exact;
	if (is_text(e) && !e->text) {
		char *text = NULL;
		size_t len = 0;
		int r;

		pthread_mutex_unlock(&p->lock);	/* e is kept by opens */
		r = render(p, e->msg, e->node, &text, &len);
		pthread_mutex_lock(&p->lock);
		if (r == 0 && !e->text) {
			e->text = text;
			e->text_len = len;
			text = NULL;
		}
		free(text);
		if (r < 0) {
			e->opens--;
			ent_maybe_free(p, e);
			pthread_mutex_unlock(&p->lock);
			free(f);
			return r;
		}
	}
	pthread_mutex_unlock(&p->lock);
	pthread_mutex_init(&f->lock, NULL);
	f->ent = e;
	*fh_r = (uint64_t)(uintptr_t)f;
	return 0;
}

ssize_t fs_parts_read(struct fs_parts *p, uint64_t fh, uint64_t offset,
	size_t length, char *buf, bool *size_changed_r)
{
	struct pfile *f = (struct pfile *)(uintptr_t)fh;
	struct pent *e = f->ent;
	struct part_source src = source_of(p, e->msg);
	const char *err = "";
	enum backend_status st;
	size_t got = 0;

	*size_changed_r = false;
	if (is_text(e)) {	/* rendered at open, kept while open */
		if (offset >= e->text_len)
			return 0;
		got = e->text_len - offset < length ?
			(size_t)(e->text_len - offset) : length;
		memcpy(buf, e->text + offset, got);
		return (ssize_t)got;
	}
	pthread_mutex_lock(&f->lock);
	st = part_read_decoded(&src, e->node, &f->cur, offset, length, buf,
		&got, &err);
	pthread_mutex_unlock(&f->lock);
	if (st != BACKEND_OK) {
		log_warn(".parts: reading %s of UID %u: %s", e->node->section,
			e->msg->uid, err);
		return -backend_status_errno(st);
	}
	if (got < length && (got > 0 || offset > 0)) {
		/* the end: now the size is known */
		pthread_mutex_lock(&p->lock);
		if (!e->size_exact || e->size != offset + got) {
			*size_changed_r = e->size != offset + got;
			e->size = offset + got;
			e->size_exact = true;
		}
		pthread_mutex_unlock(&p->lock);
	}
	return (ssize_t)got;
}

void fs_parts_release(struct fs_parts *p, uint64_t fh)
{
	struct pfile *f = (struct pfile *)(uintptr_t)fh;

	pthread_mutex_lock(&p->lock);
	if (--f->ent->opens == 0 && is_text(f->ent)) {
		free(f->ent->text);	/* memory only while open */
		f->ent->text = NULL;
	}
	ent_maybe_free(p, f->ent);
	pthread_mutex_unlock(&p->lock);
	pthread_mutex_destroy(&f->lock);
	part_cursor_free(&f->cur);
	free(f);
}
