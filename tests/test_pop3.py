"""Integration tests: the read-only POP3 view, and the fallback to it.

Every test gets its own Dovecot user; the same Dovecot serves that user over
IMAP and POP3.  What the server holds is read back over IMAP with
BODY.PEEK[] (which never sets \\Seen), never through a mount.  What the POP3
sessions did is read from Dovecot's log: each POP3 session ends with a line

    pop3(USER)<pid><session>: Info: Disconnected: Logged out
        top=T/B, retr=R/B, del=D/M, size=S

(T TOP and R RETR commands, B bytes sent for each kind) where D is the
number of messages it deleted (DELE).

Nothing here depends on how fast the machine is: waits poll with generous
deadlines, and nothing asserts how long something took.
"""

import base64
import email.utils
import errno
import os
import re
import socket
import stat
import threading
import time

import pytest

import corpus as corpus_mod
from conftest import message_files, read_bytes
from helpers import assert_one_line, files_in, poll_until, seed, sha
from mailserver import closed_port

DEADLINE = float(os.environ.get("MAILFS_TEST_POP3_DEADLINE", "120"))

NAME_RE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2}_\d{4})_(?P<rest>.+\.eml)$")


# ---------------------------------------------------------------- helpers

def wait_until(predicate, what, timeout=DEADLINE):
    return poll_until(predicate, what, timeout, interval=0.2)


def pop3_url(account):
    return account.url("pop3s")


def mount_pop3(mount, account, **kw):
    return mount(account, source=pop3_url(account), **kw)


def inbox_of(m):
    return os.path.join(m.path, "INBOX")


def date_header_time(raw):
    """The Date header of raw bytes as a Unix time, or None."""
    head = raw.partition(b"\r\n\r\n")[0].decode("utf-8", "replace")
    unfolded = re.sub(r"\r\n[ \t]", " ", head)
    for line in unfolded.split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "date":
            return int(email.utils.parsedate_to_datetime(value).timestamp())
    return None


def server_raws(account):
    """[raw bytes] of every INBOX message, via IMAP BODY.PEEK[]."""
    return [info["raw"] for info in account.fetch("INBOX").values()]


def server_count(account):
    with account.client() as c:
        return c.select("INBOX")


def pop3_list_sizes(account):
    """[size] from the server's POP3 LIST, in message order (LIST and
    QUIT only: no flags change)."""
    with account.pop3() as p:
        _, lines, _ = p.list()
    return [int(line.split()[1]) for line in lines]


def read_files(directory):
    """{name: bytes} of every file in directory."""
    return {n: read_bytes(os.path.join(directory, n))
            for n in files_in(directory)}


def dots_message():
    """A message whose lines start with dots: only correct dot-unstuffing
    gives it back byte for byte, and a lone "." line would end the answer
    early if the server's stuffing were not undone."""
    body = (b"The next line holds a single dot.\r\n"
            b".\r\n"
            b"..\r\n"
            b"...\r\n"
            b".hidden\r\n"
            b"..double\r\n"
            b". space after the dot\r\n"
            b".\t\r\n"
            b"\r\n"
            b".\r\n"
            b"last line is a dot too\r\n"
            b".\r\n")
    return (b"Date: Tue, 03 Jun 2025 08:09:10 +0200\r\n"
            b"From: Alice Example <alice@example.org>\r\n"
            b"To: Bob Builder <bob@example.net>\r\n"
            b"Subject: Dots at line starts\r\n"
            b"Message-ID: <dots.20250603@example.org>\r\n"
            b"\r\n" + body)


def simple_message(subject, token, size=0):
    """A small message (or about `size` bytes of body)."""
    line = (token * 80)[:76].encode() + b"\r\n"
    body = b"Hello.\r\n" + line * max(0, size // len(line))
    return (f"Date: Wed, 04 Jun 2025 10:{len(token) % 60:02d}:00 +0000\r\n"
            f"From: Alice Example <alice@example.org>\r\n"
            f"To: Bob Builder <bob@example.net>\r\n"
            f"Subject: {subject}\r\n"
            f"Message-ID: <{token}.1@example.org>\r\n"
            f"\r\n").encode() + body


# ------------------------------------------------------ Dovecot's POP3 log

def _pop3_log(account):
    with open(account.server.log_path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    user = re.escape(account.user)
    logins = len(re.findall(
        rf"pop3-login: Info: Login: user=<{user}>,", text))
    ends = [{k: int(v) for k, v in m.groupdict().items()}
            for m in re.finditer(
                rf"pop3\({user}\)<[^>]*><[^>]*>: Info: Disconnected: [^\n]*"
                rf"top=(?P<top>\d+)/(?P<top_bytes>\d+), "
                rf"retr=(?P<retr>\d+)/(?P<retr_bytes>\d+), "
                rf"del=(?P<deleted>\d+)/(?P<messages>\d+)", text)]
    return logins, ends


def pop3_sessions(account, at_least=1):
    """Waits until at least `at_least` POP3 sessions of the account have
    logged in and every one of them has ended; returns their end records
    ({"top", "top_bytes", "retr", "retr_bytes", "deleted", "messages"}) in
    order."""
    def closed():
        logins, ends = _pop3_log(account)
        return ends if logins >= at_least and len(ends) == logins else None

    return wait_until(closed, f"the POP3 sessions of {account.user} to end "
                              f"(log: {_pop3_log(account)})")


def pop3_logins(account):
    return _pop3_log(account)[0]


def pop3_attempts(account):
    """How many POP3 connections named the account's user, logged in or
    not (a refused password is logged as "auth failed ... user=<U>")."""
    with open(account.server.log_path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    user = re.escape(account.user)
    return len(re.findall(rf"pop3-login: [^\n]*user=<{user}>", text))


# ---------------------------------------------------------------- contents

def test_corpus_reads_back_byte_identical(account, corpus, mount):
    account.seed(corpus)
    dots = dots_message()
    seed(account, {"INBOX": [dots]})
    want = sorted(sha(r) for r in server_raws(account))
    assert sha(dots) in want and len(want) == len(corpus) + 1
    m = mount_pop3(mount, account)
    # One folder, nothing else.
    assert os.listdir(m.path) == ["INBOX"]
    inbox = inbox_of(m)
    got = read_files(inbox)
    assert len(got) == len(corpus) + 1
    assert sorted(sha(d) for d in got.values()) == want
    # Read again: the same bytes (now from what was kept).
    for name, data in got.items():
        assert read_bytes(os.path.join(inbox, name)) == data, name


def test_sizes_and_mtime(account, corpus, mount):
    account.seed(corpus)
    list_sizes = sorted(pop3_list_sizes(account))
    by_sha = {sha(msg.raw): msg for msg in corpus}
    m = mount_pop3(mount, account)
    inbox = inbox_of(m)
    names = files_in(inbox)
    # Before any read: the sizes LIST gives.
    assert sorted(os.stat(os.path.join(inbox, n)).st_size
                  for n in names) == list_sizes
    for n in names:
        p = os.path.join(inbox, n)
        data = read_bytes(p)
        msg = by_sha[sha(data)]
        # After a full read: the real length.
        wait_until(lambda: os.stat(p).st_size == len(data),
                   f"st_size of {n} to be {len(data)} "
                   f"(is {os.stat(p).st_size})")
        st = os.stat(p)
        assert stat.S_ISREG(st.st_mode)
        when = date_header_time(msg.raw)
        if when is not None:
            assert int(st.st_mtime) == when, (n, msg.key)
        else:
            # No Date and no Received header: no date at all, and one
            # that does not depend on when the mount first saw it.
            assert int(st.st_mtime) == 0, (n, msg.key)


def pop3_retr_bytes(account, num):
    """Message num as POP3 RETR delivers it (dot-unstuffed; Dovecot ends
    every line with CRLF).  RETR may set \\Seen: only for tests that do
    not look at flags."""
    with account.pop3() as p:
        _, lines, _ = p.retr(num)
    return b"".join(line + b"\r\n" for line in lines)


def undercounted_message(account):
    """Seeds a message without a final line end: Dovecot's RETR (and TOP)
    add the CRLF, its LIST does not count it.  Returns (LIST size, the
    bytes the server sends)."""
    raw = simple_message("No final newline", "nofinal")[:-2]
    assert not raw.endswith(b"\n")
    seed(account, {"INBOX": [raw]})
    [list_size] = pop3_list_sizes(account)
    retr = pop3_retr_bytes(account, 1)
    assert retr == raw + b"\r\n"
    assert list_size < len(retr), "LIST is exact: nothing to correct"
    return list_size, retr


def test_first_read_returns_whole_message_when_list_undercounts(account,
                                                                 mount):
    list_size, retr = undercounted_message(account)
    m = mount_pop3(mount, account)
    [name] = files_in(inbox_of(m))
    p = os.path.join(inbox_of(m), name)
    # Before any read: LIST's size.
    assert os.stat(p).st_size == list_size
    # One read(2) asking for more than the message holds must return all
    # of it, not stop at the size LIST announced: never a truncated file.
    fd = os.open(p, os.O_RDONLY)
    try:
        first = os.pread(fd, 1 << 20, 0)
    finally:
        os.close(fd)
    assert first == retr, \
        f"first read gave {len(first)} of {len(retr)} bytes"
    wait_until(lambda: os.stat(p).st_size == len(retr),
               f"st_size to become {len(retr)} (is {os.stat(p).st_size})")
    assert read_bytes(p) == retr


def test_corrected_size_survives_remount(account, mount, tmp_path):
    list_size, retr = undercounted_message(account)
    cache = str(tmp_path / "cache-kept")
    m = mount_pop3(mount, account, cache_dir=cache)
    [name] = files_in(inbox_of(m))
    p = os.path.join(inbox_of(m), name)
    read_bytes(p)
    wait_until(lambda: os.stat(p).st_size == len(retr),
               f"st_size to become {len(retr)} (is {os.stat(p).st_size})")
    m.unmount()
    m = mount_pop3(mount, account, cache_dir=cache)
    p = os.path.join(inbox_of(m), name)
    assert os.stat(p).st_size == len(retr)
    assert read_bytes(p) == retr


def test_partial_and_interleaved_reads(account, corpus, mount):
    big = corpus_mod.by_key(corpus)["attachment"]
    others = [simple_message(f"Filler {i}", f"filler{i}x", size=900_000)
              for i in range(3)]
    account.seed([big])
    seed(account, {"INBOX": others})
    m = mount_pop3(mount, account)
    inbox = inbox_of(m)
    names = files_in(inbox)
    assert len(names) == 4
    [big_name] = [n for n in names if "scanned-contracts" in n]
    path = os.path.join(inbox, big_name)
    with open(path, "rb") as f:
        f.seek(2 * 1024 * 1024 + 123)
        assert f.read(70000) == big.raw[2 * 1024 * 1024 + 123:][:70000]
        f.seek(len(big.raw) - 10)
        assert f.read(100) == big.raw[-10:]
        f.seek(0)
        assert f.read(1024) == big.raw[:1024]
    # Round-robin over four messages in 96 KiB steps, more of them than
    # the backend keeps at once.
    want = {sha(r): r for r in [big.raw] + others}
    files = [open(os.path.join(inbox, n), "rb") for n in names]
    try:
        got = [b""] * len(files)
        done = [False] * len(files)
        while not all(done):
            for i, f in enumerate(files):
                if done[i]:
                    continue
                chunk = f.read(96 * 1024)
                if chunk:
                    got[i] += chunk
                else:
                    done[i] = True
    finally:
        for f in files:
            f.close()
    assert sorted(sha(g) for g in got) == sorted(want)


@pytest.mark.slow
def test_message_larger_than_memory_bound(account, mount):
    """A message above the in-memory bound (32 MiB) is kept in a file."""
    blob = os.urandom(27 * 1024 * 1024)
    b64 = base64.encodebytes(blob).replace(b"\n", b"\r\n")
    raw = (b"Date: Thu, 05 Jun 2025 12:00:00 +0000\r\n"
           b"From: Alice Example <alice@example.org>\r\n"
           b"To: Bob Builder <bob@example.net>\r\n"
           b"Subject: Huge archive\r\n"
           b"Message-ID: <huge.1@example.org>\r\n"
           b"MIME-Version: 1.0\r\n"
           b"Content-Type: application/octet-stream\r\n"
           b"Content-Transfer-Encoding: base64\r\n"
           b"\r\n" + b64)
    assert len(raw) > 33 * 1024 * 1024
    seed(account, {"INBOX": [raw]})
    m = mount_pop3(mount, account)
    inbox = inbox_of(m)
    [name] = files_in(inbox)
    path = os.path.join(inbox, name)
    with open(path, "rb") as f:
        f.seek(len(raw) - 5000)
        assert f.read() == raw[-5000:]
    assert sha(read_bytes(path)) == sha(raw)
    assert os.stat(path).st_size == len(raw)


def test_content_served_from_cache_after_remount(account, corpus, mount,
                                                 tmp_path):
    account.seed(corpus[:5])
    cache = str(tmp_path / "cache-kept")
    m = mount_pop3(mount, account, cache_dir=cache)
    first = read_files(inbox_of(m))
    assert len(first) == 5
    m.unmount()
    ends = pop3_sessions(account)
    assert sum(e["retr_bytes"] + e["top_bytes"] for e in ends) >= \
        sum(len(msg.raw) for msg in corpus[:5])
    done = len(ends)

    m = mount_pop3(mount, account, cache_dir=cache)
    assert read_files(inbox_of(m)) == first
    m.unmount()
    later = pop3_sessions(account, at_least=done + 1)[done:]
    # Listed again (LIST, UIDL), but neither headers (TOP) nor content
    # (RETR) fetched a second time.
    assert later, "the remount never logged in"
    assert sum(e["retr"] for e in later) == 0, later
    assert sum(e["top"] for e in later) == 0, later


# ---------------------------------------------------------------- names

def test_names_match_the_imap_view(account, corpus, mount):
    account.seed(corpus)
    seed(account, {"INBOX": [dots_message()]})
    mi = mount(account)
    imap = {n: sha(read_bytes(os.path.join(inbox_of(mi), n)))
            for n in files_in(inbox_of(mi))}
    mi.unmount()
    mp = mount_pop3(mount, account)
    pop3 = {n: sha(read_bytes(os.path.join(inbox_of(mp), n)))
            for n in files_in(inbox_of(mp))}
    assert len(pop3) == len(imap) == len(corpus) + 1
    # A message without Date is named after INTERNALDATE in IMAP, which
    # POP3 does not have: only its date part may differ.
    undated = {n for n in imap if "undated-memo" in n}
    assert len(undated) == 1
    assert {n: h for n, h in pop3.items() if "undated-memo" not in n} == \
        {n: h for n, h in imap.items() if n not in undated}
    [u_imap] = undated
    [u_pop3] = [n for n in pop3 if "undated-memo" in n]
    assert NAME_RE.match(u_pop3).group("rest") == \
        NAME_RE.match(u_imap).group("rest")
    assert pop3[u_pop3] == imap[u_imap]
    # The two identical messages: numbered the same way in both views.
    assert sum("duplicate-notice" in n for n in pop3) == 2
    assert any(n.endswith("~2.eml") and "duplicate-notice" in n
               for n in pop3)


def test_names_stable_across_remounts(account, corpus, mount, tmp_path):
    account.seed(corpus)
    cache = str(tmp_path / "cache-kept")

    def snapshot(m):
        inbox = inbox_of(m)
        return {n: os.getxattr(os.path.join(inbox, n),
                               "user.mail.uid").decode()
                for n in files_in(inbox)}

    m = mount_pop3(mount, account, cache_dir=cache)
    first = snapshot(m)
    assert len(first) == len(corpus)
    assert len(set(first.values())) == len(corpus)
    m.unmount()
    m = mount_pop3(mount, account, cache_dir=cache)
    assert snapshot(m) == first
    m.unmount()
    # A fresh cache: the same names, from the headers alone (the undated
    # message's included).
    m = mount_pop3(mount, account)
    assert sorted(files_in(inbox_of(m))) == sorted(first)


def test_undated_message_named_by_its_arrival(account, mount, tmp_path):
    """A message without Date is dated by its topmost Received field, the
    same on every mount, whatever the cache holds."""
    raw = (b"Received: from relay.example.net by mx.example.org;\r\n"
           b"\tWed, 11 Jun 2025 17:45:00 +0200\r\n"
           b"Received: from laptop by relay.example.net;"
           b" Wed, 11 Jun 2025 15:00:00 +0000\r\n"
           b"From: Alice Example <alice@example.org>\r\n"
           b"Subject: Arrived but undated\r\n"
           b"Message-ID: <undated.arrival@example.org>\r\n"
           b"\r\n"
           b"No Date header here.\r\n")
    seed(account, {"INBOX": [raw]})
    names = []
    for cache in ("one", "two"):
        m = mount_pop3(mount, account, cache_dir=str(tmp_path / cache))
        [name] = files_in(inbox_of(m))
        names.append(name)
        st = os.stat(os.path.join(inbox_of(m), name))
        assert int(st.st_mtime) == 1749656700   # 2025-06-11 15:45 UTC
        m.unmount()
    assert names[0] == names[1]
    assert names[0].startswith("2025-06-11_1545_arrived-but-undated_")


# ---------------------------------------------------------------- read only

def expect_errno(code, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except OSError as e:
        assert e.errno == code, \
            f"{fn.__name__}{args}: {errno.errorcode.get(e.errno)} " \
            f"instead of {errno.errorcode[code]}"
        return
    raise AssertionError(f"{fn.__name__}{args} succeeded in a read-only "
                         f"view")


def open_close(path, flags):
    os.close(os.open(path, flags, 0o600))


def test_every_change_fails_with_erofs(account, corpus, mount):
    keys = corpus_mod.by_key(corpus)
    msgs = [keys["plain"], keys["alternative"], keys["subject_b"]]
    account.seed(msgs)
    before_flags = account.flags()
    before_raws = sorted(server_raws(account))
    m = mount_pop3(mount, account)
    root = m.path
    inbox = inbox_of(m)
    names = files_in(inbox)
    assert len(names) == 3
    p = os.path.join(inbox, names[0])
    q = os.path.join(inbox, names[1])
    st = os.stat(p)

    # open for writing
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND,
                  os.O_WRONLY | os.O_TRUNC, os.O_RDWR | os.O_TRUNC):
        expect_errno(errno.EROFS, open_close, p, flags)
    # create
    for where in (inbox, root):
        new = os.path.join(where, "new-message.eml")
        expect_errno(errno.EROFS, open_close, new,
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        expect_errno(errno.EROFS, open_close, new, os.O_RDWR | os.O_CREAT)
        expect_errno(errno.EROFS, os.mknod, new, 0o600 | stat.S_IFREG)
        assert not os.path.exists(new)
    # unlink
    expect_errno(errno.EROFS, os.unlink, p)
    # rename: within INBOX, onto another message, out of INBOX, the folder
    expect_errno(errno.EROFS, os.rename, p, os.path.join(inbox, "x.eml"))
    expect_errno(errno.EROFS, os.rename, p, q)
    expect_errno(errno.EROFS, os.rename, p, os.path.join(root, "x.eml"))
    expect_errno(errno.EROFS, os.rename, inbox, os.path.join(root, "Old"))
    # mkdir, rmdir
    expect_errno(errno.EROFS, os.mkdir, os.path.join(root, "Archive"))
    expect_errno(errno.EROFS, os.mkdir, os.path.join(inbox, "Sub"))
    expect_errno(errno.EROFS, os.rmdir, inbox)
    # setxattr: flags on a message, anything on a folder
    expect_errno(errno.EROFS, os.setxattr, p, "user.mail.flags",
                 b"\\Seen \\Flagged")
    expect_errno(errno.EROFS, os.setxattr, p, "user.mail.flags", b"")
    expect_errno(errno.EROFS, os.setxattr, inbox, "user.mail.flags",
                 b"\\Seen")
    # truncate, shorter and longer
    expect_errno(errno.EROFS, os.truncate, p, 0)
    expect_errno(errno.EROFS, os.truncate, p, st.st_size + 10)
    # times: a new one, and "now"
    expect_errno(errno.EROFS, os.utime, p,
                 (st.st_atime, st.st_mtime + 3600))
    expect_errno(errno.EROFS, os.utime, p, None)
    # Setting the times a message already has changes nothing (cp -a
    # and rsync -a do it).
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))

    # Nothing changed: not here, not on the server.
    assert files_in(inbox) == names
    assert os.listdir(root) == ["INBOX"]
    assert os.stat(p).st_size == st.st_size
    assert int(os.stat(p).st_mtime) == int(st.st_mtime)
    assert os.getxattr(p, "user.mail.flags") == b""
    m.unmount()
    assert server_count(account) == 3
    assert sorted(server_raws(account)) == before_raws
    assert account.flags() == before_flags
    for e in pop3_sessions(account):
        assert e["deleted"] == 0, e


def test_removexattr_fails_with_erofs(account, corpus, mount):
    account.seed(corpus[:1])
    m = mount_pop3(mount, account)
    [name] = files_in(inbox_of(m))
    p = os.path.join(inbox_of(m), name)
    expect_errno(errno.EROFS, os.removexattr, p, "user.mail.flags")


def test_never_deletes_nor_marks_seen(account, corpus, mount):
    account.seed(corpus)
    before = account.flags()
    assert any("\\Seen" not in fl for fl in before.values())
    assert any("\\Seen" in fl for fl in before.values())
    m = mount_pop3(mount, account, args=["-d"])
    inbox = inbox_of(m)
    for n in files_in(inbox):
        read_bytes(os.path.join(inbox, n))
    m.unmount()
    ends = pop3_sessions(account)
    # The content came over POP3 ...
    assert sum(e["retr_bytes"] + e["top_bytes"] for e in ends) >= \
        sum(len(msg.raw) for msg in corpus), ends
    # ... and no session deleted anything.
    for e in ends:
        assert e["deleted"] == 0, e
        assert e["messages"] == len(corpus), e
    assert not re.search(rb"C: *DELE", m.output()), \
        "mailfs sent DELE"
    assert server_count(account) == len(corpus)
    assert sorted(sha(r) for r in server_raws(account)) == \
        sorted(sha(msg.raw) for msg in corpus)
    # Flags as they were: no \Seen added by reading.
    assert account.flags() == before


# ---------------------------------------------------------------- refresh

def test_new_mail_appears_after_refresh(account, corpus, mount):
    keys = corpus_mod.by_key(corpus)
    account.seed([keys["plain"]])
    m = mount_pop3(mount, account, options=["refresh=1"])
    inbox = inbox_of(m)
    [first] = files_in(inbox)
    assert read_bytes(os.path.join(inbox, first)) == keys["plain"].raw

    account.seed([keys["subject_q"]])
    names = wait_until(lambda: len(os.listdir(inbox)) == 2 and
                       files_in(inbox), "the new message to show")
    assert first in names
    [new] = [n for n in names if n != first]
    assert "caf" in new.lower()
    assert read_bytes(os.path.join(inbox, new)) == keys["subject_q"].raw
    assert read_bytes(os.path.join(inbox, first)) == keys["plain"].raw

    # A message removed on the server goes from the listing too.
    with account.client() as c:
        uids = c.fetch("INBOX", body=False)
        [old_uid] = [u for u, i in uids.items()
                     if i["size"] == len(keys["plain"].raw)]
        c.expunge_uid("INBOX", old_uid)
    wait_until(lambda: os.listdir(inbox) == [new],
               "the removed message to go")
    assert read_bytes(os.path.join(inbox, new)) == keys["subject_q"].raw


# ---------------------------------------------------------------- fallback

def source_xattr(m):
    return os.getxattr(m.path, "user.mailfs.source").decode()


def test_imap_mount_does_not_fall_back(account, corpus, mount):
    """Control: IMAP reachable, pop3= given: the IMAP view, with its
    folders, and a source that names IMAP."""
    account.seed(corpus[:1])
    with account.client() as c:
        c.create("Work")
    m = mount(account, options=[f"pop3={pop3_url(account)}"])
    assert "Work" in os.listdir(m.path)
    src = source_xattr(m)
    assert src.startswith(account.url("imaps")), src
    assert "fallback" not in src and "pop3" not in src, src
    m.unmount()
    assert pop3_attempts(account) == 0


def test_fallback_when_imap_refuses_connections(account, corpus, mount):
    account.seed(corpus[:3])
    with account.client() as c:
        c.create("Work")       # not visible over POP3
    port = closed_port()
    pop3 = pop3_url(account)
    m = mount(account, source=f"imaps://{account.user}@127.0.0.1:{port}",
              options=[f"pop3={pop3}"])
    src = source_xattr(m)
    assert src.startswith(f"{pop3} (fallback: IMAP "), src
    assert src.endswith(")"), src
    assert f"127.0.0.1:{port}" in src and "refused" in src.lower(), src
    # The POP3 view: INBOX only, read-only, the server's bytes.
    assert os.listdir(m.path) == ["INBOX"]
    inbox = inbox_of(m)
    assert sorted(sha(d) for d in read_files(inbox).values()) == \
        sorted(sha(msg.raw) for msg in corpus[:3])
    names = files_in(inbox)
    expect_errno(errno.EROFS, os.unlink, os.path.join(inbox, names[0]))
    expect_errno(errno.EROFS, os.mkdir, os.path.join(m.path, "New"))
    # The log says why.
    err = m.stderr()
    assert re.search(r"IMAP.*(refused|connect)", err, re.I | re.S), err
    assert str(port) in err, err
    m.unmount()
    assert server_count(account) == 3


def _full_listener():
    """A listening socket whose accept queue is full: a further connect
    gets no answer to its SYN and times out.  Returns (socket, fillers)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except (BlockingIOError, InterruptedError):
            pass
        fillers.append(c)
    time.sleep(0.5)
    # Check: one more connect must not complete.
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(("127.0.0.1", port))
        full = False
    except OSError:
        full = True
    finally:
        probe.close()
    return srv, fillers, full


def test_fallback_when_imap_connect_times_out(account, corpus, mount):
    account.seed(corpus[:2])
    srv, fillers, full = _full_listener()
    try:
        if not full:
            pytest.skip("this kernel completes connects to a full "
                        "accept queue")
        port = srv.getsockname()[1]
        pop3 = pop3_url(account)
        m = mount(account,
                  source=f"imaps://{account.user}@127.0.0.1:{port}",
                  options=[f"pop3={pop3}", "timeout=8"])
        src = source_xattr(m)
        assert src.startswith(f"{pop3} (fallback: IMAP "), src
        assert f"127.0.0.1:{port}" in src, src
        assert len(files_in(inbox_of(m))) == 2
        m.unmount()
    finally:
        for c in fillers:
            c.close()
        srv.close()


@pytest.mark.parametrize("scheme", ["imaps", "imap"])
def test_fallback_when_imap_server_never_answers(account, corpus, mount,
                                                 scheme):
    """The IMAP port accepts connections but the server behind it is hung:
    no greeting (imap://), no TLS handshake (imaps://).  That is a timeout,
    not a certificate problem."""
    account.seed(corpus[:2])
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)          # accepted by the kernel, never answered
    try:
        port = srv.getsockname()[1]
        pop3 = pop3_url(account)
        m = mount(account,
                  source=f"{scheme}://{account.user}@127.0.0.1:{port}",
                  options=[f"pop3={pop3}", "timeout=8"])
        src = source_xattr(m)
        assert src.startswith(f"{pop3} (fallback: IMAP "), src
        assert len(files_in(inbox_of(m))) == 2
        m.unmount()
    finally:
        srv.close()


def test_no_fallback_on_wrong_password(account, corpus, mount, mount_fails,
                                      tmp_path):
    account.seed(corpus[:1])
    cache = str(tmp_path / "cache-kept")
    # A cache from an earlier mount must not paper over it either.
    m = mount(account, cache_dir=cache)
    assert len(files_in(inbox_of(m))) == 1
    m.unmount()
    rc, err = mount_fails(account, password="not-" + account.password,
                          cache_dir=cache,
                          options=[f"pop3={pop3_url(account)}"])
    line = assert_one_line(err, "auth", "login", "password", "credential")
    assert "fallback" not in line.lower()
    assert "offline" not in line.lower()
    # IMAP said no: POP3 was not even tried.
    assert pop3_attempts(account) == 0


def test_pop3_wrong_password_is_refused(account, mount_fails):
    rc, err = mount_fails(account, source=pop3_url(account),
                          password="not-" + account.password)
    assert_one_line(err, "auth", "login", "password", "credential")


class Relay:
    """Listens on 127.0.0.1:port and relays every connection to
    127.0.0.1:target; counts the connections."""

    def __init__(self, port, target):
        self.target = target
        self.connections = 0
        self._socks = []
        self._lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind(("127.0.0.1", port))
            self.sock.listen(16)
        except OSError:
            self.sock.close()
            raise
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._socks.append(c)
            try:
                u = socket.create_connection(("127.0.0.1", self.target),
                                             timeout=30)
            except OSError:
                c.close()
                continue
            u.settimeout(None)
            with self._lock:
                self._socks.append(u)
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b),
                                 daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            try:
                b.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)   # wakes accept()
        except OSError:
            pass
        self.sock.close()
        with self._lock:
            for c in self._socks:
                c.close()


def relay_on_995(account):
    """The account's POP3S server also on 127.0.0.1:995 (where the
    default pop3= URL points), or None when that port cannot be had."""
    try:
        return Relay(995, account.server.pop3s_port)
    except OSError:
        return None


def test_default_fallback_is_pop3s_on_port_995(account, corpus, mount):
    account.seed(corpus[:2])
    relay = relay_on_995(account)
    if relay is None:
        pytest.skip("cannot listen on 127.0.0.1:995")
    try:
        port = closed_port()
        m = mount(account, source=f"imaps://{account.user}@127.0.0.1:{port}")
        src = source_xattr(m)
        assert src.startswith(
            f"pop3s://{account.user}@127.0.0.1:995 (fallback: IMAP "), src
        assert f"127.0.0.1:{port}" in src, src
        assert len(files_in(inbox_of(m))) == 2
        assert relay.connections >= 1
        m.unmount()
    finally:
        relay.close()


def test_pop3_none_disables_fallback(account, corpus, mount_fails):
    account.seed(corpus[:1])
    # With the default POP3 URL reachable where possible, so that only
    # pop3=none stands between this and a fallback.
    relay = relay_on_995(account)
    try:
        port = closed_port()
        rc, err = mount_fails(
            account, source=f"imaps://{account.user}@127.0.0.1:{port}",
            options=["pop3=none"])
        assert_one_line(err, "connect", "refused", "reach")
        assert pop3_attempts(account) == 0
        if relay is not None:
            assert relay.connections == 0
    finally:
        if relay is not None:
            relay.close()


def test_fallback_to_unreachable_pop3_fails(account, mount_fails):
    rc, err = mount_fails(
        account, source=f"imaps://{account.user}@127.0.0.1:{closed_port()}",
        options=[f"pop3=pop3s://{account.user}@127.0.0.1:{closed_port()}"])
    assert_one_line(err, "connect", "refused", "reach")


# ---------------------------------------------------------------- TLS

def test_pop3_with_stls(account, corpus, mount):
    account.seed(corpus[:2])
    m = mount(account, source=account.url("pop3"))
    got = sorted(read_files(inbox_of(m)).values())
    assert got == sorted(msg.raw for msg in corpus[:2])


def test_pop3_refuses_server_without_stls(make_account, mount_fails):
    account = make_account("nossl")
    rc, err = mount_fails(account, source=account.url("pop3"),
                          ca_file=False)
    assert_one_line(err, "stls", "tls")


def test_pop3_plaintext_needs_its_own_option(make_account, mount_fails):
    """allow_plaintext is for the IMAP source only."""
    account = make_account("nossl")
    rc, err = mount_fails(account, source=account.url("pop3"),
                          ca_file=False, options=["allow_plaintext"])
    line = [ln for ln in err.splitlines()
            if ln.strip() and "warning:" not in ln]
    assert len(line) == 1 and "pop3_allow_plaintext" in line[0], err
    assert account.password not in err


def test_pop3_plaintext_when_allowed(make_account, corpus, mount):
    account = make_account("nossl")
    account.seed(corpus[:1])
    m = mount(account, source=account.url("pop3"), ca_file=False,
              options=["pop3_allow_plaintext"])
    [name] = files_in(inbox_of(m))
    assert read_bytes(os.path.join(inbox_of(m), name)) == corpus[0].raw


def test_pop3_refuses_untrusted_certificate(account, mount_fails):
    rc, err = mount_fails(account, source=pop3_url(account), ca_file=False)
    assert_one_line(err, "certificate", "verif", "trust", "tls")


# ---------------------------------------------------------------- outbox

def test_outbox_in_pop3_view(account, servers, mount, tmp_path):
    smtpserver = pytest.importorskip("smtpserver")
    server = smtpserver.SmtpServer(cert=servers.cert, key=servers.key,
                                   user=account.user,
                                   password=account.password,
                                   log_path=str(tmp_path / "smtp.log"))
    server.start()
    try:
        m = mount_pop3(mount, account, options=[
            f"smtp={server.url()}", f"spool_dir={tmp_path / 'spool'}",
            "retry_min=1"])
        assert sorted(os.listdir(m.path)) == ["INBOX", "outbox"]
        raw = simple_message("Sent from the POP3 view", "popsend")
        path = os.path.join(m.path, "outbox", "hello.eml")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, raw)
        finally:
            os.close(fd)
        [d] = server.wait_deliveries(1, timeout=DEADLINE)
        assert d.data == raw
        assert d.rcpt_tos == ["bob@example.net"]
        wait_until(lambda: "hello.eml" not in os.listdir(
            os.path.join(m.path, "outbox")), "outbox/hello.eml to go")
        # INBOX stays read-only.
        expect_errno(errno.EROFS, open_close,
                     os.path.join(inbox_of(m), "x.eml"),
                     os.O_WRONLY | os.O_CREAT)
    finally:
        server.stop()


# ---------------------------------------------------------------- debug log

def test_debug_log_hides_password_and_mail(account, corpus, mount):
    keys = corpus_mod.by_key(corpus)
    account.seed([keys["grep"]])
    m = mount_pop3(mount, account, args=["-d"])
    for rel in message_files(m.path):
        read_bytes(os.path.join(m.path, rel))
    m.unmount()   # checks the output for the password
    out = m.output()
    assert account.password.encode() not in out
    assert corpus_mod.GREP_WORD.encode() not in out
