/* The backend interface: everything fs/ may ask of a mail server.
 *
 * One vtable (struct backend_ops) implemented by the IMAP backend
 * (proto/imap_backend.c) and, read-only, by the POP3 backend.  fs/ and the
 * caches call only these slots; nothing above this line speaks a protocol.
 *
 * Conventions
 *  - Every slot returns an enum backend_status; BACKEND_OK is 0.
 *  - On failure *error_r points to a human-readable reason, owned by the
 *    backend and valid until the calling thread's next backend call.
 *  - Every slot is safe to call from many threads at once; each call checks
 *    a session out of the backend's pool and never holds a lock across
 *    network I/O.  Every call is bounded by the configured timeout.
 *  - Folders are named by their raw server name (struct backend_folder
 *    .raw_name), never by their file-system name.
 */
#ifndef MAILFS_BACKEND_H
#define MAILFS_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum backend_status {
	BACKEND_OK = 0,
	BACKEND_NOT_FOUND,   /* folder or message does not exist (any more) */
	BACKEND_TEMP,        /* network failure, timeout, server busy: retry later */
	BACKEND_AUTH,        /* credentials refused */
	BACKEND_READ_ONLY,   /* this backend cannot change anything */
	BACKEND_UNSUPPORTED, /* the server lacks a capability the operation needs */
	BACKEND_EXISTS,      /* target already exists */
	BACKEND_INVALID,     /* argument cannot be sent safely (CR, LF, NUL, ...) */
	BACKEND_REFUSED,     /* the server said NO */
	BACKEND_NOT_EMPTY,   /* folder still holds messages or children */
	BACKEND_TLS,         /* TLS handshake or certificate verification failed */
	BACKEND_CONNECT,     /* server could not be reached (refused, no route, DNS) */
	BACKEND_PROTOCOL,    /* server spoke something we cannot accept */
};

/* Returns a static lowercase name for logs, e.g. "temporary failure". */
const char *backend_status_name(enum backend_status status);

/* The errno a file-system operation answers for a status (0 for
 * BACKEND_OK): the one table for every operation, so that the same
 * failure reads the same from ls, cat and rm. */
int backend_status_errno(enum backend_status status);

/* One folder as listed by the server. */
struct backend_folder {
	char *raw_name;      /* the server's name, e.g. modified UTF-7; owned */
	char **parts;        /* decoded UTF-8 path components, unsanitised; owned */
	size_t n_parts;
	bool noselect;       /* a directory that holds no messages */
	const char *special_use;  /* "\\Sent", "\\Trash"... (RFC 6154) or
	                             NULL; static storage */
};

/* Per-folder synchronisation state (RFC 3501, RFC 7162). */
struct backend_folder_state {
	uint32_t uidvalidity;
	uint32_t uidnext;
	uint64_t highestmodseq;  /* 0 when the server has no CONDSTORE */
	uint32_t exists;
};

/* One message's metadata: everything needed to list and name it, and
 * nothing that requires its body. */
struct backend_message {
	uint32_t uid;
	uint64_t size;          /* RFC822.SIZE */
	bool size_uncertain;    /* only an estimate (POP3 LIST) until the
	                           message has been read in full */
	int64_t internaldate;   /* INTERNALDATE, seconds since the epoch (UTC) */
	char *flags;            /* space-separated, e.g. "\\Seen \\Flagged"; owned */
	char *header;           /* raw header fields used for the name
	                           (Date, Subject, Message-ID, From); owned */
	size_t header_len;
};

struct backend;
struct mime_tree;

struct backend_ops {
	/* All folders (LIST "" "*").  *folders_r is owned by the caller:
	 * release with backend_folders_free(). */
	enum backend_status (*list_folders)(struct backend *be,
		struct backend_folder **folders_r, size_t *count_r,
		const char **error_r);

	/* Every message of a folder with its metadata, in UID order.
	 * *msgs_r is owned by the caller: release with backend_messages_free(). */
	enum backend_status (*list_messages)(struct backend *be,
		const char *raw_folder, struct backend_folder_state *state_r,
		struct backend_message **msgs_r, size_t *count_r,
		const char **error_r);

	/* Optional (NULL: callers use list_messages).  Like list_messages,
	 * but given the previous listing of the folder (known_state and the
	 * UID-ordered known[], borrowed) fetches only what changed since:
	 * new messages in full, flags of the others (CONDSTORE when the
	 * server has it), and which of them still exist.  The result is the
	 * complete current listing, owned by the caller.  A changed
	 * UIDVALIDITY yields a full listing. */
	enum backend_status (*resync_messages)(struct backend *be,
		const char *raw_folder,
		const struct backend_folder_state *known_state,
		const struct backend_message *known, size_t n_known,
		struct backend_folder_state *state_r,
		struct backend_message **msgs_r, size_t *count_r,
		const char **error_r);

	/* Reads up to `length` bytes of the message's exact server bytes
	 * starting at `offset` into buf, without setting \Seen.  *got_r is the
	 * number of bytes stored; fewer than `length` means the message ended.
	 * BACKEND_NOT_FOUND when the UID is gone or UIDVALIDITY changed. */
	enum backend_status (*read_range)(struct backend *be,
		const char *raw_folder, uint32_t uidvalidity, uint32_t uid,
		uint64_t offset, size_t length, void *buf, size_t *got_r,
		const char **error_r);

	/* Optional (NULL when unsupported): reads the first `length` bytes of
	 * several messages of one folder in a single command, for read-ahead
	 * across files.  got() is called once per message that came back
	 * (fewer than `length` bytes: the message ended); messages that
	 * vanished are simply not reported. */
	enum backend_status (*read_heads)(struct backend *be,
		const char *raw_folder, uint32_t uidvalidity,
		const uint32_t *uids, size_t n_uids, size_t length,
		void (*got)(void *ctx, uint32_t uid, const void *data,
			size_t len),
		void *ctx, const char **error_r);

	/* Optional (NULL: callers parse the whole message read with
	 * read_range; see backend_parts_tree): the message's parts as a
	 * tree built from its structure alone (IMAP BODYSTRUCTURE).
	 * *tree_r is owned by the caller: release with mime_tree_free(). */
	enum backend_status (*fetch_parts)(struct backend *be,
		const char *raw_folder, uint32_t uidvalidity, uint32_t uid,
		struct mime_tree **tree_r, const char **error_r);

	/* Optional, with fetch_parts: like read_range, on the bytes (as
	 * sent, still transfer-encoded) of one IMAP section of the message
	 * ("1.2", "HEADER", "2.HEADER"). */
	enum backend_status (*read_section)(struct backend *be,
		const char *raw_folder, uint32_t uidvalidity, uint32_t uid,
		const char *section, uint64_t offset, size_t length, void *buf,
		size_t *got_r, const char **error_r);

	/* ---- the write half; a read-only backend leaves these NULL ---- */

	/* Removes exactly one message: \Deleted + UID EXPUNGE (UIDPLUS), or
	 * UID MOVE to trash_folder when that is non-NULL.  Never a plain
	 * EXPUNGE, which would also remove messages others marked \Deleted:
	 * BACKEND_UNSUPPORTED when the server cannot do it safely. */
	enum backend_status (*expunge)(struct backend *be,
		const char *raw_folder, uint32_t uidvalidity, uint32_t uid,
		const char *trash_folder, const char **error_r);

	/* Moves one message: UID MOVE, else UID COPY + \Deleted + UID
	 * EXPUNGE.  On failure the source is intact.  *new_uid_r is its UID in
	 * the target (0 if the server did not say). */
	enum backend_status (*move)(struct backend *be, const char *raw_from,
		uint32_t uidvalidity, uint32_t uid, const char *raw_to,
		uint32_t *new_uid_r, const char **error_r);

	/* Appends a message with flags (space-separated, may be "") and an
	 * INTERNALDATE (seconds since the epoch; < 0: the server's now).
	 * *new_uid_r is its UID (0 if the server did not say). */
	enum backend_status (*append)(struct backend *be, const char *raw_folder,
		const void *data, size_t len, const char *flags,
		int64_t internaldate, uint32_t *new_uid_r, const char **error_r);

	/* Optional (NULL: nobody can tell).  Whether an append() of data to
	 * raw_folder whose answer was lost did arrive: looks for a message
	 * whose bytes are exactly those that append() stores, among the UIDs
	 * from min_uid on when uidvalidity is the folder's (else among all).
	 * *uid_r is its UID, or 0 when there is none. */
	enum backend_status (*find_appended)(struct backend *be,
		const char *raw_folder, const void *data, size_t len,
		uint32_t uidvalidity, uint32_t min_uid, uint32_t *uid_r,
		const char **error_r);

	/* Optional (NULL: nobody can tell).  The UID of a message in
	 * raw_folder whose Message-ID field is message_id ("<...>", printable
	 * ASCII), or 0 in *uid_r when there is none. */
	enum backend_status (*find_message_id)(struct backend *be,
		const char *raw_folder, const char *message_id,
		uint32_t *uid_r, const char **error_r);

	/* Replaces a message's flags (keywords included; \Recent ignored). */
	enum backend_status (*set_flags)(struct backend *be,
		const char *raw_folder, uint32_t uidvalidity, uint32_t uid,
		const char *flags, const char **error_r);

	/* Folder management.  Names are raw server names; building them from
	 * file names (encoding, delimiter) is backend_encode_name's job. */
	enum backend_status (*create_folder)(struct backend *be,
		const char *raw_name, const char **error_r);
	enum backend_status (*delete_folder)(struct backend *be,
		const char *raw_name, const char **error_r);
	enum backend_status (*rename_folder)(struct backend *be,
		const char *raw_from, const char *raw_to, const char **error_r);

	/* Builds the raw server name of a child `name` (UTF-8, one level) of
	 * raw_parent (NULL: top level).  Returns a malloc'd string, or NULL
	 * with *error_r set when the name cannot be sent safely (CR, LF, NUL,
	 * the hierarchy delimiter, invalid UTF-8). */
	char *(*encode_name)(struct backend *be, const char *raw_parent,
		const char *name, const char **error_r);

	/* Blocks until something may have changed in raw_folder (IMAP IDLE)
	 * or max_wait_s passed; for a change-watching thread.  Returns
	 * BACKEND_OK in both cases. */
	enum backend_status (*wait_changes)(struct backend *be,
		const char *raw_folder, int max_wait_s, const char **error_r);

	/* Makes a wait_changes in progress (or the next one) return at once;
	 * safe from any thread.  For unmounting. */
	void (*interrupt_wait)(struct backend *be);

	/* Optional: a malloc'd line saying how the server holds the mount
	 * back now (fewer connections than asked for, a pause it asked
	 * for), or NULL when it does not. */
	char *(*pressure_text)(struct backend *be);

	/* Releases the backend and its sessions. */
	void (*destroy)(struct backend *be);
};

struct backend {
	const struct backend_ops *ops;
	char delimiter;       /* hierarchy delimiter shown to fs/, '/' if flat */
	bool read_only;
};

/* Whether a raw folder name as listed by the server can be sent back in a
 * command.  Names are written as quoted strings, so a CR or LF would end
 * the command line and start another one: a folder so named is left out
 * of the tree, and never addressed. */
bool backend_raw_name_sendable(const char *raw);

/* Puts a listing into strict UID order: sorts it when it is not, and drops
 * (freeing) every repeat of a UID, keeping its first entry.  Returns the
 * new count; *n_repeats_r (may be NULL) tells how many were dropped, and
 * *first_repeat_r (may be NULL) the first UID seen twice.  A listing from
 * any source (a server, the metadata cache) goes through this before it
 * is used: a UID listed twice would otherwise name one message twice. */
size_t backend_messages_normalize(struct backend_message *msgs, size_t count,
	size_t *n_repeats_r, uint32_t *first_repeat_r);

void backend_folders_free(struct backend_folder **folders, size_t count);
void backend_messages_free(struct backend_message **msgs, size_t count);

/* Releases *be through its destroy slot and sets *be to NULL. */
void backend_destroy(struct backend **be);

/* The write half, for callers: each answers BACKEND_READ_ONLY (with
 * *error_r set) when the backend is read-only or lacks the slot, and
 * otherwise calls the slot. */
bool backend_writable(const struct backend *be);
enum backend_status backend_expunge(struct backend *be, const char *raw_folder,
	uint32_t uidvalidity, uint32_t uid, const char *trash_folder,
	const char **error_r);
enum backend_status backend_move(struct backend *be, const char *raw_from,
	uint32_t uidvalidity, uint32_t uid, const char *raw_to,
	uint32_t *new_uid_r, const char **error_r);
enum backend_status backend_append(struct backend *be, const char *raw_folder,
	const void *data, size_t len, const char *flags, int64_t internaldate,
	uint32_t *new_uid_r, const char **error_r);
enum backend_status backend_find_appended(struct backend *be,
	const char *raw_folder, const void *data, size_t len,
	uint32_t uidvalidity, uint32_t min_uid, uint32_t *uid_r,
	const char **error_r);
enum backend_status backend_set_flags(struct backend *be,
	const char *raw_folder, uint32_t uidvalidity, uint32_t uid,
	const char *flags, const char **error_r);
enum backend_status backend_create_folder(struct backend *be,
	const char *raw_name, const char **error_r);
enum backend_status backend_delete_folder(struct backend *be,
	const char *raw_name, const char **error_r);
enum backend_status backend_rename_folder(struct backend *be,
	const char *raw_from, const char *raw_to, const char **error_r);
/* The encode_name slot, or NULL with *error_r when there is none (a
 * source without folders). */
char *backend_encode_name(struct backend *be, const char *raw_parent,
	const char *name, const char **error_r);

#endif
