/* File names made safe: what a directory entry may be called, whatever
 * text it comes from (a folder name, an attachment's name).  Pure code. */
#ifndef MAILFS_FILE_NAME_H
#define MAILFS_FILE_NAME_H

#define FILE_NAME_MAX 255

/* Turns one decoded name component into a safe file name: invalid UTF-8
 * bytes, control characters and '/' are replaced by '_', "." and ".."
 * become "_." and "_..", an empty (or NULL) name becomes "_", and the
 * result is cut at a character boundary to FILE_NAME_MAX bytes.  Control
 * characters are C0, DEL and C1 (U+0080-U+009F); one '_' replaces each
 * bad byte or character.  Malloc'd, owned by the caller; NULL only on
 * allocation failure. */
char *folder_name_sanitize(const char *component);

#endif
