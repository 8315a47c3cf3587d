/* The metadata cache: folder lists and per-folder message listings on
 * disk, so a remount lists every folder without waiting for the network
 * and resynchronises only what changed.
 *
 * Files under <dir>/meta/: "folders" for the folder list and one file per
 * folder named by 32 hex digits of XXH3-128 of its raw name.  Each file is
 * a header (magic, version, payload length, XXH3-64 of the payload) and the
 * payload; it is written to a temp file, fsynced and renamed, so a crash
 * leaves either the old or the new listing, and a file that fails its
 * checksum is treated as absent.  Files are 0600, directories 0700.
 * Thread-safe: every call works on its own files.
 */
#ifndef MAILFS_META_CACHE_H
#define MAILFS_META_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "src/backend.h"

struct meta_cache;

/* Opens (creating) <dir>/meta and removes temp files left by a crash.
 * Returns 0, or -1 with *error_r set.  Release with meta_cache_close. */
int meta_cache_open(const char *dir, struct meta_cache **mc_r,
	const char **error_r);
void meta_cache_close(struct meta_cache **mc);

/* Saves/loads the folder list.  load returns 0 with *folders_r owned by
 * the caller (backend_folders_free), or -1 when absent or corrupt. */
int meta_cache_save_folders(struct meta_cache *mc,
	const struct backend_folder *folders, size_t count);
int meta_cache_load_folders(struct meta_cache *mc,
	struct backend_folder **folders_r, size_t *count_r);

/* Saves/loads one folder's state, the time its list of messages last
 * changed (seconds since the epoch, as the folder index keeps it) and its
 * messages (UID order).  load returns 0 with *msgs_r owned by the caller
 * (backend_messages_free), or -1; what it returns is in strict UID order
 * even when the file was not (see backend_messages_normalize). */
int meta_cache_save_messages(struct meta_cache *mc, const char *raw_folder,
	const struct backend_folder_state *state, int64_t changed_at,
	const struct backend_message *msgs, size_t count);
int meta_cache_load_messages(struct meta_cache *mc, const char *raw_folder,
	struct backend_folder_state *state_r, int64_t *changed_at_r,
	struct backend_message **msgs_r, size_t *count_r);

/* When each directory's list of folders last changed: the path of the
 * directory in the mount ("" for the top) and seconds since the epoch. */
struct meta_dir_time {
	char *path;          /* owned */
	int64_t changed_at;
};

/* Saves/loads them ("dirs").  load returns 0 with *times_r owned by the
 * caller (meta_dir_times_free), or -1 when absent or corrupt. */
int meta_cache_save_dir_times(struct meta_cache *mc,
	const struct meta_dir_time *times, size_t count);
int meta_cache_load_dir_times(struct meta_cache *mc,
	struct meta_dir_time **times_r, size_t *count_r);
void meta_dir_times_free(struct meta_dir_time **times, size_t count);

/* Forgets one folder's listing (UIDVALIDITY changed, folder deleted). */
void meta_cache_drop_messages(struct meta_cache *mc, const char *raw_folder);

#endif
