/* A bounded pool of IMAP sessions shared by the FUSE worker threads.
 *
 * libetpan sessions are neither thread-safe nor pipelined, so concurrency
 * comes from several sessions: a thread checks one out, runs its commands,
 * and checks it back in.  The pool opens sessions lazily up to its size,
 * drops broken ones, and after a failed connect waits (backing off from 1 s
 * to 60 s) before trying again, so a dead server costs one timeout, not one
 * per operation.  No lock is held while a session talks to the server.
 */
#ifndef MAILFS_IMAP_POOL_H
#define MAILFS_IMAP_POOL_H

#include "proto/imap_session.h"

struct imap_pool;

/* ep is borrowed and must outlive the pool.  Returns NULL only when out of
 * memory. */
struct imap_pool *imap_pool_new(const struct mail_endpoint *ep, unsigned size);

/* Closes every idle session; sessions checked out must have been returned. */
void imap_pool_free(struct imap_pool **pool);

/* Hands an already opened session to the pool (the one made at mount time
 * to check the account).  The pool takes ownership. */
void imap_pool_adopt(struct imap_pool *pool, struct imap_session *s);

/* Checks a session out, opening one if none is idle and the pool is below
 * its size, or waiting for one to come back.  On failure returns the
 * status of the failed connect with *error_r set. */
enum backend_status imap_pool_get(struct imap_pool *pool,
	struct imap_session **s_r, const char **error_r);

/* Returns a session; broken sessions are closed.  Sets *s to NULL. */
void imap_pool_put(struct imap_pool *pool, struct imap_session **s);

/* Whether commands pause because the server asked to slow down: a
 * session returned by imap_pool_put() whose last answer said so (a NO
 * with "[THROTTLED]", "[UNAVAILABLE]", "Suggested Backoff Time: N
 * milliseconds", a BYE about bandwidth; see proto/server_pressure.h)
 * pauses every session, and imap_pool_get() waits for the pause when it
 * ends within the timeout, else fails at once with BACKEND_TEMP.  A login
 * refused for too many connections shrinks the pool to the sessions
 * open instead. */
bool imap_pool_paused(struct imap_pool *pool);

/* fn(ctx) is called, without the pool's lock, when the server refuses a
 * login for too many connections while the pool has none open: the
 * owner's other connections (IDLE) should give theirs up. */
void imap_pool_set_crowded_hook(struct imap_pool *pool, void (*fn)(void *),
	void *ctx);

/* Sessions open, how many the server allows now, how many were asked
 * for, and the pause the server imposed (ms left, 0: none). */
void imap_pool_connections(struct imap_pool *pool, unsigned *open_r,
	unsigned *allowed_r, unsigned *max_r, unsigned *pause_ms_r);

/* True after the most recent connect attempt failed and no session has
 * worked since: the mount is offline. */
bool imap_pool_offline(struct imap_pool *pool);

#endif
