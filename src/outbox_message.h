/* Messages dropped into the outbox: validation, envelope, wire form.
 *
 * Pure functions: no I/O, no global state (apart from the random source
 * used for new Message-IDs), safe to call from any thread.
 *
 * A message is accepted when
 *  - its header parses: every line up to the first empty line is a field
 *    ("Name: value") or the continuation of one, and no NUL byte appears
 *    anywhere in the message;
 *  - it has a sender: the From field's mailbox (Sender when From lists
 *    several), or the configured default when there is no From;
 *  - To, Cc and Bcc together name at least one recipient;
 *  - every envelope address is a plain SMTP mailbox (local@domain) of at
 *    most OUTBOX_ADDRESS_MAX octets (the local part at most 64, the
 *    domain at most 255, each of its labels at most 63; an address
 *    literal is IPv4-style: libetpan cannot read an IPv6 one back from a
 *    header) with no control character, space, '<' or '>', valid UTF-8,
 *    and appears verbatim in its field (so a parser that silently drops
 *    characters cannot change where mail goes).
 *
 * Line ends may be LF, CRLF or CR; every result of this module uses CRLF.
 */
#ifndef MAILFS_OUTBOX_MESSAGE_H
#define MAILFS_OUTBOX_MESSAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

/* Longest envelope address accepted, in octets. */
#define OUTBOX_ADDRESS_MAX 256

/* What the message says about its own delivery.  Filled by
 * outbox_message_parse(); release with outbox_message_clear(). */
struct outbox_message {
	char *sender;        /* envelope sender (MAIL FROM); owned */
	char **rcpts;        /* distinct recipients: To, Cc, then Bcc order,
	                        compared without regard to ASCII case; owned */
	size_t n_rcpts;
	bool has_from;       /* the header has a From field */
	bool has_date;
	bool has_message_id;
	bool eight_bit;      /* some byte >= 0x80: wants BODY=8BITMIME */
	bool smtputf8;       /* an envelope address is not ASCII: SMTPUTF8 */
};

/* Parses and validates data[0..len).  default_from (may be NULL) is the
 * envelope sender for a message without From; it must itself pass
 * outbox_address_check().  Returns 0 with *msg_r filled (the caller owns
 * it), or -1 with *error_r saying what is wrong in words meant for the
 * user (e.g. "no recipient: the message has no To, Cc or Bcc address"),
 * and *msg_r zeroed. */
int outbox_message_parse(const char *data, size_t len,
	const char *default_from, struct outbox_message *msg_r,
	const char **error_r);

void outbox_message_clear(struct outbox_message *msg);

/* Flags for outbox_message_render(). */
enum {
	/* Adds the From (from msg->sender), Date (from now, local time) and
	 * Message-ID fields the header lacks, at its end.  A new Message-ID
	 * is <time.random@domain>, the domain being the sender's when it is
	 * a plain ASCII host name, else "localhost". */
	OUTBOX_RENDER_COMPLETE = 1 << 0,
	/* Removes every Bcc and Resent-Bcc field with its continuation
	 * lines: what goes on the wire. */
	OUTBOX_RENDER_STRIP_BCC = 1 << 1,
};

/* Writes data with every line end made CRLF and the changes `flags` ask
 * for.  data must have passed outbox_message_parse() with the result msg
 * (only read with OUTBOX_RENDER_COMPLETE).  Dot-stuffing is not done
 * here: the SMTP layer does it.  Returns 0 with *out_r (malloc'd, owned
 * by the caller, not NUL-terminated) and *out_len_r, or -1 with *error_r
 * set (out of memory, or a header that no longer parses). */
int outbox_message_render(const char *data, size_t len,
	const struct outbox_message *msg, unsigned flags, time_t now,
	char **out_r, size_t *out_len_r, const char **error_r);

/* Checks one envelope address (the rules above, minus "verbatim").
 * Returns 0, or -1 with *error_r explaining.  For the from= option too. */
int outbox_address_check(const char *addr, const char **error_r);

/* True if the address has a byte >= 0x80 (needs SMTPUTF8). */
bool outbox_address_is_utf8(const char *addr);

/* Case-insensitive (ASCII) address comparison, for recipient sets. */
bool outbox_address_equal(const char *a, const char *b);

/* Longest Message-ID outbox_message_id() returns, '<' and '>' included. */
#define OUTBOX_MESSAGE_ID_MAX 250

/* The Message-ID of a rendered message (CRLF line ends), "<...>", into
 * buf (at least OUTBOX_MESSAGE_ID_MAX + 1 bytes): printable ASCII with
 * no space, quote or backslash, so that any protocol can carry it.
 * Returns 0, or -1 when the header has none of that form. */
int outbox_message_id(const char *data, size_t len, char *buf, size_t size);

/* The RFC 5322 date for t in local time, "Tue, 03 Jun 2025 14:05:09 +0200",
 * into buf (at least 32 bytes).  Names are English whatever the locale. */
void outbox_format_date(time_t t, char *buf, size_t size);

#endif
