/* Network streams for libetpan: TCP with deadlines, and TLS through OpenSSL.
 *
 * libetpan's own TLS (GnuTLS in Debian) verifies no certificates, so every
 * connection mailfs makes goes through this mailstream_low driver instead:
 * a plain socket that can be upgraded in place (STARTTLS) or that starts
 * with TLS (implicit TLS).  TLS >= 1.2, SNI, peer verification against the
 * system store plus an optional CA file, and a host name (or IP) check.
 *
 * Every read and write waits at most `timeout_s` seconds for progress; past
 * that it fails and the stream is unusable (the caller drops the session).
 */
#ifndef MAILFS_NET_STREAM_H
#define MAILFS_NET_STREAM_H

#include <stdbool.h>
#include <stdint.h>
#include <libetpan/libetpan.h>
#include <openssl/ssl.h>

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

/* Why the stream failed ("connection closed by host:993", "host:993 did
 * not answer within 30 s", ...), or "" while it works.  Points into the
 * stream; valid until it is closed. */
const char *net_stream_last_error(mailstream *stream);

/* Changes the per-operation timeout of an open stream (<= 0: none). */
void net_stream_set_timeout(mailstream *stream, int timeout_s);

/* Waits up to timeout_ms (-1: forever) until the stream has something to
 * read, counting bytes already buffered by libetpan or OpenSSL (which
 * poll() on the socket cannot see), or until wake_fd (ignored if < 0)
 * becomes readable.  For IDLE.  Returns 1 readable (data, EOF or error:
 * the next read tells which), 2 woken by wake_fd, 0 timed out, -1 failed
 * or dead stream. */
int net_stream_wait_readable(mailstream *stream, int timeout_ms, int wake_fd);

/* "host:port", or "[v6addr]:port", for messages.  Uses errfmt(). */
const char *net_hostport(const char *host, uint16_t port);

#endif
