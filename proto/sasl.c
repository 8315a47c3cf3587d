#include "proto/sasl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

static const struct {
	const char *name;
	bool token;
} mechs[] = {
	[SASL_NONE] = { NULL, false },
	[SASL_PLAIN] = { "PLAIN", false },
	[SASL_LOGIN] = { "LOGIN", false },
	[SASL_XOAUTH2] = { "XOAUTH2", true },
	[SASL_OAUTHBEARER] = { "OAUTHBEARER", true },
};

const char *sasl_name(enum sasl_mech mech)
{
	return mechs[mech].name;
}

bool sasl_wants_token(enum sasl_mech mech)
{
	return mechs[mech].token;
}

bool sasl_choice_parse(const char *text, enum sasl_choice *choice_r)
{
	static const struct {
		const char *name;
		enum sasl_choice choice;
	} names[] = {
		{ "auto", SASL_AUTO },
		{ "plain", SASL_ONLY_PLAIN },
		{ "login", SASL_ONLY_LOGIN },
		{ "xoauth2", SASL_ONLY_XOAUTH2 },
		{ "oauthbearer", SASL_ONLY_OAUTHBEARER },
	};

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strcasecmp(text, names[i].name) == 0) {
			*choice_r = names[i].choice;
			return true;
		}
	}
	return false;
}

enum sasl_mech sasl_choose(enum sasl_choice choice, bool have_token,
	bool (*offered)(const char *name, void *ctx), void *ctx,
	const char **error_r)
{
	static const enum sasl_mech for_token[] = {
		SASL_OAUTHBEARER, SASL_XOAUTH2,
	};
	static const enum sasl_mech for_password[] = {
		SASL_PLAIN, SASL_LOGIN,
	};
	static const enum sasl_mech only[] = {
		[SASL_ONLY_PLAIN] = SASL_PLAIN,
		[SASL_ONLY_LOGIN] = SASL_LOGIN,
		[SASL_ONLY_XOAUTH2] = SASL_XOAUTH2,
		[SASL_ONLY_OAUTHBEARER] = SASL_OAUTHBEARER,
	};

	if (choice != SASL_AUTO) {
		enum sasl_mech m = only[choice];

		if (sasl_wants_token(m) != have_token) {
			*error_r = have_token ?
				"a token command needs auth=xoauth2,"
				" oauthbearer or auto" :
				"OAuth2 needs a token command (token_cmd)";
			return SASL_NONE;
		}
		if (!offered(sasl_name(m), ctx)) {
			*error_r = m == SASL_PLAIN ? "the server does not"
				" offer AUTH PLAIN" : m == SASL_LOGIN ?
				"the server does not offer AUTH LOGIN" :
				m == SASL_XOAUTH2 ? "the server does not"
				" offer XOAUTH2" : "the server does not offer"
				" OAUTHBEARER";
			return SASL_NONE;
		}
		return m;
	}
	const enum sasl_mech *list = have_token ? for_token : for_password;

	for (size_t i = 0; i < 2; i++)
		if (offered(sasl_name(list[i]), ctx))
			return list[i];
	*error_r = have_token ? "the server offers neither OAUTHBEARER nor"
		" XOAUTH2" : "the server offers neither AUTH PLAIN nor AUTH"
		" LOGIN";
	return SASL_NONE;
}

/* Appends n bytes of s at *o in buf (sized by the caller). */
static void put(unsigned char *buf, size_t *o, const void *s, size_t n)
{
	memcpy(buf + *o, s, n);
	*o += n;
}

static void puts_(unsigned char *buf, size_t *o, const char *s)
{
	put(buf, o, s, strlen(s));
}

unsigned char *sasl_initial_response(struct sasl_client *c, size_t *len_r)
{
	size_t ulen = strlen(c->user), slen = strlen(c->secret);
	/* OAUTHBEARER's saslname may triple every byte of the user */
	size_t cap = 3 * ulen + slen + strlen(c->host ? c->host : "") + 64;
	unsigned char *buf = malloc(cap);
	size_t o = 0;
	char port[16];

	if (!buf)
		return NULL;
	c->step = 1;
	switch (c->mech) {
	case SASL_PLAIN:
		/* authzid (empty) NUL authcid NUL passwd */
		put(buf, &o, "", 1);
		put(buf, &o, c->user, ulen);
		put(buf, &o, "", 1);
		put(buf, &o, c->secret, slen);
		break;
	case SASL_LOGIN:
		put(buf, &o, c->user, ulen);
		break;
	case SASL_XOAUTH2:
		puts_(buf, &o, "user=");
		put(buf, &o, c->user, ulen);
		puts_(buf, &o, "\001auth=Bearer ");
		put(buf, &o, c->secret, slen);
		puts_(buf, &o, "\001\001");
		break;
	case SASL_OAUTHBEARER:
		/* GS2 header: no channel binding, authzid as a saslname */
		puts_(buf, &o, "n,a=");
		for (size_t i = 0; i < ulen; i++) {
			if (c->user[i] == ',')
				puts_(buf, &o, "=2C");
			else if (c->user[i] == '=')
				puts_(buf, &o, "=3D");
			else
				put(buf, &o, &c->user[i], 1);
		}
		puts_(buf, &o, ",\001");
		if (c->host) {
			puts_(buf, &o, "host=");
			puts_(buf, &o, c->host);
			snprintf(port, sizeof(port), "\001port=%u\001",
				(unsigned)c->port);
			puts_(buf, &o, port);
		}
		puts_(buf, &o, "auth=Bearer ");
		put(buf, &o, c->secret, slen);
		puts_(buf, &o, "\001\001");
		break;
	case SASL_NONE:
		break;
	}
	*len_r = o;
	return buf;
}

unsigned char *sasl_next_response(struct sasl_client *c,
	const unsigned char *challenge, size_t challenge_len, size_t *len_r,
	bool *cancel_r)
{
	unsigned char *buf = NULL;
	size_t len = 0;

	(void)challenge;
	(void)challenge_len;
	*cancel_r = false;
	switch (c->mech) {
	case SASL_LOGIN:
		if (c->step == 1) {
			len = strlen(c->secret);
			buf = malloc(len + 1);
			if (buf)
				memcpy(buf, c->secret, len);
		} else {
			*cancel_r = true;
		}
		break;
	case SASL_XOAUTH2:
		/* the JSON error: an empty response gets the final reply */
		if (c->step == 1)
			buf = malloc(1);
		else
			*cancel_r = true;
		break;
	case SASL_OAUTHBEARER:
		if (c->step == 1) {
			buf = malloc(1);
			if (buf)
				buf[0] = 0x01;
			len = 1;
		} else {
			*cancel_r = true;
		}
		break;
	default:
		*cancel_r = true;
		break;
	}
	c->step++;
	if (*cancel_r) {
		free(buf);
		buf = malloc(1);    /* something non-NULL to return */
		len = 0;
	}
	*len_r = len;
	return buf;
}

void sasl_free(unsigned char *response, size_t len)
{
	if (!response)
		return;
	OPENSSL_cleanse(response, len);
	free(response);
}

char *sasl_b64_encode(const unsigned char *data, size_t len)
{
	char *out = malloc(4 * ((len + 2) / 3) + 1);

	if (!out)
		return NULL;
	EVP_EncodeBlock((unsigned char *)out, data, (int)len);
	return out;
}

static bool b64_char(char ch)
{
	return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
		(ch >= '0' && ch <= '9') || ch == '+' || ch == '/';
}

unsigned char *sasl_b64_decode(const char *text, size_t len, size_t *len_r)
{
	size_t pad = 0;
	unsigned char *out;
	int n;

	if (len % 4 != 0)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		if (b64_char(text[i]) && pad == 0)
			continue;
		if (text[i] == '=' && i >= len - 2) {
			pad++;
			continue;
		}
		return NULL;
	}
	out = malloc(len / 4 * 3 + 1);
	if (!out)
		return NULL;
	n = len ? EVP_DecodeBlock(out, (const unsigned char *)text,
		(int)len) : 0;
	if (n < 0 || (size_t)n < pad) {
		free(out);
		return NULL;
	}
	*len_r = (size_t)n - pad;
	out[*len_r] = '\0';
	return out;
}

/* The most challenges one exchange may bring before mailfs gives up. */
#define SASL_ROUNDS_MAX 4

static void free_line(char *p)
{
	if (p != NULL) {
		OPENSSL_cleanse(p, strlen(p));
		free(p);
	}
}

/* The base64 answer to one challenge, "*" to cancel; NULL when out of
 * memory. */
static char *answer_challenge(struct sasl_client *c, const char *text,
	size_t len, unsigned round)
{
	unsigned char *challenge = NULL, *resp = NULL;
	size_t clen = 0, rlen = 0;
	bool cancel = true;
	char *answer;

	if (round < SASL_ROUNDS_MAX) {
		challenge = sasl_b64_decode(text, len, &clen);
		if (challenge != NULL) {
			resp = sasl_next_response(c, challenge, clen, &rlen,
				&cancel);
			free(challenge);
			if (resp == NULL)
				return NULL;
		}
	}
	answer = cancel ? strdup("*") : rlen == 0 ? strdup("") :
		sasl_b64_encode(resp, rlen);
	sasl_free(resp, rlen);
	return answer;
}

enum sasl_result sasl_exchange(struct sasl_client *c,
	const struct sasl_framing *f, void *ctx)
{
	size_t ilen = 0;
	unsigned char *initial = sasl_initial_response(c, &ilen);
	char *b64 = initial == NULL ? NULL : ilen == 0 ? strdup("=") :
		sasl_b64_encode(initial, ilen);
	enum sasl_result res = SASL_FAILED;
	bool sent_initial, cancelled = false;
	int rc;

	sasl_free(initial, ilen);
	if (b64 == NULL)
		return SASL_NO_MEMORY;
	/* LOGIN's first response answers the server's first prompt. */
	rc = f->start(ctx, sasl_name(c->mech),
		c->mech == SASL_LOGIN ? NULL : b64);
	sent_initial = rc == 1;
	for (unsigned round = 0; rc >= 0; round++) {
		const char *text;
		size_t len;
		char *answer;

		rc = f->read(ctx, &text, &len);
		if (rc <= 0) {
			res = rc == 0 ? SASL_DONE : SASL_FAILED;
			break;
		}
		if (cancelled) {
			res = SASL_ENDLESS;
			break;
		}
		if (!sent_initial || (round == 0 && len == 0 &&
				      c->mech != SASL_LOGIN)) {
			sent_initial = true;
			rc = f->send(ctx, strcmp(b64, "=") == 0 ? "" : b64);
			continue;
		}
		answer = answer_challenge(c, text, len, round);
		if (answer == NULL) {
			res = SASL_NO_MEMORY;
			break;
		}
		cancelled = strcmp(answer, "*") == 0;
		rc = f->send(ctx, answer);
		free_line(answer);
	}
	free_line(b64);
	return res;
}
