"""A small scriptable IMAP server on loopback, for answers real servers
give only rarely: NO or BAD to any command mailfs sends, BYE in the
middle of an answer, endless lines.

FakeImapServer(messages={"INBOX": [raw, ...]}) listens on 127.0.0.1
(plain text, mount with allow_plaintext; or implicit TLS with tls=an
ssl.SSLContext) and serves those folders well enough for a mount: CAPABILITY, LOGIN, LIST, EXAMINE/SELECT, the listing
and content UID FETCHes, UID STORE, UID EXPUNGE, UID MOVE, APPEND (with
LITERAL+), CREATE, DELETE, RENAME, IDLE, NOOP, LOGOUT, and AUTHENTICATE
PLAIN when `caps` offers it (`auth` records each response and whether
it came as an initial response).  Changes made through it are kept for
later connections.  A message is raw bytes, or a VirtualMessage whose
bytes are computed from the offset (a message of many GiB is never held),
and `fetches` records every partial body FETCH as (uid, origin, length).

fail(kind, answer, times=None) makes the next `times` commands of that
kind (every one with None) get `answer` instead: "NO", "BAD", "BYE",
raw bytes sent as they are (then the connection is closed),
endless(prefix): prefix, then filler without a line end for as long as
the client reads (`endless_sent` counts those bytes), or tagged(text):
the command's tag and text (b"NO Request is throttled."), after which
the connection goes on.  Kinds are the names in KINDS.  `times` holds
(time.monotonic(), kind, refused) for every command.

EndlessServer(prefix) greets every connection that way, for any
protocol.  `seen` counts the commands of each kind received,
`failed` those answered by a fault; `lines` holds every command line.
"""

import base64
import re
import socket
import threading
import time

__all__ = ["FakeImapServer", "VirtualMessage", "EndlessServer", "KINDS",
           "endless", "tagged"]

CAPS = b"IMAP4rev1 LITERAL+ UIDPLUS MOVE IDLE"
DATE = b'"03-Jun-2025 10:00:00 +0000"'
UIDVALIDITY = 4242
HEAD_FIELDS = (b"date", b"subject", b"message-id", b"from")

KINDS = ("CAPABILITY", "LOGIN", "LIST", "EXAMINE", "SELECT", "FETCH-META",
         "FETCH-FLAGS", "FETCH-BODY", "STORE", "EXPUNGE", "MOVE", "COPY",
         "APPEND", "CREATE", "DELETE", "RENAME", "IDLE", "NOOP", "LOGOUT")


FILLER = b"A" * 65536


class endless:
    def __init__(self, prefix):
        self.prefix = prefix

    def send(self, sock, count):
        """Sends the prefix, then filler until the peer stops reading;
        count(n) is called with every piece sent."""
        sock.sendall(self.prefix)
        count(len(self.prefix))
        try:
            while True:
                sock.sendall(FILLER)
                count(len(FILLER))
        except OSError:
            pass


class tagged:
    def __init__(self, text):
        self.text = text


def kind_of(words):
    """The KINDS name of a command (its words after the tag)."""
    cmd = words[0].upper() if words else b""
    if cmd == b"UID" and len(words) > 1:
        sub = words[1].upper()
        if sub == b"FETCH":
            rest = b" ".join(words[2:]).upper()
            if b"RFC822.SIZE" in rest:
                return "FETCH-META"
            if b"BODY.PEEK[]" in rest:
                return "FETCH-BODY"
            return "FETCH-FLAGS"
        return sub.decode("ascii", "replace")
    if cmd == b"AUTHENTICATE":
        return "LOGIN"
    return cmd.decode("ascii", "replace")


def head_fields(raw):
    """The header fields the listing FETCH asks for, as Dovecot sends
    them (the fields in message order, then a blank line)."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    out = []
    for line in re.split(rb"\r\n(?![ \t])", head):
        if line.split(b":", 1)[0].strip().lower() in HEAD_FIELDS:
            out.append(line + b"\r\n")
    return b"".join(out) + b"\r\n"


class VirtualMessage:
    """A message of `size` bytes, content(offset, length) -> bytes, whose
    listing header fields are `header` (as the listing FETCH sends them)."""

    def __init__(self, size, content, header):
        self.size = size
        self.content = content
        self.header = header


def msg_size(m):
    return m.size if isinstance(m, VirtualMessage) else len(m)


def msg_bytes(m, offset, length):
    if isinstance(m, VirtualMessage):
        return m.content(offset, max(0, min(length, m.size - offset)))
    return m[offset:offset + length]


def msg_header(m):
    return m.header if isinstance(m, VirtualMessage) else head_fields(m)


def literal(data):
    return b"{%d}\r\n" % len(data) + data


def uid_set(text, uids):
    """The UIDs of `uids` that the set `text` (1,3:5,7:*) names."""
    top = max(uids, default=0)
    out = set()
    for part in text.split(b","):
        lo, _, hi = part.partition(b":")
        lo = top if lo == b"*" else int(lo)
        hi = lo if not hi else top if hi == b"*" else int(hi)
        lo, hi = min(lo, hi), max(lo, hi)
        out |= {u for u in uids if lo <= u <= hi}
    return sorted(out)


class _Folder:
    def __init__(self, raws):
        self.next_uid = 1
        self.msgs = {}            # uid -> [raw, flags]
        for raw in raws:
            self.add(raw)

    def add(self, raw, flags=()):
        uid = self.next_uid
        self.next_uid += 1
        self.msgs[uid] = [raw, set(flags)]
        return uid


class _Conn:
    """One client connection: reads command lines (and the literals of
    APPEND) and answers them."""

    def __init__(self, server, sock):
        self.server = server
        self.sock = sock
        self.buf = b""
        self.selected = None

    # -- input

    def _recv(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def line(self):
        while b"\n" not in self.buf:
            self._recv()
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def exactly(self, n):
        while len(self.buf) < n:
            self._recv()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def send(self, data):
        self.sock.sendall(data)

    # -- the loop

    def serve(self):
        s = self.server
        self.send(b"* OK [CAPABILITY " + s.caps + b"] fake ready\r\n")
        while True:
            line = self.line()
            # A command with a literal: read it whole first.
            m = re.search(rb"\{(\d+)(\+?)\}$", line)
            lit = None
            if m:
                if not m.group(2):
                    self.send(b"+ go ahead\r\n")
                lit = self.exactly(int(m.group(1)))
                rest = self.line()
                line = line[:m.start()] + b"<literal>" + rest
            with s.lock:
                s.lines.append(line)
            tag, _, args = line.partition(b" ")
            words = args.split()
            kind = kind_of(words)
            fault = s._take_fault(kind)
            with s.lock:
                s.times.append((time.monotonic(), kind, fault is not None))
            if isinstance(fault, tagged):
                self.send(tag + b" " + fault.text + b"\r\n")
                continue
            if fault is not None:
                if fault in ("NO", "BAD"):
                    self.send(tag + b" " + fault.encode() +
                              b" [UNAVAILABLE] refused by the fake\r\n")
                    continue
                if fault == "BYE":
                    self.send(b"* BYE going away\r\n")
                elif isinstance(fault, endless):
                    fault.send(self.sock, s._count_endless)
                else:
                    self.send(fault)
                return
            with s.lock:
                end = self.handle(tag, kind, args, words, lit)
            if end:
                return

    # -- commands; called with the server's lock held

    def ok(self, tag, text=b"done"):
        self.send(tag + b" OK " + text + b"\r\n")

    def expunge(self, f, uid):
        """Removes uid from folder f (selected), telling the client by
        its sequence number, as RFC 3501 and RFC 6851 require."""
        seq = sorted(f.msgs).index(uid) + 1
        del f.msgs[uid]
        self.send(b"* %d EXPUNGE\r\n" % seq)

    def folder(self, name):
        return self.server.folders.get(name.strip(b'"').decode())

    def handle(self, tag, kind, args, words, lit):
        s = self.server
        if kind == "CAPABILITY":
            self.send(b"* CAPABILITY " + s.caps + b"\r\n")
            self.ok(tag)
        elif words and words[0].upper() == b"AUTHENTICATE":
            # PLAIN: the response on the line (SASL-IR) or after a "+".
            ir = len(words) > 2
            if not ir:
                self.send(b"+ \r\n")
                s.lock.release()
                try:
                    words = words + [self.line()]
                finally:
                    s.lock.acquire()
            s.auth.append((ir, base64.b64decode(words[2])))
            self.ok(tag)
        elif kind in ("LOGIN", "NOOP"):
            self.ok(tag)
        elif kind == "LOGOUT":
            self.send(b"* BYE bye\r\n")
            self.ok(tag)
            return True
        elif kind == "LIST":
            if words[-1] == b'""':
                self.send(b'* LIST (\\Noselect) "/" ""\r\n')
            else:
                for name in sorted(s.folders):
                    self.send(b'* LIST () "/" "' + name.encode() + b'"\r\n')
            self.ok(tag)
        elif kind in ("EXAMINE", "SELECT"):
            f = self.folder(words[1])
            if f is None:
                self.send(tag + b" NO no such folder\r\n")
                self.selected = None
                return False
            self.selected = words[1].strip(b'"').decode()
            self.send(b"* FLAGS (\\Seen \\Flagged \\Deleted)\r\n"
                      b"* %d EXISTS\r\n* 0 RECENT\r\n"
                      b"* OK [UIDVALIDITY %d] ok\r\n"
                      b"* OK [UIDNEXT %d] ok\r\n"
                      % (len(f.msgs), UIDVALIDITY, f.next_uid))
            self.ok(tag, b"[READ-ONLY] done" if kind == "EXAMINE"
                    else b"[READ-WRITE] done")
        elif kind.startswith("FETCH-"):
            self.fetch(tag, kind, words)
        elif kind == "STORE":
            f = s.folders[self.selected]
            for uid in uid_set(words[2], f.msgs):
                flags = set(re.findall(rb"[\\$\w]+",
                                       b" ".join(words[4:])))
                op = words[3].upper()
                if op.startswith(b"+"):
                    f.msgs[uid][1] |= flags
                elif op.startswith(b"-"):
                    f.msgs[uid][1] -= flags
                else:
                    f.msgs[uid][1] = flags
            self.ok(tag)
        elif kind == "EXPUNGE":
            f = s.folders[self.selected]
            for uid in uid_set(words[2], f.msgs):
                if b"\\Deleted" in f.msgs[uid][1]:
                    self.expunge(f, uid)
            self.ok(tag)
        elif kind in ("MOVE", "COPY"):
            f = s.folders[self.selected]
            to = self.folder(words[3])
            if to is None:
                self.send(tag + b" NO [TRYCREATE] no such folder\r\n")
                return False
            pairs = []
            for uid in uid_set(words[2], f.msgs):
                raw, flags = f.msgs[uid]
                pairs.append((uid, to.add(raw, flags)))
            if not pairs:
                self.ok(tag)
                return False
            code = b"[COPYUID %d %s %s]" % (
                UIDVALIDITY, b",".join(b"%d" % a for a, _ in pairs),
                b",".join(b"%d" % b for _, b in pairs))
            if kind == "MOVE":
                self.send(b"* OK " + code + b" moved\r\n")
                for uid, _ in pairs:
                    self.expunge(f, uid)
                self.ok(tag)
            else:
                self.ok(tag, code + b" copied")
        elif kind == "APPEND":
            f = self.folder(words[0 + 1])
            if f is None or lit is None:
                self.send(tag + b" NO [TRYCREATE] no such folder\r\n")
                return False
            flags = re.findall(rb"[\\$]?\w+", args.split(b"(", 1)[1]
                               .split(b")", 1)[0]) if b"(" in args else ()
            uid = f.add(lit, flags)
            self.ok(tag, b"[APPENDUID %d %d] appended" % (UIDVALIDITY, uid))
        elif kind == "CREATE":
            s.folders.setdefault(words[1].strip(b'"').decode(), _Folder([]))
            self.ok(tag)
        elif kind == "DELETE":
            s.folders.pop(words[1].strip(b'"').decode(), None)
            self.ok(tag)
        elif kind == "RENAME":
            old = words[1].strip(b'"').decode()
            if old in s.folders:
                s.folders[words[2].strip(b'"').decode()] = \
                    s.folders.pop(old)
            self.ok(tag)
        elif kind == "IDLE":
            self.send(b"+ idling\r\n")
            s.lock.release()
            try:
                while self.line().upper() != b"DONE":
                    pass
            finally:
                s.lock.acquire()
            self.ok(tag)
        else:
            self.send(tag + b" BAD unknown command\r\n")
        return False

    def fetch(self, tag, kind, words):
        f = self.server.folders.get(self.selected)
        if f is None:
            self.send(tag + b" BAD nothing selected\r\n")
            return
        for seq, uid in enumerate(sorted(f.msgs), 1):
            if uid not in uid_set(words[2], f.msgs):
                continue
            raw, flags = f.msgs[uid]
            flag_text = b"FLAGS (" + b" ".join(sorted(flags)) + b")"
            if kind == "FETCH-FLAGS":
                body = b"UID %d %s" % (uid, flag_text)
            elif kind == "FETCH-META":
                body = (b"UID %d RFC822.SIZE %d INTERNALDATE %s %s "
                        b"BODY[HEADER.FIELDS (DATE SUBJECT MESSAGE-ID "
                        b"FROM)] %s" % (uid, msg_size(raw), DATE,
                                        flag_text,
                                        literal(msg_header(raw))))
            else:
                m = re.search(rb"BODY\.PEEK\[\]<(\d+)\.(\d+)>",
                              b" ".join(words))
                off, n = int(m.group(1)), int(m.group(2))
                self.server.fetches.append((uid, off, n))
                body = b"UID %d BODY[]<%d> %s" % (
                    uid, off, literal(msg_bytes(raw, off, n)))
            self.send(b"* %d FETCH (%s)\r\n" % (seq, body))
        self.ok(tag)


class _LoopbackServer:
    """Accepts connections on a port of 127.0.0.1 and serves each in a
    thread of its own (self._serve(sock)); close() ends them all.
    `connections` counts the connections accepted."""

    def __init__(self):
        self._conn_lock = threading.Lock()
        self._conns = []
        self.connections = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self):
        while True:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            with self._conn_lock:
                self._conns.append(c)
                self.connections += 1
            threading.Thread(target=self._serve_closing, args=(c,),
                             daemon=True).start()

    def _serve_closing(self, c):
        try:
            self._serve(c)
        except (OSError, EOFError):
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def close(self):
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        with self._conn_lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FakeImapServer(_LoopbackServer):
    def __init__(self, messages=None, caps=CAPS, tls=None):
        self.lock = threading.Lock()
        self.caps = caps
        self.tls = tls
        self.fetches = []         # (uid, origin, length) of body FETCHes
        self.auth = []            # (with SASL-IR, decoded response)
        self.folders = {name: _Folder(raws)
                        for name, raws in (messages or {"INBOX": []}).items()}
        self.lines = []
        self.times = []
        self.endless_sent = 0
        self.seen = {}
        self.failed = {}
        self._faults = {}
        super().__init__()

    def _count_endless(self, n):
        with self.lock:
            self.endless_sent += n

    def fail(self, kind, answer, times=None):
        assert kind in KINDS, kind
        with self.lock:
            self._faults[kind] = [answer, times]

    def clear(self):
        with self.lock:
            self._faults.clear()

    def uids(self, folder="INBOX"):
        with self.lock:
            return sorted(self.folders[folder].msgs)

    def flags(self, folder="INBOX"):
        with self.lock:
            return {u: set(m[1]) for u, m in
                    self.folders[folder].msgs.items()}

    def _take_fault(self, kind):
        with self.lock:
            self.seen[kind] = self.seen.get(kind, 0) + 1
            f = self._faults.get(kind)
            if f is None:
                return None
            answer, times = f
            if times is not None:
                if times <= 0:
                    return None
                f[1] -= 1
            self.failed[kind] = self.failed.get(kind, 0) + 1
            return answer

    def _serve(self, c):
        if self.tls is not None:
            c = self.tls.wrap_socket(c, server_side=True)
        _Conn(self, c).serve()


class EndlessServer(_LoopbackServer):
    """Greets every connection on 127.0.0.1 with endless(prefix).
    `sent` counts the bytes sent, `connections` the connections."""

    def __init__(self, prefix):
        self.greeting = endless(prefix)
        self.sent = 0
        self._lock = threading.Lock()
        super().__init__()

    def _count(self, n):
        with self._lock:
            self.sent += n

    def _serve(self, c):
        self.greeting.send(c, self._count)
