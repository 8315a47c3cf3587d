/* Command line, mount options and source URLs. */
#ifndef MAILFS_OPTIONS_H
#define MAILFS_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>

enum mail_scheme {
	SCHEME_IMAPS,   /* implicit TLS, 993 */
	SCHEME_IMAP,    /* STARTTLS required, 143 */
	SCHEME_POP3S,   /* implicit TLS, 995 */
	SCHEME_POP3,    /* STLS required, 110 */
	SCHEME_SMTPS,   /* implicit TLS, 465 */
	SCHEME_SMTP,    /* STARTTLS required, 587 */
};

/* A parsed SOURCE such as imaps://user@host:993.  Strings are owned. */
struct mail_url {
	enum mail_scheme scheme;
	char *user;      /* percent-decoded; never contains CR, LF or NUL */
	char *host;      /* without brackets for IPv6 literals */
	uint16_t port;
};

/* Parses a URL of the form scheme://user@host[:port][/].  The user part may
 * be percent-encoded (user%40example.com).  Returns 0, or -1 with *error_r
 * naming what is wrong. */
int mail_url_parse(const char *text, struct mail_url *url_r,
	const char **error_r);
void mail_url_clear(struct mail_url *url);
const char *mail_scheme_name(enum mail_scheme scheme);

struct mailfs_options {
	char *source_text;        /* SOURCE as given */
	struct mail_url source;
	char *mountpoint;
	char *password_file;
	char *password_cmd;
	char *token_cmd;          /* OAuth2: prints an access token */
	char *auth_text;          /* -o auth=MECH */
	char *smtp_token_cmd;     /* default: token_cmd */
	char *smtp_auth_text;     /* default: auth */
	char *ca_file;
	char *cache_dir;          /* resolved to the default when not given */
	char *cache_size_text;
	char *trash;              /* -o trash=FOLDER: rm moves there */
	char *pop3_text;          /* -o pop3=URL|none: the IMAP fallback */
	char *smtp_text;          /* -o smtp=URL */
	struct mail_url smtp;
	char *smtp_password_file;
	char *from;
	char *sent;               /* folder for copies, "none", NULL: find */
	char *spool_dir;          /* default $XDG_STATE_HOME/mailfs/... */
	unsigned retry_min_s;
	unsigned retry_max_age_s;
	uint64_t cache_size;      /* bytes */
	unsigned timeout_s;
	unsigned connections;
	unsigned refresh_s;
	/* ints: fuse_opt stores ints there.  Each permits its protocol
	 * without TLS when the server offers none. */
	int allow_plaintext;      /* the IMAP source (imap://) */
	int pop3_allow_plaintext; /* pop3:// as source or -o pop3= */
	int smtp_allow_plaintext; /* smtp:// in -o smtp= */
	bool foreground;
	bool debug;
	bool allow_other;         /* seen among the FUSE options */
	bool default_permissions;
};

/* Parses SIZE with an optional K, M, G or T suffix (powers of 1024). */
int parse_size(const char *text, uint64_t *size_r);

/* The account's default cache directory:
 * $XDG_CACHE_HOME/mailfs/<user>@<host> (or ~/.cache/...), shared by the
 * IMAP and POP3 views of the account.  Without HOME, ~ is the passwd
 * entry's home directory; never /tmp.  Malloc'd, or NULL with *error_r
 * (one line) when there is no home directory. */
char *options_default_cache_dir(const struct mail_url *url,
	const char **error_r);

/* The default outbox spool: $XDG_STATE_HOME/mailfs/<user>@<host>/outbox
 * (or ~/.local/state/...): state, not cache, since it may hold mail that
 * exists nowhere else.  ~ as for the cache.  Malloc'd, or NULL with
 * *error_r. */
char *options_default_spool_dir(const struct mail_url *url,
	const char **error_r);

#endif
