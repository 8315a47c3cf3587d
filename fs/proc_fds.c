#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs/proc_fds.h"

/* Reads a small /proc file whole into buf (NUL-terminated). */
static int read_small(const char *path, char *buf, size_t size)
{
	size_t done = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	while (done + 1 < size) {
		ssize_t r = read(fd, buf + done, size - 1 - done);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = -errno;

			close(fd);
			return e;
		}
		if (r == 0)
			break;
		done += (size_t)r;
	}
	close(fd);
	buf[done] = '\0';
	return 0;
}

/* The number after the line start key (which includes the ':') into
 * *v_r; -1 when there is none. */
static int field(const char *text, const char *key, uint64_t *v_r)
{
	size_t klen = strlen(key);
	const char *p = text;

	while (p) {
		if (strncmp(p, key, klen) == 0) {
			char *end;
			unsigned long long v;

			errno = 0;
			v = strtoull(p + klen, &end, 10);
			if (errno != 0 || end == p + klen)
				return -1;
			*v_r = v;
			return 0;
		}
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	return -1;
}

pid_t proc_tgid(pid_t tid)
{
	char path[64], buf[2048];
	uint64_t v;

	if (tid <= 0)
		return 0;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)tid);
	if (read_small(path, buf, sizeof(buf)) < 0)
		return 0;
	if (field(buf, "Tgid:", &v) < 0 || v == 0 || v > INT32_MAX)
		return 0;
	return (pid_t)v;
}

int proc_holds_inode(pid_t tgid, uint64_t ino)
{
	char path[64 + NAME_MAX], buf[512];
	struct dirent *d;
	DIR *dir;
	int found = 0;

	if (tgid <= 0)
		return -ESRCH;
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)tgid);
	dir = opendir(path);
	if (!dir)
		/* Gone: it holds nothing any more. */
		return errno == ENOENT ? 0 : -errno;
	while (!found && (d = readdir(dir)) != NULL) {
		if (d->d_name[0] < '0' || d->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%d/fdinfo/%s", (int)tgid,
			d->d_name);
		/* A descriptor closed meanwhile is simply not there. */
		if (read_small(path, buf, sizeof(buf)) < 0)
			continue;
		/* fdinfo's "ino:" is the inode number the file system gave:
		 * for the mount, the number its lookups answered. */
		uint64_t v;

		if (field(buf, "ino:", &v) < 0) {
			found = -ENOSYS;   /* a kernel before 5.14 */
			break;
		}
		if (v == ino)
			found = 1;
	}
	closedir(dir);
	return found;
}
