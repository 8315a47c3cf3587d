"""Integration tests: hostile input from the servers and from the user.

  - folder names the server lists that are no safe file names: '/', '.',
    '..', control characters, NUL, invalid or non-canonical modified
    UTF-7, names that only differ in characters a file name cannot hold;
    some made by Dovecot itself (maildir directories created on disk),
    the rest injected into the LIST answer by a proxy (faultproxy.py);
  - POP3 unique-ids holding '/' and '..' (Dovecot takes them from the
    messages' X-UIDL header: pop3_reuse_xuidl in mailserver.py);
  - allow_other without default_permissions;
  - an outbox spool on a full disk;
  - envelope addresses over the RFC 5321 limits.

Wherever a name comes from the server, the test also checks that mailfs
created nothing outside its cache directory.  Nothing here depends on the
speed of the machine: waits poll with generous deadlines.
"""

import errno
import os
import random
import stat
import subprocess
import sys
import urllib.parse

import pytest

from conftest import _unescape_mount, read_bytes
from fakeimap import FakeImapServer
from helpers import fill_up, leave_room, sha, tmpfs
# The outbox fixtures and helpers (make_smtp, smtp, outbox) are shared.
from test_outbox import (  # noqa: F401,F811  (fixtures used by name)
    close_errno, listing, make_smtp, message, outbox, smtp, subject_of)

DEADLINE = float(os.environ.get("MAILFS_TEST_HOSTILE_DEADLINE", "120"))
NAME_MAX = 255


# ---------------------------------------------------------------- helpers

def make_message(tag, size=0):
    """A message identified by tag (in its Subject and Message-ID)."""
    rng = random.Random(tag)
    head = (f"Date: Tue, 03 Jun 2025 {rng.randrange(8, 18):02d}:"
            f"{rng.randrange(60):02d}:00 +0000\r\n"
            f"From: Alice Example <alice@example.org>\r\n"
            f"To: Bob Builder <bob@example.net>\r\n"
            f"Subject: Hostile {tag}\r\n"
            f"Message-ID: <{tag}.{rng.getrandbits(64):016x}@hostile.example>"
            f"\r\n\r\n").encode()
    line = b"".join(bytes([0x41 + rng.randrange(26)]) for _ in range(76))
    body = b"Hello.\r\n" + (line + b"\r\n") * max(0, size // 78)
    return head + body


def is_safe_component(name):
    """True when name (str from os.listdir) is one harmless path
    component: valid UTF-8, not '.' or '..', no '/', no NUL, no control
    characters (C0, DEL, C1), at most 255 bytes."""
    raw = os.fsencode(name)
    if not raw or len(raw) > NAME_MAX or raw in (b".", b".."):
        return False
    if b"/" in raw or b"\0" in raw:
        return False
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 for c in text)


def walk_mount(root):
    """Every directory and file under root: ({relative dir path},
    {relative file path}, {relative dir path: OSError}).  A directory whose
    folder the server will not open may fail to list: that is recorded,
    not raised."""
    dirs, files, errors = set(), set(), {}
    stack = [""]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else root
        try:
            names = os.listdir(full)
        except OSError as e:
            errors[rel] = e
            continue
        for n in names:
            assert is_safe_component(n), \
                f"unsafe name {os.fsencode(n)!r} in {rel or '/'}"
            r = os.path.join(rel, n) if rel else n
            st = os.lstat(os.path.join(root, r))
            if stat.S_ISDIR(st.st_mode):
                dirs.add(r)
                stack.append(r)
            else:
                assert stat.S_ISREG(st.st_mode), f"{r}: neither file nor dir"
                files.add(r)
    return dirs, files, errors


class Sandbox:
    """A directory holding only the cache directory: mailfs must create
    nothing beside it (a name with '..' would land here or above), and
    nothing under it may point outside it."""

    def __init__(self, tmp_path, label="box"):
        self.root = str(tmp_path / label / "deeper")
        self.cache = os.path.join(self.root, "cache")
        os.makedirs(self.cache)
        self.tmp_path = str(tmp_path)
        self._before = self._outside()

    def _outside(self):
        """Entries of the test's directory and the two levels above the
        cache, apart from the cache itself."""
        out = set()
        for d in (self.tmp_path, os.path.dirname(self.root), self.root):
            for n in os.listdir(d):
                out.add(os.path.join(d, n))
        out.discard(self.cache)
        return out

    def check(self):
        new = self._outside() - self._before
        # The mount fixture makes mount points and a log directory.
        new = {p for p in new
               if not (os.path.dirname(p) == self.tmp_path and
                       (os.path.basename(p).startswith("mnt") or
                        os.path.basename(p) in ("logs", "accounts")))}
        assert not new, f"created outside the cache directory: {sorted(new)}"
        xdg = os.path.join(self.tmp_path, "xdg-cache")
        assert not os.path.exists(xdg) or not os.listdir(xdg), \
            f"files in XDG_CACHE_HOME: {os.listdir(xdg)}"
        top = os.path.realpath(self.cache)
        for dirpath, dirnames, filenames in os.walk(self.cache):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                assert not os.path.islink(p), f"symbolic link {p}"
                assert os.path.realpath(p).startswith(top + os.sep), p
                assert is_safe_component(n), f"cache file name {n!r}"


def chown_tree(path, uid, gid):
    for dirpath, dirnames, filenames in os.walk(path):
        os.chown(dirpath, uid, gid)
        for n in filenames:
            os.chown(os.path.join(dirpath, n), uid, gid)


def make_maildir_folder(server, user, dirname, raw):
    """Creates the Maildir++ folder directory `dirname` (bytes, with its
    leading '.') for user with one message, as if another program had
    made it: Dovecot lists whatever directories it finds."""
    base = os.path.join(os.fsencode(server.home_root), user.encode(),
                        b"Maildir")
    path = os.path.join(base, dirname)
    for sub in (b"cur", b"new", b"tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    with open(os.path.join(path, b"cur",
                           b"1700000000.M1P1.hostile,S=%d:2," % len(raw)),
              "wb") as f:
        f.write(raw)
    chown_tree(path, server._uid, server._gid)


def list_raw(account):
    """The server's LIST "" "*" as raw names (bytes, as sent)."""
    with account.client() as c:
        typ, data = c.imap.list('""', '"*"')
        assert typ == "OK", data
    out = []
    for item in data:
        if item is None:
            continue
        if isinstance(item, tuple):
            out.append(item[1])
            continue
        name = item.split(b") ", 1)[1].split(b" ", 1)[1]
        if name.startswith(b'"'):
            name = name[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\")
        out.append(name)
    return out


def messages_by_hash(root, files):
    """{sha of content: [relative path]} of every file that reads."""
    out = {}
    for f in sorted(files):
        out.setdefault(sha(read_bytes(os.path.join(root, f))), []).append(f)
    return out


# ------------------------------------------------- folder names from Dovecot

# Folders created over IMAP, each holding one message.  Their names are
# what the hostile ones below turn into once made safe, so each must stay
# a folder of its own, under exactly this name.
PLAIN_FOLDERS = ["cr_x", "lf_x", "tab_x", "_", "x/_/y", "del_x"]

# Maildir++ directories made on disk.  Dovecot lists them under escaped
# or literal names ("cr&AA0-x" is "cr\rx"; "..." is the folders "",
# "/" and "//"; ".x..y" is "x", "x/" and "x//y"), but cannot open most of
# them: mailfs must show them safely and go on serving the rest.
DISK_FOLDERS = [b".cr\rx", b".lf\nx", b".tab\tx", b".del\x7fx",
                b".c1\xc2\x85x", b"...", b".x..y", b".&AAA-", b".&Jjo",
                b".&AGE-", b".&AC8-", b".&AC4ALg-"]


def create_and_fill(c, messages):
    """Creates each folder of {name: raw} with its parents and appends
    its message."""
    for f, raw in messages.items():
        parts = f.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub not in {n for n, _, _ in c.list()}:
                c.create(sub)
        c.append(f, raw)


def test_folder_names_from_dovecot(account, mount, tmp_path):
    box = Sandbox(tmp_path)
    plain = {f: make_message(f"plain-{i}") for i, f in
             enumerate(PLAIN_FOLDERS)}
    inbox_msg = make_message("inbox")
    with account.client() as c:
        c.append("INBOX", inbox_msg)
        create_and_fill(c, plain)
    for i, d in enumerate(DISK_FOLDERS):
        make_maildir_folder(account.server, account.user, d,
                            make_message(f"disk-{i}"))
    raws = list_raw(account)
    assert len(set(raws)) == len(raws)

    # One connection: a response that throws the connection off (see
    # listdir_settled) can only fail the very next command.
    opts = ["pop3=none", "connections=1"]
    m = mount(account, cache_dir=box.cache, options=opts)
    dirs, files, errors = walk_mount(m.path)
    # One directory per folder the server lists: none merged, none lost.
    assert len(dirs) == len(raws), (sorted(dirs), raws)
    # Each plain folder under its own name, with its own message only.
    for f, raw in plain.items():
        assert f in dirs, (f, sorted(dirs))
        names = listdir_settled(os.path.join(m.path, f))
        assert len(names) == 1, (f, names)
        assert read_bytes(os.path.join(m.path, f, names[0])) == raw, f
    # No message shows up twice (a folder merged into another would).
    by_hash = messages_by_hash(m.path, files)
    assert all(len(v) == 1 for v in by_hash.values()), by_hash
    [name] = listdir_settled(os.path.join(m.path, "INBOX"))
    assert read_bytes(os.path.join(m.path, "INBOX", name)) == inbox_msg
    m.unmount()

    # The same tree from the cached folder list.
    m2 = mount(account, cache_dir=box.cache, options=opts)
    dirs2, _, _ = walk_mount(m2.path)
    assert dirs2 == dirs
    for f, raw in plain.items():
        names = listdir_settled(os.path.join(m2.path, f))
        assert len(names) == 1 and \
            read_bytes(os.path.join(m2.path, f, names[0])) == raw, f
    m2.unmount()
    box.check()


def listdir_settled(path):
    """os.listdir, tried a second time after EIO: Dovecot answers EXAMINE
    of a folder whose name holds a LF with a bare LF in its NO line, which
    throws the next command on that connection off (see
    test_bare_lf_in_a_response_fails_no_other_folder)."""
    try:
        return os.listdir(path)
    except OSError as e:
        if e.errno != errno.EIO:
            raise
    return os.listdir(path)


def test_bare_lf_in_a_response_fails_no_other_folder(account, mount):
    """A response line broken by a bare LF (Dovecot's NO to EXAMINE of
    "lf&AAo-x") must cost at most that folder, not the next command on
    the same connection."""
    raws = {f: make_message(f"lf-{f}") for f in ("one", "two")}
    with account.client() as c:
        for f, raw in raws.items():
            c.create(f)
            c.append(f, raw)
    make_maildir_folder(account.server, account.user, b".lf\nx",
                        make_message("lf-disk"))
    m = mount(account, options=["pop3=none", "connections=1"])
    assert sorted(os.listdir(m.path)) == ["INBOX", "lf_x", "one", "two"]
    with pytest.raises(OSError):
        os.listdir(os.path.join(m.path, "lf_x"))
    for f, raw in raws.items():
        [name] = os.listdir(os.path.join(m.path, f))
        assert read_bytes(os.path.join(m.path, f, name)) == raw


# ------------------------------------------------ folder names from a proxy

def lit(data):
    return b"{%d}\r\n" % len(data) + data


# (LIST line tail after the flags, what it is)
INJECTED = [
    (b'"/" "."', "a dot"),
    (b'"/" ".."', "two dots"),
    (b'"/" "up/../../../evil"', "dot-dot components"),
    (b'"/" "./x"', "a dot component"),
    (b'NIL "a/b"', "a slash in a flat name"),
    (b'"." "x/y"', "a slash in a component"),
    (b'NIL "real/child"', "an existing folder, flat"),
    (b'"/" ' + lit(b"cr\r\nlf"), "CR LF in a literal"),
    (b'"/" ' + lit(b"nul\0evil"), "NUL in a literal"),
    (b'"/" "&Jjo"', "unterminated modified UTF-7"),
    (b'"/" "&AGE-"', "non-canonical modified UTF-7"),
    (b'"/" "&AAA-"', "an encoded NUL"),
    (b'"/" "&AC8-"', "an encoded slash"),
    (b'"/" "&AC4ALg-"', "an encoded dot-dot"),
    (b'"/" "bad&AAo-lf"', "an encoded LF"),
    (b'"/" "&-"', "a lone ampersand"),
    (b'"/" ' + lit(b"\xff\xfe\x80"), "invalid UTF-8"),
    (b'"/" "' + b"L" * 300 + b'"', "300 bytes"),
    (b'"/" ""', "empty"),
    (b'"/" "/"', "only a separator"),
    (b'"/" ' + lit(b"zz\r\nX1 CREATE pwned\r\nX2 NOOP"),
     "a command after CR LF"),
]

# Real folders whose names the injected ones collide with once made safe.
REAL_FOLDERS = ["a_b", "x_y", "real/child", "cr__lf", "&Jjo", "&AGE-",
                "bad_lf", "_"]

# What the mount must show.  Names that collide once made safe get "~2";
# the folder shown unchanged keeps its name (or, when both are, the one
# whose raw name sorts first: "&-Jjo" before "&Jjo").  Names with CR or LF
# cannot be sent back to the server safely and are left out; libetpan
# ends a name at a NUL.
INJECTED_TREE = {
    "INBOX", "a_b", "x_y", "real", "real/child", "cr__lf", "&Jjo", "&AGE-",
    "bad_lf", "_",
    "_.", "_..", "_./x",
    "up", "up/_..", "up/_../_..", "up/_../_../_..", "up/_../_../_../evil",
    "a_b~2", "x_y~2", "real_child", "nul", "&Jjo~2", "&AGE-~2", "&AAA-",
    "&AC8-", "&AC4ALg-", "bad_lf~2", "&", "___", "L" * NAME_MAX, "_~2",
    "_~2/_",
}


def test_injected_folder_names(make_account, proxies, mount, tmp_path):
    account = make_account("nossl")
    box = Sandbox(tmp_path)
    real = {f: make_message(f"real-{i}") for i, f in enumerate(REAL_FOLDERS)}
    inbox_msg = make_message("inbox-injected")
    with account.client() as c:
        c.append("INBOX", inbox_msg)
        create_and_fill(c, real)
    raws_before = list_raw(account)

    proxy = proxies(account.server.imap_port)
    extra = b"".join(b"* LIST (\\HasNoChildren) " + tail + b"\r\n"
                     for tail, _ in INJECTED)
    # After the INBOX entry of every connection's first LIST "" "*".
    proxy.inject_after(rb'^\* LIST \([^)]*\) "/" "?INBOX"?\r\n$', extra)
    m = mount(account, source=f"imap://{account.user}@127.0.0.1:{proxy.port}",
              ca_file=False, cache_dir=box.cache,
              options=["allow_plaintext", "pop3=none", "connections=1",
                       "refresh=100000", "timeout=30"])
    assert proxy.injected >= 1, "the LIST answer was never seen"
    dirs, files, errors = walk_mount(m.path)
    # A folder the server will not open fails readdir, so its children
    # ("_./x" below ".") are looked up by name.
    for d in INJECTED_TREE - dirs:
        assert os.path.dirname(d) in errors and \
            os.path.isdir(os.path.join(m.path, d)), d
        dirs.add(d)
    assert dirs == INJECTED_TREE, (sorted(dirs - INJECTED_TREE),
                                   sorted(INJECTED_TREE - dirs))

    # Every real folder: under its own name, with its own message.
    for f, raw in real.items():
        names = listdir_settled(os.path.join(m.path, f))
        assert len(names) == 1, (f, names)
        assert read_bytes(os.path.join(m.path, f, names[0])) == raw, f
    # The injected flat "real/child" opens the real folder "real/child".
    [name] = listdir_settled(os.path.join(m.path, "real_child"))
    assert read_bytes(os.path.join(m.path, "real_child", name)) == \
        real["real/child"]
    # INBOX still reads after all the refusals.
    [name] = listdir_settled(os.path.join(m.path, "INBOX"))
    assert read_bytes(os.path.join(m.path, "INBOX", name)) == inbox_msg
    m.unmount()

    # Nothing the names held reached the server as a command.
    raws_after = list_raw(account)
    assert sorted(raws_after) == sorted(raws_before), raws_after
    box.check()


# ---------------------------------------------------------------- POP3 UIDL

HOSTILE_UIDLS = ["../../evil", "a/b", "..", ".", "/etc/passwd",
                 "x/../../../y", "~", "-", "%2e%2e%2fz", "A" * 70]


def xuidl_message(i, uidl):
    return (f"X-UIDL: {uidl}\r\n").encode() + make_message(f"uidl-{i}")


def pop3_uidls(account):
    with account.pop3() as p:
        _, lines, _ = p.uidl()
    return [line.split(b" ", 1)[1].decode() for line in lines]


def test_pop3_hostile_uidls(account, mount, tmp_path):
    box = Sandbox(tmp_path)
    raws = [xuidl_message(i, u) for i, u in enumerate(HOSTILE_UIDLS)]
    # Two messages sharing a unique-id identify neither by it.
    raws.append(xuidl_message(100, "../../evil"))
    raws.append(make_message("uidl-none"))
    with account.client() as c:
        for raw in raws:
            c.append("INBOX", raw)
    uidls = pop3_uidls(account)
    for u in HOSTILE_UIDLS:
        assert u in uidls, f"Dovecot did not take X-UIDL {u!r}: {uidls}"

    m = mount(account, source=account.url("pop3s"), cache_dir=box.cache)
    assert os.listdir(m.path) == ["INBOX"]
    inbox = os.path.join(m.path, "INBOX")
    dirs, files, errors = walk_mount(m.path)
    assert not errors and dirs == {"INBOX"}
    got = sorted(sha(read_bytes(os.path.join(m.path, f))) for f in files)
    assert got == sorted(sha(r) for r in raws)
    names = os.listdir(inbox)
    m.unmount()

    # Again from what was kept: the same names and bytes.
    m2 = mount(account, source=account.url("pop3s"), cache_dir=box.cache)
    assert sorted(os.listdir(os.path.join(m2.path, "INBOX"))) == \
        sorted(names)
    got = sorted(sha(read_bytes(os.path.join(m2.path, "INBOX", n)))
                 for n in names)
    assert got == sorted(sha(r) for r in raws)
    m2.unmount()
    box.check()


# ---------------------------------------------------------------- allow_other

@pytest.mark.parametrize("how", ["list", "separate", "joined"])
def test_allow_other_without_default_permissions_refused(account,
                                                         mount_fails, how):
    kw = {}
    if how == "list":
        kw["options"] = ["allow_other"]
    elif how == "separate":
        kw["args"] = ["-o", "allow_other"]
    else:
        kw["args"] = ["-oallow_other,ro"]
    rc, err = mount_fails(account, **kw)
    assert rc != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "allow_other" in lines[0] and "default_permissions" in lines[0], \
        err


def mount_entry(path):
    """(source, options) of the mount at path, from /proc/self/mountinfo:
    the per-mount and the superblock options together."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" ")
            if _unescape_mount(fields[4]) == os.path.realpath(path):
                sep = fields.index("-")
                return (_unescape_mount(fields[sep + 2]),
                        set(fields[5].split(",")) |
                        set(fields[sep + 3].strip().split(",")))
    raise AssertionError(f"{path} is not mounted")


@pytest.mark.parametrize("user", ["x%2Callow_other",
                                  "x%2Callow_other%2Cfsname%3Dz",
                                  "x%5C%2Callow_other", "x%5C"])
def test_user_name_adds_no_mount_options(user, mount):
    """libfuse splits its options at ',' (and '\\' escapes): the user
    name, which goes into the fsname option, must not add options."""
    with FakeImapServer({"INBOX": []}) as fake:
        m = mount(None, source=f"imap://{user}@127.0.0.1:{fake.port}",
                  password="fake-secret", ca_file=False,
                  options=["allow_plaintext", "pop3=none"])
        source, options = mount_entry(m.path)
        decoded = urllib.parse.unquote(user)
        assert "allow_other" not in options, options
        assert source == f"mailfs#{decoded}@127.0.0.1", source
        # Logged in as that user (a quoted string: '\\' doubled).
        quoted = decoded.replace("\\", "\\\\").encode()
        assert any(line.split(b" ")[1:3] == [b"LOGIN", b'"' + quoted + b'"']
                   for line in fake.lines), fake.lines
        m.unmount()


def _as_nobody(fd, code):
    """Runs python code as user nobody with the mount's root directory as
    descriptor 3 (so no directory above the mount point is searched);
    returns (exit status, output)."""
    r = subprocess.run(
        [sys.executable, "-c", code], pass_fds=(fd,), user=65534,
        group=65534, extra_groups=[], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
        cwd="/")
    return r.returncode, r.stdout.decode(errors="replace")


def test_allow_other_with_default_permissions(account, mount):
    raw = make_message("allow-other")
    with account.client() as c:
        c.append("INBOX", raw)
    m = mount(account, options=["allow_other", "default_permissions",
                                "pop3=none"])
    [name] = os.listdir(os.path.join(m.path, "INBOX"))
    assert read_bytes(os.path.join(m.path, "INBOX", name)) == raw
    with open("/proc/self/mountinfo") as f:
        line = [ln for ln in f if f" {m.path} " in ln][0]
    assert "allow_other" in line and "default_permissions" in line, line

    fd = os.open(m.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # allow_other lets another user reach the file system at all
        # (fstat would fail with EACCES without it) ...
        rc, out = _as_nobody(fd, f"import os; os.fstat({fd}); print('ok')")
        assert rc == 0 and "ok" in out, out
        # ... and default_permissions has the kernel apply the modes
        # (0700 directories, 0600 files owned by the mounting user).
        code = ("import errno, os\n"
                f"fd = {fd}\n"
                "for what in ('list', 'open'):\n"
                "    try:\n"
                "        if what == 'list':\n"
                "            os.listdir(os.open('.', os.O_RDONLY |"
                " os.O_DIRECTORY, dir_fd=fd))\n"
                "        else:\n"
                f"            os.open('INBOX/{name}', os.O_RDONLY,"
                " dir_fd=fd)\n"
                "        print(what, 'allowed')\n"
                "    except OSError as e:\n"
                "        print(what, errno.errorcode[e.errno])\n")
        rc, out = _as_nobody(fd, code)
        assert rc == 0, out
        assert "list EACCES" in out and "open EACCES" in out, out
    finally:
        os.close(fd)
    m.unmount()


# ---------------------------------------------------------------- full spool

@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs, always unmounted at teardown."""
    with tmpfs(str(tmp_path / "tiny"), "64k", "mailfs-hostile") as path:
        yield path


def write_close_errno(path, data):
    """open, write everything, close: None when all succeeded, else the
    errno of the step that failed (the descriptor is closed either way)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        try:
            os.close(fd)
        except OSError:
            pass
        return e.errno
    try:
        os.close(fd)
    except OSError as e:
        return e.errno
    return None


def spool_entries(spool):
    """{area: sorted names} of the spool's queue, tmp and state."""
    out = {}
    for area in ("queue", "tmp", "state"):
        p = os.path.join(spool, area)
        out[area] = sorted(os.listdir(p)) if os.path.isdir(p) else []
    return out


def test_full_spool_refuses_at_close(outbox, smtp, tiny_tmpfs):
    spool = os.path.join(tiny_tmpfs, "spool")
    ob = outbox(spool_dir=spool)
    big = message("too big", body=(b"y" * 76 + b"\r\n") * 3000)
    assert len(big) > 3 * 64 * 1024
    err = write_close_errno(ob.file("big.eml"), big)
    assert err in (errno.ENOSPC, errno.EIO), \
        f"writing a message larger than the spool: {err}"
    assert spool_entries(spool) == {"queue": [], "tmp": [], "state": []}

    # A small one on a spool without a free byte.
    filler = fill_up(tiny_tmpfs)
    err = write_close_errno(ob.file("small.eml"), message("small"))
    assert err in (errno.ENOSPC, errno.EIO), err
    assert spool_entries(spool) == {"queue": [], "tmp": [], "state": []}
    for name in ("big.eml", "small.eml"):
        if name in listing(ob.path):
            status = os.getxattr(ob.file(name), "user.mail.status").decode()
            assert status == "not queued", (name, status)

    # With room again (the refused files, kept in the spool, removed)
    # the next message goes out, and only it: the sender works in order,
    # so anything queued before would arrive first.
    os.unlink(filler)
    for name in ("big.eml", "small.eml"):
        if name in listing(ob.path):
            os.unlink(ob.file(name))
    assert write_close_errno(ob.file("after.eml"), message("after")) is None
    smtp.wait(lambda s: any(subject_of(d) == "after" for d in s.deliveries),
              what="delivery of 'after'")
    deliveries, attempts, _ = smtp.snapshot()
    assert [subject_of(d) for d in attempts] == ["after"]
    assert [subject_of(d) for d in deliveries] == ["after"]
    ob.mount.unmount()
    assert spool_entries(spool)["queue"] == []
    assert spool_entries(spool)["tmp"] == []
    deliveries, attempts, _ = smtp.snapshot()
    assert [subject_of(d) for d in attempts] == ["after"]


def test_close_that_failed_is_not_sent_later(outbox, smtp, tiny_tmpfs):
    """close() reported ENOSPC: the message must not be queued behind the
    writer's back when another holder of the descriptor closes it after
    space came back (the last close, whose errors nobody sees)."""
    spool = os.path.join(tiny_tmpfs, "spool")
    ob = outbox(spool_dir=spool)
    # Room for the file being written (a page), not for its queued copy.
    filler = leave_room(tiny_tmpfs, 4096)
    fd = os.open(ob.file("late.eml"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                 0o600)
    try:
        data = message("late")
        assert os.write(fd, data) == len(data)
        # Another process keeps the descriptor open until told to close.
        holder = subprocess.Popen(
            [sys.executable, "-c",
             f"import os, sys; sys.stdin.read(); os.close({fd})"],
            pass_fds=(fd,), stdin=subprocess.PIPE)
    except BaseException:
        os.close(fd)
        raise
    try:
        with pytest.raises(OSError) as e:
            os.close(fd)   # the writer's close: the spool is full
        assert e.value.errno in (errno.ENOSPC, errno.EIO), e.value
        os.unlink(filler)
        holder.stdin.close()
        assert holder.wait(timeout=DEADLINE) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert write_close_errno(ob.file("after.eml"), message("after")) is None
    smtp.wait(lambda s: any(subject_of(d) == "after" for d in s.deliveries),
              what="delivery of 'after'")
    deliveries, attempts, _ = smtp.snapshot()
    assert [subject_of(d) for d in attempts] == ["after"]
    assert "late.eml" not in os.listdir(os.path.join(spool, "queue"))


# ---------------------------------------------------------------- addresses

LONG_LOCAL = "l" * 65
LONG_LABEL = "d" * 64
LONG_DOMAIN = ".".join(["d" * 63] * 4) + ".example"  # 263 octets
LONG_PATH = "p" * 60 + "@" + ".".join(["e" * 60] * 3) + "." + "f" * 15 + \
    ".example"   # domain < 256, address > 256

BAD_ADDRESSES = {
    "local-65": f"{LONG_LOCAL}@example.net",
    "label-64": f"bob@{LONG_LABEL}.example.net",
    "domain-263": f"bob@{LONG_DOMAIN}",
    "path-257": LONG_PATH,
}


def test_address_limits(outbox, smtp):
    assert len(LONG_PATH) > 256 and len(LONG_PATH.split("@")[1]) < 256
    assert len(LONG_DOMAIN) > 255
    ob = outbox()
    for case, addr in sorted(BAD_ADDRESSES.items()):
        for field in ("To", "From"):
            name = f"{case}-{field.lower()}.eml"
            if field == "To":
                raw = message(name, to=addr)
            else:
                raw = message(name, sender=addr)
            assert close_errno(ob.file(name), raw) == errno.EINVAL, name
            assert name not in listing(ob.path), name
            assert name in listing(ob.failed), name
            reason = read_bytes(os.path.join(ob.failed, name + ".error")) \
                .decode(errors="replace")
            assert "octets" in reason or "long" in reason, (name, reason)

    # Exactly at the limits: accepted and sent as written.
    local64 = "l" * 64 + "@example.net"
    label63 = "bob@" + "d" * 63 + ".example.net"
    raw = message("at-limits", to=f"{local64}, {label63}")
    ob.send("at-limits.eml", raw)
    [d] = smtp.wait_deliveries(1)
    assert subject_of(d) == "at-limits"
    assert sorted(d.rcpt_tos) == sorted([local64, label63])
    deliveries, attempts, events = smtp.snapshot()
    assert len(attempts) == 1
    for kind, detail in events:
        for addr in BAD_ADDRESSES.values():
            assert addr not in detail, (kind, detail)


def test_crlf_in_addresses_never_reach_the_wire(outbox, smtp):
    """Line breaks that would add an SMTP command, in every place an
    address can come from (the header fields and the from= option)."""
    evil = "RCPT TO:<evil@example.com>"
    cases = {
        "to-crlf": b"To: bob@example.net\r\n" + evil.encode() + b"\r\n",
        "to-quoted-cr": b'To: "bob\r' + evil.encode() + b'"@example.net\r\n',
        "to-angle-lf": b"To: <bob@example.net\n" + evil.encode() + b">\r\n",
        "bcc-crlf": b"To: bob@example.net\r\nBcc: <carol@example.net\r\n"
                    + evil.encode() + b">\r\n",
        "sender-crlf": b"To: bob@example.net\r\n"
                       b"Sender: <alice@example.org\r\nMAIL FROM:<evil@x>>"
                       b"\r\n",
    }
    ob = outbox()
    for case, fields in cases.items():
        raw = (b"From: alice@example.org, carol@example.org\r\n" + fields +
               b"Subject: " + case.encode() + b"\r\n"
               b"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
               b"Message-ID: <" + case.encode() + b".1@example.org>\r\n"
               b"\r\nbody\r\n")
        if case != "sender-crlf":
            raw = raw.replace(b"From: alice@example.org, carol@example.org",
                              b"From: alice@example.org")
        name = case + ".eml"
        assert close_errno(ob.file(name), raw) == errno.EINVAL, case
        assert name not in listing(ob.path), case
        assert name in listing(ob.failed), case
    raw = message("barrier")
    ob.send("barrier.eml", raw)
    smtp.wait(lambda s: any(subject_of(d) == "barrier"
                            for d in s.deliveries), what="the barrier")
    deliveries, attempts, events = smtp.snapshot()
    assert [subject_of(d) for d in attempts] == ["barrier"]
    for kind, detail in events:
        assert "evil" not in detail, (kind, detail)


@pytest.mark.parametrize("value", ["bob@example.net\r\nRCPT TO:<evil@x>",
                                   "l" * 65 + "@example.org",
                                   "a@" + LONG_DOMAIN])
def test_bad_from_option_refused(account, mount_fails, smtp, value):
    rc, err = mount_fails(account, options=[f"smtp={smtp.url()}",
                                            f"from={value}"])
    assert rc != 0
    # One line, even when the value holds a line break.
    lines = err.replace("\r", "\n").splitlines()
    assert len(lines) == 1 and "from=" in lines[0], err
    assert "evil" not in err or "?RCPT" in err, err
    # (the server's own readiness probe shows as a "connect")
    talked = [e for e in smtp.snapshot()[2]
              if e[0] not in ("start", "connect")]
    assert not talked, talked
