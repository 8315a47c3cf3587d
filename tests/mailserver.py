"""Throwaway mail servers for the integration tests and the demo.

Everything lives under one temporary directory and is torn down completely
by stop().  Dovecot's master runs as the calling user (root); its login and
mail processes switch to the dovenull and dovecot users.

  TestCA          a certificate authority made with the openssl tool, and
                  server certificates signed by it (one for 127.0.0.1 and
                  localhost, one for another host name).
  Dovecot         a Dovecot instance with its own configuration, free ports
                  for IMAP (STARTTLS), IMAPS, POP3 and POP3S, a passwd-file
                  user database that users can be added to at run time, and
                  maildir mailboxes.
  ImapClient      an imaplib.IMAP4_SSL client trusting the test CA, used to
                  seed and inspect mailboxes over its own connection, never
                  through a mount.
  ServerSet       the CA, both certificates and the Dovecot variants, each
                  started on first use.

Folder names given to ImapClient are Unicode paths with '/' between the
levels ("Projects/2026/Q1 & Q2"); they are translated to the server's
hierarchy delimiter and encoded in modified UTF-7 (RFC 3501 5.1.3).
"""

import base64
import contextlib
import datetime
import fcntl
import imaplib
import os
import random
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

DOVECOT_USER = "dovecot"


def _which(name):
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin"
    found = shutil.which(name, path=path)
    if not found:
        raise RuntimeError(f"{name} not found (is it installed?)")
    return found


# Ports handed out by free_port(): never the same one twice in a run, and
# never one another run on this machine holds (a lock file per port, kept
# until the process ends).  They come from below the kernel's ephemeral
# range, so an outgoing connection cannot take one before its server binds.
_PORT_LOCK_DIR = "/tmp/mailfs-test-ports"
_ports_held = {}


def _port_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    top = max(low - 1, 2048)
    return max(1024, top - 12000), top


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now and that no
    other free_port() call, in this process or another, has handed out."""
    os.makedirs(_PORT_LOCK_DIR, mode=0o1777, exist_ok=True)
    low, high = _port_range()
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randint(low, high)
        if port in _ports_held:
            continue
        fd = os.open(os.path.join(_PORT_LOCK_DIR, str(port)),
                     os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # as the servers bind: a port in TIME_WAIT is usable
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                os.close(fd)
                continue
        _ports_held[port] = fd
        return port
    raise RuntimeError("no free TCP port found on 127.0.0.1")


def closed_port():
    """A port on 127.0.0.1 where a connection is refused."""
    return free_port()


def wait_for_port(port, host="127.0.0.1", timeout=30.0, proc=None):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} "
                                   f"before port {port} opened")
            if time.monotonic() > deadline:
                raise TimeoutError(f"port {host}:{port} did not open "
                                   f"within {timeout:.0f}s")
            time.sleep(0.05)


# ---------------------------------------------------------------- modified UTF-7

def mutf7_encode(text):
    """Unicode folder name -> IMAP modified UTF-7 (RFC 3501 5.1.3)."""
    out = []
    pending = []

    def flush():
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            b64 = base64.b64encode(raw).decode("ascii").rstrip("=")
            out.append("&" + b64.replace("/", ",") + "-")
            pending.clear()

    for ch in text:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def mutf7_decode(name):
    """IMAP modified UTF-7 -> Unicode."""
    out = []
    i = 0
    while i < len(name):
        ch = name[i]
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = name.index("-", i + 1)
        chunk = name[i + 1:end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            b64 += "=" * (-len(b64) % 4)
            out.append(base64.b64decode(b64).decode("utf-16-be"))
        i = end + 1
    return "".join(out)


# ---------------------------------------------------------------- certificates

class TestCA:
    """A throwaway CA in `directory`, made with the openssl command."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory, name="mailfs test CA"):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.cert = os.path.join(directory, "ca.pem")
        self.key = os.path.join(directory, "ca.key")
        self._openssl = _which("openssl")
        self._run([self._openssl, "req", "-x509", "-newkey", "rsa:2048",
                   "-nodes", "-keyout", self.key, "-out", self.cert,
                   "-days", "3", "-sha256", "-subj", f"/CN={name}",
                   "-addext", "basicConstraints=critical,CA:TRUE",
                   "-addext", "keyUsage=critical,keyCertSign,cRLSign"])

    def _run(self, argv):
        r = subprocess.run(argv, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed:\n"
                               f"{r.stdout.decode(errors='replace')}")

    def issue(self, label, dns=(), ips=()):
        """Issues a server certificate; returns (cert_path, key_path).
        The certificate file holds the leaf followed by the CA."""
        key = os.path.join(self.dir, f"{label}.key")
        csr = os.path.join(self.dir, f"{label}.csr")
        leaf = os.path.join(self.dir, f"{label}.leaf.pem")
        chain = os.path.join(self.dir, f"{label}.pem")
        ext = os.path.join(self.dir, f"{label}.ext")
        cn = (list(dns) + list(ips))[0]
        san = ",".join([f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips])
        with open(ext, "w") as f:
            f.write("basicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage=serverAuth\n"
                    f"subjectAltName={san}\n")
        self._run([self._openssl, "req", "-new", "-newkey", "rsa:2048",
                   "-nodes", "-keyout", key, "-out", csr,
                   "-subj", f"/CN={cn}"])
        self._run([self._openssl, "x509", "-req", "-in", csr,
                   "-CA", self.cert, "-CAkey", self.key,
                   "-set_serial", str(secrets.randbits(63)),
                   "-days", "3", "-sha256", "-extfile", ext, "-out", leaf])
        with open(chain, "wb") as out:
            for part in (leaf, self.cert):
                with open(part, "rb") as f:
                    out.write(f.read())
        os.chmod(key, 0o600)
        return chain, key

    def ssl_context(self):
        """A client SSLContext that trusts only this CA."""
        ctx = ssl.create_default_context(cafile=self.cert)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx


# ---------------------------------------------------------------- Dovecot

class Dovecot:
    """One Dovecot instance under `root` (created, mode 0755).

    ssl:        True -> imaps/pop3s listeners and STARTTLS on the plain
                ports; False -> plaintext only, no STARTTLS offered.
    cert, key:  the server certificate (required when ssl is True).
    separator:  hierarchy delimiter of the INBOX namespace.
    oauth2_url: an introspection endpoint (tests/oauth2.py): XOAUTH2 and
                OAUTHBEARER are offered, their tokens checked there.
    special_use: folders "Sent", "All Mail" and "Trash" (once created)
                are listed with the special uses \\Sent, \\All, \\Trash.
    max_connections: IMAP connections allowed per user and address
                (Dovecot's default is 10).

    Attributes after start(): host, imap_port, imaps_port, pop3_port,
    pop3s_port (the TLS ports are None when ssl is False), log_path.
    """

    def __init__(self, root, ssl=True, cert=None, key=None, ca=None,
                 separator="/", name="mailfs-test", oauth2_url=None,
                 special_use=False, max_connections=None):
        self.root = root
        self.special_use = special_use
        self.max_connections = max_connections
        self.oauth2_url = oauth2_url
        self.ssl = ssl
        self.cert = cert
        self.key = key
        self.ca = ca
        self.separator = separator
        self.name = name
        self.host = "127.0.0.1"
        self.imap_port = self.imaps_port = None
        self.pop3_port = self.pop3s_port = None
        self.proc = None
        self.users = {}
        self._dovecot = _which("dovecot")

        import pwd
        pw = pwd.getpwnam(DOVECOT_USER)
        self._uid, self._gid = pw.pw_uid, pw.pw_gid

        os.makedirs(root, exist_ok=True)
        os.chmod(root, 0o755)
        self.base_dir = os.path.join(root, "run")
        self.state_dir = os.path.join(root, "state")
        self.home_root = os.path.join(root, "home")
        # One passwd-file per user: Dovecot re-reads a changed file at most
        # once a second, but a new user's file is read at its first login.
        self.passwd_dir = os.path.join(root, "passwd.d")
        self.conf = os.path.join(root, "dovecot.conf")
        self.log_path = os.path.join(root, "dovecot.log")
        self.out_path = os.path.join(root, "dovecot.out")
        for d in (self.base_dir, self.state_dir):
            os.makedirs(d, exist_ok=True)
        os.makedirs(self.home_root, exist_ok=True)
        os.chown(self.home_root, self._uid, self._gid)
        os.chmod(self.home_root, 0o755)
        os.makedirs(self.passwd_dir, exist_ok=True)
        os.chmod(self.passwd_dir, 0o755)

    # -- configuration

    def _config(self):
        lines = [
            "# generated for the mailfs tests",
            f"instance_name = {self.name}",
            f"base_dir = {self.base_dir}",
            f"state_dir = {self.state_dir}",
            f"log_path = {self.log_path}",
            f"info_log_path = {self.log_path}",
            f"debug_log_path = {self.log_path}",
            "listen = 127.0.0.1",
            "protocols = imap pop3",
            "default_login_user = dovenull",
            "default_internal_user = dovecot",
            "default_internal_group = dovecot",
            "first_valid_uid = 1",
            "first_valid_gid = 1",
            "disable_plaintext_auth = no",
            "auth_mechanisms = plain login",
            "auth_verbose = yes",
            "auth_cache_size = 0",
            "mail_location = maildir:~/Maildir",
            "mail_plugins =",
            "pop3_uidl_format = %08Xu%08Xv",
            # A message with an X-UIDL header gets it as its POP3 unique-id
            # (test_hostile.py); no other test's mail has one.
            "pop3_reuse_xuidl = yes",
            "log_timestamp = \"%Y-%m-%d %H:%M:%S \"",
            "namespace inbox {",
            "  inbox = yes",
            f"  separator = {self.separator}",
            "  prefix =",
        ]
        if self.special_use:
            for folder, use in (("Sent", "Sent"), ("All Mail", "All"),
                                ("Trash", "Trash")):
                lines += [f'  mailbox "{folder}" {{',
                          f"    special_use = \\{use}", "  }"]
        lines += [
            "}",
            "passdb {",
            "  driver = passwd-file",
            "  mechanisms = plain login" if self.oauth2_url else "",
            f"  args = scheme=PLAIN {self.passwd_dir}/%u",
            "}",
        ]
        if self.oauth2_url:
            ext = os.path.join(self.root, "oauth2.conf.ext")
            with open(ext, "w") as f:
                f.write("introspection_mode = post\n"
                        f"introspection_url = {self.oauth2_url}\n"
                        "username_attribute = username\n"
                        "active_attribute = active\n"
                        "active_value = true\n")
            lines = [line for line in lines
                     if not line.startswith("auth_mechanisms")]
            lines += [
                "auth_mechanisms = plain login xoauth2 oauthbearer",
                # a refused token is answered at once, not after 2 s
                "auth_failure_delay = 0",
                "passdb {",
                "  driver = oauth2",
                "  mechanisms = xoauth2 oauthbearer",
                f"  args = {ext}",
                "}",
            ]
        lines += [
            "userdb {",
            "  driver = static",
            f"  args = uid={DOVECOT_USER} gid={DOVECOT_USER} "
            f"home={self.home_root}/%u",
            "}",
            "service imap-login {",
            "  chroot =",
            "  inet_listener imap {",
            f"    port = {self.imap_port}",
            "  }",
            "  inet_listener imaps {",
            f"    port = {self.imaps_port or 0}",
            "    ssl = yes" if self.ssl else "",
            "  }",
            "}",
            "service pop3-login {",
            "  chroot =",
            "  inet_listener pop3 {",
            f"    port = {self.pop3_port}",
            "  }",
            "  inet_listener pop3s {",
            f"    port = {self.pop3s_port or 0}",
            "    ssl = yes" if self.ssl else "",
            "  }",
            "}",
        ]
        if self.max_connections is not None:
            lines += ["protocol imap {",
                      f"  mail_max_userip_connections = "
                      f"{self.max_connections}",
                      "}"]
        if self.ssl:
            lines += [
                "ssl = yes",
                f"ssl_cert = <{self.cert}",
                f"ssl_key = <{self.key}",
                "ssl_min_protocol = TLSv1.2",
            ]
        else:
            lines += ["ssl = no"]
        return "\n".join(line for line in lines if line != "") + "\n"

    # -- life cycle

    def start(self, timeout=60.0):
        """Starts Dovecot.  Started again after stop() it keeps its ports,
        so that a client made before the stop can reconnect."""
        again = self.imap_port is not None
        if not again:
            self.imap_port = free_port()
            self.pop3_port = free_port()
            if self.ssl:
                self.imaps_port = free_port()
                self.pop3s_port = free_port()
        with open(self.conf, "w") as f:
            f.write(self._config())
        out = open(self.out_path, "ab")
        try:
            # -F keeps the master process as our child, so we own its pid;
            # its output goes to a file (a pipe left open would hang us).
            self.proc = subprocess.Popen(
                [self._dovecot, "-F", "-c", self.conf],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True)
        finally:
            out.close()
        try:
            ports = [self.imap_port, self.pop3_port]
            if self.ssl:
                ports += [self.imaps_port, self.pop3s_port]
            for p in ports:
                wait_for_port(p, timeout=timeout, proc=self.proc)
            self._check_greeting(timeout)
        except Exception as e:
            self.stop()
            raise RuntimeError(f"Dovecot did not start"
                               f"{' again' if again else ''}: {e}\n"
                               f"{self.diagnostics()}") from e
        return self

    def is_down(self):
        """True when the IMAPS port refuses connections."""
        try:
            with socket.create_connection(
                    (self.host, self.imaps_port), timeout=2):
                return False
        except OSError:
            return True

    def _check_greeting(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((self.host, self.imap_port),
                                              timeout=5) as s:
                    greeting = s.recv(1024)
                if greeting.startswith(b"* OK"):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("no IMAP greeting")
            time.sleep(0.1)

    def diagnostics(self):
        text = []
        for p in (self.out_path, self.log_path):
            try:
                with open(p, "rb") as f:
                    data = f.read()[-4000:]
                text.append(f"--- {os.path.basename(p)}:\n"
                            + data.decode(errors="replace"))
            except OSError:
                pass
        return "\n".join(text)

    def _group_pids(self, pgid):
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            # fields[0] = state, [1] = ppid, [2] = pgrp
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(entry))
        return pids

    def stop(self, timeout=20.0):
        """Stops the instance and every process it started."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        if self.proc.poll() is None:
            # What "dovecot -c conf stop" does, minus its wait for the pid
            # to vanish (our own child stays a zombie until we reap it).
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Children leave when the master goes; make sure of it.
        deadline = time.monotonic() + timeout
        while True:
            left = self._group_pids(pgid)
            if not left:
                break
            if time.monotonic() > deadline:
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.2)
                break
            time.sleep(0.1)
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- users

    def add_user(self, user=None, password=None):
        """Adds a passwd-file user with an empty home; returns (user,
        password).  Usable at once, while the server runs."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"Dovecot {self.name} is not running\n"
                               f"{self.diagnostics()}")
        if user is None:
            user = "u" + secrets.token_hex(5)
        if password is None:
            password = "pw-" + secrets.token_urlsafe(12)
        if not re.fullmatch(r"[A-Za-z0-9_@-][A-Za-z0-9._@-]*", user) or ":" in password \
                or "\n" in password:
            raise ValueError("user or password unsuitable for passwd-file")
        home = os.path.join(self.home_root, user)
        os.makedirs(home, exist_ok=True)
        os.chown(home, self._uid, self._gid)
        os.chmod(home, 0o700)
        if os.path.exists(os.path.join(self.passwd_dir, user)):
            raise ValueError(f"user {user} exists")
        self.set_password(user, password)
        return user, password

    def set_password(self, user, password):
        """Writes the user's passwd-file entry (new user or new password;
        a changed password may take a second to be noticed)."""
        path = os.path.join(self.passwd_dir, user)
        tmp = os.path.join(self.passwd_dir, f".{user}.tmp")
        with open(tmp, "w") as f:
            f.write(f"{user}:{{PLAIN}}{password}\n")
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
        self.users[user] = password

    def client(self, user, password=None, starttls=False):
        """An ImapClient logged in as user (over IMAPS, or STARTTLS)."""
        if password is None:
            password = self.users[user]
        return ImapClient(self, user, password, starttls=starttls)

    # -- URLs for mailfs

    def url(self, user, scheme="imaps", host=None):
        host = host or self.host
        port = {"imaps": self.imaps_port, "imap": self.imap_port,
                "pop3s": self.pop3s_port, "pop3": self.pop3_port}[scheme]
        return f"{scheme}://{user}@{host}:{port}"


# ---------------------------------------------------------------- IMAP client

_LIST_RE = re.compile(rb'\((?P<flags>[^)]*)\) (?:"(?P<delim>(?:[^"\\]|\\.)*)"|NIL) (?P<name>.*)$')


def _quote(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unquote(b):
    if b.startswith(b'"') and b.endswith(b'"'):
        b = b[1:-1]
        b = re.sub(rb"\\(.)", rb"\1", b)
    return b.decode("ascii")


class ImapClient:
    """Seeding and inspection over its own IMAP connection.

    Use as a context manager.  Folder arguments are '/'-separated Unicode
    paths; "INBOX" is the inbox."""

    def __init__(self, server, user, password, starttls=False):
        self.server = server
        ctx = server.ca.ssl_context() if server.ca else None
        if starttls or not server.ssl:
            self.imap = imaplib.IMAP4(server.host, server.imap_port, timeout=60)
            if starttls:
                self.imap.starttls(ssl_context=ctx)
        else:
            self.imap = imaplib.IMAP4_SSL(server.host, server.imaps_port,
                                          ssl_context=ctx, timeout=60)
        self.imap.login(user, password)
        typ, data = self.imap.list('""', '""')
        self._ok(typ, data, "LIST")
        m = _LIST_RE.match(data[0]) if data and data[0] else None
        self.delimiter = _unquote(b'"' + m.group("delim") + b'"') \
            if m and m.group("delim") is not None else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.imap is None:
            return
        try:
            self.imap.logout()
        except Exception:
            pass
        self.imap = None

    @staticmethod
    def _ok(typ, data, what):
        if typ != "OK":
            raise imaplib.IMAP4.error(f"{what} failed: {typ} {data!r}")
        return data

    def raw_name(self, folder):
        """'/'-separated Unicode path -> the server's mailbox name."""
        if folder.upper() == "INBOX":
            return "INBOX"
        parts = folder.split("/")
        delim = self.delimiter or "/"
        return delim.join(mutf7_encode(p) for p in parts)

    def mailbox_arg(self, folder):
        return _quote(self.raw_name(folder))

    def create(self, folder):
        typ, data = self.imap.create(self.mailbox_arg(folder))
        self._ok(typ, data, f"CREATE {folder}")

    def delete(self, folder):
        typ, data = self.imap.delete(self.mailbox_arg(folder))
        self._ok(typ, data, f"DELETE {folder}")

    def rename(self, old, new):
        typ, data = self.imap.rename(self.mailbox_arg(old),
                                     self.mailbox_arg(new))
        self._ok(typ, data, f"RENAME {old}")

    def list(self):
        """All mailboxes: list of (unicode '/'-path, set of flags, raw)."""
        typ, data = self.imap.list('""', '"*"')
        self._ok(typ, data, "LIST")
        out = []
        for item in data:
            if item is None:
                continue
            if isinstance(item, tuple):  # name sent as a literal
                head, lit = item
                m = _LIST_RE.match(head.rsplit(b" ", 1)[0] + b" x")
                raw = lit.decode("ascii")
            else:
                m = _LIST_RE.match(item)
                raw = _unquote(m.group("name"))
            flags = set(m.group("flags").decode().split())
            delim = self.delimiter
            parts = raw.split(delim) if delim else [raw]
            out.append(("/".join(mutf7_decode(p) for p in parts), flags, raw))
        return out

    def append(self, folder, raw, flags=(), date=None):
        """APPENDs raw bytes; date is a datetime (aware or UTC), a Unix
        time, or None for now.  Returns the new UID (UIDPLUS)."""
        if isinstance(date, (int, float)):
            date = datetime.datetime.fromtimestamp(date, datetime.timezone.utc)
        elif isinstance(date, datetime.datetime) and date.tzinfo is None:
            date = date.replace(tzinfo=datetime.timezone.utc)
        date_arg = imaplib.Time2Internaldate(date) if date else None
        flag_arg = "(" + " ".join(flags) + ")" if flags else None
        typ, data = self.imap.append(self.mailbox_arg(folder), flag_arg,
                                     date_arg, raw)
        self._ok(typ, data, f"APPEND to {folder}")
        m = re.search(rb"\[APPENDUID (\d+) (\d+)\]", data[0] or b"")
        return int(m.group(2)) if m else None

    def select(self, folder, readonly=True):
        typ, data = self.imap.select(self.mailbox_arg(folder),
                                     readonly=readonly)
        self._ok(typ, data, f"SELECT {folder}")
        return int(data[0])

    def uidvalidity(self, folder):
        typ, data = self.imap.status(self.mailbox_arg(folder),
                                     "(UIDVALIDITY)")
        self._ok(typ, data, "STATUS")
        return int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))

    _FETCH_RE = re.compile(rb"UID (\d+)|RFC822\.SIZE (\d+)|"
                           rb'INTERNALDATE "([^"]+)"|FLAGS \(([^)]*)\)')

    def fetch(self, folder, body=True, uids="1:*"):
        """{uid: {"size", "internaldate" (Unix time), "flags" (set),
        "raw" (bytes, when body)}} via UID FETCH with BODY.PEEK[]."""
        self.select(folder, readonly=True)
        items = "(UID RFC822.SIZE INTERNALDATE FLAGS" + \
            (" BODY.PEEK[])" if body else ")")
        typ, data = self.imap.uid("FETCH", uids, items)
        self._ok(typ, data, "FETCH")
        result = {}
        for item in data:
            if item is None or item == b")":
                continue
            if isinstance(item, tuple):
                head, literal = item[0], item[1]
            else:
                head, literal = item, None
            info = {}
            for m in self._FETCH_RE.finditer(head):
                if m.group(1):
                    info["uid"] = int(m.group(1))
                elif m.group(2):
                    info["size"] = int(m.group(2))
                elif m.group(3):
                    info["internaldate"] = _internaldate_to_unix(
                        m.group(3).decode())
                elif m.group(4) is not None:
                    info["flags"] = set(m.group(4).decode().split())
            if "uid" not in info:
                continue
            entry = result.setdefault(info.pop("uid"), {})
            entry.update(info)
            if literal is not None:
                entry["raw"] = literal
        # Flags may arrive after the literal on a separate line: fetch them
        # apart when missing.
        if any("flags" not in e for e in result.values()):
            for uid, fl in self.flags(folder).items():
                if uid in result:
                    result[uid]["flags"] = fl
        return result

    def flags(self, folder):
        """{uid: set of flags}"""
        self.select(folder, readonly=True)
        typ, data = self.imap.uid("FETCH", "1:*", "(UID FLAGS)")
        self._ok(typ, data, "FETCH FLAGS")
        out = {}
        for item in data:
            if not item or isinstance(item, tuple):
                continue
            uid = re.search(rb"UID (\d+)", item)
            fl = re.search(rb"FLAGS \(([^)]*)\)", item)
            if uid and fl:
                out[int(uid.group(1))] = set(fl.group(1).decode().split())
        return out

    def store(self, folder, uid, flags, mode="+"):
        """Adds (mode '+'), removes ('-') or sets ('') flags."""
        self.select(folder, readonly=False)
        typ, data = self.imap.uid("STORE", str(uid), f"{mode}FLAGS.SILENT",
                                  "(" + " ".join(flags) + ")")
        self._ok(typ, data, "STORE")

    def expunge_uid(self, folder, uid):
        self.store(folder, uid, ["\\Deleted"])
        typ, data = self.imap.uid("EXPUNGE", str(uid))
        self._ok(typ, data, "UID EXPUNGE")


def _internaldate_to_unix(text):
    # "17-Jul-1996 02:44:25 -0700"
    dt = datetime.datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z")
    return int(dt.timestamp())


# ---------------------------------------------------------------- a whole set

class ServerSet:
    """The CA, certificates and any number of Dovecot instances under one
    directory, created lazily and stopped together."""

    def __init__(self, root=None):
        self.root = root or tempfile.mkdtemp(prefix="mailfs-servers-")
        os.makedirs(self.root, exist_ok=True)
        os.chmod(self.root, 0o755)
        self.ca = TestCA(os.path.join(self.root, "ca"))
        self.cert, self.key = self.ca.issue(
            "server", dns=["localhost"], ips=["127.0.0.1"])
        self.wrong_cert, self.wrong_key = self.ca.issue(
            "wrong", dns=["wrong.example"])
        self._servers = {}
        self._idp = None

    def introspection(self):
        """The token introspection endpoint (tests/oauth2.py) that the
        "oauth2" Dovecot asks; started on first use."""
        if self._idp is None:
            from oauth2 import Introspection
            self._idp = Introspection().start()
        return self._idp

    def dovecot(self, variant="main"):
        """Started on first use.  Variants: "main" (TLS, '/' separator),
        "wrongcert" (certificate for wrong.example), "nossl" (no TLS, no
        STARTTLS), "dot" (TLS, '.' separator), "oauth2" (as main, and
        XOAUTH2 and OAUTHBEARER with tokens from introspection())."""
        if variant in self._servers:
            return self._servers[variant]
        kw = dict(ssl=True, cert=self.cert, key=self.key, ca=self.ca,
                  separator="/")
        if variant == "wrongcert":
            kw.update(cert=self.wrong_cert, key=self.wrong_key)
        elif variant == "nossl":
            kw.update(ssl=False, cert=None, key=None)
        elif variant == "dot":
            kw.update(separator=".")
        elif variant == "oauth2":
            kw.update(oauth2_url=self.introspection().url)
        elif variant == "special":
            kw.update(special_use=True)
        elif variant == "limited":
            kw.update(max_connections=2)
        elif variant != "main":
            raise ValueError(variant)
        server = Dovecot(os.path.join(self.root, variant),
                         name=f"mailfs-test-{variant}-{os.getpid()}", **kw)
        server.start()
        self._servers[variant] = server
        return server

    @contextlib.contextmanager
    def private_dovecot(self, label):
        """A started Dovecot of one test's own (TLS, '/' separator), which
        the test may stop and start again; stopped and removed at the
        end."""
        token = secrets.token_hex(4)
        root = os.path.join(self.root, f"{label}-{token}")
        server = Dovecot(root, ssl=True, cert=self.cert, key=self.key,
                         ca=self.ca, separator="/",
                         name=f"mailfs-{label}-{os.getpid()}-{token}")
        server.start()
        try:
            yield server
        finally:
            server.stop()
            shutil.rmtree(root, ignore_errors=True)

    def stop(self):
        errors = []
        for server in self._servers.values():
            try:
                server.stop()
            except Exception as e:  # keep stopping the others
                errors.append(e)
        self._servers.clear()
        if self._idp is not None:
            self._idp.close()
            self._idp = None
        if errors:
            raise errors[0]

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
