/* The listing FETCH of a folder, read and parsed by mailfs itself.
 *
 *   UID FETCH first:last (UID RFC822.SIZE INTERNALDATE FLAGS
 *       BODY.PEEK[HEADER.FIELDS (DATE SUBJECT MESSAGE-ID FROM)])
 *
 * libetpan turns every response into a tree of a dozen allocations, keeps
 * the whole answer of 1:* in memory until the command ends, and allocates
 * whatever size a literal announces.  For the listing of a large folder
 * that was most of the time `ls -l` took; here each response is framed in
 * one reused buffer and parsed in place into a backend_message.  Lines
 * and literals are bounded: a header literal is kept up to
 * IMAP_META_HEADER_MAX bytes (the rest is read and dropped) and a literal
 * announcing more than IMAP_META_LITERAL_MAX fails the command instead of
 * being read.
 */
#ifndef MAILFS_IMAP_META_FETCH_H
#define MAILFS_IMAP_META_FETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/imap_session.h"
#include "src/backend.h"

#define IMAP_META_HEADER_MAX (256u * 1024)
#define IMAP_META_LITERAL_MAX (64u * 1024 * 1024)

/* What to fetch. */
struct imap_meta_query {
	uint32_t first, last;       /* the UID set first:last; last 0 is '*' */
	uint32_t min_uid, max_uid;  /* keep only these; max_uid 0: no limit */
	bool flags_only;            /* (UID FLAGS) instead of the listing */
	uint64_t changed_since;     /* CONDSTORE CHANGEDSINCE; 0: none */
};

/* Runs the query on the selected folder of s and appends each message
 * kept to *msgs / *n (growing *msgs with realloc; UID order not
 * guaranteed).  Each appended message owns its flags and header strings
 * (the header is "" with flags_only).  On failure the messages appended
 * so far stay in *msgs and *error_r names the cause (`folder` is only
 * used in it); a stream or protocol error marks the session broken. */
enum backend_status imap_meta_fetch(struct imap_session *s,
	const char *folder, const struct imap_meta_query *q,
	struct backend_message **msgs, size_t *n, const char **error_r);

/* Parses one FETCH response, "* N FETCH (...)" without its final line
 * end, literals inline as "{len}\r\n" followed by len bytes.  Returns 1
 * and fills *m (flags and header allocated, owned by the caller) when it
 * carries a UID, 0 when it is a well-formed FETCH without one (e.g. an
 * unsolicited flags update), -1 when it is malformed or out of memory
 * (*m then holds nothing to free).  Exposed for the fuzzer. */
int imap_meta_parse_fetch(const char *resp, size_t len,
	struct backend_message *m);

#endif
