/* Unit tests for fs/stage_journal.c: records survive a round trip through
 * text and disk whatever bytes the names hold, damaged records are
 * refused, and new data files never reuse a name. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs/stage_journal.h"
#include "tests/unit/check.h"

#define S(x) ((x) != NULL ? (x) : "(null)")

static bool same(const struct stage_record *a, const struct stage_record *b)
{
	return strcmp(a->folder, b->folder) == 0 &&
		strcmp(a->name, b->name) == 0 &&
		strcmp(a->flags, b->flags) == 0 && a->date == b->date &&
		a->state == b->state && a->uidvalidity == b->uidvalidity &&
		a->min_uid == b->min_uid &&
		((!a->reason && !b->reason) ||
		 (a->reason && b->reason && strcmp(a->reason, b->reason) == 0));
}

static void test_round_trip(void)
{
	struct stage_record in = {
		.folder = "Archive/2024 \xc3\xa9t\xc3\xa9%",
		.name = "a name\nwith line\rbreaks\t%41 and \x7f.eml",
		.flags = "\\Seen $Work",
		.date = 1700000000,
		.state = STAGE_SENDING,
		.uidvalidity = 4294967295u,
		.min_uid = 17,
	}, out;
	char *text = stage_record_format(&in);

	CHECK(text != NULL);
	/* One record per line: no raw line break inside a value. */
	CHECK(text && strstr(text, "with line\n") == NULL, "%s", S(text));
	CHECK(stage_record_parse(text, strlen(text), &out) == 0);
	CHECK(same(&in, &out), "name %s", S(out.name));
	stage_record_clear(&out);
	free(text);

	in.state = STAGE_FAILED;
	in.reason = "NO [OVERQUOTA] Quota exceeded (mailbox for user is full)";
	in.date = -1;
	text = stage_record_format(&in);
	CHECK(stage_record_parse(text, strlen(text), &out) == 0);
	CHECK(same(&in, &out), "reason %s", S(out.reason));
	stage_record_clear(&out);

	/* Every shorter prefix is a damaged record, never a different one. */
	for (size_t n = 0; text && n < strlen(text); n++) {
		int r = stage_record_parse(text, n, &out);

		CHECK(r == -EINVAL, "prefix of %zu bytes gave %d", n, r);
		if (r == 0)
			stage_record_clear(&out);
	}
	free(text);
}

static void test_damaged(void)
{
	static const char *const bad[] = {
		"",
		"mailfs-copy-in 2\nfolder INBOX\nname x\nflags \ndate -1\n"
			"state ready\nend\n",
		"mailfs-copy-in 1\nname x\nflags \ndate -1\nstate ready\nend\n",
		"mailfs-copy-in 1\nfolder INBOX\nname x\nflags \ndate -2\n"
			"state ready\nend\n",
		"mailfs-copy-in 1\nfolder INBOX\nname x\nflags \ndate 1\n"
			"state later\nend\n",
		"mailfs-copy-in 1\nfolder IN%G1OX\nname x\nflags \ndate 1\n"
			"state ready\nend\n",
		"mailfs-copy-in 1\nfolder IN%00X\nname x\nflags \ndate 1\n"
			"state ready\nend\n",
		"mailfs-copy-in 1\nfolder INBOX\nname x\nname y\nflags \n"
			"date 1\nstate ready\nend\n",
		"mailfs-copy-in 1\nfolder INBOX\nname \nflags \ndate 1\n"
			"state ready\nend\n",
		"mailfs-copy-in 1\nfolder INBOX\nname x\nflags \ndate 1\n"
			"state ready\nmin_uid 4294967296\nend\n",
		"mailfs-copy-in 1\nfolder INBOX\nname x\nflags \ndate 1\n"
			"state ready\nnokey\nend\n",
		"mailfs-copy-in 1\nfolder INBOX\nname x\nflags \ndate 1\n"
			"state ready\nend\nname y\n",
	};
	struct stage_record r;

	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		int ret = stage_record_parse(bad[i], strlen(bad[i]), &r);

		CHECK(ret == -EINVAL, "record %zu gave %d", i, ret);
		if (ret == 0)
			stage_record_clear(&r);
	}
	/* Keys a later version adds are skipped. */
	static const char later[] = "mailfs-copy-in 1\nfolder INBOX\n"
		"name x\nflags \ndate 5\nstate ready\ncolour blue\nend\n";
	CHECK(stage_record_parse(later, strlen(later), &r) == 0);
	CHECK(r.date == 5 && r.name && strcmp(r.name, "x") == 0);
	stage_record_clear(&r);
}

static int rm_entry(const char *path, const struct stat *st, int type,
	struct FTW *ftw)
{
	return remove(path);
}

static void test_on_disk(void)
{
	char dir[] = "/tmp/stage-journal-XXXXXX";
	struct stage_record in = {
		.folder = "INBOX", .name = "m.eml", .flags = "",
		.date = -1, .state = STAGE_READY,
	}, out;
	char *data[64] = { 0 }, *job[64] = { 0 };
	bool all_unique = true;

	if (!mkdtemp(dir)) {
		CHECK(!"mkdtemp");
		return;
	}
	for (int i = 0; i < 64; i++) {
		int fd = stage_file_create(dir, &data[i], &job[i]);

		CHECK(fd >= 0, "%s", strerror(-fd));
		if (fd < 0)
			break;
		close(fd);
		CHECK(stage_is_data_name(strrchr(data[i], '/') + 1), "%s",
			data[i]);
		CHECK(stage_is_record_name(strrchr(job[i], '/') + 1), "%s",
			job[i]);
		CHECK(!stage_is_record_name(strrchr(data[i], '/') + 1));
		for (int k = 0; k < i; k++)
			if (strcmp(data[k], data[i]) == 0)
				all_unique = false;
	}
	CHECK(all_unique);
	CHECK(!stage_is_data_name("outbox.1.42"));
	CHECK(!stage_is_data_name("1.42"));
	CHECK(!stage_is_record_name("copyin-0123.job"));

	CHECK(stage_record_save(job[0], &in) == 0);
	in.state = STAGE_SENDING;
	in.min_uid = 9;
	CHECK(stage_record_save(job[0], &in) == 0);   /* replaces it */
	CHECK(stage_record_load(job[0], &out) == 0);
	CHECK(out.name && same(&in, &out));
	stage_record_clear(&out);
	CHECK(stage_record_remove(job[0]) == 0);
	CHECK(access(job[0], F_OK) < 0 && errno == ENOENT);
	CHECK(stage_record_remove(job[0]) == 0);   /* gone is fine */
	CHECK(stage_record_load(job[0], &out) == -ENOENT);

	for (int i = 0; i < 64; i++) {
		free(data[i]);
		free(job[i]);
	}
	nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
	test_round_trip();
	test_damaged();
	test_on_disk();
	return check_summary("stage_journal");
}
