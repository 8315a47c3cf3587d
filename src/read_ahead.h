/* Read-ahead across files: notices a folder being read file after file,
 * in the order of its names (grep -r) or of its inode numbers (cp -r and
 * rsync read a directory in that order), and says which messages' heads
 * to fetch next, so that they arrive in a few batched commands instead
 * of one round trip per file.
 *
 * It keeps, per folder, the two reading orders of the listing it last
 * saw and how far each was read and queued; both are rebuilt when the
 * listing changes.  The listing itself is only borrowed for a call.
 *
 * Threading: every call is thread-safe; the lock is held for work in
 * memory only, and no callback is made.
 */
#ifndef MAILFS_READ_AHEAD_H
#define MAILFS_READ_AHEAD_H

#include <stddef.h>
#include <stdint.h>

#include "src/folder_index.h"

/* How many files ahead of the reader are queued. */
#define READ_AHEAD_FILES 384

/* The second reading order: a number per message (its inode number). */
typedef uint64_t read_ahead_key(const char *raw_folder,
	uint32_t uidvalidity, uint32_t uid);

struct read_ahead;

struct read_ahead *read_ahead_new(read_ahead_key *key);
void read_ahead_free(struct read_ahead **ra);

/* Message uid of listing l (borrowed) of raw_folder was read from its
 * start.  Returns how many messages' heads to fetch next, their UIDs and
 * sizes in *uids_r and *sizes_r (malloc'd, the caller's to free; NULL
 * when 0 is returned). */
size_t read_ahead_next(struct read_ahead *ra, const char *raw_folder,
	const struct folder_listing *l, uint32_t uid, uint32_t **uids_r,
	uint64_t **sizes_r);

#endif
