/* The outbox sender: one thread that delivers the spool over SMTP.
 *
 * It wakes when a message is queued (the spool's notify hook) or a retry
 * is due, and works through every due message over one SMTP connection,
 * which it closes when the queue has nothing more to send.  Per message:
 *
 *  - MAIL FROM the envelope sender, one RCPT TO per recipient not yet
 *    served, then (if any was accepted) the state is saved with those
 *    recipients "in flight" before DATA goes out, Bcc removed;
 *  - 250 after the final dot: they are "sent", never sent to again;
 *    5xx: "failed"; 4xx, a timeout or a lost connection: pending again;
 *  - a recipient refused at RCPT with 5xx fails alone, with 4xx waits
 *    alone; the others go ahead;
 *  - while some recipients are pending the message is rescheduled:
 *    retry_min seconds after the first temporary failure, doubling up to
 *    retry_max, and given up (moved to failed/) once retry_max_age has
 *    passed since it was queued.  Connection, TLS and login failures are
 *    temporary: a wrong password must not discard the queue;
 *  - when no recipient is pending the message leaves the queue: removed,
 *    or moved to failed/ with NAME.error naming each refused recipient
 *    with the server's reply (and who did receive it).
 *
 * The first time a message reaches anyone, file_sent is called with the
 * queued bytes (Bcc included, so the sender keeps a record of it); its
 * failure is logged and never causes a resend.  Many servers file sent
 * mail themselves (Gmail, Microsoft 365): unless find_sent is NULL, the
 * Sent folder is first searched for the message's Message-ID, again
 * after a few seconds while the server is not known to file it, and a
 * copy is filed only when it is absent.  The state records the decision
 * (filing) before the copy is made, so after a restart the folder is
 * searched once more without waiting (finding the copy if it arrived)
 * and nothing is filed twice.
 *
 * The one window no client can close: when the connection drops after
 * the final dot and before the reply, the recipients stay pending and get
 * the message again on the next attempt (same Message-ID): delivered
 * twice perhaps, never lost.  The same holds after a crash there.
 */
#ifndef MAILFS_OUTBOX_SENDER_H
#define MAILFS_OUTBOX_SENDER_H

#include <stddef.h>

#include "proto/smtp_client.h"
#include "src/outbox_spool.h"

#define OUTBOX_RETRY_MIN_DEFAULT 60
#define OUTBOX_RETRY_MAX_DEFAULT 3600
#define OUTBOX_RETRY_MAX_AGE_DEFAULT (5 * 24 * 3600)

/* Copies the queued message into the Sent folder (with \Seen), or does
 * nothing if the user said sent=none.  Runs on the sender thread.
 * Returns 0, or -1 after logging why. */
typedef int outbox_file_sent_fn(void *ctx, const char *bytes, size_t len);

/* Whether the Sent folder holds a message whose Message-ID field is
 * message_id: 1 yes, 0 no, -1 nobody can tell (then a copy is filed).
 * Runs on the sender thread. */
typedef int outbox_find_sent_fn(void *ctx, const char *message_id);

struct outbox_sender_config {
	/* Copied; the strings and tls_ctx it points to are borrowed and
	 * must outlive the sender. */
	struct smtp_endpoint smtp;
	const char *default_from;     /* envelope sender without From, or NULL */
	unsigned retry_min_s;         /* 0: OUTBOX_RETRY_MIN_DEFAULT */
	unsigned retry_max_s;         /* 0: OUTBOX_RETRY_MAX_DEFAULT */
	unsigned retry_max_age_s;     /* 0: OUTBOX_RETRY_MAX_AGE_DEFAULT */
	outbox_file_sent_fn *file_sent;   /* NULL: no Sent copy */
	outbox_find_sent_fn *find_sent;   /* NULL: a copy is always filed */
	void *file_sent_ctx;              /* for both */
};

struct outbox_sender;

/* Starts the sender thread on spool (borrowed: close the spool only after
 * outbox_sender_stop()) and hooks it to the spool's notify.  Messages
 * already queued are sent at once.  Returns 0, or -1 with *error_r set.
 * The caller owns *sender_r. */
int outbox_sender_start(struct outbox_spool *spool,
	const struct outbox_sender_config *config,
	struct outbox_sender **sender_r, const char **error_r);

/* Makes the sender look at the queue now (retry times still apply). */
void outbox_sender_wake(struct outbox_sender *sender);

/* Stops the thread: a connection in use is cancelled, so this returns
 * promptly (at worst after one connect timeout).  A message interrupted
 * mid-delivery stays queued.  Frees the sender and sets *sender to
 * NULL. */
void outbox_sender_stop(struct outbox_sender **sender);

/* The delay before attempt number `attempts` + 1, given that `attempts`
 * attempts failed: min * 2^(attempts - 1), at most max.  For tests. */
unsigned outbox_retry_delay(unsigned attempts, unsigned min, unsigned max);

#endif
