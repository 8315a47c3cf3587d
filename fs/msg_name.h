/* File names for messages and folders.
 *
 * A message's name is derived from its own header fields only, never from
 * its UID, so that a copy restored into another folder or server gets the
 * same name:
 *
 *     YYYY-MM-DD_HHMM_<subject>_<hash>.eml
 *
 *   - date and time in UTC from the Date header, shifted by its zone
 *     ("UT", "GMT" and the US zone names included; no zone means UTC), so
 *     `ls` sorts by date.  INTERNALDATE is used when the header is missing
 *     or unparseable, or names an impossible date or a year outside
 *     1900-9999 (two- and three-digit years are read as RFC 5322 says);
 *   - <subject>: the RFC 2047-decoded Subject (bare 8-bit text is taken as
 *     UTF-8 when valid, else as ISO-8859-1), reduced to a readable slug:
 *     ASCII letters and digits kept and lowercased, other non-ASCII
 *     characters (letters of any script) kept as they are, and each run of
 *     ASCII non-alphanumerics, Unicode spaces and punctuation, control and
 *     invisible format characters and invalid bytes becomes one '-'
 *     between kept characters.  So the slug never holds '.', '_', '~' or
 *     '/', and never starts or ends with '-'.  It is cut before the first
 *     character that would not fit in MSG_NAME_SUBJECT_MAX bytes;
 *     "no-subject" when nothing is left;
 *   - <hash>: the low 32 bits, as 8 lowercase hex digits, of XXH3-64 of the
 *     first Message-ID field's value (unfolded, surrounding blanks trimmed,
 *     angle brackets and comments kept as they appear), or of the whole
 *     raw header block given when there is no Message-ID or it is empty.
 * Field names match case-insensitively and the first occurrence of each
 * field wins.  Messages whose names coincide in one folder get "~2", "~3",
 * ... before ".eml", in UID order (msg_name_variant).
 *
 * All results are valid UTF-8, at most 255 bytes, and contain no '/', no
 * control characters, and are never "." or "..".
 */
#ifndef MAILFS_MSG_NAME_H
#define MAILFS_MSG_NAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "src/file_name.h"

#define MSG_NAME_SUBJECT_MAX 80
#define MSG_NAME_MAX FILE_NAME_MAX

/* Derives the base name from the raw header fields (as returned by
 * FETCH BODY.PEEK[HEADER.FIELDS (DATE SUBJECT MESSAGE-ID FROM)], CRLF or LF
 * line ends, possibly folded; scanning stops at the first empty line).
 * header need not be NUL-terminated and may hold any bytes; NULL is taken
 * as empty.  internaldate is in seconds since the epoch (UTC).  Returns a
 * malloc'd string owned by the caller; never NULL except on allocation
 * failure. */
char *msg_name_derive(const char *header, size_t header_len,
	int64_t internaldate);

/* The Date field of a header block (or a whole message: scanning stops at
 * the first empty line) in seconds since the epoch, parsed as for names.
 * Returns false when there is no valid Date. */
bool msg_header_date(const char *header, size_t header_len, int64_t *date_r);

/* Returns the n-th (n >= 2) variant of a derived name: "x.eml" -> "x~n.eml"
 * (a name without ".eml" gets "~n" appended; n < 2 returns a copy of name).
 * Malloc'd, owned by the caller; NULL on allocation failure or NULL name. */
char *msg_name_variant(const char *name, unsigned n);

/* folder_name_sanitize: see src/file_name.h. */

#endif
