"""Helpers shared by more than one test file (fixtures live in conftest.py).

  sha, files_in, uid_of        message files as the tests look at them
  poll_until                   polling with a deadline
  sized_message, seed          messages of a given size, put on the server
  proxy_url, read_uncached     reading through a mount that may fail
  Background                   a call that may block, in a thread
  block_files, tmp_files, block_header   a cache directory's files
  tmpfs                        a small file system to fill up
  assert_one_line              a refusal's message on stderr
"""

import contextlib
import errno
import hashlib
import os
import struct
import subprocess
import threading
import time

import pytest

BLOCK_HEADER = 56            # bytes before a cache block file's data


def sha(data):
    return hashlib.sha256(data).hexdigest()


def files_in(directory):
    return sorted(n for n in os.listdir(directory)
                  if os.path.isfile(os.path.join(directory, n)))


def uid_of(path):
    return int(os.getxattr(path, "user.mail.uid").decode().strip())


# ---------------------------------------------------------------- waiting

def poll_until(predicate, what, timeout, interval=0.25, tolerate=()):
    """Polls predicate() until it returns something true; returns that.
    An exception of a type in `tolerate` counts as not yet (the last one
    is named on failure).  AssertionError naming `what` after timeout
    seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except tolerate as e:
            last_error = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting "
                                 f"for {what}"
                                 + (f" (last error: {last_error!r})"
                                    if last_error else ""))
        time.sleep(interval)


# ---------------------------------------------------------------- messages

def sized_message(rng, tag, size, subject, date, domain):
    """A message of about `size` bytes (never less than its header):
    base64-looking CRLF lines drawn from rng (a random.Random), after a
    header with the given Subject and Date and a Message-ID made of tag,
    random bits and domain."""
    head = (
        f"Date: {date}\r\n"
        f"From: Alice Example <alice@example.org>\r\n"
        f"To: Bob Builder <bob@example.net>\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{tag}.{rng.getrandbits(64):016x}@{domain}>\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=us-ascii\r\n"
        f"\r\n").encode()
    alphabet = (b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                b"abcdefghijklmnopqrstuvwxyz0123456789+/")
    pool = bytes(rng.choice(alphabet) for _ in range(76 * 64))
    lines = max(1, (size - len(head)) // 78)
    body = []
    for _ in range(lines):
        start = rng.randrange(0, len(pool) - 76)
        body.append(pool[start:start + 76] + b"\r\n")
    return head + b"".join(body)


def seed(account, messages):
    """messages: {folder: [raw, ...]}; creates folders as needed."""
    with account.client() as c:
        existing = {name for name, _, _ in c.list()}
        for folder, raws in messages.items():
            if folder != "INBOX" and folder not in existing:
                c.create(folder)
            for raw in raws:
                c.append(folder, raw)


# ---------------------------------------------------------------- reading

def proxy_url(account, proxy, scheme="imaps"):
    """The account's URL, but to proxy.port on 127.0.0.1: a proxy in front
    of its server, or a stand-in for it."""
    return f"{scheme}://{account.user}@127.0.0.1:{proxy.port}"


def read_uncached(path, offset=0, length=None):
    """Reads `length` bytes (all to the end when None) through mailfs, not
    the kernel's page cache (which keeps what an earlier read returned).
    Reads again after a short read, as programs do: a short read followed
    by an error is an error, followed by end of file a short file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        out = []
        pos, left = offset, length
        while left is None or left > 0:
            chunk = os.pread(fd, 1 << 20 if left is None else left, pos)
            if not chunk:
                break
            out.append(chunk)
            pos += len(chunk)
            if left is not None:
                left -= len(chunk)
        return b"".join(out)
    finally:
        os.close(fd)


class Background:
    """Runs fn() in a daemon thread; .result is ("ok", value) or
    ("error", OSError) once it is done.  join() re-raises anything else."""

    def __init__(self, fn):
        self.result = None
        self.started = time.monotonic()
        self.ended = None
        self.thread = threading.Thread(target=self._run, args=(fn,),
                                       daemon=True)
        self.thread.start()

    def _run(self, fn):
        try:
            self.result = ("ok", fn())
        except OSError as e:
            self.result = ("error", e)
        except BaseException as e:   # an assertion in fn: join() raises it
            self.result = ("raised", e)
        self.ended = time.monotonic()

    def alive(self):
        return self.thread.is_alive()

    def join(self, timeout, what):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), \
            f"{what}: still blocked after {timeout:.0f}s"
        if self.result[0] == "raised":
            raise self.result[1]
        return self.result


# ---------------------------------------------------------------- the cache

def _files_under(directory):
    out = []
    for dirpath, _, filenames in os.walk(directory):
        out.extend(os.path.join(dirpath, n) for n in filenames)
    return out


def block_files(cache_dir):
    """Paths of every file under <cache_dir>/blocks, sorted."""
    return sorted(_files_under(os.path.join(cache_dir, "blocks")))


def tmp_files(cache_dir):
    """Paths of every file under <cache_dir>/tmp."""
    return _files_under(os.path.join(cache_dir, "tmp"))


def block_header(path):
    """(magic, data length) of a block file."""
    with open(path, "rb") as f:
        head = f.read(BLOCK_HEADER)
    assert len(head) == BLOCK_HEADER, f"{path}: shorter than a block header"
    return head[:8], struct.unpack_from("<Q", head, 32)[0]


@contextlib.contextmanager
def tmpfs(path, size, name):
    """Mounts a tmpfs of `size` ("2m") at the new directory path, named
    name in the mount table; skips the test where that is not allowed.
    Detached lazily at the end (a mount may still hold files in it)."""
    os.makedirs(path)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700",
                        name, path], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stdout.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def fill_up(directory):
    """Fills the file system of directory; returns the filler's path."""
    path = os.path.join(directory, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    return path


def leave_room(directory, nbytes):
    """Fills the file system of directory up to nbytes of free space
    (rounded to its pages); returns the filler's path."""
    path = fill_up(directory)
    os.truncate(path, max(0, os.path.getsize(path) - nbytes))
    return path


# ---------------------------------------------------------------- refusals

def assert_one_line(stderr, *words):
    """stderr holds exactly one line, and it names one of words (when
    any are given); returns that line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    if words:
        low = lines[0].lower()
        assert any(w.lower() in low for w in words), \
            f"{lines[0]!r} names none of {words}"
    return lines[0]
