#include <errno.h>
#include <stdio.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "proto/imap_pool.h"
#include "proto/mail_conn.h"
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
};

struct imap_pool *imap_pool_new(const struct mail_endpoint *ep, unsigned size)
{
	struct imap_pool *pool = calloc(1, sizeof(*pool));

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
	pthread_mutex_init(&pool->lock, NULL);
	pthread_cond_init(&pool->returned, NULL);
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

enum backend_status imap_pool_get(struct imap_pool *pool,
	struct imap_session **s_r, const char **error_r)
{
	struct imap_session *s = NULL;
	enum backend_status st;
	const char *error;

	pthread_mutex_lock(&pool->lock);
	for (;;) {
		if (pool->n_idle > 0) {
			/* LIFO: the most recently used session is the
			 * likeliest to still have the right folder selected. */
			*s_r = pool->idle[--pool->n_idle];
			pthread_mutex_unlock(&pool->lock);
			return BACKEND_OK;
		}
		if (pool->open < pool->size)
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
		pool->open--;
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

void imap_pool_put(struct imap_pool *pool, struct imap_session **sp)
{
	struct imap_session *s = *sp;

	if (!s)
		return;
	*sp = NULL;
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
