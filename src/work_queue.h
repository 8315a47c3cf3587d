/* A bounded pool of worker threads with a bounded queue, for background
 * work that must not start a thread per event (folder refreshes, kernel
 * notifications).
 *
 * Ownership: a job's arg belongs to the queue from a successful
 * work_queue_submit until run() or, for a job never run, cancel() has
 * been called with it; each job gets exactly one of the two.
 * Threading: every call is thread-safe; run() and cancel() are called
 * without the queue's lock, so they may take the caller's locks and
 * submit more work.
 */
#ifndef MAILFS_WORK_QUEUE_H
#define MAILFS_WORK_QUEUE_H

#include <stdbool.h>
#include <stddef.h>

struct work_queue;

/* A queue for n_threads workers (at least 1), at most max_queued jobs
 * waiting.  No thread runs until work_queue_start: a process that forks
 * (to become a daemon) must start the workers after the fork.  Jobs
 * submitted before wait for them. */
struct work_queue *work_queue_new(unsigned n_threads, size_t max_queued);

/* Starts the workers; 0, or -1 when none could be started.  Once. */
int work_queue_start(struct work_queue *q);

/* Queues run(arg).  false (nothing queued, arg still the caller's) when
 * the queue is full or stopping. */
bool work_queue_submit(struct work_queue *q, void (*run)(void *arg),
	void (*cancel)(void *arg), void *arg);

/* Lets the running jobs finish, cancels the waiting ones, joins the
 * workers and frees the queue.  No submit may race with it. */
void work_queue_free(struct work_queue **q);

#endif
