/* File names for messages and folders.
 *
 * A message's name is derived from its own header fields only, never from
 * its UID, so that a copy restored into another folder or server gets the
 * same name:
 *
 *     YYYY-MM-DD_HHMM_<subject>_<hash>.eml
 *
 *   - date and time in UTC from the Date header (INTERNALDATE if the header
 *     is missing or unparseable), so `ls` sorts by date;
 *   - <subject>: the RFC 2047-decoded Subject, reduced to a readable slug
 *     (whitespace and punctuation runs become '-', ASCII lowercased, other
 *     UTF-8 letters kept, cut at a character boundary to at most
 *     MSG_NAME_SUBJECT_MAX bytes); "no-subject" when empty;
 *   - <hash>: 8 hex digits of XXH3-64 of the Message-ID field value, or of
 *     the whole raw header block given when there is no Message-ID.
 * Messages whose names coincide in one folder get "~2", "~3", ... before
 * ".eml", in UID order (msg_name_make_unique).
 *
 * All results are valid UTF-8, at most 255 bytes, and contain no '/', no
 * control characters, and are never "." or "..".
 */
#ifndef MAILFS_MSG_NAME_H
#define MAILFS_MSG_NAME_H

#include <stddef.h>
#include <stdint.h>

#define MSG_NAME_SUBJECT_MAX 80
#define MSG_NAME_MAX 255

/* Derives the base name from the raw header fields (as returned by
 * FETCH BODY.PEEK[HEADER.FIELDS (DATE SUBJECT MESSAGE-ID FROM)], CRLF or LF
 * line ends, possibly folded).  Returns a malloc'd string owned by the
 * caller; never NULL except on allocation failure. */
char *msg_name_derive(const char *header, size_t header_len,
	int64_t internaldate);

/* Returns the n-th (n >= 2) variant of a derived name: "x.eml" -> "x~n.eml".
 * Malloc'd, owned by the caller. */
char *msg_name_variant(const char *name, unsigned n);

/* Turns one decoded folder-name component into a safe directory name:
 * invalid UTF-8 bytes, control characters and '/' are replaced by '_',
 * "." and ".." become "_." and "_..", an empty name becomes "_", and the
 * result is cut at a character boundary to 255 bytes.  Malloc'd, owned by
 * the caller. */
char *folder_name_sanitize(const char *component);

#endif
