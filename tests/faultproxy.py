"""A TCP proxy with switchable faults, and a tiny scripted IMAP server.

FaultProxy listens on a free port of 127.0.0.1 and forwards every
connection to one upstream server (a Dovecot port).  Faults are switched on
and off while connections are open; each applies to the connections open at
that moment (counted from the moment it is switched on) and to every later
one (counted from its first byte).  Everything happens on loopback, in
threads of this process; close() ends them all.

Faults on the server->client direction:

  delay(seconds, chunk)     hold every piece of at most `chunk` bytes for
                            `seconds` before forwarding it (a slow link)
  trickle(interval, nbytes=1)
                            send `nbytes` bytes every `interval` seconds: a
                            server that never quite stops (delay() with
                            tiny pieces)
  stall() / resume()        stop forwarding (nothing is read from the
                            server, the connections stay open) / go on
  cut_after(n, after=None)  close a connection once n more bytes went to
                            the client; with `after` (a regex on complete
                            lines of the plain-text stream) the count starts
                            right after the first line that matches
  flip(offset, mask)        XOR the byte at `offset` with mask
  inject_after(pattern, data, separate=False)
                            once per connection: send `data` right after
                            the first line matching `pattern` (in the same
                            segment, or in a later one with separate=True)
  rewrite(pattern, repl, cut_after=None, flood=None, every=False)
                            substitute `repl` (bytes, or a function of the
                            match as for re.sub) for `pattern` in the first
                            matching line of each connection (in every
                            matching line with every=True), then
                            optionally close it after cut_after more bytes
                            from the server, or send `flood` bytes of
                            filler lines instead and close it
  gate(pattern)             hold the first client line matching `pattern`
                            (and everything after it on that connection)
                            until open_gate(): the server has not seen
                            the command yet, the client waits for it
  down() / up()             close every connection and refuse new ones
                            (the port is closed) / listen again on the
                            same port, like a server restart
  clear()                   no faults

Patterns are bytes regexes matched against one line at a time, the line
including its CRLF; they only make sense on plain-text streams (STARTTLS
before the handshake, or servers without TLS).

Counters: connections (accepted so far), open_connections(), cuts,
server_bytes, client_bytes, client_bytes_stalled (client bytes that arrived
while stalled: a request left without an answer), injected, rewritten,
gated (client lines held by a gate so far).

ScriptedImapServer greets each connection with fixed bytes and answers
command lines through a function, for servers that misbehave from their
first word on; given an ssl.SSLContext it speaks implicit TLS (imaps).
"""

import re
import select
import socket
import ssl
import threading
import time

__all__ = ["FaultProxy", "ScriptedImapServer"]

RECV_SIZE = 65536
# An incomplete line held back for a line fault is sent on anyway after
# this much silence from the server (it may be binary data, e.g. TLS).
LINE_FLUSH_SECONDS = 0.05
LINE_HOLD_MAX = 4096


class _Faults:
    """One configuration of faults; replaced as a whole on every change."""

    def __init__(self):
        self.delay = 0.0
        self.delay_chunk = RECV_SIZE
        self.cut_bytes = None
        self.cut_pattern = None
        self.flip_offset = None
        self.flip_mask = 0xFF
        self.inject_pattern = None
        self.inject_data = b""
        self.inject_separate = False
        self.rewrite_pattern = None
        self.rewrite_repl = b""
        self.rewrite_cut = None
        self.rewrite_flood = None
        self.rewrite_every = False

    def copy(self):
        f = _Faults()
        f.__dict__.update(self.__dict__)
        return f


class _Conn:
    def __init__(self, proxy, client, upstream, number):
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.number = number
        self.closed = False
        self.lock = threading.Lock()
        self.threads = []
        # server->client state, owned by the s2c thread
        self.gen = -1
        self.pos = 0              # bytes sent to the client so far
        self.budget = None        # bytes left before the cut
        self.flip_at = None
        self.line_cut = None      # regex starting the budget
        self.line_cut_bytes = None
        self.inject = None        # (regex, data, separate)
        self.rewrite = None       # (regex, repl, cut, flood, every)
        self.hold = b""           # incomplete line held for line faults

    # -- life

    def close(self):
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for s in (self.client, self.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        self.proxy._forget(self)

    # -- fault state

    def _refresh(self):
        f, gen = self.proxy._current()
        if gen == self.gen:
            return f
        self.gen = gen
        self.budget = f.cut_bytes if f.cut_pattern is None else None
        self.line_cut = f.cut_pattern
        self.line_cut_bytes = f.cut_bytes
        self.flip_at = None if f.flip_offset is None \
            else self.pos + len(self.hold) + f.flip_offset
        self.inject = (f.inject_pattern, f.inject_data, f.inject_separate) \
            if f.inject_pattern is not None else None
        self.rewrite = (f.rewrite_pattern, f.rewrite_repl, f.rewrite_cut,
                        f.rewrite_flood, f.rewrite_every) \
            if f.rewrite_pattern is not None else None
        return f

    def _line_mode(self):
        return self.line_cut is not None or self.inject is not None or \
            self.rewrite is not None

    # -- client -> server

    def pump_c2s(self):
        try:
            while not self.closed:
                try:
                    data = self.client.recv(RECV_SIZE)
                except OSError:
                    break
                if not data:
                    try:
                        self.upstream.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    break
                self.proxy._count_client(len(data))
                self.proxy._pass_gate(self, data)
                try:
                    self.upstream.sendall(data)
                except OSError:
                    break
        finally:
            if self.proxy._closing:
                self.close()

    # -- server -> client

    def pump_s2c(self):
        try:
            self._s2c_loop()
        except OSError:
            pass
        finally:
            self.close()

    def _s2c_loop(self):
        while not self.closed:
            self.proxy._wait_not_stalled(self)
            if self.closed:
                return
            wait = LINE_FLUSH_SECONDS if self.hold else 0.2
            try:
                ready, _, _ = select.select([self.upstream], [], [], wait)
            except (OSError, ValueError):
                return
            self._refresh()
            if not ready:
                if self.hold:
                    data, self.hold = self.hold, b""
                    if not self._send(data):
                        return
                continue
            if self.proxy._stalled():
                continue   # arrived with the stall: leave it unread
            data = self.upstream.recv(RECV_SIZE)
            if not data:
                if self.hold:
                    self._send(self.hold)
                    self.hold = b""
                return
            self.proxy._count_server(len(data))
            if not self._process(data):
                return

    def _process(self, data):
        """Applies line faults, then sends; False once the conn is cut."""
        if not self._line_mode() and not self.hold:
            return self._send(data)
        buf = self.hold + data
        self.hold = b""
        out = bytearray()
        while buf:
            if not self._line_mode():
                out += buf
                break
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > LINE_HOLD_MAX:
                    out += buf      # not a text line: let it pass
                else:
                    self.hold = buf
                break
            line, buf = buf[:nl + 1], buf[nl + 1:]
            if self.rewrite is not None:
                pat, repl, cut, flood, every = self.rewrite
                new, n = pat.subn(repl, line, count=1)
                if n:
                    line = new
                    if not every:
                        self.rewrite = None
                    self.proxy._count("rewritten")
                    if flood is not None:
                        out += line
                        if self._send(bytes(out)):
                            self._flood(flood)
                        self.close()
                        return False
                    if cut is not None:
                        out += line
                        line = b""
                        if not self._send(bytes(out)):
                            return False
                        out = bytearray()
                        self.budget = cut
            if self.line_cut is not None and line and \
                    self.line_cut.search(line):
                out += line
                line = b""
                if not self._send(bytes(out)):
                    return False
                out = bytearray()
                self.budget = self.line_cut_bytes
                self.line_cut = None
            if self.inject is not None and line and \
                    self.inject[0].search(line):
                pat, extra, separate = self.inject
                self.inject = None
                self.proxy._count("injected")
                if separate:
                    out += line
                    if not self._send(bytes(out)):
                        return False
                    out = bytearray()
                    time.sleep(0.3)
                    if not self._send(extra):
                        return False
                else:
                    out += line + extra
                line = b""
            out += line
        if out:
            return self._send(bytes(out))
        return True

    def _flood(self, nbytes):
        """Sends nbytes of filler lines straight to the client."""
        piece = (b"X" * 1022 + b"\r\n") * 64
        while nbytes > 0 and not self.closed:
            chunk = piece[:nbytes]
            self.client.sendall(chunk)
            self.pos += len(chunk)
            nbytes -= len(chunk)

    def _send(self, data):
        """Byte faults (flip, cut, delay), then to the client."""
        while data:
            f = self._refresh()
            piece = data[:max(1, f.delay_chunk)] if f.delay else data
            data = data[len(piece):]
            if self.flip_at is not None and \
                    self.pos <= self.flip_at < self.pos + len(piece):
                i = self.flip_at - self.pos
                mask = (f.flip_mask & 0xFF) or 0xFF
                piece = piece[:i] + bytes([piece[i] ^ mask]) + piece[i + 1:]
                self.flip_at = None
                self.proxy._count("flipped")
            cut = False
            if self.budget is not None and len(piece) >= self.budget:
                piece = piece[:self.budget]
                cut = True
            elif self.budget is not None:
                self.budget -= len(piece)
            if f.delay:
                time.sleep(f.delay)
            self.proxy._wait_not_stalled(self)
            if self.closed:
                return False
            if piece:
                self.client.sendall(piece)
                self.pos += len(piece)
            if cut:
                self.proxy._count("cuts")
                self.close()
                return False
        return True


class FaultProxy:
    """See the module docstring.  Use as a context manager or call close()."""

    def __init__(self, upstream_port, upstream_host="127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.port = None
        self._lock = threading.Condition()
        self._faults = _Faults()
        self._gen = 0
        self._stall = False
        self._down = False
        self._closing = False
        self._listener = None
        self._acceptor = None
        self._conns = set()
        self._threads = []
        self.connections = 0
        self.cuts = 0
        self.flipped = 0
        self.injected = 0
        self.rewritten = 0
        self.server_bytes = 0
        self.client_bytes = 0
        self.client_bytes_stalled = 0
        self.gated = 0
        self._gate = None         # compiled pattern while armed
        self._gate_open = True

    # -- life cycle

    def start(self):
        self._listen()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _listen(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port or 0))
        s.listen(64)
        self.port = s.getsockname()[1]
        self._listener = s
        t = threading.Thread(target=self._accept_loop, args=(s,),
                             name=f"faultproxy-accept-{self.port}",
                             daemon=True)
        self._acceptor = t
        t.start()

    def _accept_loop(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return   # closed by down() or close()
            with self._lock:
                if self._closing or self._down:
                    client.close()
                    continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()   # upstream down: as if refused late
                continue
            upstream.settimeout(None)
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                conn = _Conn(self, client, upstream, self.connections)
                if self._closing or self._down:
                    conn.closed = True
                    client.close()
                    upstream.close()
                    continue
                self._conns.add(conn)
            for target in (conn.pump_c2s, conn.pump_s2c):
                t = threading.Thread(target=target, daemon=True,
                                     name=f"faultproxy-{self.port}-"
                                     f"{conn.number}")
                conn.threads.append(t)
                t.start()

    def close(self):
        """Stops listening and closes every connection; waits a little for
        the threads."""
        with self._lock:
            self._closing = True
            self._stall = False
            self._lock.notify_all()
            conns = list(self._conns)
        self._close_listener()
        for c in conns:
            c.close()
        for c in conns:
            for t in c.threads:
                t.join(timeout=5)
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)

    def _close_listener(self):
        s, self._listener = self._listener, None
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _forget(self, conn):
        with self._lock:
            self._conns.discard(conn)
            self._lock.notify_all()

    # -- state shared with the connections

    def _current(self):
        with self._lock:
            return self._faults, self._gen

    def _change(self, fn):
        with self._lock:
            f = self._faults.copy()
            fn(f)
            self._faults = f
            self._gen += 1
            self._lock.notify_all()

    def _stalled(self):
        with self._lock:
            return self._stall

    def _wait_not_stalled(self, conn):
        with self._lock:
            while self._stall and not conn.closed and not self._closing:
                self._lock.wait(0.2)

    def _count(self, name, n=1):
        with self._lock:
            setattr(self, name, getattr(self, name) + n)
            self._lock.notify_all()

    def _count_server(self, n):
        self._count("server_bytes", n)

    def _count_client(self, n):
        with self._lock:
            self.client_bytes += n
            if self._stall:
                self.client_bytes_stalled += n
            self._lock.notify_all()

    def _pass_gate(self, conn, data):
        """Blocks a client->server chunk holding the gate's pattern until
        open_gate(); the pattern matches at most once."""
        with self._lock:
            if self._gate is None or not self._gate.search(data):
                return
            self._gate = None
            self.gated += 1
            self._lock.notify_all()
            while not self._gate_open and not conn.closed and \
                    not self._closing:
                self._lock.wait(0.2)

    # -- observation

    def open_connections(self):
        with self._lock:
            return len(self._conns)

    def wait_for(self, what, predicate, timeout=60):
        """Waits until predicate() (called under the proxy's lock) is true;
        AssertionError naming `what` after timeout seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"proxy: {what}: not the case after "
                                         f"{timeout:.0f}s")
                self._lock.wait(min(left, 0.2))

    # -- faults

    def clear(self):
        """Removes every fault (a stall and a gate too); keeps the
        connections."""
        self._change(lambda f: f.__init__())
        self.resume()
        self.open_gate()

    def delay(self, seconds, chunk=16384):
        def fn(f):
            f.delay = float(seconds)
            f.delay_chunk = int(chunk)
        self._change(fn)

    def trickle(self, interval, nbytes=1):
        self.delay(interval, chunk=nbytes)

    def stall(self):
        with self._lock:
            self._stall = True
            self._lock.notify_all()

    def resume(self):
        with self._lock:
            self._stall = False
            self._lock.notify_all()

    def cut_after(self, nbytes, after=None):
        def fn(f):
            f.cut_bytes = int(nbytes)
            f.cut_pattern = re.compile(after) if after is not None else None
        self._change(fn)

    def flip(self, offset, mask=0xFF):
        def fn(f):
            f.flip_offset = int(offset)
            f.flip_mask = int(mask)
        self._change(fn)

    def inject_after(self, pattern, data, separate=False):
        def fn(f):
            f.inject_pattern = re.compile(pattern)
            f.inject_data = bytes(data)
            f.inject_separate = bool(separate)
        self._change(fn)

    def rewrite(self, pattern, repl, cut_after=None, flood=None,
                every=False):
        def fn(f):
            f.rewrite_pattern = re.compile(pattern)
            f.rewrite_repl = repl
            f.rewrite_cut = cut_after
            f.rewrite_flood = flood
            f.rewrite_every = bool(every)
        self._change(fn)

    def gate(self, pattern):
        with self._lock:
            self._gate = re.compile(pattern, re.MULTILINE)
            self._gate_open = False

    def open_gate(self):
        with self._lock:
            self._gate = None
            self._gate_open = True
            self._lock.notify_all()

    def drop_all(self):
        """Closes every open connection (the port stays open)."""
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.close()

    def down(self):
        """Like a server going away: open connections are closed and new
        ones refused until up()."""
        with self._lock:
            self._down = True
        self._close_listener()
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
        self.drop_all()

    def up(self):
        with self._lock:
            if not self._down:
                return
            self._down = False
        self._listen()


class ScriptedImapServer:
    """Listens on 127.0.0.1; every connection gets `greeting` and then, for
    each line the client sends, whatever answer(line) returns (bytes, or
    None to close the connection).  The default answers BAD.  With `tls`
    (a server-side ssl.SSLContext) each connection starts with a TLS
    handshake.  `connections` counts the connections accepted."""

    def __init__(self, greeting, answer=None, tls=None):
        self.greeting = greeting
        self.answer = answer or self._bad
        self.tls = tls
        self.lines = []
        self.connections = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._conns = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @staticmethod
    def _bad(line):
        tag = line.split(b" ", 1)[0] or b"*"
        return tag + b" BAD not here\r\n"

    def _accept_loop(self):
        while True:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(c)
                self.connections += 1
            threading.Thread(target=self._serve, args=(c,),
                             daemon=True).start()

    def _serve(self, c):
        try:
            if self.tls is not None:
                raw = c
                raw.settimeout(30)
                c = self.tls.wrap_socket(raw, server_side=True)
                c.settimeout(None)
                with self._lock:   # wrap_socket took over the fd
                    self._conns = [c if x is raw else x
                                   for x in self._conns]
            c.sendall(self.greeting)
            buf = b""
            while True:
                data = c.recv(4096)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    line = line.rstrip(b"\r")
                    with self._lock:
                        self.lines.append(line)
                    reply = self.answer(line)
                    if reply is None:
                        return
                    c.sendall(reply)
        except OSError:   # ssl.SSLError included
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
        with self._lock:
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
