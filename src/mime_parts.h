/* The parts of one message as a tree of files: the `.parts` view.
 *
 * Built from the message's structure alone (an IMAP BODYSTRUCTURE, or a
 * whole raw message parsed with libetpan's MIME parser), without its
 * content.  A message becomes a directory holding
 *   text     the best text/plain part as UTF-8 (for an HTML-only message,
 *            the HTML as readable text); absent when there is neither;
 *   html     the first inline text/html part as UTF-8, when there is one;
 *   headers  the header fields, RFC 2047 decoded, one per line;
 *   <name>   every other leaf part, transfer-decoded, under its file name
 *            (Content-Disposition filename, else Content-Type name, RFC
 *            2231 and RFC 2047 decoded), or "part-<section>" plus an
 *            extension from its subtype when it has none;
 *   <dir>    a message/rfc822 part, laid out the same way, named after
 *            its file name (".eml" dropped) or "message-<section>".
 * A part in a transfer encoding mailfs cannot decode is offered as it was
 * sent, its name ending in ".undecoded".
 *
 * Names are made safe as folder names are (folder_name_sanitize: no '/',
 * no control characters, never "." or "..", at most 255 bytes) and never
 * start with '.'; within a directory a repeated name gets "~2", "~3", ...
 * before its extension.  The tree is bounded: at most MIME_PARTS_MAX
 * nodes and MIME_DEPTH_MAX nested multiparts and messages; what lies
 * beyond is left out and the tree marked truncated.
 */
#ifndef MAILFS_MIME_PARTS_H
#define MAILFS_MIME_PARTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "src/mime_decode.h"

#define MIME_PARTS_MAX 1000
#define MIME_DEPTH_MAX 32

enum mime_node_kind {
	MIME_NODE_DIR,      /* a message: the root or a message/rfc822 part */
	MIME_NODE_TEXT,     /* "text" */
	MIME_NODE_HTML,     /* "html" */
	MIME_NODE_HEADERS,  /* "headers" */
	MIME_NODE_FILE,     /* a part's transfer-decoded bytes */
	MIME_NODE_RAW,      /* a part's bytes as sent (cannot be decoded) */
};

struct mime_node {
	enum mime_node_kind kind;
	char *name;            /* safe file name; "" for the root; owned */
	char *section;         /* IMAP section of the bytes: "1.2", "HEADER",
	                          "2.HEADER"; for a DIR, its own part number
	                          ("" for the root); owned */
	enum mime_transfer transfer;
	char *charset;         /* TEXT and HTML: declared charset or NULL */
	bool from_html;        /* TEXT made from an HTML part */
	uint64_t encoded_size; /* bytes as sent (BODYSTRUCTURE size, or the
	                          span in the raw message); for HEADERS built
	                          from BODYSTRUCTURE, 0: unknown */
	uint64_t raw_offset;   /* from a raw message: where those bytes
	                          start in it */
	bool has_raw_offset;
	struct mime_node *children;   /* DIR only; owned */
	size_t n_children;
};

struct mime_tree {
	struct mime_node root;
	size_t n_nodes;
	bool truncated;        /* parts were left out to respect the bounds */
};

struct mailimap_body;

/* From an IMAP BODYSTRUCTURE (borrowed).  Returns NULL only when out of
 * memory; release with mime_tree_free(). */
struct mime_tree *mime_tree_from_bodystructure(const struct mailimap_body *b);

/* From a whole raw message (borrowed, len bytes).  A message libetpan
 * cannot parse as MIME still gets a tree: its headers and its body as
 * text.  NULL only when out of memory. */
struct mime_tree *mime_tree_from_message(const char *msg, size_t len);

void mime_tree_free(struct mime_tree **tree);

/* A tree as bytes, to keep it in the block cache: a version byte, then
 * the nodes in pre-order.  *buf_r is malloc'd, owned by the caller;
 * returns false when out of memory. */
bool mime_tree_serialize(const struct mime_tree *tree, char **buf_r,
	size_t *len_r);

/* The tree those bytes describe, or NULL when they are not a tree
 * mime_tree_serialize wrote (bounds, names and lengths are checked). */
struct mime_tree *mime_tree_deserialize(const char *buf, size_t len);

/* The child of dir named name, or NULL. */
const struct mime_node *mime_node_child(const struct mime_node *dir,
	const char *name);

/* Reads the content of a TEXT, HTML or HEADERS node as shown to users
 * (UTF-8), from `raw`, the node's bytes as sent (its section's content,
 * len bytes).  Malloc'd, owned by the caller; NULL when out of memory. */
char *mime_node_render(const struct mime_node *node, const char *raw,
	size_t len, size_t *out_len_r);

#endif
