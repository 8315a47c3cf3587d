/* The client side of the SASL mechanisms mailfs speaks (RFC 4422),
 * shared by the protocols that authenticate with them (IMAP AUTHENTICATE,
 * SMTP AUTH).  A mechanism only makes the client's messages; each
 * protocol frames them (base64 on a line, "+"/334 challenges, SASL-IR)
 * and keeps a table of the mechanisms it tries, in its order of
 * preference.  Another mechanism (XOAUTH2, OAUTHBEARER) is one more
 * entry here and in those tables.
 */
#ifndef MAILFS_SASL_H
#define MAILFS_SASL_H

#include <stdbool.h>
#include <stddef.h>

struct sasl_mech {
	const char *name;          /* as servers list it: "PLAIN" */
	/* The client speaks first: its first message may go with the
	 * command as an initial response (RFC 4959 SASL-IR, RFC 4954). */
	bool client_first;
	/* The client's message for step `step` (0: the first one), before
	 * base64, in a new buffer (*msg_r, *len_r) the caller releases with
	 * sasl_free_secret().  Returns 1 with a message, 0 when the
	 * mechanism has no message for that step (a further challenge is
	 * then cancelled), -1 when out of memory. */
	int (*message)(size_t step, const char *user, const char *password,
		unsigned char **msg_r, size_t *len_r);
};

extern const struct sasl_mech sasl_plain;   /* RFC 4616 */
extern const struct sasl_mech sasl_login;   /* draft-murchison-sasl-login */

/* Base64 of len bytes of msg as a terminated string in a new buffer of
 * *size_r bytes (release with sasl_free_secret), or NULL. */
char *sasl_base64(const unsigned char *msg, size_t len, size_t *size_r);

/* Wipes and frees a buffer that held a credential (NULL is fine). */
void sasl_free_secret(void *p, size_t size);

#endif
