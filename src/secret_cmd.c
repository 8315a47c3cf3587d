#include "src/secret_cmd.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "src/errfmt.h"
#include "src/log.h"
#include "src/secret.h"

extern char **environ;

#define ERR_LINE_MAX 200
#define ERR_LINES_MAX 20

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* What a run has read so far. */
struct run {
	char *out;              /* standard output, up to SECRET_CMD_OUT_MAX */
	size_t out_len;
	bool out_cut;           /* more than that came */
	char err[ERR_LINE_MAX + 1];   /* the standard error line being read */
	size_t err_len;
	bool err_cut;           /* the current line was longer than kept */
	unsigned err_lines;
	const char *label;
};

static void flush_err_line(struct run *r)
{
	if (r->err_len == 0 && !r->err_cut)
		return;
	if (r->err_lines < ERR_LINES_MAX) {
		r->err[r->err_len] = '\0';   /* NULs end it early: fine */
		log_warn("%s: %s%s", r->label, r->err, r->err_cut ? "..." : "");
	} else if (r->err_lines == ERR_LINES_MAX) {
		log_warn("%s: (more on standard error, not shown)", r->label);
	}
	r->err_lines++;
	r->err_len = 0;
	r->err_cut = false;
}

static void take_err(struct run *r, const char *buf, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (buf[i] == '\n') {
			flush_err_line(r);
		} else if (r->err_len < ERR_LINE_MAX) {
			r->err[r->err_len++] = buf[i];
		} else {
			r->err_cut = true;
		}
	}
}

static void take_out(struct run *r, const char *buf, size_t n)
{
	size_t room = SECRET_CMD_OUT_MAX - r->out_len;

	if (n > room) {
		n = room;   /* the rest is read and dropped */
		r->out_cut = true;
	}
	memcpy(r->out + r->out_len, buf, n);
	r->out_len += n;
}

/* Reads what fd has now; false at its end (or on an error). */
static bool drain(int fd, struct run *r, bool is_out)
{
	char buf[4096];

	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return true;
		if (n <= 0)
			return false;
		if (is_out)
			take_out(r, buf, (size_t)n);
		else
			take_err(r, buf, (size_t)n);
		explicit_bzero(buf, (size_t)n);
	}
}

static pid_t spawn(const char *cmd, int out_w, int err_w,
	const char **error_r)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	char *argv[] = { "/bin/sh", "-c", (char *)cmd, NULL };
	pid_t pid = -1;
	int rc;

	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&attr);
	posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null",
		O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, out_w, STDOUT_FILENO);
	posix_spawn_file_actions_adddup2(&fa, err_w, STDERR_FILENO);
	/* Its own process group, so that a timeout can end everything it
	 * started; default signal handling whatever mailfs set. */
	posix_spawnattr_setpgroup(&attr, 0);
	sigset_t all, none;

	sigfillset(&all);
	sigemptyset(&none);
	posix_spawnattr_setsigdefault(&attr, &all);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP |
		POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
	rc = posix_spawn(&pid, "/bin/sh", &fa, &attr, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	if (rc != 0) {
		*error_r = errfmt("cannot run /bin/sh: %s", strerror(rc));
		return -1;
	}
	return pid;
}

/* Whether pid has ended; its wait status in *status. */
static bool ended(pid_t pid, int *status)
{
	pid_t w = waitpid(pid, status, WNOHANG);

	if (w < 0 && errno == ECHILD) {
		*status = 0;    /* reaped elsewhere (SIGCHLD ignored) */
		return true;
	}
	return w == pid;
}

char *secret_cmd_run(const char *cmd, const char *label, int timeout_ms,
	const char **error_r)
{
	struct run r = { .label = label };
	int out_p[2] = { -1, -1 }, err_p[2] = { -1, -1 };
	int64_t deadline = now_ms() + timeout_ms;
	bool out_open = true, err_open = true, timed_out = false;
	bool exited = false;
	char *line = NULL;
	pid_t pid;
	int status = 0;

	r.out = malloc(SECRET_CMD_OUT_MAX);
	if (!r.out || pipe2(out_p, O_CLOEXEC) < 0 ||
	    pipe2(err_p, O_CLOEXEC) < 0) {
		*error_r = errfmt("cannot run %s: %s", label,
			r.out ? strerror(errno) : "out of memory");
		goto out;
	}
	pid = spawn(cmd, out_p[1], err_p[1], error_r);
	close(out_p[1]);
	close(err_p[1]);
	out_p[1] = err_p[1] = -1;
	if (pid < 0) {
		*error_r = errfmt("cannot run %s: %s", label, *error_r);
		goto out;
	}
	fcntl(out_p[0], F_SETFL, O_NONBLOCK);
	fcntl(err_p[0], F_SETFL, O_NONBLOCK);
	/* Until the shell has ended and its output is read, or the time is
	 * up.  Something it left running in the background may hold the
	 * pipes open: once the shell is gone, what is there is all. */
	for (;;) {
		struct pollfd pf[2] = {
			{ .fd = out_open ? out_p[0] : -1, .events = POLLIN },
			{ .fd = err_open ? err_p[0] : -1, .events = POLLIN },
		};
		int64_t left = deadline - now_ms();

		exited = ended(pid, &status);
		if (exited || (!out_open && !err_open)) {
			if (out_open)
				drain(out_p[0], &r, true);
			if (err_open)
				drain(err_p[0], &r, false);
			break;
		}
		if (left <= 0) {
			timed_out = true;
			break;
		}
		if (poll(pf, 2, left < 50 ? (int)left : 50) < 0 &&
		    errno != EINTR)
			break;
		if (out_open && (pf[0].revents & (POLLIN | POLLHUP | POLLERR)))
			out_open = drain(out_p[0], &r, true);
		if (err_open && (pf[1].revents & (POLLIN | POLLHUP | POLLERR)))
			err_open = drain(err_p[0], &r, false);
	}
	flush_err_line(&r);
	if (!exited && !timed_out) {
		/* the pipes closed first: it is ending */
		while (!(exited = ended(pid, &status)) && now_ms() < deadline) {
			struct timespec ts = { 0, 5 * 1000 * 1000 };

			nanosleep(&ts, NULL);
		}
		timed_out = !exited;
	}
	if (timed_out || exited)
		kill(-pid, SIGKILL);    /* and whatever it left behind */
	if (timed_out) {
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
		status = -1;
	}
	if (status == -1) {
		*error_r = errfmt("%s did not finish within %d s", label,
			timeout_ms / 1000);
		goto out;
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		*error_r = WIFEXITED(status) ?
			errfmt("%s failed (exit status %d)", label,
				WEXITSTATUS(status)) :
			errfmt("%s was killed by signal %d", label,
				WTERMSIG(status));
		goto out;
	}
	size_t len = 0;

	while (len < r.out_len && r.out[len] != '\n')
		len++;
	if (len == r.out_len && r.out_cut) {
		*error_r = errfmt("%s printed a first line longer than %u"
			" bytes", label, SECRET_CMD_OUT_MAX);
		goto out;
	}
	if (memchr(r.out, '\0', len)) {
		*error_r = errfmt("%s printed a NUL byte", label);
		goto out;
	}
	while (len > 0 && r.out[len - 1] == '\r')
		len--;
	if (len == 0) {
		*error_r = errfmt("%s printed nothing", label);
		goto out;
	}
	line = strndup(r.out, len);
	if (!line)
		*error_r = errfmt("cannot run %s: out of memory", label);
out:
	if (r.out) {
		explicit_bzero(r.out, SECRET_CMD_OUT_MAX);
		free(r.out);
	}
	for (int i = 0; i < 2; i++) {
		if (out_p[i] >= 0)
			close(out_p[i]);
		if (err_p[i] >= 0)
			close(err_p[i]);
	}
	return line;
}
