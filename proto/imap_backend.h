/* The IMAP implementation of struct backend (src/backend.h). */
#ifndef MAILFS_IMAP_BACKEND_H
#define MAILFS_IMAP_BACKEND_H

#include "proto/imap_session.h"
#include "src/backend.h"

/* Creates the backend over a pool of `connections` sessions to ep (borrowed;
 * must outlive the backend).  `first` is the session opened at mount time
 * to check the account, or NULL when the server could not be reached (the
 * mount then starts offline and reconnects by itself); the backend takes
 * ownership of it.  Release with backend_destroy(). */
struct backend *imap_backend_new(const struct mail_endpoint *ep,
	unsigned connections, struct imap_session *first);

#endif
