/* The copy-in journal on disk; see stage_journal.h. */
#include "fs/stage_journal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAGIC "mailfs-copy-in 1"
#define PREFIX "copyin-"
#define SUFFIX ".job"
#define ID_DIGITS 16
/* Names, folders, flags and a reason: far below this. */
#define RECORD_MAX (64 * 1024)

void stage_record_clear(struct stage_record *r)
{
	free(r->folder);
	free(r->name);
	free(r->flags);
	free(r->reason);
	memset(r, 0, sizeof(*r));
}

static const char *const state_names[] = {
	[STAGE_READY] = "ready",
	[STAGE_SENDING] = "sending",
	[STAGE_FAILED] = "failed",
};

static void put_value(FILE *f, const char *key, const char *v)
{
	fprintf(f, "%s ", key);
	for (; *v; v++) {
		unsigned char c = (unsigned char)*v;

		if (c <= ' ' || c >= 0x7f || c == '%')
			fprintf(f, "%%%02X", c);
		else
			fputc(c, f);
	}
	fputc('\n', f);
}

char *stage_record_format(const struct stage_record *r)
{
	char *text = NULL;
	size_t len;
	FILE *f;

	if (!r->folder || !r->name || (unsigned)r->state > STAGE_FAILED)
		return NULL;
	f = open_memstream(&text, &len);
	if (!f)
		return NULL;
	fputs(MAGIC "\n", f);
	put_value(f, "folder", r->folder);
	put_value(f, "name", r->name);
	put_value(f, "flags", r->flags ? r->flags : "");
	fprintf(f, "date %" PRId64 "\n", r->date < 0 ? (int64_t)-1 : r->date);
	fprintf(f, "state %s\n", state_names[r->state]);
	fprintf(f, "uidvalidity %" PRIu32 "\n", r->uidvalidity);
	fprintf(f, "min_uid %" PRIu32 "\n", r->min_uid);
	if (r->reason)
		put_value(f, "reason", r->reason);
	fputs("end\n", f);
	if (fclose(f) != 0) {
		free(text);
		return NULL;
	}
	return text;
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* Decodes a percent-encoded value; NULL with *err set. */
static char *get_value(const char *v, size_t len, int *err)
{
	char *out = malloc(len + 1);
	size_t n = 0;

	if (!out) {
		*err = -ENOMEM;
		return NULL;
	}
	for (size_t i = 0; i < len; i++) {
		if (v[i] == '%') {
			int hi = i + 2 < len ? hex_value(v[i + 1]) : -1;
			int lo = i + 2 < len ? hex_value(v[i + 2]) : -1;

			if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
				free(out);
				*err = -EINVAL;
				return NULL;
			}
			out[n++] = (char)(hi << 4 | lo);
			i += 2;
		} else if ((unsigned char)v[i] <= ' ' ||
			   (unsigned char)v[i] >= 0x7f) {
			free(out);
			*err = -EINVAL;
			return NULL;
		} else {
			out[n++] = v[i];
		}
	}
	out[n] = '\0';
	return out;
}

static bool get_number(const char *v, size_t len, int64_t min, int64_t max,
	int64_t *out)
{
	char buf[24];
	char *end;
	long long x;

	if (len == 0 || len >= sizeof(buf))
		return false;
	memcpy(buf, v, len);
	buf[len] = '\0';
	errno = 0;
	x = strtoll(buf, &end, 10);
	if (errno || *end || x < min || x > max)
		return false;
	*out = x;
	return true;
}

int stage_record_parse(const char *text, size_t len, struct stage_record *r)
{
	size_t pos, mlen = strlen(MAGIC);
	bool have_date = false, have_state = false, ended = false;
	int err = 0;

	memset(r, 0, sizeof(*r));
	r->date = -1;
	if (len < mlen + 1 || memcmp(text, MAGIC "\n", mlen + 1) != 0)
		return -EINVAL;
	for (pos = mlen + 1; pos < len && !err;) {
		const char *line = text + pos, *nl, *sp;
		size_t ll, kl;
		char **slot = NULL;
		int64_t num;

		nl = memchr(line, '\n', len - pos);
		if (!nl) {
			err = -EINVAL;   /* cut short */
			break;
		}
		ll = (size_t)(nl - line);
		pos += ll + 1;
		if (ll == 3 && memcmp(line, "end", 3) == 0) {
			ended = pos == len;   /* nothing may follow */
			if (!ended)
				err = -EINVAL;
			break;
		}
		sp = memchr(line, ' ', ll);
		if (!sp) {
			err = -EINVAL;
			break;
		}
		kl = (size_t)(sp - line);
#define KEY(k) (kl == sizeof(k) - 1 && memcmp(line, k, kl) == 0)
		const char *v = sp + 1;
		size_t vl = ll - kl - 1;

		if (KEY("folder"))
			slot = &r->folder;
		else if (KEY("name"))
			slot = &r->name;
		else if (KEY("flags"))
			slot = &r->flags;
		else if (KEY("reason"))
			slot = &r->reason;
		if (slot) {
			if (*slot) {
				err = -EINVAL;   /* twice */
				break;
			}
			*slot = get_value(v, vl, &err);
		} else if (KEY("date")) {
			if (!get_number(v, vl, -1, INT64_MAX, &num))
				err = -EINVAL;
			else
				r->date = num;
			have_date = true;
		} else if (KEY("uidvalidity") || KEY("min_uid")) {
			if (!get_number(v, vl, 0, UINT32_MAX, &num))
				err = -EINVAL;
			else if (KEY("uidvalidity"))
				r->uidvalidity = (uint32_t)num;
			else
				r->min_uid = (uint32_t)num;
		} else if (KEY("state")) {
			size_t i;

			for (i = 0; i <= STAGE_FAILED; i++)
				if (strlen(state_names[i]) == vl &&
				    memcmp(state_names[i], v, vl) == 0)
					break;
			if (i > STAGE_FAILED)
				err = -EINVAL;
			r->state = (enum stage_state)i;
			have_state = true;
		}
#undef KEY
	}
	if (!err && (!ended || !r->folder || !r->name || !r->flags || !have_date ||
		     !have_state || !*r->name))
		err = -EINVAL;
	if (err)
		stage_record_clear(r);
	return err;
}

static int write_all(int fd, const char *data, size_t len)
{
	while (len) {
		ssize_t w = write(fd, data, len);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		data += w;
		len -= (size_t)w;
	}
	return 0;
}

int stage_sync_dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');
	char *dir = slash ? strndup(path, (size_t)(slash - path)) :
		strdup(".");
	int fd, ret = 0;

	if (!dir)
		return -ENOMEM;
	fd = open(*dir ? dir : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(dir);
	if (fd < 0)
		return -errno;
	/* Some file systems cannot sync a directory: nothing to wait for. */
	if (fsync(fd) < 0 && errno != EINVAL)
		ret = -errno;
	close(fd);
	return ret;
}

int stage_record_save(const char *path, const struct stage_record *r)
{
	char *text = stage_record_format(r), *tmp = NULL;
	int fd, ret;

	if (!text || asprintf(&tmp, "%s.tmp", path) < 0) {
		free(text);
		return -ENOMEM;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		ret = -errno;
		goto out;
	}
	ret = write_all(fd, text, strlen(text));
	if (ret == 0 && fsync(fd) < 0)
		ret = -errno;
	if (close(fd) < 0 && ret == 0)
		ret = -errno;
	if (ret == 0 && rename(tmp, path) < 0)
		ret = -errno;
	if (ret == 0)
		ret = stage_sync_dir_of(path);
	else
		unlink(tmp);
out:
	free(tmp);
	free(text);
	return ret;
}

int stage_record_load(const char *path, struct stage_record *r)
{
	char *buf = malloc(RECORD_MAX);
	size_t len = 0;
	int fd, ret;

	memset(r, 0, sizeof(*r));
	if (!buf)
		return -ENOMEM;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		free(buf);
		return ret;
	}
	for (;;) {
		ssize_t got = read(fd, buf + len, RECORD_MAX - len);

		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			ret = got < 0 ? -errno : 0;
			break;
		}
		len += (size_t)got;
		if (len == RECORD_MAX) {
			ret = -EINVAL;   /* no record is this long */
			break;
		}
	}
	close(fd);
	if (ret == 0)
		ret = stage_record_parse(buf, len, r);
	free(buf);
	return ret;
}

int stage_record_remove(const char *path)
{
	if (unlink(path) < 0 && errno != ENOENT)
		return -errno;
	return stage_sync_dir_of(path);
}

int stage_file_create(const char *dir, char **data_path_r,
	char **record_path_r)
{
	for (int tries = 0; tries < 16; tries++) {
		uint64_t id;
		char *data = NULL, *record = NULL;
		int fd;

		/* Random, not a counter: names from before a restart (with
		 * the same pid after a reboot) never get in the way. */
		if (getrandom(&id, sizeof(id), 0) != (ssize_t)sizeof(id))
			return -EIO;
		if (asprintf(&data, "%s/" PREFIX "%016" PRIx64, dir, id) < 0)
			return -ENOMEM;
		if (asprintf(&record, "%s" SUFFIX, data) < 0) {
			free(data);
			return -ENOMEM;
		}
		fd = open(data, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (fd >= 0) {
			*data_path_r = data;
			*record_path_r = record;
			return fd;
		}
		fd = -errno;
		free(data);
		free(record);
		if (fd != -EEXIST)
			return fd;
	}
	return -EEXIST;
}

static bool has_id(const char *name, size_t len)
{
	size_t pl = strlen(PREFIX);

	if (len != pl + ID_DIGITS || strncmp(name, PREFIX, pl) != 0)
		return false;
	for (size_t i = pl; i < len; i++)
		if (hex_value(name[i]) < 0 || (name[i] >= 'A' && name[i] <= 'F'))
			return false;
	return true;
}

bool stage_is_record_name(const char *name)
{
	size_t len = strlen(name), sl = strlen(SUFFIX);

	return len > sl && strcmp(name + len - sl, SUFFIX) == 0 &&
		has_id(name, len - sl);
}

bool stage_is_data_name(const char *name)
{
	return has_id(name, strlen(name));
}
