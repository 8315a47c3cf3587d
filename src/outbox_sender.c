/* The outbox sender thread.  See outbox_sender.h for what it does.
 *
 * Locking: sender->lock guards the wake-up flags and `session`, the SMTP
 * session in use, so that outbox_sender_stop() can cancel it; the thread
 * takes the lock only to publish or withdraw the session, never across
 * network or file I/O.
 */
#include "src/outbox_sender.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <xxhash.h>

#include "src/errfmt.h"
#include "src/log.h"
#include "src/outbox_message.h"
#include "src/fault_point.h"

/* Longest sleep between looks at the queue: bounds the effect of a wall
 * clock that jumps. */
#define MAX_SLEEP_S 300
/* When the Sent folder is searched for a sent message before a copy is
 * filed, in milliseconds after delivery: a server that files sent mail
 * itself does so within moments. */
static const unsigned sent_look_ms[] = { 0, 1000, 3000 };

struct outbox_sender {
	struct outbox_spool *spool;        /* borrowed */
	struct outbox_sender_config cfg;
	pthread_t thread;

	pthread_mutex_t lock;              /* guards everything below */
	pthread_cond_t cond;
	bool stop;
	bool woken;
	struct smtp_session *session;      /* in use by the thread, or NULL */
	/* Used by the thread only: whether the server was seen to file sent
	 * mail itself (1), not to (0), or not yet known (-1).  Once it is
	 * known not to, the Sent folder is searched without waiting. */
	int server_files;

	/* Used by the thread only: states it could not save (a full or
	 * failing disk).  They are newer than what is on disk, so the next
	 * attempt in this process starts from them and does not send again
	 * to whom the lost save would have recorded. */
	struct unsaved *unsaved;
	size_t n_unsaved;
};

/* A state, formatted, of the queued message `name` whose bytes hash to
 * `hash`: a message queued later under the same name is another. */
struct unsaved {
	char *name;
	uint64_t hash;
	char *text;
	size_t len;
};

/* One pass over the due messages shares a connection. */
struct pass {
	struct outbox_sender *sender;
	struct smtp_session *session;
	char *conn_error;      /* why connecting failed in this pass */
	bool spool_error;      /* the spool failed: stop this pass */
};

unsigned outbox_retry_delay(unsigned attempts, unsigned min, unsigned max)
{
	unsigned delay = min;

	while (attempts > 1 && delay < max) {
		delay = delay > max / 2 ? max : delay * 2;
		attempts--;
	}
	return delay < max ? delay : max;
}

static bool should_stop(struct outbox_sender *sender)
{
	bool stop;

	pthread_mutex_lock(&sender->lock);
	stop = sender->stop;
	pthread_mutex_unlock(&sender->lock);
	return stop;
}

/* ------------------------------------------------------------------ */
/* The connection                                                      */

static void pass_close(struct pass *p)
{
	struct outbox_sender *sender = p->sender;

	if (p->session == NULL)
		return;
	/* Withdrawn first: a cancel must never meet a freed session. */
	pthread_mutex_lock(&sender->lock);
	sender->session = NULL;
	pthread_mutex_unlock(&sender->lock);
	smtp_session_close(&p->session);
}

/* A usable session, or NULL with p->conn_error set. */
static struct smtp_session *pass_session(struct pass *p)
{
	struct outbox_sender *sender = p->sender;
	enum backend_status st;
	const char *error;
	bool stop;

	if (p->session != NULL && !smtp_session_broken(p->session))
		return p->session;
	pass_close(p);
	if (p->conn_error != NULL)
		return NULL;

	if (smtp_session_new(&sender->cfg.smtp, &p->session) < 0) {
		p->conn_error = strdup("out of memory");
		return NULL;
	}
	pthread_mutex_lock(&sender->lock);
	stop = sender->stop;
	if (!stop)
		sender->session = p->session;
	pthread_mutex_unlock(&sender->lock);
	if (stop) {
		smtp_session_close(&p->session);
		p->conn_error = strdup("mailfs is stopping");
		return NULL;
	}
	st = smtp_session_connect(p->session, &error);
	if (st != BACKEND_OK) {
		log_warn("outbox: %s", error);
		p->conn_error = strdup(error);
		pass_close(p);
		return NULL;
	}
	return p->session;
}

/* ------------------------------------------------------------------ */
/* One message                                                         */

/* What happened to one message in this attempt. */
struct attempt {
	const char *name;
	char *data;                /* queued bytes; owned */
	size_t len;
	struct outbox_message msg;
	struct outbox_state state;
	char why[OUTBOX_REPLY_MAX + OUTBOX_ADDRESS_MAX + 8];
	                           /* the temporary failure, for the status */
};

static void attempt_clear(struct attempt *a)
{
	free(a->data);
	outbox_message_clear(&a->msg);
	outbox_state_clear(&a->state);
}

static void note_temp(struct attempt *a, const char *rcpt, const char *text)
{
	if (rcpt != NULL)
		snprintf(a->why, sizeof(a->why), "%s: %s", rcpt, text);
	else
		snprintf(a->why, sizeof(a->why), "%s", text);
}

static size_t count_status(struct attempt *a,
	enum outbox_rcpt_status status)
{
	size_t i, n = 0;

	for (i = 0; i < a->msg.n_rcpts; i++) {
		struct outbox_rcpt *r = outbox_state_rcpt(&a->state,
			a->msg.rcpts[i]);

		if (r != NULL && r->status == status)
			n++;
	}
	return n;
}

/* Every pending recipient fails with text (a 5xx for the whole message,
 * or giving up). */
static void fail_pending(struct attempt *a, const char *text)
{
	size_t i;

	for (i = 0; i < a->msg.n_rcpts; i++) {
		struct outbox_rcpt *r = outbox_state_rcpt(&a->state,
			a->msg.rcpts[i]);

		if (r != NULL && r->status == OUTBOX_RCPT_PENDING) {
			r->status = OUTBOX_RCPT_FAILED;
			outbox_rcpt_set_reply(r, text);
		}
	}
}

/* The NAME.error text: who was refused and why, and who got it. */
static char *failure_text(struct attempt *a)
{
	char *text = NULL;
	size_t len = 0, i;
	FILE *f = open_memstream(&text, &len);
	bool any_sent = count_status(a, OUTBOX_RCPT_SENT) > 0;

	if (f == NULL)
		return NULL;
	fprintf(f, "Not delivered to:\n");
	for (i = 0; i < a->msg.n_rcpts; i++) {
		struct outbox_rcpt *r = outbox_state_rcpt(&a->state,
			a->msg.rcpts[i]);

		if (r != NULL && r->status == OUTBOX_RCPT_FAILED)
			fprintf(f, "  %s: %s\n", r->addr,
				r->reply != NULL ? r->reply : "refused");
	}
	if (any_sent) {
		fprintf(f, "Delivered to (do not send it to them again):\n");
		for (i = 0; i < a->msg.n_rcpts; i++) {
			struct outbox_rcpt *r = outbox_state_rcpt(&a->state,
				a->msg.rcpts[i]);

			if (r != NULL && r->status == OUTBOX_RCPT_SENT)
				fprintf(f, "  %s\n", r->addr);
		}
	}
	if (fclose(f) != 0) {
		free(text);
		return NULL;
	}
	return text;
}

static struct unsaved *unsaved_find(struct outbox_sender *sender,
	const char *name)
{
	for (size_t i = 0; i < sender->n_unsaved; i++)
		if (strcmp(sender->unsaved[i].name, name) == 0)
			return &sender->unsaved[i];
	return NULL;
}

static void unsaved_drop(struct outbox_sender *sender, const char *name)
{
	struct unsaved *u = unsaved_find(sender, name);

	if (u == NULL)
		return;
	free(u->name);
	free(u->text);
	*u = sender->unsaved[--sender->n_unsaved];
}

/* Keeps a's state in memory after its save failed. */
static void unsaved_keep(struct outbox_sender *sender, struct attempt *a)
{
	struct unsaved u = { .hash = XXH3_64bits(a->data, a->len) }, *grown;

	unsaved_drop(sender, a->name);
	if (outbox_state_format(&a->state, &u.text, &u.len) < 0 ||
	    (u.name = strdup(a->name)) == NULL ||
	    (grown = realloc(sender->unsaved, (sender->n_unsaved + 1) *
		sizeof(*grown))) == NULL) {
		free(u.text);
		free(u.name);
		return;   /* then it is sent again: never lost */
	}
	sender->unsaved = grown;
	sender->unsaved[sender->n_unsaved++] = u;
}

/* Replaces the state loaded from disk by the newer one kept in memory. */
static void unsaved_apply(struct outbox_sender *sender, struct attempt *a)
{
	struct unsaved *u = unsaved_find(sender, a->name);
	struct outbox_state st;
	const char *error;

	if (u == NULL)
		return;
	if (u->hash != XXH3_64bits(a->data, a->len) ||
	    outbox_state_parse(u->text, u->len, &st, &error) < 0) {
		unsaved_drop(sender, a->name);
		return;
	}
	outbox_state_clear(&a->state);
	a->state = st;
}

static int save_state(struct pass *p, struct attempt *a)
{
	const char *error;

	if (outbox_spool_save(p->sender->spool, a->name, &a->state,
		&error) < 0) {
		log_error("outbox: %s", error);
		unsaved_keep(p->sender, a);
		p->spool_error = true;
		return -1;
	}
	unsaved_drop(p->sender, a->name);
	return 0;
}

/* Waits ms unless stopping; false when stopping. */
static bool nap(struct outbox_sender *sender, unsigned ms)
{
	struct timespec ts;
	bool stop;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&sender->lock);
	while (!sender->stop && pthread_cond_timedwait(&sender->cond,
			&sender->lock, &ts) != ETIMEDOUT)
		;
	stop = sender->stop;
	pthread_mutex_unlock(&sender->lock);
	return !stop;
}

/* Whether the server filed the message in Sent itself: 1 yes, 0 no, -1
 * nobody can tell.  Looks again after a pause while the answer is no,
 * unless the decision was taken before a restart, or the server is known
 * not to file, or mailfs is stopping. */
static int already_in_sent(struct pass *p, struct attempt *a)
{
	struct outbox_sender *sender = p->sender;
	char id[OUTBOX_MESSAGE_ID_MAX + 1];
	size_t looks = sizeof(sent_look_ms) / sizeof(*sent_look_ms);
	unsigned waited = 0;
	int found = -1;

	if (sender->cfg.find_sent == NULL ||
	    outbox_message_id(a->data, a->len, id, sizeof(id)) < 0)
		return -1;
	if (a->state.filing || sender->server_files == 0)
		looks = 1;
	for (size_t i = 0; i < looks; i++) {
		if (sent_look_ms[i] > waited) {
			if (!nap(sender, sent_look_ms[i] - waited))
				looks = i + 1;   /* stopping: one last look */
			waited = sent_look_ms[i];
		}
		found = sender->cfg.find_sent(sender->cfg.file_sent_ctx, id);
		if (found != 0)
			break;
	}
	if (found >= 0 && !a->state.filing)
		sender->server_files = found;
	return found;
}

/* Files the Sent copy once the message has reached someone, unless the
 * server did. */
static void file_sent(struct pass *p, struct attempt *a)
{
	struct outbox_sender *sender = p->sender;

	if (a->state.filed || count_status(a, OUTBOX_RCPT_SENT) == 0)
		return;
	if (sender->cfg.file_sent != NULL && already_in_sent(p, a) == 1) {
		log_info("outbox: %s: the server filed it in the Sent folder"
			" itself", a->name);
		a->state.filed = true;
		save_state(p, a);
		return;
	}
	if (sender->cfg.file_sent != NULL && !a->state.filing) {
		a->state.filing = true;
		save_state(p, a);
		fault_point("outbox-before-filing");
	}
	if (sender->cfg.file_sent != NULL &&
	    sender->cfg.file_sent(sender->cfg.file_sent_ctx, a->data,
		a->len) < 0)
		log_warn("outbox: %s was sent but no copy was filed in the"
			" Sent folder", a->name);
	fault_point("outbox-after-filing");
	/* Filed or given up: either way never again (no duplicates). */
	a->state.filed = true;
	save_state(p, a);
}

/* No recipient is pending: the message leaves the queue. */
static void finish(struct pass *p, struct attempt *a)
{
	size_t sent = count_status(a, OUTBOX_RCPT_SENT);
	size_t failed = count_status(a, OUTBOX_RCPT_FAILED);
	const char *error;
	char *text = NULL;

	if (failed > 0) {
		text = failure_text(a);
		log_error("outbox: %s: %zu recipient%s refused%s; moved to"
			" failed/", a->name, failed, failed == 1 ? "" : "s",
			sent > 0 ? " (the others received it)" : "");
	} else {
		log_info("outbox: %s sent to %zu recipient%s", a->name, sent,
			sent == 1 ? "" : "s");
	}
	if (outbox_spool_finish(p->sender->spool, a->name,
		failed > 0 ? (text != NULL ? text : "Not delivered.") : NULL,
		&error) < 0) {
		log_error("outbox: %s", error);
		p->spool_error = true;
	} else {
		unsaved_drop(p->sender, a->name);
		fault_point("outbox-after-finish");
	}
	free(text);
}

/* Some recipients are pending after a temporary failure: try later, or
 * give up when the message is too old. */
static void reschedule(struct pass *p, struct attempt *a, time_t now)
{
	const struct outbox_sender_config *cfg = &p->sender->cfg;
	int64_t deadline = a->state.queued + cfg->retry_max_age_s;
	unsigned delay;

	if (should_stop(p->sender)) {
		/* Interrupted by unmounting: not the message's fault, so no
		 * attempt is counted and it goes out first after restart. */
		log_info("outbox: %s stays queued (stopping)", a->name);
		save_state(p, a);
		return;
	}
	if (a->why[0] == '\0')
		note_temp(a, NULL, "temporary failure");
	a->state.attempts++;
	outbox_state_set_reply(&a->state, a->why);
	if (now >= deadline) {
		char text[sizeof(a->why) + 96];

		snprintf(text, sizeof(text), "gave up after %u attempt%s over"
			" %" PRId64 " s; last reply: %s", a->state.attempts,
			a->state.attempts == 1 ? "" : "s",
			(int64_t)now - a->state.queued, a->why);
		fail_pending(a, text);
		if (save_state(p, a) == 0)
			finish(p, a);
		return;
	}
	delay = outbox_retry_delay(a->state.attempts, cfg->retry_min_s,
		cfg->retry_max_s);
	a->state.next_attempt = (int64_t)now + delay;
	/* One last try at the deadline rather than none. */
	if (a->state.next_attempt > deadline)
		a->state.next_attempt = deadline;
	log_warn("outbox: %s deferred for %" PRId64 " s: %s", a->name,
		a->state.next_attempt - (int64_t)now, a->why);
	save_state(p, a);
}

/* After the attempt: file the Sent copy, then leave the queue or wait. */
static void conclude(struct pass *p, struct attempt *a)
{
	file_sent(p, a);
	if (p->spool_error)
		return;
	if (count_status(a, OUTBOX_RCPT_PENDING) > 0)
		reschedule(p, a, time(NULL));
	else
		finish(p, a);
}

/* The SMTP transaction for the pending recipients. */
static void transact(struct pass *p, struct attempt *a,
	struct smtp_session *s)
{
	struct smtp_reply reply;
	enum smtp_result res;
	unsigned flags = 0;
	char *wire = NULL;
	size_t wire_len, i, accepted = 0;
	const char *error;
	bool sent;

	if (outbox_message_render(a->data, a->len, &a->msg,
		OUTBOX_RENDER_STRIP_BCC, 0, &wire, &wire_len, &error) < 0) {
		note_temp(a, NULL, error);
		return;
	}
	if (a->msg.eight_bit)
		flags |= SMTP_MAIL_8BIT;
	if (a->msg.smtputf8)
		flags |= SMTP_MAIL_SMTPUTF8;

	res = smtp_session_mail(s, a->msg.sender, flags, wire_len, &reply);
	if (res == SMTP_PERM) {
		fail_pending(a, reply.text);
		goto out_free;
	}
	if (res == SMTP_TEMP) {
		note_temp(a, NULL, reply.text);
		goto out_free;
	}

	for (i = 0; i < a->msg.n_rcpts; i++) {
		struct outbox_rcpt *r = outbox_state_rcpt(&a->state,
			a->msg.rcpts[i]);

		if (r == NULL) {
			note_temp(a, NULL, "out of memory");
			goto out_reset;
		}
		if (r->status != OUTBOX_RCPT_PENDING)
			continue;
		res = smtp_session_rcpt(s, r->addr, &reply);
		if (res == SMTP_OK) {
			r->status = OUTBOX_RCPT_INFLIGHT;
			accepted++;
		} else if (res == SMTP_PERM) {
			r->status = OUTBOX_RCPT_FAILED;
			outbox_rcpt_set_reply(r, reply.text);
		} else {
			outbox_rcpt_set_reply(r, reply.text);
			note_temp(a, r->addr, reply.text);
			if (smtp_session_broken(s))
				goto out_reset;
		}
	}
	if (accepted == 0)
		goto out_reset;

	/* Whom this DATA is for must be on disk before it can succeed. */
	if (save_state(p, a) < 0)
		goto out_reset;

	fault_point("outbox-before-data");
	res = smtp_session_data(s, wire, wire_len, &sent, &reply);
	if (res == SMTP_OK)
		fault_point("outbox-after-data");
	for (i = 0; i < a->state.n_rcpts; i++) {
		struct outbox_rcpt *r = &a->state.rcpts[i];

		if (r->status != OUTBOX_RCPT_INFLIGHT)
			continue;
		if (res == SMTP_OK) {
			r->status = OUTBOX_RCPT_SENT;
			outbox_rcpt_set_reply(r, NULL);
		} else if (res == SMTP_PERM) {
			r->status = OUTBOX_RCPT_FAILED;
			outbox_rcpt_set_reply(r, reply.text);
		} else {
			r->status = OUTBOX_RCPT_PENDING;
			outbox_rcpt_set_reply(r, reply.text);
		}
	}
	if (res == SMTP_TEMP) {
		note_temp(a, NULL, reply.text);
		if (sent && reply.code == 0)
			log_warn("outbox: %s: the connection failed after the"
				" message was sent; it will be sent again and"
				" may arrive twice", a->name);
	}
	if (save_state(p, a) == 0 && res == SMTP_OK)
		fault_point("outbox-after-state");
	/* Leave no half-open transaction for the next message. */
	if (res != SMTP_OK && !smtp_session_broken(s))
		smtp_session_reset(s, &reply);
	goto out_free;

out_reset:
	/* Recipients accepted in a transaction that ends here are pending
	 * again. */
	for (i = 0; i < a->state.n_rcpts; i++)
		if (a->state.rcpts[i].status == OUTBOX_RCPT_INFLIGHT)
			a->state.rcpts[i].status = OUTBOX_RCPT_PENDING;
	if (!smtp_session_broken(s))
		smtp_session_reset(s, &reply);
out_free:
	free(wire);
}

static void process(struct pass *p, const char *name)
{
	struct outbox_sender *sender = p->sender;
	struct attempt a = { .name = name };
	struct smtp_session *s;
	const char *error;
	size_t i;

	if (outbox_spool_load(sender->spool, name, &a.data, &a.len, &a.state,
		&error) < 0) {
		log_error("outbox: %s", error);
		p->spool_error = true;
		goto out_release;
	}
	unsaved_apply(sender, &a);
	if (outbox_message_parse(a.data, a.len, sender->cfg.default_from,
		&a.msg, &error) < 0) {
		/* Checked when queued; only a changed from= can do this. */
		char text[OUTBOX_REPLY_MAX + 64];

		snprintf(text, sizeof(text), "Not sent: %s", error);
		log_error("outbox: %s: %s", name, text);
		if (outbox_spool_finish(sender->spool, name, text, &error) < 0) {
			log_error("outbox: %s", error);
			p->spool_error = true;
		}
		goto out_release;
	}
	for (i = 0; i < a.msg.n_rcpts; i++) {
		struct outbox_rcpt *r = outbox_state_rcpt(&a.state,
			a.msg.rcpts[i]);

		if (r == NULL) {
			p->spool_error = true;
			goto out_release;
		}
		if (r->status == OUTBOX_RCPT_INFLIGHT) {
			log_warn("outbox: %s: delivery to %s was interrupted"
				" after it may have succeeded; sending again"
				" (it may arrive twice)", name, r->addr);
			r->status = OUTBOX_RCPT_PENDING;
		}
	}

	if (count_status(&a, OUTBOX_RCPT_PENDING) > 0) {
		s = pass_session(p);
		if (s == NULL)
			note_temp(&a, NULL, p->conn_error != NULL ?
				p->conn_error : "cannot connect");
		else
			transact(p, &a, s);
		if (p->session != NULL && smtp_session_broken(p->session))
			pass_close(p);
	}
	if (!p->spool_error)
		conclude(p, &a);
out_release:
	/* A no-op when finish() already took the message off the queue. */
	outbox_spool_release(sender->spool, name);
	attempt_clear(&a);
}

/* ------------------------------------------------------------------ */
/* The thread                                                          */

/* Sends everything due; returns when nothing is, with *next_due_r the
 * time of the next retry, or early after a spool failure (then *pause_r
 * asks to wait before trying again). */
static void run_pass(struct outbox_sender *sender, int64_t *next_due_r,
	bool *pause_r)
{
	struct pass p = { .sender = sender };
	int64_t next_due = INT64_MAX;
	char *name;

	*pause_r = false;
	while (!should_stop(sender)) {
		if (outbox_spool_claim(sender->spool, time(NULL), &name,
			&next_due) == 0)
			break;
		process(&p, name);
		free(name);
		if (p.spool_error) {
			*pause_r = true;
			break;
		}
	}
	pass_close(&p);
	free(p.conn_error);
	*next_due_r = next_due;
}

static void *sender_main(void *arg)
{
	struct outbox_sender *sender = arg;

	pthread_mutex_lock(&sender->lock);
	while (!sender->stop) {
		int64_t next_due, wait_s;
		struct timespec ts;
		bool pause;
		time_t now;

		sender->woken = false;
		pthread_mutex_unlock(&sender->lock);
		run_pass(sender, &next_due, &pause);
		now = time(NULL);
		pthread_mutex_lock(&sender->lock);

		if (pause)
			wait_s = sender->cfg.retry_min_s;
		else if (next_due == INT64_MAX)
			wait_s = MAX_SLEEP_S;
		else
			wait_s = next_due - (int64_t)now;
		if (wait_s > MAX_SLEEP_S)
			wait_s = MAX_SLEEP_S;
		if (wait_s <= 0 || sender->woken)
			continue;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += (time_t)wait_s;
		while (!sender->stop && !sender->woken &&
		       pthread_cond_timedwait(&sender->cond, &sender->lock,
			&ts) != ETIMEDOUT)
			;
	}
	pthread_mutex_unlock(&sender->lock);
	return NULL;
}

void outbox_sender_wake(struct outbox_sender *sender)
{
	pthread_mutex_lock(&sender->lock);
	sender->woken = true;
	pthread_cond_signal(&sender->cond);
	pthread_mutex_unlock(&sender->lock);
}

static void notify_hook(void *ctx)
{
	outbox_sender_wake(ctx);
}

int outbox_sender_start(struct outbox_spool *spool,
	const struct outbox_sender_config *config,
	struct outbox_sender **sender_r, const char **error_r)
{
	struct outbox_sender *sender;
	pthread_condattr_t attr;
	const char *why;
	int r;

	*sender_r = NULL;
	if (config->default_from != NULL &&
	    outbox_address_check(config->default_from, &why) < 0) {
		*error_r = errfmt("from=%s is not usable: %s",
			config->default_from, why);
		return -1;
	}
	sender = calloc(1, sizeof(*sender));
	if (sender == NULL) {
		*error_r = "out of memory";
		return -1;
	}
	sender->spool = spool;
	sender->cfg = *config;
	sender->server_files = -1;
	if (sender->cfg.retry_min_s == 0)
		sender->cfg.retry_min_s = OUTBOX_RETRY_MIN_DEFAULT;
	if (sender->cfg.retry_max_s == 0)
		sender->cfg.retry_max_s = OUTBOX_RETRY_MAX_DEFAULT;
	if (sender->cfg.retry_max_s < sender->cfg.retry_min_s)
		sender->cfg.retry_max_s = sender->cfg.retry_min_s;
	if (sender->cfg.retry_max_age_s == 0)
		sender->cfg.retry_max_age_s = OUTBOX_RETRY_MAX_AGE_DEFAULT;

	pthread_mutex_init(&sender->lock, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&sender->cond, &attr);
	pthread_condattr_destroy(&attr);

	r = pthread_create(&sender->thread, NULL, sender_main, sender);
	if (r != 0) {
		*error_r = errfmt("cannot start the outbox sender: %s",
			strerror(r));
		pthread_cond_destroy(&sender->cond);
		pthread_mutex_destroy(&sender->lock);
		free(sender);
		return -1;
	}
	outbox_spool_set_notify(spool, notify_hook, sender);
	*sender_r = sender;
	return 0;
}

void outbox_sender_stop(struct outbox_sender **sender_p)
{
	struct outbox_sender *sender = *sender_p;

	if (sender == NULL)
		return;
	*sender_p = NULL;
	outbox_spool_set_notify(sender->spool, NULL, NULL);
	pthread_mutex_lock(&sender->lock);
	sender->stop = true;
	if (sender->session != NULL)
		smtp_session_cancel(sender->session);
	pthread_cond_signal(&sender->cond);
	pthread_mutex_unlock(&sender->lock);
	pthread_join(sender->thread, NULL);
	for (size_t i = 0; i < sender->n_unsaved; i++) {
		log_error("outbox: the state of %s could not be saved: it may"
			" be sent again", sender->unsaved[i].name);
		free(sender->unsaved[i].name);
		free(sender->unsaved[i].text);
	}
	free(sender->unsaved);
	pthread_cond_destroy(&sender->cond);
	pthread_mutex_destroy(&sender->lock);
	free(sender);
}
