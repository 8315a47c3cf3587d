/* Outbox messages: validation, envelope, wire form.  See outbox_message.h.
 *
 * The header is split into fields here rather than by libetpan's
 * mailimf_fields_parse(): when one of its typed parsers fails (a To field
 * it cannot read, say) that function quietly keeps the field as an
 * "optional" one, so recipients could vanish without an error.  libetpan
 * parses each address field's value instead, and the result is checked:
 * its address parser drops spaces inside an addr-spec ("a@b c@d" becomes
 * "a@bc@d", "john doe"@x becomes "johndoe"@x) and stops at a NUL, so every
 * address must also appear verbatim in its field and pass our own grammar.
 */
#include "src/outbox_message.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <libetpan/libetpan.h>
#include <openssl/rand.h>

#include "src/errfmt.h"

/* Room for the fields render may add: From (an address and its name),
 * Date and Message-ID, each with CRLF. */
#define ADDED_FIELDS_MAX (2 * OUTBOX_ADDRESS_MAX + 256)
/* How much of a bad line or address an error message quotes. */
#define QUOTE_MAX 60
#define MSGID_RANDOM_BYTES 12

/* One header field in a CRLF buffer: [start, end) covers its first line
 * and continuation lines, with the final CRLF when there is one. */
struct hfield {
	size_t start;
	size_t name_len;
	size_t value;      /* just after the colon */
	size_t end;
};

struct header {
	struct hfield *fields;
	size_t n, cap;
	size_t end;        /* offset of the empty line, or the buffer length */
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */

/* A printable excerpt of s for error messages (control bytes as '?'). */
static const char *quote(const char *s, size_t len)
{
	char buf[QUOTE_MAX + 4];
	size_t i, n = len < QUOTE_MAX ? len : QUOTE_MAX;

	for (i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];

		buf[i] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
	}
	if (n < len) {
		memcpy(buf + n, "...", 3);
		n += 3;
	}
	buf[n] = '\0';
	return errfmt("%s", buf);
}

static bool is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

/* Length of the valid UTF-8 sequence at s (at most len bytes), 0 if
 * invalid.  Overlong forms and surrogates are invalid (RFC 3629). */
static size_t utf8_seq(const unsigned char *s, size_t len)
{
	size_t n, i;
	uint32_t cp;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf) {
		n = 2;
		cp = s[0] & 0x1f;
	} else if (s[0] >= 0xe0 && s[0] <= 0xef) {
		n = 3;
		cp = s[0] & 0x0f;
	} else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
		n = 4;
		cp = s[0] & 0x07;
	} else {
		return 0;
	}
	if (len < n)
		return 0;
	for (i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
	    cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

bool outbox_address_is_utf8(const char *addr)
{
	for (; *addr != '\0'; addr++)
		if ((unsigned char)*addr >= 0x80)
			return true;
	return false;
}

bool outbox_address_equal(const char *a, const char *b)
{
	return strcasecmp(a, b) == 0;
}

/* ------------------------------------------------------------------ */
/* Address grammar (RFC 5321 Mailbox, with RFC 6531 UTF-8)             */

static bool is_atext(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c >= '0' && c <= '9') || c >= 0x80 ||
	       strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

/* RFC 5321 section 4.5.3.1: local part and domain, in octets; RFC 1035:
 * one label of a domain name. */
#define LOCAL_PART_MAX 64
#define DOMAIN_MAX 255
#define LABEL_MAX 63

static int check_local_part(const char *s, size_t len, const char **error_r)
{
	size_t i;

	if (len == 0) {
		*error_r = "the part before '@' is empty";
		return -1;
	}
	if (len > LOCAL_PART_MAX) {
		*error_r = errfmt("the part before '@' is longer than %d octets",
			LOCAL_PART_MAX);
		return -1;
	}
	if (s[0] == '"') {
		if (len < 2 || s[len - 1] != '"') {
			*error_r = "unbalanced quotes before '@'";
			return -1;
		}
		for (i = 1; i < len - 1; i++) {
			if (s[i] == '\\') {
				i++;
				if (i == len - 1) {
					*error_r = "a backslash ends the quoted part";
					return -1;
				}
			} else if (s[i] == '"') {
				*error_r = "a quote inside the quoted part";
				return -1;
			}
		}
		return 0;
	}
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '@') {
			*error_r = "more than one '@' (a missing comma between"
				" addresses?)";
			return -1;
		}
		if (c != '.' && !is_atext(c)) {
			*error_r = errfmt("the character '%c' is not allowed"
				" before '@' without quotes", c);
			return -1;
		}
	}
	return 0;
}

static int check_domain(const char *s, size_t len, const char **error_r)
{
	size_t i, label = 0;

	if (len == 0) {
		*error_r = "the domain after '@' is empty";
		return -1;
	}
	if (len > DOMAIN_MAX) {
		*error_r = errfmt("the domain after '@' is longer than %d"
			" octets", DOMAIN_MAX);
		return -1;
	}
	if (s[0] == '[') {
		if (len < 3 || s[len - 1] != ']') {
			*error_r = "unbalanced brackets in the domain";
			return -1;
		}
		for (i = 1; i < len - 1; i++) {
			unsigned char c = (unsigned char)s[i];

			/* libetpan's header parser stops at a ':' in an
			 * address literal, so an IPv6 literal could be
			 * checked here but not read back from a header. */
			if (c == ':') {
				*error_r = "IPv6 address literals are not"
					" supported";
				return -1;
			}
			if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
			      (c >= 'A' && c <= 'Z') || c == '.' || c == '-')) {
				*error_r = "bad character in the address literal";
				return -1;
			}
		}
		return 0;
	}
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '.') {
			if (label == 0) {
				*error_r = "empty label in the domain";
				return -1;
			}
			label = 0;
			continue;
		}
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
		      (c >= 'A' && c <= 'Z') || c == '-' || c >= 0x80)) {
			*error_r = errfmt("the character '%c' is not allowed in"
				" a domain", c);
			return -1;
		}
		if (++label > LABEL_MAX) {
			*error_r = errfmt("a label of the domain is longer than"
				" %d octets", LABEL_MAX);
			return -1;
		}
	}
	if (label == 0) {
		*error_r = "the domain ends with a dot";
		return -1;
	}
	return 0;
}

int outbox_address_check(const char *addr, const char **error_r)
{
	const unsigned char *s = (const unsigned char *)addr;
	size_t len = strlen(addr), i, n;
	const char *at;

	if (len == 0) {
		*error_r = "empty address";
		return -1;
	}
	if (len > OUTBOX_ADDRESS_MAX) {
		*error_r = errfmt("address longer than %d octets",
			OUTBOX_ADDRESS_MAX);
		return -1;
	}
	for (i = 0; i < len; i += n) {
		if (s[i] == '\r' || s[i] == '\n') {
			*error_r = "address contains a line break";
			return -1;
		}
		if (s[i] < 0x20 || s[i] == 0x7f) {
			*error_r = "address contains a control character";
			return -1;
		}
		if (s[i] == ' ' || s[i] == '<' || s[i] == '>') {
			*error_r = "address contains a space or an angle bracket";
			return -1;
		}
		n = utf8_seq(s + i, len - i);
		if (n == 0) {
			*error_r = "address is not valid UTF-8";
			return -1;
		}
	}
	/* A quoted local part may itself hold '@': split at the last. */
	at = strrchr(addr, '@');
	if (at == NULL) {
		*error_r = "address has no '@domain'";
		return -1;
	}
	if (check_local_part(addr, (size_t)(at - addr), error_r) < 0)
		return -1;
	return check_domain(at + 1, len - (size_t)(at - addr) - 1, error_r);
}

/* ------------------------------------------------------------------ */
/* Line ends and header fields                                         */

/* Copies src to dst with every CR, LF and CRLF written as CRLF; dst
 * needs 2 * len bytes.  Returns the length written. */
static size_t crlf_copy(char *dst, const char *src, size_t len)
{
	size_t i, o = 0;

	for (i = 0; i < len; i++) {
		char c = src[i];

		if (c == '\r') {
			if (i + 1 < len && src[i + 1] == '\n')
				i++;
			dst[o++] = '\r';
			dst[o++] = '\n';
		} else if (c == '\n') {
			dst[o++] = '\r';
			dst[o++] = '\n';
		} else {
			dst[o++] = c;
		}
	}
	return o;
}

static int crlf_dup(const char *data, size_t len, char **buf_r,
	size_t *len_r, const char **error_r)
{
	char *buf;

	if (len > (SIZE_MAX - 1) / 2) {
		*error_r = "message too large";
		return -1;
	}
	buf = malloc(2 * len + 1);
	if (buf == NULL) {
		*error_r = "out of memory";
		return -1;
	}
	*len_r = crlf_copy(buf, data, len);
	*buf_r = buf;
	return 0;
}

static int header_add(struct header *h, const struct hfield *f,
	const char **error_r)
{
	if (h->n == h->cap) {
		size_t cap = h->cap != 0 ? 2 * h->cap : 32;
		struct hfield *p = realloc(h->fields, cap * sizeof(*p));

		if (p == NULL) {
			*error_r = "out of memory";
			return -1;
		}
		h->fields = p;
		h->cap = cap;
	}
	h->fields[h->n++] = *f;
	return 0;
}

/* Splits the header of a CRLF buffer into fields. */
static int header_scan(const char *buf, size_t len, struct header *h,
	const char **error_r)
{
	size_t pos = 0;
	unsigned line = 0;

	memset(h, 0, sizeof(*h));
	h->end = len;
	if (len == 0) {
		*error_r = "the message is empty";
		return -1;
	}
	while (pos < len) {
		const char *eol = memmem(buf + pos, len - pos, "\r\n", 2);
		size_t next = eol != NULL ? (size_t)(eol - buf) + 2 : len;
		size_t line_len = (eol != NULL ? (size_t)(eol - buf) : len) - pos;

		line++;
		if (line_len == 0) {
			h->end = pos;
			break;
		}
		if (is_wsp(buf[pos])) {
			if (h->n == 0) {
				*error_r = "the header's first line starts with"
					" white space";
				goto out_free;
			}
			h->fields[h->n - 1].end = next;
		} else {
			struct hfield f = { .start = pos };
			size_t i = pos;

			while (i < pos + line_len && buf[i] > ' ' &&
			       buf[i] < 0x7f && buf[i] != ':')
				i++;
			f.name_len = i - pos;
			while (i < pos + line_len && is_wsp(buf[i]))
				i++;
			if (f.name_len == 0 || i == pos + line_len ||
			    buf[i] != ':') {
				*error_r = errfmt("line %u of the header is not"
					" a field (\"Name: value\"): %s", line,
					quote(buf + pos, line_len));
				goto out_free;
			}
			f.value = i + 1;
			f.end = next;
			if (header_add(h, &f, error_r) < 0)
				goto out_free;
		}
		pos = next;
	}
	return 0;

out_free:
	free(h->fields);
	h->fields = NULL;
	return -1;
}

static bool field_is(const char *buf, const struct hfield *f,
	const char *name)
{
	return f->name_len == strlen(name) &&
	       strncasecmp(buf + f->start, name, f->name_len) == 0;
}

/* The field's value without its final CRLF. */
static size_t field_value_len(const char *buf, const struct hfield *f)
{
	size_t end = f->end;

	if (end - f->value >= 2 && buf[end - 2] == '\r' && buf[end - 1] == '\n')
		end -= 2;
	return end - f->value;
}

static bool is_blank(const char *s, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (!is_wsp(s[i]) && s[i] != '\r' && s[i] != '\n')
			return false;
	return true;
}

/* Skips white space, folding and (nested) comments from *pos; true if
 * that reaches the end of the value. */
static bool only_cfws_left(const char *s, size_t len, size_t pos)
{
	int depth = 0;

	while (pos < len) {
		char c = s[pos];

		if (depth > 0 && c == '\\') {
			pos += 2;
			continue;
		}
		if (c == '(') {
			depth++;
		} else if (c == ')' && depth > 0) {
			depth--;
		} else if (depth == 0 && !is_wsp(c) && c != '\r' && c != '\n') {
			return false;
		}
		pos++;
	}
	return depth == 0;
}

/* ------------------------------------------------------------------ */
/* Envelope extraction                                                 */

struct collect {
	struct outbox_message *msg;
	size_t cap;
};

static int rcpt_add(struct collect *c, const char *addr, const char **error_r)
{
	struct outbox_message *msg = c->msg;
	size_t i;

	for (i = 0; i < msg->n_rcpts; i++)
		if (outbox_address_equal(msg->rcpts[i], addr))
			return 0;
	if (msg->n_rcpts == c->cap) {
		size_t cap = c->cap != 0 ? 2 * c->cap : 8;
		char **p = realloc(msg->rcpts, cap * sizeof(*p));

		if (p == NULL) {
			*error_r = "out of memory";
			return -1;
		}
		msg->rcpts = p;
		c->cap = cap;
	}
	msg->rcpts[msg->n_rcpts] = strdup(addr);
	if (msg->rcpts[msg->n_rcpts] == NULL) {
		*error_r = "out of memory";
		return -1;
	}
	msg->n_rcpts++;
	return 0;
}

/* Checks one parsed address against the grammar and its field's text. */
static int check_parsed(const char *field, const char *value, size_t vlen,
	const char *addr, const char **error_r)
{
	const char *why;

	if (outbox_address_check(addr, &why) < 0) {
		*error_r = errfmt("%s: the address %s is not usable: %s",
			field, quote(addr, strlen(addr)), why);
		return -1;
	}
	if (memmem(value, vlen, addr, strlen(addr)) == NULL) {
		*error_r = errfmt("%s: the address %s is not written plainly"
			" (folded, or with spaces or comments inside)", field,
			quote(addr, strlen(addr)));
		return -1;
	}
	return 0;
}

static int collect_mailbox_list(struct collect *c, const char *field,
	const char *value, size_t vlen, struct mailimf_mailbox_list *mbl,
	const char **error_r)
{
	clistiter *it;

	if (mbl == NULL)
		return 0;
	for (it = clist_begin(mbl->mb_list); it != NULL; it = clist_next(it)) {
		struct mailimf_mailbox *mb = clist_content(it);

		if (check_parsed(field, value, vlen, mb->mb_addr_spec,
			error_r) < 0)
			return -1;
		if (rcpt_add(c, mb->mb_addr_spec, error_r) < 0)
			return -1;
	}
	return 0;
}

/* To, Cc or Bcc: an address list, groups included; blank is allowed. */
static int collect_rcpt_field(struct collect *c, const char *buf,
	const struct hfield *f, const char **error_r)
{
	const char *value = buf + f->value;
	size_t vlen = field_value_len(buf, f), idx = 0;
	char field[16];
	struct mailimf_address_list *list = NULL;
	clistiter *it;
	int r, res = -1;

	snprintf(field, sizeof(field), "%.*s", (int)f->name_len,
		buf + f->start);
	if (is_blank(value, vlen))
		return 0;
	r = mailimf_address_list_parse(value, vlen, &idx, &list);
	if (r == MAILIMF_ERROR_MEMORY) {
		*error_r = "out of memory";
		return -1;
	}
	if (r != MAILIMF_NO_ERROR || !only_cfws_left(value, vlen, idx)) {
		*error_r = errfmt("%s: cannot parse the address list near %s",
			field, quote(value + idx, vlen - idx));
		goto out_free;
	}
	for (it = clist_begin(list->ad_list); it != NULL; it = clist_next(it)) {
		struct mailimf_address *a = clist_content(it);

		if (a->ad_type == MAILIMF_ADDRESS_MAILBOX) {
			if (check_parsed(field, value, vlen,
				a->ad_data.ad_mailbox->mb_addr_spec, error_r) < 0 ||
			    rcpt_add(c, a->ad_data.ad_mailbox->mb_addr_spec,
				error_r) < 0)
				goto out_free;
		} else if (collect_mailbox_list(c, field, value, vlen,
				a->ad_data.ad_group->grp_mb_list, error_r) < 0) {
			goto out_free;
		}
	}
	res = 0;
out_free:
	if (list != NULL)
		mailimf_address_list_free(list);
	return res;
}

/* From (a mailbox list) or Sender (one mailbox): the first address, and
 * how many the field lists.  *addr_r is malloc'd. */
static int parse_originator(const char *buf, const struct hfield *f,
	bool single, char **addr_r, size_t *count_r, const char **error_r)
{
	const char *value = buf + f->value;
	size_t vlen = field_value_len(buf, f), idx = 0;
	const char *name = single ? "Sender" : "From";
	struct mailimf_mailbox_list *list = NULL;
	struct mailimf_mailbox *mb = NULL;
	clistiter *it;
	int r, res = -1;

	if (single)
		r = mailimf_mailbox_parse(value, vlen, &idx, &mb);
	else
		r = mailimf_mailbox_list_parse(value, vlen, &idx, &list);
	if (r == MAILIMF_ERROR_MEMORY) {
		*error_r = "out of memory";
		return -1;
	}
	if (r != MAILIMF_NO_ERROR || !only_cfws_left(value, vlen, idx)) {
		if (is_blank(value, vlen))
			*error_r = errfmt("the %s field is empty", name);
		else
			*error_r = errfmt("%s: cannot parse the address near %s",
				name, quote(value + idx, vlen - idx));
		goto out_free;
	}
	if (single) {
		*count_r = 1;
	} else {
		*count_r = 0;
		for (it = clist_begin(list->mb_list); it != NULL;
		     it = clist_next(it)) {
			struct mailimf_mailbox *m = clist_content(it);

			if (check_parsed(name, value, vlen, m->mb_addr_spec,
				error_r) < 0)
				goto out_free;
			if (mb == NULL)
				mb = m;
			(*count_r)++;
		}
	}
	if (mb == NULL) {
		*error_r = errfmt("the %s field names no address", name);
		goto out_free;
	}
	if (check_parsed(name, value, vlen, mb->mb_addr_spec, error_r) < 0)
		goto out_free;
	*addr_r = strdup(mb->mb_addr_spec);
	if (*addr_r == NULL) {
		*error_r = "out of memory";
		goto out_free;
	}
	res = 0;
out_free:
	if (list != NULL)
		mailimf_mailbox_list_free(list);
	else if (mb != NULL)
		mailimf_mailbox_free(mb);
	return res;
}

void outbox_message_clear(struct outbox_message *msg)
{
	size_t i;

	free(msg->sender);
	for (i = 0; i < msg->n_rcpts; i++)
		free(msg->rcpts[i]);
	free(msg->rcpts);
	memset(msg, 0, sizeof(*msg));
}

/* Walks the fields of a parsed header and fills msg. */
static int parse_fields(const char *buf, const struct header *h,
	const char *default_from, struct outbox_message *msg,
	const char **error_r)
{
	static const char *const rcpt_fields[] = { "To", "Cc", "Bcc" };
	struct collect c = { .msg = msg };
	char *from = NULL, *sender = NULL;
	size_t i, k, from_count = 0, n;
	int res = -1;

	for (i = 0; i < h->n; i++) {
		const struct hfield *f = &h->fields[i];

		if (field_is(buf, f, "From")) {
			if (msg->has_from) {
				*error_r = "the header has more than one From field";
				goto out_free;
			}
			msg->has_from = true;
			if (parse_originator(buf, f, false, &from, &from_count,
				error_r) < 0)
				goto out_free;
		} else if (field_is(buf, f, "Sender")) {
			if (sender != NULL) {
				*error_r = "the header has more than one Sender field";
				goto out_free;
			}
			if (parse_originator(buf, f, true, &sender, &n,
				error_r) < 0)
				goto out_free;
		} else if (field_is(buf, f, "Date")) {
			msg->has_date = true;
		} else if (field_is(buf, f, "Message-ID")) {
			msg->has_message_id = true;
		}
	}
	/* Recipients in To, Cc, Bcc order whatever the field order. */
	for (k = 0; k < sizeof(rcpt_fields) / sizeof(rcpt_fields[0]); k++)
		for (i = 0; i < h->n; i++)
			if (field_is(buf, &h->fields[i], rcpt_fields[k]) &&
			    collect_rcpt_field(&c, buf, &h->fields[i],
				error_r) < 0)
				goto out_free;

	if (from != NULL) {
		/* Several authors: Sender names the one responsible. */
		if (from_count > 1 && sender != NULL) {
			msg->sender = sender;
			sender = NULL;
		} else {
			msg->sender = from;
			from = NULL;
		}
	} else if (default_from != NULL && default_from[0] != '\0') {
		const char *why;

		if (outbox_address_check(default_from, &why) < 0) {
			*error_r = errfmt("the configured sender %s is not"
				" usable: %s", quote(default_from,
				strlen(default_from)), why);
			goto out_free;
		}
		msg->sender = strdup(default_from);
		if (msg->sender == NULL) {
			*error_r = "out of memory";
			goto out_free;
		}
	} else {
		*error_r = "no sender: the message has no From field and no"
			" from= address is configured";
		goto out_free;
	}
	if (msg->n_rcpts == 0) {
		*error_r = "no recipient: the message has no To, Cc or Bcc"
			" address";
		goto out_free;
	}
	msg->smtputf8 = outbox_address_is_utf8(msg->sender);
	for (i = 0; i < msg->n_rcpts; i++)
		if (outbox_address_is_utf8(msg->rcpts[i]))
			msg->smtputf8 = true;
	res = 0;
out_free:
	free(from);
	free(sender);
	return res;
}

int outbox_message_parse(const char *data, size_t len,
	const char *default_from, struct outbox_message *msg_r,
	const char **error_r)
{
	struct header h;
	const char *nul;
	char *buf;
	size_t blen, i;
	int res = -1;

	memset(msg_r, 0, sizeof(*msg_r));
	nul = memchr(data, '\0', len);
	if (nul != NULL) {
		*error_r = errfmt("the message contains a NUL byte (at offset"
			" %zu)", (size_t)(nul - data));
		return -1;
	}
	for (i = 0; i < len; i++)
		if ((unsigned char)data[i] >= 0x80) {
			msg_r->eight_bit = true;
			break;
		}
	if (crlf_dup(data, len, &buf, &blen, error_r) < 0)
		return -1;
	if (header_scan(buf, blen, &h, error_r) < 0)
		goto out_buf;
	if (h.n == 0) {
		*error_r = "the message has no header";
		goto out_header;
	}
	if (parse_fields(buf, &h, default_from, msg_r, error_r) < 0) {
		outbox_message_clear(msg_r);
		goto out_header;
	}
	res = 0;
out_header:
	free(h.fields);
out_buf:
	free(buf);
	return res;
}

/* ------------------------------------------------------------------ */
/* Rendering                                                           */

int outbox_message_id(const char *data, size_t len, char *buf, size_t size)
{
	struct header h;
	const char *error;
	int found = -1;

	if (header_scan(data, len, &h, &error) < 0)
		return -1;
	for (size_t i = 0; i < h.n && found < 0; i++) {
		const struct hfield *f = &h.fields[i];
		const char *v = data + f->value;
		size_t vlen = field_value_len(data, f), a = 0, b;

		if (!field_is(data, f, "Message-ID"))
			continue;
		while (a < vlen && v[a] != '<')
			a++;
		for (b = a; b < vlen && v[b] != '>'; b++)
			if (v[b] <= ' ' || v[b] >= 0x7f || v[b] == '"' ||
			    v[b] == '\\')
				break;
		if (a < vlen && b < vlen && v[b] == '>' && b - a > 1 &&
		    b - a + 1 <= OUTBOX_MESSAGE_ID_MAX && b - a + 1 < size) {
			memcpy(buf, v + a, b - a + 1);
			buf[b - a + 1] = '\0';
			found = 0;
		}
		break;   /* only the first Message-ID field counts */
	}
	free(h.fields);
	return found;
}

void outbox_format_date(time_t t, char *buf, size_t size)
{
	static const char *const days[] = {
		"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat",
	};
	static const char *const months[] = {
		"Jan", "Feb", "Mar", "Apr", "May", "Jun",
		"Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
	};
	struct tm tm;
	long off;

	if (localtime_r(&t, &tm) == NULL) {
		snprintf(buf, size, "Thu, 01 Jan 1970 00:00:00 +0000");
		return;
	}
	off = tm.tm_gmtoff / 60;
	snprintf(buf, size, "%s, %02d %s %04d %02d:%02d:%02d %c%02ld%02ld",
		days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12],
		tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec,
		off < 0 ? '-' : '+', labs(off) / 60, labs(off) % 60);
}

/* The right-hand side for a new Message-ID. */
static const char *msgid_domain(const char *sender)
{
	const char *at = sender != NULL ? strrchr(sender, '@') : NULL;
	const char *d;

	if (at == NULL || at[1] == '\0')
		return "localhost";
	for (d = at + 1; *d != '\0'; d++)
		if (!((*d >= 'a' && *d <= 'z') || (*d >= 'A' && *d <= 'Z') ||
		      (*d >= '0' && *d <= '9') || *d == '.' || *d == '-'))
			return "localhost";
	return at + 1;
}

static int format_message_id(const char *sender, time_t now, char *buf,
	size_t size, const char **error_r)
{
	unsigned char rnd[MSGID_RANDOM_BYTES];
	char hex[2 * MSGID_RANDOM_BYTES + 1];
	struct tm tm;
	size_t i;

	if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
		*error_r = "no random bytes for a Message-ID";
		return -1;
	}
	for (i = 0; i < sizeof(rnd); i++)
		snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
	if (gmtime_r(&now, &tm) == NULL)
		memset(&tm, 0, sizeof(tm));
	snprintf(buf, size, "<%04d%02d%02d%02d%02d%02d.%s@%s>",
		tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		tm.tm_min, tm.tm_sec, hex, msgid_domain(sender));
	return 0;
}

/* The fields OUTBOX_RENDER_COMPLETE adds, CRLF-terminated, into buf. */
static int added_fields(const struct outbox_message *msg, time_t now,
	char *buf, size_t size, const char **error_r)
{
	char date[64], msgid[OUTBOX_ADDRESS_MAX + 64];
	size_t used = 0;
	int n;

	buf[0] = '\0';
	if (!msg->has_from) {
		n = snprintf(buf, size, "From: %s\r\n", msg->sender);
		if (n < 0 || (size_t)n >= size)
			goto out_long;
		used = (size_t)n;
	}
	if (!msg->has_date) {
		outbox_format_date(now, date, sizeof(date));
		n = snprintf(buf + used, size - used, "Date: %s\r\n", date);
		if (n < 0 || (size_t)n >= size - used)
			goto out_long;
		used += (size_t)n;
	}
	if (!msg->has_message_id) {
		if (format_message_id(msg->sender, now, msgid, sizeof(msgid),
			error_r) < 0)
			return -1;
		n = snprintf(buf + used, size - used, "Message-ID: %s\r\n",
			msgid);
		if (n < 0 || (size_t)n >= size - used)
			goto out_long;
	}
	return 0;

out_long:
	*error_r = "sender address too long";
	return -1;
}

int outbox_message_render(const char *data, size_t len,
	const struct outbox_message *msg, unsigned flags, time_t now,
	char **out_r, size_t *out_len_r, const char **error_r)
{
	char extra[ADDED_FIELDS_MAX];
	struct header h;
	char *buf, *out;
	size_t blen, i, o = 0, extra_len = 0;
	bool need_crlf = false;

	extra[0] = '\0';
	if ((flags & OUTBOX_RENDER_COMPLETE) != 0) {
		if (msg == NULL || msg->sender == NULL) {
			*error_r = "no sender known for the added fields";
			return -1;
		}
		if (added_fields(msg, now, extra, sizeof(extra), error_r) < 0)
			return -1;
		extra_len = strlen(extra);
	}
	if (crlf_dup(data, len, &buf, &blen, error_r) < 0)
		return -1;
	if (header_scan(buf, blen, &h, error_r) < 0) {
		free(buf);
		return -1;
	}
	/* The result is never longer than the CRLF form, an added CRLF and
	 * the added fields. */
	out = malloc(blen + 2 + extra_len + 1);
	if (out == NULL) {
		*error_r = "out of memory";
		free(h.fields);
		free(buf);
		return -1;
	}
	for (i = 0; i < h.n; i++) {
		const struct hfield *f = &h.fields[i];

		if ((flags & OUTBOX_RENDER_STRIP_BCC) != 0 &&
		    (field_is(buf, f, "Bcc") || field_is(buf, f, "Resent-Bcc")))
			continue;
		memcpy(out + o, buf + f->start, f->end - f->start);
		o += f->end - f->start;
		need_crlf = f->end - f->start < 2 || buf[f->end - 1] != '\n';
	}
	if (extra_len > 0) {
		/* Only the last line of a header-only message lacks CRLF. */
		if (need_crlf) {
			memcpy(out + o, "\r\n", 2);
			o += 2;
		}
		memcpy(out + o, extra, extra_len);
		o += extra_len;
	}
	memcpy(out + o, buf + h.end, blen - h.end);
	o += blen - h.end;

	free(h.fields);
	free(buf);
	*out_r = out;
	*out_len_r = o;
	return 0;
}
