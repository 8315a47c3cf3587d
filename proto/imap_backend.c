/* IMAP backend: folder listing, message metadata and ranged reads.
 *
 * Reading never changes the mailbox: folders are opened with EXAMINE
 * (read-only, so no \Recent is consumed) and content is fetched with
 * BODY.PEEK, which never sets \Seen.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/imap_backend.h"
#include "proto/imap_pool.h"
#include "proto/mutf7.h"
#include "src/errfmt.h"
#include "src/log.h"

struct imap_backend {
	struct backend be;      /* first: the vtable user sees only this */
	const struct imap_endpoint *ep;
	struct imap_pool *pool;
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
	const char *text = imap_session_last_text(s);

	*error_r = errfmt("%s%s%s: %s%s%s", what, folder ? " " : "",
		folder ? folder : "", backend_status_name(st),
		*text ? ": " : "", text);
	return st;
}

/* Opens `folder` read-only unless it is already the selected one. */
static enum backend_status session_examine(struct imap_session *s,
	const char *folder, bool force, const char **error_r)
{
	int r;

	if (!force && s->selected && strcmp(s->selected, folder) == 0)
		return BACKEND_OK;
	free(s->selected);
	s->selected = NULL;
	r = mailimap_examine(s->imap, folder);
	if (r != MAILIMAP_NO_ERROR)
		return command_failed(s, r, "EXAMINE", folder, error_r);
	s->selected = strdup(folder);
	s->selected_uidvalidity = s->imap->imap_selection_info ?
		s->imap->imap_selection_info->sel_uidvalidity : 0;
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
	r = mailimap_list(s->imap, "", "*", &list);
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
		n++;
	}
	*folders_r = folders;
	*count_r = n;
	st = BACKEND_OK;
out_free_list:
	mailimap_list_result_free(list);
out_put:
	imap_pool_put(ib->pool, &s);
	return st;
}

/* INTERNALDATE to seconds since the epoch; dt_zone is +-HHMM. */
static int64_t date_time_to_epoch(const struct mailimap_date_time *dt)
{
	struct tm tm = {
		.tm_year = dt->dt_year - 1900, .tm_mon = dt->dt_month - 1,
		.tm_mday = dt->dt_day, .tm_hour = dt->dt_hour,
		.tm_min = dt->dt_min, .tm_sec = dt->dt_sec,
	};
	int zone = dt->dt_zone < 0 ? -dt->dt_zone : dt->dt_zone;
	int64_t offset = (zone / 100) * 3600 + (zone % 100) * 60;

	return (int64_t)timegm(&tm) - (dt->dt_zone < 0 ? -offset : offset);
}

static const char *flag_name(const struct mailimap_flag *fl)
{
	switch (fl->fl_type) {
	case MAILIMAP_FLAG_ANSWERED: return "\\Answered";
	case MAILIMAP_FLAG_FLAGGED: return "\\Flagged";
	case MAILIMAP_FLAG_DELETED: return "\\Deleted";
	case MAILIMAP_FLAG_SEEN: return "\\Seen";
	case MAILIMAP_FLAG_DRAFT: return "\\Draft";
	case MAILIMAP_FLAG_KEYWORD: return fl->fl_data.fl_keyword;
	case MAILIMAP_FLAG_EXTENSION: return NULL; /* handled by caller */
	}
	return NULL;
}

/* Joins the FETCH FLAGS of one message into "\\Seen \\Flagged kw". */
static char *flags_to_string(const struct mailimap_msg_att_dynamic *dyn)
{
	char buf[4096];
	size_t len = 0;
	clistiter *it;

	buf[0] = '\0';
	if (dyn && dyn->att_list)
		for (it = clist_begin(dyn->att_list); it; it = clist_next(it)) {
			struct mailimap_flag_fetch *ff = clist_content(it);
			char ext[256];
			const char *name;

			if (ff->fl_type != MAILIMAP_FLAG_FETCH_OTHER ||
			    !ff->fl_flag)
				continue;  /* \Recent is per-session noise */
			name = flag_name(ff->fl_flag);
			if (ff->fl_flag->fl_type == MAILIMAP_FLAG_EXTENSION) {
				snprintf(ext, sizeof(ext), "\\%s",
					ff->fl_flag->fl_data.fl_extension);
				name = ext;
			}
			if (!name)
				continue;
			int w = snprintf(buf + len, sizeof(buf) - len, "%s%s",
				len ? " " : "", name);
			if (w < 0 || (size_t)w >= sizeof(buf) - len)
				break;
			len += w;
		}
	return strdup(buf);
}

static struct mailimap_fetch_type *metadata_fetch_type(void)
{
	static const char *const fields[] = {
		"DATE", "SUBJECT", "MESSAGE-ID", "FROM",
	};
	struct mailimap_fetch_type *ft;
	clist *hdrs = clist_new();

	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
		clist_append(hdrs, strdup(fields[i]));
	ft = mailimap_fetch_type_new_fetch_att_list_empty();
	mailimap_fetch_type_new_fetch_att_list_add(ft,
		mailimap_fetch_att_new_uid());
	mailimap_fetch_type_new_fetch_att_list_add(ft,
		mailimap_fetch_att_new_rfc822_size());
	mailimap_fetch_type_new_fetch_att_list_add(ft,
		mailimap_fetch_att_new_internaldate());
	mailimap_fetch_type_new_fetch_att_list_add(ft,
		mailimap_fetch_att_new_flags());
	mailimap_fetch_type_new_fetch_att_list_add(ft,
		mailimap_fetch_att_new_body_peek_section(
			mailimap_section_new_header_fields(
				mailimap_header_list_new(hdrs))));
	return ft;
}

/* Fills one backend_message from a FETCH response; returns false when it
 * carried no UID (not a message we asked for). */
static bool parse_metadata(const struct mailimap_msg_att *att,
	struct backend_message *m)
{
	clistiter *it;

	memset(m, 0, sizeof(*m));
	for (it = clist_begin(att->att_list); it; it = clist_next(it)) {
		struct mailimap_msg_att_item *item = clist_content(it);

		if (item->att_type == MAILIMAP_MSG_ATT_ITEM_DYNAMIC) {
			free(m->flags);
			m->flags = flags_to_string(item->att_data.att_dyn);
			continue;
		}
		if (item->att_type != MAILIMAP_MSG_ATT_ITEM_STATIC)
			continue;
		struct mailimap_msg_att_static *st = item->att_data.att_static;

		switch (st->att_type) {
		case MAILIMAP_MSG_ATT_UID:
			m->uid = st->att_data.att_uid;
			break;
		case MAILIMAP_MSG_ATT_RFC822_SIZE:
			m->size = st->att_data.att_rfc822_size;
			break;
		case MAILIMAP_MSG_ATT_INTERNALDATE:
			if (st->att_data.att_internal_date)
				m->internaldate = date_time_to_epoch(
					st->att_data.att_internal_date);
			break;
		case MAILIMAP_MSG_ATT_BODY_SECTION: {
			struct mailimap_msg_att_body_section *sec =
				st->att_data.att_body_section;

			if (!sec || !sec->sec_body_part)
				break;
			free(m->header);
			m->header = malloc(sec->sec_length + 1);
			if (m->header) {
				memcpy(m->header, sec->sec_body_part,
					sec->sec_length);
				m->header[sec->sec_length] = '\0';
				m->header_len = sec->sec_length;
			}
			break;
		}
		default:
			break;
		}
	}
	if (!m->flags)
		m->flags = strdup("");
	if (!m->header) {
		m->header = strdup("");
		m->header_len = 0;
	}
	return m->uid != 0;
}

static int compare_uid(const void *a, const void *b)
{
	const struct backend_message *x = a, *y = b;

	return (x->uid > y->uid) - (x->uid < y->uid);
}

static enum backend_status imap_list_messages(struct backend *be,
	const char *folder, struct backend_folder_state *state_r,
	struct backend_message **msgs_r, size_t *count_r,
	const char **error_r)
{
	struct imap_backend *ib = to_imap(be);
	struct mailimap_selection_info *sel;
	struct mailimap_fetch_type *ft = NULL;
	struct mailimap_set *set = NULL;
	struct backend_message *msgs = NULL;
	struct imap_session *s;
	enum backend_status st;
	clist *result = NULL;
	clistiter *it;
	size_t n = 0;
	int r;

	st = imap_pool_get(ib->pool, &s, error_r);
	if (st != BACKEND_OK)
		return st;
	/* Always re-EXAMINE: it is what refreshes EXISTS and UIDNEXT. */
	st = session_examine(s, folder, true, error_r);
	if (st != BACKEND_OK)
		goto out_put;
	sel = s->imap->imap_selection_info;
	memset(state_r, 0, sizeof(*state_r));
	state_r->uidvalidity = sel->sel_uidvalidity;
	state_r->uidnext = sel->sel_uidnext;
	state_r->exists = sel->sel_exists;
	if (sel->sel_exists == 0)
		goto out_done;

	ft = metadata_fetch_type();
	set = mailimap_set_new_interval(1, 0);  /* 1:* */
	r = mailimap_uid_fetch(s->imap, set, ft, &result);
	if (r != MAILIMAP_NO_ERROR) {
		st = command_failed(s, r, "UID FETCH in", folder, error_r);
		goto out_free;
	}
	msgs = calloc(clist_count(result) + 1, sizeof(*msgs));
	if (!msgs) {
		st = BACKEND_TEMP;
		*error_r = "out of memory";
		goto out_free;
	}
	for (it = clist_begin(result); it; it = clist_next(it)) {
		if (parse_metadata(clist_content(it), &msgs[n])) {
			n++;
		} else {
			free(msgs[n].flags);
			free(msgs[n].header);
		}
	}
	qsort(msgs, n, sizeof(*msgs), compare_uid);
out_done:
	*msgs_r = msgs;
	*count_r = n;
	msgs = NULL;
	st = BACKEND_OK;
out_free:
	if (result)
		mailimap_fetch_list_free(result);
	if (set)
		mailimap_set_free(set);
	if (ft)
		mailimap_fetch_type_free(ft);
	free(msgs);
out_put:
	imap_pool_put(ib->pool, &s);
	return st;
}

/* Copies the part of a BODY[]<origin> answer that covers [offset,
 * offset+length) into buf.  Servers may ignore the range (then origin is
 * absent and the whole message arrives) or shorten it; anything else is a
 * protocol error rather than wrong bytes. */
static enum backend_status take_body_range(
	const struct mailimap_msg_att_body_section *sec, uint64_t offset,
	size_t length, void *buf, size_t *got_r, const char **error_r)
{
	uint64_t origin = sec->sec_origin_octet;
	size_t len = sec->sec_length;
	uint64_t skip;

	if (origin == offset) {
		skip = 0;
	} else if (origin == 0) {
		/* Range ignored: the answer is the whole message. */
		if (len < offset) {
			*got_r = 0;
			return BACKEND_OK;
		}
		skip = offset;
	} else {
		*error_r = errfmt("server answered range <%llu> for <%llu>",
			(unsigned long long)origin,
			(unsigned long long)offset);
		return BACKEND_PROTOCOL;
	}
	len -= skip;
	if (len > length)
		len = length;
	memcpy(buf, sec->sec_body_part + skip, len);
	*got_r = len;
	return BACKEND_OK;
}

static enum backend_status imap_read_range(struct backend *be,
	const char *folder, uint32_t uidvalidity, uint32_t uid,
	uint64_t offset, size_t length, void *buf, size_t *got_r,
	const char **error_r)
{
	struct imap_backend *ib = to_imap(be);
	struct mailimap_fetch_type *ft;
	struct mailimap_set *set;
	struct imap_session *s;
	enum backend_status st;
	clist *result = NULL;
	clistiter *it, *jt;
	bool found = false;
	int r;

	st = imap_pool_get(ib->pool, &s, error_r);
	if (st != BACKEND_OK)
		return st;
	st = session_examine(s, folder, false, error_r);
	if (st != BACKEND_OK)
		goto out_put;
	if (s->selected_uidvalidity != uidvalidity) {
		st = BACKEND_NOT_FOUND;
		*error_r = errfmt("folder %s was recreated (UIDVALIDITY %u, "
			"expected %u)", folder, s->selected_uidvalidity,
			uidvalidity);
		goto out_put;
	}
	ft = mailimap_fetch_type_new_fetch_att_list_empty();
	mailimap_fetch_type_new_fetch_att_list_add(ft,
		mailimap_fetch_att_new_uid());
	mailimap_fetch_type_new_fetch_att_list_add(ft,
		mailimap_fetch_att_new_body_peek_section_partial(
			mailimap_section_new(NULL), (uint32_t)offset,
			(uint32_t)length));
	set = mailimap_set_new_single(uid);
	r = mailimap_uid_fetch(s->imap, set, ft, &result);
	mailimap_set_free(set);
	mailimap_fetch_type_free(ft);
	if (r != MAILIMAP_NO_ERROR) {
		st = command_failed(s, r, "UID FETCH BODY.PEEK in", folder,
			error_r);
		goto out_put;
	}
	st = BACKEND_OK;
	for (it = clist_begin(result); it && !found; it = clist_next(it)) {
		struct mailimap_msg_att *att = clist_content(it);
		struct mailimap_msg_att_body_section *sec = NULL;
		uint32_t got_uid = 0;

		for (jt = clist_begin(att->att_list); jt; jt = clist_next(jt)) {
			struct mailimap_msg_att_item *item = clist_content(jt);

			if (item->att_type != MAILIMAP_MSG_ATT_ITEM_STATIC)
				continue;
			if (item->att_data.att_static->att_type ==
			    MAILIMAP_MSG_ATT_UID)
				got_uid = item->att_data.att_static->
					att_data.att_uid;
			else if (item->att_data.att_static->att_type ==
				 MAILIMAP_MSG_ATT_BODY_SECTION)
				sec = item->att_data.att_static->
					att_data.att_body_section;
		}
		/* Unsolicited FETCH responses (flag changes) may come too. */
		if (got_uid != uid || !sec)
			continue;
		found = true;
		if (!sec->sec_body_part) {
			*got_r = 0;   /* NIL body: nothing at this offset */
			break;
		}
		st = take_body_range(sec, offset, length, buf, got_r, error_r);
	}
	if (!found && st == BACKEND_OK) {
		st = BACKEND_NOT_FOUND;
		*error_r = errfmt("message UID %u is gone from %s", uid, folder);
	}
	mailimap_fetch_list_free(result);
out_put:
	imap_pool_put(ib->pool, &s);
	return st;
}

static void imap_destroy(struct backend *be)
{
	struct imap_backend *ib = to_imap(be);

	imap_pool_free(&ib->pool);
	free(ib);
}

static const struct backend_ops imap_backend_ops = {
	.list_folders = imap_list_folders,
	.list_messages = imap_list_messages,
	.read_range = imap_read_range,
	.destroy = imap_destroy,
};

struct backend *imap_backend_new(const struct imap_endpoint *ep,
	unsigned connections, struct imap_session *first)
{
	struct imap_backend *ib = calloc(1, sizeof(*ib));

	if (!ib)
		return NULL;
	ib->be.ops = &imap_backend_ops;
	ib->be.delimiter = first && first->delimiter ? first->delimiter : '/';
	ib->ep = ep;
	ib->pool = imap_pool_new(ep, connections);
	if (!ib->pool) {
		free(ib);
		return NULL;
	}
	if (first)
		imap_pool_adopt(ib->pool, first);
	return &ib->be;
}
