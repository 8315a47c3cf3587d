/* Network streams for libetpan: TCP with deadlines, and TLS through OpenSSL.
 *
 * libetpan's own TLS (GnuTLS in Debian) verifies no certificates, so every
 * connection mailfs makes goes through this mailstream_low driver instead:
 * a plain socket that can be upgraded in place (STARTTLS) or that starts
 * with TLS (implicit TLS).  TLS >= 1.2, SNI, peer verification against the
 * system store plus an optional CA file, and a host name (or IP) check.
 *
 * Two deadlines bound every exchange with the server, whichever passes
 * first:
 *  - inactivity: each read or write waits at most `timeout_s` seconds for
 *    progress;
 *  - the exchange deadline: an exchange begins when the client starts
 *    sending (the first write after anything was read) or when the
 *    connection is made, and ends when the next one begins.  It may last
 *    at most NET_EXCHANGE_TIMEOUTS x timeout_s, plus one second for every
 *    NET_EXCHANGE_MIN_RATE bytes moved in either direction during it, so
 *    a large answer arriving at a sane rate is never cut, but a server
 *    that trickles a byte now and then cannot hold a command open for
 *    longer than that.  With the default timeout of 30 s that is 2
 *    minutes plus 256 s per MiB: anything steadier than 4 KiB/s finishes,
 *    a trickle fails after about 2 minutes.  Only waits fail on it: bytes
 *    already received are still handed over.  Time spent in
 *    net_stream_wait_readable() (IDLE) is not part of any exchange.
 * Past either deadline the read or write fails like any I/O error and the
 * stream is unusable (the caller drops the session).  Every command of
 * IMAP, POP3 and SMTP is a write followed by reads, so the rule needs no
 * help from the protocol code; an APPEND literal or an SMTP message body
 * sent after the server's go-ahead is an exchange of its own.
 */
#ifndef MAILFS_NET_STREAM_H
#define MAILFS_NET_STREAM_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <libetpan/libetpan.h>
#include <openssl/ssl.h>

/* The exchange deadline (above): timeout_s times this ... */
#define NET_EXCHANGE_TIMEOUTS 4
/* ... plus one second per this many bytes sent or received. */
#define NET_EXCHANGE_MIN_RATE 4096

enum net_failure {
	NET_OK = 0,
	NET_CONNECT,   /* DNS, refused, unreachable, connect timeout */
	NET_TLS,       /* handshake failed, certificate untrusted or wrong host */
	NET_IO,        /* read/write failed or timed out */
};

/* A TLS client context: verification on, TLS >= 1.2, system default trust
 * store plus ca_file (PEM, may be NULL).  Returns NULL with *error_r set.
 * The caller owns the result (SSL_CTX_free). */
SSL_CTX *net_tls_context_new(const char *ca_file, const char **error_r);

/* Connects to host:port (name or literal IPv4/IPv6) within timeout_s and
 * returns a mailstream over a plain socket, or, when ctx is non-NULL, over
 * TLS after a verified handshake (implicit TLS).  Returns NULL with
 * *failure_r and *error_r set, e.g.
 *   "cannot connect to host:993: Connection refused"
 *   "TLS certificate not trusted (host:993): self-signed certificate"
 *   "TLS certificate does not match host name 'host'"
 * The caller owns the stream (mailstream_close closes the socket).
 * timeout_s <= 0 means no deadline.
 *
 * A read that returns nothing within the timeout, end of file, or any
 * error fails with -1 (libetpan: MAILIMAP_ERROR_STREAM) and leaves the
 * stream dead: every later read or write fails at once.  End of file is
 * reported as -1, never 0, because libetpan's literal reader loops on 0.
 *
 * mailstream_cancel(stream) may be called from another thread: it shuts
 * the socket down so a blocked read or write fails promptly.  The stream
 * must still be closed by its owner, and must not be closed while another
 * thread may cancel it.  mailstream_wait_idle() does not work on these
 * streams (no libetpan cancel object); use net_stream_wait_readable(). */
mailstream *net_stream_open(const char *host, uint16_t port, SSL_CTX *ctx,
	int timeout_s, enum net_failure *failure_r, const char **error_r);

/* Upgrades a plain stream made by net_stream_open to TLS in place
 * (STARTTLS), verifying the peer as above.  Fails (NET_TLS) if the stream
 * still holds unread bytes the server sent before the handshake: accepting
 * them would let an attacker inject responses.  Returns 0 or -1 with
 * *error_r set. */
int net_stream_starttls(mailstream *stream, SSL_CTX *ctx, const char *host,
	const char **error_r);

/* True once the stream runs over TLS. */
bool net_stream_is_tls(mailstream *stream);

/* Something that checks what a server sends: called with every chunk
 * read, in order, before it is handed to anyone; returns NULL to let it
 * through, else a static string saying why not. */
typedef const char *net_inspect_fn(void *ctx, const char *data, size_t len);

/* Installs (or with NULL removes) the stream's inspector.  A refused
 * chunk fails the read like an I/O error, with "refused answer from
 * HOST: WHY" as the stream's last error; the stream is then dead.  ctx is
 * borrowed and must outlive the stream or the next call. */
void net_stream_set_inspect(mailstream *stream, net_inspect_fn *inspect,
	void *ctx);

/* True when the stream is connected to a loopback address (127.0.0.0/8,
 * ::1): the only peers a credential may go to without TLS. */
bool net_stream_peer_is_loopback(mailstream *stream);

/* Bounds every line the server sends from now on to max bytes with its
 * line end (0: no bound), for answers read by libetpan's line readers,
 * which grow one buffer without limit.  A longer line fails the read like
 * a refused chunk (see net_stream_set_inspect), at the read that carries
 * its byte max + 1: memory stays bounded. */
void net_stream_set_line_max(mailstream *stream, size_t max);

/* Why the stream failed ("connection closed by host:993", "host:993 did
 * not answer within 30 s", ...), or "" while it works.  Points into the
 * stream; valid until it is closed. */
const char *net_stream_last_error(mailstream *stream);

/* Changes the timeout of an open stream (<= 0: none); the exchange
 * deadline follows it, for the exchange under way too. */
void net_stream_set_timeout(mailstream *stream, int timeout_s);

/* Reads from the server until the stream's read buffer holds a whole line
 * starting at offset `from` of the buffered bytes (through its '\n'),
 * consuming nothing: libetpan reads the same bytes next.  For checking
 * what a server sends before libetpan parses it.  At most max bytes (and
 * never more than the buffer's size) are buffered.  Returns the line's
 * length with *line_r pointing at it in the stream's buffer (valid until
 * the next read or peek), 0 when the limit is reached without a line end,
 * or -1 when the stream failed (net_stream_last_error says why). */
ssize_t net_stream_peek_line(mailstream *stream, size_t from, size_t max,
	const char **line_r);

/* Waits up to timeout_ms (-1: forever) until the stream has something to
 * read, counting bytes already buffered by libetpan or OpenSSL (which
 * poll() on the socket cannot see), or until wake_fd (ignored if < 0)
 * becomes readable.  For IDLE.  Returns 1 readable (data, EOF or error:
 * the next read tells which), 2 woken by wake_fd, 0 timed out, -1 failed
 * or dead stream.  Neither deadline applies to this wait; a return of 1
 * starts a new exchange (the server spoke unasked). */
int net_stream_wait_readable(mailstream *stream, int timeout_ms, int wake_fd);

/* "host:port", or "[v6addr]:port", for messages.  Uses errfmt(). */
const char *net_hostport(const char *host, uint16_t port);

#endif
