/* The folder index: what each server folder holds, as mailfs last learned
 * it.  It does for listings what msg_reader does for content: it sits on
 * the backend and the metadata cache, and fs/ asks it instead of them.
 *
 * Per raw folder name it keeps the synchronisation state (UIDVALIDITY,
 * UIDNEXT, HIGHESTMODSEQ) and the listing in strict UID order with each
 * message's file name, resynchronises it through the backend, and loads,
 * saves and drops its copy in the metadata cache.
 *
 * Ownership.  A listing is handed out as a struct folder_listing: an
 * immutable snapshot held by reference.  It stays valid and unchanged
 * until folder_listing_release(), whatever happens to the folder
 * meanwhile; changes (rm, mv, a corrected size) make a new version.
 *
 * Threading.  Every call is thread-safe.  The index's lock is held only
 * for work in memory: never across network or file I/O, and the index
 * never calls back into its caller.  So callers may hold their own locks
 * around every call except folder_index_refresh and folder_index_load,
 * which do I/O (lock order: caller's lock -> index lock).
 *
 * Refresh scheduling is the index's too: it knows when each listing was
 * last fetched, serves a known listing at once and refreshes a stale one
 * in the background (folder_index_serve), lets one fetch at a time wait
 * the others out, and remembers a message moved in so that the next
 * serve fetches first.
 *
 * A refresh works on the listing it started from.  Removals and size
 * corrections reported while it waits on the server are applied again to
 * its answer, which may predate them: they are neither lost nor undone.
 */
#ifndef MAILFS_FOLDER_INDEX_H
#define MAILFS_FOLDER_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "src/backend.h"
#include "src/meta_cache.h"
#include "src/work_queue.h"

struct folder_listing {
	/* Grows with every version the index installs; a caller that keeps
	 * what it built from a listing compares serials to know whether a
	 * newer one exists.  Changes made through folder_index_remove and
	 * folder_index_settle_size keep it: their caller made them already. */
	uint64_t serial;
	struct backend_folder_state state;
	/* When the set of messages last changed as far as mailfs saw (seconds
	 * since the epoch; kept in the metadata cache).  The first listing
	 * takes its newest message's INTERNALDATE (0 when empty), so it does
	 * not depend on when mailfs first looked. */
	int64_t changed_at;
	size_t count;
	const struct backend_message *msgs;  /* strictly increasing UIDs */
	char *const *names;     /* names[i]: the file name of msgs[i] */
};

/* Derives the file names of a listing (UID order, borrowed) into
 * names_r[0..n), each malloc'd; returns 0, or -1 (nothing to free). */
typedef int folder_namer(const struct backend_message *msgs, size_t n,
	char **names_r);

struct folder_index;

/* be is borrowed; meta (may be NULL) is borrowed; both outlive the index. */
struct folder_index *folder_index_new(struct backend *be,
	struct meta_cache *meta, folder_namer *namer);
/* Saves listings changed since they were saved, then frees the index.
 * No other call may be running. */
void folder_index_free(struct folder_index **idx);

/* Refresh scheduling: a listing fetched more than refresh_s seconds ago
 * (or loaded from the metadata cache) is stale.  bg (borrowed; must be
 * freed before the index, after which no refresh is queued) runs the
 * background refreshes.  changed(ctx, raw_folder) is called after each
 * background or watcher refresh that succeeded, from that thread and
 * without the index's lock, to pick up the new version.  Call once,
 * before any other call but folder_index_new. */
void folder_index_schedule(struct folder_index *idx, unsigned refresh_s,
	struct work_queue *bg, void (*changed)(void *ctx, const char *raw),
	void *ctx);

/* The listing to serve for raw_folder at once (a reference), queuing a
 * background refresh when `fresh` is asked and it is stale; NULL when it
 * must be fetched first (then call folder_index_serve).  No I/O. */
struct folder_listing *folder_index_current(struct folder_index *idx,
	const char *raw_folder, bool fresh);

/* The listing to serve for raw_folder now, in *listing_r.  The known one
 * is served as it is, and when `fresh` is asked and it is stale, a
 * background refresh is queued (a slow or absent server never stalls a
 * listing).  When none is known, or a message was moved in since it was
 * fetched, it is fetched first: a fetch already under way is waited for,
 * and when that one failed or may predate the move, fetched again.  May
 * do network I/O: call without locks. */
enum backend_status folder_index_serve(struct folder_index *idx,
	const char *raw_folder, bool fresh, struct folder_listing **listing_r,
	const char **error_r);

/* Brings raw_folder's listing up to date through the backend
 * (incrementally from the one known) and returns the new version in
 * *listing_r.  Network I/O: call without locks. */
enum backend_status folder_index_refresh(struct folder_index *idx,
	const char *raw_folder, struct folder_listing **listing_r,
	const char **error_r);

/* The listing the metadata cache holds for raw_folder, installed as the
 * known one when none is known yet; 0, or -1 when there is none.  File
 * I/O: call without locks. */
int folder_index_load(struct folder_index *idx, const char *raw_folder,
	struct folder_listing **listing_r);

/* The known listing, or NULL when none is. */
struct folder_listing *folder_index_get(struct folder_index *idx,
	const char *raw_folder);

/* A reference to a listing already held. */
struct folder_listing *folder_listing_ref(struct folder_listing *l);
void folder_listing_release(struct folder_listing **l);
/* The index of uid in l, or -1. */
ptrdiff_t folder_listing_find(const struct folder_listing *l, uint32_t uid);

/* A message is gone through the mount (rm, mv away). */
void folder_index_remove(struct folder_index *idx, const char *raw_folder,
	uint32_t uidvalidity, uint32_t uid);
/* A full read showed a message's real size (an estimate until then). */
void folder_index_settle_size(struct folder_index *idx,
	const char *raw_folder, uint32_t uidvalidity, uint32_t uid,
	uint64_t size);
/* The folder changed through the mount in a way its next resync must not
 * take on trust (flags set): it compares every UID. */
void folder_index_distrust(struct folder_index *idx, const char *raw_folder);
/* A message was moved or copied into the folder: distrusted as above, and
 * the next folder_index_serve fetches before it serves, so that the new
 * message is seen at once. */
void folder_index_moved_in(struct folder_index *idx, const char *raw_folder);
/* Forgets the folder's listing, in memory and on disk (deleted, renamed;
 * one unlink). */
void folder_index_forget(struct folder_index *idx, const char *raw_folder);

/* Watches raw_folder for changes other clients make (IMAP IDLE) from a
 * thread of its own: after each, the folder is refreshed and the changed
 * callback of folder_index_schedule called.  Does nothing when the
 * backend cannot watch.  At most one folder is watched; folder_index_free
 * stops the watcher (before the caller frees what changed() uses, call
 * folder_index_stop_watch). */
void folder_index_watch(struct folder_index *idx, const char *raw_folder);
void folder_index_stop_watch(struct folder_index *idx);

#endif
