/* Unit tests for the parts of a message: decoders (src/mime_decode.c),
 * text (src/mime_text.c) and the tree (src/mime_parts.c), from a raw
 * message and from a BODYSTRUCTURE as libetpan parses it. */
#include "src/mime_parts.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libetpan/libetpan.h>

#include "src/mime_decode.h"
#include "src/mime_text.h"
#include "tests/unit/check.h"

static char *decode_all(enum mime_transfer te, const char *in, size_t len,
	size_t chunk, size_t *out_len)
{
	struct mime_decoder d = { .te = te };
	char *out = malloc(len + 8);
	size_t n = 0;

	for (size_t i = 0; i < len; i += chunk)
		n += mime_decoder_feed(&d, in + i, len - i < chunk ? len - i :
			chunk, out + n);
	n += mime_decoder_finish(&d, out + n);
	*out_len = n;
	return out;
}

static void test_decoders(void)
{
	static const char b64[] = "SGVsbG8s\r\nIHdvcmxk\r\nIQ==\r\n";
	static const char qp[] = "caf=C3=A9 =3D x=\r\ny=\n= z=4";
	size_t n;

	for (size_t chunk = 1; chunk < 30; chunk++) {
		char *o = decode_all(MIME_TE_BASE64, b64, strlen(b64), chunk, &n);

		CHECK(n == 13 && memcmp(o, "Hello, world!", 13) == 0,
			"chunk %zu: %.*s", chunk, (int)n, o);
		free(o);
		o = decode_all(MIME_TE_QP, qp, strlen(qp), chunk, &n);
		CHECK(n == 15 && memcmp(o, "caf\xc3\xa9 = xy= z=4", 15) == 0,
			"chunk %zu: %zu %.*s", chunk, n, (int)n, o);
		free(o);
	}
	CHECK(mime_transfer_parse(" Base64 ") == MIME_TE_BASE64);
	CHECK(mime_transfer_parse("Quoted-Printable") == MIME_TE_QP);
	CHECK(mime_transfer_parse(NULL) == MIME_TE_IDENTITY);
	CHECK(mime_transfer_parse("x-uuencode") == MIME_TE_UNKNOWN);
}

/* Every decoded range of a long base64 body, fetched by its encoded
 * range alone, decodes to the same bytes as the whole. */
static void test_b64_ranges(void)
{
	static const char alpha[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	unsigned char data[1000];
	char enc[2000];
	size_t el = 0, line = 0;
	uint32_t seed = 7;
	struct mime_b64_layout l;

	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (unsigned char)check_xorshift(&seed);
	for (size_t i = 0; i < sizeof(data); i += 3) {
		uint32_t v = (uint32_t)data[i] << 16;
		size_t k = sizeof(data) - i;

		v |= (k > 1 ? (uint32_t)data[i + 1] << 8 : 0) |
			(k > 2 ? data[i + 2] : 0);
		enc[el++] = alpha[v >> 18];
		enc[el++] = alpha[(v >> 12) & 63];
		enc[el++] = k > 1 ? alpha[(v >> 6) & 63] : '=';
		enc[el++] = k > 2 ? alpha[v & 63] : '=';
		if ((line += 4) == 76) {
			enc[el++] = '\r';
			enc[el++] = '\n';
			line = 0;
		}
	}
	enc[el++] = '\r';
	enc[el++] = '\n';
	CHECK(mime_b64_layout_guess(enc, el, &l) && l.line_chars == 76 &&
		l.eol_len == 2);
	for (uint64_t off = 0; off < sizeof(data); off += 37) {
		for (uint64_t len = 1; off + len <= sizeof(data); len += 101) {
			uint64_t eo, elen, skip;
			size_t n;
			char out[1000];

			mime_b64_encoded_range(&l, off, len, &eo, &elen, &skip);
			if (eo + elen > el)
				elen = el - eo;
			CHECK(mime_b64_range_decode(&l, eo, enc + eo, elen,
				eo + elen == el, skip, len, out, &n));
			CHECK(n == len && memcmp(out, data + off, len) == 0,
				"off %llu len %llu",
				(unsigned long long)off, (unsigned long long)len);
		}
	}
	/* a short line in the middle: the ranges after it are refused */
	{
		static const char body[] = "QUJDREVG\r\nQUJD\r\nQUJDREVG\r\n"
			"QUJDREVG\r\n";
		uint64_t eo, elen, skip;
		size_t n;
		char out[16];

		CHECK(mime_b64_layout_guess(body, sizeof(body) - 1, &l));
		mime_b64_encoded_range(&l, 12, 3, &eo, &elen, &skip);
		CHECK(!mime_b64_range_decode(&l, eo, body + eo, elen, false,
			skip, 3, out, &n));
	}
	/* a line end where the layout has none */
	CHECK(!mime_b64_chunk_fits(&l, 0, "QUJD\r\nQUJD", 10));
	CHECK(!mime_b64_layout_guess("QUJ\r\n", 5, &l));
}

static void expect(const char *what, char *got, const char *want)
{
	CHECK(got && strcmp(got, want) == 0, "%s: got \"%s\" want \"%s\"",
		what, got ? got : "(null)", want);
	free(got);
}

static void test_text(void)
{
	struct mime_param p1[] = {
		{ "filename*0*", "utf-8''%E2%82%AC%20" },
		{ "filename*1", "report.pdf" },
	};
	struct mime_param p2[] = {
		{ "name", "=?iso-8859-1?q?caf=E9?= list.txt" },
		{ "name*", "iso-8859-1'fr'caf%E9.txt" },
	};
	struct mime_param p3[] = { { "NAME", "=?utf-8?b?w6l0w6k=?=" } };
	const char hdr[] = "Subject: =?utf-8?q?caf=C3=A9?=\r\n"
		" folded\r\nX-Bad: a\x01" "b\r\nnot a field\r\n\r\nbody: x\r\n";
	const char html[] = "<html><head><title>t</title><style>p{}</style>"
		"</head><body><p>Hello&nbsp;&amp; <b>bye</b></p>"
		"<script>x()</script>caf&#233;&#x20AC;<br>end</body></html>";
	size_t n;

	expect("2231 continuation", mime_param_get(p1, 2, "filename"),
		"\xe2\x82\xac report.pdf");
	expect("2231 wins", mime_param_get(p2, 2, "name"), "caf\xc3\xa9.txt");
	expect("2047", mime_param_get(p3, 1, "name"), "\xc3\xa9t\xc3\xa9");
	expect("absent", mime_param_get(p3, 1, "filename") ?:
		strdup("(none)"), "(none)");
	expect("headers", mime_headers_text(hdr, sizeof(hdr) - 1, &n),
		"Subject: caf\xc3\xa9 folded\nX-Bad: a b\n");
	expect("html", mime_html_to_text(html, sizeof(html) - 1, &n),
		"Hello & bye\ncaf\xc3\xa9\xe2\x82\xac\nend\n");
	expect("latin1", mime_text_to_utf8("iso-8859-1", "caf\xe9", 4, &n),
		"caf\xc3\xa9");
	expect("unknown charset", mime_text_to_utf8("x-nonesuch", "caf\xe9",
		4, &n), "caf\xc3\xa9");
	expect("bad utf-8", mime_text_to_utf8("utf-8", "a\xff", 2, &n),
		"a\xef\xbf\xbd");
}

static const char message[] =
	"From: a@example.org\r\n"
	"Subject: =?utf-8?q?R=C3=A9sum=C3=A9?=\r\n"
	"MIME-Version: 1.0\r\n"
	"Content-Type: multipart/mixed; boundary=\"B1\"\r\n"
	"\r\n"
	"preamble\r\n"
	"--B1\r\n"
	"Content-Type: multipart/alternative; boundary=B2\r\n"
	"\r\n"
	"--B2\r\n"
	"Content-Type: text/plain; charset=iso-8859-1\r\n"
	"Content-Transfer-Encoding: quoted-printable\r\n"
	"\r\n"
	"caf=E9\r\n"
	"--B2\r\n"
	"Content-Type: text/html; charset=utf-8\r\n"
	"\r\n"
	"<p>caf\xc3\xa9</p>\r\n"
	"--B2--\r\n"
	"--B1\r\n"
	"Content-Type: application/pdf; name=\"../../x\"\r\n"
	"Content-Disposition: attachment; filename=\"../../x\"\r\n"
	"Content-Transfer-Encoding: base64\r\n"
	"\r\n"
	"JVBERi0=\r\n"
	"--B1\r\n"
	"Content-Type: application/octet-stream\r\n"
	"Content-Disposition: attachment; filename=\"..\"\r\n"
	"\r\n"
	"dots\r\n"
	"--B1\r\n"
	"Content-Type: text/plain\r\n"
	"Content-Disposition: attachment; filename=\".hidden\"\r\n"
	"\r\n"
	"hidden\r\n"
	"--B1\r\n"
	"Content-Type: text/plain\r\n"
	"Content-Disposition: attachment; filename=\"text\"\r\n"
	"\r\n"
	"not the text\r\n"
	"--B1\r\n"
	"Content-Type: image/png\r\n"
	"Content-Transfer-Encoding: x-weird\r\n"
	"\r\n"
	"????\r\n"
	"--B1\r\n"
	"Content-Type: message/rfc822\r\n"
	"\r\n"
	"Subject: inner\r\n"
	"\r\n"
	"inner body\r\n"
	"--B1--\r\n";

static const struct mime_node *child(const struct mime_node *d,
	const char *name)
{
	const struct mime_node *c = mime_node_child(d, name);

	CHECK(c != NULL, "no \"%s\"", name);
	return c;
}

static char *render(const struct mime_node *n, const char *msg)
{
	size_t len;

	return mime_node_render(n, msg + n->raw_offset,
		(size_t)n->encoded_size, &len);
}

static void list(const struct mime_node *d, int depth)
{
	for (size_t i = 0; i < d->n_children; i++) {
		fprintf(stderr, "%*s%s [%s]\n", depth * 2, "",
			d->children[i].name, d->children[i].section);
		list(&d->children[i], depth + 1);
	}
}

/* The layout both sources must give for `message`. */
static void check_tree(const struct mime_tree *t, const char *msg)
{
	const struct mime_node *r = &t->root, *n;

	CHECK(!t->truncated);
	CHECK(r->n_children == 9, "%zu children", r->n_children);
	if (r->n_children != 9)
		list(r, 0);
	CHECK(r->n_children > 3 && strcmp(r->children[0].name, "text") == 0 &&
		strcmp(r->children[1].name, "html") == 0 &&
		strcmp(r->children[2].name, "headers") == 0);
	n = child(r, "text");
	if (n) {
		CHECK(strcmp(n->section, "1.1") == 0 && !n->from_html);
		if (msg)
			expect("text", render(n, msg), "caf\xc3\xa9");
	}
	n = child(r, "html");
	CHECK(n && strcmp(n->section, "1.2") == 0);
	n = child(r, "headers");
	CHECK(n && strcmp(n->section, "HEADER") == 0);
	if (n && msg)
		expect("headers", render(n, msg), "From: a@example.org\n"
			"Subject: R\xc3\xa9sum\xc3\xa9\nMIME-Version: 1.0\n"
			"Content-Type: multipart/mixed; boundary=\"B1\"\n");
	n = child(r, "_.._.._x");
	CHECK(n && n->kind == MIME_NODE_FILE && n->transfer == MIME_TE_BASE64 &&
		strcmp(n->section, "2") == 0);
	n = child(r, "_..");
	CHECK(n && strcmp(n->section, "3") == 0);
	n = child(r, "_.hidden");
	CHECK(n && strcmp(n->section, "4") == 0);
	n = child(r, "text~2");
	CHECK(n && strcmp(n->section, "5") == 0);
	if (n && msg)
		expect("attachment named text", render(n, msg),
			"not the text");
	n = child(r, "part-6.png.undecoded");
	CHECK(n && n->kind == MIME_NODE_RAW);
	n = child(r, "message-7");
	CHECK(n && n->kind == MIME_NODE_DIR && strcmp(n->section, "7") == 0);
	if (n) {
		const struct mime_node *h = child(n, "headers"),
			*tx = child(n, "text");

		CHECK(h && strcmp(h->section, "7.HEADER") == 0);
		CHECK(tx && strcmp(tx->section, "7.1") == 0);
		if (h && msg)
			expect("inner headers", render(h, msg),
				"Subject: inner\n");
		if (tx && msg)
			expect("inner text", render(tx, msg), "inner body");
	}
}

static void test_raw(void)
{
	struct mime_tree *t = mime_tree_from_message(message,
		sizeof(message) - 1);

	CHECK(t != NULL);
	if (!t)
		return;
	check_tree(t, message);

	/* the form kept in the block cache */
	char *ser;
	size_t sl;

	CHECK(mime_tree_serialize(t, &ser, &sl));
	mime_tree_free(&t);
	CHECK(t == NULL);
	t = mime_tree_deserialize(ser, sl);
	CHECK(t != NULL);
	if (t)
		check_tree(t, message);
	mime_tree_free(&t);
	for (size_t cut = 0; cut < sl; cut += 7)
		CHECK(mime_tree_deserialize(ser, cut) == NULL, "cut at %zu", cut);
	ser[sl / 2] ^= 0x40;
	t = mime_tree_deserialize(ser, sl);	/* may or may not read */
	mime_tree_free(&t);
	free(ser);

	/* not MIME at all */
	static const char plain[] = "Subject: x\n\nbody";

	t = mime_tree_from_message(plain, sizeof(plain) - 1);
	CHECK(t && t->root.n_children == 2);
	if (t) {
		const struct mime_node *tx = child(&t->root, "text");

		if (tx)
			expect("plain text", render(tx, plain), "body");
	}
	mime_tree_free(&t);

	/* HTML only */
	static const char html[] = "Content-Type: text/html\r\n\r\n"
		"<b>bold</b> &amp; plain";

	t = mime_tree_from_message(html, sizeof(html) - 1);
	CHECK(t && t->root.n_children == 3);
	if (t) {
		const struct mime_node *tx = child(&t->root, "text");

		CHECK(tx && tx->from_html);
		if (tx)
			expect("html text", render(tx, html), "bold & plain\n");
	}
	mime_tree_free(&t);
}

/* Bounds: far more parts than shown, nested deeper than shown. */
static void test_bounds(void)
{
	size_t cap = 10000 * 60 + 4096, n = 0;
	char *m = malloc(cap);

	n += (size_t)sprintf(m + n, "Content-Type: multipart/mixed; "
		"boundary=b\r\n\r\n");
	for (int i = 0; i < 10000; i++)
		n += (size_t)sprintf(m + n, "--b\r\nContent-Type: image/gif"
			"\r\n\r\nx\r\n");
	n += (size_t)sprintf(m + n, "--b--\r\n");
	struct mime_tree *t = mime_tree_from_message(m, n);

	CHECK(t && t->truncated && t->n_nodes <= MIME_PARTS_MAX &&
		t->root.n_children <= MIME_PARTS_MAX);
	mime_tree_free(&t);

	n = 0;
	for (int i = 0; i < 100; i++)
		n += (size_t)sprintf(m + n, "Content-Type: message/rfc822\r\n"
			"\r\n");
	n += (size_t)sprintf(m + n, "\r\nend\r\n");
	t = mime_tree_from_message(m, n);
	CHECK(t != NULL);
	if (t) {
		const struct mime_node *d = &t->root;
		int depth = 0;

		while (d->n_children && d->children[d->n_children - 1].kind ==
		       MIME_NODE_DIR) {
			d = &d->children[d->n_children - 1];
			depth++;
		}
		CHECK(depth <= MIME_DEPTH_MAX, "depth %d", depth);
	}
	mime_tree_free(&t);
	free(m);
}

/* The structure Dovecot reports for `message`, parsed by libetpan as a
 * FETCH response would be. */
static const char bodystructure[] =
	"* 1 FETCH (UID 1 BODYSTRUCTURE ("
	"((\"text\" \"plain\" (\"charset\" \"iso-8859-1\") NIL NIL "
	"\"quoted-printable\" 8 1 NIL NIL NIL NIL)"
	"(\"text\" \"html\" (\"charset\" \"utf-8\") NIL NIL \"7bit\" 15 1 NIL "
	"NIL NIL NIL) \"alternative\" (\"boundary\" \"B2\") NIL NIL NIL)"
	"(\"application\" \"pdf\" (\"name\" \"../../x\") NIL NIL \"base64\" 10 "
	"NIL (\"attachment\" (\"filename\" \"../../x\")) NIL NIL)"
	"(\"application\" \"octet-stream\" NIL NIL NIL \"7bit\" 6 NIL "
	"(\"attachment\" (\"filename\" \"..\")) NIL NIL)"
	"(\"text\" \"plain\" NIL NIL NIL \"7bit\" 8 1 NIL (\"attachment\" "
	"(\"filename\" \".hidden\")) NIL NIL)"
	"(\"text\" \"plain\" NIL NIL NIL \"7bit\" 14 1 NIL (\"attachment\" "
	"(\"filename\" \"text\")) NIL NIL)"
	"(\"image\" \"png\" NIL NIL NIL \"x-weird\" 6 NIL NIL NIL NIL)"
	"(\"message\" \"rfc822\" NIL NIL NIL \"7bit\" 30 (NIL \"inner\" NIL "
	"NIL NIL NIL NIL NIL NIL NIL) (\"text\" \"plain\" (\"charset\" "
	"\"us-ascii\") NIL NIL \"7bit\" 12 1 NIL NIL NIL NIL) 3 NIL NIL NIL "
	"NIL) \"mixed\" (\"boundary\" \"B1\") NIL NIL NIL))\r\n";

static void test_bodystructure(void)
{
	int sv[2];
	mailimap *imap = mailimap_new(0, NULL);
	struct mailimap_response *resp = NULL;
	struct mailimap_body *body = NULL;
	struct mime_tree *t;

	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	CHECK(write(sv[1], bodystructure, sizeof(bodystructure) - 1) ==
		(ssize_t)sizeof(bodystructure) - 1);
	CHECK(write(sv[1], "0 OK done\r\n", 11) == 11);  /* the tag of a fresh session */
	imap->imap_stream = mailstream_socket_open(sv[0]);
	CHECK(mailimap_read_line(imap) != NULL);
	CHECK(mailimap_parse_response(imap, &resp) == MAILIMAP_NO_ERROR);
	/* libetpan moves FETCH data to the session's response info */
	clist *fetched = imap->imap_response_info ?
		imap->imap_response_info->rsp_fetch_list : NULL;

	for (clistiter *it = fetched ? clist_begin(fetched) : NULL; it;
	     it = clist_next(it)) {
		struct mailimap_msg_att *att = clist_content(it);

		for (clistiter *j = clist_begin(att->att_list); j;
		     j = clist_next(j)) {
			struct mailimap_msg_att_item *item = clist_content(j);

			if (item->att_type == MAILIMAP_MSG_ATT_ITEM_STATIC &&
			    item->att_data.att_static->att_type ==
			    MAILIMAP_MSG_ATT_BODYSTRUCTURE)
				body = item->att_data.att_static->att_data.
					att_bodystructure;
		}
	}
	CHECK(body != NULL);
	t = mime_tree_from_bodystructure(body);
	CHECK(t != NULL);
	if (t) {
		check_tree(t, NULL);
		mime_tree_free(&t);
	}
	if (resp)
		mailimap_response_free(resp);
	close(sv[1]);	/* so the LOGOUT in mailimap_free meets end of file */
	mailimap_free(imap);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);	/* the LOGOUT of a closed test stream */
	test_decoders();
	test_b64_ranges();
	test_text();
	test_raw();
	test_bounds();
	test_bodystructure();
	return check_summary("mime_parts");
}
