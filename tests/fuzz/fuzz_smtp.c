/* The SMTP client (proto/smtp_client.c) against a server that says
 * anything: replies, EHLO keywords, AUTH challenges.
 *
 * Input: one byte, then the bytes the server sends before it closes its
 * side (at once, or in pieces at FUZZ_SERVER_PAUSE markers: see
 * fuzz_server.h).  The byte modulo 8 ('0'-'7' in the seeds): bit 0
 * logs in (AUTH PLAIN or LOGIN, whichever EHLO offers), bits 1-2 choose
 * what follows the connect:
 *   0 nothing (greeting, EHLO or HELO, QUIT)
 *   1 MAIL, RCPT, DATA            2 MAIL (8BITMIME, SMTPUTF8), two RCPT, RSET
 *   3 two transactions
 *
 * Properties: no crash, leak or undefined behaviour; every reply has a
 * code of 0 or 200-599 and a one-line printable text; a result of
 * SMTP_OK comes with a 2xx reply and never from a broken session. */
#include <string.h>

#include "proto/smtp_client.h"
#include "tests/fuzz/fuzz_common.h"
#include "tests/fuzz/fuzz_server.h"

static struct smtp_endpoint ep = {
	.conn = {
		.host = "127.0.0.1",
		.tls = MAIL_TLS_NONE,
		.timeout_s = 5,
	},
	.helo_name = "client.example.org",
};

static const char message[] = "From: a@example.org\r\nTo: b@example.org\r\n"
	"Subject: test\r\n\r\n.dot\r\nbody\r\n";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fuzz_server_start();
	ep.conn.port = fuzz_server_port();
	return 0;
}

static void check_reply(struct smtp_session *s, enum smtp_result res,
	const struct smtp_reply *r)
{
	size_t len = strnlen(r->text, sizeof(r->text));

	FUZZ_CHECK(len < sizeof(r->text), "reply text not terminated%s", "");
	FUZZ_CHECK(r->code == 0 || (r->code >= 200 && r->code <= 599),
		"reply code %d", r->code);
	for (size_t i = 0; i < len; i++)
		FUZZ_CHECK((unsigned char)r->text[i] >= 0x20 &&
			r->text[i] != 0x7f, "control character in \"%s\"",
			r->text);
	if (res == SMTP_OK) {
		FUZZ_CHECK(r->code / 100 == 2, "OK with reply %d", r->code);
		FUZZ_CHECK(!smtp_session_broken(s), "OK from a broken"
			" session%s", "");
	}
}

static void transaction(struct smtp_session *s, unsigned flags)
{
	struct smtp_reply r;
	enum smtp_result res;
	bool sent;

	res = smtp_session_mail(s, "a@example.org", flags, sizeof(message) - 1,
		&r);
	check_reply(s, res, &r);
	if (res != SMTP_OK)
		return;
	res = smtp_session_rcpt(s, "b@example.org", &r);
	check_reply(s, res, &r);
	if (res != SMTP_OK)
		return;
	res = smtp_session_data(s, message, sizeof(message) - 1, &sent, &r);
	check_reply(s, res, &r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct smtp_session *s = NULL;
	struct smtp_reply r;
	enum smtp_result res;
	const char *error;
	unsigned sel;

	if (size == 0)
		return 0;
	sel = data[0] % 8;
	ep.conn.user = (sel & 1) ? "user" : NULL;
	ep.conn.password = (sel & 1) ? "secret" : NULL;
	fuzz_server_serve(data + 1, size - 1);
	if (smtp_session_open(&ep, &s, &error) == BACKEND_OK) {
		const struct smtp_caps *caps = smtp_session_caps(s);

		FUZZ_CHECK(caps != NULL, "no capabilities%s", "");
		switch (sel >> 1) {
		case 1:
			transaction(s, 0);
			break;
		case 2:
			res = smtp_session_mail(s, "a@example.org",
				SMTP_MAIL_8BIT | SMTP_MAIL_SMTPUTF8, 0, &r);
			check_reply(s, res, &r);
			res = smtp_session_rcpt(s, "b@example.org", &r);
			check_reply(s, res, &r);
			res = smtp_session_rcpt(s, "c@example.org", &r);
			check_reply(s, res, &r);
			res = smtp_session_reset(s, &r);
			check_reply(s, res, &r);
			break;
		case 3:
			transaction(s, SMTP_MAIL_8BIT);
			transaction(s, 0);
			break;
		default:
			break;
		}
		smtp_session_close(&s);
	}
	fuzz_server_finish();
	return 0;
}
