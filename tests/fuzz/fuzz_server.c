/* See fuzz_server.h. */
#include "tests/fuzz/fuzz_server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 16
#define TRACE_MAX 8192
/* How long a pause lasts once the client has acknowledged every byte:
 * long enough for it to read them, short enough to keep fuzzing fast. */
#define PAUSE_US 100

struct conn {
	int fd;
	uint8_t *data;      /* what to send, markers removed; owned */
	size_t len, off;
	size_t stops[FUZZ_SERVER_PAUSES];  /* offsets of pauses in data */
	size_t n_stops, next_stop;
	int64_t resume_us;  /* paused until then (0: not paused) */
	bool sending;
};

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t idle_cond = PTHREAD_COND_INITIALIZER;
static int listen_fd = -1;
static uint16_t port;

/* Guarded by lock. */
static uint8_t *round_data;
static size_t round_len;
static bool round_served;
static unsigned open_conns;
static char trace[TRACE_MAX];
static size_t trace_len;
static bool tracing;

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static int64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

uint8_t *fuzz_server_stripped(const uint8_t *data, size_t size,
	size_t *len_r)
{
	const size_t mlen = sizeof(FUZZ_SERVER_PAUSE) - 1;
	uint8_t *out = malloc(size ? size : 1);
	size_t in = 0, n = 0;

	if (out == NULL)
		die("malloc");
	while (in < size) {
		if (size - in >= mlen &&
		    memcmp(data + in, FUZZ_SERVER_PAUSE, mlen) == 0) {
			in += mlen;
			continue;
		}
		out[n++] = data[in++];
	}
	*len_r = n;
	return out;
}

/* Removes the pause markers from c->data, noting where they were. */
static void conn_find_stops(struct conn *c)
{
	const size_t mlen = sizeof(FUZZ_SERVER_PAUSE) - 1;
	size_t in = 0, out = 0;

	c->n_stops = 0;
	c->next_stop = 0;
	while (in < c->len) {
		if (c->len - in >= mlen &&
		    memcmp(c->data + in, FUZZ_SERVER_PAUSE, mlen) == 0) {
			if (c->n_stops < FUZZ_SERVER_PAUSES &&
			    (c->n_stops == 0 || c->stops[c->n_stops - 1] != out))
				c->stops[c->n_stops++] = out;
			in += mlen;
			continue;
		}
		c->data[out++] = c->data[in++];
	}
	c->len = out;
}

static void conn_close(struct conn *c)
{
	close(c->fd);
	free(c->data);
	c->fd = -1;
	c->data = NULL;
	c->resume_us = 0;
	pthread_mutex_lock(&lock);
	open_conns--;
	pthread_cond_broadcast(&idle_cond);
	pthread_mutex_unlock(&lock);
}

static void conn_accept(struct conn *conns)
{
	struct conn *c = NULL;
	int fd, one = 1;

	fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0)
		return;
	for (int i = 0; i < MAX_CONNS; i++)
		if (conns[i].fd < 0) {
			c = &conns[i];
			break;
		}
	if (c == NULL) {
		close(fd);
		return;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->fd = fd;
	c->off = 0;
	c->len = 0;
	c->data = NULL;
	c->sending = true;
	c->resume_us = 0;
	c->n_stops = 0;
	c->next_stop = 0;
	pthread_mutex_lock(&lock);
	open_conns++;
	if (!round_served) {
		round_served = true;
		c->data = round_data;
		c->len = round_len;
		round_data = NULL;
		round_len = 0;
	}
	pthread_mutex_unlock(&lock);
	conn_find_stops(c);
}

static void conn_send(struct conn *c)
{
	if (c->resume_us != 0) {
		int unacked = 0;

		/* The pause starts once the client has every byte so far. */
		if (ioctl(c->fd, SIOCOUTQ, &unacked) == 0 && unacked > 0) {
			c->resume_us = now_us() + PAUSE_US;
			return;
		}
		if (now_us() < c->resume_us)
			return;
		c->resume_us = 0;
	}
	while (c->off < c->len) {
		size_t end = c->next_stop < c->n_stops ?
			c->stops[c->next_stop] : c->len;
		ssize_t n;

		if (c->off == end) {
			c->next_stop++;
			c->resume_us = now_us() + PAUSE_US;
			return;
		}
		n = send(c->fd, c->data + c->off, end - c->off, MSG_NOSIGNAL);
		if (n > 0) {
			c->off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		/* The client has gone: nothing more to say. */
		break;
	}
	shutdown(c->fd, SHUT_WR);
	c->sending = false;
}

/* Reads and drops what the client sends; closes at its end of file. */
static void conn_drain(struct conn *c)
{
	char buf[4096];

	for (;;) {
		ssize_t n = recv(c->fd, buf, sizeof(buf), 0);

		if (n > 0) {
			pthread_mutex_lock(&lock);
			if (tracing && trace_len < TRACE_MAX) {
				size_t k = (size_t)n < TRACE_MAX - trace_len ?
					(size_t)n : TRACE_MAX - trace_len;

				memcpy(trace + trace_len, buf, k);
				trace_len += k;
			}
			pthread_mutex_unlock(&lock);
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		conn_close(c);
		return;
	}
}

static void *server_main(void *arg)
{
	struct conn conns[MAX_CONNS];
	struct pollfd pfd[MAX_CONNS + 1];
	int map[MAX_CONNS + 1];

	(void)arg;
	memset(conns, 0, sizeof(conns));
	for (int i = 0; i < MAX_CONNS; i++)
		conns[i].fd = -1;
	for (;;) {
		/* While a connection pauses, look again every PAUSE_US / 4. */
		struct timespec tick = { .tv_nsec = PAUSE_US * 1000 / 4 };
		bool any_paused = false;
		int n = 0;

		pfd[n] = (struct pollfd){ .fd = listen_fd, .events = POLLIN };
		map[n++] = -1;
		for (int i = 0; i < MAX_CONNS; i++) {
			bool paused;

			if (conns[i].fd < 0)
				continue;
			paused = conns[i].resume_us != 0;
			pfd[n] = (struct pollfd){ .fd = conns[i].fd,
				.events = POLLIN | (conns[i].sending && !paused ?
					POLLOUT : 0) };
			map[n++] = i;
			any_paused = any_paused || paused;
		}
		if (ppoll(pfd, (nfds_t)n, any_paused ? &tick : NULL, NULL) < 0) {
			if (errno == EINTR)
				continue;
			die("poll");
		}
		for (int i = 0; i < MAX_CONNS; i++)
			if (conns[i].fd >= 0 && conns[i].sending &&
			    conns[i].resume_us != 0)
				conn_send(&conns[i]);
		for (int k = 0; k < n; k++) {
			if (pfd[k].revents == 0)
				continue;
			if (map[k] == -1) {
				conn_accept(conns);
			} else {
				struct conn *c = &conns[map[k]];

				if (c->sending)
					conn_send(c);
				if (c->fd >= 0 &&
				    (pfd[k].revents & (POLLIN | POLLHUP | POLLERR)))
					conn_drain(c);
			}
		}
	}
	return NULL;
}

static void start_once(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t sl = sizeof(sa);
	pthread_t thread;
	sigset_t all, old;

	signal(SIGPIPE, SIG_IGN);
	tracing = getenv("MAILFS_FUZZ_TRACE") != NULL;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
		0);
	if (listen_fd < 0)
		die("socket");
	if (bind(listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(listen_fd, 64) < 0 ||
	    getsockname(listen_fd, (struct sockaddr *)&sa, &sl) < 0)
		die("bind");
	port = ntohs(sa.sin_port);
	/* Signals are for the fuzzing thread. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	if (pthread_create(&thread, NULL, server_main, NULL) != 0)
		die("pthread_create");
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_detach(thread);
}

void fuzz_server_start(void)
{
	pthread_once(&once, start_once);
}

uint16_t fuzz_server_port(void)
{
	return port;
}

void fuzz_server_serve(const uint8_t *data, size_t size)
{
	uint8_t *copy = malloc(size ? size : 1);

	if (copy == NULL)
		die("malloc");
	memcpy(copy, data, size);
	pthread_mutex_lock(&lock);
	free(round_data);
	round_data = copy;
	round_len = size;
	round_served = false;
	trace_len = 0;
	pthread_mutex_unlock(&lock);
}

void fuzz_server_finish(void)
{
	struct timespec deadline;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 10;
	pthread_mutex_lock(&lock);
	while (open_conns > 0)
		if (pthread_cond_timedwait(&idle_cond, &lock, &deadline) != 0)
			break;
	free(round_data);
	round_data = NULL;
	round_len = 0;
	round_served = true;
	if (tracing && trace_len > 0) {
		fprintf(stderr, "---- client sent:\n");
		fwrite(trace, 1, trace_len, stderr);
		fprintf(stderr, "---- end\n");
	}
	pthread_mutex_unlock(&lock);
}
