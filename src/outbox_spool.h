/* The outbox spool: a durable queue of messages waiting to be sent.
 *
 * Layout under the spool directory (directories 0700, files 0600):
 *
 *   .mailfs-spool  says that mailfs made the directory (src/owned_dir.h):
 *                  a directory without it is only taken if empty
 *   lock           flock()ed while open: one mailfs per spool
 *   tmp/           files being written; emptied when the spool opens
 *   queue/NAME     a message, as it will be sent (CRLF, Date, Message-ID;
 *                  Bcc still present: it is removed on the wire only)
 *   state/NAME     its delivery state (outbox_state_format()), written
 *                  the first time something happens to it
 *   failed/NAME    a message that cannot be sent, and beside it
 *   failed/NAME.error  why, in words for the user
 *   drafts/NAME    a file of outbox/ not handed to the queue (a draft, a
 *                  file being written, one whose close() failed); the
 *                  fs side (fs_outbox) owns these files
 *
 * Every change is made durable before it is reported: a file is written
 * under tmp/, fsynced, renamed into place, and the directory fsynced.  So
 * when outbox_spool_submit() returns 0 the message survives a crash, and
 * a state file is always complete (old or new, never half).
 *
 * NAME is the file name the user gave in outbox/: see
 * outbox_spool_name_check() for what is accepted.  A name already queued
 * is refused (EEXIST); a name already in failed/ gets a "~2", "~3", ...
 * suffix there instead of replacing the older file.
 *
 * All functions are thread-safe.  A mutex guards the in-memory index of
 * queued messages; it is never held during file I/O.  A second mutex
 * serialises changes to failed/ (local file I/O only).
 *
 * Functions returning int return 0 on success or a negative errno value
 * (for the fs layer to pass on), with *error_r set when they take one.
 */
#ifndef MAILFS_OUTBOX_SPOOL_H
#define MAILFS_OUTBOX_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Longest NAME accepted: leaves room for "~NN.error" within NAME_MAX. */
#define OUTBOX_NAME_MAX 240
/* Longest server reply kept in a state file or status string. */
#define OUTBOX_REPLY_MAX 512

struct outbox_spool;

enum outbox_area {
	OUTBOX_QUEUE,
	OUTBOX_FAILED,
};

/* ------------------------------------------------------------------ */
/* Per-message delivery state                                          */

enum outbox_rcpt_status {
	OUTBOX_RCPT_PENDING,   /* not delivered yet (maybe deferred) */
	OUTBOX_RCPT_INFLIGHT,  /* accepted by RCPT; DATA under way.  Found at
	                          start-up it means the outcome is unknown:
	                          sent again (a possible duplicate). */
	OUTBOX_RCPT_SENT,      /* the server took responsibility: never again */
	OUTBOX_RCPT_FAILED,    /* rejected permanently */
};

struct outbox_rcpt {
	char *addr;            /* owned */
	enum outbox_rcpt_status status;
	char *reply;           /* last server reply about it, or NULL; owned */
};

/* Only recipients that something happened to are listed; the others are
 * pending.  Times are seconds since the epoch. */
struct outbox_state {
	int64_t queued;        /* when first queued */
	int64_t next_attempt;  /* not before then; 0: as soon as possible */
	unsigned attempts;     /* attempts that ended in a temporary failure */
	bool filed;            /* the copy in Sent was made (or given up) */
	bool filing;           /* the Sent folder had no copy: one is being
	                          filed (an APPEND may have reached it) */
	char *last_reply;      /* why the last attempt failed, or NULL; owned */
	struct outbox_rcpt *rcpts;  /* owned */
	size_t n_rcpts;
};

void outbox_state_clear(struct outbox_state *state);

/* The recipient entry for addr (case-insensitive), created as PENDING if
 * absent.  Returns NULL when out of memory.  The pointer is valid until
 * the next call that adds a recipient. */
struct outbox_rcpt *outbox_state_rcpt(struct outbox_state *state,
	const char *addr);

/* Sets a recipient's reply (copied, control characters replaced, cut to
 * OUTBOX_REPLY_MAX), or clears it with NULL.  Likewise for last_reply. */
int outbox_rcpt_set_reply(struct outbox_rcpt *rcpt, const char *reply);
int outbox_state_set_reply(struct outbox_state *state, const char *reply);

/* Text form of a state, "mailfs-outbox-state 1" ... "end".  *text_r is
 * malloc'd and owned by the caller. */
int outbox_state_format(const struct outbox_state *state, char **text_r,
	size_t *len_r);

/* Parses outbox_state_format() output into *state_r (owned by the
 * caller).  Returns 0, or -1 with *error_r set for anything truncated or
 * malformed. */
int outbox_state_parse(const char *text, size_t len,
	struct outbox_state *state_r, const char **error_r);

/* For a state file outbox_state_parse() refuses: *state_r (owned by the
 * caller) gets what every whole, well-formed line says, the rest is
 * ignored.  Recipients it records as sent are then not sent to again. */
void outbox_state_salvage(const char *text, size_t len,
	struct outbox_state *state_r);

/* ------------------------------------------------------------------ */
/* Opening                                                             */

/* Opens the spool under dir, creating it (0700) if needed (or refusing a
 * directory that is not mailfs's, see owned_dir_open()), and locks it.
 * Removes leftover files in tmp/ and state files of messages no longer
 * queued, and loads every queued message's state (a message without one
 * counts as queued at its file's modification time).  The caller owns
 * *spool_r: release with outbox_spool_close().  Returns 0 or -errno with
 * *error_r set (-EBUSY: another mailfs holds the lock). */
int outbox_spool_open(const char *dir, struct outbox_spool **spool_r,
	const char **error_r);

/* Releases the spool and its lock; sets *spool to NULL.  The sender must
 * be stopped first. */
void outbox_spool_close(struct outbox_spool **spool);

/* The path of drafts/ (owned by the spool, valid while it is open). */
const char *outbox_spool_drafts_dir(const struct outbox_spool *spool);

/* Called (from the enqueuing thread, with no spool lock held) after each
 * message is queued; the sender uses it to wake up.  fn may be NULL. */
void outbox_spool_set_notify(struct outbox_spool *spool,
	void (*fn)(void *ctx), void *ctx);

/* 0 if name can be queued, else -EINVAL (empty, ".", "..", starts with
 * '.', holds '/', a control character or invalid UTF-8, or ends in
 * ".error") or -ENAMETOOLONG (more than OUTBOX_NAME_MAX bytes), with
 * *error_r saying which. */
int outbox_spool_name_check(const char *name, const char **error_r);

/* ------------------------------------------------------------------ */
/* The fs side                                                         */

/* What close() in outbox/ does: validates data (outbox_message_parse()
 * with default_from, may be NULL), completes it (From, Date, Message-ID)
 * and queues it under name, durably, before returning 0.
 *  -EINVAL  the message is invalid: it was kept as failed/NAME with
 *           NAME.error holding *error_r (unless the name itself is the
 *           problem, then nothing was written)
 *  -EEXIST  a message of that name is already queued
 *  -ENAMETOOLONG, -ENOSPC, -EIO, ...  nothing was queued
 * `now` is the submission time (Date field and queue time). */
int outbox_spool_submit(struct outbox_spool *spool, const char *name,
	const char *data, size_t len, const char *default_from, time_t now,
	const char **error_r);

/* Queues data (taken as is, no validation) under name: the durable part
 * of outbox_spool_submit(). */
int outbox_spool_enqueue(struct outbox_spool *spool, const char *name,
	const char *data, size_t len, time_t now, const char **error_r);

/* Writes data as failed/NAME (or NAME~N) with NAME.error holding reason.
 * If name_r is not NULL it receives the name used (malloc'd). */
int outbox_spool_store_failed(struct outbox_spool *spool, const char *name,
	const char *data, size_t len, const char *reason, char **name_r,
	const char **error_r);

/* One file as the fs shows it. */
struct outbox_entry {
	char *name;            /* owned */
	uint64_t size;
	int64_t mtime;         /* queue: when queued; failed: the file's */
	char *status;          /* queue only, else NULL; owned.  "queued",
	                          "sending", or "deferred until
	                          2025-06-04 12:00:00 +0200: <last reply>" */
};

void outbox_entries_free(struct outbox_entry *entries, size_t count);

/* The queued messages, in queue order, or the files of failed/ (messages
 * and their .error files, sorted by name).  *entries_r is owned by the
 * caller: release with outbox_entries_free(). */
int outbox_spool_list(struct outbox_spool *spool, enum outbox_area area,
	struct outbox_entry **entries_r, size_t *count_r);

/* The status string of one queued message into buf (cut to size), for
 * the user.mail.status xattr.  -ENOENT if it is not queued. */
int outbox_spool_status(struct outbox_spool *spool, const char *name,
	char *buf, size_t size);

/* Opens a queued or failed file read-only; returns the descriptor (owned
 * by the caller) or -errno. */
int outbox_spool_open_file(struct outbox_spool *spool, enum outbox_area area,
	const char *name);

/* The user deletes a file.  Queue: the message is dropped, -EBUSY while
 * it is being sent.  Failed: NAME removes NAME and NAME.error; NAME.error
 * removes only itself.  -ENOENT if absent. */
int outbox_spool_remove(struct outbox_spool *spool, enum outbox_area area,
	const char *name);

/* ------------------------------------------------------------------ */
/* The sender side                                                     */

/* Claims the queued message that is due first (next_attempt <= now,
 * oldest first) and marks it "sending".  Returns 1 with *name_r
 * (malloc'd), or 0 when nothing is due, with *next_due_r the earliest
 * next_attempt of the others (INT64_MAX if the queue is empty). */
int outbox_spool_claim(struct outbox_spool *spool, time_t now,
	char **name_r, int64_t *next_due_r);

/* Gives a claimed message back to the queue (after outbox_spool_save()
 * rescheduled it). */
void outbox_spool_release(struct outbox_spool *spool, const char *name);

/* Reads a claimed message and its state.  *data_r (malloc'd) and
 * *state_r are owned by the caller. */
int outbox_spool_load(struct outbox_spool *spool, const char *name,
	char **data_r, size_t *len_r, struct outbox_state *state_r,
	const char **error_r);

/* Replaces the state of a queued message, durably, and updates the index
 * (next attempt, status string). */
int outbox_spool_save(struct outbox_spool *spool, const char *name,
	const struct outbox_state *state, const char **error_r);

/* Ends a claimed message: with failure == NULL it was delivered and is
 * removed; else it moves to failed/ with failure as NAME.error.  The
 * claim ends either way. */
int outbox_spool_finish(struct outbox_spool *spool, const char *name,
	const char *failure, const char **error_r);

#endif
