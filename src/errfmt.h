/* Error strings for the `const char **error_r` convention. */
#ifndef MAILFS_ERRFMT_H
#define MAILFS_ERRFMT_H

/* Formats into one of a small ring of thread-local buffers and returns it.
 * The result stays valid until the same thread has formatted 8 more
 * strings, which is long enough to pass it up a call chain.  Output longer
 * than 512 bytes is truncated. */
const char *errfmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
