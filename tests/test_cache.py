"""Integration tests of the cache: content blocks on disk, listings on disk,
offline mounts, and what survives corruption, crashes and recreated folders.

Tests that need the server to go away use a Dovecot of their own that can
be stopped and started again on the same ports; the others use the shared
one.  No assertion depends on the machine's speed: where mailfs works in
the background the tests poll with generous deadlines.
"""

import errno
import os
import random
import signal
import socket
import stat
import subprocess
import threading
import time

import pytest

from conftest import FUSERMOUNT, Account, is_mounted, read_bytes
from helpers import BLOCK_HEADER as HEADER
from helpers import (Background, assert_one_line, block_files, block_header,
                     files_in, poll_until, proxy_url, seed, sha,
                     sized_message, tmp_files, uid_of)
from mailserver import closed_port

MiB = 1024 * 1024                # also the block size
POLL_SECONDS = 180   # deadline for what mailfs does in the background


# ---------------------------------------------------------------- helpers

def make_message(tag, size=0, subject=None, minute=0):
    """A message whose bytes, name and Message-ID are determined by tag,
    about `size` bytes long; `minute` sets its Date."""
    rng = random.Random(tag)
    date = (f"Mon, 02 Jun 2025 {9 + minute // 60 % 12:02d}:"
            f"{minute % 60:02d}:00 +0000")
    return sized_message(rng, tag, size, subject or f"Cache test {tag}",
                         date, "cache.example")


def stats(mount):
    """user.mailfs.stats as {counter: int}."""
    text = os.getxattr(mount.path, "user.mailfs.stats").decode()
    out = {}
    for field in text.split():
        key, _, value = field.partition("=")
        out[key] = int(value)
    for key in ("fetched_bytes", "fetched_blocks", "checksum_failures",
                "evictions", "bytes_on_disk", "blocks_on_disk"):
        assert key in out, f"{key} missing from user.mailfs.stats: {text!r}"
    return out


def flags_of(path):
    return set(os.getxattr(path, "user.mail.flags").decode().split()) \
        - {"\\Recent"}


def by_uid(directory):
    """{uid: file name} of a mounted folder."""
    return {uid_of(os.path.join(directory, n)): n for n in files_in(directory)}


def snapshot(root):
    """Every directory and file under a mount, with sizes and times, as a
    sorted list (no file contents are read)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        out.append(("dir", rel))
        for n in sorted(filenames):
            st = os.stat(os.path.join(dirpath, n))
            out.append(("file", os.path.join(rel, n), st.st_size,
                        int(st.st_mtime)))
    return sorted(out)


def wait_for(what, check, timeout=POLL_SECONDS, interval=0.25):
    """Polls check() until it returns something true (OSError counts as
    not yet); returns that."""
    return poll_until(check, what, timeout, interval, tolerate=OSError)


def read_in_thread(path, offset=0, length=None, timeout=POLL_SECONDS):
    """Reads in a thread; returns ("ok", bytes) or ("error", OSError).
    Fails when the read neither succeeds nor fails within timeout."""
    def read():
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read() if length is None else f.read(length)

    return Background(read).join(timeout, f"reading {path}")


def flip_bytes(path):
    """Flips bytes in the data part of a block file (first, middle, last),
    leaving its header and size alone."""
    size = os.path.getsize(path)
    assert size > HEADER, f"{path}: a block without data"
    with open(path, "r+b") as f:
        for pos in sorted({HEADER, HEADER + (size - HEADER) // 2, size - 1}):
            f.seek(pos)
            b = f.read(1)
            f.seek(pos)
            f.write(bytes([b[0] ^ 0x5A]))


def mount_log(mount):
    return mount.output().decode(errors="replace")


# ------------------------------------------------------------ a private server

@pytest.fixture
def private_server(servers):
    """A Dovecot of the test's own: stop() and start() again keep the
    ports, so a mount made before the stop can reconnect after it."""
    with servers.private_dovecot("cache") as server:
        yield server


@pytest.fixture
def private_account(private_server, tmp_path):
    return Account(private_server, str(tmp_path / "accounts"))


def stop_server(server):
    server.stop()
    assert server.is_down(), "the private Dovecot still accepts connections"


# Mount options for a server that may be down: a short network deadline,
# and no POP3 fallback, so the mount is the offline IMAP view.
OFFLINE_OPTS = ["timeout=5", "pop3=none"]


# ------------------------------------------------------------ partial reads

@pytest.mark.parametrize("order", ["name", "inode"])
def test_files_read_in_a_row_fetch_the_next_ones_ahead(account, mount,
                                                       order):
    """grep -r reads a folder in name order, cp -r and rsync in inode
    order: after a few files in a row, the heads of the following ones are
    fetched in the background, before anyone reads them."""
    seed(account, {"INBOX": [make_message(f"ahead-{order}-{i}", minute=i)
                             for i in range(24)]})
    m = mount(account)
    inbox = os.path.join(m.path, "INBOX")
    names = files_in(inbox)
    assert len(names) == 24
    if order == "inode":
        names.sort(key=lambda n: os.stat(os.path.join(inbox, n)).st_ino)
    else:
        names.sort()
    for name in names[:3]:
        with open(os.path.join(inbox, name), "rb") as f:
            f.read(100)
    poll_until(lambda: stats(m)["fetched_blocks"] >= 24,
               "the remaining messages fetched ahead", POLL_SECONDS)


def test_partial_read_fetches_at_most_two_blocks(account, mount):
    raw = make_message("partial", size=5 * MiB + 12345)
    assert len(raw) > 5 * MiB
    seed(account, {"INBOX": [raw]})
    m = mount(account)
    inbox = os.path.join(m.path, "INBOX")
    [name] = files_in(inbox)
    path = os.path.join(inbox, name)
    assert os.stat(path).st_size == len(raw)
    assert stats(m)["fetched_blocks"] == 0, "listing fetched content"

    with open(path, "rb") as f:
        head = f.read(4096)
    assert head == raw[:4096]
    # Give read-ahead, if any were started, time to be counted.
    time.sleep(2)
    s = stats(m)
    assert 1 <= s["fetched_blocks"] <= 2, s
    assert s["fetched_bytes"] <= 2 * MiB, s

    # A read in the middle fetches that part, not everything before it.
    before = s["fetched_blocks"]
    with open(path, "rb") as f:
        f.seek(3 * MiB + 777)
        middle = f.read(4096)
    assert middle == raw[3 * MiB + 777:3 * MiB + 777 + 4096]
    time.sleep(2)
    s = stats(m)
    assert s["fetched_blocks"] - before <= 2, s
    assert s["fetched_bytes"] <= 4 * MiB, s


# ---------------------------------------------------------------- offline

def test_offline_remount_serves_cache(private_server, private_account, mount,
                                      tmp_path):
    server, account = private_server, private_account
    msgs = {
        "INBOX": [make_message("off-a", 3000), make_message("off-b", 40000),
                  make_message("off-big", 2 * MiB + 300000)],
        "Work": [make_message("off-w1", 5000), make_message("off-w2", 9000)],
        "Later": [make_message("off-later", 1 * MiB + 5000)],
    }
    seed(account, msgs)
    cache = str(tmp_path / "cache-offline")

    m = mount(account, cache_dir=cache, options=OFFLINE_OPTS)
    before = snapshot(m.path)
    contents = {}
    for folder in ("INBOX", "Work"):
        d = os.path.join(m.path, folder)
        for n in files_in(d):
            contents[os.path.join(folder, n)] = read_bytes(os.path.join(d, n))
    assert sorted(map(sha, contents.values())) == \
        sorted(sha(r) for f in ("INBOX", "Work") for r in msgs[f])
    # "Later" is listed, so its listing is cached, but never read.
    [later] = files_in(os.path.join(m.path, "Later"))
    later_rel = os.path.join("Later", later)
    m.unmount()

    stop_server(server)
    m = mount(account, cache_dir=cache, options=OFFLINE_OPTS)
    assert "offline" in mount_log(m).lower(), \
        f"no word of being offline in the log:\n{mount_log(m)}"
    assert snapshot(m.path) == before, "the listing differs offline"
    for rel, data in contents.items():
        assert read_bytes(os.path.join(m.path, rel)) == data, rel

    kind, value = read_in_thread(os.path.join(m.path, later_rel))
    assert kind == "error", "an uncached message was read while offline"
    assert value.errno == errno.EIO, value

    # Back online: the same mount reads what it could not, by itself.
    server.start()
    data = wait_for("the uncached message readable once the server is back",
                    lambda: read_bytes(os.path.join(m.path, later_rel)),
                    interval=1)
    assert data == msgs["Later"][0]
    m.unmount()


class BrokenServer:
    """Accepts TCP connections on 127.0.0.1 and either never says a word
    (behaviour "silent": a stalled server) or closes each connection at
    once ("close": a server going down, a proxy without a backend)."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.closed = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.behaviour == "close":
                conn.close()
            else:
                self.conns.append(conn)

    def close(self):
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for c in self.conns:
            c.close()
        self.thread.join(10)


def check_offline_mount(m, before, name, raw, later_name):
    """The mount is offline, lists what it listed before, serves the
    cached message and fails the uncached one with EIO; unmounts."""
    assert "offline" in mount_log(m).lower(), mount_log(m)
    assert snapshot(m.path) == before
    kind, value = read_in_thread(os.path.join(m.path, "INBOX", name))
    assert kind == "ok" and value == raw, (kind, value if kind == "error"
                                           else len(value))
    for _ in range(2):   # the first attempt waits for the timeout
        kind, value = read_in_thread(os.path.join(m.path, "Later",
                                                  later_name))
        assert kind == "error" and value.errno == errno.EIO, (kind, value)
    m.unmount()


@pytest.mark.parametrize("behaviour", ["silent", "close"])
@pytest.mark.parametrize("scheme", ["imaps", "imap"])
def test_offline_with_broken_server(account, mount, tmp_path, scheme,
                                    behaviour):
    """A server that accepts connections but never answers, or closes them
    at once (before the TLS handshake of imaps:// or the greeting of
    imap://): the mount still comes up from the cache, and what is not
    cached fails with EIO instead of hanging."""
    raw = make_message("stall-a", 1 * MiB + 20000)
    later = make_message("stall-later", 3000)
    seed(account, {"INBOX": [raw], "Later": [later]})
    cache = str(tmp_path / "cache-stalled")
    m = mount(account, scheme=scheme, cache_dir=cache, options=OFFLINE_OPTS)
    before = snapshot(m.path)
    [name] = files_in(os.path.join(m.path, "INBOX"))
    assert read_bytes(os.path.join(m.path, "INBOX", name)) == raw
    [later_name] = files_in(os.path.join(m.path, "Later"))
    m.unmount()

    # The same account (the cache keys name user and host, not the port)
    # behind a server that does not work.
    broken = BrokenServer(behaviour)
    try:
        source = proxy_url(account, broken, scheme)
        m = mount(account, source=source, cache_dir=cache,
                  options=OFFLINE_OPTS)
        check_offline_mount(m, before, name, raw, later_name)
    finally:
        broken.close()


# ---------------------------------------------------------------- corruption

def test_corrupt_blocks_are_fetched_again(account, mount, tmp_path):
    raws = [make_message("corrupt-big", 2 * MiB + 100000),
            make_message("corrupt-small", 7000)]
    seed(account, {"INBOX": raws})
    cache = str(tmp_path / "cache-corrupt")
    m = mount(account, cache_dir=cache)
    inbox = os.path.join(m.path, "INBOX")
    names = files_in(inbox)
    assert sorted(sha(read_bytes(os.path.join(inbox, n))) for n in names) == \
        sorted(map(sha, raws))
    m.unmount()

    blocks = block_files(cache)
    assert len(blocks) >= 4, blocks   # three blocks + one
    for p in blocks:
        flip_bytes(p)

    m = mount(account, cache_dir=cache)
    inbox = os.path.join(m.path, "INBOX")
    assert files_in(inbox) == names
    got = sorted(sha(read_bytes(os.path.join(inbox, n))) for n in names)
    assert got == sorted(map(sha, raws)), "corrupted cache bytes were served"
    s = stats(m)
    assert s["checksum_failures"] > 0, s
    assert s["fetched_blocks"] >= len(blocks), s
    m.unmount()
    # What was fetched again replaced the corrupt files.
    for p in block_files(cache):
        magic, length = block_header(p)
        assert magic == b"MFSBLK01" and os.path.getsize(p) == HEADER + length


def test_corrupt_blocks_offline_fail(private_server, private_account, mount,
                                     tmp_path):
    server, account = private_server, private_account
    raws = [make_message("coff-big", 2 * MiB + 100000),
            make_message("coff-small", 7000)]
    seed(account, {"INBOX": raws})
    cache = str(tmp_path / "cache-corrupt-offline")
    m = mount(account, cache_dir=cache, options=OFFLINE_OPTS)
    inbox = os.path.join(m.path, "INBOX")
    names = files_in(inbox)
    for n in names:
        read_bytes(os.path.join(inbox, n))
    m.unmount()
    for p in block_files(cache):
        flip_bytes(p)

    stop_server(server)
    m = mount(account, cache_dir=cache, options=OFFLINE_OPTS)
    inbox = os.path.join(m.path, "INBOX")
    assert files_in(inbox) == names
    for n in names:
        path = os.path.join(inbox, n)
        size = os.stat(path).st_size
        for offset in sorted({0, size // 2, size - 10}):
            kind, value = read_in_thread(path, offset)
            if kind == "ok":
                genuine = any(value == r[offset:] for r in raws)
                raise AssertionError(
                    f"{n} at {offset}: a read from corrupt blocks with the "
                    f"server down returned "
                    f"{'the right' if genuine else 'CORRUPTED'} bytes "
                    f"instead of failing")
            assert value.errno == errno.EIO, value
    assert stats(m)["checksum_failures"] > 0, stats(m)
    m.unmount()


# ---------------------------------------------------------------- the bound

def test_cache_size_bound(account, mount, tmp_path):
    raws = [make_message(f"bound-{i}", 2 * MiB - 4096, minute=i)
            for i in range(5)]
    assert all(MiB < len(r) < 2 * MiB for r in raws)
    seed(account, {"INBOX": raws})
    cache = str(tmp_path / "cache-bound")
    limit = 3 * MiB
    m = mount(account, cache_dir=cache, options=["cache_size=3M"])
    inbox = os.path.join(m.path, "INBOX")
    names = files_in(inbox)
    assert len(names) == 5
    for _ in range(2):
        for n in names:
            data = read_bytes(os.path.join(inbox, n))
            assert sha(data) in map(sha, raws), n
            assert stats(m)["bytes_on_disk"] <= limit, stats(m)
    s = stats(m)
    assert s["evictions"] > 0, s
    assert s["bytes_on_disk"] <= limit, s
    m.unmount()

    files = block_files(cache)
    total = sum(os.path.getsize(p) for p in files)
    assert files, "nothing was cached"
    assert total <= limit + HEADER * len(files), \
        f"{total} bytes in {len(files)} block files, bound {limit}"

    # A remount with the same bound keeps serving correct bytes.
    m = mount(account, cache_dir=cache, options=["cache_size=3M"])
    inbox = os.path.join(m.path, "INBOX")
    got = sorted(sha(read_bytes(os.path.join(inbox, n))) for n in names)
    assert got == sorted(map(sha, raws))
    m.unmount()
    files = block_files(cache)
    assert sum(os.path.getsize(p) for p in files) <= \
        limit + HEADER * len(files)


# ---------------------------------------------------------------- crashes

def test_sigkill_during_read_leaves_usable_cache(account, mount, tmp_path):
    raw = make_message("crash-big", 20 * MiB)
    assert len(raw) > 19 * MiB
    seed(account, {"INBOX": [raw]})
    cache = str(tmp_path / "cache-crash")
    m = mount(account, cache_dir=cache)
    inbox = os.path.join(m.path, "INBOX")
    [name] = files_in(inbox)
    path = os.path.join(inbox, name)

    progress = {"done": 0}
    outcome = {}

    def reader():
        # Paced, so the kill lands while the read is under way.
        try:
            with open(path, "rb") as f:
                while True:
                    chunk = f.read(256 * 1024)
                    if not chunk:
                        break
                    progress["done"] += len(chunk)
                    time.sleep(0.02)
            outcome["finished"] = True
        except OSError as e:
            outcome["error"] = e

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    wait_for("the reader got a few MiB", lambda: progress["done"] >= 4 * MiB
             or not t.is_alive(), interval=0.01)
    os.kill(m.proc.pid, signal.SIGKILL)
    m.proc.wait(timeout=60)
    subprocess.run([FUSERMOUNT, "-uz", m.path], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t.join(120)
    assert not t.is_alive(), "the reader hung after the daemon was killed"
    assert "error" in outcome, \
        f"the read finished ({progress['done']} bytes) before the kill"
    m.kill()
    assert not is_mounted(m.path)

    # What an interrupted write would leave behind.
    os.makedirs(os.path.join(cache, "tmp"), exist_ok=True)
    with open(os.path.join(cache, "tmp", "999999.1"), "wb") as f:
        f.write(b"MFSBLK01" + b"\0" * 100)

    m = mount(account, cache_dir=cache)
    inbox = os.path.join(m.path, "INBOX")
    assert files_in(inbox) == [name]
    assert read_bytes(os.path.join(inbox, name)) == raw
    assert tmp_files(cache) == [], tmp_files(cache)
    m.unmount()
    for p in block_files(cache):
        magic, length = block_header(p)
        assert magic == b"MFSBLK01" and os.path.getsize(p) == HEADER + length


# ---------------------------------------------------------------- UIDVALIDITY

def test_recreated_folder_never_serves_old_blocks(account, mount, tmp_path):
    old = make_message("uidv-old", 300000, subject="Old contents")
    new = make_message("uidv-new", 200000, subject="New contents")
    with account.client() as c:
        c.create("Work")
        assert c.append("Work", old) == 1
        old_validity = c.uidvalidity("Work")
    cache = str(tmp_path / "cache-uidvalidity")
    m = mount(account, cache_dir=cache, options=["refresh=1"])
    work = os.path.join(m.path, "Work")
    [old_name] = files_in(work)
    assert read_bytes(os.path.join(work, old_name)) == old
    m.unmount()

    with account.client() as c:
        c.delete("Work")
        c.create("Work")
        assert c.append("Work", new) == 1
        assert c.uidvalidity("Work") != old_validity

    m = mount(account, cache_dir=cache, options=["refresh=1"])
    work = os.path.join(m.path, "Work")

    def listing_is_new():
        names = files_in(work)
        return names if old_name not in names and len(names) == 1 else None

    [new_name] = wait_for("the recreated folder's listing", listing_is_new)
    path = os.path.join(work, new_name)
    assert uid_of(path) == 1
    data = read_bytes(path)
    assert data != old, "the old message's cached blocks were served"
    assert data == new
    m.unmount()

    # The listing on disk was replaced too.
    m = mount(account, cache_dir=cache, options=["refresh=1"])
    work = os.path.join(m.path, "Work")
    assert files_in(work) == [new_name]
    assert read_bytes(os.path.join(work, new_name)) == new
    m.unmount()


# ---------------------------------------------------------------- listings

def test_large_listing_served_from_metadata_cache(private_server,
                                                  private_account, mount,
                                                  tmp_path):
    server, account = private_server, private_account
    count = 2000
    with account.client() as c:
        for i in range(count):
            c.append("INBOX", make_message(f"many-{i}", 0, minute=i),
                     date=1750000000 + i)
    cache = str(tmp_path / "cache-many")
    m = mount(account, cache_dir=cache, options=OFFLINE_OPTS)
    inbox = os.path.join(m.path, "INBOX")
    names = files_in(inbox)
    assert len(names) == count
    before = snapshot(m.path)
    m.unmount()

    m = mount(account, cache_dir=cache, options=OFFLINE_OPTS)
    assert files_in(os.path.join(m.path, "INBOX")) == names
    m.unmount()

    stop_server(server)
    m = mount(account, cache_dir=cache, options=OFFLINE_OPTS)
    assert "offline" in mount_log(m).lower(), mount_log(m)
    assert files_in(os.path.join(m.path, "INBOX")) == names
    assert snapshot(m.path) == before
    m.unmount()


# ---------------------------------------------------------------- permissions

def test_cache_permissions(account, mount, tmp_path):
    raws = [make_message("perm-big", MiB + 50000), make_message("perm-s", 900)]
    seed(account, {"INBOX": [raws[0]], "Work": [raws[1]]})
    cache = str(tmp_path / "cache-perm")
    os.mkdir(cache, 0o755)
    os.chmod(cache, 0o755)
    old_umask = os.umask(0)     # mailfs must not rely on the umask
    try:
        m = mount(account, cache_dir=cache)
    finally:
        os.umask(old_umask)
    for folder in ("INBOX", "Work"):
        d = os.path.join(m.path, folder)
        for n in files_in(d):
            read_bytes(os.path.join(d, n))

    def check():
        bad = []
        seen_files = 0
        top = os.lstat(cache)
        if stat.S_IMODE(top.st_mode) != 0o700:
            bad.append((cache, oct(stat.S_IMODE(top.st_mode))))
        for dirpath, dirnames, filenames in os.walk(cache):
            for n in dirnames:
                p = os.path.join(dirpath, n)
                mode = stat.S_IMODE(os.lstat(p).st_mode)
                if mode != 0o700:
                    bad.append((p, oct(mode)))
            for n in filenames:
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                seen_files += 1
                if not stat.S_ISREG(st.st_mode) or \
                        stat.S_IMODE(st.st_mode) != 0o600:
                    bad.append((p, oct(st.st_mode)))
        assert not bad, f"not private: {bad}"
        return seen_files

    check()
    m.unmount()
    assert check() > 0
    assert len(block_files(cache)) >= 3
    assert os.listdir(os.path.join(cache, "meta"))


def tree_state(top):
    """Every path under top (top too) with its mode and, for files, its
    content: what must stay as it was."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(top):
        state[dirpath] = oct(os.lstat(dirpath).st_mode)
        for n in filenames:
            p = os.path.join(dirpath, n)
            state[p] = (oct(os.lstat(p).st_mode), read_bytes(p))
    return state


def foreign_dir(path):
    """A directory of someone else's that happens to use mailfs's names."""
    os.makedirs(os.path.join(path, "tmp", "project"))
    os.makedirs(os.path.join(path, "blocks"))
    with open(os.path.join(path, "tmp", "project", "notes.txt"), "w") as f:
        f.write("my notes\n")
    with open(os.path.join(path, "blocks", "lego.txt"), "w") as f:
        f.write("2x4\n")
    os.chmod(path, 0o755)
    return str(path)


def test_foreign_cache_dir_untouched(account, mount_fails, tmp_path):
    """A cache_dir that holds files mailfs did not make is refused with
    one line before anything in it is touched, whether or not the server
    can be reached."""
    d = foreign_dir(tmp_path / "foreign")
    before = tree_state(d)
    rc, err = mount_fails(account, cache_dir=d)
    assert_one_line(err, "not made by mailfs")
    assert tree_state(d) == before

    url = f"imaps://{account.user}@127.0.0.1:{closed_port()}"
    rc, err = mount_fails(account, source=url, cache_dir=d,
                          options=["pop3=none"])
    assert_one_line(err, "not made by mailfs")
    assert tree_state(d) == before


def test_foreign_spool_dir_untouched(account, mount_fails, tmp_path):
    d = foreign_dir(tmp_path / "foreign")
    before = tree_state(d)
    rc, err = mount_fails(account, options=[
        f"smtp=smtp://{account.user}@127.0.0.1:{closed_port()}",
        f"spool_dir={d}"])
    assert_one_line(err, "not made by mailfs")
    assert tree_state(d) == before


def test_empty_and_earlier_cache_dirs_adopted(account, mount, mount_fails,
                                              tmp_path):
    """An empty directory is taken (made private and marked); so is the
    cache of an earlier mailfs, which marked nothing, as long as it holds
    only what mailfs puts there."""
    raw = make_message("adopted", 3000)
    seed(account, {"INBOX": [raw]})
    cache = str(tmp_path / "empty")
    os.mkdir(cache, 0o755)
    os.chmod(cache, 0o755)
    m = mount(account, cache_dir=cache)
    inbox = os.path.join(m.path, "INBOX")
    [name] = files_in(inbox)
    assert read_bytes(os.path.join(inbox, name)) == raw
    m.unmount()
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    assert os.path.isfile(os.path.join(cache, ".mailfs-cache"))
    blocks = block_files(cache)
    assert blocks

    # As an earlier mailfs left it: no marker.  Its blocks are kept.
    os.unlink(os.path.join(cache, ".mailfs-cache"))
    m = mount(account, cache_dir=cache)
    m.unmount()
    assert os.path.isfile(os.path.join(cache, ".mailfs-cache"))
    assert block_files(cache) == blocks

    # One file that is not mailfs's and it is not taken.
    os.unlink(os.path.join(cache, ".mailfs-cache"))
    with open(os.path.join(cache, "mine.txt"), "w") as f:
        f.write("mine\n")
    before = tree_state(cache)
    rc, err = mount_fails(account, cache_dir=cache)
    assert_one_line(err, "not made by mailfs")
    assert tree_state(cache) == before


# ---------------------------------------------------------------- resync

def test_remount_resyncs_new_mail_and_flags(account, mount, tmp_path):
    a = make_message("resync-a", 2000, minute=1)
    b = make_message("resync-b", 3000, minute=2)
    c_ = make_message("resync-c", 4000, minute=3)
    added = make_message("resync-new", 5000, minute=4)
    # Not INBOX: INBOX is also brought up to date by IDLE, this is about
    # the resynchronisation of a listing from the metadata cache.
    with account.client() as c:
        c.create("Work")
        ua = c.append("Work", a, flags=["\\Seen"])
        ub = c.append("Work", b)
        uc = c.append("Work", c_)
    cache = str(tmp_path / "cache-resync")
    m = mount(account, cache_dir=cache, options=["refresh=1"])
    work = os.path.join(m.path, "Work")
    names = by_uid(work)
    assert set(names) == {ua, ub, uc}
    assert flags_of(os.path.join(work, names[ua])) == {"\\Seen"}
    assert flags_of(os.path.join(work, names[ub])) == set()
    m.unmount()

    with account.client() as c:
        unew = c.append("Work", added)
        c.store("Work", ub, ["\\Flagged", "$Label1"], mode="+")
        c.store("Work", ua, ["\\Seen"], mode="-")
        c.expunge_uid("Work", uc)

    m = mount(account, cache_dir=cache, options=["refresh=1"])
    work = os.path.join(m.path, "Work")

    def resynced():
        current = by_uid(work)
        if set(current) != {ua, ub, unew}:
            return None
        fb = flags_of(os.path.join(work, current[ub]))
        fa = flags_of(os.path.join(work, current[ua]))
        if fb != {"\\Flagged", "$Label1"} or fa != set():
            return None
        return current

    current = wait_for("new mail, flags and expunge after a remount",
                       resynced)
    assert current[ua] == names[ua] and current[ub] == names[ub]
    assert read_bytes(os.path.join(work, current[unew])) == added
    m.unmount()


def test_refresh_while_mounted(account, mount, tmp_path):
    first = make_message("refresh-1", 2500, minute=1)
    later = make_message("refresh-2", 3500, minute=2)
    with account.client() as c:
        c.create("Work")
        u1 = c.append("Work", first)
    m = mount(account, options=["refresh=1"])
    work = os.path.join(m.path, "Work")
    assert set(by_uid(work)) == {u1}
    with account.client() as c:
        u2 = c.append("Work", later)
        c.store("Work", u1, ["\\Answered"], mode="+")

    def refreshed():
        current = by_uid(work)
        if set(current) != {u1, u2}:
            return None
        if flags_of(os.path.join(work, current[u1])) != {"\\Answered"}:
            return None
        return current

    current = wait_for("new mail and flags in a mounted folder", refreshed)
    assert read_bytes(os.path.join(work, current[u2])) == later
    m.unmount()
