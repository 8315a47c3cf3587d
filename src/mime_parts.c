/* The `.parts` tree of a message; see mime_parts.h.
 *
 * Both sources (BODYSTRUCTURE and libetpan's MIME tree of a raw message)
 * are walked into the same struct part_info per leaf, numbered the IMAP
 * way, so the POP3 view and the IMAP view of one message agree.
 */
#include "src/mime_parts.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libetpan/libetpan.h>

#include "src/file_name.h"
#include "src/mime_text.h"

#define SECTION_MAX 200      /* "1.2.3...": depth 32 keeps it far below */
#define PARAMS_MAX 128       /* parameters read per field */
#define EXT_MAX 16

/* One leaf part, whatever the source. */
struct part_info {
	const char *type, *subtype;      /* NULL: text/plain */
	struct mime_param ct[PARAMS_MAX];
	size_t n_ct;
	const char *disposition;         /* NULL: none */
	struct mime_param dsp[PARAMS_MAX];
	size_t n_dsp;
	enum mime_transfer te;
	uint64_t size;
	bool has_off;
	uint64_t off;
};

struct builder {
	struct mime_tree *tree;
	bool oom;
	const char *msg;     /* raw source, or NULL */
	size_t msg_len;
};

/* A directory being filled: text and html candidates are kept apart
 * until the whole message has been walked. */
struct dir_state {
	struct mime_node *dir;
	struct mime_node text, html;
	bool has_text, has_html;
};

/* ---- nodes ------------------------------------------------------------ */

static void node_free(struct mime_node *n)
{
	for (size_t i = 0; i < n->n_children; i++)
		node_free(&n->children[i]);
	free(n->children);
	free(n->name);
	free(n->section);
	free(n->charset);
	memset(n, 0, sizeof(*n));
}

void mime_tree_free(struct mime_tree **tree)
{
	if (!*tree)
		return;
	node_free(&(*tree)->root);
	free(*tree);
	*tree = NULL;
}

/* Counts a node against the bound; false when it must be left out. */
static bool take_slot(struct builder *b)
{
	if (b->tree->n_nodes >= MIME_PARTS_MAX) {
		b->tree->truncated = true;
		return false;
	}
	b->tree->n_nodes++;
	return true;
}

/* Appends a copy of *n (taking its allocations) to dir. */
static struct mime_node *add_child(struct builder *b, struct mime_node *dir,
	struct mime_node *n)
{
	struct mime_node *c = realloc(dir->children,
		(dir->n_children + 1) * sizeof(*c));

	if (!c) {
		b->oom = true;
		node_free(n);
		return NULL;
	}
	dir->children = c;
	c[dir->n_children] = *n;
	memset(n, 0, sizeof(*n));
	return &c[dir->n_children++];
}

/* ---- names ------------------------------------------------------------ */

/* A safe name from decoded UTF-8 text: as a folder name, and without a
 * leading '.', which would hide the file. */
static char *safe_name(const char *s)
{
	char *n = folder_name_sanitize(s), *o;
	size_t len;

	if (!n || n[0] != '.')
		return n;
	len = strlen(n);
	o = malloc(len + 2);
	if (o) {
		o[0] = '_';
		memcpy(o + 1, n, len + 1);
		if (len + 1 > FILE_NAME_MAX) {
			size_t cut = FILE_NAME_MAX;

			while (cut > 0 && ((unsigned char)o[cut] & 0xc0) == 0x80)
				cut--;
			o[cut] = '\0';
		}
	}
	free(n);
	return o;
}

/* "report.pdf" -> "report~3.pdf"; a name without an extension (or a
 * long one) gets the suffix at its end.  Cut to 255 bytes. */
static char *name_variant(const char *name, unsigned k)
{
	char suffix[16];
	const char *dot = strrchr(name, '.');
	size_t len = strlen(name), slen, stem, tail;
	char *out;

	slen = (size_t)snprintf(suffix, sizeof(suffix), "~%u", k);
	if (!dot || dot == name || strlen(dot) > EXT_MAX + 1)
		dot = name + len;
	tail = (size_t)(name + len - dot);
	stem = (size_t)(dot - name);
	if (stem + slen + tail > FILE_NAME_MAX) {
		stem = FILE_NAME_MAX - slen - tail;
		while (stem > 0 && ((unsigned char)name[stem] & 0xc0) == 0x80)
			stem--;
	}
	out = malloc(stem + slen + tail + 1);
	if (!out)
		return NULL;
	memcpy(out, name, stem);
	memcpy(out + stem, suffix, slen);
	memcpy(out + stem + slen, dot, tail + 1);
	return out;
}

static bool name_taken(const struct mime_node *dir, size_t upto,
	const char *name)
{
	for (size_t i = 0; i < upto; i++)
		if (strcmp(dir->children[i].name, name) == 0)
			return true;
	return false;
}

/* Gives every child of dir a distinct name, in order: a repeated name
 * gets the first free "~k", k counted from its earlier repeats. */
static void dedupe(struct builder *b, struct mime_node *dir)
{
	for (size_t i = 1; i < dir->n_children; i++) {
		char *name = dir->children[i].name;
		unsigned k = 1;

		if (!name_taken(dir, i, name))
			continue;
		for (size_t j = 0; j < i; j++)
			if (strcmp(dir->children[j].name, name) == 0)
				k++;
		for (;; k++) {
			char *v = name_variant(name, k < 2 ? 2 : k);

			if (!v) {
				b->oom = true;
				return;
			}
			if (!name_taken(dir, i, v)) {
				free(name);
				dir->children[i].name = v;
				break;
			}
			free(v);
		}
	}
}

/* ---- leaves ----------------------------------------------------------- */

static bool is_type(const char *got, const char *want)
{
	return got && strcasecmp(got, want) == 0;
}

/* The extension an unnamed part of this subtype gets. */
static void subtype_ext(const char *type, const char *sub, char *ext)
{
	static const struct {
		const char *sub, *ext;
	} map[] = {
		{ "plain", "txt" }, { "jpeg", "jpg" },
		{ "octet-stream", "bin" }, { "rfc822", "eml" },
		{ "delivery-status", "txt" }, { "calendar", "ics" },
		{ "x-vcard", "vcf" }, { "vcard", "vcf" },
	};
	size_t n = 0;

	if (!type && !sub)
		sub = "plain";
	if (!sub)
		sub = "bin";
	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (strcasecmp(sub, map[i].sub) == 0) {
			strcpy(ext, map[i].ext);
			return;
		}
	for (; *sub && n < EXT_MAX; sub++) {
		char c = *sub;

		if (c >= 'A' && c <= 'Z')
			c = (char)(c + 32);
		if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
			ext[n++] = c;
	}
	if (!n)
		strcpy(ext, "bin");
	else
		ext[n] = '\0';
}

static char *file_name_of(const struct part_info *p)
{
	char *v = mime_param_get(p->dsp, p->n_dsp, "filename");

	if (!v)
		v = mime_param_get(p->ct, p->n_ct, "name");
	if (v && !*v) {
		free(v);
		v = NULL;
	}
	return v;
}

static void fill_bytes(struct mime_node *n, const struct part_info *p,
	const char *section)
{
	n->transfer = p->te;
	n->encoded_size = p->size;
	n->has_raw_offset = p->has_off;
	n->raw_offset = p->off;
	n->section = strdup(section);
}

static void leaf(struct builder *b, struct dir_state *ds,
	const struct part_info *p, const char *section)
{
	bool text = !p->type || is_type(p->type, "text");
	bool plain = text && (!p->subtype || is_type(p->subtype, "plain"));
	bool html = text && is_type(p->subtype, "html");
	bool attach = is_type(p->disposition, "attachment");
	char *fname = file_name_of(p);
	struct mime_node n = { 0 };

	if (!fname && !attach && p->te != MIME_TE_UNKNOWN &&
	    ((plain && !ds->has_text) || (html && !ds->has_html))) {
		struct mime_node *t = plain ? &ds->text : &ds->html;

		if (!take_slot(b))
			return;
		fill_bytes(t, p, section);
		t->kind = plain ? MIME_NODE_TEXT : MIME_NODE_HTML;
		t->charset = mime_param_get(p->ct, p->n_ct, "charset");
		t->name = strdup(plain ? "text" : "html");
		if (!t->section || !t->name)
			b->oom = true;
		*(plain ? &ds->has_text : &ds->has_html) = true;
		return;
	}
	if (!take_slot(b)) {
		free(fname);
		return;
	}
	if (!fname) {
		char ext[EXT_MAX + 1], buf[SECTION_MAX + EXT_MAX + 16];

		subtype_ext(p->type, p->subtype, ext);
		snprintf(buf, sizeof(buf), "part-%s.%s", section, ext);
		fname = strdup(buf);
	}
	if (fname && p->te == MIME_TE_UNKNOWN) {
		size_t fl = strlen(fname);
		char *u = malloc(fl + sizeof(".undecoded"));

		if (u) {
			memcpy(u, fname, fl);
			memcpy(u + fl, ".undecoded", sizeof(".undecoded"));
		}
		free(fname);
		fname = u;
	}
	n.kind = p->te == MIME_TE_UNKNOWN ? MIME_NODE_RAW : MIME_NODE_FILE;
	n.name = fname ? safe_name(fname) : NULL;
	free(fname);
	fill_bytes(&n, p, section);
	if (!n.name || !n.section) {
		b->oom = true;
		node_free(&n);
		return;
	}
	add_child(b, ds->dir, &n);
}

/* Starts a message directory under parent (or the root when parent is
 * NULL): headers at `headers_section`, with the given size and offset. */
static bool dir_begin(struct builder *b, struct dir_state *ds,
	struct mime_node *parent, const char *name, const char *section,
	const char *headers_section, uint64_t hsize, bool has_off,
	uint64_t hoff)
{
	struct mime_node h = { 0 };

	memset(ds, 0, sizeof(*ds));
	if (parent) {
		struct mime_node d = { 0 };

		if (!take_slot(b))
			return false;
		d.kind = MIME_NODE_DIR;
		d.name = safe_name(name);
		d.section = strdup(section);
		if (!d.name || !d.section) {
			b->oom = true;
			node_free(&d);
			return false;
		}
		ds->dir = add_child(b, parent, &d);
		if (!ds->dir)
			return false;
	} else {
		ds->dir = &b->tree->root;
		ds->dir->kind = MIME_NODE_DIR;
		ds->dir->name = strdup("");
		ds->dir->section = strdup("");
		if (!ds->dir->name || !ds->dir->section) {
			b->oom = true;
			return false;
		}
	}
	if (!take_slot(b))
		return true;
	h.kind = MIME_NODE_HEADERS;
	h.name = strdup("headers");
	h.section = strdup(headers_section);
	h.encoded_size = hsize;
	h.has_raw_offset = has_off;
	h.raw_offset = hoff;
	if (!h.name || !h.section) {
		b->oom = true;
		node_free(&h);
		return true;
	}
	add_child(b, ds->dir, &h);
	return true;
}

/* Puts text and html first, then names everything apart.  ds->dir
 * points into its parent's children: safe, as nothing is added to the
 * parent while one of its subdirectories is being filled. */
static void dir_end(struct builder *b, struct dir_state *ds)
{
	struct mime_node *d = ds->dir;
	size_t extra = ds->has_text + ds->has_html;

	if (!ds->has_text && ds->has_html) {
		/* an HTML-only message: its text is the HTML, read */
		struct mime_node t = { 0 };

		if (take_slot(b)) {
			t.kind = MIME_NODE_TEXT;
			t.from_html = true;
			t.name = strdup("text");
			t.section = ds->html.section ?
				strdup(ds->html.section) : NULL;
			t.charset = ds->html.charset ?
				strdup(ds->html.charset) : NULL;
			t.transfer = ds->html.transfer;
			t.encoded_size = ds->html.encoded_size;
			t.has_raw_offset = ds->html.has_raw_offset;
			t.raw_offset = ds->html.raw_offset;
			if (!t.name || !t.section ||
			    (ds->html.charset && !t.charset)) {
				b->oom = true;
				node_free(&t);
			} else {
				ds->text = t;
				ds->has_text = true;
				extra++;
			}
		}
	}
	if (extra) {
		struct mime_node *c = realloc(d->children,
			(d->n_children + extra) * sizeof(*c));

		if (!c) {
			b->oom = true;
		} else {
			d->children = c;
			memmove(c + extra, c, d->n_children * sizeof(*c));
			if (ds->has_text)
				c[0] = ds->text;
			if (ds->has_html)
				c[ds->has_text] = ds->html;
			d->n_children += extra;
			memset(&ds->text, 0, sizeof(ds->text));
			memset(&ds->html, 0, sizeof(ds->html));
		}
	}
	node_free(&ds->text);
	node_free(&ds->html);
	dedupe(b, d);
}

static void child_section(char *buf, const char *prefix, size_t k)
{
	if (*prefix)
		snprintf(buf, SECTION_MAX, "%s.%zu", prefix, k);
	else
		snprintf(buf, SECTION_MAX, "%zu", k);
}

/* The name of a message/rfc822 part's directory. */
static char *message_dir_name(const struct part_info *p, const char *section)
{
	char *f = file_name_of(p);
	char buf[SECTION_MAX + 16];
	size_t fl;

	if (f) {
		fl = strlen(f);
		if (fl > 4 && strcasecmp(f + fl - 4, ".eml") == 0)
			f[fl - 4] = '\0';
		return f;
	}
	snprintf(buf, sizeof(buf), "message-%s", section);
	return strdup(buf);
}

/* ---- from BODYSTRUCTURE ----------------------------------------------- */

static void imap_params(const struct mailimap_body_fld_param *fp,
	struct mime_param *out, size_t *n)
{
	*n = 0;
	if (!fp || !fp->pa_list)
		return;
	for (clistiter *it = clist_begin(fp->pa_list); it && *n < PARAMS_MAX;
	     it = clist_next(it)) {
		struct mailimap_single_body_fld_param *sp = clist_content(it);

		if (sp && sp->pa_name && sp->pa_value) {
			out[*n].name = sp->pa_name;
			out[*n].value = sp->pa_value;
			(*n)++;
		}
	}
}

static enum mime_transfer imap_te(const struct mailimap_body_fld_enc *e)
{
	if (!e)
		return MIME_TE_IDENTITY;
	switch (e->enc_type) {
	case MAILIMAP_BODY_FLD_ENC_7BIT:
	case MAILIMAP_BODY_FLD_ENC_8BIT:
	case MAILIMAP_BODY_FLD_ENC_BINARY:
		return MIME_TE_IDENTITY;
	case MAILIMAP_BODY_FLD_ENC_BASE64:
		return MIME_TE_BASE64;
	case MAILIMAP_BODY_FLD_ENC_QUOTED_PRINTABLE:
		return MIME_TE_QP;
	default:
		return mime_transfer_parse(e->enc_value ? e->enc_value : "x");
	}
}

static void imap_fields(struct part_info *p,
	const struct mailimap_body_fields *f,
	const struct mailimap_body_ext_1part *ext)
{
	if (f) {
		imap_params(f->bd_parameter, p->ct, &p->n_ct);
		p->te = imap_te(f->bd_encoding);
		p->size = f->bd_size;
	}
	if (ext && ext->bd_disposition) {
		p->disposition = ext->bd_disposition->dsp_type;
		imap_params(ext->bd_disposition->dsp_attributes, p->dsp,
			&p->n_dsp);
	}
}

static void imap_message(struct builder *b, struct mime_node *parent,
	const struct mailimap_body *body, const char *num, const char *name,
	int depth);

static void imap_body(struct builder *b, struct dir_state *ds,
	const struct mailimap_body *body, const char *num, bool in_multipart,
	int depth);

static void imap_multipart(struct builder *b, struct dir_state *ds,
	const struct mailimap_body_type_mpart *mp, const char *prefix,
	int depth)
{
	char sec[SECTION_MAX];
	size_t k = 0;

	if (!mp || !mp->bd_list)
		return;
	for (clistiter *it = clist_begin(mp->bd_list); it && !b->oom;
	     it = clist_next(it)) {
		child_section(sec, prefix, ++k);
		imap_body(b, ds, clist_content(it), sec, true, depth + 1);
	}
}

/* A body numbered num (for a message's own non-multipart body, num is
 * the message's number: its single part gets "num.1", or "1"). */
static void imap_body(struct builder *b, struct dir_state *ds,
	const struct mailimap_body *body, const char *num, bool in_multipart,
	int depth)
{
	struct part_info *p;
	const struct mailimap_body_type_1part *one;
	char sec[SECTION_MAX];

	if (!body)
		return;
	if (depth > MIME_DEPTH_MAX) {
		b->tree->truncated = true;
		return;
	}
	if (body->bd_type == MAILIMAP_BODY_MPART) {
		imap_multipart(b, ds, body->bd_data.bd_body_mpart, num, depth);
		return;
	}
	one = body->bd_data.bd_body_1part;
	if (!one)
		return;
	if (in_multipart)
		snprintf(sec, sizeof(sec), "%s", num);
	else
		child_section(sec, num, 1);
	p = calloc(1, sizeof(*p));
	if (!p) {
		b->oom = true;
		return;
	}
	switch (one->bd_type) {
	case MAILIMAP_BODY_TYPE_1PART_TEXT:
		if (!one->bd_data.bd_type_text)
			break;
		p->type = "text";
		p->subtype = one->bd_data.bd_type_text->bd_media_text;
		imap_fields(p, one->bd_data.bd_type_text->bd_fields,
			one->bd_ext_1part);
		leaf(b, ds, p, sec);
		break;
	case MAILIMAP_BODY_TYPE_1PART_BASIC: {
		const struct mailimap_body_type_basic *bb =
			one->bd_data.bd_type_basic;
		static const char *const types[] = {
			[MAILIMAP_MEDIA_BASIC_APPLICATION] = "application",
			[MAILIMAP_MEDIA_BASIC_AUDIO] = "audio",
			[MAILIMAP_MEDIA_BASIC_IMAGE] = "image",
			[MAILIMAP_MEDIA_BASIC_MESSAGE] = "message",
			[MAILIMAP_MEDIA_BASIC_VIDEO] = "video",
		};

		if (!bb || !bb->bd_media_basic)
			break;
		if (bb->bd_media_basic->med_type >= 0 &&
		    (size_t)bb->bd_media_basic->med_type <
		    sizeof(types) / sizeof(types[0]))
			p->type = types[bb->bd_media_basic->med_type];
		if (!p->type)
			p->type = bb->bd_media_basic->med_basic_type ?
				bb->bd_media_basic->med_basic_type : "application";
		p->subtype = bb->bd_media_basic->med_subtype;
		imap_fields(p, bb->bd_fields, one->bd_ext_1part);
		leaf(b, ds, p, sec);
		break;
	}
	case MAILIMAP_BODY_TYPE_1PART_MSG: {
		const struct mailimap_body_type_msg *m = one->bd_data.bd_type_msg;
		char *name;

		if (!m)
			break;
		p->type = "message";
		p->subtype = "rfc822";
		imap_fields(p, m->bd_fields, one->bd_ext_1part);
		name = message_dir_name(p, sec);
		if (!name) {
			b->oom = true;
			break;
		}
		imap_message(b, ds->dir, m->bd_body, sec, name, depth + 1);
		free(name);
		break;
	}
	default:
		break;
	}
	free(p);
}

/* A message numbered num ("" for the whole message): a directory. */
static void imap_message(struct builder *b, struct mime_node *parent,
	const struct mailimap_body *body, const char *num, const char *name,
	int depth)
{
	struct dir_state ds;
	char hsec[SECTION_MAX + 8];

	if (depth > MIME_DEPTH_MAX) {
		b->tree->truncated = true;
		return;
	}
	snprintf(hsec, sizeof(hsec), "%s%sHEADER", num, *num ? "." : "");
	if (!dir_begin(b, &ds, parent, name, num, hsec, 0, false, 0))
		return;
	imap_body(b, &ds, body, num, false, depth);
	dir_end(b, &ds);
}

struct mime_tree *mime_tree_from_bodystructure(const struct mailimap_body *body)
{
	struct builder b = { 0 };

	b.tree = calloc(1, sizeof(*b.tree));
	if (!b.tree)
		return NULL;
	imap_message(&b, NULL, body, "", "", 0);
	if (b.oom)
		mime_tree_free(&b.tree);
	return b.tree;
}

/* ---- from a raw message ----------------------------------------------- */

/* The length of the header block at h (up to and including the empty
 * line, or all of it). */
static size_t header_span(const char *h, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (h[i] != '\n')
			continue;
		if (i + 1 < len && h[i + 1] == '\n')
			return i + 2;
		if (i + 2 < len && h[i + 1] == '\r' && h[i + 2] == '\n')
			return i + 3;
	}
	if (len > 0 && h[0] == '\n')
		return 1;
	if (len > 1 && h[0] == '\r' && h[1] == '\n')
		return 2;
	return len;
}

static void raw_params(clist *list, struct mime_param *out, size_t *n)
{
	*n = 0;
	if (!list)
		return;
	for (clistiter *it = clist_begin(list); it && *n < PARAMS_MAX;
	     it = clist_next(it)) {
		struct mailmime_parameter *pa = clist_content(it);

		if (pa && pa->pa_name && pa->pa_value) {
			out[*n].name = pa->pa_name;
			out[*n].value = pa->pa_value;
			(*n)++;
		}
	}
}

static const char *raw_type(const struct mailmime_content *ct)
{
	static const char *const discrete[] = {
		[MAILMIME_DISCRETE_TYPE_TEXT] = "text",
		[MAILMIME_DISCRETE_TYPE_IMAGE] = "image",
		[MAILMIME_DISCRETE_TYPE_AUDIO] = "audio",
		[MAILMIME_DISCRETE_TYPE_VIDEO] = "video",
		[MAILMIME_DISCRETE_TYPE_APPLICATION] = "application",
	};
	const struct mailmime_type *t;

	if (!ct || !(t = ct->ct_type))
		return NULL;
	if (t->tp_type == MAILMIME_TYPE_DISCRETE_TYPE &&
	    t->tp_data.tp_discrete_type) {
		int dt = t->tp_data.tp_discrete_type->dt_type;

		if (dt >= 0 && (size_t)dt < sizeof(discrete) /
		    sizeof(discrete[0]) && discrete[dt])
			return discrete[dt];
		return t->tp_data.tp_discrete_type->dt_extension ?
			t->tp_data.tp_discrete_type->dt_extension :
			"application";
	}
	if (t->tp_type == MAILMIME_TYPE_COMPOSITE_TYPE &&
	    t->tp_data.tp_composite_type) {
		if (t->tp_data.tp_composite_type->ct_type ==
		    MAILMIME_COMPOSITE_TYPE_MESSAGE)
			return "message";
		if (t->tp_data.tp_composite_type->ct_type ==
		    MAILMIME_COMPOSITE_TYPE_MULTIPART)
			return "multipart";
		return t->tp_data.tp_composite_type->ct_token ?
			t->tp_data.tp_composite_type->ct_token : "application";
	}
	return NULL;
}

static void raw_fields(struct part_info *p, const struct mailmime *m)
{
	p->type = raw_type(m->mm_content_type);
	p->subtype = m->mm_content_type ? m->mm_content_type->ct_subtype : NULL;
	if (m->mm_content_type)
		raw_params(m->mm_content_type->ct_parameters, p->ct, &p->n_ct);
	p->te = MIME_TE_IDENTITY;
	if (!m->mm_mime_fields || !m->mm_mime_fields->fld_list)
		return;
	for (clistiter *it = clist_begin(m->mm_mime_fields->fld_list); it;
	     it = clist_next(it)) {
		struct mailmime_field *f = clist_content(it);

		if (f->fld_type == MAILMIME_FIELD_TRANSFER_ENCODING &&
		    f->fld_data.fld_encoding) {
			switch (f->fld_data.fld_encoding->enc_type) {
			case MAILMIME_MECHANISM_BASE64:
				p->te = MIME_TE_BASE64;
				break;
			case MAILMIME_MECHANISM_QUOTED_PRINTABLE:
				p->te = MIME_TE_QP;
				break;
			case MAILMIME_MECHANISM_TOKEN:
				p->te = mime_transfer_parse(
					f->fld_data.fld_encoding->enc_token ?
					f->fld_data.fld_encoding->enc_token :
					"x");
				break;
			default:
				p->te = MIME_TE_IDENTITY;
			}
		} else if (f->fld_type == MAILMIME_FIELD_DISPOSITION &&
			   f->fld_data.fld_disposition) {
			const struct mailmime_disposition *d =
				f->fld_data.fld_disposition;

			if (d->dsp_type)
				p->disposition = d->dsp_type->dsp_type ==
					MAILMIME_DISPOSITION_TYPE_ATTACHMENT ?
					"attachment" : "inline";
			p->n_dsp = 0;
			for (clistiter *j = d->dsp_parms ?
			     clist_begin(d->dsp_parms) : NULL;
			     j && p->n_dsp < PARAMS_MAX; j = clist_next(j)) {
				struct mailmime_disposition_parm *dp =
					clist_content(j);

				if (dp->pa_type ==
				    MAILMIME_DISPOSITION_PARM_FILENAME &&
				    dp->pa_data.pa_filename) {
					p->dsp[p->n_dsp].name = "filename";
					p->dsp[p->n_dsp++].value =
						dp->pa_data.pa_filename;
				} else if (dp->pa_type ==
					   MAILMIME_DISPOSITION_PARM_PARAMETER &&
					   dp->pa_data.pa_parameter &&
					   dp->pa_data.pa_parameter->pa_name &&
					   dp->pa_data.pa_parameter->pa_value) {
					p->dsp[p->n_dsp].name =
						dp->pa_data.pa_parameter->pa_name;
					p->dsp[p->n_dsp++].value =
						dp->pa_data.pa_parameter->pa_value;
				}
			}
		}
	}
}

/* The span of m's body in the raw message, if it lies inside it. */
static bool raw_body_span(const struct builder *b, const struct mailmime *m,
	uint64_t *off, uint64_t *len)
{
	const struct mailmime_data *d = m->mm_body;
	const char *s;

	if (!d || d->dt_type != MAILMIME_DATA_TEXT)
		return false;
	s = d->dt_data.dt_text.dt_data;
	if (!s || s < b->msg || s > b->msg + b->msg_len ||
	    d->dt_data.dt_text.dt_length > (size_t)(b->msg + b->msg_len - s))
		return false;
	*off = (uint64_t)(s - b->msg);
	*len = d->dt_data.dt_text.dt_length;
	return true;
}

static void raw_message(struct builder *b, struct mime_node *parent,
	const struct mailmime *inner, const char *num, const char *name,
	uint64_t hoff, uint64_t hlen, int depth);

static void raw_body(struct builder *b, struct dir_state *ds,
	const struct mailmime *m, const char *num, bool in_multipart,
	int depth)
{
	char sec[SECTION_MAX];
	struct part_info *p;
	uint64_t off = 0, len = 0;

	if (!m)
		return;
	if (depth > MIME_DEPTH_MAX) {
		b->tree->truncated = true;
		return;
	}
	if (m->mm_type == MAILMIME_MULTIPLE) {
		size_t k = 0;

		if (!m->mm_data.mm_multipart.mm_mp_list)
			return;
		for (clistiter *it = clist_begin(m->mm_data.mm_multipart.mm_mp_list);
		     it && !b->oom; it = clist_next(it)) {
			child_section(sec, num, ++k);
			raw_body(b, ds, clist_content(it), sec, true, depth + 1);
		}
		return;
	}
	if (in_multipart)
		snprintf(sec, sizeof(sec), "%s", num);
	else
		child_section(sec, num, 1);
	p = calloc(1, sizeof(*p));
	if (!p) {
		b->oom = true;
		return;
	}
	raw_fields(p, m);
	if (m->mm_type == MAILMIME_MESSAGE) {
		char *dname = message_dir_name(p, sec);
		uint64_t hlen = 0;

		/* the encapsulated message's header block starts its body */
		if (raw_body_span(b, m, &off, &len))
			hlen = header_span(b->msg + off, (size_t)len);
		if (!dname)
			b->oom = true;
		else
			raw_message(b, ds->dir, m->mm_data.mm_message.mm_msg_mime,
				sec, dname, off, hlen, depth + 1);
		free(dname);
	} else if (m->mm_type == MAILMIME_SINGLE) {
		if (raw_body_span(b, m, &off, &len)) {
			p->has_off = true;
			p->off = off;
			p->size = len;
		} else {
			p->has_off = true;	/* nothing: an empty body */
			p->off = 0;
			p->size = 0;
		}
		leaf(b, ds, p, sec);
	}
	free(p);
}

static void raw_message(struct builder *b, struct mime_node *parent,
	const struct mailmime *inner, const char *num, const char *name,
	uint64_t hoff, uint64_t hlen, int depth)
{
	struct dir_state ds;
	char hsec[SECTION_MAX + 8];

	if (depth > MIME_DEPTH_MAX) {
		b->tree->truncated = true;
		return;
	}
	snprintf(hsec, sizeof(hsec), "%s%sHEADER", num, *num ? "." : "");
	if (!dir_begin(b, &ds, parent, name, num, hsec, hlen, true, hoff))
		return;
	raw_body(b, &ds, inner, num, false, depth);
	dir_end(b, &ds);
}

struct mime_tree *mime_tree_from_message(const char *msg, size_t len)
{
	struct builder b = { .msg = msg, .msg_len = len };
	struct mailmime *mime = NULL;
	size_t idx = 0;
	uint64_t hlen = header_span(msg, len);

	b.tree = calloc(1, sizeof(*b.tree));
	if (!b.tree)
		return NULL;
	if (mailmime_parse(msg, len, &idx, &mime) == MAILIMF_NO_ERROR && mime &&
	    mime->mm_type == MAILMIME_MESSAGE) {
		raw_message(&b, NULL, mime->mm_data.mm_message.mm_msg_mime, "",
			"", 0, hlen, 0);
	} else {
		/* not MIME libetpan can read: headers, and the rest as text */
		struct dir_state ds;
		struct part_info p = { .has_off = true, .off = hlen,
			.size = len - hlen };

		if (dir_begin(&b, &ds, NULL, "", "", "HEADER", hlen, true, 0)) {
			leaf(&b, &ds, &p, "1");
			dir_end(&b, &ds);
		}
	}
	if (mime)
		mailmime_free(mime);
	if (b.oom)
		mime_tree_free(&b.tree);
	return b.tree;
}

/* ---- lookup and rendering --------------------------------------------- */

const struct mime_node *mime_node_child(const struct mime_node *dir,
	const char *name)
{
	if (!dir || dir->kind != MIME_NODE_DIR)
		return NULL;
	for (size_t i = 0; i < dir->n_children; i++)
		if (strcmp(dir->children[i].name, name) == 0)
			return &dir->children[i];
	return NULL;
}

char *mime_node_render(const struct mime_node *node, const char *raw,
	size_t len, size_t *out_len_r)
{
	struct mime_decoder d = { .te = node->transfer };
	char *dec, *text, *out;
	size_t dl, tl;

	if (node->kind == MIME_NODE_HEADERS)
		return mime_headers_text(raw, len, out_len_r);
	dec = malloc(len + 8);
	if (!dec)
		return NULL;
	dl = mime_decoder_feed(&d, raw, len, dec);
	dl += mime_decoder_finish(&d, dec + dl);
	text = mime_text_to_utf8(node->charset, dec, dl, &tl);
	free(dec);
	if (!text || !node->from_html) {
		if (text && out_len_r)
			*out_len_r = tl;
		return text;
	}
	out = mime_html_to_text(text, tl, out_len_r);
	free(text);
	return out;
}

/* ---- serialized form ---------------------------------------------------- */

/* version 1; per node: kind, transfer, flags (1: from_html, 2: raw
 * offset), u64 encoded_size, u64 raw_offset, u32 children, then name,
 * section and charset as u16 length (0xffff: none) and bytes; integers
 * little-endian. */
#define SER_VERSION 1
#define SER_NONE 0xffff

struct growbuf_s {
	char *p;
	size_t len, cap;
	bool failed;
};

static void put_bytes(struct growbuf_s *g, const void *p, size_t n)
{
	if (g->failed)
		return;
	if (g->len + n > g->cap) {
		size_t cap = g->cap ? g->cap * 2 : 1024;
		char *np;

		while (cap < g->len + n)
			cap *= 2;
		np = realloc(g->p, cap);
		if (!np) {
			g->failed = true;
			return;
		}
		g->p = np;
		g->cap = cap;
	}
	memcpy(g->p + g->len, p, n);
	g->len += n;
}

static void put_uint(struct growbuf_s *g, uint64_t v, size_t n)
{
	unsigned char b[8];

	for (size_t i = 0; i < n; i++)
		b[i] = (unsigned char)(v >> (8 * i));
	put_bytes(g, b, n);
}

static void put_str(struct growbuf_s *g, const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (s && n >= SER_NONE) {
		g->failed = true;	/* never: names are at most 255 bytes */
		return;
	}
	put_uint(g, s ? n : SER_NONE, 2);
	if (s)
		put_bytes(g, s, n);
}

static void put_node(struct growbuf_s *g, const struct mime_node *n)
{
	put_uint(g, (uint64_t)n->kind, 1);
	put_uint(g, (uint64_t)n->transfer, 1);
	put_uint(g, (n->from_html ? 1u : 0u) | (n->has_raw_offset ? 2u : 0u),
		1);
	put_uint(g, n->encoded_size, 8);
	put_uint(g, n->raw_offset, 8);
	put_uint(g, n->n_children, 4);
	put_str(g, n->name);
	put_str(g, n->section);
	put_str(g, n->charset);
	for (size_t i = 0; i < n->n_children; i++)
		put_node(g, &n->children[i]);
}

bool mime_tree_serialize(const struct mime_tree *tree, char **buf_r,
	size_t *len_r)
{
	struct growbuf_s g = { 0 };

	put_uint(&g, SER_VERSION, 1);
	put_uint(&g, tree->truncated ? 1 : 0, 1);
	put_node(&g, &tree->root);
	if (g.failed) {
		free(g.p);
		return false;
	}
	*buf_r = g.p;
	*len_r = g.len;
	return true;
}

struct reader_s {
	const unsigned char *p, *end;
	size_t nodes;
	bool bad;
};

static uint64_t get_uint(struct reader_s *r, size_t n)
{
	uint64_t v = 0;

	if (r->bad || (size_t)(r->end - r->p) < n) {
		r->bad = true;
		return 0;
	}
	for (size_t i = 0; i < n; i++)
		v |= (uint64_t)r->p[i] << (8 * i);
	r->p += n;
	return v;
}

static char *get_str(struct reader_s *r, bool *none_r)
{
	uint64_t n = get_uint(r, 2);
	char *s;

	*none_r = n == SER_NONE;
	if (r->bad || *none_r)
		return NULL;
	if ((size_t)(r->end - r->p) < n || memchr(r->p, '\0', n)) {
		r->bad = true;
		return NULL;
	}
	s = malloc(n + 1);	/* not strndup: the bytes are not terminated */
	if (!s) {
		r->bad = true;
		return NULL;
	}
	memcpy(s, r->p, n);
	s[n] = '\0';
	r->p += n;
	return s;
}

static bool get_node(struct reader_s *r, struct mime_node *n, int depth,
	bool root)
{
	uint64_t kind = get_uint(r, 1), te = get_uint(r, 1),
		flags = get_uint(r, 1), kids;
	bool none;

	n->encoded_size = get_uint(r, 8);
	n->raw_offset = get_uint(r, 8);
	kids = get_uint(r, 4);
	n->name = get_str(r, &none);
	if (!r->bad && none)
		r->bad = true;
	n->section = get_str(r, &none);
	if (!r->bad && none)
		r->bad = true;
	n->charset = get_str(r, &none);
	if (r->bad || kind > MIME_NODE_RAW || te > MIME_TE_UNKNOWN ||
	    flags > 3 || depth > 2 * MIME_DEPTH_MAX + 2 ||
	    (kind != MIME_NODE_DIR && kids) ||
	    kids > MIME_PARTS_MAX - r->nodes ||
	    (root ? *n->name != '\0' || kind != MIME_NODE_DIR :
	     !*n->name || strchr(n->name, '/') || *n->name == '.'))
		return false;
	n->kind = (enum mime_node_kind)kind;
	n->transfer = (enum mime_transfer)te;
	n->from_html = flags & 1;
	n->has_raw_offset = flags & 2;
	r->nodes += kids;
	if (!kids)
		return true;
	n->children = calloc(kids, sizeof(*n->children));
	if (!n->children)
		return false;
	n->n_children = kids;
	for (size_t i = 0; i < kids; i++)
		if (!get_node(r, &n->children[i], depth + 1, false))
			return false;
	return true;
}

struct mime_tree *mime_tree_deserialize(const char *buf, size_t len)
{
	struct reader_s r = { (const unsigned char *)buf,
		(const unsigned char *)buf + len, 0, false };
	struct mime_tree *t;

	if (get_uint(&r, 1) != SER_VERSION)
		return NULL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->truncated = get_uint(&r, 1) != 0;
	if (!get_node(&r, &t->root, 0, true) || r.p != r.end) {
		mime_tree_free(&t);
		return NULL;
	}
	t->n_nodes = r.nodes;
	return t;
}
