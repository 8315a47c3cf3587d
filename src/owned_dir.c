#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "src/errfmt.h"
#include "src/log.h"
#include "src/owned_dir.h"

#define DIR_MODE 0700
#define FILE_MODE 0600

static bool in_list(const char *name, const char *const *list)
{
	for (; list && *list; list++)
		if (strcmp(name, *list) == 0)
			return true;
	return false;
}

bool owned_dir_only(int dir_fd, const char *const *dirs,
	const char *const *files)
{
	int fd = dup(dir_fd);
	struct dirent *de;
	struct stat st;
	bool ok = true;
	DIR *d;

	if (fd < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return false;
	}
	rewinddir(d);
	while (ok && (de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (fstatat(dir_fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			ok = false;
		else if (in_list(de->d_name, dirs))
			ok = S_ISDIR(st.st_mode);
		else if (in_list(de->d_name, files))
			ok = S_ISREG(st.st_mode);
		else
			ok = false;
	}
	closedir(d);
	return ok;
}

static bool is_empty(int dir_fd)
{
	return owned_dir_only(dir_fd, NULL, NULL);
}

/* mkdir -p of dir's parents, 0700 for what it creates. */
static int make_parents(const char *dir)
{
	char path[PATH_MAX];
	size_t len = strlen(dir);

	if (len == 0 || len >= sizeof(path))
		return -ENAMETOOLONG;
	memcpy(path, dir, len + 1);
	for (size_t i = 1; i < len; i++) {
		if (path[i] != '/')
			continue;
		path[i] = '\0';
		if (mkdir(path, DIR_MODE) == 0) {
			/* exactly 0700 whatever the umask: it is ours */
			if (chmod(path, DIR_MODE) < 0)
				return -errno;
		} else if (errno != EEXIST) {
			int e = errno;
			struct stat st;

			/* An existing directory may still refuse mkdir
			 * (EROFS, EACCES on its parent). */
			if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode))
				return -e;
		}
		path[i] = '/';
	}
	return 0;
}

static int write_marker(int dir_fd, const char *marker, const char *what)
{
	char text[128];
	int fd, len, ret = 0;
	ssize_t w;

	len = snprintf(text, sizeof(text), "This %s directory belongs to "
		"mailfs, which deletes files in it.\n", what);
	fd = openat(dir_fd, marker, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW |
		O_CLOEXEC, FILE_MODE);
	if (fd < 0)
		return -errno;
	w = write(fd, text, (size_t)len);
	if (w < 0 || (w == len && fsync(fd) < 0))
		ret = -errno;
	else if (w != len)
		ret = -EIO;
	close(fd);
	if (ret == 0 && fsync(dir_fd) < 0)
		ret = -errno;
	return ret;
}

int owned_dir_open(const char *dir, const char *marker, const char *what,
	bool (*earlier)(int dir_fd), const char **error_r)
{
	bool created = false;
	struct stat st;
	int fd, r = 0;

	r = make_parents(dir);
	if (r < 0) {
		*error_r = errfmt("cannot create the %s directory %s: %s",
			what, dir, strerror(-r));
		return r;
	}
	if (mkdir(dir, DIR_MODE) == 0)
		created = true;
	else if (errno != EEXIST) {
		r = -errno;
		*error_r = errfmt("cannot create the %s directory %s: %s",
			what, dir, strerror(-r));
		return r;
	}
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		*error_r = errfmt("cannot open the %s directory %s: %s", what,
			dir, strerror(-r));
		return r;
	}
	if (!created && fstatat(fd, marker, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    S_ISREG(st.st_mode)) {
		/* Ours: kept private whatever was done to it since. */
		if (fstat(fd, &st) == 0 && (st.st_mode & 07777) != DIR_MODE &&
		    fchmod(fd, DIR_MODE) < 0) {
			r = -errno;
			close(fd);
			*error_r = errfmt("cannot make the %s directory %s "
				"private: %s", what, dir, strerror(-r));
			return r;
		}
		return fd;
	}
	if (!created) {
		if (is_empty(fd)) {
			/* nothing to lose */
		} else if (earlier && earlier(fd)) {
			log_info("%s: taking over the %s of an earlier mailfs",
				dir, what);
		} else {
			close(fd);
			*error_r = errfmt("the %s directory %s is not empty and "
				"was not made by mailfs: refusing to use it "
				"(name a new or empty directory)", what, dir);
			return -EEXIST;
		}
	}
	/* Mail is private whatever the umask was. */
	if (fchmod(fd, DIR_MODE) < 0 ||
	    (r = write_marker(fd, marker, what)) < 0) {
		r = r < 0 ? r : -errno;
		close(fd);
		*error_r = errfmt("cannot set up the %s directory %s: %s", what,
			dir, strerror(-r));
		return r;
	}
	return fd;
}
