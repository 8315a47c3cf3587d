/* Directories mailfs makes its own: the cache and the outbox spool.
 *
 * mailfs deletes files in these and makes them private (0700), so it must
 * never take a directory that holds someone else's files.  A directory it
 * owns holds a marker file, written when mailfs creates (or adopts) it:
 *
 *   missing            created (parents too, 0700), marked
 *   marked             used as it is
 *   empty, unmarked    adopted: made 0700 and marked
 *   unmarked, holding only what an earlier mailfs left (the caller's
 *   `earlier` test)    adopted likewise
 *   anything else      refused, untouched
 */
#ifndef MAILFS_OWNED_DIR_H
#define MAILFS_OWNED_DIR_H

#include <stdbool.h>

/* Opens dir as described above.  marker is the marker's file name; what
 * names what the directory is for, in messages ("cache", "outbox
 * spool").  earlier(dir_fd) may be NULL.  Returns an O_DIRECTORY
 * descriptor (owned by the caller), or -errno with *error_r set to one
 * line for the user (see errfmt()). */
int owned_dir_open(const char *dir, const char *marker, const char *what,
	bool (*earlier)(int dir_fd), const char **error_r);

/* For `earlier` tests: whether every entry of dir_fd is one of names
 * (NULL-terminated), a directory if its name is in dirs, else a regular
 * file. */
bool owned_dir_only(int dir_fd, const char *const *dirs,
	const char *const *files);

#endif
