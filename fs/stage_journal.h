/* The copy-in journal on disk.
 *
 * Each file copied into a folder is kept in the staging directory as two
 * files until the server has it:
 *
 *     copyin-<16 hex digits>        the bytes, as written
 *     copyin-<16 hex digits>.job    where they go: a small text record
 *
 * The record is rewritten whole (a temporary file, fsync, rename, fsync of
 * the directory), so after a crash it is either the old or the new one.
 * Its text is one "key value" per line after the first line
 * "mailfs-copy-in 1"; values are percent-encoded (bytes up to ' ', DEL,
 * '%' and bytes over 0x7e), so any folder or file name fits on a line.
 * A last line "end" tells a complete record from a cut one.  Unknown keys
 * are skipped, so a later version may add some.
 *
 * The journal knows nothing about the file system tree or the server: it
 * only stores and reads these records (fs_stage.c decides what they
 * mean). */
#ifndef MAILFS_STAGE_JOURNAL_H
#define MAILFS_STAGE_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum stage_state {
	STAGE_READY,     /* to be appended */
	STAGE_SENDING,   /* an APPEND was started: it may have arrived */
	STAGE_FAILED,    /* refused for good: kept, never retried */
};

struct stage_record {
	char *folder;        /* raw server folder name; owned */
	char *name;          /* file name in that folder; owned */
	char *flags;         /* user.mail.flags, may be ""; owned */
	int64_t date;        /* INTERNALDATE to ask for; -1: none set */
	enum stage_state state;
	/* With STAGE_SENDING: the folder's UIDVALIDITY and a UID no greater
	 * than the one the APPEND would get (0: unknown). */
	uint32_t uidvalidity, min_uid;
	char *reason;        /* with STAGE_FAILED: the server's words; owned */
};

/* Frees the owned strings and zeroes r. */
void stage_record_clear(struct stage_record *r);

/* The record as text; malloc'd, owned by the caller; NULL when out of
 * memory or when folder or name is NULL. */
char *stage_record_format(const struct stage_record *r);

/* Parses text (len bytes, need not be NUL-terminated) into *r, whose
 * strings are then owned by the caller (stage_record_clear).  Returns 0,
 * -EINVAL for anything but a complete record, or -ENOMEM. */
int stage_record_parse(const char *text, size_t len, struct stage_record *r);

/* Writes the record to path durably: it is complete on disk, under that
 * name, when this returns 0.  Returns -errno on failure (the old record,
 * if any, is left as it was). */
int stage_record_save(const char *path, const struct stage_record *r);

/* Reads a record written by stage_record_save.  Returns 0, -errno, or
 * -EINVAL for a damaged record. */
int stage_record_load(const char *path, struct stage_record *r);

/* Removes a record durably (the directory is synced).  Returns 0 or
 * -errno; a record already gone is not an error. */
int stage_record_remove(const char *path);

/* Creates a new empty data file in dir with a name no other file has,
 * opened read-write (O_EXCL: an old file is never reused).  Returns the
 * descriptor, with *data_path_r and *record_path_r (malloc'd, owned by
 * the caller) naming the file and its future record; -errno on failure. */
int stage_file_create(const char *dir, char **data_path_r,
	char **record_path_r);

/* Whether a name in the staging directory is a record (copyin-*.job) or a
 * data file (copyin-*). */
bool stage_is_record_name(const char *name);
bool stage_is_data_name(const char *name);

/* Syncs the directory holding path.  Returns 0 or -errno. */
int stage_sync_dir_of(const char *path);

#endif
