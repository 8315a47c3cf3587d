/* Network streams for libetpan: TCP with deadlines, TLS through OpenSSL.
 *
 * The socket is non-blocking from connect() on; every wait is a poll()
 * bounded by the stream's timeout and by the exchange deadline (see
 * net_stream.h).  Once an operation fails the stream is marked dead and
 * every later read or write fails at once, so that the LOGOUT libetpan
 * sends from mailimap_free() cannot stall on a stream we already gave up
 * on.
 *
 * TLS goes through a small BIO of our own that uses send(MSG_NOSIGNAL):
 * OpenSSL's socket BIO uses write(), which raises SIGPIPE when the peer has
 * gone away.
 */
#include "proto/net_stream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "src/errfmt.h"

/* libetpan's read and write buffers (each); large enough for a TLS record. */
#define NET_STREAM_BUFFER_SIZE (64 * 1024)

/* SSL_shutdown() at close may wait this long for the socket to drain. */
#define NET_SHUTDOWN_WAIT_MS 200

struct net_conn {
	int fd;
	SSL *ssl;               /* NULL while plain */
	int timeout_ms;         /* -1: no deadline */
	/* The exchange under way: when it began and the bytes moved since;
	 * the next write after a read begins another one. */
	int64_t exchange_start;
	uint64_t exchange_bytes;
	bool read_since_write;
	bool dead;              /* an operation failed: refuse all others */
	atomic_bool cancelled;  /* mailstream_cancel() was called */
	uint16_t port;
	char host[256];
	char label[264];        /* "host:port" or "[v6]:port" */
	char error[320];        /* why the stream died, "" while alive */
	/* Sees every chunk read before it is handed over (borrowed). */
	net_inspect_fn *inspect;
	void *inspect_ctx;
	size_t line_max;        /* net_stream_set_line_max; 0: none */
	size_t line_len;        /* bytes read since the last '\n' */
};

/* ------------------------------------------------------------------ */
/* Helpers                                                             */

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds left until deadline (-1 = none), for poll(). */
static int ms_left(int64_t deadline)
{
	int64_t left;

	if (deadline < 0)
		return -1;
	left = deadline - now_ms();
	if (left <= 0)
		return 0;
	return left > INT_MAX ? INT_MAX : (int)left;
}

static int64_t deadline_after(int timeout_ms)
{
	return timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
}

/* The earlier of two deadlines (-1 = none). */
static int64_t earlier(int64_t a, int64_t b)
{
	if (a < 0)
		return b;
	if (b < 0)
		return a;
	return a < b ? a : b;
}

static bool is_ip_literal(const char *host)
{
	unsigned char buf[sizeof(struct in6_addr)];

	return inet_pton(AF_INET, host, buf) == 1 ||
	       inet_pton(AF_INET6, host, buf) == 1;
}

const char *net_hostport(const char *host, uint16_t port)
{
	if (strchr(host, ':') != NULL)
		return errfmt("[%s]:%u", host, port);
	return errfmt("%s:%u", host, port);
}

/* Waits until fd is ready for `events` or the deadline passes.
 * Returns 1 ready, 0 timed out, -1 error (errno set). */
static int wait_fd(int fd, short events, int64_t deadline)
{
	struct pollfd pfd = { .fd = fd, .events = events };
	int r;

	for (;;) {
		r = poll(&pfd, 1, ms_left(deadline));
		if (r > 0)
			return 1;   /* POLLERR/POLLHUP: the next call reports it */
		if (r == 0)
			return 0;
		if (errno != EINTR)
			return -1;
	}
}

/* OpenSSL's reason for the last error, or `fallback`; static text. */
static const char *ssl_reason(const char *fallback)
{
	unsigned long e = ERR_peek_last_error();
	const char *reason = e != 0 ? ERR_reason_error_string(e) : NULL;

	return reason != NULL ? reason : fallback;
}

/* OpenSSL 3 reports EOF without close_notify as a protocol error. */
static bool ssl_unexpected_eof(void)
{
#ifdef SSL_R_UNEXPECTED_EOF_WHILE_READING
	return ERR_GET_REASON(ERR_peek_last_error()) ==
		SSL_R_UNEXPECTED_EOF_WHILE_READING;
#else
	return false;
#endif
}

/* As ssl_reason(), with the error number when there is no text. */
static const char *ssl_error_text(const char *fallback)
{
	unsigned long e = ERR_peek_last_error();
	const char *reason;

	if (e == 0)
		return fallback;
	reason = ERR_reason_error_string(e);
	if (reason == NULL)
		return errfmt("OpenSSL error %lu", e);
	return reason;
}

static void conn_fail(struct net_conn *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Marks the stream dead and keeps the first cause.  Runs inside libetpan
 * I/O, so it formats into the connection, never through errfmt(): that
 * would recycle error strings the caller still holds. */
static void conn_fail(struct net_conn *c, const char *fmt, ...)
{
	va_list ap;

	c->dead = true;
	if (c->error[0] != '\0')
		return;
	va_start(ap, fmt);
	vsnprintf(c->error, sizeof(c->error), fmt, ap);
	va_end(ap);
}

static void conn_fail_timeout(struct net_conn *c)
{
	conn_fail(c, "%s did not answer within %d s", c->label,
		c->timeout_ms / 1000);
}

static void conn_fail_errno(struct net_conn *c, const char *what, int err)
{
	if (atomic_load(&c->cancelled))
		conn_fail(c, "connection to %s cancelled", c->label);
	else
		conn_fail(c, "%s %s: %s", what, c->label, strerror(err));
}

static void conn_fail_closed(struct net_conn *c)
{
	if (atomic_load(&c->cancelled))
		conn_fail(c, "connection to %s cancelled", c->label);
	else
		conn_fail(c, "connection closed by %s", c->label);
}

static void conn_set_host(struct net_conn *c, const char *host)
{
	snprintf(c->host, sizeof(c->host), "%s", host);
	if (strchr(host, ':') != NULL)
		snprintf(c->label, sizeof(c->label), "[%s]:%u", host, c->port);
	else
		snprintf(c->label, sizeof(c->label), "%s:%u", host, c->port);
}

static void exchange_begin(struct net_conn *c)
{
	c->exchange_start = now_ms();
	c->exchange_bytes = 0;
	c->read_since_write = false;
}

/* When the exchange under way runs out (-1 = never): NET_EXCHANGE_TIMEOUTS
 * timeouts, plus a second per NET_EXCHANGE_MIN_RATE bytes moved. */
static int64_t exchange_deadline(const struct net_conn *c)
{
	uint64_t allowance;

	if (c->timeout_ms < 0)
		return -1;
	allowance = (uint64_t)c->timeout_ms * NET_EXCHANGE_TIMEOUTS +
		c->exchange_bytes / NET_EXCHANGE_MIN_RATE * 1000;
	if (allowance > INT64_MAX / 2)
		return -1;
	return c->exchange_start + (int64_t)allowance;
}

static bool exchange_expired(const struct net_conn *c)
{
	int64_t d = exchange_deadline(c);

	return d >= 0 && now_ms() >= d;
}

static void conn_fail_slow(struct net_conn *c)
{
	conn_fail(c, "%s is too slow: %llu bytes in %lld s (at most %d s"
		" plus 1 s per %d KiB)", c->label,
		(unsigned long long)c->exchange_bytes,
		(long long)((now_ms() - c->exchange_start) / 1000),
		c->timeout_ms / 1000 * NET_EXCHANGE_TIMEOUTS,
		NET_EXCHANGE_MIN_RATE / 1024);
}

/* After a wait that ran out: which deadline it was. */
static void conn_fail_wait(struct net_conn *c)
{
	if (exchange_expired(c))
		conn_fail_slow(c);
	else
		conn_fail_timeout(c);
}

/* ------------------------------------------------------------------ */
/* A socket BIO that never raises SIGPIPE                              */

static BIO_METHOD *nosig_method;
static pthread_once_t nosig_once = PTHREAD_ONCE_INIT;

static int nosig_write(BIO *b, const char *buf, int len)
{
	int fd = (int)(intptr_t)BIO_get_data(b);
	ssize_t n;

	BIO_clear_retry_flags(b);
	n = send(fd, buf, (size_t)len, MSG_NOSIGNAL);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK ||
		      errno == EINTR))
		BIO_set_retry_write(b);
	return (int)n;
}

static int nosig_read(BIO *b, char *buf, int len)
{
	int fd = (int)(intptr_t)BIO_get_data(b);
	ssize_t n;

	BIO_clear_retry_flags(b);
	n = recv(fd, buf, (size_t)len, 0);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK ||
		      errno == EINTR))
		BIO_set_retry_read(b);
	return (int)n;
}

static int nosig_puts(BIO *b, const char *str)
{
	return nosig_write(b, str, (int)strlen(str));
}

static long nosig_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	switch (cmd) {
	case BIO_CTRL_FLUSH:
		return 1;
	case BIO_C_GET_FD:
		if (ptr != NULL)
			*(int *)ptr = (int)(intptr_t)BIO_get_data(b);
		return (int)(intptr_t)BIO_get_data(b);
	default:
		return 0;
	}
}

static int nosig_create(BIO *b)
{
	BIO_set_data(b, (void *)(intptr_t)-1);
	BIO_set_init(b, 1);
	return 1;
}

static int nosig_destroy(BIO *b)
{
	/* The fd belongs to struct net_conn. */
	return b != NULL;
}

static void nosig_method_init(void)
{
	BIO_METHOD *m;

	m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK |
		BIO_TYPE_DESCRIPTOR, "mailfs socket");
	if (m == NULL)
		return;
	if (!BIO_meth_set_write(m, nosig_write) ||
	    !BIO_meth_set_read(m, nosig_read) ||
	    !BIO_meth_set_puts(m, nosig_puts) ||
	    !BIO_meth_set_ctrl(m, nosig_ctrl) ||
	    !BIO_meth_set_create(m, nosig_create) ||
	    !BIO_meth_set_destroy(m, nosig_destroy)) {
		BIO_meth_free(m);
		return;
	}
	nosig_method = m;
}

static BIO *nosig_bio_new(int fd)
{
	BIO *b;

	pthread_once(&nosig_once, nosig_method_init);
	if (nosig_method == NULL)
		return NULL;
	b = BIO_new(nosig_method);
	if (b != NULL)
		BIO_set_data(b, (void *)(intptr_t)fd);
	return b;
}

/* ------------------------------------------------------------------ */
/* TLS                                                                 */

SSL_CTX *net_tls_context_new(const char *ca_file, const char **error_r)
{
	SSL_CTX *ctx;

	ERR_clear_error();
	ctx = SSL_CTX_new(TLS_client_method());
	if (ctx == NULL) {
		*error_r = errfmt("cannot create TLS context: %s",
			ssl_error_text("unknown error"));
		return NULL;
	}
	if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) {
		*error_r = errfmt("cannot require TLS 1.2: %s",
			ssl_error_text("unknown error"));
		goto out_free;
	}
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION |
		SSL_OP_NO_RENEGOTIATION);
	/* Our write loop retries SSL_write from the same pointer anyway;
	 * this keeps a future change there from turning into an error. */
	SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	/* A missing system store is not fatal when a CA file is given; the
	 * handshake reports untrusted certificates either way. */
	SSL_CTX_set_default_verify_paths(ctx);
	ERR_clear_error();
	if (ca_file != NULL && ca_file[0] != '\0') {
		/* OpenSSL says "system lib" for a missing file. */
		if (access(ca_file, R_OK) < 0) {
			*error_r = errfmt("cannot load CA file '%s': %s",
				ca_file, strerror(errno));
			goto out_free;
		}
		if (!SSL_CTX_load_verify_locations(ctx, ca_file, NULL)) {
			*error_r = errfmt("cannot load CA file '%s': %s",
				ca_file, ssl_error_text("no certificates found"));
			goto out_free;
		}
	}
	return ctx;

out_free:
	SSL_CTX_free(ctx);
	ERR_clear_error();
	return NULL;
}

/* Explains a failed handshake in one line. */
static const char *handshake_error(struct net_conn *c, int ssl_err,
	int saved_errno)
{
	long vr = SSL_get_verify_result(c->ssl);

	if (vr == X509_V_ERR_HOSTNAME_MISMATCH ||
	    vr == X509_V_ERR_IP_ADDRESS_MISMATCH)
		return errfmt("TLS certificate does not match host name '%s'",
			c->host);
	if (vr != X509_V_OK)
		return errfmt("TLS certificate not trusted (%s): %s", c->label,
			X509_verify_cert_error_string(vr));
	if (ssl_err == SSL_ERROR_SYSCALL && saved_errno != 0)
		return errfmt("TLS handshake with %s failed: %s", c->label,
			strerror(saved_errno));
	if (ssl_err == SSL_ERROR_SYSCALL || ssl_err == SSL_ERROR_ZERO_RETURN ||
	    ssl_unexpected_eof())
		return errfmt("TLS handshake with %s failed: connection closed"
			" by the server", c->label);
	return errfmt("TLS handshake with %s failed: %s", c->label,
		ssl_error_text("protocol error"));
}

/* Runs the client handshake on c->fd, bounded by the timeout as a whole.
 * On failure c->ssl is freed and *error_r says why. */
static int conn_handshake(struct net_conn *c, SSL_CTX *ctx,
	const char **error_r)
{
	int64_t deadline = deadline_after(c->timeout_ms);
	bool timed_out = false;
	BIO *bio;
	int r, err, saved_errno;

	ERR_clear_error();
	c->ssl = SSL_new(ctx);
	if (c->ssl == NULL) {
		*error_r = errfmt("cannot create TLS session: %s",
			ssl_error_text("out of memory"));
		return -1;
	}
	bio = nosig_bio_new(c->fd);
	if (bio == NULL) {
		*error_r = "cannot create TLS socket BIO";
		goto out_free_ssl;
	}
	SSL_set_bio(c->ssl, bio, bio);

	if (is_ip_literal(c->host)) {
		/* No SNI for addresses (RFC 6066); check the IP SAN. */
		if (!X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl),
			c->host)) {
			*error_r = errfmt("cannot verify TLS for address %s",
				c->host);
			goto out_free_ssl;
		}
	} else {
		SSL_set_hostflags(c->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		if (!SSL_set_tlsext_host_name(c->ssl, c->host) ||
		    !SSL_set1_host(c->ssl, c->host)) {
			*error_r = errfmt("cannot verify TLS for host name '%s'",
				c->host);
			goto out_free_ssl;
		}
	}

	for (;;) {
		ERR_clear_error();
		errno = 0;
		r = SSL_connect(c->ssl);
		if (r == 1)
			return 0;
		saved_errno = errno;
		err = SSL_get_error(c->ssl, r);
		if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
			r = wait_fd(c->fd, err == SSL_ERROR_WANT_READ ?
				POLLIN : POLLOUT, deadline);
			if (r > 0)
				continue;
			if (r == 0)
				*error_r = errfmt("TLS handshake with %s timed out"
					" after %d s", c->label,
					c->timeout_ms / 1000);
			else
				*error_r = errfmt("TLS handshake with %s failed: %s",
					c->label, strerror(errno));
			/* A silent or vanished server is a network failure,
			 * not a verdict on its certificate. */
			timed_out = true;
			goto out_free_ssl;
		}
		/* A connection closed or reset mid-handshake, with nothing
		 * wrong with the certificate, is a network failure too. */
		timed_out = SSL_get_verify_result(c->ssl) == X509_V_OK &&
			(err == SSL_ERROR_SYSCALL ||
			 err == SSL_ERROR_ZERO_RETURN || ssl_unexpected_eof());
		*error_r = handshake_error(c, err, saved_errno);
		goto out_free_ssl;
	}

out_free_ssl:
	SSL_free(c->ssl);   /* frees the BIO too */
	c->ssl = NULL;
	ERR_clear_error();  /* the message is made; leave no stale queue */
	return timed_out ? -2 : -1;
}

/* ------------------------------------------------------------------ */
/* The mailstream_low driver                                           */

/* Follows the line lengths in n bytes just read; false when one is
 * longer than the stream's bound. */
static bool lines_bounded(struct net_conn *c, const char *p, size_t n)
{
	const char *end = p + n, *nl;

	for (; (nl = memchr(p, '\n', (size_t)(end - p))) != NULL; p = nl + 1) {
		c->line_len += (size_t)(nl - p) + 1;
		if (c->line_max > 0 && c->line_len > c->line_max)
			return false;
		c->line_len = 0;
	}
	c->line_len += (size_t)(end - p);
	return c->line_max == 0 || c->line_len <= c->line_max;
}

/* Counts n bytes just read into the exchange; returns n. */
static ssize_t conn_got(struct net_conn *c, const void *buf, size_t n)
{
	c->exchange_bytes += n;
	c->read_since_write = true;
	if (!lines_bounded(c, buf, n)) {
		conn_fail(c, "refused answer from %s: a line longer than %zu"
			" bytes", c->label, c->line_max);
		return -1;
	}
	if (c->inspect != NULL) {
		const char *problem = c->inspect(c->inspect_ctx, buf, n);

		if (problem != NULL) {
			conn_fail(c, "refused answer from %s: %s", c->label,
				problem);
			return -1;
		}
	}
	return (ssize_t)n;
}

static ssize_t net_low_read(mailstream_low *low, void *buf, size_t len)
{
	struct net_conn *c = low->data;
	/* A read returns as soon as anything arrives, so one deadline per
	 * call also bounds a server that trickles partial TLS records. */
	int64_t deadline = deadline_after(c->timeout_ms);
	ssize_t n;
	int r, err;

	if (c->dead || atomic_load(&c->cancelled)) {
		conn_fail_closed(c);
		return -1;
	}
	if (len == 0)
		return 0;
	if (len > INT_MAX)
		len = INT_MAX;

	for (;;) {
		short events = POLLIN;

		if (c->ssl != NULL) {
			ERR_clear_error();
			errno = 0;
			r = SSL_read(c->ssl, buf, (int)len);
			if (r > 0)
				return conn_got(c, buf, (size_t)r);
			err = SSL_get_error(c->ssl, r);
			if (err == SSL_ERROR_WANT_WRITE) {
				events = POLLOUT;
			} else if (err == SSL_ERROR_ZERO_RETURN ||
				   (err == SSL_ERROR_SYSCALL && errno == 0) ||
				   ssl_unexpected_eof()) {
				/* 0 would spin libetpan's literal loop. */
				conn_fail_closed(c);
				return -1;
			} else if (err == SSL_ERROR_SYSCALL) {
				conn_fail_errno(c, "cannot read from", errno);
				return -1;
			} else if (err != SSL_ERROR_WANT_READ) {
				conn_fail(c, "TLS error from %s: %s", c->label,
					ssl_reason("protocol error"));
				return -1;
			}
		} else {
			n = recv(c->fd, buf, len, 0);
			if (n > 0)
				return conn_got(c, buf, (size_t)n);
			if (n == 0) {
				conn_fail_closed(c);
				return -1;
			}
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				conn_fail_errno(c, "cannot read from", errno);
				return -1;
			}
		}

		/* Nothing there: a wait, which the exchange bounds too. */
		if (exchange_expired(c)) {
			conn_fail_slow(c);
			return -1;
		}
		r = wait_fd(c->fd, events,
			earlier(deadline, exchange_deadline(c)));
		if (r == 0) {
			conn_fail_wait(c);
			return -1;
		}
		if (r < 0) {
			conn_fail_errno(c, "cannot wait for", errno);
			return -1;
		}
	}
}

static ssize_t net_low_write(mailstream_low *low, const void *buf, size_t len)
{
	struct net_conn *c = low->data;
	const char *p = buf;
	size_t done = 0;
	int64_t deadline = deadline_after(c->timeout_ms);
	ssize_t n;
	int r, err;

	if (c->dead || atomic_load(&c->cancelled)) {
		conn_fail_closed(c);
		return -1;
	}
	/* Sending after the server's answer: the next command. */
	if (c->read_since_write)
		exchange_begin(c);

	/* All or nothing: a large APPEND literal arrives here in one call,
	 * so the deadline restarts whenever bytes move (inactivity). */
	while (done < len) {
		size_t chunk = len - done;
		short events = POLLOUT;

		if (chunk > INT_MAX)
			chunk = INT_MAX;
		if (c->ssl != NULL) {
			ERR_clear_error();
			errno = 0;
			r = SSL_write(c->ssl, p + done, (int)chunk);
			if (r > 0) {
				done += (size_t)r;
				c->exchange_bytes += (size_t)r;
				deadline = deadline_after(c->timeout_ms);
				continue;
			}
			err = SSL_get_error(c->ssl, r);
			if (err == SSL_ERROR_WANT_READ) {
				events = POLLIN;
			} else if (err == SSL_ERROR_SYSCALL && errno != 0) {
				conn_fail_errno(c, "cannot write to", errno);
				return -1;
			} else if (err == SSL_ERROR_SYSCALL ||
				   err == SSL_ERROR_ZERO_RETURN) {
				conn_fail_closed(c);
				return -1;
			} else if (err != SSL_ERROR_WANT_WRITE) {
				conn_fail(c, "TLS error to %s: %s", c->label,
					ssl_reason("protocol error"));
				return -1;
			}
		} else {
			n = send(c->fd, p + done, chunk, MSG_NOSIGNAL);
			if (n > 0) {
				done += (size_t)n;
				c->exchange_bytes += (size_t)n;
				deadline = deadline_after(c->timeout_ms);
				continue;
			}
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
				conn_fail_errno(c, "cannot write to", errno);
				return -1;
			}
		}

		if (exchange_expired(c)) {
			conn_fail_slow(c);
			return -1;
		}
		r = wait_fd(c->fd, events,
			earlier(deadline, exchange_deadline(c)));
		if (r == 0) {
			conn_fail_wait(c);
			return -1;
		}
		if (r < 0) {
			conn_fail_errno(c, "cannot wait for", errno);
			return -1;
		}
	}
	return (ssize_t)done;
}

static int net_low_close(mailstream_low *low)
{
	struct net_conn *c = low->data;

	if (c->ssl != NULL) {
		/* Best effort close_notify: one non-blocking attempt plus a
		 * short wait if the socket buffer is full; never a read. */
		if (!c->dead && !atomic_load(&c->cancelled)) {
			ERR_clear_error();
			if (SSL_shutdown(c->ssl) < 0 &&
			    SSL_get_error(c->ssl, -1) == SSL_ERROR_WANT_WRITE &&
			    wait_fd(c->fd, POLLOUT,
				    deadline_after(NET_SHUTDOWN_WAIT_MS)) > 0)
				SSL_shutdown(c->ssl);
		}
		SSL_free(c->ssl);
		c->ssl = NULL;
	}
	if (c->fd >= 0) {
		close(c->fd);
		c->fd = -1;
	}
	c->dead = true;
	return 0;
}

static int net_low_get_fd(mailstream_low *low)
{
	struct net_conn *c = low->data;

	return c->fd;
}

static void net_low_free(mailstream_low *low)
{
	struct net_conn *c = low->data;

	if (c != NULL) {
		net_low_close(low);
		free(c);
	}
	low->data = NULL;
	free(low);
}

/* May run on another thread while a read or write waits: shutdown()
 * wakes the poll() and the stream fails from then on.  The fd itself
 * stays open until close. */
static void net_low_cancel(mailstream_low *low)
{
	struct net_conn *c = low->data;

	atomic_store(&c->cancelled, true);
	if (c->fd >= 0)
		shutdown(c->fd, SHUT_RDWR);
}

/* No libetpan cancel object: mailstream_wait_idle() then always fails,
 * use net_stream_wait_readable() instead. */
static struct mailstream_cancel *net_low_get_cancel(mailstream_low *low)
{
	return NULL;
}

static mailstream_low_driver net_driver = {
	.mailstream_read = net_low_read,
	.mailstream_write = net_low_write,
	.mailstream_close = net_low_close,
	.mailstream_get_fd = net_low_get_fd,
	.mailstream_free = net_low_free,
	.mailstream_cancel = net_low_cancel,
	.mailstream_get_cancel = net_low_get_cancel,
	.mailstream_get_certificate_chain = NULL,
	.mailstream_setup_idle = NULL,
	.mailstream_unsetup_idle = NULL,
	.mailstream_interrupt_idle = NULL,
};

static struct net_conn *stream_conn(mailstream *stream)
{
	mailstream_low *low;

	if (stream == NULL)
		return NULL;
	low = mailstream_get_low(stream);
	if (low == NULL || low->driver != &net_driver)
		return NULL;
	return low->data;
}

/* ------------------------------------------------------------------ */
/* Connecting                                                          */

/* Connects one address; returns the fd or -1 with errno set (ETIMEDOUT
 * when the deadline passed). */
static int connect_addr(const struct addrinfo *ai, int64_t deadline)
{
	int fd, r, soerr = 0;
	socklen_t len = sizeof(soerr);

	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK |
		SOCK_CLOEXEC, ai->ai_protocol);
	if (fd < 0)
		return -1;
	do {
		r = connect(fd, ai->ai_addr, ai->ai_addrlen);
	} while (r < 0 && errno == EINTR);
	if (r == 0)
		return fd;
	if (errno != EINPROGRESS)
		goto out_close;

	r = wait_fd(fd, POLLOUT, deadline);
	if (r == 0)
		errno = ETIMEDOUT;
	if (r <= 0)
		goto out_close;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
		goto out_close;
	if (soerr != 0) {
		errno = soerr;
		goto out_close;
	}
	return fd;

out_close:
	r = errno;
	close(fd);
	errno = r;
	return -1;
}

static int tcp_connect(const char *host, uint16_t port, int timeout_ms,
	const char **error_r)
{
	struct addrinfo hints = {
		.ai_family = AF_UNSPEC,
		.ai_socktype = SOCK_STREAM,
		.ai_flags = AI_NUMERICSERV,
	};
	struct addrinfo *res, *ai;
	char portstr[8];
	int64_t deadline = deadline_after(timeout_ms);
	int fd = -1, r, last_errno = ECONNREFUSED, one = 1;

	snprintf(portstr, sizeof(portstr), "%u", port);
	r = getaddrinfo(host, portstr, &hints, &res);
	if (r != 0) {
		*error_r = errfmt("cannot resolve %s: %s", host,
			r == EAI_SYSTEM ? strerror(errno) : gai_strerror(r));
		return -1;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		int64_t attempt = deadline;

		/* Leave later addresses a share of the time when the first
		 * one (often an unroutable IPv6) just drops packets. */
		if (ai->ai_next != NULL && deadline >= 0)
			attempt = now_ms() + ms_left(deadline) / 2;
		fd = connect_addr(ai, attempt);
		if (fd >= 0)
			break;
		last_errno = errno;
		if (deadline >= 0 && ms_left(deadline) == 0)
			break;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		if (last_errno == ETIMEDOUT)
			*error_r = errfmt("cannot connect to %s: timed out after"
				" %d s", net_hostport(host, port),
				timeout_ms / 1000);
		else
			*error_r = errfmt("cannot connect to %s: %s",
				net_hostport(host, port), strerror(last_errno));
		return -1;
	}
	/* Commands are small and answered before the next one. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	/* Pooled sessions sit idle; let the kernel notice dead peers. */
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	return fd;
}

mailstream *net_stream_open(const char *host, uint16_t port, SSL_CTX *ctx,
	int timeout_s, enum net_failure *failure_r, const char **error_r)
{
	struct net_conn *c;
	mailstream_low *low;
	mailstream *stream;
	int r;

	if (host == NULL || host[0] == '\0' ||
	    strlen(host) >= sizeof(c->host)) {
		*failure_r = NET_CONNECT;
		*error_r = "invalid host name";
		return NULL;
	}
	c = calloc(1, sizeof(*c));
	if (c == NULL) {
		*failure_r = NET_CONNECT;
		*error_r = "out of memory";
		return NULL;
	}
	c->port = port;
	conn_set_host(c, host);
	c->timeout_ms = timeout_s > 0 ? timeout_s * 1000 : -1;
	atomic_init(&c->cancelled, false);

	c->fd = tcp_connect(host, port, c->timeout_ms, error_r);
	if (c->fd < 0) {
		*failure_r = NET_CONNECT;
		goto out_free_conn;
	}
	if (ctx != NULL && (r = conn_handshake(c, ctx, error_r)) < 0) {
		*failure_r = r == -2 ? NET_IO : NET_TLS;
		goto out_close_fd;
	}

	/* The greeting is the first exchange. */
	exchange_begin(c);
	low = mailstream_low_new(c, &net_driver);
	if (low == NULL)
		goto out_nomem;
	stream = mailstream_new(low, NET_STREAM_BUFFER_SIZE);
	if (stream == NULL) {
		/* The low owns c now. */
		mailstream_low_close(low);
		mailstream_low_free(low);
		*failure_r = NET_IO;
		*error_r = "out of memory";
		return NULL;
	}
	*failure_r = NET_OK;
	return stream;

out_nomem:
	*failure_r = NET_IO;
	*error_r = "out of memory";
	if (c->ssl != NULL)
		SSL_free(c->ssl);
out_close_fd:
	close(c->fd);
out_free_conn:
	free(c);
	return NULL;
}

int net_stream_starttls(mailstream *stream, SSL_CTX *ctx, const char *host,
	const char **error_r)
{
	struct net_conn *c = stream_conn(stream);

	if (c == NULL || ctx == NULL) {
		*error_r = "STARTTLS on a stream that cannot do TLS";
		return -1;
	}
	if (c->ssl != NULL) {
		*error_r = "STARTTLS on a stream that is already TLS";
		return -1;
	}
	if (c->dead) {
		*error_r = c->error[0] != '\0' ? errfmt("%s", c->error) :
			"STARTTLS on a failed stream";
		return -1;
	}
	/* Anything the server sent after its STARTTLS reply came in clear
	 * and would be read as if it arrived over TLS. */
	if (stream->read_buffer_len != 0) {
		c->dead = true;
		*error_r = errfmt("server %s sent data before the TLS handshake"
			" (possible injection attack)",
			c->label);
		return -1;
	}
	if (stream->write_buffer_len != 0) {
		*error_r = "STARTTLS with unsent data";
		return -1;
	}
	if (host != NULL && host[0] != '\0' && strlen(host) < sizeof(c->host))
		conn_set_host(c, host);
	if (conn_handshake(c, ctx, error_r) < 0) {
		c->dead = true;
		return -1;
	}
	return 0;
}

bool net_stream_is_tls(mailstream *stream)
{
	struct net_conn *c = stream_conn(stream);

	return c != NULL && c->ssl != NULL;
}

const char *net_stream_last_error(mailstream *stream)
{
	struct net_conn *c = stream_conn(stream);

	if (c == NULL)
		return "";
	return c->error;
}

void net_stream_set_inspect(mailstream *stream, net_inspect_fn *inspect,
	void *ctx)
{
	struct net_conn *c = stream_conn(stream);

	if (c == NULL)
		return;
	c->inspect = inspect;
	c->inspect_ctx = ctx;
}

bool net_stream_peer_is_loopback(mailstream *stream)
{
	struct net_conn *c = stream_conn(stream);
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (c == NULL || c->fd < 0 ||
	    getpeername(c->fd, (struct sockaddr *)&ss, &len) < 0)
		return false;
	if (ss.ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;

		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (ss.ss_family == AF_INET6) {
		const struct in6_addr *a =
			&((const struct sockaddr_in6 *)&ss)->sin6_addr;

		return IN6_IS_ADDR_LOOPBACK(a) ||
			(IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	return false;
}

void net_stream_set_line_max(mailstream *stream, size_t max)
{
	struct net_conn *c = stream_conn(stream);

	if (c != NULL)
		c->line_max = max;
}

void net_stream_set_timeout(mailstream *stream, int timeout_s)
{
	struct net_conn *c = stream_conn(stream);

	if (c != NULL)
		c->timeout_ms = timeout_s > 0 ? timeout_s * 1000 : -1;
}

int net_stream_wait_readable(mailstream *stream, int timeout_ms, int wake_fd)
{
	struct net_conn *c = stream_conn(stream);
	struct pollfd pfd[2];
	int64_t deadline;
	int r;

	if (c == NULL || c->dead || atomic_load(&c->cancelled))
		return -1;
	/* Bytes already past the socket would never wake poll(). */
	if (stream->read_buffer_len > 0 ||
	    (c->ssl != NULL && SSL_has_pending(c->ssl))) {
		exchange_begin(c);
		return 1;
	}

	pfd[0] = (struct pollfd){ .fd = c->fd, .events = POLLIN };
	pfd[1] = (struct pollfd){ .fd = wake_fd, .events = POLLIN };
	deadline = deadline_after(timeout_ms);
	for (;;) {
		r = poll(pfd, wake_fd >= 0 ? 2 : 1, ms_left(deadline));
		if (r > 0)
			break;
		if (r == 0)
			return 0;
		if (errno != EINTR)
			return -1;
	}
	if (wake_fd >= 0 && (pfd[1].revents & (POLLIN | POLLHUP | POLLERR)))
		return 2;
	exchange_begin(c);
	return 1;   /* data, EOF or error: the next read tells which */
}

ssize_t net_stream_peek_line(mailstream *stream, size_t from, size_t max,
	const char **line_r)
{
	mailstream_low *low;
	const char *nl;
	ssize_t n;

	if (stream == NULL || (low = mailstream_get_low(stream)) == NULL)
		return -1;
	if (max > stream->buffer_max_size)
		max = stream->buffer_max_size;
	for (;;) {
		if (from < stream->read_buffer_len) {
			nl = memchr(stream->read_buffer + from, '\n',
				stream->read_buffer_len - from);
			if (nl != NULL) {
				*line_r = stream->read_buffer + from;
				return nl - *line_r + 1;
			}
		}
		if (stream->read_buffer_len >= max)
			return 0;
		/* Through the low layer: its logger sees the bytes too. */
		n = mailstream_low_read(low,
			stream->read_buffer + stream->read_buffer_len,
			max - stream->read_buffer_len);
		if (n <= 0)
			return -1;   /* ours never returns 0 (see the driver) */
		stream->read_buffer_len += (size_t)n;
	}
}
