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
#include "src/secret.h"

enum { KEY_HELP, KEY_VERSION, KEY_FOREGROUND, KEY_DEBUG };

#define OPT(t, field, value) { t, offsetof(struct mailfs_options, field), value }

static const struct fuse_opt opt_spec[] = {
	OPT("password_file=%s", password_file, 0),
	OPT("password_cmd=%s", password_cmd, 0),
	OPT("ca_file=%s", ca_file, 0),
	OPT("cache_dir=%s", cache_dir, 0),
	OPT("cache_size=%s", cache_size_text, 0),
	OPT("timeout=%u", timeout_s, 0),
	OPT("connections=%u", connections, 0),
	OPT("refresh=%u", refresh_s, 0),
	OPT("trash=%s", trash, 0),
	OPT("allow_plaintext", allow_plaintext, 1),
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
"\n"
"options:\n"
"    -f                     stay in the foreground\n"
"    -d                     debug log (implies -f; never shows the password)\n"
"    -o password_file=PATH  read the password from the first line of PATH\n"
"    -o password_cmd=CMD    run CMD and read the password from its output\n"
"                           (MAILFS_PASSWORD in the environment also works)\n"
"    -o ca_file=PATH        extra trusted CA certificates (PEM)\n"
"    -o cache_dir=PATH      cache directory (default\n"
"                           $XDG_CACHE_HOME/mailfs/USER@HOST)\n"
"    -o cache_size=SIZE     bound of the content cache, K/M/G (default 1G)\n"
"    -o timeout=SECONDS     deadline for one network operation (default 30)\n"
"    -o connections=N       IMAP sessions in the pool (default 4)\n"
"    -o refresh=SECONDS     re-list a folder older than this (default 30)\n"
"    -o trash=FOLDER        rm moves messages there instead of expunging\n"
"    -o allow_plaintext     permit imap:// without STARTTLS (unsafe)\n"
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

/* Creates dir and its parents (mode 0700 for the ones we make). */
static int make_private_dirs(const char *dir)
{
	char path[PATH_MAX];

	if (snprintf(path, sizeof(path), "%s", dir) >= (int)sizeof(path))
		return -1;
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(path, 0700) < 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	if (mkdir(path, 0700) < 0 && errno != EEXIST)
		return -1;
	return chmod(path, 0700);
}

struct mount_ctx {
	struct block_cache *cache;
	struct msg_reader *reader;
};

static char *stats_text(void *ctx)
{
	struct mount_ctx *mc = ctx;
	struct block_cache_stats s = { 0 };
	struct msg_reader_stats rs = { 0 };
	char *out;

	if (mc->cache)
		block_cache_get_stats(mc->cache, &s);
	if (mc->reader)
		msg_reader_get_stats(mc->reader, &rs);
	if (asprintf(&out, "fetched_bytes=%llu fetched_blocks=%llu "
			"prefetched_blocks=%llu memory_hits=%llu "
			"cache_hits=%llu cache_misses=%llu "
			"checksum_failures=%llu evictions=%llu "
			"store_failures=%llu blocks_on_disk=%llu "
			"bytes_on_disk=%llu",
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
			(unsigned long long)s.bytes_on_disk) < 0)
		return NULL;
	return out;
}

/* Start-up failures: one line on stderr, naming the cause. */
static __attribute__((format(printf, 1, 2))) int fail(const char *fmt, ...)
{
	va_list ap;

	fputs("mailfs: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return 1;
}

int main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct mailfs_options o = {
		.timeout_s = 30, .connections = 4, .refresh_s = 30,
		.cache_size = 1ULL << 30,
	};
	struct imap_endpoint ep = { 0 };
	struct imap_session *first = NULL;
	struct block_cache *cache = NULL;
	struct meta_cache *meta = NULL;
	bool offline = false;
	struct backend *be = NULL;
	struct msg_reader *reader = NULL;
	struct fs_tree *tree = NULL;
	struct fuse_session *se = NULL;
	struct fuse_loop_config *loop_cfg = NULL;
	struct mount_ctx mc = { 0 };
	char *password = NULL, *account = NULL, mountpoint[PATH_MAX];
	const char *error;
	enum backend_status st;
	int ret = 1;

	log_init(false, false);
	ps.o = &o;
	if (fuse_opt_parse(&args, &o, opt_spec, opt_proc) < 0)
		return 2;
	if (ps.help) {
		usage(stdout);
		printf("FUSE options:\n");
		fuse_lowlevel_help();
		return 0;
	}
	if (ps.version) {
		printf("mailfs %s\n", MAILFS_VERSION);
		fuse_lowlevel_version();
		return 0;
	}
	log_init(o.debug, false);
	if (!o.source_text || !o.mountpoint) {
		usage(stderr);
		return 2;
	}
	if (mail_url_parse(o.source_text, &o.source, &error) < 0)
		return fail("%s", error), 2;
	if (o.source.scheme != SCHEME_IMAPS && o.source.scheme != SCHEME_IMAP)
		return fail("%s: only imaps:// and imap:// sources are "
			"supported", o.source_text), 2;
	if (o.cache_size_text && parse_size(o.cache_size_text, &o.cache_size) < 0)
		return fail("invalid cache_size '%s' (use e.g. 512M or 2G)",
			o.cache_size_text), 2;
	if (o.timeout_s == 0 || o.connections == 0)
		return fail("%s", "timeout and connections must be at least 1"), 2;
	if (o.allow_other && !o.default_permissions)
		return fail("%s", "allow_other requires default_permissions: "
			"without it every local user could read this mailbox"), 2;
	if (!realpath(o.mountpoint, mountpoint))
		return fail("cannot use mount point: %s", strerror(errno)), 2;
	if (!o.cache_dir)
		o.cache_dir = options_default_cache_dir(&o.source);
	if (asprintf(&account, "%s@%s", o.source.user, o.source.host) < 0)
		return 1;

	password = secret_read_password(o.password_file, o.password_cmd,
		&error);
	if (!password)
		return fail("%s", error);

	ep.host = o.source.host;
	ep.port = o.source.port;
	ep.user = o.source.user;
	ep.password = password;
	ep.timeout_s = (int)o.timeout_s;
	ep.tls = o.source.scheme == SCHEME_IMAPS ? IMAP_TLS_IMPLICIT :
		o.allow_plaintext ? IMAP_TLS_NONE : IMAP_TLS_STARTTLS;
	if (o.allow_plaintext)
		log_warn("allow_plaintext: the password and mail may cross "
			"the network unencrypted if the server offers no "
			"STARTTLS");
	ep.tls_ctx = net_tls_context_new(o.ca_file, &error);
	if (!ep.tls_ctx) {
		fail("%s", error);
		goto out;
	}

	if (make_private_dirs(o.cache_dir) < 0) {
		fail("cannot create cache directory %s: %s", o.cache_dir,
			strerror(errno));
		goto out;
	}
	if (block_cache_open(o.cache_dir, o.cache_size, &cache, &error) < 0 ||
	    meta_cache_open(o.cache_dir, &meta, &error) < 0) {
		fail("%s", error);
		goto out;
	}
	mc.cache = cache;

	st = imap_session_open(&ep, &first, &error);
	if (st == BACKEND_CONNECT || st == BACKEND_TEMP) {
		/* Unreachable: with a metadata cache the mount still comes up
		 * and serves what is cached; the pool reconnects by itself. */
		struct backend_folder *cached;
		size_t n_cached;

		if (meta_cache_load_folders(meta, &cached, &n_cached) < 0) {
			fail("%s", error);
			goto out;
		}
		backend_folders_free(&cached, n_cached);
		log_warn("%s; mounting offline from the cache", error);
		offline = true;
	} else if (st != BACKEND_OK) {
		fail("%s", error);
		goto out;
	} else {
		log_debug("logged in as %s at %s:%u", ep.user, ep.host, ep.port);
	}

	be = imap_backend_new(&ep, o.connections, first);
	first = NULL;
	reader = be ? msg_reader_new(be, cache, account) : NULL;
	tree = reader ? fs_tree_new(be, reader, meta, o.refresh_s) : NULL;
	if (!tree) {
		fail("%s", "out of memory");
		goto out;
	}
	mc.reader = reader;
	fs_tree_set_stats_hook(tree, stats_text, &mc);
	fs_tree_set_inval_hook(tree, fs_ops_inval_entry, NULL);
	{
		char *stage_dir = NULL, *trash_raw = NULL;
		int r = -ENOMEM;

		if (o.trash)
			trash_raw = be->ops->encode_name(be, NULL, o.trash,
				&error);
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
	if (offline) {
		if (fs_tree_load_cached_folders(tree) < 0) {
			fail("%s", "the metadata cache is unreadable");
			goto out;
		}
	} else if (fs_tree_load_folders(tree, &error) < 0) {
		fail("cannot list folders: %s", error);
		goto out;
	}

	/* Keep the kernel's default_permissions checks meaningful and name
	 * the mount after its source in /proc/mounts. */
	char fsname[1024];
	snprintf(fsname, sizeof(fsname), "-ofsname=mailfs#%s@%s,subtype=mailfs",
		o.source.user, o.source.host);
	fuse_opt_add_arg(&args, fsname);
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
	if (fs_tree_start(tree, "INBOX") < 0)
		log_error("cannot start the copy-in thread; new files will "
			"not be appended");
	loop_cfg = fuse_loop_cfg_create();
	fuse_loop_cfg_set_max_threads(loop_cfg, 16);
	fuse_loop_cfg_set_idle_threads(loop_cfg, 4);
	ret = fuse_session_loop_mt(se, loop_cfg) < 0 ? 1 : 0;
	fuse_loop_cfg_destroy(loop_cfg);
	fs_ops_set_session(NULL);
out_unmount:
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_destroy:
	fuse_session_destroy(se);
out:
	fs_tree_free(&tree);
	msg_reader_free(&reader);
	backend_destroy(&be);
	if (first)
		imap_session_close(&first);
	block_cache_close(&cache);
	meta_cache_close(&meta);
	if (ep.tls_ctx)
		SSL_CTX_free(ep.tls_ctx);
	secret_free(&password);
	free(account);
	mail_url_clear(&o.source);
	free(o.source_text);
	free(o.mountpoint);
	free(o.password_file);
	free(o.password_cmd);
	free(o.ca_file);
	free(o.cache_dir);
	free(o.cache_size_text);
	free(o.trash);
	fuse_opt_free_args(&args);
	return ret;
}
