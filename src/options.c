#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

char *options_default_cache_dir(const struct mail_url *url)
{
	const char *xdg = getenv("XDG_CACHE_HOME");
	const char *home = getenv("HOME");
	char account[512], *out = NULL;

	/* One directory per account; '/' cannot occur in user or host after
	 * parsing, but keep the name a single path component regardless. */
	snprintf(account, sizeof(account), "%s@%s", url->user, url->host);
	for (char *c = account; *c; c++)
		if (*c == '/')
			*c = '_';
	if (xdg && *xdg == '/') {
		if (asprintf(&out, "%s/mailfs/%s", xdg, account) < 0)
			return NULL;
	} else {
		if (asprintf(&out, "%s/.cache/mailfs/%s",
				home && *home ? home : "/tmp", account) < 0)
			return NULL;
	}
	return out;
}

char *options_default_spool_dir(const struct mail_url *url)
{
	const char *xdg = getenv("XDG_STATE_HOME");
	const char *home = getenv("HOME");
	char *out = NULL;
	int r;

	if (xdg && *xdg == '/')
		r = asprintf(&out, "%s/mailfs/%s@%s/outbox", xdg, url->user,
			url->host);
	else
		r = asprintf(&out, "%s/.local/state/mailfs/%s@%s/outbox",
			home && *home ? home : "/tmp", url->user, url->host);
	return r < 0 ? NULL : out;
}
