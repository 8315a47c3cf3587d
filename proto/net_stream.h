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
 * *failure_r and *error_r set (e.g. "connection refused by host:port",
 * "certificate verify failed: self-signed certificate in chain",
 * "certificate does not match host name 'x'").  The caller owns the stream
 * (mailstream_close closes the socket). */
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

#endif
