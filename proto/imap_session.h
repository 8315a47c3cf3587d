/* One authenticated IMAP session: connect, TLS, capabilities, login.
 *
 * A session wraps a libetpan mailimap.  It is not thread-safe: one thread
 * at a time (the pool in imap_pool.h hands sessions out).
 */
#ifndef MAILFS_IMAP_SESSION_H
#define MAILFS_IMAP_SESSION_H

#include <stdbool.h>
#include <stdint.h>
#include <libetpan/libetpan.h>
#include <openssl/ssl.h>

#include "proto/imap_guard.h"
#include "proto/mail_conn.h"
#include "proto/sasl.h"
#include "src/backend.h"
#include "src/token_source.h"

/* Capabilities that change what we send. */
struct imap_caps {
	bool uidplus, move, condstore, qresync, idle, enable, special_use,
	     literal_plus, literal_minus, esearch, namespace_;
};

/* Where a session is.  Every change goes through imap_session_set_state()
 * (logged at debug level); imap_session_select() and
 * imap_session_unselect() move between AUTHENTICATED and SELECTED.
 * BROKEN is final: a network error happened, or client and server no
 * longer agree on where they are; the session is not reused. */
enum imap_state {
	IMAP_CONNECTING,        /* greeting, TLS, login */
	IMAP_AUTHENTICATED,     /* no folder selected */
	IMAP_SELECTED,          /* `selected` is open */
	IMAP_LOGOUT,
	IMAP_BROKEN,
};

struct imap_session {
	mailimap *imap;         /* owned */
	struct imap_caps caps;  /* read after TLS and again after LOGIN */
	char delimiter;         /* from LIST "" "", 0 if flat/unknown */
	enum imap_state state;
	/* The selected folder, written only by imap_session_select() and
	 * imap_session_unselect(): its raw name (owned) or NULL, whether it
	 * was opened read-write (SELECT) rather than EXAMINEd, its
	 * UIDVALIDITY, and the UIDs it has heard of: all below
	 * selected_known (see imap_session_know_uid). */
	char *selected;
	bool selected_rw;
	uint32_t selected_uidvalidity;
	uint32_t selected_known;
	const struct mail_endpoint *ep;  /* borrowed from imap_session_open */
	char text[256];         /* imap_session_last_text(), sanitised */
	char label[280];        /* "host:port" for log lines */
	struct imap_guard guard;  /* follows everything the server sends */
};

/* Connects, establishes TLS as the endpoint asks (refusing STARTTLS that is
 * not offered or fails, refusing PREAUTH when STARTTLS is required), reads
 * capabilities after TLS, logs in, re-reads capabilities and the hierarchy
 * delimiter.  The greeting, and the answers to CAPABILITY and STARTTLS
 * while the stream is not TLS, are checked before libetpan parses them:
 * a greeting other than "* OK", "* PREAUTH" or "* BYE", a NUL byte, or a
 * response code libetpan 1.9.4 mishandles (PERMANENTFLAGS, BADCHARSET,
 * lists, quoted strings or literals in a code; see imap_session.c) fails
 * the connect.  Returns BACKEND_OK with *session_r owned by the caller, or:
 * BACKEND_CONNECT (unreachable), BACKEND_TLS (handshake/certificate),
 * BACKEND_AUTH (login refused), BACKEND_PROTOCOL (no STARTTLS, no IMAP4rev1,
 * bad greeting or refused answer before TLS), BACKEND_TEMP (timeout,
 * connection lost, BYE greeting), each with a one-line *error_r naming the
 * cause and the server. */
enum backend_status imap_session_open(const struct mail_endpoint *ep,
	struct imap_session **session_r, const char **error_r);

/* Moves s to state (see enum imap_state); nothing leaves BROKEN. */
void imap_session_set_state(struct imap_session *s, enum imap_state state);

/* True once the session is BROKEN. */
bool imap_session_broken(const struct imap_session *s);

/* Opens folder: SELECT when rw, else EXAMINE (with CONDSTORE when the
 * server has it and modseq_r is not NULL: *modseq_r is then its
 * HIGHESTMODSEQ, else 0).  Unless force, a folder already open (for
 * writing, when rw) is kept without a command.  Returns libetpan's code
 * (map it with imap_session_status); on failure no folder is selected. */
int imap_session_select(struct imap_session *s, const char *folder,
	bool rw, bool force, uint64_t *modseq_r);

/* Makes sure the session has heard of uid in the selected folder, if it
 * is there: a session learns of messages other sessions add only when
 * the server tells it, and until then a command naming such a UID does
 * nothing and still answers OK.  For a UID above those it knows, a NOOP
 * lets the server tell.  Returns libetpan's code. */
int imap_session_know_uid(struct imap_session *s, uint32_t uid);

/* Leaves the selected folder, if any, without expunging: never CLOSE,
 * which expunges every \Deleted message; EXAMINE of INBOX deselects
 * without expunging (RFC 3501).  Afterwards no folder counts as
 * selected, whatever the EXAMINE said. */
void imap_session_unselect(struct imap_session *s);

/* Logs out (best effort, bounded by the timeout) unless broken, closes,
 * frees, and sets *session to NULL. */
void imap_session_close(struct imap_session **session);

/* Maps a libetpan MAILIMAP_ERROR_* code to a status and marks the session
 * broken when the connection can no longer be trusted (stream, parse,
 * protocol and state errors: BACKEND_TEMP or BACKEND_PROTOCOL).  A NO is
 * refined by its RFC 5530 response code (NONEXISTENT/TRYCREATE ->
 * NOT_FOUND, ALREADYEXISTS -> EXISTS, UNAVAILABLE/INUSE/LIMIT -> TEMP,
 * HASCHILDREN -> NOT_EMPTY), else BACKEND_REFUSED; a failed SELECT,
 * EXAMINE or STATUS defaults to BACKEND_NOT_FOUND.  A failed SELECT or
 * EXAMINE leaves no folder selected, so it also clears s->selected.
 * libetpan reports a tagged BAD as MAILIMAP_ERROR_PROTOCOL, the same code
 * as a response with the wrong tag, so a BAD breaks the session too. */
enum backend_status imap_session_status(struct imap_session *s, int r);

/* For a command sent by hand that waits for the server's go-ahead (APPEND
 * with a synchronizing literal, IDLE), once it is flushed: reads the
 * answer ahead, one line at a time, before libetpan sees it.
 * mailimap_append() and mailimap_idle() would parse a continuation
 * request without a parser context, and crash on some response codes
 * ("+ [BADCHARSET (x)] go"); here the "+" line is checked like the
 * greeting (see imap_session_open) and consumed unparsed.  Untagged
 * responses before it are dropped (*untagged_r, which may be NULL, says
 * whether there were any).  Returns:
 *  - BACKEND_OK, *go_r true: the continuation request was consumed; send
 *    what follows;
 *  - BACKEND_OK, *go_r false: the tagged answer came instead (the server
 *    refused the command), left for mailimap_read_line() and
 *    mailimap_parse_response();
 *  - BACKEND_PROTOCOL (a refused continuation request, a literal or more
 *    than 1 MiB of untagged data before it) or BACKEND_TEMP (the stream
 *    failed), with the session broken and a one-line *error_r naming
 *    `what` (the command), the server and the cause. */
enum backend_status imap_session_continuation(struct imap_session *s,
	const char *what, bool *go_r, bool *untagged_r, const char **error_r);

/* libetpan's commands that hand back a result disagree on who owns it
 * when the server does not answer OK (see the table in imap_session.c;
 * on a NO without data, mailimap_uid_fetch() frees the list it has
 * already stored in *result).  Every such call mailfs makes goes through
 * one of these, with one contract: they return libetpan's code; on
 * MAILIMAP_NO_ERROR *result_r is the caller's (release with
 * mailimap_fetch_list_free() or mailimap_list_result_free()), on any
 * other code *result_r is NULL and nothing is left to free.  A NO that
 * comes with data still counts as MAILIMAP_NO_ERROR for a FETCH, as in
 * libetpan: the caller checks the answers it needed are there. */
int imap_session_uid_fetch(struct imap_session *s, struct mailimap_set *set,
	struct mailimap_fetch_type *ft, clist **result_r);
int imap_session_list(struct imap_session *s, const char *reference,
	const char *pattern, clist **result_r);

/* The server's text from the last tagged response, with its response
 * code ("[AUTHENTICATIONFAILED] Authentication failed."), control
 * characters replaced and cut to fit, or "" if none.  Meaningful only
 * after a command the server answered (not after a stream error, where
 * libetpan still holds the previous command's text).  Points into the
 * session; valid until its next command. */
const char *imap_session_last_text(struct imap_session *s);

#endif
