"""A concurrency stress test: several threads use the mount at once
(ls -l, stat, cat, rm, mv between folders, setting flags, copy-ins) with a
refresh period of one second, while another IMAP client appends, flags and
expunges in the same folders.

Each message is removed or moved by one actor only (one mount thread, or
the other client for the messages it appended), so that what succeeded
says where each message must be; every actor still works in every folder
while the others list, read, flag and change it.

Afterwards mailfs must be alive (no sanitizer report either: conftest
checks its output at unmount), every operation must have succeeded or
failed with an errno that a race explains, and the server must hold what
succeeded: every message removed through the mount gone, every move landed
once, every copy-in present once, and no message twice.

The mount talks to Dovecot through a proxy that delays every answer a
little, as a network would: refreshes then take long enough for the
other threads' changes to land while they wait on the server.

Bounded in operations and in time.  The default run is short; a longer
one is chosen with the environment (see tools/test --help):
  MAILFS_STRESS_OPS      operations through the mount (default 300)
  MAILFS_STRESS_SECONDS  time limit for them (default 45)
  MAILFS_STRESS_SEED     the random seed (default 12)
"""

import errno
import os
import random
import re
import threading
import time

from helpers import files_in, poll_until, proxy_url

FOLDERS = ["INBOX", "Alpha", "Beta"]
THREADS = 4
SEEDED_PER_FOLDER = 30
# A race with a change by another thread or client explains these.
RACE_ERRNOS = {errno.ENOENT, errno.ESTALE, errno.EEXIST}
ID_RE = re.compile(rb"^X-Stress-Id: (\S+)\r?$", re.MULTILINE)


def message(ident):
    return (f"From: Stress <stress@example.org>\r\n"
            f"To: you@example.org\r\n"
            f"Subject: stress message {ident}\r\n"
            f"Date: Tue, 03 Jun 2025 10:{len(ident) % 60:02d}:00 +0000\r\n"
            f"Message-ID: <{ident}@stress.example.org>\r\n"
            f"X-Stress-Id: {ident}\r\n"
            f"\r\n"
            f"Body of {ident}.\r\n" + "padding line\r\n" * 20).encode()


def ident_of(raw):
    m = ID_RE.search(raw)
    return m.group(1).decode() if m else None


class Record:
    """What succeeded, in completion order, and what failed how."""

    def __init__(self):
        self.lock = threading.Lock()
        self.events = []          # (kind, ident, folder or None)
        self.errors = []          # (op, path, errno) that no race explains
        self.ops = 0
        self.doing = {}           # thread tag: the operation under way

    def add(self, kind, ident, folder=None):
        with self.lock:
            self.events.append((kind, ident, folder))

    def failed(self, op, path, err):
        if err.errno not in RACE_ERRNOS:
            with self.lock:
                self.errors.append((op, path, err.errno, str(err)))

    def take_op(self, budget):
        with self.lock:
            if self.ops >= budget:
                return False
            self.ops += 1
            return True


NAME_RE = re.compile(r"_stress-message-(.+)_[0-9a-f]{8}\.eml$")


def pick_file(rng, root, tag=None):
    """A random message file of a random folder; with tag, one that
    mount thread may remove or move (its ident is in the name)."""
    folder = rng.choice(FOLDERS)
    try:
        names = [n for n in os.listdir(os.path.join(root, folder))
                 if NAME_RE.search(n)]
    except OSError:
        return folder, None
    if tag is not None:
        names = [n for n in names
                 if owner(NAME_RE.search(n).group(1)) == tag]
    if not names:
        return folder, None
    return folder, os.path.join(root, folder, rng.choice(names))


def read_ident(path):
    with open(path, "rb") as f:
        return ident_of(f.read())


def owner(ident):
    """The actor that may remove or move a message: a mount thread's
    number, or None for the other client's."""
    if ident is None or ident.startswith("ext-"):
        return None
    if ident.startswith("copy-"):
        return int(ident.split("-")[1])
    return sum(ident.encode()) % THREADS


def mount_worker(root, rng, rec, budget, deadline, tag):
    n_copy = 0
    while time.monotonic() < deadline and rec.take_op(budget):
        op = rng.choice(["ls", "ls", "stat", "cat", "cat", "rm", "mv",
                         "mv", "flags", "copy"])
        folder, path = pick_file(rng, root,
                                 tag if op in ("rm", "mv") else None)
        rec.doing[tag] = (op, path or folder)
        try:
            if op == "ls":
                d = os.path.join(root, folder)
                for n in os.listdir(d):
                    try:
                        os.stat(os.path.join(d, n))
                    except OSError as e:
                        rec.failed("stat after ls", n, e)
            elif op == "copy":
                n_copy += 1
                ident = f"copy-{tag}-{n_copy}"
                dest = os.path.join(root, folder, f"new-{ident}.eml")
                with open(dest, "wb") as f:
                    f.write(message(ident))
                rec.add("copy", ident, folder)
            elif path is None:
                continue
            elif op == "stat":
                os.stat(path)
            elif op == "cat":
                with open(path, "rb") as f:
                    data = f.read()
                if ident_of(data) is None:
                    with rec.lock:
                        rec.errors.append(("cat", path, 0,
                                           f"not a message: {data[:80]!r}"))
            elif op == "rm":
                ident = NAME_RE.search(path).group(1)
                os.unlink(path)
                rec.add("rm", ident)
            elif op == "mv":
                ident = NAME_RE.search(path).group(1)
                target = rng.choice([f for f in FOLDERS if f != folder])
                os.rename(path, os.path.join(root, target,
                                             os.path.basename(path)))
                rec.add("mv", ident, target)
            elif op == "flags":
                os.setxattr(path, "user.mail.flags",
                            rng.choice([b"\\Flagged", b"\\Seen", b""]))
        except OSError as e:
            rec.failed(op, path, e)


def other_client(account, rng, rec, stop):
    n = 0
    with account.client() as c:
        while not stop.is_set():
            folder = rng.choice(FOLDERS)
            action = rng.choice(["append", "flag", "expunge"])
            if action == "append":
                n += 1
                ident = f"ext-{n}"
                c.append(folder, message(ident))
                rec.add("append", ident, folder)
                continue
            # Unsolicited FETCH responses (flags another session set)
            # come without a body.
            msgs = {u: i for u, i in c.fetch(folder).items() if "raw" in i}
            if action == "expunge":
                msgs = {u: i for u, i in msgs.items()
                        if owner(ident_of(i["raw"])) is None}
            if not msgs:
                continue
            uid = rng.choice(sorted(msgs))
            if action == "flag":
                c.store(folder, uid, ["\\Answered"])
            else:
                c.expunge_uid(folder, uid)
                rec.add("expunge", ident_of(msgs[uid]["raw"]))
            stop.wait(0.05)


def server_state(account):
    """{ident: [folder, ...]} of every message on the server."""
    where = {}
    with account.client() as c:
        for folder in FOLDERS:
            for info in c.fetch(folder).values():
                if "raw" not in info:
                    continue
                where.setdefault(ident_of(info["raw"]), []).append(folder)
    return where


def expected_state(rec, seeded):
    """{ident: folder or None (gone)} from what succeeded, in order."""
    want = dict(seeded)
    for kind, ident, folder in rec.events:
        if kind in ("rm", "expunge"):
            want[ident] = None
        elif kind in ("mv", "copy", "append"):
            want[ident] = folder
    return want


# Seconds the proxy holds each piece of the server's answers.
LATENCY = 0.01


def test_concurrent_use_keeps_server_and_mount_consistent(make_account,
                                                          proxies, mount):
    account = make_account("nossl")
    budget = int(os.environ.get("MAILFS_STRESS_OPS", "300"))
    seconds = float(os.environ.get("MAILFS_STRESS_SECONDS", "45"))
    seed = int(os.environ.get("MAILFS_STRESS_SEED", "12"))
    seeded = {}
    with account.client() as c:
        for folder in FOLDERS:
            if folder != "INBOX":
                c.create(folder)
            for i in range(SEEDED_PER_FOLDER):
                ident = f"seed-{folder.lower()}-{i}"
                c.append(folder, message(ident))
                seeded[ident] = folder
    proxy = proxies(account.server.imap_port)
    proxy.delay(LATENCY)
    m = mount(account, source=proxy_url(account, proxy, "imap"),
              ca_file=False,
              options=["allow_plaintext", "pop3=none", "refresh=1"])
    for folder in FOLDERS:
        assert len(files_in(os.path.join(m.path, folder))) == \
            SEEDED_PER_FOLDER

    rec = Record()
    stop = threading.Event()
    deadline = time.monotonic() + seconds
    client_errors = []

    def run_client():
        try:
            other_client(account, random.Random(seed * 1000), rec, stop)
        except Exception as e:   # reported below, after the workers
            client_errors.append(e)

    workers = [threading.Thread(
        target=mount_worker, daemon=True,
        args=(m.path, random.Random(seed + i), rec, budget, deadline, i))
        for i in range(THREADS)]
    client = threading.Thread(target=run_client, daemon=True)
    client.start()
    for w in workers:
        w.start()
    # Each operation is bounded by mailfs's own timeouts; a worker still
    # running long after the deadline is an operation that hangs.
    for w in workers:
        w.join(max(1.0, deadline - time.monotonic()) + 120)
        assert not w.is_alive(), \
            f"an operation on the mount hangs: {rec.doing}"
    stop.set()
    client.join(120)
    assert not client.is_alive(), "the other client hangs"
    assert not client_errors, client_errors
    assert m.proc.poll() is None, "mailfs died"
    kinds = {}
    for kind, _, _ in rec.events:
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"{rec.ops} operations; succeeded: {kinds}")
    assert not rec.errors, f"unexplained failures: {rec.errors[:10]}"
    assert rec.ops > 0

    # Copy-ins are appended about a second after they were closed.
    want = expected_state(rec, seeded)

    def settled():
        have = server_state(account)
        return have if all(
            (have.get(i) or [None])[0] == f or (f is None and i not in have)
            for i, f in want.items()) else None

    try:
        have = poll_until(settled, "the server holding what succeeded", 90)
    except AssertionError:
        have = server_state(account)
        wrong = {i: (f, have.get(i)) for i, f in want.items()
                 if (have.get(i) or [None])[0] != f and
                 not (f is None and i not in have)}
        raise AssertionError(f"server differs (ident: (want, have)): "
                             f"{dict(list(wrong.items())[:10])}")
    twice = {i: f for i, f in have.items() if len(f) > 1}
    assert not twice, f"on the server more than once: {twice}"
    unknown = set(have) - set(want)
    assert not unknown, f"on the server, never made: {unknown}"

    # The mount agrees once it has refreshed: each message once, where
    # the server has it.
    def mount_agrees():
        for folder in FOLDERS:
            names = os.listdir(os.path.join(m.path, folder))
            if len(names) != len(set(names)):
                return False
            idents = sorted(read_ident(os.path.join(m.path, folder, n))
                            for n in names)
            if idents != sorted(i for i, f in have.items()
                                if f[0] == folder):
                return False
        return True

    poll_until(mount_agrees, "the mount listing what the server holds", 60,
               tolerate=OSError)
    assert m.proc.poll() is None, "mailfs died"
