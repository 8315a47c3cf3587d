/* IMAP backend: folder listing, message metadata and ranged reads.
 *
 * Reading never changes the mailbox: folders are opened with EXAMINE
 * (read-only, so no \Recent is consumed) and content is fetched with
 * BODY.PEEK, which never sets \Seen.
 */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto/imap_backend.h"
#include "proto/imap_meta_fetch.h"
#include "proto/imap_pool.h"
#include "proto/mutf7.h"
#include "proto/net_stream.h"
#include "src/errfmt.h"
#include "src/fault_point.h"
#include "src/log.h"
#include "src/mime_parts.h"

struct imap_backend {
	struct backend be;      /* first: the vtable user sees only this */
	const struct mail_endpoint *ep;
	struct imap_pool *pool;
	struct imap_session *idle;   /* wait_changes' own session */
	int wake[2];                 /* interrupt_wait writes, IDLE polls */
	atomic_bool interrupted;     /* interrupt_wait was called */
	atomic_bool give_way;        /* IDLE should free its connection */
	/* What the last LIST said about special uses, for rm in a folder
	 * whose expunge deletes nothing (see virtual_trash). */
	pthread_mutex_t uses_lock;
	bool uses_known;
	char *trash_folder;          /* the \Trash folder's raw name or NULL */
	char **virtual_folders;      /* raw names of \All, \Flagged... */
	size_t n_virtual;
};

static struct imap_backend *to_imap(struct backend *be)
{
	return (struct imap_backend *)be;
}

/* Fails with a message that names the command and the server's words. */
static enum backend_status command_failed(struct imap_session *s, int r,
	const char *what, const char *folder, const char **error_r)
{
	enum backend_status st = imap_session_status(s, r);
	/* After a network error the last response is stale: say why the
	 * stream died instead. */
	const char *text = imap_session_broken(s) ?
		net_stream_last_error(s->imap->imap_stream) :
		imap_session_last_text(s);

	*error_r = errfmt("%s%s%s: %s%s%s", what, folder ? " " : "",
		folder ? folder : "", backend_status_name(st),
		*text ? ": " : "", text);
	return st;
}

/* Opens `folder` read-only unless it is already the selected one. */
static enum backend_status session_examine(struct imap_session *s,
	const char *folder, bool force, const char **error_r)
{
	int r = imap_session_select(s, folder, false, force, NULL);

	if (r != MAILIMAP_NO_ERROR)
		return command_failed(s, r, "EXAMINE", folder, error_r);
	return BACKEND_OK;
}

/* Splits a raw folder name at the delimiter and decodes each part from
 * modified UTF-7; a part that does not decode is kept as sent (the file
 * system layer sanitises every part anyway). */
static int split_folder_name(const char *raw, char delim,
	struct backend_folder *f)
{
	size_t n = 1, i = 0;
	const char *p, *start;

	if (delim)
		for (p = raw; *p; p++)
			n += *p == delim;
	f->parts = calloc(n, sizeof(*f->parts));
	if (!f->parts)
		return -1;
	for (start = p = raw;; p++) {
		if (*p && !(delim && *p == delim))
			continue;
		char *part = strndup(start, p - start);
		char *dec = part ? mutf7_decode(part) : NULL;

		if (dec) {
			free(part);
			part = dec;
		}
		if (!part)
			return -1;
		f->parts[i++] = part;
		f->n_parts = i;
		if (!*p)
			break;
		start = p + 1;
	}
	/* INBOX is case-insensitive (RFC 3501): show it one way. */
	if (f->n_parts == 1 && strcasecmp(f->parts[0], "INBOX") == 0)
		memcpy(f->parts[0], "INBOX", 5);
	return 0;
}

static bool list_flags_noselect(const struct mailimap_mbx_list_flags *fl)
{
	clistiter *it;

	if (!fl)
		return false;
	if (fl->mbf_type == MAILIMAP_MBX_LIST_FLAGS_SFLAG &&
	    fl->mbf_sflag == MAILIMAP_MBX_LIST_SFLAG_NOSELECT)
		return true;
	for (it = clist_begin(fl->mbf_oflags); it; it = clist_next(it)) {
		struct mailimap_mbx_list_oflag *of = clist_content(it);

		if (of->of_type == MAILIMAP_MBX_LIST_OFLAG_FLAG_EXT &&
		    of->of_flag_ext &&
		    (strcasecmp(of->of_flag_ext, "NonExistent") == 0 ||
		     strcasecmp(of->of_flag_ext, "Noselect") == 0))
			return true;
	}
	return false;
}

/* The RFC 6154 special use of a folder, if the server says. */
static const char *list_flags_special(const struct mailimap_mbx_list_flags *fl)
{
	/* Important is Gmail's (draft-melnikov-imap-special-use-imp). */
	static const char *const uses[] = {
		"Sent", "Trash", "Drafts", "Junk", "Archive", "All", "Flagged",
		"Important",
	};
	static const char *const names[] = {
		"\\Sent", "\\Trash", "\\Drafts", "\\Junk", "\\Archive",
		"\\All", "\\Flagged", "\\Important",
	};
	clistiter *it;

	if (!fl)
		return NULL;
	for (it = clist_begin(fl->mbf_oflags); it; it = clist_next(it)) {
		struct mailimap_mbx_list_oflag *of = clist_content(it);

		if (of->of_type != MAILIMAP_MBX_LIST_OFLAG_FLAG_EXT ||
		    !of->of_flag_ext)
			continue;
		for (size_t i = 0; i < sizeof(uses) / sizeof(*uses); i++)
			if (strcasecmp(of->of_flag_ext, uses[i]) == 0)
				return names[i];
	}
	return NULL;
}

/* Folders that show messages living elsewhere (Gmail's All Mail and
 * Starred, a server's virtual views): an expunge there deletes nothing
 * or removes only a label, so rm moves the message to \Trash instead. */
static bool special_use_virtual(const char *use)
{
	return use && (strcmp(use, "\\All") == 0 ||
		strcmp(use, "\\Flagged") == 0 ||
		strcmp(use, "\\Important") == 0);
}

static void forget_special_uses(struct imap_backend *ib)
{
	for (size_t i = 0; i < ib->n_virtual; i++)
		free(ib->virtual_folders[i]);
	free(ib->virtual_folders);
	free(ib->trash_folder);
	ib->virtual_folders = NULL;
	ib->n_virtual = 0;
	ib->trash_folder = NULL;
	ib->uses_known = false;
}

/* Keeps what a LIST result says about \Trash and the virtual folders. */
static void remember_special_uses(struct imap_backend *ib, clist *list)
{
	size_t n = 0;
	char **virt = calloc(clist_count(list) + 1, sizeof(*virt));
	char *trash = NULL;
	bool ok = virt != NULL;
	clistiter *it;

	for (it = clist_begin(list); ok && it; it = clist_next(it)) {
		struct mailimap_mailbox_list *mb = clist_content(it);
		const char *use = list_flags_special(mb->mb_flag);

		if (!use || !mb->mb_name ||
		    !backend_raw_name_sendable(mb->mb_name) ||
		    list_flags_noselect(mb->mb_flag))
			continue;
		if (strcmp(use, "\\Trash") == 0 && !trash) {
			trash = strdup(mb->mb_name);
			ok = trash != NULL;
		} else if (special_use_virtual(use)) {
			virt[n] = strdup(mb->mb_name);
			ok = virt[n++] != NULL;
		}
	}
	pthread_mutex_lock(&ib->uses_lock);
	forget_special_uses(ib);
	if (ok) {
		ib->trash_folder = trash;
		ib->virtual_folders = virt;
		ib->n_virtual = n;
		ib->uses_known = true;
	}
	pthread_mutex_unlock(&ib->uses_lock);
	if (!ok) {
		for (size_t i = 0; i < n; i++)
			free(virt[i]);
		free(virt);
		free(trash);
	}
}

static enum backend_status imap_list_folders(struct backend *be,
	struct backend_folder **folders_r, size_t *count_r,
	const char **error_r)
{
	struct imap_backend *ib = to_imap(be);
	struct imap_session *s;
	struct backend_folder *folders = NULL;
	enum backend_status st;
	clist *list = NULL;
	clistiter *it;
	size_t n = 0;
	int r;

	st = imap_pool_get(ib->pool, &s, error_r);
	if (st != BACKEND_OK)
		return st;
	r = imap_session_list(s, "", "*", &list);
	if (r != MAILIMAP_NO_ERROR) {
		st = command_failed(s, r, "LIST", NULL, error_r);
		goto out_put;
	}
	folders = calloc(clist_count(list) + 1, sizeof(*folders));
	if (!folders) {
		st = BACKEND_TEMP;
		*error_r = "out of memory";
		goto out_free_list;
	}
	for (it = clist_begin(list); it; it = clist_next(it)) {
		struct mailimap_mailbox_list *mb = clist_content(it);
		struct backend_folder *f = &folders[n];

		f->raw_name = strdup(mb->mb_name);
		if (!f->raw_name || split_folder_name(mb->mb_name,
				mb->mb_delimiter, f) < 0) {
			n++;
			backend_folders_free(&folders, n);
			st = BACKEND_TEMP;
			*error_r = "out of memory";
			goto out_free_list;
		}
		f->noselect = list_flags_noselect(mb->mb_flag);
		f->special_use = list_flags_special(mb->mb_flag);
		n++;
	}
	remember_special_uses(ib, list);
	*folders_r = folders;
	*count_r = n;
	st = BACKEND_OK;
out_free_list:
	mailimap_list_result_free(list);
out_put:
	imap_pool_put(ib->pool, &s);
	return st;
}

/* Runs UID FETCH first:last (metadata; last 0 is '*') and appends the
 * messages with uid >= min_uid to *msgs (UID order not guaranteed). */
static enum backend_status fetch_metadata(struct imap_session *s,
	const char *folder, uint32_t first, uint32_t last, uint32_t min_uid,
	struct backend_message **msgs, size_t *n, const char **error_r)
{
	struct imap_meta_query q = {
		.first = first, .last = last, .min_uid = min_uid,
	};

	return imap_meta_fetch(s, folder, &q, msgs, n, error_r);
}

/* UID and FLAGS of messages first:last, optionally only those changed
 * since a modseq (CONDSTORE).  Stores (uid, flags) pairs in *out. */
struct uid_flags {
	uint32_t uid;
	char *flags;
};

static enum backend_status fetch_flags(struct imap_session *s,
	const char *folder, uint32_t first, uint32_t last, uint64_t since,
	struct uid_flags **out, size_t *n_out, const char **error_r)
{
	struct imap_meta_query q = {
		.first = first, .last = last, .min_uid = first,
		.max_uid = last, .flags_only = true, .changed_since = since,
	};
	struct backend_message *m = NULL;
	enum backend_status st;
	size_t n = 0;

	st = imap_meta_fetch(s, folder, &q, &m, &n, error_r);
	if (st == BACKEND_OK)
		*out = calloc(n + 1, sizeof(**out));
	if (st == BACKEND_OK && !*out) {
		st = BACKEND_TEMP;
		*error_r = "out of memory";
	}
	for (size_t i = 0; st == BACKEND_OK && i < n; i++) {
		(*out)[i].uid = m[i].uid;
		(*out)[i].flags = m[i].flags;
		m[i].flags = NULL;
	}
	if (st == BACKEND_OK)
		*n_out = n;
	backend_messages_free(&m, n);
	return st;
}

static int compare_uid_flags(const void *a, const void *b)
{
	const struct uid_flags *x = a, *y = b;

	return (x->uid > y->uid) - (x->uid < y->uid);
}

static void uid_flags_free(struct uid_flags *uf, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(uf[i].flags);
	free(uf);
}

/* Opens the folder read-only and reads its state; with CONDSTORE the
 * EXAMINE also reports HIGHESTMODSEQ. */
static enum backend_status examine_state(struct imap_session *s,
	const char *folder, struct backend_folder_state *state_r,
	const char **error_r)
{
	struct mailimap_selection_info *sel;
	uint64_t modseq = 0;
	int r;

	r = imap_session_select(s, folder, false, true, &modseq);
	if (r != MAILIMAP_NO_ERROR)
		return command_failed(s, r, "EXAMINE", folder, error_r);
	sel = s->imap->imap_selection_info;
	memset(state_r, 0, sizeof(*state_r));
	state_r->uidvalidity = sel->sel_uidvalidity;
	state_r->uidnext = sel->sel_uidnext;
	state_r->exists = sel->sel_exists;
	state_r->highestmodseq = modseq;
	return BACKEND_OK;
}

/* Copies a known message (all fields deep). */
static int message_copy(struct backend_message *dst,
	const struct backend_message *src)
{
	*dst = *src;
	dst->flags = strdup(src->flags ? src->flags : "");
	dst->header = malloc(src->header_len + 1);
	if (!dst->flags || !dst->header) {
		free(dst->flags);
		free(dst->header);
		return -1;
	}
	memcpy(dst->header, src->header, src->header_len);
	dst->header[src->header_len] = '\0';
	return 0;
}

static enum backend_status imap_resync_messages(struct backend *be,
	const char *folder, const struct backend_folder_state *known_state,
	const struct backend_message *known, size_t n_known,
	struct backend_folder_state *state_r,
	struct backend_message **msgs_r, size_t *count_r,
	const char **error_r)
{
	struct imap_backend *ib = to_imap(be);
	struct backend_message *msgs = NULL;
	struct uid_flags *uf = NULL;
	struct imap_session *s;
	enum backend_status st;
	size_t n = 0, n_uf = 0, n_new;
	uint32_t old_next = 0;
	bool incremental;

	st = imap_pool_get(ib->pool, &s, error_r);
	if (st != BACKEND_OK)
		return st;
	st = examine_state(s, folder, state_r, error_r);
	if (st != BACKEND_OK)
		goto out_put;
	incremental = known_state && known_state->uidvalidity ==
		state_r->uidvalidity && known_state->uidnext > 0 &&
		state_r->uidnext > 0;
	if (incremental)
		old_next = known_state->uidnext;

	if (state_r->exists == 0) {
		/* Empty: nothing to fetch. */
	} else if (!incremental) {
		st = fetch_metadata(s, folder, 1, 0, 1, &msgs, &n, error_r);
	} else if (state_r->uidnext == old_next && state_r->highestmodseq &&
		   state_r->highestmodseq == known_state->highestmodseq &&
		   state_r->exists == n_known) {
		/* Nothing changed at all: one round trip. */
		msgs = calloc(n_known + 1, sizeof(*msgs));
		if (!msgs)
			st = BACKEND_TEMP, *error_r = "out of memory";
		for (size_t i = 0; msgs && i < n_known; i++) {
			if (message_copy(&msgs[n], &known[i]) < 0) {
				st = BACKEND_TEMP, *error_r = "out of memory";
				break;
			}
			n++;
		}
	} else {
		/* New messages in full ("N:*" also returns the last message
		 * when N is past it, hence the uid filter). */
		if (state_r->uidnext > old_next)
			st = fetch_metadata(s, folder, old_next, 0, old_next,
				&msgs, &n, error_r);
		n_new = n;
		/* Flags of the known ones.  With CONDSTORE only the changed
		 * ones come back, which says nothing about expunges: trust it
		 * only when the counts add up. */
		bool changed_only = s->caps.condstore &&
			known_state->highestmodseq && state_r->highestmodseq &&
			n_known + n_new == state_r->exists;
		if (st == BACKEND_OK && old_next > 1 && n_known > 0 &&
		    !(changed_only && state_r->highestmodseq ==
		      known_state->highestmodseq))
			st = fetch_flags(s, folder, 1, old_next - 1,
				changed_only ? known_state->highestmodseq : 0,
				&uf, &n_uf, error_r);
		if (st == BACKEND_OK) {
			struct backend_message *grown = realloc(msgs,
				(n + n_known + 1) * sizeof(*msgs));

			if (!grown) {
				st = BACKEND_TEMP, *error_r = "out of memory";
			} else {
				msgs = grown;
				if (n_uf)
					qsort(uf, n_uf, sizeof(*uf),
						compare_uid_flags);
			}
			for (size_t i = 0; st == BACKEND_OK && i < n_known; i++) {
				struct uid_flags key = { .uid = known[i].uid };
				struct uid_flags *hit = n_uf ? bsearch(&key, uf,
					n_uf, sizeof(*uf),
					compare_uid_flags) : NULL;

				if (!hit && !changed_only)
					continue;   /* expunged */
				if (message_copy(&msgs[n], &known[i]) < 0) {
					st = BACKEND_TEMP, *error_r = "out of memory";
					break;
				}
				if (hit) {
					free(msgs[n].flags);
					msgs[n].flags = hit->flags;
					hit->flags = NULL;
				}
				n++;
			}
		}
	}
	uid_flags_free(uf, n_uf);
	if (st != BACKEND_OK) {
		backend_messages_free(&msgs, n);
		goto out_put;
	}
	if (!msgs)
		msgs = calloc(1, sizeof(*msgs));
	if (msgs) {
		size_t repeats;
		uint32_t first;

		n = backend_messages_normalize(msgs, n, &repeats, &first);
		if (repeats) {
			log_warn("server error: %s lists UID %u (and %zu more) "
				"twice; ignoring the repeats", folder, first,
				repeats - 1);
			/* A listing the server contradicted cannot anchor
			 * an incremental resync: list in full next time. */
			state_r->uidnext = 0;
		}
	}
	*msgs_r = msgs;
	*count_r = n;
out_put:
	imap_pool_put(ib->pool, &s);
	return st;
}

static enum backend_status imap_list_messages(struct backend *be,
	const char *folder, struct backend_folder_state *state_r,
	struct backend_message **msgs_r, size_t *count_r,
	const char **error_r)
{
	return imap_resync_messages(be, folder, NULL, NULL, 0, state_r,
		msgs_r, count_r, error_r);
}

/* Message bodies are streamed from libetpan's parser into a bounded sink
 * instead of letting it allocate whatever size a literal announces: a
 * hostile or broken server cannot make us allocate gigabytes.  Each body
 * of the answer becomes one part holding the bytes [offset, offset+cap)
 * of that message; the sink gives up (the session is then dropped) once a
 * body runs far past what we asked.  Parts are matched to their FETCH
 * responses afterwards, in order (libetpan adds the responses, without
 * their bodies, to the result list as usual). */
#define BODY_SLACK (64u * 1024 * 1024)

struct body_part {
	size_t off, len;        /* in the sink's pool */
	bool bad_origin;
};

struct body_sink {
	uint64_t offset;        /* the first byte asked for */
	size_t cap;             /* bytes kept per body */
	size_t max_parts;
	char *pool;             /* max_parts * cap bytes */
	struct body_part *parts;
	size_t n_parts;
	const void *cur;        /* the body section being received */
	uint64_t seen, skip;
	bool overflow;
};

static int sink_init(struct body_sink *bs, uint64_t offset, size_t cap,
	size_t max_parts)
{
	memset(bs, 0, sizeof(*bs));
	bs->offset = offset;
	bs->cap = cap;
	bs->max_parts = max_parts;
	bs->pool = malloc(cap * max_parts + 1);
	bs->parts = calloc(max_parts + 1, sizeof(*bs->parts));
	return bs->pool && bs->parts ? 0 : -1;
}

static void sink_free(struct body_sink *bs)
{
	free(bs->pool);
	free(bs->parts);
}

static bool sink_body(int att_type, struct mailimap_msg_att_body_section *sec,
	const char *bytes, size_t len, void *ctx)
{
	struct body_sink *bs = ctx;
	struct body_part *p;
	size_t take;

	if (sec != bs->cur || bs->n_parts == 0) {
		uint64_t origin = sec ? sec->sec_origin_octet : 0;

		if (bs->n_parts == bs->max_parts) {
			bs->overflow = true;   /* more bodies than asked for */
			return false;
		}
		p = &bs->parts[bs->n_parts];
		p->off = bs->n_parts * bs->cap;
		p->len = 0;
		bs->n_parts++;
		bs->cur = sec;
		bs->seen = 0;
		/* libetpan keeps an origin in 32 bits: past 4 GiB the
		 * server's echo of ours arrives cut to them (a whole
		 * message that large cannot come, literals are capped). */
		if (origin == bs->offset || (bs->offset > UINT32_MAX &&
		    origin == (uint32_t)bs->offset))
			bs->skip = 0;
		else if (origin == 0 && bs->offset <= UINT32_MAX)
			bs->skip = bs->offset;   /* the whole message came */
		else
			p->bad_origin = true;
	}
	p = &bs->parts[bs->n_parts - 1];
	bs->seen += len;
	if (bs->seen > bs->offset + bs->cap + BODY_SLACK) {
		bs->overflow = true;
		return false;   /* libetpan fails the command: never buffer on */
	}
	if (p->bad_origin)
		return true;
	if (bs->skip >= len) {
		bs->skip -= len;
		return true;
	}
	bytes += bs->skip;
	len -= bs->skip;
	bs->skip = 0;
	take = bs->cap - p->len < len ? bs->cap - p->len : len;
	memcpy(bs->pool + p->off + p->len, bytes, take);
	p->len += take;
	return true;
}

/* The UID of a FETCH response, and whether it carried a body. */
static uint32_t uid_of(const struct mailimap_msg_att *att, bool *has_body_r)
{
	uint32_t uid = 0;
	clistiter *it;

	*has_body_r = false;
	for (it = clist_begin(att->att_list); it; it = clist_next(it)) {
		struct mailimap_msg_att_item *item = clist_content(it);

		if (item->att_type != MAILIMAP_MSG_ATT_ITEM_STATIC)
			continue;
		if (item->att_data.att_static->att_type == MAILIMAP_MSG_ATT_UID)
			uid = item->att_data.att_static->att_data.att_uid;
		else if (item->att_data.att_static->att_type ==
			 MAILIMAP_MSG_ATT_BODY_SECTION)
			*has_body_r = true;
	}
	return uid;
}

/* Runs the fetch with the sink, then calls each(uid, part) for every
 * response that carried a body. */
static int fetch_into_sink(struct imap_session *s, struct mailimap_set *set,
	struct mailimap_fetch_type *ft, struct body_sink *bs,
	void (*each)(void *ctx, uint32_t uid, const struct body_part *p,
		const char *data),
	void *ctx)
{
	clist *result = NULL;
	clistiter *it;
	size_t k = 0;
	int r;

	mailimap_set_msg_body_handler(s->imap, sink_body, bs);
	r = imap_session_uid_fetch(s, set, ft, &result);
	mailimap_set_msg_body_handler(s->imap, NULL, NULL);
	if (r == MAILIMAP_NO_ERROR && result)
		for (it = clist_begin(result); it; it = clist_next(it)) {
			bool has_body;
			uint32_t uid = uid_of(clist_content(it), &has_body);

			if (!has_body)
				continue;   /* flag updates and the like */
			if (k < bs->n_parts && uid)
				each(ctx, uid, &bs->parts[k],
					bs->pool + bs->parts[k].off);
			k++;
		}
	if (result)
		mailimap_fetch_list_free(result);
	return r;
}

struct range_ctx {
	uint32_t want;
	void *buf;
	size_t got;
	bool found, bad_origin;
};

static void range_each(void *ctx, uint32_t uid, const struct body_part *p,
	const char *data)
{
	struct range_ctx *rc = ctx;

	if (uid != rc->want || rc->found)
		return;
	if (p->bad_origin) {
		rc->bad_origin = true;
		return;
	}
	memcpy(rc->buf, data, p->len);
	rc->got = p->len;
	rc->found = true;
}

/* BODY.PEEK[section]<offset.length> (the whole message when section is
 * NULL); takes section.  libetpan writes the numbers in 32 bits, so past
 * 4 GiB a whole-message item is sent as text (libetpan sends an
 * "extension" item as it is); a section that far in is not asked for. */
static struct mailimap_fetch_att *partial_att(
	struct mailimap_section *section, uint64_t offset, size_t length)
{
	char text[64];
	char *copy;

	if (offset <= UINT32_MAX && length <= UINT32_MAX)
		return mailimap_fetch_att_new_body_peek_section_partial(
			section ? section : mailimap_section_new(NULL),
			(uint32_t)offset, (uint32_t)length);
	if (section) {
		mailimap_section_free(section);
		return NULL;
	}
	snprintf(text, sizeof(text), "BODY.PEEK[]<%" PRIu64 ".%zu>", offset,
		length);
	copy = strdup(text);
	return copy ? mailimap_fetch_att_new_extension(copy) : NULL;
}

/* UID FETCH set (UID BODY.PEEK[section]<offset.length>) in folder (the
 * whole message when section is NULL; section is taken), each body
 * through a sink of max_parts parts, each(ctx, uid, part, data) for every
 * answer.  fresh: open the folder again even if the session has it open
 * (see read_fresh).  The one place the reads talk to the server. */
static enum backend_status fetch_bodies(struct imap_backend *ib,
	const char *folder, bool fresh, uint32_t uidvalidity,
	struct mailimap_set *set,
	struct mailimap_section *section, uint64_t offset, size_t length,
	size_t max_parts,
	void (*each)(void *ctx, uint32_t uid, const struct body_part *p,
		const char *data),
	void *ctx, const char **error_r)
{
	struct mailimap_fetch_type *ft;
	struct mailimap_fetch_att *att;
	struct imap_session *s;
	struct body_sink bs;
	enum backend_status st;
	int r;

	if (sink_init(&bs, offset, length, max_parts) < 0) {
		if (section)
			mailimap_section_free(section);
		sink_free(&bs);
		*error_r = "out of memory";
		return BACKEND_TEMP;
	}
	st = imap_pool_get(ib->pool, &s, error_r);
	if (st != BACKEND_OK)
		goto out_free;
	st = session_examine(s, folder, fresh, error_r);
	if (st != BACKEND_OK)
		goto out_put;
	if (s->selected_uidvalidity != uidvalidity) {
		st = BACKEND_NOT_FOUND;
		*error_r = errfmt("folder %s was recreated (UIDVALIDITY %u, "
			"expected %u)", folder, s->selected_uidvalidity,
			uidvalidity);
		goto out_put;
	}
	if (section && (offset > UINT32_MAX || length > UINT32_MAX)) {
		st = BACKEND_UNSUPPORTED;
		*error_r = "a part more than 4 GiB into a message";
		goto out_put;
	}
	att = partial_att(section, offset, length);
	section = NULL;	/* partial_att took it */
	if (!att) {
		st = BACKEND_TEMP;
		*error_r = "out of memory";
		goto out_put;
	}
	ft = mailimap_fetch_type_new_fetch_att_list_empty();
	mailimap_fetch_type_new_fetch_att_list_add(ft,
		mailimap_fetch_att_new_uid());
	mailimap_fetch_type_new_fetch_att_list_add(ft, att);
	r = fetch_into_sink(s, set, ft, &bs, each, ctx);
	mailimap_fetch_type_free(ft);
	if (bs.overflow) {
		imap_session_set_state(s, IMAP_BROKEN);
		st = BACKEND_PROTOCOL;
		*error_r = errfmt("%s: the server sent far more than the %zu "
			"bytes asked for", folder, length);
	} else if (r != MAILIMAP_NO_ERROR) {
		st = command_failed(s, r, "UID FETCH BODY.PEEK in", folder,
			error_r);
	}
out_put:
	imap_pool_put(ib->pool, &s);
out_free:
	if (section)
		mailimap_section_free(section);
	sink_free(&bs);
	return st;
}

/* Reads a range of the whole message (section NULL) or of one section;
 * takes section. */
static enum backend_status read_one(struct backend *be, const char *folder,
	bool fresh, uint32_t uidvalidity, uint32_t uid,
	struct mailimap_section *section,
	uint64_t offset, size_t length, void *buf, size_t *got_r,
	const char **error_r)
{
	struct range_ctx rc = { .want = uid, .buf = buf };
	struct mailimap_set *set = mailimap_set_new_single(uid);
	enum backend_status st;

	/* A few parts: unsolicited answers may carry bodies too. */
	st = fetch_bodies(to_imap(be), folder, fresh, uidvalidity, set, section,
		offset, length, 4, range_each, &rc, error_r);
	mailimap_set_free(set);
	if (st != BACKEND_OK)
		return st;
	if (!rc.found) {
		*error_r = rc.bad_origin ?
			errfmt("UID %u in %s: the server answered another range",
				uid, folder) :
			errfmt("message UID %u is gone from %s", uid, folder);
		return rc.bad_origin ? BACKEND_PROTOCOL : BACKEND_NOT_FOUND;
	}
	*got_r = rc.got;
	return BACKEND_OK;
}

/* A session that has a folder open sees a message another session added
 * only once the server has told it (at its next command's end): a UID
 * it has not heard of yet reads as gone.  So "gone" is believed only
 * from a session that opened the folder afresh; true (try again) once. */
static bool read_fresh(enum backend_status st, bool *fresh)
{
	if (st != BACKEND_NOT_FOUND || *fresh)
		return false;
	*fresh = true;
	return true;
}

/* A read the server refused to slow the account down is tried again
 * after the pause (imap_pool_get waits for it, within the timeout), this
 * many times at most. */
#define THROTTLED_TRIES 3

static bool again_after_pause(struct imap_backend *ib,
	enum backend_status st, unsigned *tries)
{
	return st == BACKEND_TEMP && ++*tries < THROTTLED_TRIES &&
		imap_pool_paused(ib->pool);
}

static enum backend_status imap_read_range(struct backend *be,
	const char *folder, uint32_t uidvalidity, uint32_t uid,
	uint64_t offset, size_t length, void *buf, size_t *got_r,
	const char **error_r)
{
	enum backend_status st;
	unsigned tries = 0;
	bool fresh = false;

	do
		st = read_one(be, folder, fresh, uidvalidity, uid, NULL,
			offset, length, buf, got_r, error_r);
	while (read_fresh(st, &fresh) ||
	       again_after_pause(to_imap(be), st, &tries));
	return st;
}

struct heads_ctx {
	void (*got)(void *ctx, uint32_t uid, const void *data, size_t len);
	void *ctx;
};

static void heads_each(void *ctx, uint32_t uid, const struct body_part *p,
	const char *data)
{
	struct heads_ctx *hc = ctx;

	if (!p->bad_origin)
		hc->got(hc->ctx, uid, data, p->len);
}

static enum backend_status imap_read_heads(struct backend *be,
	const char *folder, uint32_t uidvalidity, const uint32_t *uids,
	size_t n_uids, size_t length,
	void (*got)(void *ctx, uint32_t uid, const void *data, size_t len),
	void *ctx, const char **error_r)
{
	struct heads_ctx hc = { got, ctx };
	struct mailimap_set *set = mailimap_set_new_empty();
	enum backend_status st;

	for (size_t i = 0; i < n_uids; i++)
		mailimap_set_add_single(set, uids[i]);
	st = fetch_bodies(to_imap(be), folder, false, uidvalidity, set, NULL, 0,
		length, n_uids + 2, heads_each, &hc, error_r);
	mailimap_set_free(set);
	return st;
}

/* ---- parts ----------------------------------------------------------- */

/* The libetpan section for "1.2", "1.2.HEADER", "HEADER" or "TEXT"; NULL
 * when the text is none of these (or out of memory). */
static struct mailimap_section *section_of(const char *sec)
{
	clist *ids = clist_new();
	const char *p = sec;
	enum { BODY, HEADER, TEXT } what = BODY;

	if (!ids)
		return NULL;
	while (*p >= '1' && *p <= '9') {
		char *end;
		unsigned long v = strtoul(p, &end, 10);
		uint32_t *id = malloc(sizeof(*id));

		if (!id || v > UINT32_MAX || clist_append(ids, id) < 0) {
			free(id);
			goto fail;
		}
		*id = (uint32_t)v;
		p = end;
		if (*p != '.')
			break;
		p++;
	}
	if (strcmp(p, "HEADER") == 0)
		what = HEADER;
	else if (strcmp(p, "TEXT") == 0)
		what = TEXT;
	else if (*p != '\0' || clist_isempty(ids))
		goto fail;
	if (clist_isempty(ids)) {
		clist_free(ids);
		return what == HEADER ? mailimap_section_new_header() :
			mailimap_section_new_text();
	}
	struct mailimap_section_part *part = mailimap_section_part_new(ids);

	if (!part)
		goto fail;
	return what == HEADER ? mailimap_section_new_part_header(part) :
		what == TEXT ? mailimap_section_new_part_text(part) :
		mailimap_section_new_part(part);
fail:
	for (clistiter *it = clist_begin(ids); it; it = clist_next(it))
		free(clist_content(it));
	clist_free(ids);
	return NULL;
}

static enum backend_status imap_read_section(struct backend *be,
	const char *folder, uint32_t uidvalidity, uint32_t uid,
	const char *section, uint64_t offset, size_t length, void *buf,
	size_t *got_r, const char **error_r)
{
	enum backend_status st;
	unsigned tries = 0;
	bool fresh = false;

	do {
		struct mailimap_section *sec = section_of(section);

		if (!sec) {
			*error_r = errfmt("cannot ask for section \"%s\"",
				section);
			return BACKEND_INVALID;
		}
		st = read_one(be, folder, fresh, uidvalidity, uid, sec,
			offset, length, buf, got_r, error_r);
	} while (read_fresh(st, &fresh) ||
		 again_after_pause(to_imap(be), st, &tries));
	return st;
}

/* The BODYSTRUCTURE of the response for uid among result, or NULL. */
static struct mailimap_body *bodystructure_of(clist *result, uint32_t uid)
{
	for (clistiter *it = result ? clist_begin(result) : NULL; it;
	     it = clist_next(it)) {
		struct mailimap_msg_att *att = clist_content(it);
		struct mailimap_body *body = NULL;
		uint32_t got = 0;

		for (clistiter *j = clist_begin(att->att_list); j;
		     j = clist_next(j)) {
			struct mailimap_msg_att_item *item = clist_content(j);

			if (item->att_type != MAILIMAP_MSG_ATT_ITEM_STATIC)
				continue;
			if (item->att_data.att_static->att_type ==
			    MAILIMAP_MSG_ATT_UID)
				got = item->att_data.att_static->att_data.att_uid;
			else if (item->att_data.att_static->att_type ==
				 MAILIMAP_MSG_ATT_BODYSTRUCTURE)
				body = item->att_data.att_static->att_data.
					att_bodystructure;
		}
		if (got == uid && body)
			return body;
	}
	return NULL;
}

static enum backend_status imap_fetch_parts(struct backend *be,
	const char *folder, uint32_t uidvalidity, uint32_t uid,
	struct mime_tree **tree_r, const char **error_r)
{
	struct imap_backend *ib = to_imap(be);
	struct mailimap_fetch_type *ft;
	struct mailimap_set *set;
	struct mailimap_body *body;
	struct imap_session *s;
	clist *result = NULL;
	enum backend_status st;
	int r;

	*tree_r = NULL;
	st = imap_pool_get(ib->pool, &s, error_r);
	if (st != BACKEND_OK)
		return st;
	st = session_examine(s, folder, false, error_r);
	if (st != BACKEND_OK)
		goto out;
	if (s->selected_uidvalidity != uidvalidity) {
		st = BACKEND_NOT_FOUND;
		*error_r = errfmt("folder %s was recreated (UIDVALIDITY %u, "
			"expected %u)", folder, s->selected_uidvalidity,
			uidvalidity);
		goto out;
	}
	ft = mailimap_fetch_type_new_fetch_att_list_empty();
	mailimap_fetch_type_new_fetch_att_list_add(ft,
		mailimap_fetch_att_new_uid());
	mailimap_fetch_type_new_fetch_att_list_add(ft,
		mailimap_fetch_att_new_bodystructure());
	set = mailimap_set_new_single(uid);
	r = mailimap_uid_fetch(s->imap, set, ft, &result);
	mailimap_set_free(set);
	mailimap_fetch_type_free(ft);
	if (r != MAILIMAP_NO_ERROR) {
		st = command_failed(s, r, "UID FETCH BODYSTRUCTURE in", folder,
			error_r);
		goto out;
	}
	body = bodystructure_of(result, uid);
	if (!body) {
		st = BACKEND_NOT_FOUND;
		*error_r = errfmt("message UID %u is gone from %s", uid, folder);
	} else if (!(*tree_r = mime_tree_from_bodystructure(body))) {
		st = BACKEND_TEMP;
		*error_r = "out of memory";
	}
out:
	if (result)
		mailimap_fetch_list_free(result);
	imap_pool_put(ib->pool, &s);
	return st;
}

/* ---- the write half ------------------------------------------------------ */

/* Opens `folder` read-write (reading with BODY.PEEK still never sets
 * \Seen), checks it is still the folder the caller knows, and lets the
 * session hear of uid. */
static enum backend_status session_select_rw(struct imap_session *s,
	const char *folder, uint32_t uidvalidity, uint32_t uid,
	const char **error_r)
{
	int r = imap_session_select(s, folder, true, false, NULL);

	if (r != MAILIMAP_NO_ERROR)
		return command_failed(s, r, "SELECT", folder, error_r);
	if (uidvalidity && s->selected_uidvalidity != uidvalidity) {
		*error_r = errfmt("folder %s was recreated on the server",
			folder);
		return BACKEND_NOT_FOUND;
	}
	/* Else a message another session just added or moved here would
	 * be left untouched, and the command still answer OK. */
	r = imap_session_know_uid(s, uid);
	if (r != MAILIMAP_NO_ERROR)
		return command_failed(s, r, "NOOP in", folder, error_r);
	return BACKEND_OK;
}

/* An IMAP atom may carry these; anything else is refused rather than
 * sent (RFC 3501 atom-specials, plus controls and 8-bit). */
static bool flag_atom_ok(const char *f, size_t len)
{
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)f[i];

		if (c <= 0x20 || c >= 0x7f || strchr("(){%*\"]", c) ||
		    (c == '\\' && i > 0))
			return false;
	}
	return true;
}

/* Parses "\\Seen \\Flagged $Label" into a libetpan flag list; \Recent is
 * dropped (the server owns it).  NULL with *error_r on a bad flag. */
static struct mailimap_flag_list *parse_flag_list(const char *flags,
	const char **error_r)
{
	struct mailimap_flag_list *fl = mailimap_flag_list_new_empty();
	const char *p = flags ? flags : "";

	while (fl && *p) {
		size_t len;
		struct mailimap_flag *f = NULL;

		p += strspn(p, " \t\r\n");
		len = strcspn(p, " \t\r\n");
		if (!len)
			break;
		if (!flag_atom_ok(p, len)) {
			*error_r = errfmt("invalid flag '%.*s'", (int)len, p);
			mailimap_flag_list_free(fl);
			return NULL;
		}
		if (p[0] == '\\') {
			static const struct {
				const char *name;
				struct mailimap_flag *(*make)(void);
			} sys[] = {
				{ "\\Seen", mailimap_flag_new_seen },
				{ "\\Answered", mailimap_flag_new_answered },
				{ "\\Flagged", mailimap_flag_new_flagged },
				{ "\\Deleted", mailimap_flag_new_deleted },
				{ "\\Draft", mailimap_flag_new_draft },
			};
			for (size_t i = 0; i < sizeof(sys) / sizeof(*sys); i++)
				if (strlen(sys[i].name) == len &&
				    strncasecmp(sys[i].name, p, len) == 0)
					f = sys[i].make();
			if (!f && !(len == 7 && strncasecmp(p, "\\Recent", 7) == 0))
				f = mailimap_flag_new_flag_extension(
					strndup(p + 1, len - 1));
		} else {
			f = mailimap_flag_new_flag_keyword(strndup(p, len));
		}
		if (f)
			mailimap_flag_list_add(fl, f);
		p += len;
	}
	if (!fl)
		*error_r = "out of memory";
	return fl;
}

static enum backend_status store_deleted(struct imap_session *s,
	uint32_t uid, bool on, const char *folder, const char **error_r)
{
	struct mailimap_flag_list *fl = mailimap_flag_list_new_empty();
	struct mailimap_store_att_flags *att;
	struct mailimap_set *set = mailimap_set_new_single(uid);
	int r;

	mailimap_flag_list_add(fl, mailimap_flag_new_deleted());
	att = on ? mailimap_store_att_flags_new_add_flags_silent(fl) :
		mailimap_store_att_flags_new_remove_flags_silent(fl);
	r = mailimap_uid_store(s->imap, set, att);
	mailimap_store_att_flags_free(att);
	mailimap_set_free(set);
	if (r != MAILIMAP_NO_ERROR)
		return command_failed(s, r, "UID STORE in", folder, error_r);
	return BACKEND_OK;
}

/* Whether the last command's answer removed a message from the selected
 * folder.  UID STORE, UID EXPUNGE and UID MOVE answer OK for a UID that
 * is gone (another client expunged it): its EXPUNGE responses tell. */
static enum backend_status check_removed(struct imap_session *s,
	const char **error_r)
{
	struct mailimap_response_info *info = s->imap->imap_response_info;

	if (info && info->rsp_expunged && !clist_isempty(info->rsp_expunged))
		return BACKEND_OK;
	*error_r = "no such message on the server (removed meanwhile)";
	return BACKEND_NOT_FOUND;
}

/* \Deleted + UID EXPUNGE of exactly one UID; undoes the flag when the
 * expunge fails so nothing is left half-deleted. */
static enum backend_status expunge_one(struct imap_session *s,
	const char *folder, uint32_t uid, const char **error_r)
{
	struct mailimap_set *set;
	enum backend_status st;
	const char *ignored;
	int r;

	st = store_deleted(s, uid, true, folder, error_r);
	if (st != BACKEND_OK)
		return st;
	set = mailimap_set_new_single(uid);
	r = mailimap_uid_expunge(s->imap, set);
	mailimap_set_free(set);
	if (r != MAILIMAP_NO_ERROR) {
		st = command_failed(s, r, "UID EXPUNGE in", folder, error_r);
		if (!imap_session_broken(s))
			store_deleted(s, uid, false, folder, &ignored);
	} else {
		st = check_removed(s, error_r);
	}
	return st;
}

static uint32_t first_uid_of(struct mailimap_set *set)
{
	clistiter *it;

	if (!set)
		return 0;
	it = clist_begin(set->set_list);
	if (!it)
		return 0;
	return ((struct mailimap_set_item *)clist_content(it))->set_first;
}

/* UID MOVE, or with only UIDPLUS: UID COPY + \Deleted + UID EXPUNGE. */
static enum backend_status move_one(struct imap_session *s, const char *from,
	uint32_t uid, const char *to, uint32_t *new_uid_r,
	const char **error_r)
{
	struct mailimap_set *set = mailimap_set_new_single(uid);
	struct mailimap_set *src = NULL, *dst = NULL;
	enum backend_status st = BACKEND_OK;
	uint32_t validity = 0;
	int r;

	*new_uid_r = 0;
	if (s->caps.move) {
		if (s->caps.uidplus)
			r = mailimap_uidplus_uid_move(s->imap, set, to,
				&validity, &src, &dst);
		else
			r = mailimap_uid_move(s->imap, set, to);
		if (r != MAILIMAP_NO_ERROR)
			st = command_failed(s, r, "UID MOVE to", to, error_r);
		else
			st = check_removed(s, error_r);
	} else if (s->caps.uidplus) {
		r = mailimap_uidplus_uid_copy(s->imap, set, to, &validity,
			&src, &dst);
		if (r != MAILIMAP_NO_ERROR)
			st = command_failed(s, r, "UID COPY to", to, error_r);
		else
			st = expunge_one(s, from, uid, error_r);
	} else {
		st = BACKEND_UNSUPPORTED;
		*error_r = "the server offers neither MOVE nor UIDPLUS: "
			"refusing to move (a plain EXPUNGE could remove other "
			"messages)";
	}
	if (st == BACKEND_OK)
		*new_uid_r = first_uid_of(dst);
	mailimap_set_free(set);
	if (src)
		mailimap_set_free(src);
	if (dst)
		mailimap_set_free(dst);
	return st;
}

/* The \Trash folder when `folder` is a virtual one (a malloc'd raw
 * name), else NULL.  Lists the folders first when no LIST was seen yet. */
static char *virtual_trash(struct imap_backend *ib, struct imap_session *s,
	const char *folder)
{
	char *out = NULL;
	bool known;

	pthread_mutex_lock(&ib->uses_lock);
	known = ib->uses_known;
	pthread_mutex_unlock(&ib->uses_lock);
	if (!known) {
		clist *list = NULL;

		if (imap_session_list(s, "", "*", &list) != MAILIMAP_NO_ERROR)
			return NULL;
		remember_special_uses(ib, list);
		mailimap_list_result_free(list);
	}
	pthread_mutex_lock(&ib->uses_lock);
	for (size_t i = 0; ib->trash_folder && i < ib->n_virtual; i++)
		if (strcmp(ib->virtual_folders[i], folder) == 0) {
			out = strdup(ib->trash_folder);
			break;
		}
	pthread_mutex_unlock(&ib->uses_lock);
	return out;
}

static enum backend_status imap_expunge(struct backend *be,
	const char *folder, uint32_t uidvalidity, uint32_t uid,
	const char *trash, const char **error_r)
{
	struct imap_backend *ib = to_imap(be);
	struct imap_session *s;
	enum backend_status st;
	uint32_t new_uid;
	char *to_trash = NULL;

	st = imap_pool_get(ib->pool, &s, error_r);
	if (st != BACKEND_OK)
		return st;
	/* In a virtual folder rm goes to the trash= folder, else \Trash. */
	if (!trash || strcmp(trash, folder) == 0)
		trash = to_trash = virtual_trash(ib, s, folder);
	st = session_select_rw(s, folder, uidvalidity, uid, error_r);
	if (st != BACKEND_OK)
		goto out_put;
	if (trash && strcmp(trash, folder) != 0) {
		st = move_one(s, folder, uid, trash, &new_uid, error_r);
	} else if (s->caps.uidplus) {
		st = expunge_one(s, folder, uid, error_r);
	} else {
		st = BACKEND_UNSUPPORTED;
		*error_r = "the server offers no UIDPLUS: refusing to delete "
			"(a plain EXPUNGE would also remove messages others "
			"marked \\Deleted); use -o trash=FOLDER";
	}
out_put:
	imap_pool_put(ib->pool, &s);
	free(to_trash);
	return st;
}

static enum backend_status imap_move(struct backend *be, const char *from,
	uint32_t uidvalidity, uint32_t uid, const char *to,
	uint32_t *new_uid_r, const char **error_r)
{
	struct imap_backend *ib = to_imap(be);
	struct imap_session *s;
	enum backend_status st;

	st = imap_pool_get(ib->pool, &s, error_r);
	if (st != BACKEND_OK)
		return st;
	st = session_select_rw(s, from, uidvalidity, uid, error_r);
	if (st == BACKEND_OK)
		st = move_one(s, from, uid, to, new_uid_r, error_r);
	imap_pool_put(ib->pool, &s);
	return st;
}

/* LITERAL- (RFC 7888) allows non-synchronizing literals up to this size. */
#define LITERAL_MINUS_MAX 4096

/* Writes a mailbox name as libetpan's mailimap_mailbox_send() does: an
 * atom when it is ASCII letters, digits and '-' only, else a quoted
 * string.  False for a name no command can carry. */
static bool put_mailbox(FILE *f, const char *name)
{
	const char *p;
	bool atom = name[0] != '\0';

	if (!backend_raw_name_sendable(name))
		return false;
	for (p = name; *p; p++) {
		unsigned char c = (unsigned char)*p;

		if (!(c == '-' || (c >= '0' && c <= '9') ||
		      ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')))
			atom = false;
	}
	if (atom) {
		fputs(name, f);
		return true;
	}
	fputc('"', f);
	for (p = name; *p; p++) {
		if (*p == '"' || *p == '\\')
			fputc('\\', f);
		fputc(*p, f);
	}
	fputc('"', f);
	return true;
}

/* Writes a flag list as libetpan's flag-list sender does. */
static void put_flag_list(FILE *f, const struct mailimap_flag_list *fl)
{
	static const char *const sys[] = {
		[MAILIMAP_FLAG_ANSWERED] = "\\Answered",
		[MAILIMAP_FLAG_FLAGGED] = "\\Flagged",
		[MAILIMAP_FLAG_DELETED] = "\\Deleted",
		[MAILIMAP_FLAG_SEEN] = "\\Seen",
		[MAILIMAP_FLAG_DRAFT] = "\\Draft",
	};
	const char *sep = "";
	clistiter *it;

	fputc('(', f);
	for (it = fl->fl_list ? clist_begin(fl->fl_list) : NULL; it;
	     it = clist_next(it)) {
		const struct mailimap_flag *flag = clist_content(it);

		if (flag->fl_type == MAILIMAP_FLAG_KEYWORD)
			fprintf(f, "%s%s", sep, flag->fl_data.fl_keyword);
		else if (flag->fl_type == MAILIMAP_FLAG_EXTENSION)
			fprintf(f, "%s\\%s", sep, flag->fl_data.fl_extension);
		else if ((size_t)flag->fl_type < sizeof(sys) / sizeof(*sys) &&
			 sys[flag->fl_type])
			fprintf(f, "%s%s", sep, sys[flag->fl_type]);
		else
			continue;
		sep = " ";
	}
	fputc(')', f);
}

/* The APPEND command after the tag, as mailimap_append() formats it:
 * mailbox, flag list, INTERNALDATE in UTC unless internaldate < 0, and
 * the literal's size, "{size}" or non-synchronizing "{size+}", with its
 * CRLF.  A date gmtime() cannot give a four-digit year for is left out
 * (libetpan would send a wrong year).  Returns NULL with *error_r set;
 * the caller frees. */
static char *append_command(const char *folder,
	const struct mailimap_flag_list *fl, int64_t internaldate,
	size_t size, bool nonsync, const char **error_r)
{
	static const char *const months[] = { "Jan", "Feb", "Mar", "Apr",
		"May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	char *cmd = NULL;
	size_t cmd_len;
	FILE *f = open_memstream(&cmd, &cmd_len);
	bool ok;

	if (!f) {
		*error_r = "out of memory";
		return NULL;
	}
	fputs("APPEND ", f);
	ok = put_mailbox(f, folder);
	fputc(' ', f);
	put_flag_list(f, fl);
	if (internaldate >= 0) {
		time_t t = (time_t)internaldate;
		struct tm tm;

		if (gmtime_r(&t, &tm) && tm.tm_year + 1900 <= 9999)
			fprintf(f, " \"%2d-%s-%04d %02d:%02d:%02d +0000\"",
				tm.tm_mday, months[tm.tm_mon],
				tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
				tm.tm_sec);
	}
	fprintf(f, " {%zu%s}\r\n", size, nonsync ? "+" : "");
	if (fclose(f) != 0 || !cmd) {
		free(cmd);
		*error_r = "out of memory";
		return NULL;
	}
	if (!ok) {
		free(cmd);
		*error_r = errfmt("folder name %s cannot be sent", folder);
		return NULL;
	}
	return cmd;
}

/* The UID the APPENDUID code (RFC 4315) of the last answer gives, or 0;
 * as mailimap_uidplus_append() finds it. */
static uint32_t appended_uid(mailimap *imap)
{
	struct mailimap_response_info *info = imap->imap_response_info;
	clistiter *it;

	if (!info || !info->rsp_extension_list)
		return 0;
	for (it = clist_begin(info->rsp_extension_list); it;
	     it = clist_next(it)) {
		struct mailimap_extension_data *ext = clist_content(it);
		struct mailimap_uidplus_resp_code_apnd *apnd;

		if (ext->ext_extension != &mailimap_extension_uidplus ||
		    ext->ext_type != MAILIMAP_UIDPLUS_RESP_CODE_APND)
			continue;
		apnd = ext->ext_data;
		return first_uid_of(apnd->uid_set);
	}
	return 0;
}

/* Reads the tagged answer whose first line is next in the stream;
 * MAILIMAP_NO_ERROR for OK, `refused` for NO. */
static int read_tagged(mailimap *imap, int refused)
{
	struct mailimap_response *resp;
	int r, cond;

	if (mailimap_read_line(imap) == NULL)
		return MAILIMAP_ERROR_STREAM;
	r = mailimap_parse_response(imap, &resp);
	if (r != MAILIMAP_NO_ERROR)
		return r;
	cond = resp->rsp_resp_done->rsp_data.rsp_tagged->rsp_cond_state->rsp_type;
	mailimap_response_free(resp);
	return cond == MAILIMAP_RESP_COND_STATE_OK ? MAILIMAP_NO_ERROR : refused;
}

/* APPEND by hand, the same command mailimap_append() sends, but without
 * letting libetpan parse the continuation request (see
 * imap_session_continuation).  With LITERAL+, or LITERAL- and a small
 * message, the literal goes along at once and no continuation comes. */
static enum backend_status append_message(struct imap_session *s,
	const char *folder, const struct mailimap_flag_list *fl,
	int64_t internaldate, const void *data, size_t len,
	uint32_t *new_uid_r, const char **error_r)
{
	mailimap *imap = s->imap;
	mailstream *stream = imap->imap_stream;
	/* Bare LFs go out as CRLF, as mailimap_append() sends them. */
	size_t size = mailstream_get_data_crlf_size(data, len);
	bool nonsync = s->caps.literal_plus ||
		(s->caps.literal_minus && size <= LITERAL_MINUS_MAX);
	bool go = true;
	enum backend_status st;
	size_t cmd_len;
	char *cmd;
	int r;

	if (size > UINT32_MAX) {
		*error_r = "message too large for IMAP";
		return BACKEND_INVALID;
	}
	if (imap->imap_state != MAILIMAP_STATE_AUTHENTICATED &&
	    imap->imap_state != MAILIMAP_STATE_SELECTED)
		return command_failed(s, MAILIMAP_ERROR_BAD_STATE, "APPEND to",
			folder, error_r);
	cmd = append_command(folder, fl, internaldate, size, nonsync, error_r);
	if (!cmd)
		return BACKEND_INVALID;
	cmd_len = strlen(cmd);
	r = mailimap_send_current_tag(imap);
	if (r == MAILIMAP_NO_ERROR &&
	    mailstream_write(stream, cmd, cmd_len) != (ssize_t)cmd_len)
		r = MAILIMAP_ERROR_STREAM;
	free(cmd);
	if (r == MAILIMAP_NO_ERROR && !nonsync) {
		if (mailstream_flush(stream) == -1)
			return command_failed(s, MAILIMAP_ERROR_STREAM,
				"APPEND to", folder, error_r);
		st = imap_session_continuation(s, "APPEND", &go, NULL,
			error_r);
		if (st != BACKEND_OK) {
			*error_r = errfmt("APPEND to %s: %s: %s", folder,
				backend_status_name(st), *error_r);
			return st;
		}
	}
	if (r == MAILIMAP_NO_ERROR && go &&
	    (mailstream_send_data_crlf(stream, data, len, 0, NULL) == -1 ||
	     mailstream_write(stream, "\r\n", 2) != 2 ||
	     mailstream_flush(stream) == -1))
		r = MAILIMAP_ERROR_STREAM;
	if (r == MAILIMAP_NO_ERROR) {
		fault_point("append-sent");
		r = read_tagged(imap, MAILIMAP_ERROR_APPEND);
		/* Done without the message: no better than a NO. */
		if (r == MAILIMAP_NO_ERROR && !go)
			r = MAILIMAP_ERROR_APPEND;
	}
	if (r != MAILIMAP_NO_ERROR)
		return command_failed(s, r, "APPEND to", folder, error_r);
	if (s->caps.uidplus)
		*new_uid_r = appended_uid(imap);
	return BACKEND_OK;
}

static enum backend_status imap_append(struct backend *be,
	const char *folder, const void *data, size_t len, const char *flags,
	int64_t internaldate, uint32_t *new_uid_r, const char **error_r)
{
	struct imap_backend *ib = to_imap(be);
	struct mailimap_flag_list *fl;
	struct imap_session *s;
	enum backend_status st;

	*new_uid_r = 0;
	fl = parse_flag_list(flags, error_r);
	if (!fl)
		return BACKEND_INVALID;
	st = imap_pool_get(ib->pool, &s, error_r);
	if (st == BACKEND_OK) {
		st = append_message(s, folder, fl, internaldate, data, len,
			new_uid_r, error_r);
		imap_pool_put(ib->pool, &s);
	}
	mailimap_flag_list_free(fl);
	return st;
}

/* Whether the server's copy, handed over in pieces, matches data as
 * append_message() sends it: CRLF, a bare CR and a bare LF all go out as
 * CRLF.  pos and lf_due carry the place in data from piece to piece. */
struct crlf_cmp {
	const char *data;
	size_t len, pos;
	bool lf_due;      /* a CR went out for a line end: LF comes next */
};

static bool crlf_matches(struct crlf_cmp *c, const char *got, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char want;

		if (c->lf_due) {
			want = '\n';
			c->lf_due = false;
		} else if (c->pos >= c->len) {
			return false;
		} else {
			char d = c->data[c->pos++];

			if (d == '\r' || d == '\n') {
				if (d == '\r' && c->pos < c->len &&
				    c->data[c->pos] == '\n')
					c->pos++;
				want = '\r';
				c->lf_due = true;
			} else {
				want = d;
			}
		}
		if (got[i] != want)
			return false;
	}
	return true;
}

/* Compares message uid with data, a block at a time. */
static enum backend_status same_bytes(struct backend *be, const char *folder,
	uint32_t uidvalidity, uint32_t uid, const void *data, size_t len,
	size_t size, bool *same_r, const char **error_r)
{
	enum { BLOCK = 1024 * 1024 };
	struct crlf_cmp c = { .data = data, .len = len };
	char *buf = malloc(BLOCK);
	enum backend_status st = BACKEND_OK;
	uint64_t off = 0;

	*same_r = false;
	if (!buf) {
		*error_r = "out of memory";
		return BACKEND_TEMP;
	}
	for (;;) {
		size_t got = 0;

		st = imap_read_range(be, folder, uidvalidity, uid, off, BLOCK,
			buf, &got, error_r);
		if (st == BACKEND_NOT_FOUND)
			st = BACKEND_OK;   /* gone since: not ours to find */
		if (st != BACKEND_OK || !crlf_matches(&c, buf, got))
			break;
		off += got;
		if (got < BLOCK) {
			*same_r = off == size && c.pos == c.len && !c.lf_due;
			break;
		}
	}
	free(buf);
	return st;
}

static enum backend_status imap_find_appended(struct backend *be,
	const char *folder, const void *data, size_t len,
	uint32_t uidvalidity, uint32_t min_uid, uint32_t *uid_r,
	const char **error_r)
{
	struct imap_backend *ib = to_imap(be);
	size_t size = mailstream_get_data_crlf_size(data, len);
	struct mailimap_search_key *key, *k;
	uint32_t *uids = NULL, folder_uv = 0;
	size_t n = 0, cap = 0;
	struct imap_session *s;
	enum backend_status st;
	clist *result = NULL;
	clistiter *it;
	int r;

	*uid_r = 0;
	if (size > UINT32_MAX - 1)
		return BACKEND_OK;   /* append_message() never sends it */
	key = mailimap_search_key_new_multiple_empty();
	if (!key) {
		*error_r = "out of memory";
		return BACKEND_TEMP;
	}
	st = imap_pool_get(ib->pool, &s, error_r);
	if (st != BACKEND_OK) {
		mailimap_search_key_free(key);
		return st;
	}
	/* Again, even if selected: the APPEND came after that. */
	st = session_examine(s, folder, true, error_r);
	if (st == BACKEND_OK) {
		folder_uv = s->selected_uidvalidity;
		r = MAILIMAP_NO_ERROR;
		if (size > 0 &&
		    (!(k = mailimap_search_key_new_larger((uint32_t)size - 1)) ||
		     mailimap_search_key_multiple_add(key, k) !=
				MAILIMAP_NO_ERROR))
			r = MAILIMAP_ERROR_MEMORY;
		if (r == MAILIMAP_NO_ERROR &&
		    (!(k = mailimap_search_key_new_smaller((uint32_t)size + 1)) ||
		     mailimap_search_key_multiple_add(key, k) !=
				MAILIMAP_NO_ERROR))
			r = MAILIMAP_ERROR_MEMORY;
		if (r == MAILIMAP_NO_ERROR && uidvalidity == folder_uv &&
		    min_uid > 1) {
			struct mailimap_set *set =
				mailimap_set_new_interval(min_uid, 0);

			if (!set || !(k = mailimap_search_key_new_uid(set)) ||
			    mailimap_search_key_multiple_add(key, k) !=
					MAILIMAP_NO_ERROR)
				r = MAILIMAP_ERROR_MEMORY;
		}
		if (r == MAILIMAP_NO_ERROR)
			r = mailimap_uid_search(s->imap, NULL, key, &result);
		if (r != MAILIMAP_NO_ERROR)
			st = command_failed(s, r, "UID SEARCH in", folder,
				error_r);
	}
	imap_pool_put(ib->pool, &s);
	mailimap_search_key_free(key);
	for (it = result ? clist_begin(result) : NULL;
	     st == BACKEND_OK && it; it = clist_next(it)) {
		uint32_t uid = *(uint32_t *)clist_content(it);

		if (uidvalidity == folder_uv && uid < min_uid)
			continue;   /* "n:*" names the last UID even below n */
		if (n == cap) {
			uint32_t *nu = realloc(uids,
				(cap = cap ? 2 * cap : 4) * sizeof(*uids));

			if (!nu) {
				*error_r = "out of memory";
				st = BACKEND_TEMP;
				break;
			}
			uids = nu;
		}
		uids[n++] = uid;
	}
	if (result)
		mailimap_search_result_free(result);
	for (size_t i = 0; st == BACKEND_OK && i < n && !*uid_r; i++) {
		bool same;

		st = same_bytes(be, folder, folder_uv, uids[i], data, len, size,
			&same, error_r);
		if (st == BACKEND_OK && same)
			*uid_r = uids[i];
	}
	free(uids);
	return st;
}

/* UID SEARCH HEADER Message-ID: a substring match, which the '<' and '>'
 * around an id make exact. */
static enum backend_status imap_find_message_id(struct backend *be,
	const char *folder, const char *message_id, uint32_t *uid_r,
	const char **error_r)
{
	struct imap_backend *ib = to_imap(be);
	struct mailimap_search_key *key = NULL;
	char *field = strdup("Message-ID"), *value = strdup(message_id);
	struct imap_session *s;
	enum backend_status st;
	clist *result = NULL;
	clistiter *it;
	int r;

	*uid_r = 0;
	if (field && value)
		key = mailimap_search_key_new_header(field, value);
	if (!key) {
		free(field);
		free(value);
		*error_r = "out of memory";
		return BACKEND_TEMP;
	}
	st = imap_pool_get(ib->pool, &s, error_r);
	if (st != BACKEND_OK) {
		mailimap_search_key_free(key);
		return st;
	}
	/* Again, even if selected: the server may have filed it since. */
	st = session_examine(s, folder, true, error_r);
	if (st == BACKEND_OK) {
		r = mailimap_uid_search(s->imap, NULL, key, &result);
		if (r != MAILIMAP_NO_ERROR)
			st = command_failed(s, r, "UID SEARCH in", folder,
				error_r);
	}
	imap_pool_put(ib->pool, &s);
	mailimap_search_key_free(key);
	for (it = result ? clist_begin(result) : NULL; it;
	     it = clist_next(it)) {
		*uid_r = *(uint32_t *)clist_content(it);
		break;
	}
	if (result)
		mailimap_search_result_free(result);
	return st;
}

static enum backend_status imap_set_flags(struct backend *be,
	const char *folder, uint32_t uidvalidity, uint32_t uid,
	const char *flags, const char **error_r)
{
	struct imap_backend *ib = to_imap(be);
	struct mailimap_store_att_flags *att;
	struct mailimap_flag_list *fl;
	struct mailimap_set *set;
	struct imap_session *s;
	enum backend_status st;
	int r;

	fl = parse_flag_list(flags, error_r);
	if (!fl)
		return BACKEND_INVALID;
	st = imap_pool_get(ib->pool, &s, error_r);
	if (st != BACKEND_OK) {
		mailimap_flag_list_free(fl);
		return st;
	}
	att = mailimap_store_att_flags_new_set_flags_silent(fl);
	st = session_select_rw(s, folder, uidvalidity, uid, error_r);
	if (st == BACKEND_OK) {
		set = mailimap_set_new_single(uid);
		r = mailimap_uid_store(s->imap, set, att);
		mailimap_set_free(set);
		if (r != MAILIMAP_NO_ERROR)
			st = command_failed(s, r, "UID STORE in", folder,
				error_r);
	}
	mailimap_store_att_flags_free(att);
	imap_pool_put(ib->pool, &s);
	return st;
}

/* Runs one folder command that needs no selected folder. */
static enum backend_status folder_command(struct backend *be,
	const char *verb, const char *a, const char *b, const char **error_r)
{
	struct imap_backend *ib = to_imap(be);
	struct imap_session *s;
	enum backend_status st;
	int r;

	st = imap_pool_get(ib->pool, &s, error_r);
	if (st != BACKEND_OK)
		return st;
	/* A folder being deleted or renamed must not stay selected. */
	if (s->selected && strncmp(s->selected, a, strlen(a)) == 0)
		imap_session_unselect(s);
	if (strcmp(verb, "CREATE") == 0)
		r = mailimap_create(s->imap, a);
	else if (strcmp(verb, "DELETE") == 0)
		r = mailimap_delete(s->imap, a);
	else
		r = mailimap_rename(s->imap, a, b);
	if (r != MAILIMAP_NO_ERROR)
		st = command_failed(s, r, verb, a, error_r);
	imap_pool_put(ib->pool, &s);
	return st;
}

static enum backend_status imap_create_folder(struct backend *be,
	const char *name, const char **error_r)
{
	return folder_command(be, "CREATE", name, NULL, error_r);
}

static enum backend_status imap_delete_folder(struct backend *be,
	const char *name, const char **error_r)
{
	return folder_command(be, "DELETE", name, NULL, error_r);
}

static enum backend_status imap_rename_folder(struct backend *be,
	const char *from, const char *to, const char **error_r)
{
	return folder_command(be, "RENAME", from, to, error_r);
}

static char *imap_encode_name(struct backend *be, const char *raw_parent,
	const char *name, const char **error_r)
{
	char *enc, *out = NULL;

	if (!*name || strpbrk(name, "\r\n") ||
	    (be->delimiter && strchr(name, be->delimiter))) {
		*error_r = errfmt("folder name '%s' cannot be sent: it is "
			"empty or contains a line break or the hierarchy "
			"delimiter '%c'", name, be->delimiter);
		return NULL;
	}
	enc = mutf7_encode(name);
	if (!enc) {
		*error_r = "folder name is not valid UTF-8";
		return NULL;
	}
	if (!raw_parent)
		return enc;
	if (asprintf(&out, "%s%c%s", raw_parent, be->delimiter, enc) < 0)
		out = NULL;
	free(enc);
	if (!out)
		*error_r = "out of memory";
	return out;
}

/* ---- watching for changes ------------------------------------------------ */

/* Before opening or idling again after a failure. */
#define IDLE_RETRY_S 30

/* Sleeps up to ms unless woken; true when woken. */
static bool sleep_or_wake(struct imap_backend *ib, int ms)
{
	struct pollfd pfd = { .fd = ib->wake[0], .events = POLLIN };

	return poll(&pfd, 1, ms) > 0;
}

/* IDLE by hand up to the server's "+", leaving the session as
 * mailimap_idle() does, for mailimap_idle_done(); libetpan would parse
 * the "+" line itself (see imap_session_continuation).  *news_r: untagged
 * responses came first, so something changed already. */
static enum backend_status idle_start(struct imap_session *s,
	const char *folder, bool *news_r, const char **error_r)
{
	mailimap *imap = s->imap;
	enum backend_status st;
	bool go;
	int r;

	if (imap->imap_selection_info) {
		imap->imap_selection_info->sel_has_exists = 0;
		imap->imap_selection_info->sel_has_recent = 0;
	}
	imap->imap_idle_timestamp = time(NULL);
	r = mailimap_send_current_tag(imap);
	if (r == MAILIMAP_NO_ERROR &&
	    (mailstream_write(imap->imap_stream, "IDLE\r\n", 6) != 6 ||
	     mailstream_flush(imap->imap_stream) == -1))
		r = MAILIMAP_ERROR_STREAM;
	if (r != MAILIMAP_NO_ERROR)
		return command_failed(s, r, "IDLE in", folder, error_r);
	st = imap_session_continuation(s, "IDLE", &go, news_r, error_r);
	if (st != BACKEND_OK) {
		*error_r = errfmt("IDLE in %s: %s: %s", folder,
			backend_status_name(st), *error_r);
		return st;
	}
	if (!go) {
		/* Refused (or done at once, which is no better). */
		r = read_tagged(imap, MAILIMAP_ERROR_EXTENSION);
		return command_failed(s, r == MAILIMAP_NO_ERROR ?
			MAILIMAP_ERROR_EXTENSION : r, "IDLE in", folder,
			error_r);
	}
	return BACKEND_OK;
}

static enum backend_status imap_wait_changes(struct backend *be,
	const char *folder, int max_wait_s, const char **error_r)
{
	struct imap_backend *ib = to_imap(be);
	enum backend_status st;
	struct imap_session *s;
	bool news = false;
	int r, w;

	if (atomic_exchange(&ib->give_way, false)) {
		/* Reads found no connection the server would allow: IDLE
		 * gives its up and polls for a while. */
		char drain[64];

		if (!atomic_load(&ib->interrupted))
			while (read(ib->wake[0], drain, sizeof(drain)) > 0)
				;
		if (ib->idle)
			imap_session_close(&ib->idle);
		sleep_or_wake(ib, max_wait_s * 1000);
		return BACKEND_OK;
	}
	if (!ib->idle) {
		st = imap_session_open(ib->ep, &ib->idle, error_r);
		if (st != BACKEND_OK) {
			/* Offline: look again later, unless told to stop. */
			sleep_or_wake(ib, IDLE_RETRY_S * 1000);
			return st;
		}
	}
	s = ib->idle;
	if (!s->caps.idle) {
		/* No IDLE: the caller polls, once per max_wait_s. */
		sleep_or_wake(ib, max_wait_s * 1000);
		return BACKEND_OK;
	}
	st = session_examine(s, folder, true, error_r);
	if (st == BACKEND_OK)
		st = idle_start(s, folder, &news, error_r);
	if (st != BACKEND_OK) {
		if (imap_session_broken(s))
			imap_session_close(&ib->idle);
		/* The caller comes straight back: not in a tight loop. */
		sleep_or_wake(ib, IDLE_RETRY_S * 1000);
		return st;
	}
	/* Leave the timeout to the wait: an idle server is silent. */
	w = news ? 1 : net_stream_wait_readable(s->imap->imap_stream,
		max_wait_s * 1000, ib->wake[0]);
	r = mailimap_idle_done(s->imap);
	if (w < 0 || r != MAILIMAP_NO_ERROR) {
		imap_session_set_state(s, IMAP_BROKEN);
		st = BACKEND_TEMP;
		*error_r = errfmt("IDLE in %s ended: %s", folder,
			net_stream_last_error(s->imap->imap_stream));
	}
	if (imap_session_broken(s))
		imap_session_close(&ib->idle);
	return st;
}

static void imap_interrupt_wait(struct backend *be)
{
	struct imap_backend *ib = to_imap(be);
	ssize_t ignored;

	atomic_store(&ib->interrupted, true);
	ignored = write(ib->wake[1], "x", 1);
	(void)ignored;
}

/* The pool's crowded hook: wakes IDLE to give its connection up. */
static void idle_give_way(void *ctx)
{
	struct imap_backend *ib = ctx;
	ssize_t ignored;

	atomic_store(&ib->give_way, true);
	ignored = write(ib->wake[1], "y", 1);
	(void)ignored;
}

static void imap_destroy(struct backend *be)
{
	struct imap_backend *ib = to_imap(be);

	imap_pool_free(&ib->pool);
	if (ib->idle)
		imap_session_close(&ib->idle);
	close(ib->wake[0]);
	close(ib->wake[1]);
	forget_special_uses(ib);
	pthread_mutex_destroy(&ib->uses_lock);
	free(ib);
}

static char *imap_pressure_text(struct backend *be)
{
	unsigned open, allowed, max, pause_ms;
	char *out = NULL;

	imap_pool_connections(to_imap(be)->pool, &open, &allowed, &max,
		&pause_ms);
	if (allowed >= max && !pause_ms)
		return NULL;
	if (pause_ms && asprintf(&out, "connections: %u open, %u of %u"
			" allowed by the server; paused by the server for"
			" %u s", open, allowed, max, (pause_ms + 999) / 1000) < 0)
		out = NULL;
	if (!pause_ms && asprintf(&out, "connections: %u open, %u of %u"
			" allowed by the server", open, allowed, max) < 0)
		out = NULL;
	return out;
}

static const struct backend_ops imap_backend_ops = {
	.list_folders = imap_list_folders,
	.list_messages = imap_list_messages,
	.resync_messages = imap_resync_messages,
	.read_range = imap_read_range,
	.read_heads = imap_read_heads,
	.fetch_parts = imap_fetch_parts,
	.read_section = imap_read_section,
	.expunge = imap_expunge,
	.move = imap_move,
	.append = imap_append,
	.find_appended = imap_find_appended,
	.find_message_id = imap_find_message_id,
	.set_flags = imap_set_flags,
	.create_folder = imap_create_folder,
	.delete_folder = imap_delete_folder,
	.rename_folder = imap_rename_folder,
	.encode_name = imap_encode_name,
	.wait_changes = imap_wait_changes,
	.interrupt_wait = imap_interrupt_wait,
	.pressure_text = imap_pressure_text,
	.destroy = imap_destroy,
};

struct backend *imap_backend_new(const struct mail_endpoint *ep,
	unsigned connections, struct imap_session *first)
{
	struct imap_backend *ib = calloc(1, sizeof(*ib));

	if (!ib)
		return NULL;
	ib->be.ops = &imap_backend_ops;
	ib->be.delimiter = first && first->delimiter ? first->delimiter : '/';
	ib->ep = ep;
	pthread_mutex_init(&ib->uses_lock, NULL);
	ib->pool = imap_pool_new(ep, connections);
	if (!ib->pool || pipe2(ib->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
		imap_pool_free(&ib->pool);
		pthread_mutex_destroy(&ib->uses_lock);
		free(ib);
		return NULL;
	}
	imap_pool_set_crowded_hook(ib->pool, idle_give_way, ib);
	if (first)
		imap_pool_adopt(ib->pool, first);
	return &ib->be;
}
