/* Directory names for a server's folders.
 *
 * Turns a folder listing into the directories the mount shows: one per
 * folder, plus the parents that deeper folders imply, each component made
 * safe by folder_name_sanitize().  Two server folders never share a
 * directory: when their names are the same once made safe ("a/b" in a
 * flat name and "a_b", names that differ only in control characters),
 * the one shown unchanged keeps the name and the others get "~2", "~3",
 * ... in the order of their raw names, so the result does not depend on
 * the order of the server's listing.  Folders whose raw names cannot be
 * sent back safely (backend_raw_name_sendable) are left out, and so is
 * whatever lies below a path longer than FOLDER_DIR_PATH_MAX.
 *
 * Cost: O(n log n) in the number of folders, collisions included (hash
 * lookups, and a per-name counter of the next free suffix).
 *
 * Pure code, no locks, no I/O.
 */
#ifndef MAILFS_FOLDER_DIRS_H
#define MAILFS_FOLDER_DIRS_H

#include <stdbool.h>
#include <stddef.h>

#include "src/backend.h"

#define FOLDER_DIR_PATH_MAX 4095
#define FOLDER_DIR_TOP ((size_t)-1)

struct node;

struct folder_dir {
	char *path;       /* sanitised components joined by '/'; owned */
	char *name;       /* its last component; owned */
	char *raw;        /* server name, NULL for an implied parent; owned */
	bool selectable;  /* holds messages */
	bool real;        /* listed by the server (not only implied) */
	size_t depth;     /* 0 at the top */
	size_t parent;    /* index of the parent entry, FOLDER_DIR_TOP */
	struct node *node;  /* free for the caller; NULL on return */
};

/* The directories for folders f[0..nf) whose hierarchy delimiter is delim
 * (0: flat), sorted by depth, then path, so that parents come before
 * their children.  Returns a malloc'd array of *count_r entries owned by
 * the caller (folder_dirs_free), or NULL when out of memory.  f is
 * borrowed. */
struct folder_dir *folder_dirs_build(const struct backend_folder *f,
	size_t nf, char delim, size_t *count_r);

void folder_dirs_free(struct folder_dir *d, size_t n);

#endif
