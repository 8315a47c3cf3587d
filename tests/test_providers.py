"""Integration tests: what real providers do differently.

Special-use folders where an expunge deletes nothing (Gmail's All Mail),
servers that file sent mail themselves, connection limits, throttling,
and servers without CONDSTORE.  Each runs against Dovecot configured to
show the behaviour, or, where Dovecot cannot, through a proxy or fake
server in tests/.
"""

import os
import random
import subprocess

import corpus as corpus_mod
from conftest import read_bytes
from fakeimap import FakeImapServer, tagged
from helpers import (Background, files_in, read_uncached, seed,
                     sized_message, uid_of)


def test_rm_in_all_mail_moves_to_trash(make_account, corpus, mount):
    """In a \\All folder an expunge would only drop a label (Gmail): rm
    moves the message to the \\Trash folder.  Elsewhere rm expunges."""
    account = make_account("special")
    k = corpus_mod.by_key(corpus)
    with account.client() as c:
        c.create("All Mail")
        c.create("Trash")
        flags = {name: fl for name, fl, _ in c.list()}
    assert "\\All" in flags["All Mail"] and "\\Trash" in flags["Trash"]
    uids = account.seed([k["plain"], k["subject_b"]], folder="All Mail")
    inbox_uids = account.seed([k["subject_q"], k["utf8body"]],
                              folder="INBOX")
    before = account.fetch("All Mail")
    m = mount(account)

    folder = os.path.join(m.path, "All Mail")
    names = {uid_of(os.path.join(folder, n)): n for n in files_in(folder)}
    victim = names[uids["subject_b"]]
    os.unlink(os.path.join(folder, victim))
    assert set(account.fetch("All Mail", body=False)) == {uids["plain"]}
    trash = account.fetch("Trash")
    assert [i["raw"] for i in trash.values()] == [k["subject_b"].raw]
    [moved] = trash.values()
    assert moved["internaldate"] == before[uids["subject_b"]]["internaldate"]
    assert victim not in os.listdir(folder)

    # An ordinary folder: rm deletes, nothing reaches Trash.
    inbox = os.path.join(m.path, "INBOX")
    names = {uid_of(os.path.join(inbox, n)): n for n in files_in(inbox)}
    os.unlink(os.path.join(inbox, names[inbox_uids["utf8body"]]))
    assert set(account.fetch("INBOX", body=False)) == \
        {inbox_uids["subject_q"]}
    assert len(account.fetch("Trash", body=False)) == 1

    # In Trash itself rm deletes for good.
    trash_dir = os.path.join(m.path, "Trash")
    [name] = files_in(trash_dir)
    os.unlink(os.path.join(trash_dir, name))
    assert account.fetch("Trash", body=False) == {}


# ---------------------------------------------------------------- limits

def test_connection_limit_shrinks_the_pool(make_account, mount, tmp_path):
    """Dovecot allows two connections per user and address; mailfs asks
    for four.  Refused logins shrink the pool instead of failing reads:
    a cp -r with parallel readers copies every message intact."""
    account = make_account("limited")
    rng = random.Random(16)
    raws = [sized_message(rng, f"lim{i}", 6000 + 97 * i, f"limit {i}",
                          "Tue, 03 Jun 2025 10:00:00 +0000", "limit.example")
            for i in range(300)]
    seed(account, {"Big": raws})
    m = mount(account, options=["connections=4"])
    src = os.path.join(m.path, "Big")
    names = files_in(src)
    assert len(names) == len(raws)

    # Readers in parallel, so that the pool wants all four connections.
    readers = [Background(lambda part=names[k::3]: [
                   read_uncached(os.path.join(src, n)) for n in part])
               for k in range(3)]
    r = subprocess.run(["cp", "-r", src, str(tmp_path / "copy")],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=600)
    for b in readers:
        b.join(600, "a parallel reader")
        assert b.result[0] == "ok", b.result
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    copied = sorted(read_bytes(str(tmp_path / "copy" / n)) for n in names)
    assert copied == sorted(raws)
    for b in readers:
        assert sorted(b.result[1]) == sorted(
            read_bytes(str(tmp_path / "copy" / n))
            for n in names[readers.index(b)::3])

    status = os.getxattr(m.path, "user.mailfs.status").decode()
    assert status.startswith("ok; connections: ") and "of 4 allowed" in \
        status, status
    m.unmount()
    log = m.stderr()
    assert log.count("the server allows no more connections") >= 1, log
    assert "error" not in log.lower(), log


def test_throttled_read_waits_and_succeeds(mount):
    """A body FETCH answered "NO ... Suggested Backoff Time" (Microsoft
    365's throttling): the read waits that long and then succeeds."""
    hint_ms = 1500
    raw = (b"Date: Tue, 03 Jun 2025 10:00:00 +0000\r\n"
           b"Subject: throttled\r\nMessage-ID: <thr@example.org>\r\n\r\n" +
           b"throttled body line\r\n" * 200)
    with FakeImapServer({"INBOX": [raw]}) as fake:
        m = mount(None, source=f"imap://someone@127.0.0.1:{fake.port}",
                  password="fake-secret", ca_file=False,
                  options=["allow_plaintext", "pop3=none"])
        [name] = files_in(os.path.join(m.path, "INBOX"))
        fake.fail("FETCH-BODY", tagged(
            b"NO Request is throttled. Suggested Backoff Time: "
            b"%d milliseconds" % hint_ms), times=1)
        assert read_uncached(os.path.join(m.path, "INBOX", name)) == raw
        bodies = [(t, refused) for t, kind, refused in fake.times
                  if kind == "FETCH-BODY"]
        assert bodies[0][1] and not bodies[1][1], bodies
        assert bodies[1][0] - bodies[0][0] >= hint_ms / 1000, bodies
        m.unmount()
        assert m.stderr().count("the server asks to slow down") == 1, \
            m.stderr()
