/* Outbox messages (src/outbox_message.h) from arbitrary bytes.
 *
 * Input: the message, optionally preceded by a line "#from <address>\n"
 * giving the configured default sender (else "fallback@example.org").
 *
 * Properties: outbox_address_check accepts only what its grammar allows;
 * a message that parses has a usable sender and at least one distinct,
 * usable recipient written verbatim in the message; rendering it never
 * fails and never leaves a bare CR or LF; with OUTBOX_RENDER_STRIP_BCC no
 * Bcc or Resent-Bcc field is left in the header; the rendered form parses
 * again to the same envelope (with OUTBOX_RENDER_COMPLETE: and then has
 * From, Date and Message-ID). */
#include <string.h>
#include <strings.h>

#include "src/outbox_message.h"
#include "tests/fuzz/fuzz_common.h"

static void check_address(const char *addr, const char *what)
{
	const char *why = NULL;
	size_t len = strlen(addr);

	FUZZ_CHECK(outbox_address_check(addr, &why) == 0,
		"%s \"%s\" fails the check: %s", what, addr, why);
	FUZZ_CHECK(len > 0 && len <= OUTBOX_ADDRESS_MAX, "%s length %zu", what,
		len);
	FUZZ_CHECK(fuzz_utf8_valid(addr, len), "%s \"%s\"", what, addr);
	FUZZ_CHECK(strpbrk(addr, " <>\r\n\t") == NULL && strchr(addr, '@'),
		"%s \"%s\"", what, addr);
	for (size_t i = 0; i < len; i++)
		FUZZ_CHECK((unsigned char)addr[i] >= 0x20 && addr[i] != 0x7f,
			"%s \"%s\"", what, addr);
	bool high = false;

	for (size_t i = 0; i < len; i++)
		high = high || (unsigned char)addr[i] >= 0x80;
	FUZZ_CHECK(outbox_address_is_utf8(addr) == high,
		"%s \"%s\": is_utf8 wrong", what, addr);
}

/* Every CR is followed by LF and every LF preceded by CR. */
static void check_crlf(const char *out, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (out[i] == '\r')
			FUZZ_CHECK(i + 1 < len && out[i + 1] == '\n',
				"bare CR at offset %zu of %zu", i, len);
		if (out[i] == '\n')
			FUZZ_CHECK(i > 0 && out[i - 1] == '\r',
				"bare LF at offset %zu of %zu", i, len);
	}
}

/* No field of the header (up to the first empty line) is named Bcc or
 * Resent-Bcc. */
static void check_no_bcc(const char *out, size_t len)
{
	size_t pos = 0;

	while (pos < len) {
		const char *eol = memmem(out + pos, len - pos, "\r\n", 2);
		size_t end = eol ? (size_t)(eol - out) : len, n = 0;

		if (end == pos)
			break;
		if (out[pos] != ' ' && out[pos] != '\t') {
			while (pos + n < end && out[pos + n] > ' ' &&
			       out[pos + n] < 0x7f && out[pos + n] != ':')
				n++;
			FUZZ_CHECK(!((n == 3 && strncasecmp(out + pos, "bcc", 3) == 0) ||
				(n == 10 && strncasecmp(out + pos, "resent-bcc", 10) == 0)),
				"a %.*s field survived STRIP_BCC", (int)n, out + pos);
		}
		pos = eol ? end + 2 : len;
	}
}

static void check_same_envelope(const struct outbox_message *a,
	const struct outbox_message *b, bool same_rcpts)
{
	FUZZ_CHECK(strcmp(a->sender, b->sender) == 0,
		"sender \"%s\" became \"%s\"", a->sender, b->sender);
	if (same_rcpts) {
		FUZZ_CHECK(a->n_rcpts == b->n_rcpts, "%zu recipients became %zu",
			a->n_rcpts, b->n_rcpts);
		for (size_t i = 0; i < a->n_rcpts; i++)
			FUZZ_CHECK(strcmp(a->rcpts[i], b->rcpts[i]) == 0,
				"recipient \"%s\" became \"%s\"", a->rcpts[i],
				b->rcpts[i]);
		FUZZ_CHECK(a->smtputf8 == b->smtputf8, "smtputf8 changed%s", "");
	} else {
		/* Without Bcc: a subset, in order. */
		size_t j = 0;

		for (size_t i = 0; i < b->n_rcpts; i++) {
			while (j < a->n_rcpts && strcmp(a->rcpts[j], b->rcpts[i]))
				j++;
			FUZZ_CHECK(j < a->n_rcpts, "recipient \"%s\" appeared",
				b->rcpts[i]);
		}
	}
}

static void check_render(const char *data, size_t size,
	const char *default_from, const struct outbox_message *msg,
	unsigned flags)
{
	struct outbox_message again;
	const char *error = NULL;
	char *out = NULL;
	size_t out_len = 0;
	int r;

	r = outbox_message_render(data, size, msg, flags, 1700000000, &out,
		&out_len, &error);
	FUZZ_CHECK(r == 0, "render (flags %u) failed: %s", flags, error);
	check_crlf(out, out_len);
	if (flags & OUTBOX_RENDER_STRIP_BCC)
		check_no_bcc(out, out_len);

	/* The wire form must still say the same thing. */
	r = outbox_message_parse(out, out_len,
		(flags & OUTBOX_RENDER_COMPLETE) ? NULL : default_from, &again,
		&error);
	if (flags & OUTBOX_RENDER_STRIP_BCC) {
		/* Only Bcc fields may have gone, and with them every
		 * recipient or the whole header. */
		if (r < 0)
			FUZZ_CHECK(strstr(error, "no recipient") != NULL ||
				strstr(error, "is empty") != NULL ||
				strstr(error, "has no header") != NULL,
				"rendered form (flags %u) refused: %s", flags,
				error);
	} else {
		FUZZ_CHECK(r == 0, "rendered form (flags %u) refused: %s", flags,
			error);
	}
	if (r == 0) {
		check_same_envelope(msg, &again,
			!(flags & OUTBOX_RENDER_STRIP_BCC));
		if (flags & OUTBOX_RENDER_COMPLETE)
			FUZZ_CHECK(again.has_from && again.has_date &&
				again.has_message_id, "a field was not added%s",
				"");
		else
			FUZZ_CHECK(again.has_from == msg->has_from &&
				again.has_date == msg->has_date &&
				again.has_message_id == msg->has_message_id,
				"fields changed%s", "");
		outbox_message_clear(&again);
	}
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *msg_data = (const char *)data;
	size_t msg_len = size;
	char default_from[OUTBOX_ADDRESS_MAX + 64] = "fallback@example.org";
	struct outbox_message msg;
	const char *error = NULL, *why;
	char *str;
	bool eight_bit = false;
	int r;

	if (size >= 6 && memcmp(data, "#from ", 6) == 0) {
		const uint8_t *nl = memchr(data, '\n', size);
		size_t n = (nl ? (size_t)(nl - data) : size) - 6;

		if (n >= sizeof(default_from))
			n = sizeof(default_from) - 1;
		memcpy(default_from, data + 6, n);
		default_from[n] = '\0';
		msg_data += nl ? (size_t)(nl - data) + 1 : size;
		msg_len -= nl ? (size_t)(nl - data) + 1 : size;
	}

	/* The bytes as one address. */
	str = fuzz_strndup((const uint8_t *)msg_data, msg_len);
	if (outbox_address_check(str, &why) == 0)
		check_address(str, "address");
	free(str);

	r = outbox_message_parse(msg_data, msg_len,
		default_from[0] ? default_from : NULL, &msg, &error);
	if (r < 0) {
		FUZZ_CHECK(error != NULL && error[0] != '\0', "no error text%s",
			"");
		FUZZ_CHECK(msg.sender == NULL && msg.rcpts == NULL &&
			msg.n_rcpts == 0, "refused message left data%s", "");
		return 0;
	}
	FUZZ_CHECK(memchr(msg_data, '\0', msg_len) == NULL,
		"a message with a NUL byte was accepted%s", "");
	for (size_t i = 0; i < msg_len; i++)
		if ((unsigned char)msg_data[i] >= 0x80)
			eight_bit = true;
	FUZZ_CHECK(msg.eight_bit == eight_bit, "eight_bit is %d", msg.eight_bit);
	check_address(msg.sender, "sender");
	FUZZ_CHECK(msg.n_rcpts > 0, "no recipients%s", "");
	bool utf8 = outbox_address_is_utf8(msg.sender);

	for (size_t i = 0; i < msg.n_rcpts; i++) {
		check_address(msg.rcpts[i], "recipient");
		FUZZ_CHECK(memmem(msg_data, msg_len, msg.rcpts[i],
			strlen(msg.rcpts[i])) != NULL,
			"recipient \"%s\" is not in the message", msg.rcpts[i]);
		for (size_t j = 0; j < i; j++)
			FUZZ_CHECK(!outbox_address_equal(msg.rcpts[i],
				msg.rcpts[j]), "recipient \"%s\" twice",
				msg.rcpts[i]);
		utf8 = utf8 || outbox_address_is_utf8(msg.rcpts[i]);
	}
	FUZZ_CHECK(msg.smtputf8 == utf8, "smtputf8 is %d", msg.smtputf8);
	if (msg.has_from)
		FUZZ_CHECK(memmem(msg_data, msg_len, msg.sender,
			strlen(msg.sender)) != NULL,
			"sender \"%s\" is not in the message", msg.sender);

	for (unsigned flags = 0; flags < 4; flags++)
		check_render(msg_data, msg_len, default_from, &msg, flags);
	outbox_message_clear(&msg);
	return 0;
}
