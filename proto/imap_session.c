/* One authenticated IMAP session: connect, TLS, capabilities, login.
 *
 * libetpan parses and sends; this file decides what to trust.  Three
 * libetpan habits shape it:
 *  - mailimap_capability() dereferences NULL when a server answers OK
 *    without a CAPABILITY line, and capabilities we drop on purpose (after
 *    STARTTLS, before LOGIN) leave exactly that NULL; so CAPABILITY is sent
 *    here by hand.
 *  - mailimap_free() sends LOGOUT on any stream still attached; a session
 *    we gave up on has its stream closed first.
 *  - LOGIN sends the password as a quoted string, which cannot carry
 *    8-bit bytes under RFC 3501; such passwords go through AUTHENTICATE
 *    PLAIN (base64) when the server offers it.
 *  - Its parser crashes on some response codes: PERMANENTFLAGS or
 *    BADCHARSET with a list in the greeting (parsed without a parser
 *    context: NULL dereference), two BADCHARSET codes in one answer (a
 *    double free), "[PERMANENTFLAGS (" followed by junk (clist_foreach on
 *    NULL).  Before TLS anyone on the path can send those, so the
 *    greeting and the answers to CAPABILITY and STARTTLS that arrive in
 *    clear text are read ahead into the stream's buffer and checked here
 *    (check_line) before libetpan parses them; STARTTLS is sent by hand
 *    for that reason.  (After login libetpan parses everything itself:
 *    with TLS only the authenticated server could send such codes.)
 *    The continuation requests that answer APPEND and IDLE are the
 *    exception: mailimap_append() and mailimap_idle() parse them without
 *    a parser context too, so those commands are sent by hand and
 *    imap_session_continuation() checks and consumes the "+" line.
 */
#include "proto/imap_session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>


#include "proto/imap_syntax.h"
#include "proto/mail_conn.h"
#include "proto/net_stream.h"
#include "proto/sasl.h"
#include "src/errfmt.h"
#include "src/log.h"
#include "src/secret.h"
#include "src/token_source.h"

/* LOGOUT at close waits at most this long. */
#define LOGOUT_TIMEOUT_S 5
/* Longest greeting, and longest answer read ahead before TLS; a
 * CAPABILITY list rarely passes 1 KiB. */
#define GREETING_MAX 16384
#define PLAIN_ANSWER_MAX 65536
/* Untagged responses dropped while waiting for a continuation request. */
#define CONTINUATION_DROP_MAX (1024 * 1024)
/* Bytes of a refused line quoted in the error message. */
#define QUOTE_MAX 80

/* Like mailimap_has_extension(), without its crash on a CAPABILITY answer
 * that listed nothing. */
static bool has_cap_of(mailimap *imap, int type, const char *name)
{
	struct mailimap_capability_data *cd;
	clistiter *it;

	if (!imap->imap_connection_info ||
	    !(cd = imap->imap_connection_info->imap_capability) ||
	    !cd->cap_list)
		return false;
	for (it = clist_begin(cd->cap_list); it; it = clist_next(it)) {
		struct mailimap_capability *c = clist_content(it);
		const char *v = !c ? NULL : type == MAILIMAP_CAPABILITY_NAME ?
			c->cap_data.cap_name : c->cap_data.cap_auth_type;

		if (c && c->cap_type == type && v && strcasecmp(v, name) == 0)
			return true;
	}
	return false;
}

static bool has_cap(mailimap *imap, const char *name)
{
	return has_cap_of(imap, MAILIMAP_CAPABILITY_NAME, name);
}

static bool is_plain_ascii(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
			return false;
	return true;
}

/* What libetpan 1.9.4 does with the results of the commands mailfs
 * sends through it when the server does not answer OK (read from its
 * source: mailimap.c, qresync.c, uidplus.c, condstore.c):
 *
 *   any command, BAD or BYE, a wrong tag, a parse or stream error:
 *     returns before touching a result pointer (BAD gives
 *     MAILIMAP_ERROR_PROTOCOL, BYE MAILIMAP_ERROR_FATAL);
 *   UID FETCH (mailimap_uid_fetch -> mailimap_uid_fetch_qresync_vanished),
 *   tagged NO:
 *     with untagged FETCH data: returns MAILIMAP_NO_ERROR, the list is
 *     the caller's; with none: stores the list in *result, frees it and
 *     returns MAILIMAP_ERROR_UID_FETCH with *result dangling;
 *   LIST, tagged NO: *result holds whatever came before the NO, owned by
 *     the caller, returns MAILIMAP_ERROR_LIST;
 *   UID COPY, UID MOVE (uidplus), tagged NO: results untouched;
 *   SELECT, EXAMINE, STORE, EXPUNGE, CREATE, DELETE, RENAME, LOGIN,
 *   IDLE DONE, tagged NO: no result; selection data stays in
 *     imap_selection_info until the next SELECT or EXAMINE.
 *
 * The wrappers below make FETCH and LIST agree with the rest. */
int imap_session_uid_fetch(struct imap_session *s, struct mailimap_set *set,
	struct mailimap_fetch_type *ft, clist **result_r)
{
	clist *result = NULL;
	int r;

	r = mailimap_uid_fetch(s->imap, set, ft, &result);
	/* On MAILIMAP_ERROR_UID_FETCH the list is already freed; on every
	 * other error it was never set. */
	*result_r = r == MAILIMAP_NO_ERROR ? result : NULL;
	return r;
}

int imap_session_list(struct imap_session *s, const char *reference,
	const char *pattern, clist **result_r)
{
	clist *result = NULL;
	int r;

	r = mailimap_list(s->imap, reference, pattern, &result);
	if (r != MAILIMAP_NO_ERROR && result != NULL) {
		mailimap_list_result_free(result);   /* answers before a NO */
		result = NULL;
	}
	*result_r = result;
	return r;
}

const char *imap_session_last_text(struct imap_session *s)
{
	mailimap *imap = s->imap;
	const char *text = imap->imap_response;
	const char *atom = NULL;
	char raw[sizeof(s->text)];

	if (imap->imap_response_info != NULL)
		atom = imap->imap_response_info->rsp_atom;
	if (text == NULL)
		text = "";
	if (atom != NULL)
		snprintf(raw, sizeof(raw), "[%s] %s", atom, text);
	else
		snprintf(raw, sizeof(raw), "%s", text);
	mail_copy_printable(s->text, sizeof(s->text), raw, strlen(raw));
	return s->text;
}

/* The status of a failed stream: the guard refusing what the server
 * sent is the server's fault, not the network's. */
static enum backend_status stream_status(struct imap_session *s)
{
	return s->guard.refused != NULL ? BACKEND_PROTOCOL : BACKEND_TEMP;
}

static const char *stream_reason(struct imap_session *s)
{
	const char *e = "";

	if (s->imap->imap_stream != NULL)
		e = net_stream_last_error(s->imap->imap_stream);
	return e[0] != '\0' ? e : "connection lost";
}

/* ------------------------------------------------------------------ */
/* State and the selected folder                                       */

static const char *const state_names[] = {
	[IMAP_CONNECTING] = "connecting",
	[IMAP_AUTHENTICATED] = "authenticated",
	[IMAP_SELECTED] = "selected",
	[IMAP_LOGOUT] = "logout",
	[IMAP_BROKEN] = "broken",
};

void imap_session_set_state(struct imap_session *s, enum imap_state state)
{
	if (mail_conn_state_move("imap", s->label, state_names, (int)s->state,
			(int)state, IMAP_BROKEN))
		s->state = state;
}

bool imap_session_broken(const struct imap_session *s)
{
	return s->state == IMAP_BROKEN;
}

static void forget_selected(struct imap_session *s)
{
	free(s->selected);
	s->selected = NULL;
	s->selected_rw = false;
	s->selected_uidvalidity = 0;
	s->selected_known = 0;
	if (s->state == IMAP_SELECTED)
		imap_session_set_state(s, IMAP_AUTHENTICATED);
}

int imap_session_select(struct imap_session *s, const char *folder,
	bool rw, bool force, uint64_t *modseq_r)
{
	struct mailimap_selection_info *sel;
	uint64_t modseq = 0;
	int r;

	if (modseq_r != NULL)
		*modseq_r = 0;
	if (!force && s->selected != NULL && strcmp(s->selected, folder) == 0
	    && (s->selected_rw || !rw))
		return MAILIMAP_NO_ERROR;
	forget_selected(s);
	if (rw)
		r = mailimap_select(s->imap, folder);
	else if (modseq_r != NULL && s->caps.condstore)
		r = mailimap_examine_condstore(s->imap, folder, &modseq);
	else
		r = mailimap_examine(s->imap, folder);
	if (r != MAILIMAP_NO_ERROR)
		return r;
	/* Without the copy the next call opens the folder again. */
	s->selected = strdup(folder);
	if (s->selected == NULL)
		return MAILIMAP_NO_ERROR;
	sel = s->imap->imap_selection_info;
	s->selected_rw = rw;
	s->selected_uidvalidity = sel != NULL ? sel->sel_uidvalidity : 0;
	s->selected_known = sel != NULL ? sel->sel_uidnext : 0;
	if (modseq_r != NULL)
		*modseq_r = modseq;
	imap_session_set_state(s, IMAP_SELECTED);
	return MAILIMAP_NO_ERROR;
}

int imap_session_know_uid(struct imap_session *s, uint32_t uid)
{
	int r;

	if (s->selected == NULL || uid < s->selected_known)
		return MAILIMAP_NO_ERROR;
	r = mailimap_noop(s->imap);
	/* UIDs only grow: every message up to uid that exists now has been
	 * announced by the NOOP's end. */
	if (r == MAILIMAP_NO_ERROR && uid < UINT32_MAX)
		s->selected_known = uid + 1;
	return r;
}

void imap_session_unselect(struct imap_session *s)
{
	int r;

	if (s->selected == NULL)
		return;
	r = mailimap_examine(s->imap, "INBOX");
	if (r != MAILIMAP_NO_ERROR)
		imap_session_status(s, r);
	forget_selected(s);
}

/* ------------------------------------------------------------------ */
/* Status mapping                                                      */

/* Refines a NO by its response code (RFC 5530). */
static enum backend_status code_status(struct imap_session *s,
	enum backend_status fallback)
{
	struct mailimap_response_info *info = s->imap->imap_response_info;
	const char *atom;

	if (info == NULL)
		return fallback;
	if (info->rsp_trycreate)
		return BACKEND_NOT_FOUND;
	atom = info->rsp_atom;
	if (atom == NULL)
		return fallback;
	if (strcasecmp(atom, "NONEXISTENT") == 0)
		return BACKEND_NOT_FOUND;
	if (strcasecmp(atom, "ALREADYEXISTS") == 0)
		return BACKEND_EXISTS;
	if (strcasecmp(atom, "HASCHILDREN") == 0)
		return BACKEND_NOT_EMPTY;
	if (strcasecmp(atom, "UNAVAILABLE") == 0 ||
	    strcasecmp(atom, "INUSE") == 0 ||
	    strcasecmp(atom, "LIMIT") == 0 ||
	    strcasecmp(atom, "SERVERBUG") == 0)
		return BACKEND_TEMP;
	if (strcasecmp(atom, "AUTHENTICATIONFAILED") == 0 ||
	    strcasecmp(atom, "AUTHORIZATIONFAILED") == 0 ||
	    strcasecmp(atom, "EXPIRED") == 0)
		return BACKEND_AUTH;
	return fallback;
}

/* After a tagged answer the stream should hold nothing, or an untagged
 * response that came early.  Anything else is the rest of a line cut
 * short by a bare LF (Dovecot echoes folder names into NO texts, LF and
 * all), which libetpan would take for the answer to the next command:
 * such a session is not reused. */
static void check_stray_bytes(struct imap_session *s)
{
	mailstream *st = s->imap->imap_stream;

	if (st != NULL && st->read_buffer_len > 0 && st->read_buffer[0] != '*')
		imap_session_set_state(s, IMAP_BROKEN);
}

enum backend_status imap_session_status(struct imap_session *s, int r)
{
	if (r != MAILIMAP_NO_ERROR && r != MAILIMAP_NO_ERROR_AUTHENTICATED &&
	    r != MAILIMAP_NO_ERROR_NON_AUTHENTICATED)
		check_stray_bytes(s);
	switch (r) {
	case MAILIMAP_NO_ERROR:
	case MAILIMAP_NO_ERROR_AUTHENTICATED:
	case MAILIMAP_NO_ERROR_NON_AUTHENTICATED:
		return BACKEND_OK;

	/* The stream is gone or at an unknown position. */
	case MAILIMAP_ERROR_STREAM:
	case MAILIMAP_ERROR_PARSE:
	case MAILIMAP_ERROR_CONNECTION_REFUSED:
	case MAILIMAP_ERROR_FATAL:
	case MAILIMAP_ERROR_DONT_ACCEPT_CONNECTION:
	case MAILIMAP_ERROR_SSL:
	case MAILIMAP_ERROR_NEEDS_MORE_DATA:
	case MAILIMAP_ERROR_MEMORY:
	/* Our idea of the state disagrees with libetpan's: start over. */
	case MAILIMAP_ERROR_BAD_STATE:
		imap_session_set_state(s, IMAP_BROKEN);
		return stream_status(s);

	/* A tagged BAD, or a response with another command's tag. */
	case MAILIMAP_ERROR_PROTOCOL:
		imap_session_set_state(s, IMAP_BROKEN);
		return BACKEND_PROTOCOL;

	case MAILIMAP_ERROR_INVAL:
		return BACKEND_INVALID;

	case MAILIMAP_ERROR_LOGIN:
	case MAILIMAP_ERROR_SASL:
		return BACKEND_AUTH;

	case MAILIMAP_ERROR_SELECT:
	case MAILIMAP_ERROR_EXAMINE:
		/* The server deselects on a failed SELECT (RFC 3501 6.3.1). */
		forget_selected(s);
		return code_status(s, BACKEND_NOT_FOUND);

	case MAILIMAP_ERROR_STATUS:
		return code_status(s, BACKEND_NOT_FOUND);

	/* The server said NO to a command. */
	case MAILIMAP_ERROR_APPEND:
	case MAILIMAP_ERROR_NOOP:
	case MAILIMAP_ERROR_LOGOUT:
	case MAILIMAP_ERROR_CAPABILITY:
	case MAILIMAP_ERROR_CHECK:
	case MAILIMAP_ERROR_CLOSE:
	case MAILIMAP_ERROR_EXPUNGE:
	case MAILIMAP_ERROR_COPY:
	case MAILIMAP_ERROR_UID_COPY:
	case MAILIMAP_ERROR_MOVE:
	case MAILIMAP_ERROR_UID_MOVE:
	case MAILIMAP_ERROR_CREATE:
	case MAILIMAP_ERROR_DELETE:
	case MAILIMAP_ERROR_FETCH:
	case MAILIMAP_ERROR_UID_FETCH:
	case MAILIMAP_ERROR_LIST:
	case MAILIMAP_ERROR_LSUB:
	case MAILIMAP_ERROR_RENAME:
	case MAILIMAP_ERROR_SEARCH:
	case MAILIMAP_ERROR_UID_SEARCH:
	case MAILIMAP_ERROR_STORE:
	case MAILIMAP_ERROR_UID_STORE:
	case MAILIMAP_ERROR_SUBSCRIBE:
	case MAILIMAP_ERROR_UNSUBSCRIBE:
	case MAILIMAP_ERROR_STARTTLS:
	case MAILIMAP_ERROR_EXTENSION:
	case MAILIMAP_ERROR_CUSTOM_COMMAND:
	case MAILIMAP_ERROR_CLIENTID:
		return code_status(s, BACKEND_REFUSED);

	default:
		imap_session_set_state(s, IMAP_BROKEN);
		return BACKEND_PROTOCOL;
	}
}

/* ------------------------------------------------------------------ */
/* Protocol logging (debug only)                                       */

static void session_logger(mailimap *imap, int log_type, const char *str,
	size_t size, void *context)
{
	struct imap_session *s = context;

	(void)imap;
	mail_conn_log("imap", s->label, log_type, str, size, MAIL_LOG_ALL);
}

/* ------------------------------------------------------------------ */
/* Checking what arrives in clear text                                 */

enum line_kind {
	LINE_UNTAGGED,          /* "* ..." */
	LINE_CONTINUATION,      /* "+ ..." */
	LINE_TAGGED,            /* "TAG ...": ends an answer */
};

/* Checks the response code after '[' at p (up to end); NULL if libetpan
 * may parse it, else why not.  Accepted: CAPABILITY with atoms, and any
 * other code whose arguments are plain words (ALERT, UIDNEXT 5, REFERRAL
 * imap://...).  Refused: lists, quoted strings and literals, which is
 * where libetpan's bugs live, and PERMANENTFLAGS and BADCHARSET in any
 * form: they belong to SELECT and SEARCH answers, never to what a server
 * says before TLS.  Blanks are taken as libetpan takes them: any run of
 * SP and TAB, after the '[' too. */
static const char *code_problem(const char *p, const char *end)
{
	const char *name;
	size_t n;
	bool capability;

	while (p < end && imap_blank(*p))
		p++;
	for (name = p; p < end && imap_atom_char((unsigned char)*p); p++)
		;
	n = (size_t)(p - name);
	if (n == 0)
		return "an empty response code";
	/* libetpan matches code names as prefixes. */
	if (n >= 14 && strncasecmp(name, "PERMANENTFLAGS", 14) == 0)
		return "refused response code PERMANENTFLAGS";
	if (n >= 10 && strncasecmp(name, "BADCHARSET", 10) == 0)
		return "refused response code BADCHARSET";
	capability = imap_word_is(name, n, "CAPABILITY");
	for (; p < end && *p != ']'; p++) {
		unsigned char ch = (unsigned char)*p;

		if (imap_blank((char)ch))
			continue;
		if (capability ? !imap_atom_char(ch) :
		    (ch < 0x20 || ch > 0x7e || strchr("(){\"\\[", ch)))
			return "a response code with a list, quoted string or"
				" literal";
	}
	if (p == end)
		return "an unterminated response code";
	return NULL;
}

/* Checks resp-text at p: a response code, if any, must pass. */
static const char *text_problem(const char *p, const char *end)
{
	while (p < end && imap_blank(*p))
		p++;
	if (p < end && *p == '[')
		return code_problem(p + 1, end);
	return NULL;
}

/* The status word at p, matched as libetpan's keyword parser matches
 * it (a prefix, any case); the length matched, or 0. */
static size_t status_word(const char *p, const char *end, bool greeting)
{
	static const char *const any[] = { "OK", "PREAUTH", "BYE" };
	static const char *const answers[] = { "NO", "BAD" };

	for (size_t i = 0; i < sizeof(any) / sizeof(any[0]); i++)
		if ((size_t)(end - p) >= strlen(any[i]) &&
		    strncasecmp(p, any[i], strlen(any[i])) == 0)
			return strlen(any[i]);
	for (size_t i = 0; !greeting && i < 2; i++)
		if ((size_t)(end - p) >= strlen(answers[i]) &&
		    strncasecmp(p, answers[i], strlen(answers[i])) == 0)
			return strlen(answers[i]);
	return 0;
}

/* Checks one line (len bytes with its '\n') of what the server sent in
 * clear text, or of a continuation request (imap_session_continuation);
 * NULL if libetpan may parse it, else why not.  *kind_r says
 * what the line is.  A greeting must be "* OK", "* PREAUTH" or "* BYE".
 * The line is split as libetpan splits it: blanks are runs of SP and
 * TAB, before the '*' or '+' too. */
static const char *check_line(const char *line, size_t len, bool greeting,
	enum line_kind *kind_r)
{
	const char *end = line + len, *p, *tag;
	size_t n;

	if (memchr(line, '\0', len) != NULL)
		return "a NUL byte";
	end--;                              /* the '\n' */
	if (end > line && end[-1] == '\r')
		end--;
	for (p = line; p < end && imap_blank(*p); p++)
		;
	/* libetpan takes "+" for a continuation request with or without
	 * a space after it. */
	if (p < end && *p == '+') {
		*kind_r = LINE_CONTINUATION;
		if (greeting)
			return "not an IMAP greeting";
		return text_problem(p + 1, end);
	}
	for (tag = p; p < end && !imap_blank(*p); p++)
		;
	*kind_r = p - tag == 1 && tag[0] == '*' ? LINE_UNTAGGED :
		LINE_TAGGED;
	if (tag < end && tag[0] == '*' && *kind_r != LINE_UNTAGGED)
		return "a '*' not followed by a space";
	if (greeting && *kind_r != LINE_UNTAGGED)
		return "not an IMAP greeting";
	/* Literals would need libetpan's grammar to follow; no answer
	 * expected before TLS carries one. */
	if (!greeting && memchr(line, '{', (size_t)(end - line)) != NULL)
		return "a literal";

	while (p < end && imap_blank(*p))
		p++;
	n = status_word(p, end, greeting);
	if (n > 0)
		return text_problem(p + n, end);
	if (greeting)
		return "not an IMAP greeting";
	return NULL;                        /* data: CAPABILITY, EXISTS, ... */
}

/* A printable excerpt of a refused line for the error message. */
static const char *quote_line(const char *line, size_t len)
{
	char buf[QUOTE_MAX + 1];
	bool cut = false;

	while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
		len--;
	if (len > QUOTE_MAX) {
		len = QUOTE_MAX;
		cut = true;
	}
	mail_copy_printable(buf, sizeof(buf), line, len);
	return errfmt("%s%s", buf, cut ? " ..." : "");
}

/* Reads the greeting ahead and checks it before libetpan parses it.  A
 * BYE greeting is answered here: libetpan leaks it. */
static enum backend_status check_greeting(struct imap_session *s,
	const char **error_r)
{
	mailstream *stream = s->imap->imap_stream;
	enum line_kind kind;
	const char *line, *problem, *p;
	ssize_t n;

	n = net_stream_peek_line(stream, 0, GREETING_MAX, &line);
	if (n < 0) {
		imap_session_set_state(s, IMAP_BROKEN);
		*error_r = errfmt("no greeting from %s: %s", s->label,
			stream_reason(s));
		return BACKEND_TEMP;
	}
	if (n == 0) {
		imap_session_set_state(s, IMAP_BROKEN);
		*error_r = errfmt("bad greeting from %s: longer than %d bytes"
			" (not an IMAP server?)", s->label, GREETING_MAX);
		return BACKEND_PROTOCOL;
	}
	if (log_debug_enabled())
		mail_conn_log("imap", s->label,
			MAILSTREAM_LOG_TYPE_DATA_RECEIVED, line, (size_t)n,
			MAIL_LOG_ALL);
	problem = check_line(line, (size_t)n, true, &kind);
	if (problem != NULL) {
		imap_session_set_state(s, IMAP_BROKEN);
		*error_r = errfmt("bad greeting from %s: %s: %s", s->label,
			problem, quote_line(line, (size_t)n));
		return BACKEND_PROTOCOL;
	}
	p = line + 2;
	if (strncasecmp(p, "BYE", 3) == 0) {
		imap_session_set_state(s, IMAP_BROKEN);
		p += 3;
		while (*p == ' ')
			p++;
		*error_r = errfmt("server %s refused the connection: %s",
			s->label, quote_line(p, (size_t)(line + n - p)));
		return BACKEND_TEMP;
	}
	return BACKEND_OK;
}

/* Peeks the answer line at `off` in the stream's buffer (reading more as
 * needed) into *line_r / *len_r; a lost stream or a line longer than
 * PLAIN_ANSWER_MAX fails the session with an error naming `what`. */
static enum backend_status peek_answer_line(struct imap_session *s,
	size_t off, const char *what, const char **line_r, ssize_t *len_r,
	const char **error_r)
{
	ssize_t n = net_stream_peek_line(s->imap->imap_stream, off,
		PLAIN_ANSWER_MAX, line_r);

	*len_r = n;
	if (n > 0)
		return BACKEND_OK;
	imap_session_set_state(s, IMAP_BROKEN);
	if (n < 0) {
		*error_r = errfmt("%s at %s failed: %s", what, s->label,
			stream_reason(s));
		return stream_status(s);
	}
	*error_r = errfmt("bad answer to %s from %s: a line longer than %d"
		" bytes", what, s->label, PLAIN_ANSWER_MAX);
	return BACKEND_PROTOCOL;
}

/* Reads the answer to a command sent in clear text ahead, up to its
 * tagged line, and checks every line before libetpan parses any.  Bytes
 * left over from earlier answers are checked with it. */
static enum backend_status check_plain_answer(struct imap_session *s,
	const char *what, const char **error_r)
{
	enum backend_status st;
	enum line_kind kind;
	const char *line, *problem;
	size_t off = 0;
	ssize_t n;

	for (;;) {
		st = peek_answer_line(s, off, what, &line, &n, error_r);
		if (st != BACKEND_OK)
			return st;
		problem = check_line(line, (size_t)n, false, &kind);
		if (problem != NULL) {
			imap_session_set_state(s, IMAP_BROKEN);
			*error_r = errfmt("bad answer to %s from %s: %s: %s",
				what, s->label, problem,
				quote_line(line, (size_t)n));
			return BACKEND_PROTOCOL;
		}
		if (kind == LINE_TAGGED)
			return BACKEND_OK;
		off += (size_t)n;
	}
}

/* ------------------------------------------------------------------ */
/* Commands sent by hand                                               */

static int stream_puts(mailstream *stream, const char *str)
{
	size_t len = strlen(str);

	if (mailstream_write(stream, str, len) != (ssize_t)len)
		return MAILIMAP_ERROR_STREAM;
	return MAILIMAP_NO_ERROR;
}

/* Reads the rest of a response whose first line is in the buffer and
 * returns its tagged condition (MAILIMAP_RESP_COND_STATE_*) in *cond_r. */
static int read_response(mailimap *imap, int *cond_r)
{
	struct mailimap_response *resp;
	int r;

	r = mailimap_parse_response(imap, &resp);
	if (r != MAILIMAP_NO_ERROR)
		return r;
	*cond_r = resp->rsp_resp_done->rsp_data.rsp_tagged->rsp_cond_state->rsp_type;
	mailimap_response_free(resp);
	return MAILIMAP_NO_ERROR;
}

static bool caps_known(mailimap *imap)
{
	return imap->imap_connection_info != NULL &&
	       imap->imap_connection_info->imap_capability != NULL;
}

/* Capabilities seen before TLS or LOGIN must not count afterwards. */
static void caps_forget(mailimap *imap)
{
	if (caps_known(imap)) {
		mailimap_capability_data_free(
			imap->imap_connection_info->imap_capability);
		imap->imap_connection_info->imap_capability = NULL;
	}
}

/* Sends "TAG command" and reads its answer, checked first while the
 * stream is not TLS; *cond_r is the tagged condition
 * (MAILIMAP_RESP_COND_STATE_*).  Anything but an answer is explained in
 * *error_r.  libetpan keeps what it learns (capabilities) as usual. */
static enum backend_status plain_command(struct imap_session *s,
	const char *command, int *cond_r, const char **error_r)
{
	mailimap *imap = s->imap;
	enum backend_status st;
	int r;

	r = mailimap_send_current_tag(imap);
	if (r == MAILIMAP_NO_ERROR)
		r = stream_puts(imap->imap_stream, command);
	if (r == MAILIMAP_NO_ERROR)
		r = stream_puts(imap->imap_stream, "\r\n");
	if (r == MAILIMAP_NO_ERROR && mailstream_flush(imap->imap_stream) == -1)
		r = MAILIMAP_ERROR_STREAM;
	if (r == MAILIMAP_NO_ERROR && !net_stream_is_tls(imap->imap_stream)) {
		st = check_plain_answer(s, command, error_r);
		if (st != BACKEND_OK)
			return st;
	}
	if (r == MAILIMAP_NO_ERROR && mailimap_read_line(imap) == NULL)
		r = MAILIMAP_ERROR_STREAM;
	if (r == MAILIMAP_NO_ERROR)
		r = read_response(imap, cond_r);
	if (r == MAILIMAP_NO_ERROR)
		return BACKEND_OK;
	st = imap_session_status(s, r);
	*error_r = errfmt("%s at %s failed: %s", command, s->label,
		imap_session_broken(s) && st == BACKEND_TEMP ? stream_reason(s) :
		imap_session_last_text(s));
	return st;
}

enum backend_status imap_session_continuation(struct imap_session *s,
	const char *what, bool *go_r, bool *untagged_r, const char **error_r)
{
	mailimap *imap = s->imap;
	enum backend_status st;
	enum line_kind kind;
	const char *line, *problem, *end;
	size_t dropped = 0;
	bool literal;
	ssize_t n;

	*go_r = false;
	if (untagged_r != NULL)
		*untagged_r = false;
	for (;;) {
		/* One line at a time from the start of the buffer: each
		 * untagged one is consumed before the next is read. */
		st = peek_answer_line(s, 0, what, &line, &n, error_r);
		if (st != BACKEND_OK)
			return st;
		if (line[0] == '+') {
			problem = check_line(line, (size_t)n, false, &kind);
			if (problem != NULL) {
				imap_session_set_state(s, IMAP_BROKEN);
				*error_r = errfmt("bad continuation request from"
					" %s answering %s: %s: %s", s->label,
					what, problem,
					quote_line(line, (size_t)n));
				return BACKEND_PROTOCOL;
			}
			/* Consumed unparsed: libetpan has nothing to add. */
			if (mailimap_read_line(imap) == NULL) {
				imap_session_set_state(s, IMAP_BROKEN);
				*error_r = errfmt("%s at %s failed: %s", what,
					s->label, stream_reason(s));
				return stream_status(s);
			}
			*go_r = true;
			return BACKEND_OK;
		}
		if (line[0] != '*')
			return BACKEND_OK;      /* tagged: refused, or junk */

		/* Dropping lines one by one would lose track inside a
		 * literal; no server sends one unasked this early. */
		end = line + n - 1;             /* the '\n', after the '*' */
		if (end[-1] == '\r')
			end--;
		literal = end[-1] == '}';
		dropped += (size_t)n;
		if (literal || dropped > CONTINUATION_DROP_MAX) {
			imap_session_set_state(s, IMAP_BROKEN);
			*error_r = errfmt("bad answer to %s from %s: %s before"
				" the continuation request", what, s->label,
				literal ? "a literal" : "too much data");
			return BACKEND_PROTOCOL;
		}
		if (mailimap_read_line(imap) == NULL) {
			imap_session_set_state(s, IMAP_BROKEN);
			*error_r = errfmt("%s at %s failed: %s", what, s->label,
				stream_reason(s));
			return stream_status(s);
		}
		if (untagged_r != NULL)
			*untagged_r = true;
	}
}

/* Reads capabilities unless already known; explains failures.  CAPABILITY
 * is sent by hand (see the top of this file); libetpan stores the answer
 * in imap_connection_info. */
static enum backend_status session_capability(struct imap_session *s,
	bool force, const char **error_r)
{
	enum backend_status st;
	int cond;

	if (!force && caps_known(s->imap))
		return BACKEND_OK;
	if (s->imap->imap_connection_info == NULL) {
		*error_r = "out of memory";
		return BACKEND_TEMP;
	}
	caps_forget(s->imap);
	st = plain_command(s, "CAPABILITY", &cond, error_r);
	if (st != BACKEND_OK)
		return st;
	if (cond != MAILIMAP_RESP_COND_STATE_OK) {
		st = imap_session_status(s, MAILIMAP_ERROR_CAPABILITY);
		*error_r = errfmt("CAPABILITY at %s failed: %s", s->label,
			imap_session_last_text(s));
		return st;
	}
	if (!caps_known(s->imap)) {
		imap_session_set_state(s, IMAP_BROKEN);
		*error_r = errfmt("server %s sent no capabilities",
			s->label);
		return BACKEND_PROTOCOL;
	}
	return BACKEND_OK;
}

/* Sends str (base64 or "*") and CRLF with the stream's logging muted:
 * it carries a secret. */
static int send_secret_line(mailstream *stream, const char *str)
{
	int res;

	mailstream_set_privacy(stream, 0);
	if ((res = stream_puts(stream, str)) == MAILIMAP_NO_ERROR &&
	    (res = stream_puts(stream, "\r\n")) == MAILIMAP_NO_ERROR &&
	    mailstream_flush(stream) == -1)
		res = MAILIMAP_ERROR_STREAM;
	mailstream_set_privacy(stream, 1);
	return res;
}

/* The base64 text of a SASL response; "=" stands for an empty one
 * (RFC 4959) where it rides on the command line. */
static char *response_b64(const unsigned char *r, size_t len, bool on_line)
{
	if (len == 0)
		return strdup(on_line ? "=" : "");
	return sasl_b64_encode(r, len);
}

/* The most challenges one exchange may bring before mailfs gives up. */
#define SASL_ROUNDS_MAX 4

/* AUTHENTICATE with the mechanism of c (RFC 3501, 4959).  With SASL-IR
 * (known before the capabilities were forgotten for the login) the
 * initial response rides on the command line, else it follows the
 * server's first "+".  Later challenges are answered as sasl.h says; an
 * OAuth2 error challenge so gets the tagged NO that ends the exchange.
 * Returns a MAILIMAP_ERROR_* code: MAILIMAP_ERROR_LOGIN for a NO. */
static int auth_sasl(struct imap_session *s, struct sasl_client *c,
	bool sasl_ir)
{
	mailimap *imap = s->imap;
	mailstream *stream = imap->imap_stream;
	bool sent_initial = sasl_ir;
	size_t ilen = 0;
	unsigned char *initial = sasl_initial_response(c, &ilen);
	char *b64 = initial ? response_b64(initial, ilen, sasl_ir) : NULL;
	int r, cond, res;

	if (b64 == NULL) {
		res = MAILIMAP_ERROR_MEMORY;
		goto out;
	}
	res = mailimap_send_current_tag(imap);
	if (res != MAILIMAP_NO_ERROR)
		goto out;
	if ((res = stream_puts(stream, "AUTHENTICATE ")) ||
	    (res = stream_puts(stream, sasl_name(c->mech))))
		goto out;
	if (sasl_ir) {
		if ((res = stream_puts(stream, " ")))
			goto out;
		res = send_secret_line(stream, b64);
	} else {
		res = send_secret_line(stream, "");
	}
	if (res != MAILIMAP_NO_ERROR)
		goto out;

	for (unsigned round = 0;; round++) {
		const char *line;
		char *answer;
		size_t clen = 0, rlen = 0, llen;
		unsigned char *challenge, *resp;
		bool cancel = false;

		if (mailimap_read_line(imap) == NULL) {
			res = MAILIMAP_ERROR_STREAM;
			goto out;
		}
		line = imap->imap_stream_buffer->str;
		if (line[0] != '+')
			break;
		if (!sent_initial) {
			sent_initial = true;
			res = send_secret_line(stream, b64);
			if (res != MAILIMAP_NO_ERROR)
				goto out;
			continue;
		}
		/* "+ base64" (or "+" alone): a challenge */
		line++;
		while (*line == ' ')
			line++;
		llen = strcspn(line, "\r\n");
		challenge = sasl_b64_decode(line, llen, &clen);
		resp = challenge && round < SASL_ROUNDS_MAX ?
			sasl_next_response(c, challenge, clen, &rlen,
				&cancel) : NULL;
		if (challenge && round < SASL_ROUNDS_MAX && resp == NULL) {
			free(challenge);
			res = MAILIMAP_ERROR_MEMORY;
			goto out;
		}
		answer = resp == NULL || cancel ? strdup("*") :
			response_b64(resp, rlen, false);
		free(challenge);
		sasl_free(resp, rlen);
		if (answer == NULL) {
			res = MAILIMAP_ERROR_MEMORY;
			goto out;
		}
		res = send_secret_line(stream, answer);
		OPENSSL_cleanse(answer, strlen(answer));
		free(answer);
		if (res != MAILIMAP_NO_ERROR)
			goto out;
	}
	r = read_response(imap, &cond);
	if (r != MAILIMAP_NO_ERROR) {
		res = r;
		goto out;
	}
	if (cond != MAILIMAP_RESP_COND_STATE_OK) {
		res = MAILIMAP_ERROR_LOGIN;
		goto out;
	}
	imap->imap_state = MAILIMAP_STATE_AUTHENTICATED;
	res = MAILIMAP_NO_ERROR;
out:
	sasl_free(initial, ilen);
	if (b64 != NULL) {
		OPENSSL_cleanse(b64, strlen(b64));
		free(b64);
	}
	return res;
}

/* Whether the server offers AUTHENTICATE name (for sasl_choose). */
static bool offers_auth(const char *name, void *ctx)
{
	mailimap *imap = ctx;

	if (strcmp(name, "LOGIN") == 0)
		return !has_cap(imap, "LOGINDISABLED");   /* the command */
	return has_cap_of(imap, MAILIMAP_CAPABILITY_AUTH_TYPE, name);
}

/* The outcome of a login attempt the server answered, as a status with
 * *error_r. */
static enum backend_status login_failed(struct imap_session *s, int r,
	const char **error_r)
{
	const struct mail_endpoint *ep = s->ep;
	enum backend_status st = imap_session_status(s, r);

	if (st == BACKEND_AUTH || r == MAILIMAP_ERROR_PROTOCOL) {
		*error_r = errfmt("login failed for %s at %s: %s", ep->user,
			ep->host, imap_session_last_text(s));
		return BACKEND_AUTH;
	}
	if (imap_session_broken(s))
		*error_r = errfmt("login at %s failed: %s", s->label,
			stream_reason(s));
	else
		*error_r = errfmt("login failed for %s at %s: %s", ep->user,
			ep->host, imap_session_last_text(s));
	return st;
}

/* Logs in with an OAuth2 token from ep->token: a refused token is
 * reported to the source and retried once with the command's next
 * output (see src/token_source.h). */
static enum backend_status login_with_token(struct imap_session *s,
	const char **error_r)
{
	const struct mail_endpoint *ep = s->ep;
	bool sasl_ir = has_cap(s->imap, "SASL-IR");
	enum sasl_mech mech;
	int r = MAILIMAP_ERROR_LOGIN;

	if (!net_stream_is_tls(s->imap->imap_stream)) {
		*error_r = errfmt("%s: refusing to send an access token"
			" without TLS", s->label);
		return BACKEND_PROTOCOL;
	}
	mech = sasl_choose(ep->auth, true, offers_auth, s->imap, error_r);
	if (mech == SASL_NONE) {
		*error_r = errfmt("%s: %s", s->label, *error_r);
		return BACKEND_UNSUPPORTED;
	}
	for (int attempt = 0; attempt < 2; attempt++) {
		char *token = NULL;
		struct sasl_client c = { .mech = mech, .user = ep->user,
			.host = ep->host, .port = ep->port };

		if (!token_source_for_login(ep->token, attempt, ep->user,
				ep->host, imap_session_last_text(s), &token, error_r))
			return BACKEND_AUTH;
		c.secret = token;
		caps_forget(s->imap);
		r = auth_sasl(s, &c, sasl_ir);
		if (r == MAILIMAP_NO_ERROR)
			token_source_accepted(ep->token, token);
		else if (r == MAILIMAP_ERROR_LOGIN)
			token_source_refused(ep->token, token);
		secret_free(&token);
		if (r != MAILIMAP_ERROR_LOGIN)
			break;
		log_debug("imap %s: %s refused the token", s->label,
			sasl_name(mech));
	}
	if (r == MAILIMAP_NO_ERROR)
		return BACKEND_OK;
	return login_failed(s, r, error_r);
}

static enum backend_status session_login(struct imap_session *s,
	const char **error_r)
{
	const struct mail_endpoint *ep = s->ep;
	mailimap *imap = s->imap;
	bool plain = has_cap_of(imap, MAILIMAP_CAPABILITY_AUTH_TYPE, "PLAIN");
	bool disabled = has_cap(imap, "LOGINDISABLED");
	bool sasl_ir = has_cap(imap, "SASL-IR");
	bool ascii;
	int r;

	if (ep->token)
		return login_with_token(s, error_r);
	ascii = is_plain_ascii(ep->user) && is_plain_ascii(ep->password);
	if (ep->auth == SASL_ONLY_PLAIN)
		disabled = true;            /* AUTHENTICATE PLAIN only */
	else if (ep->auth == SASL_ONLY_LOGIN)
		plain = false;              /* the LOGIN command only */
	if (disabled && !plain) {
		*error_r = errfmt("server %s allows neither LOGIN nor"
			" AUTHENTICATE PLAIN", s->label);
		return BACKEND_UNSUPPORTED;
	}
	/* The tagged OK often carries the post-login capabilities; if it
	 * does not, the caller asks again. */
	caps_forget(imap);
	if ((!ascii || disabled) && plain) {
		struct sasl_client c = { .mech = SASL_PLAIN, .user = ep->user,
			.secret = ep->password };

		r = auth_sasl(s, &c, sasl_ir);
	} else {
		/* 8-bit bytes in a quoted string break RFC 3501 but most
		 * servers take them; there is nothing better to try. */
		if (!ascii)
			log_debug("imap %s: sending non-ASCII credentials with"
				" LOGIN", s->label);
		r = mailimap_login(imap, ep->user, ep->password);
	}
	if (r == MAILIMAP_NO_ERROR)
		return BACKEND_OK;
	return login_failed(s, r, error_r);
}

/* ------------------------------------------------------------------ */
/* The grammar of connecting (proto/mail_conn.h)                       */

static const char *guard_inspect(void *ctx, const char *data, size_t len)
{
	return imap_guard_feed(ctx, data, len);
}

/* Takes the stream and reads the greeting, checked before libetpan
 * parses it; *preauth_r tells PREAUTH. */
static enum backend_status grammar_greeting(void *ctx, mailstream *stream,
	bool *preauth_r, const char **error_r)
{
	struct imap_session *s = ctx;
	enum backend_status st;
	int r;

	/* From here on the stream belongs to s->imap, even on failure:
	 * mailimap_connect() sets the same pointer again. */
	s->imap->imap_stream = stream;
	imap_guard_init(&s->guard);
	net_stream_set_inspect(stream, guard_inspect, &s->guard);
	st = check_greeting(s, error_r);
	if (st != BACKEND_OK)
		return st;
	r = mailimap_connect(s->imap, stream);
	switch (r) {
	case MAILIMAP_NO_ERROR_AUTHENTICATED:
		*preauth_r = true;
		return BACKEND_OK;
	case MAILIMAP_NO_ERROR_NON_AUTHENTICATED:
		*preauth_r = false;
		return BACKEND_OK;
	case MAILIMAP_ERROR_STREAM:
		*error_r = errfmt("no greeting from %s: %s", s->label,
			stream_reason(s));
		return BACKEND_TEMP;
	case MAILIMAP_ERROR_DONT_ACCEPT_CONNECTION:
		*error_r = errfmt("server %s refused the connection: %s",
			s->label, imap_session_last_text(s));
		return BACKEND_TEMP;
	default:
		*error_r = errfmt("bad greeting from %s (not an IMAP server?)",
			s->label);
		return BACKEND_PROTOCOL;
	}
}

/* Capabilities, unless the greeting listed them; all afresh after TLS. */
static enum backend_status grammar_capabilities(void *ctx, bool after_tls,
	bool *starttls_r, const char **error_r)
{
	struct imap_session *s = ctx;
	enum backend_status st = session_capability(s, after_tls, error_r);

	*starttls_r = st == BACKEND_OK && has_cap(s->imap, "STARTTLS");
	return st;
}

/* STARTTLS by hand, like CAPABILITY, so that the answer is checked before
 * libetpan parses it (mailimap_starttls does no more than this). */
static enum backend_status grammar_starttls(void *ctx, const char **error_r)
{
	struct imap_session *s = ctx;
	enum backend_status st;
	int cond;

	st = plain_command(s, "STARTTLS", &cond, error_r);
	if (st != BACKEND_OK)
		return st == BACKEND_TEMP ? st : BACKEND_PROTOCOL;
	if (cond != MAILIMAP_RESP_COND_STATE_OK) {
		*error_r = errfmt("server %s refused STARTTLS: %s; refusing to"
			" continue without TLS", s->label,
			imap_session_last_text(s));
		return BACKEND_PROTOCOL;
	}
	return BACKEND_OK;
}

static const struct mail_grammar imap_grammar = {
	.proto = MAIL_IMAP,
	/* The guard bounds what the server sends. */
	.line_max = 0,
	.greeting = grammar_greeting,
	.capabilities = grammar_capabilities,
	.starttls = grammar_starttls,
};

static void fill_caps(struct imap_session *s)
{
	mailimap *imap = s->imap;
	struct imap_caps *c = &s->caps;

	c->uidplus = has_cap(imap, "UIDPLUS");
	c->move = has_cap(imap, "MOVE");
	c->condstore = has_cap(imap, "CONDSTORE");
	c->qresync = has_cap(imap, "QRESYNC");
	c->idle = has_cap(imap, "IDLE");
	c->enable = has_cap(imap, "ENABLE");
	c->special_use = has_cap(imap, "SPECIAL-USE");
	c->literal_plus = has_cap(imap, "LITERAL+");
	c->literal_minus = has_cap(imap, "LITERAL-");
	c->esearch = has_cap(imap, "ESEARCH");
	c->namespace_ = has_cap(imap, "NAMESPACE");
}

static enum backend_status session_delimiter(struct imap_session *s,
	const char **error_r)
{
	clist *list = NULL;
	enum backend_status st;
	int r;

	r = imap_session_list(s, "", "", &list);
	if (r == MAILIMAP_ERROR_LIST) {
		log_debug("imap %s: LIST \"\" \"\" refused (%s); assuming a"
			" flat namespace", s->label,
			imap_session_last_text(s));
		s->delimiter = 0;
		return BACKEND_OK;
	}
	if (r != MAILIMAP_NO_ERROR) {
		st = imap_session_status(s, r);
		*error_r = errfmt("LIST at %s failed: %s", s->label,
			imap_session_broken(s) ? stream_reason(s) :
			imap_session_last_text(s));
		return st;
	}
	s->delimiter = 0;
	if (list != NULL && clist_begin(list) != NULL) {
		struct mailimap_mailbox_list *mb = clist_content(clist_begin(list));
		unsigned char d = (unsigned char)mb->mb_delimiter;

		/* Names are split at it; a control byte would end up in
		 * paths and commands. */
		if (d >= 0x20 && d < 0x7f)
			s->delimiter = (char)d;
		else if (d != 0)
			log_warn("imap %s: ignoring hierarchy delimiter 0x%02x",
				s->label, d);
	}
	if (list != NULL)
		mailimap_list_result_free(list);
	return BACKEND_OK;
}

/* ------------------------------------------------------------------ */
/* Open and close                                                      */

enum backend_status imap_session_open(const struct mail_endpoint *ep,
	struct imap_session **session_r, const char **error_r)
{
	struct imap_session *s;
	enum backend_status st;
	bool preauth = false;

	*session_r = NULL;
	/* Tokens were refused a moment ago: do not even connect. */
	if (ep->token != NULL && token_source_blocked(ep->token)) {
		*error_r = "authentication refused: re-authorize the token"
			" command";
		return BACKEND_AUTH;
	}

	s = calloc(1, sizeof(*s));
	if (s == NULL) {
		*error_r = "out of memory";
		return BACKEND_TEMP;
	}
	s->ep = ep;
	mail_conn_label(s->label, sizeof(s->label), ep->host, ep->port);
	s->imap = mailimap_new(0, NULL);
	if (s->imap == NULL) {
		*error_r = "out of memory";
		st = BACKEND_TEMP;
		goto out_close;
	}
	/* Only libetpan's own connect helpers read it; our stream enforces
	 * the timeout.  Set for anything else that may look. */
	mailimap_set_timeout(s->imap, ep->timeout_s > 0 ? ep->timeout_s : 0);
	if (log_debug_enabled())
		mailimap_set_logger(s->imap, session_logger, s);

	st = mail_conn_open(ep, &imap_grammar, s, s->label, &preauth,
		error_r);
	if (st != BACKEND_OK)
		goto out_close;

	if (!preauth) {
		st = session_login(s, error_r);
		if (st != BACKEND_OK)
			goto out_close;
	}
	/* Servers list more after LOGIN (session_login dropped the old
	 * list); Dovecot puts them in the tagged OK, saving a round trip. */
	st = session_capability(s, false, error_r);
	if (st != BACKEND_OK)
		goto out_close;

	if (!has_cap(s->imap, "IMAP4rev1") &&
	    !has_cap(s->imap, "IMAP4rev2")) {
		*error_r = errfmt("server %s does not speak IMAP4rev1",
			s->label);
		st = BACKEND_PROTOCOL;
		goto out_close;
	}
	fill_caps(s);

	st = session_delimiter(s, error_r);
	if (st != BACKEND_OK)
		goto out_close;

	imap_session_set_state(s, IMAP_AUTHENTICATED);
	log_debug("imap %s: session ready (%s, delimiter '%c')", s->label,
		net_stream_is_tls(s->imap->imap_stream) ? "TLS" : "plain text",
		s->delimiter != 0 ? s->delimiter : ' ');
	*session_r = s;
	return BACKEND_OK;

out_close:
	/* Never LOGOUT a session that did not open: it may stall again. */
	imap_session_set_state(s, IMAP_BROKEN);
	imap_session_close(&s);
	return st;
}

void imap_session_close(struct imap_session **session)
{
	struct imap_session *s = *session;
	mailimap *imap;

	if (s == NULL)
		return;
	*session = NULL;
	imap = s->imap;
	if (imap != NULL) {
		if (imap->imap_stream != NULL && !imap_session_broken(s) &&
		    imap->imap_state != MAILIMAP_STATE_DISCONNECTED) {
			int t = s->ep->timeout_s;

			if (t <= 0 || t > LOGOUT_TIMEOUT_S)
				t = LOGOUT_TIMEOUT_S;
			net_stream_set_timeout(imap->imap_stream, t);
			imap_session_set_state(s, IMAP_LOGOUT);
			mailimap_logout(imap);      /* closes the stream */
		}
		/* mailimap_free() would send LOGOUT on anything left. */
		if (imap->imap_stream != NULL) {
			mailstream_close(imap->imap_stream);
			imap->imap_stream = NULL;
		}
		mailimap_free(imap);
	}
	free(s->selected);
	free(s);
}
