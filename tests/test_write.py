"""Integration tests: changing the mailbox through a mailfs mount.

rm, mv, mkdir, rmdir, folder renames, flags, copying messages in, backups
and restores, and changes made by other clients.  Every effect is checked
on the server over a separate imaplib connection (account.client(),
account.fetch()), not only through the mount.

Copied-in files are appended about a second after they are closed and
left alone, so those tests poll the server with generous deadlines;
nothing here depends on how fast the machine is.
"""

import email.utils
import errno
import os
import queue
import re
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter

import pytest

import corpus as corpus_mod
from conftest import message_files, read_bytes
from helpers import files_in, poll_until, proxy_url, sha, uid_of
from mailserver import mutf7_encode

NAME_RE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2}_\d{4})_(?P<slug>.+)_(?P<hash>[0-9a-f]{8})"
    r"(?:~(?P<n>\d+))?\.eml$")

# Long enough for a loaded machine; polls end as soon as the state is seen.
APPEND_DEADLINE = 90
CHANGE_DEADLINE = 20


# ---------------------------------------------------------------- helpers

def flags_of(path):
    return set(os.getxattr(path, "user.mail.flags").decode().split())


def wait_for(predicate, what, timeout=APPEND_DEADLINE):
    """Polls predicate() until it returns something true; returns that."""
    return poll_until(predicate, what, timeout)


def server_folders(account):
    """{unicode '/'-path: set of LIST flags}"""
    with account.client() as c:
        return {name: flags for name, flags, _ in c.list()}


def server_raw_folders(account):
    with account.client() as c:
        return {raw for _, _, raw in c.list()}


def clean(flags):
    return set(flags) - {"\\Recent"}


def snapshot(account, folder="INBOX"):
    """{uid: (bytes, size, INTERNALDATE, flags)} on the server."""
    return {uid: (i["raw"], i["size"], i["internaldate"],
                  frozenset(clean(i["flags"])))
            for uid, i in account.fetch(folder).items()}


def messages_by_content(account, folder):
    """Counter of (sha of the bytes, INTERNALDATE, flags) on the server."""
    return Counter((sha(i["raw"]), i["internaldate"],
                    frozenset(clean(i["flags"])))
                   for i in account.fetch(folder).values())


def wait_for_server_count(account, folder, count, timeout=APPEND_DEADLINE):
    """Waits until folder holds at least `count` messages; returns the
    fetch (with bodies)."""
    def enough():
        got = account.fetch(folder)
        return got if len(got) >= count else None
    return wait_for(enough, f"{count} message(s) in {folder} on the server",
                    timeout)


def date_header_epoch(raw):
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    m = re.search(r"(?im)^Date:[ \t]*(.+(?:\r\n[ \t].*)*)", head)
    return int(email.utils.parsedate_to_datetime(
        m.group(1).replace("\r\n", "")).timestamp())


def run(argv, timeout=300, check=True):
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    if check:
        assert r.returncode == 0, \
            f"{' '.join(argv)} exited {r.returncode}:\n" \
            f"{r.stderr.decode(errors='replace')}"
    return r


def expect_errno(code, func, *args):
    with pytest.raises(OSError) as info:
        func(*args)
    assert info.value.errno == code, \
        f"expected {errno.errorcode[code]}, got " \
        f"{errno.errorcode.get(info.value.errno, info.value.errno)}: " \
        f"{info.value}"


def write_local(path, data, mtime=None, flags=None):
    with open(path, "wb") as f:
        f.write(data)
    if flags is not None:
        os.setxattr(path, "user.mail.flags", flags.encode())
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def small_corpus():
    return corpus_mod.build(attachment_size=200 * 1024)


def keyed(corpus):
    return corpus_mod.by_key(corpus)


class SlowLink:
    """A TCP proxy on 127.0.0.1 that delays everything the server sends by
    `delay` seconds (a slow network), so that states which last one round
    trip last long enough to be seen.  Use as a context manager."""

    def __init__(self, port, delay):
        self.upstream = ("127.0.0.1", port)
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.closed = True
        for s in [self.listener] + self.sockets:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.upstream, timeout=30)
                server.settimeout(None)
            except OSError:
                return
            self.sockets += [client, server]
            held = queue.Queue()
            for target in ((self._pump, client, server, None),
                           (self._pump, server, client, held),
                           (self._release, held, client)):
                threading.Thread(target=target[0], args=target[1:],
                                 daemon=True).start()

    def _pump(self, src, dst, held):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if held is not None:
                held.put((time.monotonic() + self.delay, data))
            elif data:
                try:
                    dst.sendall(data)
                except OSError:
                    data = b""
            if not data:
                if held is None:
                    _shut(dst)
                return

    @staticmethod
    def _release(held, dst):
        while True:
            due, data = held.get()
            time.sleep(max(0.0, due - time.monotonic()))
            if not data:
                _shut(dst)
                return
            try:
                dst.sendall(data)
            except OSError:
                _shut(dst)
                return


def _shut(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# ---------------------------------------------------------------- rm

def test_rm_removes_exactly_that_message(account, corpus, mount):
    k = keyed(corpus)
    uids = account.seed([k["plain"], k["alternative"], k["utf8body"]])
    m = mount(account)
    inbox = os.path.join(m.path, "INBOX")
    by_uid = {uid_of(os.path.join(inbox, n)): n for n in files_in(inbox)}
    victim = by_uid[uids["alternative"]]
    run(["rm", os.path.join(inbox, victim)])
    server = account.fetch("INBOX")
    assert set(server) == {uids["plain"], uids["utf8body"]}
    assert server[uids["plain"]]["raw"] == k["plain"].raw
    assert server[uids["utf8body"]]["raw"] == k["utf8body"].raw
    assert not any("\\Deleted" in i["flags"] for i in server.values())
    assert victim not in os.listdir(inbox)
    assert len(files_in(inbox)) == 2


def test_rm_spares_messages_others_marked_deleted(account, corpus, mount):
    k = keyed(corpus)
    uids = account.seed([k["plain"], k["alternative"], k["utf8body"]])
    m = mount(account)
    inbox = os.path.join(m.path, "INBOX")
    names = {uid_of(os.path.join(inbox, n)): n for n in files_in(inbox)}
    with account.client() as c:
        c.store("INBOX", uids["plain"], ["\\Deleted"])
    os.unlink(os.path.join(inbox, names[uids["utf8body"]]))
    server = account.fetch("INBOX")
    assert set(server) == {uids["plain"], uids["alternative"]}
    assert "\\Deleted" in server[uids["plain"]]["flags"]
    assert server[uids["plain"]]["raw"] == k["plain"].raw
    assert "\\Deleted" not in server[uids["alternative"]]["flags"]


def test_rm_with_trash_moves_to_trash(account, corpus, mount):
    k = keyed(corpus)
    with account.client() as c:
        c.create("Trash")
    uids = account.seed([k["plain"], k["subject_b"]])
    before = account.fetch("INBOX")
    m = mount(account, options=["trash=Trash"])
    inbox = os.path.join(m.path, "INBOX")
    names = {uid_of(os.path.join(inbox, n)): n for n in files_in(inbox)}
    victim = names[uids["subject_b"]]
    run(["rm", os.path.join(inbox, victim)])
    assert set(account.fetch("INBOX", body=False)) == {uids["plain"]}
    trash = account.fetch("Trash")
    assert len(trash) == 1
    [moved] = trash.values()
    assert moved["raw"] == k["subject_b"].raw
    assert moved["internaldate"] == before[uids["subject_b"]]["internaldate"]
    assert "\\Deleted" not in moved["flags"]
    assert victim not in os.listdir(inbox)
    # Trash was never listed through this mount: its first listing is fresh.
    assert files_in(os.path.join(m.path, "Trash")) == [victim]


def test_rm_with_nested_trash_folder(account, corpus, mount):
    """trash= names a folder by its path in the mount, as for
    "[Gmail]/Trash" or "INBOX/Trash" on real servers."""
    k = keyed(corpus)
    with account.client() as c:
        c.create("Mülleimer/Gelöscht")
    uids = account.seed([k["plain"], k["subject_q"]])
    m = mount(account, options=["trash=Mülleimer/Gelöscht"])
    inbox = os.path.join(m.path, "INBOX")
    names = {uid_of(os.path.join(inbox, n)): n for n in files_in(inbox)}
    os.unlink(os.path.join(inbox, names[uids["subject_q"]]))
    assert set(account.fetch("INBOX", body=False)) == {uids["plain"]}
    trash = account.fetch("Mülleimer/Gelöscht")
    assert [i["raw"] for i in trash.values()] == [k["subject_q"].raw]


@pytest.mark.parametrize("how", ["rm", "rm-to-trash", "mv"])
def test_rm_and_mv_of_a_message_another_client_expunged(account, corpus,
                                                        mount, how):
    """The server answers OK to UID STORE, UID EXPUNGE and UID MOVE of a
    UID that is gone: the user must see ENOENT, not success, and the stale
    name must leave the listing."""
    k = keyed(corpus)
    with account.client() as c:
        c.create("Work")
        c.create("Trash")
    uids = account.seed([k["plain"], k["subject_b"]])
    options = ["refresh=3600"] + (["trash=Trash"] if how == "rm-to-trash"
                                  else [])
    m = mount(account, options=options)
    inbox = os.path.join(m.path, "INBOX")
    names = {uid_of(os.path.join(inbox, n)): n for n in files_in(inbox)}
    assert files_in(os.path.join(m.path, "Work")) == []
    victim = names[uids["subject_b"]]
    with account.client() as c:
        c.expunge_uid("INBOX", uids["subject_b"])
    with pytest.raises(FileNotFoundError):
        if how == "mv":
            os.rename(os.path.join(inbox, victim),
                      os.path.join(m.path, "Work", victim))
        else:
            os.unlink(os.path.join(inbox, victim))
    assert victim not in os.listdir(inbox)
    assert files_in(inbox) == [names[uids["plain"]]]
    assert set(account.fetch("INBOX", body=False)) == {uids["plain"]}
    assert account.fetch("Work", body=False) == {}
    assert account.fetch("Trash", body=False) == {}


# ---------------------------------------------------------------- mv

def test_mv_moves_message_to_other_folder(account, corpus, mount):
    k = keyed(corpus)
    with account.client() as c:
        c.create("Work")
        uid = c.append("INBOX", k["utf8body"].raw,
                       flags=["\\Seen", "\\Flagged", "$Label"],
                       date=k["utf8body"].internaldate)
        other = c.append("INBOX", k["plain"].raw, date=k["plain"].internaldate)
    before = account.fetch("INBOX")[uid]
    m = mount(account)
    inbox = os.path.join(m.path, "INBOX")
    work = os.path.join(m.path, "Work")
    assert files_in(work) == []
    name = [n for n in files_in(inbox)
            if uid_of(os.path.join(inbox, n)) == uid][0]
    run(["mv", os.path.join(inbox, name), work + "/"])
    assert set(account.fetch("INBOX", body=False)) == {other}
    target = account.fetch("Work")
    assert len(target) == 1
    [moved] = target.values()
    assert moved["raw"] == before["raw"] == k["utf8body"].raw
    assert clean(moved["flags"]) == clean(before["flags"]) == \
        {"\\Seen", "\\Flagged", "$Label"}
    assert moved["internaldate"] == before["internaldate"]
    assert name not in os.listdir(inbox)
    assert files_in(work) == [name]
    assert read_bytes(os.path.join(work, name)) == k["utf8body"].raw
    assert flags_of(os.path.join(work, name)) - {"\\Recent"} == \
        {"\\Seen", "\\Flagged", "$Label"}


def test_failed_mv_keeps_source(account, corpus, mount):
    k = keyed(corpus)
    with account.client() as c:
        c.create("Work")
    uids = account.seed([k["plain"]])
    before = account.fetch("INBOX")
    m = mount(account)
    inbox = os.path.join(m.path, "INBOX")
    work = os.path.join(m.path, "Work")
    assert "Work" in os.listdir(m.path)
    assert files_in(work) == []
    [name] = files_in(inbox)
    with account.client() as c:
        c.delete("Work")
    assert "Work" not in server_folders(account)
    r = run(["mv", os.path.join(inbox, name), work + "/"], check=False)
    assert r.returncode != 0, "mv into a folder deleted on the server " \
        "succeeded"
    after = account.fetch("INBOX")
    assert set(after) == {uids["plain"]}
    assert after[uids["plain"]]["raw"] == k["plain"].raw
    assert clean(after[uids["plain"]]["flags"]) == \
        clean(before[uids["plain"]]["flags"])
    assert "\\Deleted" not in after[uids["plain"]]["flags"]
    assert "Work" not in server_folders(account)
    assert name in os.listdir(inbox)
    assert read_bytes(os.path.join(inbox, name)) == k["plain"].raw


def test_mv_within_folder_refused(account, corpus, mount):
    account.seed(corpus[:1])
    m = mount(account)
    inbox = os.path.join(m.path, "INBOX")
    [name] = files_in(inbox)
    expect_errno(errno.EPERM, os.rename, os.path.join(inbox, name),
                 os.path.join(inbox, "renamed.eml"))
    assert files_in(inbox) == [name]
    [info] = account.fetch("INBOX").values()
    assert info["raw"] == corpus[0].raw


# ---------------------------------------------------------------- folders

def test_mkdir_creates_folders(account, mount):
    m = mount(account)
    before = server_folders(account)
    os.mkdir(os.path.join(m.path, "Projekt"))
    os.mkdir(os.path.join(m.path, "Entwürfe"))
    raw = server_raw_folders(account)
    assert "Projekt" in raw
    assert "Entw&APw-rfe" in raw
    after = server_folders(account)
    assert set(after) == set(before) | {"Projekt", "Entwürfe"}
    assert "\\Noselect" not in after["Entwürfe"]
    top = os.listdir(m.path)
    assert "Projekt" in top and "Entwürfe" in top
    assert os.listdir(os.path.join(m.path, "Entwürfe")) == []
    expect_errno(errno.EEXIST, os.mkdir, os.path.join(m.path, "Projekt"))


def test_mkdir_p_nested(account, mount):
    m = mount(account)
    run(["mkdir", "-p", os.path.join(m.path, "A", "B", "C")])
    run(["mkdir", "-p", os.path.join(m.path, "Entwürfe", "Ärger & Co")])
    folders = server_folders(account)
    for name in ("A", "A/B", "A/B/C", "Entwürfe", "Entwürfe/Ärger & Co"):
        assert name in folders, (name, sorted(folders))
    raw = server_raw_folders(account)
    assert "A/B/C" in raw
    assert "Entw&APw-rfe/" + mutf7_encode("Ärger & Co") in raw
    assert "Entw&APw-rfe/&AMQ-rger &- Co" in raw
    assert os.listdir(os.path.join(m.path, "A", "B")) == ["C"]
    assert os.path.isdir(os.path.join(m.path, "Entwürfe", "Ärger & Co"))


def test_rmdir_deletes_empty_folder(account, mount):
    with account.client() as c:
        c.create("Old")
        c.create("Keep")
    m = mount(account)
    os.mkdir(os.path.join(m.path, "Fresh"))
    assert "Fresh" in server_folders(account)
    os.rmdir(os.path.join(m.path, "Old"))
    os.rmdir(os.path.join(m.path, "Fresh"))
    folders = server_folders(account)
    assert "Old" not in folders and "Fresh" not in folders
    assert "Keep" in folders
    top = os.listdir(m.path)
    assert "Old" not in top and "Fresh" not in top and "Keep" in top


def test_rmdir_of_non_empty_folder_fails(account, corpus, mount):
    k = keyed(corpus)
    account.seed([k["plain"]], folder="Full")
    with account.client() as c:
        c.create("Late")
    m = mount(account)
    expect_errno(errno.ENOTEMPTY, os.rmdir, os.path.join(m.path, "Full"))
    # Empty when the mount listed it, but not on the server any more.
    late = os.path.join(m.path, "Late")
    assert files_in(late) == []
    with account.client() as c:
        late_uid = c.append("Late", k["alternative"].raw)
    expect_errno(errno.ENOTEMPTY, os.rmdir, late)
    folders = server_folders(account)
    assert "Full" in folders and "Late" in folders
    [full] = account.fetch("Full").values()
    assert full["raw"] == k["plain"].raw
    late_msgs = account.fetch("Late")
    assert set(late_msgs) == {late_uid}
    assert late_msgs[late_uid]["raw"] == k["alternative"].raw


def test_rmdir_of_folder_with_subfolders_fails(account, mount):
    with account.client() as c:
        c.create("Parent")
        c.create("Parent/Child")
    m = mount(account)
    expect_errno(errno.ENOTEMPTY, os.rmdir, os.path.join(m.path, "Parent"))
    folders = server_folders(account)
    assert "Parent" in folders and "Parent/Child" in folders


def test_rm_r_removes_folder_tree(account, corpus, mount):
    k = keyed(corpus)
    account.seed([k["plain"], k["alternative"]], folder="Old")
    account.seed([k["subject_b"]], folder="Old/Sub")
    account.seed([k["utf8body"]])
    m = mount(account)
    run(["rm", "-r", os.path.join(m.path, "Old")])
    folders = server_folders(account)
    assert not [f for f in folders if f == "Old" or f.startswith("Old/")], \
        sorted(folders)
    assert [i["raw"] for i in account.fetch("INBOX").values()] == \
        [k["utf8body"].raw]
    assert "Old" not in os.listdir(m.path)


def test_rm_r_folder_under_implied_parent(account, mount):
    """X exists on the server only as the parent of X/Y (\\Noselect);
    once X/Y is gone so is X, and rm -r X must still succeed."""
    with account.client() as c:
        c.create("X/Y")
    folders = server_folders(account)
    assert "\\Noselect" in folders["X"]
    m = mount(account)
    assert os.listdir(os.path.join(m.path, "X")) == ["Y"]
    expect_errno(errno.ENOTEMPTY, os.rmdir, os.path.join(m.path, "X"))
    assert "X/Y" in server_folders(account)
    run(["rm", "-r", os.path.join(m.path, "X")])
    folders = server_folders(account)
    assert "X" not in folders and "X/Y" not in folders, sorted(folders)
    assert "X" not in os.listdir(m.path)


def test_rename_folder_with_children(account, corpus, mount):
    k = keyed(corpus)
    with account.client() as c:
        c.create("Projects")
        c.create("Projects/2026")
        c.create("Old")
        top_uid = c.append("Projects", k["plain"].raw,
                           flags=["\\Seen"], date=k["plain"].internaldate)
        sub_uid = c.append("Projects/2026", k["subject_q"].raw,
                           flags=["$Done"], date=k["subject_q"].internaldate)
    m = mount(account)
    projects = os.path.join(m.path, "Projects")
    [top_name] = files_in(projects)
    [sub_name] = files_in(os.path.join(projects, "2026"))

    os.rename(projects, os.path.join(m.path, "Archiv Ü"))
    folders = server_folders(account)
    assert "Projects" not in folders and "Projects/2026" not in folders
    assert "Archiv Ü" in folders and "Archiv Ü/2026" in folders
    assert mutf7_encode("Archiv Ü") + "/2026" in server_raw_folders(account)
    top = account.fetch("Archiv Ü")
    sub = account.fetch("Archiv Ü/2026")
    assert top[top_uid]["raw"] == k["plain"].raw
    assert sub[sub_uid]["raw"] == k["subject_q"].raw
    assert clean(sub[sub_uid]["flags"]) == {"$Done"}
    renamed = os.path.join(m.path, "Archiv Ü")
    assert "Projects" not in os.listdir(m.path)
    assert files_in(renamed) == [top_name]
    assert files_in(os.path.join(renamed, "2026")) == [sub_name]
    assert read_bytes(os.path.join(renamed, top_name)) == k["plain"].raw
    assert read_bytes(os.path.join(renamed, "2026", sub_name)) == \
        k["subject_q"].raw

    # mv DIR OTHERDIR/
    run(["mv", renamed, os.path.join(m.path, "Old") + "/"])
    folders = server_folders(account)
    assert "Archiv Ü" not in folders and "Archiv Ü/2026" not in folders
    assert "Old/Archiv Ü" in folders and "Old/Archiv Ü/2026" in folders
    sub = account.fetch("Old/Archiv Ü/2026")
    assert sub[sub_uid]["raw"] == k["subject_q"].raw
    moved = os.path.join(m.path, "Old", "Archiv Ü")
    assert os.listdir(os.path.join(m.path, "Old")) == ["Archiv Ü"]
    assert read_bytes(os.path.join(moved, "2026", sub_name)) == \
        k["subject_q"].raw
    assert read_bytes(os.path.join(moved, top_name)) == k["plain"].raw


@pytest.mark.parametrize("bad", ["bad\nname", "bad\rname", "crlf\r\n",
                                 "\n"])
def test_folder_names_with_line_breaks_refused(account, mount, bad):
    with account.client() as c:
        c.create("Existing")
    m = mount(account)
    before = server_raw_folders(account)
    expect_errno(errno.EINVAL, os.mkdir, os.path.join(m.path, bad))
    expect_errno(errno.EINVAL, os.mkdir,
                 os.path.join(m.path, "Existing", bad))
    expect_errno(errno.EINVAL, os.rename, os.path.join(m.path, "Existing"),
                 os.path.join(m.path, bad))
    assert server_raw_folders(account) == before
    assert os.path.isdir(os.path.join(m.path, "Existing"))
    # The refusal is about the name: a plain one still works.
    os.mkdir(os.path.join(m.path, "Existing", "fine"))
    assert "Existing/fine" in server_folders(account)


def test_delimiter_in_folder_name_refused(make_account, mount):
    account = make_account("dot")
    with account.client() as c:
        assert c.delimiter == "."
        c.create("Existing")
    m = mount(account)
    before = server_raw_folders(account)
    expect_errno(errno.EINVAL, os.mkdir, os.path.join(m.path, "a.b"))
    expect_errno(errno.EINVAL, os.mkdir, os.path.join(m.path, ".hidden"))
    expect_errno(errno.EINVAL, os.rename, os.path.join(m.path, "Existing"),
                 os.path.join(m.path, "x.y"))
    assert server_raw_folders(account) == before
    # Nesting uses the server's delimiter.
    run(["mkdir", "-p", os.path.join(m.path, "Projects", "2026")])
    raw = server_raw_folders(account)
    assert "Projects.2026" in raw
    assert raw == before | {"Projects", "Projects.2026"}


# ---------------------------------------------------------------- immutability

def test_overwriting_a_message_is_refused(account, corpus, mount):
    k = keyed(corpus)
    account.seed([k["plain"]])
    before = snapshot(account)
    m = mount(account)
    inbox = os.path.join(m.path, "INBOX")
    [name] = files_in(inbox)
    path = os.path.join(inbox, name)
    st = os.stat(path)
    for mode in ("wb", "r+b", "ab"):
        expect_errno(errno.EPERM, open, path, mode)
    expect_errno(errno.EPERM, os.truncate, path, 0)
    expect_errno(errno.EPERM, os.truncate, path, 10)
    expect_errno(errno.EPERM, os.utime, path,
                 (st.st_mtime + 3600, st.st_mtime + 3600))
    r = subprocess.run(["sh", "-c", 'echo overwritten > "$1"', "sh", path],
                       stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=60)
    assert r.returncode != 0
    assert snapshot(account) == before
    assert read_bytes(path) == k["plain"].raw
    st2 = os.stat(path)
    assert (st2.st_size, st2.st_mtime) == (st.st_size, st.st_mtime)
    assert files_in(inbox) == [name]


# ---------------------------------------------------------------- flags

def test_set_flags_through_xattr(account, corpus, mount):
    k = keyed(corpus)
    uids = account.seed([k["plain"], k["alternative"]])
    m = mount(account)
    inbox = os.path.join(m.path, "INBOX")
    names = {uid_of(os.path.join(inbox, n)): n for n in files_in(inbox)}
    path = os.path.join(inbox, names[uids["alternative"]])
    other_before = account.flags()[uids["plain"]]

    os.setxattr(path, "user.mail.flags", b"\\Seen \\Flagged $Work")
    server = account.flags()
    assert server[uids["alternative"]] == {"\\Seen", "\\Flagged", "$Work"}
    assert server[uids["plain"]] == other_before
    assert flags_of(path) - {"\\Recent"} == {"\\Seen", "\\Flagged", "$Work"}

    os.setxattr(path, "user.mail.flags", b"\\Answered")
    assert account.flags()[uids["alternative"]] == {"\\Answered"}
    assert flags_of(path) - {"\\Recent"} == {"\\Answered"}

    os.setxattr(path, "user.mail.flags", b"")
    assert account.flags()[uids["alternative"]] == set()

    run(["setfattr", "-n", "user.mail.flags", "-v", "\\Seen $Later", path])
    assert account.flags()[uids["alternative"]] == {"\\Seen", "$Later"}
    r = run(["getfattr", "-d", path])
    assert "user.mail.flags=" in r.stdout.decode(), r.stdout

    # A report, not a setting: a restore copies it along, and it changes
    # nothing.
    os.setxattr(path, "user.mail.uid", b"4711")
    os.setxattr(path, "user.mailfs.note", b"copied along")
    assert uid_of(path) == uids["alternative"]
    assert set(account.flags()) == set(uids.values())
    assert account.fetch("INBOX")[uids["alternative"]]["raw"] == \
        k["alternative"].raw

    # A fresh mount (no cache) reads them from the server.
    os.setxattr(path, "user.mail.flags", b"\\Flagged $Work")
    m.unmount()
    m2 = mount(account)
    path2 = os.path.join(m2.path, "INBOX", names[uids["alternative"]])
    assert flags_of(path2) - {"\\Recent"} == {"\\Flagged", "$Work"}


# ---------------------------------------------------------------- copy-in

def test_copy_in_appends_message(account, corpus, mount, tmp_path):
    k = keyed(corpus)
    msg = k["plain"]
    src = write_local(str(tmp_path / "incoming.eml"), msg.raw)
    m = mount(account)
    inbox = os.path.join(m.path, "INBOX")
    assert files_in(inbox) == []
    shutil.copyfile(src, os.path.join(inbox, "incoming.eml"))
    server = wait_for_server_count(account, "INBOX", 1)
    assert len(server) == 1
    [(uid, info)] = server.items()
    assert info["raw"] == msg.raw
    assert info["size"] == len(msg.raw)
    assert info["internaldate"] == date_header_epoch(msg.raw)
    assert clean(info["flags"]) == set()

    # Afterwards the folder shows it under its derived name.
    names = wait_for(lambda: [n for n in files_in(inbox)
                              if n != "incoming.eml"] or None,
                     "derived name in the listing")
    assert files_in(inbox) == names
    [name] = names
    match = NAME_RE.match(name)
    assert match, name
    assert match.group("date") == msg.name_prefix
    assert "quarterly-report" in match.group("slug")
    path = os.path.join(inbox, name)
    assert uid_of(path) == uid
    assert read_bytes(path) == msg.raw
    assert int(os.stat(path).st_mtime) == info["internaldate"]


def test_copy_in_of_big_message(account, corpus, mount, tmp_path):
    msg = keyed(corpus)["attachment"]
    assert len(msg.raw) > 3 * 1024 * 1024
    src = write_local(str(tmp_path / "big.eml"), msg.raw)
    m = mount(account)
    run(["cp", src, os.path.join(m.path, "INBOX") + "/"])
    server = wait_for_server_count(account, "INBOX", 1)
    [info] = server.values()
    assert info["size"] == len(msg.raw)
    assert sha(info["raw"]) == sha(msg.raw)
    inbox = os.path.join(m.path, "INBOX")
    [name] = wait_for(lambda: [n for n in files_in(inbox)
                               if n != "big.eml"],
                      "derived name in the listing")
    assert sha(read_bytes(os.path.join(inbox, name))) == sha(msg.raw)


def test_copy_in_is_visible_until_appended(account, corpus, mount):
    k = keyed(corpus)
    msg = k["alternative"]
    with account.client() as c:
        c.create("Work")
    m = mount(account)
    work = os.path.join(m.path, "Work")
    staged = os.path.join(work, "draft.eml")
    with open(staged, "wb") as f:
        f.write(msg.raw[:1000])
        f.flush()
        assert "draft.eml" in os.listdir(work)
        f.write(msg.raw[1000:])
        f.flush()
        # Still open: it is not complete, so nothing is appended yet.
        assert read_bytes(staged) == msg.raw
        assert os.stat(staged).st_size == len(msg.raw)
        assert account.fetch("Work") == {}
    server = wait_for_server_count(account, "Work", 1)
    assert [i["raw"] for i in server.values()] == [msg.raw]
    [name] = wait_for(lambda: [n for n in files_in(work)
                               if n != "draft.eml"],
                      "derived name in the listing")
    wait_for(lambda: "draft.eml" not in os.listdir(work),
             "staged name leaving the listing")
    assert files_in(work) == [name]
    assert NAME_RE.match(name) and "team-lunch-on-friday" in name, name
    assert read_bytes(os.path.join(work, name)) == msg.raw


def test_copy_in_never_vanishes_from_listing(account, corpus, mount):
    """From the copy to the listing of the appended message, the folder
    always shows the file: under the name it was written as, then under
    its derived name.  A slow link makes every step take a while."""
    msg = keyed(corpus)["subject_q"]
    with account.client() as c:
        c.create("Work")
    with SlowLink(account.server.imaps_port, delay=0.3) as link:
        m = mount(account, source=proxy_url(account, link))
        work = os.path.join(m.path, "Work")
        assert files_in(work) == []
        with open(os.path.join(work, "incoming.eml"), "wb") as f:
            f.write(msg.raw)
        seen = []
        deadline = time.monotonic() + APPEND_DEADLINE
        while True:
            # The listing itself (the folder holds no subfolders): a stat
            # after it may miss a name swapped for the derived one in
            # between, as after a rename anywhere.
            names = sorted(os.listdir(work))
            seen.append(names)
            if names and names != ["incoming.eml"] and _has_uid(
                    os.path.join(work, names[0])):
                break
            assert time.monotonic() < deadline, \
                f"no derived name after {APPEND_DEADLINE}s: {seen[-1]}"
            time.sleep(0.02)
        [name] = names
        assert NAME_RE.match(name) and "caf" in name, name
        gaps = [i for i, names in enumerate(seen) if not names]
        assert not gaps, \
            f"the copied-in message was missing from {len(gaps)} of " \
            f"{len(seen)} listings between its copy and its appearance " \
            f"under {name}"
        server = account.fetch("Work")
        assert [i["raw"] for i in server.values()] == [msg.raw]
        m.unmount()


def test_cp_without_date_header_uses_now(account, corpus, mount, tmp_path):
    msg = keyed(corpus)["nodate"]
    src = write_local(str(tmp_path / "memo.eml"), msg.raw)
    m = mount(account)
    start = time.time()
    run(["cp", src, os.path.join(m.path, "INBOX") + "/"])
    server = wait_for_server_count(account, "INBOX", 1)
    end = time.time()
    [info] = server.values()
    assert info["raw"] == msg.raw
    assert int(start) - 2 <= info["internaldate"] <= end + 2


def test_cp_a_sets_date_and_flags(account, corpus, mount, tmp_path):
    msg = keyed(corpus)["subject_b"]
    mtime = 1700000000   # 2023-11-14, unlike its Date header
    assert mtime != date_header_epoch(msg.raw)
    src = write_local(str(tmp_path / "restore.eml"), msg.raw, mtime=mtime,
                      flags="\\Flagged \\Seen $Project")
    m = mount(account)
    run(["cp", "-a", src, os.path.join(m.path, "INBOX") + "/"])
    server = wait_for_server_count(account, "INBOX", 1)
    [(uid, info)] = server.items()
    assert info["raw"] == msg.raw
    assert info["internaldate"] == mtime
    assert clean(info["flags"]) == {"\\Flagged", "\\Seen", "$Project"}
    inbox = os.path.join(m.path, "INBOX")
    names = wait_for(lambda: [n for n in files_in(inbox)
                              if n != "restore.eml"] or None,
                     "derived name in the listing")
    [name] = names
    path = os.path.join(inbox, name)
    assert uid_of(path) == uid
    assert int(os.stat(path).st_mtime) == mtime
    assert flags_of(path) - {"\\Recent"} == {"\\Flagged", "\\Seen",
                                             "$Project"}


def test_copied_out_message_keeps_its_name(account, corpus, mount, tmp_path):
    k = keyed(corpus)
    with account.client() as c:
        uid = c.append("INBOX", k["subject_b"].raw,
                       flags=["\\Answered", "$Label"],
                       date=k["subject_b"].internaldate)
        c.create("Copy")
    original = account.fetch("INBOX")[uid]
    original_state = snapshot(account)
    m = mount(account)
    inbox = os.path.join(m.path, "INBOX")
    [name] = files_in(inbox)
    out = tmp_path / "out"
    out.mkdir()
    run(["cp", "-a", os.path.join(inbox, name), str(out) + "/"])
    local = str(out / name)
    assert read_bytes(local) == k["subject_b"].raw
    assert set(os.getxattr(local, "user.mail.flags").decode().split()) == \
        {"\\Answered", "$Label"}

    copy = os.path.join(m.path, "Copy")
    run(["cp", "-a", local, copy + "/"])
    server = wait_for_server_count(account, "Copy", 1)
    [info] = server.values()
    assert info["raw"] == original["raw"]
    assert info["internaldate"] == original["internaldate"]
    assert clean(info["flags"]) == clean(original["flags"])
    # Same name, now as a message on the server (it has a UID).
    wait_for(lambda: _has_uid(os.path.join(copy, name)),
             "the appended message under its old name")
    assert files_in(copy) == [name]
    assert read_bytes(os.path.join(copy, name)) == k["subject_b"].raw
    # The original is untouched.
    assert snapshot(account) == original_state


def _has_uid(path):
    try:
        os.getxattr(path, "user.mail.uid")
        return True
    except OSError:
        return False


def test_mv_from_local_disk(account, corpus, mount, tmp_path):
    msg = keyed(corpus)["folded"]
    src = write_local(str(tmp_path / "local.eml"), msg.raw,
                      mtime=1600000000, flags="\\Seen $Moved")
    m = mount(account)
    run(["mv", src, os.path.join(m.path, "INBOX") + "/"])
    assert not os.path.exists(src)
    server = wait_for_server_count(account, "INBOX", 1)
    [info] = server.values()
    assert info["raw"] == msg.raw
    assert info["internaldate"] == 1600000000
    assert clean(info["flags"]) == {"\\Seen", "$Moved"}


def test_dot_files_wait_for_rename(account, corpus, mount):
    k = keyed(corpus)
    m = mount(account)
    inbox = os.path.join(m.path, "INBOX")
    hidden = os.path.join(inbox, ".partial.eml")
    with open(hidden, "wb") as f:
        f.write(k["plain"].raw)
    # A plain file written after it is appended; the hidden one stays.
    with open(os.path.join(inbox, "second.eml"), "wb") as f:
        f.write(k["alternative"].raw)
    server = wait_for_server_count(account, "INBOX", 1)
    assert [i["raw"] for i in server.values()] == [k["alternative"].raw]
    assert ".partial.eml" in os.listdir(inbox)
    assert read_bytes(hidden) == k["plain"].raw
    os.rename(hidden, os.path.join(inbox, "final.eml"))
    server = wait_for_server_count(account, "INBOX", 2)
    assert sorted(i["raw"] for i in server.values()) == \
        sorted([k["plain"].raw, k["alternative"].raw])
    wait_for(lambda: len(files_in(inbox)) == 2 and
             all(NAME_RE.match(n) for n in files_in(inbox)),
             "both messages under derived names")


def test_unmount_with_copy_in_the_server_refuses(account, corpus, mount,
                                                 tmp_path):
    """A copy-in whose APPEND keeps failing (its folder was deleted on the
    server) neither blocks the unmount nor is thrown away."""
    msg = keyed(corpus)["plain"]
    with account.client() as c:
        c.create("Work")
    cache = str(tmp_path / "cache-kept")
    m = mount(account, cache_dir=cache)
    work = os.path.join(m.path, "Work")
    assert files_in(work) == []
    with account.client() as c:
        c.delete("Work")
    with open(os.path.join(work, "orphan.eml"), "wb") as f:
        f.write(msg.raw)
    m.unmount()   # asserts that mailfs exits, with status 0
    assert "Work" not in server_folders(account)
    assert account.fetch("INBOX") == {}
    kept = [os.path.join(d, n) for d, _, names in os.walk(cache)
            for n in names]
    assert any(read_bytes(p) == msg.raw for p in kept), \
        f"the refused copy-in is gone; files under the cache: {kept}"


# ---------------------------------------------------------------- backups

def _seed_backup_source(account):
    msgs = small_corpus()
    account.seed(msgs)
    account.seed(msgs[:4], folder="Work")
    with account.client() as c:
        c.create("Empty")
    return msgs


def test_rsync_backup_second_run_transfers_nothing(account, mount, tmp_path):
    msgs = _seed_backup_source(account)
    m = mount(account)
    backup = str(tmp_path / "backup")
    run(["rsync", "-a", m.path + "/", backup + "/"])
    files = message_files(backup)
    assert files == message_files(m.path)
    assert len(files) == len(msgs) + 4
    assert os.path.isdir(os.path.join(backup, "Empty"))
    for folder in ("INBOX", "Work"):
        want = sorted(sha(i["raw"]) for i in account.fetch(folder).values())
        got = sorted(sha(read_bytes(os.path.join(backup, folder, n)))
                     for n in files_in(os.path.join(backup, folder)))
        assert got == want, folder
        for n in files_in(os.path.join(backup, folder)):
            a = os.stat(os.path.join(backup, folder, n))
            b = os.stat(os.path.join(m.path, folder, n))
            assert (a.st_size, int(a.st_mtime)) == \
                (b.st_size, int(b.st_mtime)), n

    def again(mnt):
        r = run(["rsync", "-a", "--itemize-changes", "--stats",
                 mnt.path + "/", backup + "/"])
        out = r.stdout.decode(errors="replace")
        transferred = [line for line in out.splitlines()
                       if re.match(r"^[<>c]f", line)]
        assert not transferred, out
        assert re.search(r"Number of regular files transferred: 0\b",
                         out), out
        assert message_files(backup) == files

    again(m)
    # The next day's backup: another mount, with a fresh cache.
    m.unmount()
    again(mount(account))


def _backup_then_remount(account, mount, tmp_path):
    """rsync -aX of a mount (flags travel in user.mail.flags), made by an
    earlier mount a day ago; returns (backup dir, a new mount)."""
    m = mount(account)
    backup = str(tmp_path / "backup")
    run(["rsync", "-aX", m.path + "/", backup + "/"])
    m.unmount()
    # Its directories carry the times of the mount it was made from.
    earlier = int(time.time()) - 86400
    for dirpath, _, _ in os.walk(backup):
        os.utime(dirpath, (earlier, earlier))
    return backup, mount(account)


def _complain(problems, r):
    if r.returncode != 0:
        problems.append(f"{' '.join(r.args)} exited {r.returncode}: "
                        f"{r.stderr.decode(errors='replace').strip()}")


def test_cp_a_restore_recreates_messages(account, mount, tmp_path):
    msgs = small_corpus()
    account.seed(msgs)
    with account.client() as c:
        extra = c.append("INBOX", msgs[1].raw,
                         flags=["\\Draft", "$Important"],
                         date=1600000000)
    source = messages_by_content(account, "INBOX")
    assert len(source) >= 3
    backup, m = _backup_then_remount(account, mount, tmp_path)
    binbox = os.path.join(backup, "INBOX")
    bnames = files_in(binbox)
    assert len(bnames) == len(msgs) + 1
    assert any("$Important" in os.getxattr(os.path.join(binbox, n),
                                           "user.mail.flags").decode()
               for n in bnames)

    problems = []
    restore = os.path.join(m.path, "Restore")
    os.mkdir(restore)
    assert "Restore" in server_folders(account)
    _complain(problems, run(["cp", "-a", binbox + "/.", restore + "/"],
                            check=False))
    wait_for_server_count(account, "Restore", len(bnames))
    wait_for(lambda: files_in(restore) == bnames and
             all(_has_uid(os.path.join(restore, n)) for n in bnames),
             "the restored messages under their old names")
    for n in bnames:
        a = os.stat(os.path.join(binbox, n))
        b = os.stat(os.path.join(restore, n))
        assert (a.st_size, int(a.st_mtime)) == (b.st_size, int(b.st_mtime)), n
        assert read_bytes(os.path.join(restore, n)) == \
            read_bytes(os.path.join(binbox, n)), n
    # Unmounting appends whatever is left: afterwards the count is final.
    m.unmount()
    restored = messages_by_content(account, "Restore")
    assert restored == messages_by_content(account, "INBOX") == source
    assert sum(restored.values()) == len(msgs) + 1
    assert extra in account.fetch("INBOX", body=False)
    assert not problems, problems


def test_rsync_restore_twice_creates_each_message_once(account, mount,
                                                       tmp_path):
    msgs = small_corpus()
    account.seed(msgs)
    source = account.fetch("INBOX")
    backup, m = _backup_then_remount(account, mount, tmp_path)
    binbox = os.path.join(backup, "INBOX")
    bnames = files_in(binbox)
    assert len(bnames) == len(msgs)

    problems = []
    target = os.path.join(m.path, "Restore2")
    _complain(problems, run(["rsync", "-a", binbox + "/", target + "/"],
                            check=False))
    assert "Restore2" in server_folders(account)
    wait_for_server_count(account, "Restore2", len(msgs))
    wait_for(lambda: files_in(target) == bnames and
             all(_has_uid(os.path.join(target, n)) for n in bnames),
             "the restored messages under their old names")

    r = run(["rsync", "-a", "--itemize-changes", "--stats",
             binbox + "/", target + "/"], check=False)
    _complain(problems, r)
    out = r.stdout.decode(errors="replace")
    assert re.search(r"Number of regular files transferred: 0\b", out), out
    assert not [line for line in out.splitlines()
                if re.match(r"^[<>c]f", line)], out
    assert files_in(target) == bnames
    m.unmount()   # appends anything still staged
    restored = account.fetch("Restore2")
    assert len(restored) == len(msgs)
    assert Counter(sha(i["raw"]) for i in restored.values()) == \
        Counter(sha(i["raw"]) for i in source.values())
    assert Counter(i["internaldate"] for i in restored.values()) == \
        Counter(i["internaldate"] for i in source.values())
    assert not problems, problems


# --------------------------------------------------------- other clients

def appears_then_leaves(account, directory, folder, msg, check_content):
    """Another client appends msg to folder: it shows up in the listing of
    directory (with its UID, and its bytes when check_content), then
    leaves it once expunged."""
    [first] = files_in(directory)
    with account.client() as c:
        uid = c.append(folder, msg.raw, date=msg.internaldate)
    [new] = wait_for(lambda: [n for n in files_in(directory) if n != first],
                     f"new message in the {folder} listing",
                     timeout=CHANGE_DEADLINE)
    assert uid_of(os.path.join(directory, new)) == uid
    if check_content:
        assert read_bytes(os.path.join(directory, new)) == msg.raw

    with account.client() as c:
        c.expunge_uid(folder, uid)
    wait_for(lambda: new not in os.listdir(directory),
             f"expunged message leaving the {folder} listing",
             timeout=CHANGE_DEADLINE)
    assert files_in(directory) == [first]


def test_new_mail_in_inbox_appears(account, corpus, mount):
    k = keyed(corpus)
    account.seed([k["plain"]])
    m = mount(account, options=["refresh=1"])
    appears_then_leaves(account, os.path.join(m.path, "INBOX"), "INBOX",
                        k["subject_q"], check_content=True)


def test_new_mail_in_inbox_appears_without_polling(account, corpus, mount):
    """INBOX is watched with IDLE: new mail shows up although the listing
    is far younger than the refresh period."""
    k = keyed(corpus)
    account.seed([k["plain"]])
    m = mount(account, options=["refresh=3600"])
    appears_then_leaves(account, os.path.join(m.path, "INBOX"), "INBOX",
                        k["grep"], check_content=False)


def test_changes_in_other_folder_appear(account, corpus, mount):
    k = keyed(corpus)
    account.seed([k["plain"]], folder="Work")
    m = mount(account, options=["refresh=1"])
    appears_then_leaves(account, os.path.join(m.path, "Work"), "Work",
                        k["folded"], check_content=True)
