/* mailfs: mount a remote mailbox as a file system. */
#define FUSE_USE_VERSION 312
#include <errno.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs/fs_ops.h"
#include "fs/fs_tree.h"
#include "proto/imap_backend.h"
#include "proto/imap_session.h"
#include "proto/net_stream.h"
#include "src/block_cache.h"
#include "src/log.h"
#include "src/meta_cache.h"
#include "src/msg_reader.h"
#include "src/options.h"
#include "src/outbox_message.h"
#include "src/outbox_sender.h"
#include "src/outbox_spool.h"
#include "fs/fs_outbox.h"
#include "fs/fs_parts.h"
#include "proto/smtp_client.h"
#include "src/sd_notify.h"
#include "src/secret.h"
#include "src/source.h"
#include "src/token_source.h"

enum { KEY_HELP, KEY_VERSION, KEY_FOREGROUND, KEY_DEBUG };

#define OPT(t, field, value) { t, offsetof(struct mailfs_options, field), value }

static const struct fuse_opt opt_spec[] = {
	OPT("password_file=%s", password_file, 0),
	OPT("password_cmd=%s", password_cmd, 0),
	OPT("token_cmd=%s", token_cmd, 0),
	OPT("auth=%s", auth_text, 0),
	OPT("smtp_token_cmd=%s", smtp_token_cmd, 0),
	OPT("smtp_auth=%s", smtp_auth_text, 0),
	OPT("ca_file=%s", ca_file, 0),
	OPT("cache_dir=%s", cache_dir, 0),
	OPT("cache_size=%s", cache_size_text, 0),
	OPT("timeout=%u", timeout_s, 0),
	OPT("connections=%u", connections, 0),
	OPT("refresh=%u", refresh_s, 0),
	OPT("trash=%s", trash, 0),
	OPT("pop3=%s", pop3_text, 0),
	OPT("smtp=%s", smtp_text, 0),
	OPT("smtp_password_file=%s", smtp_password_file, 0),
	OPT("from=%s", from, 0),
	OPT("sent=%s", sent, 0),
	OPT("spool_dir=%s", spool_dir, 0),
	OPT("retry_min=%u", retry_min_s, 0),
	OPT("retry_max_age=%u", retry_max_age_s, 0),
	OPT("allow_plaintext", allow_plaintext, 1),
	OPT("pop3_allow_plaintext", pop3_allow_plaintext, 1),
	OPT("smtp_allow_plaintext", smtp_allow_plaintext, 1),
	FUSE_OPT_KEY("-h", KEY_HELP),
	FUSE_OPT_KEY("--help", KEY_HELP),
	FUSE_OPT_KEY("-V", KEY_VERSION),
	FUSE_OPT_KEY("--version", KEY_VERSION),
	FUSE_OPT_KEY("-f", KEY_FOREGROUND),
	FUSE_OPT_KEY("-d", KEY_DEBUG),
	FUSE_OPT_KEY("debug", KEY_DEBUG),
	FUSE_OPT_END
};

static void usage(FILE *out)
{
	fprintf(out,
"usage: mailfs [-f] [-d] [-o opt[,opt...]] SOURCE MOUNTPOINT\n"
"\n"
"SOURCE:\n"
"    imaps://user@host[:port]   IMAP over TLS (port 993)\n"
"    imap://user@host[:port]    IMAP with STARTTLS, required (port 143)\n"
"    pop3s://user@host[:port]   read-only POP3 view over TLS (port 995)\n"
"    pop3://user@host[:port]    read-only POP3 view with STLS (port 110)\n"
"\n"
"options:\n"
"    -f                     stay in the foreground\n"
"    -d                     debug log (implies -f; never shows the password)\n"
"    -o password_file=PATH  read the password from the first line of PATH\n"
"    -o password_cmd=CMD    run CMD and read the password from its output\n"
"                           (MAILFS_PASSWORD in the environment also works)\n"
"    -o token_cmd=CMD       OAuth2: run CMD for an access token at each login\n"
"                           (its first line; e.g. pizauth show ACCOUNT)\n"
"    -o auth=MECH           auto (default), plain, login, xoauth2 or\n"
"                           oauthbearer\n"
"    -o ca_file=PATH        extra trusted CA certificates (PEM)\n"
"    -o cache_dir=PATH      cache directory (default\n"
"                           $XDG_CACHE_HOME/mailfs/USER@HOST)\n"
"    -o cache_size=SIZE     bound of the content cache, K/M/G (default 1G)\n"
"    -o timeout=SECONDS     deadline for one network operation (default 30)\n"
"    -o connections=N       IMAP sessions in the pool (default 4)\n"
"    -o refresh=SECONDS     re-list a folder older than this (default 30)\n"
"    -o trash=FOLDER        rm moves messages there instead of expunging\n"
"    -o pop3=URL|none       POP3 view to fall back to when IMAP cannot be\n"
"                           reached (default pop3s:// on the same host)\n"
"\n"
"sending mail (files dropped into MOUNTPOINT/outbox/):\n"
"    -o smtp=URL            smtps://user@host[:465] or smtp://user@host[:587]\n"
"    -o smtp_password_file=PATH  SMTP password (default: the account's)\n"
"    -o smtp_token_cmd=CMD  SMTP access tokens (default: token_cmd)\n"
"    -o smtp_auth=MECH      as auth=, for SMTP (default: auth's)\n"
"    -o from=ADDRESS        sender for messages without a From header\n"
"    -o sent=FOLDER|none    where copies of sent mail go (default: the\n"
"                           \\Sent special-use folder, else Sent)\n"
"    -o spool_dir=PATH      the queue (default\n"
"                           $XDG_STATE_HOME/mailfs/USER@HOST/outbox)\n"
"    -o retry_min=SECONDS   first retry delay, doubling to an hour (60)\n"
"    -o retry_max_age=SECONDS  give up after this long (5 days)\n"
"    -o allow_plaintext     permit imap:// without STARTTLS (unsafe; the\n"
"                           password goes only to a loopback address)\n"
"    -o pop3_allow_plaintext  the same for pop3:// (STLS)\n"
"    -o smtp_allow_plaintext  the same for smtp:// (STARTTLS)\n"
"    -h, --help             this help and the FUSE options\n"
"    -V, --version          version\n"
"\n");
}

/* What the option parser found besides the option fields themselves
 * (fuse_opt_parse stores those by offset into struct mailfs_options). */
struct parse_state {
	struct mailfs_options *o;
	int positional;
	bool help, version;
};
static struct parse_state ps;

static int opt_proc(void *data, const char *arg, int key,
	struct fuse_args *outargs)
{
	(void)data;
	switch (key) {
	case KEY_HELP:
		ps.help = true;
		return 0;
	case KEY_VERSION:
		ps.version = true;
		return 0;
	case KEY_FOREGROUND:
		ps.o->foreground = true;
		return 0;
	case KEY_DEBUG:
		ps.o->debug = true;
		ps.o->foreground = true;
		return 0;
	case FUSE_OPT_KEY_NONOPT:
		if (ps.positional == 0) {
			ps.o->source_text = strdup(arg);
		} else if (ps.positional == 1) {
			ps.o->mountpoint = strdup(arg);
		} else {
			fprintf(stderr, "mailfs: unexpected argument '%s'\n",
				arg);
			return -1;
		}
		ps.positional++;
		return 0;
	case FUSE_OPT_KEY_OPT:
		if (strcmp(arg, "allow_other") == 0)
			ps.o->allow_other = true;
		if (strcmp(arg, "default_permissions") == 0)
			ps.o->default_permissions = true;
		return 1;   /* a FUSE option: let libfuse check it */
	}
	return 1;
}

struct mount_ctx {
	struct block_cache *cache;
	struct msg_reader *reader;
	struct fs_parts *parts;
	struct token_source *token, *smtp_token;   /* or NULL */
	struct backend *be;
};

/* Copies of sent mail go to this folder (raw name; NULL: none). */
struct sent_ctx {
	struct backend *be;
	char *folder;
};

static int file_sent(void *ctx, const char *bytes, size_t len)
{
	struct sent_ctx *sc = ctx;
	enum backend_status st;
	const char *error, *ignored;
	uint32_t uid;

	if (!sc->folder)
		return 0;
	st = backend_append(sc->be, sc->folder, bytes, len, "\\Seen", -1,
		&uid, &error);
	if (st == BACKEND_NOT_FOUND || st == BACKEND_REFUSED) {
		/* No such folder yet ([TRYCREATE]): make it once. */
		if (backend_create_folder(sc->be, sc->folder,
				&ignored) == BACKEND_OK)
			st = backend_append(sc->be, sc->folder, bytes, len,
				"\\Seen", -1, &uid, &error);
	}
	if (st != BACKEND_OK) {
		log_warn("sent mail was not filed in %s: %s", sc->folder,
			error);
		return -1;
	}
	return 0;
}

static int find_sent(void *ctx, const char *message_id)
{
	struct sent_ctx *sc = ctx;
	const char *error;
	uint32_t uid = 0;
	enum backend_status st;

	if (!sc->folder || !sc->be->ops->find_message_id)
		return -1;
	st = sc->be->ops->find_message_id(sc->be, sc->folder, message_id,
		&uid, &error);
	if (st == BACKEND_NOT_FOUND)
		return 0;   /* no Sent folder yet: nobody filed anything */
	return st == BACKEND_OK ? uid != 0 : -1;
}

/* The raw server name of a folder given as the mount shows it, levels
 * separated by '/' ("Archiv/Gesendet").  Malloc'd, or NULL with *error_r. */
static char *encode_folder_path(struct backend *be, const char *path,
	const char **error_r)
{
	char *copy = strdup(path), *raw = NULL, *save = NULL, *part;
	bool any = false;

	if (!copy) {
		*error_r = "out of memory";
		return NULL;
	}
	for (part = strtok_r(copy, "/", &save); part;
	     part = strtok_r(NULL, "/", &save)) {
		char *next = backend_encode_name(be, raw, part, error_r);

		any = true;
		free(raw);
		raw = next;
		if (!raw)
			break;
	}
	if (!any)
		*error_r = "empty folder name";
	free(copy);
	return raw;
}

/* The \Sent special-use folder, else one named Sent. */
static char *find_sent_folder(struct backend *be)
{
	struct backend_folder *f = NULL;
	size_t n = 0;
	char *out = NULL;

	if (be->ops->list_folders(be, &f, &n, &(const char *){ NULL }) ==
			BACKEND_OK) {
		for (size_t i = 0; i < n && !out; i++)
			if (f[i].special_use &&
			    strcmp(f[i].special_use, "\\Sent") == 0 &&
			    backend_raw_name_sendable(f[i].raw_name))
				out = strdup(f[i].raw_name);
		backend_folders_free(&f, n);
	}
	return out ? out : strdup("Sent");
}

static char *stats_text(void *ctx)
{
	struct mount_ctx *mc = ctx;
	struct block_cache_stats s = { 0 };
	struct msg_reader_stats rs = { 0 };
	struct fs_parts_stats pst = { 0 };
	char *out;

	if (mc->parts)
		fs_parts_get_stats(mc->parts, &pst);
	if (mc->cache)
		block_cache_get_stats(mc->cache, &s);
	if (mc->reader)
		msg_reader_get_stats(mc->reader, &rs);
	if (asprintf(&out, "fetched_bytes=%llu fetched_blocks=%llu "
			"prefetched_blocks=%llu memory_hits=%llu "
			"cache_hits=%llu cache_misses=%llu "
			"checksum_failures=%llu evictions=%llu "
			"store_failures=%llu blocks_on_disk=%llu "
			"bytes_on_disk=%llu parts_fetched_bytes=%llu "
			"parts_structures_fetched=%llu",
			(unsigned long long)rs.bytes_fetched,
			(unsigned long long)rs.blocks_fetched,
			(unsigned long long)rs.prefetched,
			(unsigned long long)rs.memory_hits,
			(unsigned long long)s.hits,
			(unsigned long long)s.misses,
			(unsigned long long)s.checksum_failures,
			(unsigned long long)s.evictions,
			(unsigned long long)s.store_failures,
			(unsigned long long)s.blocks_on_disk,
			(unsigned long long)s.bytes_on_disk,
			(unsigned long long)pst.bytes_fetched,
			(unsigned long long)pst.structures_fetched) < 0)
		return NULL;
	return out;
}

/* user.mailfs.status: what keeps the mount from the server, if anything. */
static char *status_text(const struct mount_ctx *mc)
{
	bool imap = mc->token && token_source_held(mc->token);
	bool smtp = mc->smtp_token && mc->smtp_token != mc->token &&
		token_source_held(mc->smtp_token);

	char *pressure = mc->be && mc->be->ops->pressure_text ?
		mc->be->ops->pressure_text(mc->be) : NULL, *out = NULL;

	if (imap || smtp) {
		free(pressure);
		return strdup(imap ? "authentication refused: re-authorize the"
			" token command" : "sending: authentication refused:"
			" re-authorize smtp_token_cmd");
	}
	if (!pressure)
		return strdup("ok");
	if (asprintf(&out, "ok; %s", pressure) < 0)
		out = NULL;
	free(pressure);
	return out;
}

static char *report_text(void *ctx, const char *what)
{
	return strcmp(what, "status") == 0 ? status_text(ctx) :
		stats_text(ctx);
}

/* Start-up failures: one line on stderr, naming the cause.  Control
 * characters (a line break in an option's value) are shown as '?', so
 * that the line stays one. */
/* "-ofsname=mailfs#USER@HOST,subtype=mailfs", with the ',' and '\\' of
 * user and host escaped as libfuse's option parser expects: a user name
 * may hold any byte ("x%2Callow_other" in a URL), and must not add
 * options to the mount.  Returns a malloc'ed string, or NULL. */
static char *fsname_option(const char *user, const char *host)
{
	const char *parts[2] = { user, host };
	size_t len = 0;
	char *out, *d;

	for (int i = 0; i < 2; i++)
		len += 2 * strlen(parts[i]);
	out = malloc(len + sizeof("-ofsname=mailfs#@,subtype=mailfs"));
	if (!out)
		return NULL;
	d = stpcpy(out, "-ofsname=mailfs#");
	for (int i = 0; i < 2; i++) {
		if (i == 1)
			*d++ = '@';
		for (const char *p = parts[i]; *p; p++) {
			if (*p == ',' || *p == '\\')
				*d++ = '\\';
			*d++ = *p;
		}
	}
	strcpy(d, ",subtype=mailfs");
	return out;
}

static __attribute__((format(printf, 1, 2))) int fail(const char *fmt, ...)
{
	char *text = NULL;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&text, fmt, ap);
	va_end(ap);
	if (n < 0) {
		fputs("mailfs: out of memory\n", stderr);
		return 1;
	}
	for (char *p = text; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	fprintf(stderr, "mailfs: %s\n", text);
	sd_notify_status(NULL, "failed: %s", text);
	free(text);
	return 1;
}

/* Whether -o NAME=MECH cannot work with what was given (a token command
 * or not); says so. */
static bool auth_conflict(const char *name, enum sasl_choice choice,
	bool have_token)
{
	bool wants_token = choice == SASL_ONLY_XOAUTH2 ||
		choice == SASL_ONLY_OAUTHBEARER;

	if (choice == SASL_AUTO || wants_token == have_token)
		return false;
	fail("%s: %s", name, wants_token ? "xoauth2 and oauthbearer need"
		" -o token_cmd=CMD" : "plain and login take a password, not"
		" the token of token_cmd");
	return true;
}

/* mount.fuse3 -o drop_privileges mounts first and hands over the open
 * /dev/fuse as the mount point /dev/fd/N, which libfuse takes as it is. */
static bool is_fuse_fd_path(const char *path)
{
	const char *prefix = "/dev/fd/";
	size_t n = strlen(prefix);

	return strncmp(path, prefix, n) == 0 && path[n] &&
		strspn(path + n, "0123456789") == strlen(path + n);
}

int main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct mailfs_options o = {
		.timeout_s = 30, .connections = 4, .refresh_s = 30,
		.cache_size = 1ULL << 30,
	};
	struct source src = { 0 };
	SSL_CTX *tls_ctx = NULL;
	struct block_cache *cache = NULL;
	struct meta_cache *meta = NULL;
	bool offline = false;
	struct outbox_spool *spool = NULL;
	struct outbox_sender *sender = NULL;
	struct fs_outbox *outbox = NULL;
	struct sent_ctx sent = { 0 };
	SSL_CTX *smtp_tls = NULL;
	char *smtp_password = NULL;
	struct backend *be = NULL;
	struct msg_reader *reader = NULL;
	struct fs_tree *tree = NULL;
	struct fuse_session *se = NULL;
	struct fuse_loop_config *loop_cfg = NULL;
	struct mount_ctx mc = { 0 };
	char *password = NULL, *account = NULL, mountpoint[PATH_MAX];
	enum sasl_choice auth = SASL_AUTO, smtp_auth;
	struct token_source *token = NULL, *smtp_token = NULL;
	const char *error;
	int ret = 1;

	log_init(false, false);
	sd_notify_init();
	ps.o = &o;
	ret = 2;   /* usage errors until the options are checked */
	if (fuse_opt_parse(&args, &o, opt_spec, opt_proc) < 0)
		goto out;
	if (ps.help) {
		usage(stdout);
		printf("FUSE options:\n");
		fuse_lowlevel_help();
		ret = 0;
		goto out;
	}
	if (ps.version) {
		printf("mailfs %s\n", MAILFS_VERSION);
		fuse_lowlevel_version();
		ret = 0;
		goto out;
	}
	log_init(o.debug, false);
	if (!o.source_text || !o.mountpoint) {
		usage(stderr);
		goto out;
	}
	if (mail_url_parse(o.source_text, &o.source, &error) < 0) {
		fail("%s", error);
		goto out;
	}
	if (o.source.scheme == SCHEME_SMTPS || o.source.scheme == SCHEME_SMTP) {
		fail("%s: the source must be imaps://, imap://, pop3s:// or "
			"pop3:// (SMTP goes in -o smtp=)", o.source_text);
		goto out;
	}
	if (o.cache_size_text &&
	    parse_size(o.cache_size_text, &o.cache_size) < 0) {
		fail("invalid cache_size '%s' (use e.g. 512M or 2G)",
			o.cache_size_text);
		goto out;
	}
	if (o.smtp_text) {
		if (mail_url_parse(o.smtp_text, &o.smtp, &error) < 0) {
			fail("%s", error);
			goto out;
		}
		if (o.smtp.scheme != SCHEME_SMTPS &&
		    o.smtp.scheme != SCHEME_SMTP) {
			fail("smtp=%s: expected smtps:// or smtp://",
				o.smtp_text);
			goto out;
		}
		if (o.from && outbox_address_check(o.from, &error) < 0) {
			fail("from=%s: %s", o.from, error);
			goto out;
		}
	}
	if (o.auth_text && !sasl_choice_parse(o.auth_text, &auth)) {
		fail("auth=%s: expected auto, plain, login, xoauth2 or "
			"oauthbearer", o.auth_text);
		goto out;
	}
	smtp_auth = auth;
	if (o.smtp_auth_text && !sasl_choice_parse(o.smtp_auth_text,
						   &smtp_auth)) {
		fail("smtp_auth=%s: expected auto, plain, login, xoauth2 or "
			"oauthbearer", o.smtp_auth_text);
		goto out;
	}
	if (auth_conflict("auth", auth, o.token_cmd != NULL) ||
	    (o.smtp_text && auth_conflict("smtp_auth", smtp_auth,
		(o.smtp_token_cmd ? o.smtp_token_cmd : o.token_cmd) != NULL)))
		goto out;
	if (o.timeout_s == 0 || o.connections == 0) {
		fail("%s", "timeout and connections must be at least 1");
		goto out;
	}
	if (o.allow_other && !o.default_permissions) {
		fail("%s", "allow_other requires default_permissions: "
			"without it every local user could read this mailbox");
		goto out;
	}
	if (is_fuse_fd_path(o.mountpoint)) {
		if (snprintf(mountpoint, sizeof(mountpoint), "%s",
				o.mountpoint) >= (int)sizeof(mountpoint)) {
			fail("cannot use mount point: %s",
				strerror(ENAMETOOLONG));
			goto out;
		}
	} else if (!realpath(o.mountpoint, mountpoint)) {
		fail("cannot use mount point: %s", strerror(errno));
		goto out;
	}
	ret = 1;   /* from here on: failures to start */
	if (!o.cache_dir &&
	    !(o.cache_dir = options_default_cache_dir(&o.source, &error))) {
		fail("%s", error);
		goto out;
	}
	if (asprintf(&account, "%s@%s", o.source.user, o.source.host) < 0) {
		account = NULL;
		goto out;
	}

	if (o.token_cmd) {
		token = token_source_new(o.token_cmd, "token_cmd");
		if (!token) {
			fail("%s", "out of memory");
			goto out;
		}
	} else {
		password = secret_read_password(o.password_file,
			o.password_cmd, &error);
		if (!password) {
			fail("%s", error);
			goto out;
		}
	}

	if (o.allow_plaintext)
		log_warn("allow_plaintext: the password and mail may cross "
			"the network unencrypted if the IMAP server offers no "
			"STARTTLS");
	if (o.pop3_allow_plaintext)
		log_warn("pop3_allow_plaintext: the password and mail may "
			"cross the network unencrypted if the POP3 server "
			"offers no STLS");
	if (o.smtp_allow_plaintext)
		log_warn("smtp_allow_plaintext: the password and mail may "
			"cross the network unencrypted if the SMTP server "
			"offers no STARTTLS");
	tls_ctx = net_tls_context_new(o.ca_file, &error);
	if (!tls_ctx) {
		fail("%s", error);
		goto out;
	}
	if (block_cache_open(o.cache_dir, o.cache_size, &cache, &error) < 0) {
		fail("%s", error);
		goto out;
	}
	mc.cache = cache;
	sd_notify_status(NULL, "connecting to %s:%u", o.source.host,
		(unsigned)o.source.port);
	if (source_open(&o, password, token, auth, tls_ctx, &src,
			&error) < 0) {
		fail("%s", error);
		goto out;
	}
	be = src.be;
	meta = src.meta;
	offline = src.offline;
	log_debug("source: %s", src.description ? src.description : "?");

	reader = be ? msg_reader_new(be, cache, account) : NULL;
	tree = reader ? fs_tree_new(be, reader, meta, o.refresh_s) : NULL;
	if (!tree) {
		fail("%s", "out of memory");
		goto out;
	}
	mc.reader = reader;
	mc.parts = fs_parts_new(be, tree, cache, account);
	mc.token = token;
	mc.be = be;
	fs_ops_set_parts(mc.parts);
	fs_tree_set_report_hook(tree, report_text, &mc);
	fs_tree_set_inval_hook(tree, fs_ops_inval_entry, NULL);
	fs_tree_set_source(tree, src.description);
	if (!be->read_only) {
		char *stage_dir = NULL, *trash_raw = NULL;
		int r = -ENOMEM;

		if (o.trash)
			trash_raw = encode_folder_path(be, o.trash, &error);
		if (asprintf(&stage_dir, "%s/staging", o.cache_dir) >= 0 &&
		    (!o.trash || trash_raw))
			r = fs_tree_enable_writes(tree, trash_raw, stage_dir);
		free(stage_dir);
		free(trash_raw);
		if (r < 0) {
			fail("cannot enable writing: %s", o.trash && !trash_raw ?
				error : strerror(-r));
			goto out;
		}
	}
	sd_notify_status(NULL, offline ? "offline: listing the cached "
		"folders" : "listing the folders");
	if (offline) {
		if (fs_tree_load_cached_folders(tree) < 0) {
			fail("%s", "the metadata cache is unreadable");
			goto out;
		}
	} else if (fs_tree_load_folders(tree, &error) < 0) {
		fail("cannot list folders: %s", error);
		goto out;
	}

	if (o.smtp_text) {
		int r;

		if (!o.spool_dir &&
		    !(o.spool_dir = options_default_spool_dir(&o.source,
				&error))) {
			fail("%s", error);
			goto out;
		}
		r = outbox_spool_open(o.spool_dir, &spool, &error);
		if (r < 0) {
			fail("%s", error);
			goto out;
		}
		if (o.smtp_token_cmd) {
			smtp_token = token_source_new(o.smtp_token_cmd,
				"smtp_token_cmd");
			if (!smtp_token) {
				fail("%s", "out of memory");
				goto out;
			}
		} else if (o.token_cmd && smtp_auth != SASL_ONLY_PLAIN &&
			   smtp_auth != SASL_ONLY_LOGIN) {
			smtp_token = token;     /* the account's tokens */
		} else if (o.smtp_password_file) {
			smtp_password = secret_read_password(
				o.smtp_password_file, NULL, &error);
			if (!smtp_password) {
				fail("%s", error);
				goto out;
			}
		} else if (!password) {
			fail("%s", "smtp_auth needs a password: give "
				"smtp_password_file");
			goto out;
		}

		smtp_tls = tls_ctx;
		SSL_CTX_up_ref(smtp_tls);
		sent.be = be;
		if (be->read_only || (o.sent && strcmp(o.sent, "none") == 0)) {
			sent.folder = NULL;
		} else if (o.sent) {
			sent.folder = encode_folder_path(be, o.sent, &error);
			if (!sent.folder) {
				fail("sent=%s: %s", o.sent, error);
				goto out;
			}
		} else {
			sent.folder = offline ? strdup("Sent") :
				find_sent_folder(be);
		}
		if (!(outbox = fs_outbox_new(spool, o.from))) {
			fail("%s", "out of memory");
			goto out;
		}
		fs_ops_set_outbox(outbox);
	}

	mc.smtp_token = smtp_token;
	/* Keep the kernel's default_permissions checks meaningful and name
	 * the mount after its source in /proc/mounts. */
	char *fsname = fsname_option(o.source.user, o.source.host);

	if (!fsname || fuse_opt_add_arg(&args, fsname) < 0) {
		free(fsname);
		fail("%s", "out of memory");
		goto out;
	}
	free(fsname);
	se = fuse_session_new(&args, &fs_ops, sizeof(fs_ops), tree);
	if (!se)
		goto out;   /* libfuse said why */
	if (fuse_set_signal_handlers(se) < 0)
		goto out_destroy;
	if (fuse_session_mount(se, mountpoint) < 0)
		goto out_signals;
	fs_ops_set_session(se);
	if (fuse_daemonize(o.foreground) < 0)
		goto out_unmount;
	if (!o.foreground)
		log_init(o.debug, true);
	log_info("mounted %s on %s", o.source_text, mountpoint);

	/* Threads only now: fuse_daemonize forks. */
	msg_reader_start(reader);
	if (spool) {
		struct outbox_sender_config cfg = {
			.smtp.conn = {
				.host = o.smtp.host, .port = o.smtp.port,
				.tls = o.smtp.scheme == SCHEME_SMTPS ?
					MAIL_TLS_IMPLICIT :
					o.smtp_allow_plaintext ?
					MAIL_TLS_NONE : MAIL_TLS_STARTTLS,
				.tls_ctx = smtp_tls, .user = o.smtp.user,
				.password = smtp_token ? NULL : smtp_password ?
					smtp_password : password,
				.token = smtp_token, .auth = smtp_auth,
				.timeout_s = (int)o.timeout_s,
			},
			.default_from = o.from,
			.retry_min_s = o.retry_min_s,
			.retry_max_age_s = o.retry_max_age_s,
			.file_sent = file_sent,
			.find_sent = find_sent,
			.file_sent_ctx = &sent,
		};

		if (outbox_sender_start(spool, &cfg, &sender, &error) < 0)
			log_error("cannot start sending the outbox: %s", error);
	}
	if (fs_tree_start(tree, "INBOX") < 0)
		log_error("cannot start the background threads: refreshes"
			" and copy-ins wait");
	loop_cfg = fuse_loop_cfg_create();
	fuse_loop_cfg_set_max_threads(loop_cfg, 16);
	fuse_loop_cfg_set_idle_threads(loop_cfg, 4);
	sd_notify_status("READY=1", "mounted %s on %s, %zu folders%s",
		o.source_text, mountpoint, fs_tree_folder_count(tree),
		offline ? ", started offline from the cache (reconnecting)" :
		"");
	ret = fuse_session_loop_mt(se, loop_cfg) < 0 ? 1 : 0;
	sd_notify_status("STOPPING=1", "unmounting");
	fuse_loop_cfg_destroy(loop_cfg);
	fs_ops_set_session(NULL);
out_unmount:
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_destroy:
	fuse_session_destroy(se);
out:
	outbox_sender_stop(&sender);
	fs_ops_set_outbox(NULL);
	fs_outbox_free(&outbox);
	outbox_spool_close(&spool);
	fs_ops_set_parts(NULL);
	fs_parts_free(&mc.parts);
	fs_tree_free(&tree);
	msg_reader_free(&reader);
	source_close(&src);
	block_cache_close(&cache);
	if (tls_ctx)
		SSL_CTX_free(tls_ctx);
	secret_free(&password);
	secret_free(&smtp_password);
	if (smtp_token != token)
		token_source_free(smtp_token);
	token_source_free(token);
	if (smtp_tls)
		SSL_CTX_free(smtp_tls);
	free(sent.folder);
	mail_url_clear(&o.smtp);
	free(o.smtp_text);
	free(o.pop3_text);
	free(o.smtp_password_file);
	free(o.from);
	free(o.sent);
	free(o.spool_dir);
	free(account);
	mail_url_clear(&o.source);
	free(o.source_text);
	free(o.mountpoint);
	free(o.password_file);
	free(o.password_cmd);
	free(o.token_cmd);
	free(o.auth_text);
	free(o.smtp_token_cmd);
	free(o.smtp_auth_text);
	free(o.ca_file);
	free(o.cache_dir);
	free(o.cache_size_text);
	free(o.trash);
	fuse_opt_free_args(&args);
	return ret;
}
