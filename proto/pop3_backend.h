/* The read-only POP3 implementation of struct backend (src/backend.h).
 *
 * One folder, "INBOX".  Every message is listed with the same header
 * fields IMAP would give (Date, Subject, Message-ID, From, read with
 * "TOP n 0"), so fs/ names it exactly as through IMAP.  Content comes from
 * RETR, whole (POP3 has no partial fetch); the last fetched messages are
 * kept (at most 64 MiB in memory, larger ones in an unlinked file in
 * state_dir) so that reading one block by block costs one RETR.  Nothing
 * is ever deleted: no DELE, no RSET.  be->read_only is set and the write
 * half of the vtable is NULL, as src/backend.h asks of read-only backends
 * (fs/ answers EROFS); so are the optional resync_messages, read_heads,
 * wait_changes and interrupt_wait.
 *
 * Identity.  fs/ needs a 32-bit UID and a UIDVALIDITY; POP3 has per-session
 * message numbers and, with UIDL, stable unique-ids.  Each unique-id gets
 * the next UID the first time it is seen, remembered in
 * <state_dir>/pop3-uids:
 *     mailfs-pop3-uids 1 <uidvalidity> <next uid>
 *     <uid> <unique-id>                       (one line per message)
 * The UIDVALIDITY is random; a missing or corrupt file starts a new one,
 * so cached blocks (keyed by UIDVALIDITY and UID) are never served for
 * another message.  New UIDs are written (temp file, fsync, rename, mode
 * 0600) before any caller sees them.  A unique-id that is not 1-70
 * printable ASCII characters (RFC 1939), or that two messages share, is
 * not used; such messages, and all of them when the server has no UIDL,
 * are known by "hash <XXH3-128 of the TOP header block> <LIST size>" plus
 * " <n>" for the n-th identical one.  Without UIDL every new session must
 * read every header (TOP) to find its messages again: slow on large
 * maildrops, and two messages with identical headers and size may trade
 * places when one of them is deleted.
 *
 * Metadata.  The header block, the time a message was first seen and its
 * real size after a full read are kept in <state_dir>/pop3-headers, so a
 * remount lists without TOP.  internaldate is the Date header (time zone
 * applied), or the first-seen time when it is missing or unparseable.
 * size is LIST's count until a full read shows the real one.  flags is "".
 *
 * Sessions.  POP3 servers lock the maildrop per session and freeze its
 * view at login, so the backend keeps ONE session, used by one thread at
 * a time (other callers wait; reads served from the kept messages do not),
 * opens a new one for every listing so new mail shows, and QUITs it after
 * a few idle seconds so other clients can get in.  After a failed connect
 * it waits (1 s doubling to 60 s) before trying again and fails at once
 * meanwhile.
 */
#ifndef MAILFS_POP3_BACKEND_H
#define MAILFS_POP3_BACKEND_H

#include "proto/pop3_session.h"
#include "src/backend.h"

/* Creates the backend.  ep is borrowed and must outlive the backend.
 * state_dir (borrowed; an existing private directory, 0700, one account
 * per directory and one mount at a time) holds pop3-uids, pop3-headers
 * and the temp files of large messages.  `first` is the session opened at
 * mount time to check the account, or NULL; the backend takes ownership
 * of it (and uses it for the first listing).  Returns NULL only when out
 * of memory or no thread can be started (first is then closed).  Release
 * with backend_destroy(), after every call into it has returned. */
struct backend *pop3_backend_new(const struct mail_endpoint *ep,
	const char *state_dir, struct pop3_session *first);

#endif
