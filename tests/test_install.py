"""mailfs installed and run the way FUSE file systems are: the files
`meson install` puts in place, mount(8) and the mount helpers (also with
mount.fuse3's drop_privileges), the systemd user unit with its readiness
notification (NOTIFY_SOCKET), the manual page, and the default paths
without HOME.

The unit is run as the systemd user manager would run it (its
EnvironmentFile, specifiers and ExecStart), since the tests cannot rely on
a running manager.
"""

import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading

import pytest

from conftest import (FUSERMOUNT, MOUNT_TIMEOUT, assert_no_sanitizer_report,
                      is_mounted, mailfs_bin)
from helpers import assert_one_line, files_in, poll_until, seed

MESSAGE = (b"Date: Tue, 03 Jun 2025 10:00:00 +0000\r\n"
           b"From: Alice Example <alice@example.org>\r\n"
           b"To: Bob Builder <bob@example.net>\r\n"
           b"Subject: Installed\r\n"
           b"Message-ID: <installed.1@example.org>\r\n"
           b"\r\n"
           b"hello from an installed mailfs\r\n")
MESSAGE_NAME = "2025-06-03_1000_installed_"

SANITIZER_ENV = {k: v for k, v in os.environ.items()
                 if k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS")}


# ---------------------------------------------------------------- install

class Installed:
    """A `meson install --destdir` tree.  Paths are inside the tree, except
    prefix_bindir: where the installed files expect mailfs to be."""

    def __init__(self, dest, opts):
        prefix = opts["prefix"]

        def inside(path):
            return os.path.join(dest, os.path.join(prefix, path).lstrip("/"))

        self.dest = dest
        self.prefix_bindir = os.path.join(prefix, opts["bindir"])
        self.bindir = inside(opts["bindir"])
        self.sbindir = inside(opts["sbindir"])
        self.man1 = os.path.join(inside(opts["mandir"]), "man1")
        self.unitdir = inside(opts.get("systemduserunitdir") or
                              "lib/systemd/user")
        self.mailfs = os.path.join(self.bindir, "mailfs")
        self.unit = os.path.join(self.unitdir, "mailfs@.service")
        self.man_page = os.path.join(self.man1, "mailfs.1")
        # What a minimal environment has, with the tree's directories first.
        self.path_env = ":".join([self.bindir, self.sbindir, "/usr/sbin",
                                  "/usr/bin", "/sbin", "/bin"])


@pytest.fixture(scope="module")
def installed():
    build = os.path.dirname(mailfs_bin())
    if not os.path.isfile(os.path.join(build, "meson-private",
                                       "coredata.dat")):
        pytest.fail(f"{build} (the directory of MAILFS_BIN) is not a meson "
                    f"build directory: cannot test meson install")
    # Readable by all: mailfs runs as another user (setuid=) from here.
    dest = tempfile.mkdtemp(prefix="mailfs-install-")
    try:
        os.chmod(dest, 0o755)
        r = subprocess.run(["meson", "install", "-C", build, "--destdir",
                            dest, "--no-rebuild", "--quiet"],
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, \
            f"meson install failed:\n{r.stdout}{r.stderr}"
        r = subprocess.run(["meson", "introspect", "--buildoptions", build],
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=120, check=True)
        opts = {o["name"]: o["value"] for o in json.loads(r.stdout)}
        yield Installed(dest, opts)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def parse_unit(path):
    """{section: {key: value}} of a unit file (each key once)."""
    sections, current = {}, None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                current = sections.setdefault(line.strip("[]"), {})
                continue
            key, _, value = line.partition("=")
            assert key not in current, f"{path}: {key} given twice"
            current[key.strip()] = value.strip()
    return sections


def test_install_puts_every_file_in_place(installed):
    r = subprocess.run([installed.mailfs, "--version"], capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=60)
    version = re.search(r"^mailfs (\S+)$", r.stdout, re.M)
    assert r.returncode == 0 and version, r
    version = version.group(1)

    with open(installed.man_page) as f:
        page = f.read()
    assert page.startswith(".\\\"") and "\n.TH MAILFS 1 " in page
    assert f'"mailfs {version}"' in page

    helper = os.path.join(installed.sbindir, "mount.mailfs")
    assert os.path.isfile(helper) and os.access(helper, os.X_OK)
    with open(helper) as f:
        script = f.read()
    assert script.startswith("#!/bin/sh\n")
    assert not re.search(r"@\w+@", script), \
        "an unsubstituted @variable@ in mount.mailfs"
    mount_fuse = re.search(r"^exec (\S+) ", script, re.M).group(1)
    assert os.access(mount_fuse, os.X_OK), mount_fuse
    assert installed.prefix_bindir in script
    fuse_helper = os.path.join(installed.sbindir, "mount.fuse.mailfs")
    assert os.path.realpath(fuse_helper) == os.path.realpath(helper)

    unit = parse_unit(installed.unit)
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["EnvironmentFile"] == "%E/mailfs/%i.conf"
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == os.path.join(installed.prefix_bindir, "mailfs")
    assert "-f" in argv   # Type=notify: the process systemd started serves
    assert unit["Install"]["WantedBy"] == "default.target"


def test_unit_passes_systemd_analyze(installed, tmp_path):
    """systemd's own parser finds nothing wrong in the unit (where systemd
    is installed)."""
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed")
    # The unit names the installed path; point it at the tree's binary.
    with open(installed.unit) as f:
        text = f.read().replace(
            os.path.join(installed.prefix_bindir, "mailfs"), installed.mailfs)
    unit = tmp_path / "mailfs@work.service"
    unit.write_text(text)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    r = subprocess.run([analyze, "verify", "--user", "--man=no", str(unit)],
                       env={"PATH": os.environ["PATH"],
                            "XDG_RUNTIME_DIR": str(runtime),
                            "HOME": str(tmp_path)},
                       stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and not r.stdout.strip() and \
        not r.stderr.strip(), r.stdout + r.stderr


# ---------------------------------------------------------------- manual page

def help_options():
    """The options mailfs --help prints of its own (not FUSE's): "-o NAME"
    as NAME, flags as themselves, and the environment variables."""
    r = subprocess.run([mailfs_bin(), "--help"], capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 0, r
    own = r.stdout.split("FUSE options:")[0]
    names = set(re.findall(r"-o (\w+)", own)) - {"opt"}   # -o opt[,opt...]
    flags = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", own)) - {"-o"}
    env = set(re.findall(r"\b([A-Z][A-Z0-9]*_[A-Z0-9_]+)\b", own))
    schemes = set(re.findall(r"\b(\w+://)", own))
    assert len(names) >= 18 and {"-f", "-d", "--help"} <= flags \
        and "MAILFS_PASSWORD" in env, own
    return names, flags, env, schemes


def rendered(path):
    """The manual page as plain text, hyphenated words joined again."""
    r = subprocess.run(["groff", "-man", "-Tutf8", "-P-cbou", path],
                       capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=60,
                       env={**os.environ, "LC_ALL": "C.UTF-8"})
    assert r.returncode == 0, r.stderr
    return re.sub(r"\u2010\n\s*", "", r.stdout)


def test_man_page_renders_without_warnings(installed):
    r = subprocess.run(["groff", "-man", "-ww", "-z", installed.man_page],
                       capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 0 and not r.stderr, r.stderr


def test_man_page_documents_every_option(installed):
    names, flags, env, schemes = help_options()
    text = rendered(installed.man_page)
    missing = [n for n in sorted(names)
               if not re.search(rf"(?<![\w-]){n}(=|\b)", text)]
    missing += [f for f in sorted(flags)
                if not re.search(rf"(?<![\w-]){re.escape(f)}\b", text)]
    missing += [w for w in sorted(env | schemes) if w not in text]
    assert not missing, f"not in the manual page: {missing}"
    for section in ("SYNOPSIS", "OPTIONS", "ENVIRONMENT", "FILES",
                    "EXAMPLES"):
        assert f"\n{section}\n" in text
    # The fstab line and the systemd unit, as the tests below use them.
    assert re.search(r"^\s*imaps://\S+ /\S+ fuse\.mailfs \S+ 0 0$", text,
                     re.M)
    assert "systemctl --user enable --now mailfs@NAME" in text
    for key in ("SOURCE=", "MOUNTPOINT=", "OPTIONS="):
        assert key in text


# ---------------------------------------------------------------- mount(8)

def daemons(marker):
    """Pids of processes whose command line holds marker (the mount's own
    cache directory): the mailfs a mount helper started."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            pass
    return found


def mount_type(path):
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[1] == os.path.realpath(path):
                return fields[2]
    return None


def effective_caps(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return None


def run_helper(helper, account, mp, cache, options, env):
    """Runs helper as mount(8) does for an /etc/fstab line (SOURCE
    MOUNTPOINT -o rw,OPTIONS), with the account's options; returns the
    CompletedProcess."""
    options = [f"cache_dir={cache}"] + options
    argv = [helper, account.url(), str(mp), "-o", ",".join(["rw"] + options)]
    r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=MOUNT_TIMEOUT)
    assert_no_sanitizer_report(r.stderr.encode(), helper)
    return r


def unmount_and_reap(mp, cache):
    """umount as root; mailfs must exit.  Never leaves a mount or a
    mailfs behind, even when an assertion fails."""
    try:
        if is_mounted(str(mp)):
            r = subprocess.run(["umount", str(mp)], stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
        poll_until(lambda: not daemons(cache), "mailfs to exit after umount",
                   60, interval=0.1)
    finally:
        if is_mounted(str(mp)):
            subprocess.run([FUSERMOUNT, "-uz", str(mp)],
                           stdin=subprocess.DEVNULL, capture_output=True)
        for pid in daemons(cache):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("helper, extra", [
    ("mount.mailfs", ["noauto", "user", "_netdev", "nofail"]),
    ("mount.fuse.mailfs", ["noauto", "user", "_netdev", "nofail"]),
    ("mount.mailfs", ["drop_privileges"]),
    ("mount.fuse.mailfs", ["drop_privileges"]),
])
def test_mount_helper_with_only_path(installed, account, tmp_path, helper,
                                     extra):
    """The installed helper, run as mount(8) runs it for an fstab line in
    an environment holding nothing but PATH, mounts, lists and unmounts;
    the options only mount(8) uses are ignored.  With drop_privileges,
    mount.fuse3 mounts and mailfs serves /dev/fd/N without any
    capability."""
    seed(account, {"INBOX": [MESSAGE]})
    mp = tmp_path / "mnt"
    mp.mkdir()
    cache = str(tmp_path / "cache")
    options = [f"password_file={account.password_file}",
               f"ca_file={account.server.ca.cert}"] + extra
    try:
        r = run_helper(os.path.join(installed.sbindir, helper), account, mp,
                       cache, options, {"PATH": installed.path_env})
        assert r.returncode == 0, f"{helper}: {r.returncode}\n{r.stderr}"
        assert is_mounted(str(mp)), f"{helper} returned 0, nothing mounted"
        assert mount_type(mp) == "fuse.mailfs"
        pids = daemons(cache)
        assert len(pids) == 1, pids
        with open(f"/proc/{pids[0]}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
        if "drop_privileges" in extra:
            assert re.fullmatch(rb"/dev/fd/\d+", cmdline[2]), cmdline
            assert effective_caps(pids[0]) == 0
        else:
            assert cmdline[2] == str(mp).encode(), cmdline
        names = files_in(mp / "INBOX")
        assert len(names) == 1 and names[0].startswith(MESSAGE_NAME), names
        with open(mp / "INBOX" / names[0], "rb") as f:
            assert f.read() == MESSAGE
    finally:
        unmount_and_reap(mp, cache)


def test_mount_helper_setuid_gets_that_users_home(installed, account):
    """fstab's setuid=USER (mount.fuse3) runs mailfs as USER; without HOME
    (mount(8) passes no environment) mailfs and its password_cmd see
    USER's home directory, not root's.  (drop_privileges: root opens
    /dev/fuse, which other users may not be allowed to.)"""
    nobody = pwd.getpwnam("nobody")
    seed(account, {"INBOX": [MESSAGE]})
    # Everything nobody needs, where nobody can reach it.
    work = tempfile.mkdtemp(prefix="mailfs-setuid-")
    mp = os.path.join(work, "mnt")
    cache = os.path.join(work, "cache")
    out = os.path.join(work, "out")
    try:
        os.chmod(work, 0o755)
        for d in (mp, cache, out):
            os.mkdir(d, 0o700)
            os.chown(d, nobody.pw_uid, nobody.pw_gid)
        ca = os.path.join(work, "ca.pem")
        shutil.copy(account.server.ca.cert, ca)
        os.chmod(ca, 0o644)
        options = ["setuid=nobody", "drop_privileges", f"ca_file={ca}",
                   f"password_cmd=echo $HOME >{out}/home; "
                   f"echo {account.password}"]
        r = run_helper(os.path.join(installed.sbindir, "mount.mailfs"),
                       account, mp, cache, options,
                       {"PATH": installed.path_env})
        assert r.returncode == 0, r.stderr
        assert is_mounted(mp)
        pids = daemons(cache)
        assert len(pids) == 1, pids
        with open(f"/proc/{pids[0]}/status") as f:
            uids = re.search(r"^Uid:\s+(\d+)", f.read(), re.M).group(1)
        assert int(uids) == nobody.pw_uid
        with open(os.path.join(out, "home")) as f:
            assert f.read().strip() == nobody.pw_dir
    finally:
        try:
            unmount_and_reap(mp, cache)
        finally:
            shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- systemd

class NotifyListener:
    """A fake NOTIFY_SOCKET: an AF_UNIX datagram socket, abstract or in the
    file system.  Each datagram is recorded with whether `mountpoint` was
    mounted the moment it arrived.  .address is the variable's value."""

    def __init__(self, directory, mountpoint, abstract):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"mailfs-test-{os.getpid()}-{os.urandom(6).hex()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = os.path.join(directory, "notify")
            self.sock.bind(self.address)
        self.sock.settimeout(0.1)
        self.mountpoint = str(mountpoint)
        self.received = []     # (lines, mounted then)
        self.lock = threading.Lock()
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            mounted = is_mounted(self.mountpoint)
            with self.lock:
                self.received.append((data.decode().split("\n"), mounted))

    def messages(self):
        with self.lock:
            return list(self.received)

    def wait_for(self, line, timeout=MOUNT_TIMEOUT):
        """Waits for a datagram holding `line`; returns its index."""
        def seen():
            for i, (lines, _) in enumerate(self.messages()):
                if line in lines:
                    return i + 1
            return 0
        return poll_until(seen, f"{line} on NOTIFY_SOCKET", timeout,
                          interval=0.05) - 1

    def close(self):
        self.stop = True
        self.thread.join(5)
        self.sock.close()


def check_notifications(listener):
    """READY=1 came once, when the mount was up, after STATUS= lines."""
    ready = listener.wait_for("READY=1")
    msgs = listener.messages()
    before = [lines for lines, _ in msgs[:ready]]
    assert any(line.startswith("STATUS=connecting") for lines in before
               for line in lines), msgs
    assert msgs[ready][1], "READY=1 arrived before the mount was up"
    assert sum("READY=1" in lines for lines, _ in msgs) == 1, msgs
    # the status then says how much is mounted: INBOX at least
    status = [line for line in msgs[ready][0] if line.startswith("STATUS=")]
    assert status and re.search(r", [1-9][0-9]* folders", status[0]), msgs


@pytest.mark.parametrize("abstract", [False, True],
                         ids=["socket-file", "abstract-socket"])
def test_ready_only_once_mounted(account, mount, tmp_path, abstract):
    """With NOTIFY_SOCKET, READY=1 arrives only once the mount is up,
    STOPPING=1 on unmount; programs mailfs runs do not inherit the
    variable."""
    seed(account, {"INBOX": [MESSAGE]})
    mp = tmp_path / "mnt-notify"
    listener = NotifyListener(str(tmp_path), mp, abstract)
    env_seen = tmp_path / "password_cmd.env"
    try:
        m = mount(account, mountpoint=str(mp), password_file=False,
                  options=[f"password_cmd=env >{env_seen}; "
                           f"cat {account.password_file}"],
                  env={"NOTIFY_SOCKET": listener.address})
        check_notifications(listener)
        assert "NOTIFY_SOCKET=" not in env_seen.read_text()
        assert len(files_in(mp / "INBOX")) == 1
        m.unmount()
        stopping = listener.wait_for("STOPPING=1", timeout=60)
        assert stopping > listener.wait_for("READY=1")
    finally:
        listener.close()


def parse_environment_file(path):
    """KEY=VALUE lines as systemd.exec(5)'s EnvironmentFile= reads those
    the manual page documents: comments, optional double quotes."""
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;" or "=" not in line:
                continue
            key, _, value = line.partition("=")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            env[key.strip()] = value
    return env


def test_user_unit_mounts_and_stops(installed, account, tmp_path):
    """mailfs@work.service as the systemd user manager runs it: the account
    file ~/.config/mailfs/work.conf (no cache_dir: the default under HOME),
    a relative MOUNTPOINT taken from the home directory, READY=1 once
    mounted, and SIGTERM (systemctl stop) unmounts with exit 0."""
    seed(account, {"INBOX": [MESSAGE]})
    home = tmp_path / "home"
    config = tmp_path / "config"      # %E: $XDG_CONFIG_HOME
    (config / "mailfs").mkdir(parents=True)
    (home / "mail").mkdir(parents=True)
    (config / "mailfs" / "work.conf").write_text(
        "# the work account\n"
        f"SOURCE={account.url()}\n"
        "MOUNTPOINT=mail\n"
        f'OPTIONS="password_file={account.password_file},'
        f'ca_file={account.server.ca.cert}"\n')
    mp = home / "mail"

    service = parse_unit(installed.unit)["Service"]
    assert set(service) <= {"Type", "EnvironmentFile", "WorkingDirectory",
                            "ExecStart"}, \
        f"the unit uses keys this test does not run as systemd does: " \
        f"{sorted(service)}"
    specifiers = {"%E": str(config), "%i": "work", "%h": str(home),
                  "%%": "%"}
    env_file = re.sub(r"%.", lambda m: specifiers[m.group(0)],
                      service["EnvironmentFile"])
    conf = parse_environment_file(env_file)
    argv = []
    for word in shlex.split(service["ExecStart"]):
        var = re.fullmatch(r"\$\{(\w+)\}", word)
        argv.append(conf.get(var.group(1), "") if var else word)
    assert argv[0] == os.path.join(installed.prefix_bindir, "mailfs")
    argv[0] = installed.mailfs
    cwd = {"~": str(home)}.get(service.get("WorkingDirectory", ""))
    assert cwd, "the unit must start in the home directory"

    listener = NotifyListener(str(tmp_path), mp, abstract=False)
    env = {"PATH": installed.path_env, "HOME": str(home),
           "NOTIFY_SOCKET": listener.address, **SANITIZER_ENV}
    log = tmp_path / "unit.log"
    proc = None
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, cwd=cwd, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT,
                                    start_new_session=True)
        check_notifications(listener)
        assert proc.poll() is None, "mailfs left the foreground"
        # A lookup, not a listing: no directory handle may still be open
        # when SIGTERM ends the session (its release would never be read).
        assert stat.S_ISDIR(os.stat(mp / "INBOX").st_mode)
        account_dir = f"{account.user}@{account.server.host}"
        assert os.path.isdir(home / ".cache" / "mailfs" / account_dir)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
        assert not is_mounted(str(mp))
        listener.wait_for("STOPPING=1", timeout=10)
    finally:
        listener.close()
        if is_mounted(str(mp)):
            subprocess.run([FUSERMOUNT, "-uz", str(mp)],
                           stdin=subprocess.DEVNULL, capture_output=True)
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_no_sanitizer_report(log.read_bytes(), str(log))


# ---------------------------------------------------------------- no HOME

def test_without_home_no_tmp_fallback(account, tmp_path):
    """Without HOME or XDG_*, the default cache is under the passwd entry's
    home directory, never /tmp.  nobody's (/nonexistent) does not exist, so
    mailfs refuses with one line and creates nothing."""
    nobody = pwd.getpwnam("nobody")
    if os.path.exists(nobody.pw_dir):
        pytest.skip(f"nobody's home {nobody.pw_dir} exists here")
    account_dir = f"{account.user}@{account.server.host}"
    shared = [os.path.join("/tmp/.cache/mailfs", account_dir),
              os.path.join("/tmp/.local/state/mailfs", account_dir)]
    # A copy of mailfs and a mount point that nobody can reach.
    work = tempfile.mkdtemp(prefix="mailfs-nohome-")
    try:
        os.chmod(work, 0o755)
        binary = os.path.join(work, "mailfs")
        shutil.copy(mailfs_bin(), binary)
        mp = os.path.join(work, "mnt")
        os.mkdir(mp)
        os.chmod(mp, 0o777)
        argv = ["setpriv", f"--reuid={nobody.pw_uid}",
                f"--regid={nobody.pw_gid}", "--clear-groups", "--",
                binary, "-f", account.url(), mp]
        env = {"PATH": os.environ["PATH"], "MAILFS_PASSWORD": account.password,
               **SANITIZER_ENV}
        r = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True,
                           timeout=MOUNT_TIMEOUT)
        assert_no_sanitizer_report(r.stderr.encode())
        assert r.returncode == 1, r.stderr
        line = assert_one_line(r.stderr, "cache_dir")
        assert nobody.pw_dir in line
        assert not is_mounted(mp)
        for path in shared:
            assert not os.path.exists(path), f"{path} was created"
    finally:
        if is_mounted(os.path.join(work, "mnt")):
            subprocess.run([FUSERMOUNT, "-uz", os.path.join(work, "mnt")],
                           stdin=subprocess.DEVNULL, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
        for path in shared:
            shutil.rmtree(path, ignore_errors=True)
