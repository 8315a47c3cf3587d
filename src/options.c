#include <ctype.h>
#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "src/errfmt.h"
#include "src/options.h"

static const struct {
	const char *prefix;
	enum mail_scheme scheme;
	uint16_t port;
} schemes[] = {
	{ "imaps://", SCHEME_IMAPS, 993 },
	{ "imap://", SCHEME_IMAP, 143 },
	{ "pop3s://", SCHEME_POP3S, 995 },
	{ "pop3://", SCHEME_POP3, 110 },
	{ "smtps://", SCHEME_SMTPS, 465 },
	{ "smtp://", SCHEME_SMTP, 587 },
};

const char *mail_scheme_name(enum mail_scheme scheme)
{
	for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++)
		if (schemes[i].scheme == scheme)
			return schemes[i].prefix;
	return "?";
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Percent-decodes [s, s+len); refuses control characters, which would be
 * an injection vector once sent to the server. */
static char *percent_decode(const char *s, size_t len)
{
	char *out = malloc(len + 1), *o = out;

	if (!out)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		int c = (unsigned char)s[i];

		if (c == '%' && i + 2 < len && hexval(s[i + 1]) >= 0 &&
		    hexval(s[i + 2]) >= 0) {
			c = hexval(s[i + 1]) * 16 + hexval(s[i + 2]);
			i += 2;
		}
		if (c < 0x20 || c == 0x7f) {
			free(out);
			return NULL;
		}
		*o++ = (char)c;
	}
	*o = '\0';
	return out;
}

int mail_url_parse(const char *text, struct mail_url *url_r,
	const char **error_r)
{
	const char *p = NULL, *at, *host, *host_end, *port_s = NULL, *end;
	struct mail_url url = { 0 };
	size_t i;

	for (i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
		size_t n = strlen(schemes[i].prefix);

		if (strncasecmp(text, schemes[i].prefix, n) == 0) {
			p = text + n;
			url.scheme = schemes[i].scheme;
			url.port = schemes[i].port;
			break;
		}
	}
	if (!p) {
		*error_r = errfmt("invalid URL '%s': expected imaps://, "
			"imap://, pop3s://, pop3://, smtps:// or "
			"smtp://user@host[:port]", text);
		return -1;
	}
	end = p + strcspn(p, "/?#");
	if (*end && strcmp(end, "/") != 0) {
		*error_r = errfmt("invalid URL '%s': unexpected path or "
			"query after the host", text);
		return -1;
	}
	at = memrchr(p, '@', end - p);
	if (!at || at == p) {
		*error_r = errfmt("invalid URL '%s': no user name "
			"(expected user@host)", text);
		return -1;
	}
	url.user = percent_decode(p, at - p);
	if (!url.user || !*url.user) {
		*error_r = errfmt("invalid URL '%s': bad user name", text);
		goto fail;
	}
	host = at + 1;
	if (*host == '[') {
		host_end = memchr(host, ']', end - host);
		if (!host_end) {
			*error_r = errfmt("invalid URL '%s': unterminated "
				"IPv6 address", text);
			goto fail;
		}
		url.host = strndup(host + 1, host_end - host - 1);
		host_end++;
	} else {
		host_end = memchr(host, ':', end - host);
		if (!host_end)
			host_end = end;
		url.host = strndup(host, host_end - host);
	}
	if (!url.host || !*url.host) {
		*error_r = errfmt("invalid URL '%s': no host name", text);
		goto fail;
	}
	for (const char *c = url.host; *c; c++)
		if (!isalnum((unsigned char)*c) && !strchr(".-_:", *c)) {
			*error_r = errfmt("invalid URL '%s': bad character "
				"in host name", text);
			goto fail;
		}
	if (host_end < end) {
		char *num_end;
		unsigned long port;

		if (*host_end != ':') {
			*error_r = errfmt("invalid URL '%s': junk after "
				"the host name", text);
			goto fail;
		}
		port_s = host_end + 1;
		errno = 0;
		port = strtoul(port_s, &num_end, 10);
		if (num_end != end || num_end == port_s || errno ||
		    port == 0 || port > 65535) {
			*error_r = errfmt("invalid URL '%s': bad port "
				"number", text);
			goto fail;
		}
		url.port = (uint16_t)port;
	}
	*url_r = url;
	return 0;
fail:
	mail_url_clear(&url);
	return -1;
}

void mail_url_clear(struct mail_url *url)
{
	free(url->user);
	free(url->host);
	url->user = url->host = NULL;
}

int parse_size(const char *text, uint64_t *size_r)
{
	char *end;
	unsigned long long v;
	int shift = 0;

	errno = 0;
	v = strtoull(text, &end, 10);
	if (end == text || errno)
		return -1;
	switch (toupper((unsigned char)*end)) {
	case '\0': break;
	case 'K': shift = 10; end++; break;
	case 'M': shift = 20; end++; break;
	case 'G': shift = 30; end++; break;
	case 'T': shift = 40; end++; break;
	default: return -1;
	}
	if (*end == 'i' || *end == 'B')
		end++;
	if (*end == 'B')
		end++;
	if (*end || (shift && v > (UINT64_MAX >> shift)))
		return -1;
	*size_r = (uint64_t)v << shift;
	return 0;
}

/* The home directory: $HOME when it is an absolute path, else the passwd
 * entry's (as under systemd or from /etc/fstab, where HOME may be unset),
 * which must exist.  Never a shared directory such as /tmp, in which
 * another user could prepare the path.  NULL with *error_r if none. */
static const char *home_dir(const char *option, const char **error_r)
{
	const char *home = getenv("HOME");
	struct passwd *pw;
	struct stat st;

	if (home && home[0] == '/')
		return home;
	pw = getpwuid(getuid());
	if (!pw || !pw->pw_dir || pw->pw_dir[0] != '/') {
		*error_r = errfmt("no usable HOME, and user %u has no home "
			"directory in the passwd database: give -o %s=PATH",
			(unsigned)getuid(), option);
		return NULL;
	}
	if (stat(pw->pw_dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		*error_r = errfmt("no usable HOME, and the home directory %s "
			"does not exist: give -o %s=PATH", pw->pw_dir, option);
		return NULL;
	}
	return pw->pw_dir;
}

/* <$xdg_var or HOME/under_home>/mailfs/<user>@<host><tail>.  The account
 * is one path component: a '/' in the user name (%2F) becomes '_'. */
static char *account_dir(const struct mail_url *url, const char *xdg_var,
	const char *under_home, const char *tail, const char *option,
	const char **error_r)
{
	const char *xdg = getenv(xdg_var), *home = NULL;
	char *account = NULL, *out = NULL;

	/* A relative XDG path is invalid and ignored, as the XDG base
	 * directory specification says. */
	if (!xdg || xdg[0] != '/') {
		xdg = NULL;
		home = home_dir(option, error_r);
		if (!home)
			return NULL;
	}
	if (asprintf(&account, "%s@%s", url->user, url->host) < 0) {
		*error_r = "out of memory";
		return NULL;
	}
	for (char *c = account; *c; c++)
		if (*c == '/')
			*c = '_';
	if ((xdg ? asprintf(&out, "%s/mailfs/%s%s", xdg, account, tail) :
		   asprintf(&out, "%s/%s/mailfs/%s%s", home, under_home, account,
			tail)) < 0) {
		out = NULL;
		*error_r = "out of memory";
	}
	free(account);
	return out;
}

char *options_default_cache_dir(const struct mail_url *url,
	const char **error_r)
{
	return account_dir(url, "XDG_CACHE_HOME", ".cache", "", "cache_dir",
		error_r);
}

char *options_default_spool_dir(const struct mail_url *url,
	const char **error_r)
{
	return account_dir(url, "XDG_STATE_HOME", ".local/state", "/outbox",
		"spool_dir", error_r);
}
