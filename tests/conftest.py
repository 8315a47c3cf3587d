"""pytest fixtures for the mailfs integration tests.

Fixtures
  servers       (session) mailserver.ServerSet: CA, certificates, Dovecots
  dovecot       (session) the main Dovecot (TLS, '/' separator)
  account       a fresh user with an empty mailbox on the main Dovecot
  make_account  factory: make_account(variant="main") for other servers
  mount         factory: mount(account, ...) -> Mount, unmounted at teardown
  mount_fails   helper: mount_fails(account, ...) -> (exit code, stderr)
  corpus        (session) the list of corpus.Message
  proxies       factory: proxies(upstream_port) -> a started FaultProxy

See the docstrings of Account, Mount and _MountFactory for details.
"""

import contextlib
import os
import poplib
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

import corpus as corpus_mod
import mailserver
from faultproxy import FaultProxy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUSERMOUNT = shutil.which("fusermount3") or "/usr/bin/fusermount3"

# How long one mount may live before the watchdog kills its daemon, so that
# a hung file system turns into failing reads instead of a hung test run.
WATCHDOG_SECONDS = float(os.environ.get("MAILFS_TEST_WATCHDOG", "300"))
MOUNT_TIMEOUT = float(os.environ.get("MAILFS_TEST_MOUNT_TIMEOUT", "90"))

SANITIZER_PATTERNS = [
    re.compile(rb"ERROR: AddressSanitizer"),
    re.compile(rb"ERROR: LeakSanitizer"),
    re.compile(rb"LeakSanitizer"),
    re.compile(rb"runtime error:"),
    re.compile(rb"ERROR: ThreadSanitizer|WARNING: ThreadSanitizer"),
    re.compile(rb"SUMMARY: (Address|Undefined|Leak|Thread)Sanitizer"),
]


def assert_no_sanitizer_report(data, where="mailfs output"):
    """Fails when bytes `data` hold an ASan/LSan/UBSan report."""
    for pat in SANITIZER_PATTERNS:
        m = pat.search(data)
        if m:
            start = max(0, m.start() - 200)
            excerpt = data[start:start + 3000].decode(errors="replace")
            raise AssertionError(f"sanitizer report in {where}:\n{excerpt}")


def mailfs_bin():
    path = os.environ.get("MAILFS_BIN") or os.path.join(REPO, "build", "mailfs")
    return os.path.abspath(path)


# ---------------------------------------------------------------- mounts table

def _unescape_mount(field):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounted_paths():
    """Mount points from /proc/self/mountinfo (never touches the mounts,
    so a hung file system cannot block it)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" ")
            out.append(_unescape_mount(fields[4]))
    return out


def is_mounted(path):
    return os.path.realpath(path) in mounted_paths()


def lazy_unmount_under(prefix):
    prefix = os.path.realpath(prefix).rstrip("/") + "/"
    for mp in sorted(mounted_paths(), key=len, reverse=True):
        if mp.startswith(prefix):
            subprocess.run([FUSERMOUNT, "-uz", mp], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------- accounts

class Account:
    """A mailbox user on one Dovecot.

    user, password, server (mailserver.Dovecot), password_file (a 0600
    file holding the password).
    url(scheme="imaps", host=None) -> "imaps://user@127.0.0.1:port"
    client(starttls=False) -> mailserver.ImapClient (a context manager)
    pop3() -> poplib.POP3_SSL logged in (a context manager that QUITs)
    seed(messages, folder=None) -> {message key: uid}; creates folders.
    """

    def __init__(self, server, directory):
        self.server = server
        self.user, self.password = server.add_user()
        os.makedirs(directory, exist_ok=True)
        self.password_file = os.path.join(directory, f"{self.user}.password")
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                     0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")

    def url(self, scheme="imaps", host=None):
        return self.server.url(self.user, scheme=scheme, host=host)

    def client(self, starttls=False):
        return self.server.client(self.user, self.password, starttls=starttls)

    @contextlib.contextmanager
    def pop3(self):
        server = self.server
        p = poplib.POP3_SSL(server.host, server.pop3s_port,
                            context=server.ca.ssl_context(), timeout=60)
        try:
            p.user(self.user)
            p.pass_(self.password)
            yield p
        finally:
            p.quit()

    def seed(self, messages, folder=None):
        uids = {}
        with self.client() as c:
            existing = {name for name, _, _ in c.list()}
            for m in messages:
                target = folder or m.folder
                if target not in existing and target.upper() != "INBOX":
                    c.create(target)
                    existing = {name for name, _, _ in c.list()}
                uids[m.key] = c.append(target, m.raw, flags=m.flags,
                                       date=m.internaldate)
        return uids

    def fetch(self, folder="INBOX", body=True):
        with self.client() as c:
            return c.fetch(folder, body=body)

    def flags(self, folder="INBOX"):
        """{uid: flags} without \\Recent (a session property)."""
        with self.client() as c:
            return {uid: fl - {"\\Recent"}
                    for uid, fl in c.flags(folder).items()}


# ---------------------------------------------------------------- mounts

class MountError(Exception):
    def __init__(self, returncode, stderr):
        super().__init__(f"mailfs exited with {returncode} before mounting:\n"
                         f"{stderr}")
        self.returncode = returncode
        self.stderr = stderr


class Mount:
    """A running mailfs.

    path       the mount point
    proc       the subprocess.Popen of `mailfs -f ...`
    argv       the command line
    stdout_path, stderr_path   where its output goes
    unmount()  fusermount3 -u, then asserts that mailfs exits 0
    output()   stdout + stderr so far, as bytes
    """

    def __init__(self, argv, path, env, logdir, label, secrets=()):
        self.argv = argv
        self.path = path
        self.env = env
        self.secrets = [s for s in secrets if s]
        self.stdout_path = os.path.join(logdir, f"{label}.stdout")
        self.stderr_path = os.path.join(logdir, f"{label}.stderr")
        self.proc = None
        self.closed = False
        self.checked = False
        self.watchdog_fired = False
        self._watchdog = None

    def start(self):
        with open(self.stdout_path, "wb") as out, \
                open(self.stderr_path, "wb") as err:
            # Its own session: only the fixtures decide when it ends.
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err, env=self.env,
                                         start_new_session=True)
        self._started = time.monotonic()
        self._watchdog = threading.Timer(WATCHDOG_SECONDS, self._fire)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _fire(self):
        if self.proc.poll() is None:
            self.watchdog_fired = time.monotonic() - self._started
            self.proc.kill()  # aborts the FUSE connection: reads fail
            subprocess.run([FUSERMOUNT, "-uz", self.path],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)

    def wait_mounted(self, timeout=MOUNT_TIMEOUT):
        """Polls until the mount point is mounted.  Raises MountError when
        mailfs exits first, TimeoutError when neither happens in time."""
        deadline = time.monotonic() + timeout
        while True:
            if is_mounted(self.path):
                break
            rc = self.proc.poll()
            if rc is not None:
                if is_mounted(self.path):
                    break
                raise MountError(rc, self.stderr())
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.path} not mounted after "
                                   f"{timeout:.0f}s; stderr:\n{self.stderr()}")
            time.sleep(0.05)
        self.assert_foreground()
        return self

    def assert_foreground(self):
        """With -f the process we started must serve the mount itself."""
        time.sleep(0.1)  # a daemonizing parent exits right after mounting
        rc = self.proc.poll()
        assert rc is None, \
            f"mailfs -f exited ({rc}) while its mount stays: it went to " \
            f"the background; strays: {self.strays()}"

    def strays(self):
        """Other processes running our exact command line (e.g. a child
        that daemonized): [pid]."""
        own = self.proc.pid if self.proc else None
        want = "\0".join(self.argv).encode() + b"\0"
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == own:
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read() == want:
                        found.append(int(entry))
            except OSError:
                pass
        return found

    def stderr(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode(errors="replace")

    def output(self):
        data = b""
        for p in (self.stdout_path, self.stderr_path):
            try:
                with open(p, "rb") as f:
                    data += f.read()
            except OSError:
                pass
        return data

    def unmount(self, timeout=60):
        """Unmounts and asserts a clean exit (status 0)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.assert_foreground()
            deadline = time.monotonic() + timeout
            last = None
            while is_mounted(self.path):
                r = subprocess.run([FUSERMOUNT, "-u", self.path],
                                   stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
                if r.returncode == 0:
                    break
                last = r.stdout.decode(errors="replace").strip()
                if self.proc.poll() is not None or \
                        time.monotonic() > deadline:
                    raise AssertionError(
                        f"fusermount3 -u {self.path} failed: {last}")
                time.sleep(0.2)  # busy: a reader may still be closing
            try:
                rc = self.proc.wait(timeout=max(5, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError("mailfs did not exit after unmount")
            assert not self.watchdog_fired, \
                f"the watchdog killed mailfs after {self.watchdog_fired:.0f}s"
            assert rc == 0, \
                f"mailfs exited with {rc} after unmount:\n{self.stderr()}"
        finally:
            self.kill()
            self.check_output()

    def kill(self):
        """Lazy unmount and kill; never raises."""
        if self._watchdog:
            self._watchdog.cancel()
        if self.proc is None:
            return
        if is_mounted(self.path):
            subprocess.run([FUSERMOUNT, "-uz", self.path],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.strays():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.closed = True

    def check_output(self):
        """Fails on sanitizer reports or a secret in mailfs's output."""
        self.checked = True
        data = self.output()
        assert_no_sanitizer_report(data, self.stderr_path)
        for s in self.secrets:
            assert s.encode() not in data, \
                "the password appears in mailfs's output"


class _MountFactory:
    """mount(account, ...) -> Mount; mount_fails(account, ...) ->
    (exit code, stderr).

    Arguments (all keyword except account):
      source          the URL; default account.url(scheme, host)
      scheme, host    for the default URL ("imaps"/"imap", None=127.0.0.1)
      options         extra -o options: list of "k=v" or "flag" strings
      args            extra command-line arguments before SOURCE (e.g. ["-d"])
      ca_file         True: the test CA; False: none; or a path
      password_file   True: the account's; False: none; or a path
      password        write this password to a fresh file instead
      cache_dir       None: a fresh directory; False: no cache_dir option
                      (XDG_CACHE_HOME points into the test dir); or a path
      env             extra environment variables
      mountpoint      default: a fresh directory under the test's tmp_path
      secrets         more strings that must never reach mailfs's output
    """

    def __init__(self, tmp_path, servers):
        self.tmp_path = tmp_path
        self.servers = servers
        self.mounts = []
        self.count = 0

    def _build(self, account, source=None, scheme="imaps", host=None,
               options=(), args=(), ca_file=True, password_file=True,
               password=None, cache_dir=None, env=None, mountpoint=None,
               secrets=()):
        binary = mailfs_bin()
        if not os.path.exists(binary):
            pytest.fail(f"mailfs binary {binary} does not exist: build it "
                        f"(meson compile -C build) or set MAILFS_BIN")
        self.count += 1
        n = self.count
        if mountpoint is None:
            mountpoint = os.path.join(self.tmp_path, f"mnt{n}")
        os.makedirs(mountpoint, exist_ok=True)
        logdir = os.path.join(self.tmp_path, "logs")
        os.makedirs(logdir, exist_ok=True)

        opts = []
        secrets = list(secrets)
        if account is not None:
            secrets.append(account.password)
        if password is not None:
            pf = os.path.join(self.tmp_path, f"password{n}")
            fd = os.open(pf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(password + "\n")
            opts.append(f"password_file={pf}")
            secrets.append(password)
        elif password_file is True:
            opts.append(f"password_file={account.password_file}")
        elif password_file:
            opts.append(f"password_file={password_file}")
        if ca_file is True:
            opts.append(f"ca_file={self.servers.ca.cert}")
        elif ca_file:
            opts.append(f"ca_file={ca_file}")
        if cache_dir is None:
            cache_dir = os.path.join(self.tmp_path, f"cache{n}")
        if cache_dir is not False:
            opts.append(f"cache_dir={cache_dir}")
        opts.extend(options)

        if source is None:
            source = account.url(scheme=scheme, host=host)
        argv = [binary, "-f"]
        if opts:
            argv += ["-o", ",".join(opts)]
        argv += list(args) + [source, mountpoint]

        e = dict(os.environ)
        e.pop("MAILFS_PASSWORD", None)
        e["XDG_CACHE_HOME"] = os.path.join(self.tmp_path, "xdg-cache")
        e.setdefault("ASAN_OPTIONS",
                     "detect_leaks=1:abort_on_error=0:print_summary=1")
        e.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=0")
        e.setdefault("LSAN_OPTIONS", "print_suppressions=0")
        if env:
            e.update(env)
            if env.get("MAILFS_PASSWORD"):
                secrets.append(env["MAILFS_PASSWORD"])
        m = Mount(argv, mountpoint, e, logdir, f"mailfs{n}", secrets)
        return m

    def mount(self, account, **kw):
        m = self._build(account, **kw)
        self.mounts.append(m)
        m.start()
        try:
            m.wait_mounted()
        except Exception:
            m.kill()
            raise
        return m

    def mount_fails(self, account, timeout=MOUNT_TIMEOUT, **kw):
        m = self._build(account, **kw)
        self.mounts.append(m)
        m.start()
        try:
            deadline = time.monotonic() + timeout
            while True:
                rc = m.proc.poll()
                if rc is not None:
                    break
                if is_mounted(m.path):
                    raise AssertionError(
                        f"mailfs mounted {m.path} though it was expected to "
                        f"fail; argv: {m.argv}")
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"mailfs neither failed nor mounted in "
                        f"{timeout:.0f}s; argv: {m.argv}")
                time.sleep(0.05)
            assert not is_mounted(m.path), \
                f"mailfs exited with {rc} but left {m.path} mounted"
            assert rc != 0, "mailfs exited 0 though it was expected to fail"
        finally:
            m.kill()
        m.check_output()
        return rc, m.stderr()

    def teardown(self):
        errors = []
        for m in self.mounts:
            try:
                if not m.closed:
                    m.unmount()
            except BaseException as e:  # keep going; report the first
                errors.append(e)
            finally:
                m.kill()
            if not m.checked:
                try:
                    m.check_output()
                except AssertionError as e:
                    errors.append(e)
        if errors:
            raise errors[0]


# ---------------------------------------------------------------- fixtures

def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: takes more than a few seconds")


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    base = str(tmp_path_factory.getbasetemp())
    root = os.environ.get("MAILFS_TEST_SERVERS_DIR")
    if root:
        os.makedirs(root, exist_ok=True)
    else:
        root = tempfile.mkdtemp(prefix="mailfs-servers-")
    s = mailserver.ServerSet(root)
    try:
        yield s
    finally:
        lazy_unmount_under(base)
        lazy_unmount_under(root)
        s.cleanup()


@pytest.fixture(scope="session")
def dovecot(servers):
    return servers.dovecot("main")


@pytest.fixture
def make_account(servers, tmp_path):
    """make_account(variant="main") -> Account on that Dovecot variant
    ("main", "wrongcert", "nossl", "dot")."""
    def make(variant="main"):
        return Account(servers.dovecot(variant), str(tmp_path / "accounts"))
    return make


@pytest.fixture
def account(make_account):
    return make_account("main")


@pytest.fixture
def _mounts(tmp_path, servers):
    f = _MountFactory(str(tmp_path), servers)
    try:
        yield f
    finally:
        try:
            f.teardown()
        finally:
            lazy_unmount_under(str(tmp_path))


@pytest.fixture
def mount(_mounts):
    return _mounts.mount


@pytest.fixture
def mount_fails(_mounts):
    return _mounts.mount_fails


@pytest.fixture(scope="session")
def corpus():
    return corpus_mod.build()


@pytest.fixture
def proxies():
    """proxies(upstream_port) -> a started FaultProxy, closed at teardown
    (after the mounts, when requested before `mount`)."""
    made = []

    def make(port):
        p = FaultProxy(port).start()
        made.append(p)
        return p

    try:
        yield make
    finally:
        for p in made:
            p.close()


# ---------------------------------------------------------------- helpers

def message_files(root):
    """Relative paths of every regular file under root, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full):
                out.append(os.path.relpath(full, root))
    return sorted(out)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()
