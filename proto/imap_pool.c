#include <errno.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "proto/imap_pool.h"
#include "proto/mail_conn.h"
#include "proto/server_pressure.h"
#include "src/errfmt.h"
#include "src/log.h"


struct imap_pool {
	const struct mail_endpoint *ep;
	pthread_mutex_t lock;
	pthread_cond_t returned;
	unsigned size;
	unsigned open;            /* sessions in existence, idle or out */
	unsigned n_idle;
	struct imap_session **idle;
	struct reconnect_gate gate;
	struct server_pressure pressure;
	void (*crowded)(void *ctx);   /* see imap_pool_set_crowded_hook */
	void *crowded_ctx;
};

struct imap_pool *imap_pool_new(const struct mail_endpoint *ep, unsigned size)
{
	struct imap_pool *pool = calloc(1, sizeof(*pool));
	pthread_condattr_t attr;

	if (!pool)
		return NULL;
	pool->idle = calloc(size ? size : 1, sizeof(*pool->idle));
	if (!pool->idle) {
		free(pool);
		return NULL;
	}
	pool->ep = ep;
	pool->gate.what = "server";
	pool->size = size ? size : 1;
	server_pressure_init(&pool->pressure, pool->size);
	pthread_mutex_init(&pool->lock, NULL);
	/* Pauses are timed on the monotonic clock. */
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&pool->returned, &attr);
	pthread_condattr_destroy(&attr);
	return pool;
}

void imap_pool_free(struct imap_pool **poolp)
{
	struct imap_pool *pool = *poolp;

	if (!pool)
		return;
	for (unsigned i = 0; i < pool->n_idle; i++)
		imap_session_close(&pool->idle[i]);
	pthread_mutex_destroy(&pool->lock);
	pthread_cond_destroy(&pool->returned);
	free(pool->idle);
	free(pool);
	*poolp = NULL;
}

void imap_pool_adopt(struct imap_pool *pool, struct imap_session *s)
{
	pthread_mutex_lock(&pool->lock);
	pool->open++;
	pool->idle[pool->n_idle++] = s;
	pthread_mutex_unlock(&pool->lock);
}

bool imap_pool_offline(struct imap_pool *pool)
{
	bool offline;

	pthread_mutex_lock(&pool->lock);
	offline = pool->gate.offline;
	pthread_mutex_unlock(&pool->lock);
	return offline;
}

/* Waits on pool->returned until woken or `until` (monotonic ms). */
static void wait_until_ms(struct imap_pool *pool, int64_t until)
{
	struct timespec ts = {
		.tv_sec = until / 1000,
		.tv_nsec = (long)(until % 1000) * 1000000L,
	};

	pthread_cond_timedwait(&pool->returned, &pool->lock, &ts);
}

/* Before trying again to log in when the server refused a connection
 * and none of ours is open (another client or our IDLE holds them). */
#define CROWDED_RETRY_MS 1000

void imap_pool_set_crowded_hook(struct imap_pool *pool, void (*fn)(void *),
	void *ctx)
{
	pthread_mutex_lock(&pool->lock);
	pool->crowded = fn;
	pool->crowded_ctx = ctx;
	pthread_mutex_unlock(&pool->lock);
}

void imap_pool_connections(struct imap_pool *pool, unsigned *open_r,
	unsigned *allowed_r, unsigned *max_r, unsigned *pause_ms_r)
{
	int64_t wait;

	pthread_mutex_lock(&pool->lock);
	*open_r = pool->open;
	*allowed_r = server_pressure_allowed(&pool->pressure);
	*max_r = pool->size;
	wait = server_pressure_wait_ms(&pool->pressure);
	*pause_ms_r = wait > 0 ? (unsigned)wait : 0;
	pthread_mutex_unlock(&pool->lock);
}

enum backend_status imap_pool_get(struct imap_pool *pool,
	struct imap_session **s_r, const char **error_r)
{
	struct imap_session *s = NULL;
	enum backend_status st;
	const char *error;
	/* How long a caller may wait for the server's pauses: as long as
	 * one exchange may stay silent. */
	int64_t deadline = server_pressure_now_ms() +
		(int64_t)(pool->ep->timeout_s > 0 ? pool->ep->timeout_s : 30) *
		1000;
	unsigned hint;

	pthread_mutex_lock(&pool->lock);
again:
	for (;;) {
		int64_t pause = server_pressure_wait_ms(&pool->pressure);

		if (pause > 0) {
			int64_t now = server_pressure_now_ms();

			server_pressure_waiting(&pool->pressure, pause);

			if (now + pause > deadline) {
				pthread_mutex_unlock(&pool->lock);
				*error_r = errfmt("the server asked to pause"
					" for %lld s more",
					(long long)(pause + 999) / 1000);
				return BACKEND_TEMP;
			}
			wait_until_ms(pool, now + pause);
			continue;
		}
		if (pool->n_idle > 0) {
			/* LIFO: the most recently used session is the
			 * likeliest to still have the right folder selected. */
			*s_r = pool->idle[--pool->n_idle];
			pthread_mutex_unlock(&pool->lock);
			return BACKEND_OK;
		}
		if (pool->open < server_pressure_allowed(&pool->pressure))
			break;
		pthread_cond_wait(&pool->returned, &pool->lock);
	}
	if (reconnect_gate_closed(&pool->gate, &st, error_r)) {
		pthread_mutex_unlock(&pool->lock);
		return st;
	}
	pool->open++;
	pthread_mutex_unlock(&pool->lock);

	st = imap_session_open(pool->ep, &s, &error);

	pthread_mutex_lock(&pool->lock);
	if (st != BACKEND_OK) {
		/* Some servers say "login failed" for a limit: the words
		 * decide, not the status. */
		enum pressure_kind kind = server_pressure_classify(error, true,
			&hint);

		pool->open--;
		if (kind == PRESSURE_CONNECTIONS && pool->open > 0) {
			/* Ours hold what the server allows: share them. */
			server_pressure_limit(&pool->pressure, pool->open);
			goto again;
		}
		if (kind == PRESSURE_CONNECTIONS &&
		    server_pressure_now_ms() + CROWDED_RETRY_MS < deadline) {
			/* None of ours for reading: IDLE gives way. */
			void (*crowded)(void *) = pool->crowded;
			void *ctx = pool->crowded_ctx;

			if (pool->pressure.allowed > 1)
				server_pressure_limit(&pool->pressure, 1);
			pthread_mutex_unlock(&pool->lock);
			if (crowded)
				crowded(ctx);
			pthread_mutex_lock(&pool->lock);
			wait_until_ms(pool, server_pressure_now_ms() +
				CROWDED_RETRY_MS);
			goto again;
		}
		if (kind == PRESSURE_THROTTLED) {
			server_pressure_throttled(&pool->pressure, hint);
			goto again;
		}
		reconnect_gate_failed(&pool->gate, st, error);
		/* Let a waiter try (or fail fast) instead of sleeping on us. */
		pthread_cond_signal(&pool->returned);
		pthread_mutex_unlock(&pool->lock);
		*error_r = errfmt("%s", error);
		return st;
	}
	reconnect_gate_opened(&pool->gate);
	pthread_mutex_unlock(&pool->lock);
	*s_r = s;
	return BACKEND_OK;
}

bool imap_pool_paused(struct imap_pool *pool)
{
	bool paused;

	pthread_mutex_lock(&pool->lock);
	paused = server_pressure_wait_ms(&pool->pressure) > 0;
	pthread_mutex_unlock(&pool->lock);
	return paused;
}

void imap_pool_put(struct imap_pool *pool, struct imap_session **sp)
{
	struct imap_session *s = *sp;
	unsigned hint;

	if (!s)
		return;
	*sp = NULL;
	/* The session's last answer: a refusal asking to slow down pauses
	 * every session (a BYE breaks the session). */
	if (server_pressure_classify(imap_session_last_text(s),
			imap_session_broken(s), &hint) == PRESSURE_THROTTLED) {
		pthread_mutex_lock(&pool->lock);
		server_pressure_throttled(&pool->pressure, hint);
		pthread_mutex_unlock(&pool->lock);
	}
	if (imap_session_broken(s)) {
		imap_session_close(&s);
		pthread_mutex_lock(&pool->lock);
		pool->open--;
	} else {
		pthread_mutex_lock(&pool->lock);
		pool->idle[pool->n_idle++] = s;
	}
	pthread_cond_signal(&pool->returned);
	pthread_mutex_unlock(&pool->lock);
}
