#include <pthread.h>
#include <stdlib.h>

#include "src/work_queue.h"

struct work {
	struct work *next;
	void (*run)(void *arg);
	void (*cancel)(void *arg);
	void *arg;
};

struct work_queue {
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct work *head, **tail;
	size_t queued, max_queued;
	bool stopping;
	pthread_t *threads;
	unsigned n_threads;     /* running */
	unsigned want_threads;
};

static void *worker_main(void *arg)
{
	struct work_queue *q = arg;

	pthread_mutex_lock(&q->lock);
	for (;;) {
		struct work *w;

		while (!q->head && !q->stopping)
			pthread_cond_wait(&q->wake, &q->lock);
		if (q->stopping)
			break;
		w = q->head;
		q->head = w->next;
		if (!q->head)
			q->tail = &q->head;
		q->queued--;
		pthread_mutex_unlock(&q->lock);
		w->run(w->arg);
		free(w);
		pthread_mutex_lock(&q->lock);
	}
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

struct work_queue *work_queue_new(unsigned n_threads, size_t max_queued)
{
	struct work_queue *q = calloc(1, sizeof(*q));

	if (!q)
		return NULL;
	q->want_threads = n_threads ? n_threads : 1;
	q->threads = calloc(q->want_threads, sizeof(*q->threads));
	if (!q->threads) {
		free(q);
		return NULL;
	}
	pthread_mutex_init(&q->lock, NULL);
	pthread_cond_init(&q->wake, NULL);
	q->tail = &q->head;
	q->max_queued = max_queued;
	return q;
}

int work_queue_start(struct work_queue *q)
{
	while (q->n_threads < q->want_threads &&
	       pthread_create(&q->threads[q->n_threads], NULL, worker_main,
		       q) == 0)
		q->n_threads++;
	return q->n_threads > 0 ? 0 : -1;
}

bool work_queue_submit(struct work_queue *q, void (*run)(void *arg),
	void (*cancel)(void *arg), void *arg)
{
	struct work *w = malloc(sizeof(*w));
	bool ok;

	if (!w)
		return false;
	*w = (struct work){ NULL, run, cancel, arg };
	pthread_mutex_lock(&q->lock);
	ok = !q->stopping && q->queued < q->max_queued;
	if (ok) {
		*q->tail = w;
		q->tail = &w->next;
		q->queued++;
		pthread_cond_signal(&q->wake);
	}
	pthread_mutex_unlock(&q->lock);
	if (!ok)
		free(w);
	return ok;
}

void work_queue_free(struct work_queue **qp)
{
	struct work_queue *q = *qp;
	struct work *w, *next;

	if (!q)
		return;
	pthread_mutex_lock(&q->lock);
	q->stopping = true;
	pthread_cond_broadcast(&q->wake);
	pthread_mutex_unlock(&q->lock);
	for (unsigned i = 0; i < q->n_threads; i++)
		pthread_join(q->threads[i], NULL);
	for (w = q->head; w; w = next) {
		next = w->next;
		if (w->cancel)
			w->cancel(w->arg);
		free(w);
	}
	pthread_mutex_destroy(&q->lock);
	pthread_cond_destroy(&q->wake);
	free(q->threads);
	free(q);
	*qp = NULL;
}
