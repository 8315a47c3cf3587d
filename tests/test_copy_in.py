"""Integration tests: nothing copied into a folder is lost.

A file copied in is journaled (bytes and where they go, fsynced) before
close() returns.  These tests kill mailfs at each step of a copy-in,
unmount it while the server is away, make the server refuse a message, and
restore backups with rsync -aX and cp -a; each time every message must end
up on the server exactly once.  Every effect is checked on the server over
a separate imaplib connection.

Killing uses the test-only fault points (MAILFS_TEST_KILL_AT=<step>): mailfs
raises SIGKILL on itself when it reaches that step.
"""

import os
import re
import signal
from collections import Counter

import pytest

from helpers import files_in, poll_until, proxy_url, sha
from test_write import (APPEND_DEADLINE, NAME_RE, _backup_then_remount,
                        _has_uid, keyed, run, small_corpus,
                        wait_for_server_count)

# In the order a copy-in goes through them.
KILL_STEPS = [
    "copyin-journaled",  # bytes and record on disk, close() not answered
    "copyin-quiet",      # closed; waiting for cp -a to set times and xattrs
    "copyin-sending",    # the record says an APPEND is starting
    "append-sent",       # the APPEND went out, its answer not read
    "copyin-appended",   # the server said OK, the record is still there
]


def records(cache):
    """Journal records left in the cache's staging directory."""
    d = os.path.join(cache, "staging")
    if not os.path.isdir(d):
        return []
    return sorted(n for n in os.listdir(d)
                  if n.startswith("copyin-") and n.endswith(".job"))


def status_of(path):
    return os.getxattr(path, "user.mail.status").decode()


def settled(account, cache, folder, count):
    """Waits until the journal is empty and the folder holds `count`
    messages on the server; returns the fetch."""
    def done():
        if records(cache):
            return None
        got = account.fetch(folder)
        return got if len(got) >= count else None
    return poll_until(done, f"{count} message(s) in {folder} and an empty "
                      f"journal", APPEND_DEADLINE)


def wait_killed(m):
    try:
        rc = m.proc.wait(timeout=APPEND_DEADLINE)
    except Exception:
        pytest.fail(f"mailfs did not reach its fault point; stderr:\n"
                    f"{m.stderr()}")
    assert rc == -signal.SIGKILL, f"mailfs exited {rc}:\n{m.stderr()}"
    m.kill()   # the lazy unmount of what the kernel still holds


@pytest.mark.parametrize("step", KILL_STEPS)
def test_kill_at_each_step_appends_exactly_once(account, corpus, mount,
                                                tmp_path, step):
    msg = keyed(corpus)["alternative"]
    other = keyed(corpus)["plain"]
    with account.client() as c:
        c.create("Work")
    cache = str(tmp_path / "cache")
    m = mount(account, cache_dir=cache,
              env={"MAILFS_TEST_KILL_AT": step})
    work = os.path.join(m.path, "Work")
    assert files_in(work) == []
    try:
        with open(os.path.join(work, "incoming.eml"), "wb") as f:
            f.write(msg.raw)
    except OSError:
        # Killed inside close(): the caller is told, yet the bytes were
        # already on disk and are appended all the same.
        assert step == "copyin-journaled"
    wait_killed(m)
    assert len(records(cache)) == 1, os.listdir(os.path.join(cache,
                                                             "staging"))

    m2 = mount(account, cache_dir=cache)
    work = os.path.join(m2.path, "Work")
    server = settled(account, cache, "Work", 1)
    assert [i["raw"] for i in server.values()] == [msg.raw]
    [name] = poll_until(lambda: [n for n in files_in(work)
                                 if n != "incoming.eml"] or None,
                        "the derived name", APPEND_DEADLINE)
    assert NAME_RE.match(name), name
    # A later copy-in goes through after it: the stager went past it.
    with open(os.path.join(work, "later.eml"), "wb") as f:
        f.write(other.raw)
    settled(account, cache, "Work", 2)
    m2.unmount()
    assert Counter(sha(i["raw"]) for i in account.fetch("Work").values()) \
        == Counter([sha(msg.raw), sha(other.raw)])
    assert records(cache) == []


def test_offline_copy_in_survives_unmount(account, corpus, mount, proxies,
                                          tmp_path):
    msg = keyed(corpus)["subject_b"]
    proxy = proxies(account.server.imaps_port)
    cache = str(tmp_path / "cache")
    m = mount(account, source=proxy_url(account, proxy), cache_dir=cache,
              options=["timeout=5"])
    inbox = os.path.join(m.path, "INBOX")
    assert files_in(inbox) == []
    proxy.down()
    path = os.path.join(inbox, "offline.eml")
    with open(path, "wb") as f:
        f.write(msg.raw)
    os.utime(path, (1600000000, 1600000000))
    os.setxattr(path, "user.mail.flags", b"\\Flagged")
    assert files_in(inbox) == ["offline.eml"]
    assert status_of(path) == "pending"
    m.unmount()   # the last try fails: the server is away
    assert account.fetch("INBOX") == {}
    assert len(records(cache)) == 1

    # Mounted again from the cache while the server is still away: the
    # file is listed, still pending.
    m = mount(account, source=proxy_url(account, proxy), cache_dir=cache,
              options=["timeout=5"])
    path = os.path.join(m.path, "INBOX", "offline.eml")
    assert files_in(os.path.join(m.path, "INBOX")) == ["offline.eml"]
    assert status_of(path) == "pending"
    assert int(os.stat(path).st_mtime) == 1600000000
    assert os.getxattr(path, "user.mail.flags") == b"\\Flagged"
    m.unmount()
    assert account.fetch("INBOX") == {}

    proxy.up()
    m2 = mount(account, source=proxy_url(account, proxy), cache_dir=cache)
    server = settled(account, cache, "INBOX", 1)
    [info] = server.values()
    assert info["raw"] == msg.raw
    assert info["internaldate"] == 1600000000
    assert "\\Flagged" in info["flags"]
    m2.unmount()
    assert len(account.fetch("INBOX")) == 1


def test_copy_in_appended_when_server_returns(account, corpus, mount,
                                              proxies, tmp_path):
    msg = keyed(corpus)["plain"]
    proxy = proxies(account.server.imaps_port)
    cache = str(tmp_path / "cache")
    m = mount(account, source=proxy_url(account, proxy), cache_dir=cache,
              options=["timeout=5"])
    inbox = os.path.join(m.path, "INBOX")
    assert files_in(inbox) == []
    proxy.down()
    path = os.path.join(inbox, "later.eml")
    with open(path, "wb") as f:
        f.write(msg.raw)
    # At least one try fails while the server is away.
    poll_until(lambda: "cannot append later.eml" in m.stderr(),
               "a failed try in the log", APPEND_DEADLINE)
    assert status_of(path) == "pending"
    proxy.up()
    server = settled(account, cache, "INBOX", 1)
    assert [i["raw"] for i in server.values()] == [msg.raw]
    m.unmount()
    assert len(account.fetch("INBOX")) == 1


def test_refused_copy_in_is_kept_with_reason_and_not_retried(
        account, corpus, mount, tmp_path):
    msg = keyed(corpus)["plain"]
    other = keyed(corpus)["alternative"]
    with account.client() as c:
        c.create("Work")
    cache = str(tmp_path / "cache")
    m = mount(account, cache_dir=cache)
    work = os.path.join(m.path, "Work")
    assert files_in(work) == []
    with account.client() as c:
        c.delete("Work")
    path = os.path.join(work, "orphan.eml")
    with open(path, "wb") as f:
        f.write(msg.raw)
    status = poll_until(lambda: status_of(path).startswith("failed") and
                        status_of(path), "the refusal in user.mail.status",
                        APPEND_DEADLINE)
    # The server's own words.
    assert re.search(r"(?i)mailbox|exist", status), status
    assert "the server refused orphan.eml" in m.stderr()
    assert files_in(work) == ["orphan.eml"]
    m.unmount()
    assert len(records(cache)) == 1

    # Where it was meant to go exists again, but a refusal stands until
    # the file is changed: after a remount it is still kept, not sent.
    with account.client() as c:
        c.create("Work")
    m2 = mount(account, cache_dir=cache)
    work = os.path.join(m2.path, "Work")
    path = os.path.join(work, "orphan.eml")
    assert status_of(path) == status
    with open(os.path.join(work, "second.eml"), "wb") as f:
        f.write(other.raw)
    poll_until(lambda: "second.eml" not in files_in(work),
               "the second copy-in appended", APPEND_DEADLINE)
    assert [i["raw"] for i in account.fetch("Work").values()] == [other.raw]
    assert status_of(path) == status
    assert "the server refused" not in m2.stderr()

    # Renaming it is asking again.
    os.rename(path, os.path.join(work, "retry.eml"))
    server = settled(account, cache, "Work", 2)
    assert sorted(i["raw"] for i in server.values()) == \
        sorted([msg.raw, other.raw])
    m2.unmount()


def test_rsync_aX_restore_twice_creates_each_message_once(account, mount,
                                                          tmp_path):
    msgs = small_corpus()
    account.seed(msgs)
    source = account.fetch("INBOX")
    backup, m = _backup_then_remount(account, mount, tmp_path)
    binbox = os.path.join(backup, "INBOX")
    bnames = files_in(binbox)
    assert len(bnames) == len(msgs)
    # The backup carries the old UIDs along.
    assert all(os.getxattr(os.path.join(binbox, n), "user.mail.uid")
               for n in bnames)

    target = os.path.join(m.path, "Restore")
    run(["rsync", "-aX", binbox + "/", target + "/"])
    wait_for_server_count(account, "Restore", len(msgs))
    poll_until(lambda: files_in(target) == bnames and
               all(_has_uid(os.path.join(target, n)) for n in bnames),
               "the restored messages under their old names",
               APPEND_DEADLINE)

    r = run(["rsync", "-aX", "--itemize-changes", "--stats",
             binbox + "/", target + "/"])
    out = r.stdout.decode(errors="replace")
    assert re.search(r"Number of regular files transferred: 0\b", out), out
    assert files_in(target) == bnames
    m.unmount()   # appends anything still staged
    restored = account.fetch("Restore")
    assert len(restored) == len(msgs)
    assert Counter(sha(i["raw"]) for i in restored.values()) == \
        Counter(sha(i["raw"]) for i in source.values())
    assert Counter(i["internaldate"] for i in restored.values()) == \
        Counter(i["internaldate"] for i in source.values())
