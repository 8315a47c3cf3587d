/* SASL mechanisms: the messages a client sends. */
#include "proto/sasl.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

static int copy_message(const char *a, size_t alen, const char *b,
	size_t blen, unsigned char **msg_r, size_t *len_r)
{
	unsigned char *m = malloc(alen + blen + 1);

	if (m == NULL)
		return -1;
	memcpy(m, a, alen);
	memcpy(m + alen, b, blen);
	*msg_r = m;
	*len_r = alen + blen;
	return 1;
}

/* One message: authzid (empty) NUL authcid NUL passwd. */
static int plain_message(size_t step, const char *user, const char *password,
	unsigned char **msg_r, size_t *len_r)
{
	size_t ulen = strlen(user), plen = strlen(password);
	unsigned char *m;

	if (step > 0)
		return 0;
	m = malloc(ulen + plen + 2);
	if (m == NULL)
		return -1;
	m[0] = '\0';
	memcpy(m + 1, user, ulen);
	m[1 + ulen] = '\0';
	memcpy(m + 2 + ulen, password, plen);
	*msg_r = m;
	*len_r = ulen + plen + 2;
	return 1;
}

/* The user name, then the password, each answering a challenge. */
static int login_message(size_t step, const char *user, const char *password,
	unsigned char **msg_r, size_t *len_r)
{
	if (step > 1)
		return 0;
	return step == 0 ? copy_message(user, strlen(user), "", 0, msg_r,
			len_r) :
		copy_message(password, strlen(password), "", 0, msg_r, len_r);
}

const struct sasl_mech sasl_plain = {
	.name = "PLAIN", .client_first = true, .message = plain_message,
};

const struct sasl_mech sasl_login = {
	.name = "LOGIN", .client_first = false, .message = login_message,
};

char *sasl_base64(const unsigned char *msg, size_t len, size_t *size_r)
{
	size_t size = 4 * ((len + 2) / 3) + 1;
	char *out = malloc(size);

	if (out != NULL)
		EVP_EncodeBlock((unsigned char *)out, msg, (int)len);
	*size_r = size;
	return out;
}

void sasl_free_secret(void *p, size_t size)
{
	if (p != NULL) {
		OPENSSL_cleanse(p, size);
		free(p);
	}
}
