/* Choosing and opening the mail source: IMAP, POP3, or the read-only POP3
 * view as a fallback when IMAP is not there, or the cache alone when
 * nothing can be reached.
 */
#ifndef MAILFS_SOURCE_H
#define MAILFS_SOURCE_H

#include <stdbool.h>
#include <openssl/ssl.h>

#include "proto/imap_session.h"
#include "proto/pop3_session.h"
#include "src/backend.h"
#include "src/meta_cache.h"
#include "src/options.h"

struct source {
	struct mail_endpoint imap;   /* strings borrowed from the options */
	struct mail_endpoint pop3;
	struct mail_url pop3_url;    /* the fallback's, owned */
	struct backend *be;          /* owned */
	struct meta_cache *meta;     /* owned; per protocol */
	bool offline;                /* IMAP from the cache, reconnecting */
	char *description;           /* for user.mailfs.source; owned */
};

/* Opens the source the options name, with its first session (so a wrong
 * password, token or certificate is reported now).  IMAP and POP3 log in
 * with token (OAuth2) when it is not NULL, else with password; auth says
 * how.
 * password, token and tls_ctx are borrowed and must outlive the source;
 * cache_dir must exist.  Returns 0, or -1 with *error_r set to one line
 * naming the cause. */
int source_open(const struct mailfs_options *o, const char *password,
	struct token_source *token, enum sasl_choice auth, SSL_CTX *tls_ctx,
	struct source *src, const char **error_r);

void source_close(struct source *src);

#endif
