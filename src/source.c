#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "proto/imap_backend.h"
#include "proto/pop3_backend.h"
#include "src/errfmt.h"
#include "src/log.h"
#include "src/source.h"

static char *url_text(const struct mail_url *u)
{
	char *out;

	if (asprintf(&out, "%s%s@%s:%u", mail_scheme_name(u->scheme), u->user,
			u->host, u->port) < 0)
		return NULL;
	return out;
}

/* POP3 keeps its own state and listings beside the shared block cache:
 * its identities (UIDL-based UIDs) mean nothing to IMAP. */
static int open_pop3(const struct mailfs_options *o, const struct mail_url *u,
	const char *password, SSL_CTX *tls_ctx, struct source *src,
	const char **error_r)
{
	struct pop3_session *first = NULL;
	enum backend_status st;
	char *state_dir = NULL;
	int ret = -1;

	src->pop3.host = u->host;
	src->pop3.port = u->port;
	src->pop3.user = u->user;
	src->pop3.password = password;
	src->pop3.timeout_s = (int)o->timeout_s;
	src->pop3.tls_ctx = tls_ctx;
	src->pop3.tls = u->scheme == SCHEME_POP3S ? MAIL_TLS_IMPLICIT :
		o->pop3_allow_plaintext ? MAIL_TLS_NONE : MAIL_TLS_STARTTLS;
	st = pop3_session_open(&src->pop3, &first, error_r);
	if (st != BACKEND_OK)
		return -1;
	if (asprintf(&state_dir, "%s/pop3", o->cache_dir) < 0) {
		state_dir = NULL;
		goto out;
	}
	if ((mkdir(state_dir, 0700) < 0 && errno != EEXIST) ||
	    meta_cache_open(state_dir, &src->meta, error_r) < 0) {
		*error_r = errfmt("cannot create %s: %s", state_dir,
			strerror(errno));
		pop3_session_close(&first);
		goto out;
	}
	src->be = pop3_backend_new(&src->pop3, state_dir, first);
	if (!src->be) {
		*error_r = "out of memory";
		meta_cache_close(&src->meta);
		goto out;
	}
	ret = 0;
out:
	free(state_dir);
	return ret;
}

int source_open(const struct mailfs_options *o, const char *password,
	struct token_source *token, enum sasl_choice auth, SSL_CTX *tls_ctx,
	struct source *src, const char **error_r)
{
	struct imap_session *first = NULL;
	struct backend_folder *cached;
	enum backend_status st;
	const char *imap_error, *pop3_error;
	size_t n_cached;
	char *text;

	memset(src, 0, sizeof(*src));
	/* The POP3 view, or the fallback, logs in as IMAP would. */
	src->pop3.token = token;
	src->pop3.auth = auth;
	if (o->source.scheme == SCHEME_POP3S || o->source.scheme == SCHEME_POP3) {
		if (open_pop3(o, &o->source, password, tls_ctx, src,
				error_r) < 0)
			return -1;
		src->description = url_text(&o->source);
		return 0;
	}

	src->imap.host = o->source.host;
	src->imap.port = o->source.port;
	src->imap.user = o->source.user;
	src->imap.password = password;
	src->imap.token = token;
	src->imap.auth = auth;
	src->imap.timeout_s = (int)o->timeout_s;
	src->imap.tls_ctx = tls_ctx;
	src->imap.tls = o->source.scheme == SCHEME_IMAPS ? MAIL_TLS_IMPLICIT :
		o->allow_plaintext ? MAIL_TLS_NONE : MAIL_TLS_STARTTLS;
	st = imap_session_open(&src->imap, &first, &imap_error);
	if (st == BACKEND_OK) {
		if (meta_cache_open(o->cache_dir, &src->meta, error_r) < 0) {
			imap_session_close(&first);
			return -1;
		}
		src->be = imap_backend_new(&src->imap, o->connections, first);
		src->description = url_text(&o->source);
		if (!src->be) {
			*error_r = "out of memory";
			return -1;
		}
		return 0;
	}
	/* A refused password, certificate or STARTTLS is the user's to fix:
	 * never hidden behind a fallback. */
	if (st != BACKEND_CONNECT && st != BACKEND_TEMP) {
		*error_r = imap_error;
		return -1;
	}
	imap_error = errfmt("%s", imap_error);

	if (!o->pop3_text || strcmp(o->pop3_text, "none") != 0) {
		const char *perr;

		if (o->pop3_text) {
			if (mail_url_parse(o->pop3_text, &src->pop3_url,
					&perr) < 0) {
				*error_r = perr;
				return -1;
			}
		} else {
			src->pop3_url.scheme = SCHEME_POP3S;
			src->pop3_url.port = 995;
			src->pop3_url.user = strdup(o->source.user);
			src->pop3_url.host = strdup(o->source.host);
		}
		if (src->pop3_url.user && src->pop3_url.host &&
		    open_pop3(o, &src->pop3_url, password, tls_ctx, src,
				&pop3_error) == 0) {
			text = url_text(&src->pop3_url);
			if (asprintf(&src->description, "%s (fallback: IMAP %s)",
					text ? text : "pop3", imap_error) < 0)
				src->description = NULL;
			free(text);
			log_warn("IMAP is not available (%s); mounting the "
				"read-only POP3 view instead", imap_error);
			return 0;
		}
		/* The error that matters is IMAP's: keep stderr to it. */
		if (src->pop3_url.user && src->pop3_url.host)
			log_debug("POP3 fallback not possible either: %s",
				pop3_error);
	}

	/* Nothing reachable: the cache alone, if there is one. */
	if (meta_cache_open(o->cache_dir, &src->meta, error_r) < 0)
		return -1;
	if (meta_cache_load_folders(src->meta, &cached, &n_cached) < 0) {
		*error_r = imap_error;
		return -1;
	}
	backend_folders_free(&cached, n_cached);
	log_warn("%s; mounting offline from the cache", imap_error);
	src->offline = true;
	src->be = imap_backend_new(&src->imap, o->connections, NULL);
	text = url_text(&o->source);
	if (asprintf(&src->description, "%s (offline)", text ? text : "") < 0)
		src->description = NULL;
	free(text);
	if (!src->be) {
		*error_r = "out of memory";
		return -1;
	}
	return 0;
}

void source_close(struct source *src)
{
	backend_destroy(&src->be);
	meta_cache_close(&src->meta);
	mail_url_clear(&src->pop3_url);
	free(src->description);
	src->description = NULL;
}
