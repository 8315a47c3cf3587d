"""A throwaway SMTP submission server for the outbox tests (aiosmtpd).

    server = SmtpServer(cert=servers.cert, key=servers.key,
                        user=account.user, password=account.password)
    server.start()
    ... mount with -o smtp=server.url() ...
    [d] = server.wait_deliveries(1)
    d.mail_from, d.rcpt_tos, d.data       # exactly what arrived
    server.stop()                         # also when the test failed

It runs in this process, on its own asyncio event loop in a daemon thread,
listening on 127.0.0.1 at a port chosen once (free_port()) and kept, so
stop() and start() again give a server that mailfs reaches at the same
URL.  stop() aborts every open connection, so a client waiting for a reply
sees the connection drop at once rather than a silent peer.

Security is that of a real submission server:
  tls="starttls"  (default) STARTTLS offered and required before anything
                  but EHLO/HELO/NOOP/QUIT; AUTH only after it
  tls="implicit"  TLS from the first byte (smtps://)
  tls="none"      no TLS at all, no STARTTLS offered (to check that mailfs
                  refuses to go on)
AUTH PLAIN and LOGIN (see `auth_mechanisms`) are checked against
`user`/`password` and required before MAIL.  With `oauth2` (an
oauth2.Introspection), XOAUTH2 and OAUTHBEARER may be offered too: a token
is good when the introspection endpoint says it stands for `user`.  Both
answer a bad token as Gmail does, with a 334 JSON error challenge, and then
535 once the client has answered it as its mechanism requires (an empty
line for XOAUTH2, a single 0x01 for OAUTHBEARER; anything else is recorded
as an "auth-protocol" event).  Without an initial response (or always, with
two_step=True) they send an empty 334 first, as Microsoft 365 does.  SMTPUTF8 is offered unless
smtputf8=False; 8BITMIME always is.

What arrives is recorded, in order:
  deliveries   Delivery for each message the server accepted (250 after
               DATA): mail_from, mail_options, rcpt_tos, data (the exact
               bytes after dot-unstuffing, CRLF line ends as sent), login,
               tls
  attempts     Delivery for every DATA that got as far as the message,
               with .reply: what the server answered (or "dropped")
  events       (kind, detail) tuples: "connect", "auth", "auth-failed",
               "mail", "rcpt", "data" with the reply given
With log_path set, a transcript of the events is appended to that file.

Behaviour, changeable at any time from the test (thread-safe):
  fail_data(n, reply)        the next n DATA get `reply` (default 451)
  reject_data(reply)         every DATA gets `reply` (default 550); None
                             to stop
  reject_mail(reply)         every MAIL FROM gets `reply` (default 553);
                             None to stop
  reject_rcpt(addr, reply)   RCPT TO:<addr> gets `reply` (default 550)
                             every time
  fail_rcpt(addr, n, reply)  the next n RCPT TO:<addr> get `reply`
                             (default 451)
  drop_data(n)               the next n messages are read to the final dot
                             and then the connection is cut without a
                             reply
  hold_data(n), release()    the next n messages are read to the final dot
                             and then left without a reply (event
                             "data-held") until release() or stop()
  file_sent(fn)              fn(data) files each accepted message in a
                             Sent folder before the 250 is given, as
                             Gmail and Microsoft 365 do; None to stop
"""

import asyncio
import base64
import binascii
import json
import logging
import os
import ssl
import threading
import time
import warnings

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword

from mailserver import free_port, wait_for_port

HOST = "127.0.0.1"
SERVER_NAME = "smtp.mailfs.test"
DEFAULT_TIMEOUT = float(os.environ.get("MAILFS_TEST_SMTP_TIMEOUT", "120"))

# aiosmtpd logs every command at INFO and warns about settings chosen on
# purpose here; the event log below is what the tests read.
logging.getLogger("mail.log").setLevel(logging.ERROR)


class Delivery:
    """One message as the server received it."""

    def __init__(self, mail_from, mail_options, rcpt_tos, data, login, tls,
                 peer):
        self.mail_from = mail_from
        self.mail_options = list(mail_options)
        self.rcpt_tos = list(rcpt_tos)
        self.data = bytes(data)
        self.login = login
        self.tls = tls
        self.peer = peer
        self.reply = None
        self.time = time.time()

    def __repr__(self):
        return (f"Delivery(from={self.mail_from!r}, to={self.rcpt_tos!r}, "
                f"{len(self.data)} bytes, reply={self.reply!r})")


class _Session(SMTP):
    """aiosmtpd's SMTP protocol, plus bookkeeping of open connections so
    that SmtpServer.stop() can cut them."""

    def __init__(self, owner, *args, **kw):
        self._owner = owner
        self._raw_transport = None
        super().__init__(*args, **kw)

    def connection_made(self, transport):
        first = self._raw_transport is None
        if first:
            self._raw_transport = transport
            self._owner._connections.add(self)
            self._owner._event("connect", str(
                transport.get_extra_info("peername")))
        super().connection_made(transport)

    def connection_lost(self, error):
        self._owner._connections.discard(self)
        super().connection_lost(error)

    def abort(self):
        if self._raw_transport is not None:
            self._raw_transport.abort()


class _Handler:
    """aiosmtpd hooks: record and answer as the owner's controls say."""

    def __init__(self, owner):
        self.owner = owner

    async def auth_XOAUTH2(self, server, args):
        return await self.owner._oauth(server, args, "XOAUTH2")

    async def auth_OAUTHBEARER(self, server, args):
        return await self.owner._oauth(server, args, "OAUTHBEARER")

    async def handle_MAIL(self, server, session, envelope, address,
                          mail_options):
        reply = self.owner._mail_reply()
        self.owner._event("mail", f"{address} {' '.join(mail_options)}"
                                  f" -> {reply}")
        if reply.startswith("2"):
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
        return reply

    async def handle_RCPT(self, server, session, envelope, address,
                          rcpt_options):
        reply = self.owner._rcpt_reply(address)
        self.owner._event("rcpt", f"{address} -> {reply}")
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def handle_DATA(self, server, session, envelope):
        owner = self.owner
        tls = server.transport is not None and \
            server.transport.get_extra_info("ssl_object") is not None
        login = getattr(session, "mailfs_login", None)
        d = Delivery(envelope.mail_from, envelope.mail_options,
                     envelope.rcpt_tos, envelope.original_content, login, tls,
                     session.peer)
        if owner._take_hold():
            owner._event("data-held", f"from={d.mail_from} to={d.rcpt_tos}")
            while not owner._released.is_set():
                await asyncio.sleep(0.05)
        reply = owner._data_reply()
        if reply is None:
            d.reply = "dropped"
            owner._record(d, accepted=False)
            server.abort()
            # The connection is gone; this task is cancelled with it.
            await asyncio.sleep(3600)
            return "421 4.4.2 connection dropped"
        d.reply = reply
        filer = owner._filer
        if filer is not None and reply.startswith("2"):
            await asyncio.get_running_loop().run_in_executor(
                None, filer, d.data)
            owner._event("filed", f"{len(d.data)} bytes")
        owner._record(d, accepted=reply.startswith("2"))
        return reply


class SmtpServer:
    """See the module docstring.  Use as a context manager, or call stop()
    in a finally: block (stop() is idempotent and never raises)."""

    def __init__(self, cert=None, key=None, user=None, password=None,
                 port=None, tls="starttls", auth_mechanisms=("PLAIN", "LOGIN"),
                 smtputf8=True, log_path=None, oauth2=None,
                 two_step=False):
        if tls not in ("starttls", "implicit", "none"):
            raise ValueError(tls)
        if tls != "none" and not (cert and key):
            raise ValueError("TLS needs cert and key")
        self.cert, self.key = cert, key
        self.user, self.password = user, password
        self.tls = tls
        self.auth_mechanisms = tuple(m.upper() for m in auth_mechanisms)
        self.oauth2 = oauth2
        self.two_step = two_step
        self.smtputf8 = smtputf8
        self.port = port or free_port()
        self.log_path = log_path

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self.deliveries = []
        self.attempts = []
        self.events = []
        self._data_failures = []     # replies for the next DATA
        self._data_reject = None
        self._mail_reject = None
        self._drops = 0
        self._holds = 0
        self._released = threading.Event()
        self._rcpt_reject = {}       # lower-case address -> reply
        self._rcpt_failures = {}     # lower-case address -> [reply, ...]
        self._filer = None           # files accepted mail in Sent

        self._loop = None
        self._thread = None
        self._server = None
        self._connections = set()
        self.starts = 0

    # ------------------------------------------------------------ URLs

    def url(self, user=None, scheme=None):
        """smtp://user@127.0.0.1:port (smtps:// with implicit TLS)."""
        if scheme is None:
            scheme = "smtps" if self.tls == "implicit" else "smtp"
        user = user if user is not None else self.user
        who = f"{user}@" if user else ""
        return f"{scheme}://{who}{HOST}:{self.port}"

    # ------------------------------------------------------------ controls

    def fail_data(self, n, reply="451 4.3.0 Temporary failure, try later"):
        with self._lock:
            self._data_failures.extend([reply] * n)

    def reject_data(self, reply="550 5.7.1 Message content rejected"):
        with self._lock:
            self._data_reject = reply

    def drop_data(self, n=1):
        with self._lock:
            self._drops += n

    def hold_data(self, n=1):
        with self._lock:
            self._holds += n
            self._released.clear()

    def release(self):
        with self._lock:
            self._holds = 0
            self._released.set()

    def file_sent(self, fn):
        with self._lock:
            self._filer = fn

    def _take_hold(self):
        with self._lock:
            if self._holds > 0:
                self._holds -= 1
                return True
        return False

    def reject_mail(self, reply="553 5.7.1 Sender address rejected:"
                                " not owned by user"):
        with self._lock:
            self._mail_reject = reply

    def _mail_reply(self):
        with self._lock:
            return self._mail_reject or "250 2.1.0 OK"

    def reject_rcpt(self, addr, reply=None):
        if reply is None:
            reply = f"550 5.1.1 <{addr}>: Recipient address rejected:" \
                    f" User unknown"
        with self._lock:
            self._rcpt_reject[addr.lower()] = reply

    def fail_rcpt(self, addr, n=1, reply=None):
        if reply is None:
            reply = f"451 4.2.0 <{addr}>: Recipient mailbox busy"
        with self._lock:
            self._rcpt_failures.setdefault(addr.lower(), []).extend(
                [reply] * n)

    def _rcpt_reply(self, addr):
        with self._lock:
            key = addr.lower()
            if key in self._rcpt_reject:
                return self._rcpt_reject[key]
            pending = self._rcpt_failures.get(key)
            if pending:
                return pending.pop(0)
        return "250 2.1.5 OK"

    def _data_reply(self):
        """The reply for a DATA just read, or None to drop the
        connection."""
        with self._lock:
            if self._drops > 0:
                self._drops -= 1
                return None
            if self._data_failures:
                return self._data_failures.pop(0)
            if self._data_reject:
                return self._data_reject
        return "250 2.0.0 OK: queued"

    # ------------------------------------------------------------ records

    def _event(self, kind, detail=""):
        with self._changed:
            self.events.append((kind, detail))
            self._changed.notify_all()
        if self.log_path:
            try:
                with open(self.log_path, "a", encoding="utf-8",
                          errors="replace") as f:
                    f.write(f"{time.strftime('%H:%M:%S')} {kind} {detail}\n")
            except OSError:
                pass

    def _record(self, d, accepted):
        with self._changed:
            self.attempts.append(d)
            if accepted:
                self.deliveries.append(d)
            self._changed.notify_all()
        self._event("data", f"from={d.mail_from} to={d.rcpt_tos} "
                    f"{len(d.data)} bytes -> {d.reply}")

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = (mechanism.upper() in self.auth_mechanisms and
              isinstance(auth_data, LoginPassword) and
              self.user is not None and
              auth_data.login == self.user.encode() and
              auth_data.password == (self.password or "").encode())
        login = auth_data.login.decode(errors="replace") \
            if isinstance(auth_data, LoginPassword) else "?"
        self._event("auth" if ok else "auth-failed", f"{mechanism} {login}")
        if ok:
            session.mailfs_login = login
        return AuthResult(success=ok, handled=False)

    async def _oauth(self, server, args, mech):
        """XOAUTH2 and OAUTHBEARER, checked with self.oauth2."""
        if len(args) == 1 or self.two_step:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = base64.b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        fields = blob.split(b"\x01")
        user = token = None
        if mech == "OAUTHBEARER":
            gs2 = fields[0].split(b",")
            if len(gs2) >= 2 and gs2[1].startswith(b"a="):
                user = gs2[1][2:].decode(errors="replace")
            fields = fields[1:]
        for f in fields:
            if f.startswith(b"user="):
                user = f[5:].decode(errors="replace")
            elif f.lower().startswith(b"auth=bearer "):
                token = f[12:].decode(errors="replace")
        ok = (self.oauth2 is not None and token is not None and
              mech in self.auth_mechanisms and user == self.user and
              self.oauth2.user_of(token) == user)
        if ok:
            self._event("auth", f"{mech} {user}")
            server.session.mailfs_login = user
            return AuthResult(success=True, handled=False,
                              auth_data=LoginPassword(user.encode(), b""))
        err = {"status": "401", "schemes": "bearer",
               "scope": "https://mail.google.com/"}
        if mech == "OAUTHBEARER":
            err = {"status": "invalid_token", "scope": "mail"}
        answer = await server.challenge_auth(json.dumps(err))
        want = b"\x01" if mech == "OAUTHBEARER" else b""
        if answer != want:
            self._event("auth-protocol", f"{mech} answered {answer!r}")
        self._event("auth-failed", f"{mech} {user}")
        return AuthResult(success=False, handled=False)

    def snapshot(self):
        """(deliveries, attempts, events) copies, taken together."""
        with self._lock:
            return list(self.deliveries), list(self.attempts), \
                list(self.events)

    def wait(self, predicate, timeout=DEFAULT_TIMEOUT, what="condition"):
        """Waits until predicate(server) is true; returns its value.
        Raises AssertionError with the event log after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = predicate(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(left, 0.5))
        raise AssertionError(f"SMTP server: no {what} within {timeout:.0f}s;"
                             f" events:\n" + self.transcript())

    def wait_deliveries(self, n, timeout=DEFAULT_TIMEOUT):
        """Waits until at least n messages were accepted; returns them
        all."""
        self.wait(lambda s: len(s.deliveries) >= n, timeout,
                  f"{n} deliveries")
        with self._lock:
            return list(self.deliveries)

    def wait_attempts(self, n, timeout=DEFAULT_TIMEOUT):
        self.wait(lambda s: len(s.attempts) >= n, timeout, f"{n} DATA")
        with self._lock:
            return list(self.attempts)

    def transcript(self):
        with self._lock:
            return "\n".join(f"  {k} {d}" for k, d in self.events)

    # ------------------------------------------------------------ life

    def _ssl_context(self):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def _factory(self):
        kw = dict(hostname=SERVER_NAME, ident="mailfs-test ESMTP",
                  enable_SMTPUTF8=self.smtputf8, decode_data=False,
                  loop=self._loop,
                  authenticator=self._authenticate, auth_required=True,
                  auth_exclude_mechanism=[
                      m for m in ("PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER")
                      if m not in self.auth_mechanisms],
                  timeout=300)
        if self.tls == "starttls":
            kw.update(tls_context=self._ssl_context(), require_starttls=True,
                      auth_require_tls=True)
        else:
            # Implicit TLS: the whole connection is TLS, but aiosmtpd only
            # counts STARTTLS, so it must not insist on that.  No TLS: the
            # point is to see mailfs refuse before it gets this far.
            kw.update(auth_require_tls=False)
        with warnings.catch_warnings():
            # aiosmtpd warns about AUTH without (STARTTLS) TLS: see above.
            warnings.simplefilter("ignore")
            return _Session(self, _Handler(self), **kw)

    def _run(self, ready):
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                self._loop.create_server(
                    self._factory, host=HOST, port=self.port,
                    reuse_address=True,
                    ssl=self._ssl_context() if self.tls == "implicit"
                    else None))
        except BaseException as e:  # reported by start()
            ready.append(e)
            return
        ready.append(None)
        self._loop.run_forever()

    @property
    def running(self):
        return self._thread is not None

    def start(self, timeout=30.0):
        """Listens on self.port (the same one after a stop())."""
        if self._thread is not None:
            raise RuntimeError("SMTP server already running")
        self._loop = asyncio.new_event_loop()
        ready = []
        self._thread = threading.Thread(target=self._run, args=(ready,),
                                        name=f"smtp-{self.port}",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not ready:
            if time.monotonic() > deadline or not self._thread.is_alive():
                break
            time.sleep(0.01)
        if not ready or ready[0] is not None:
            err = ready[0] if ready else TimeoutError("no listener")
            self._thread.join(5)
            if not self._thread.is_alive():
                self._loop.close()
            self._thread = None
            self._loop = None
            raise RuntimeError(f"SMTP server on port {self.port} did not "
                               f"start: {err!r}")
        wait_for_port(self.port, HOST, timeout=timeout)
        self.starts += 1
        self._event("start", f"port {self.port}")
        return self

    async def _shutdown(self):
        self._server.close()
        for conn in list(self._connections):
            conn.abort()
        # Let the aborted connections and cancelled tasks run down.
        for _ in range(50):
            if not self._connections:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0)

    def stop(self):
        """Stops listening and cuts every connection.  Never raises."""
        if self._thread is None:
            return
        loop, thread = self._loop, self._thread
        try:
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            fut.result(timeout=15)
        except Exception:
            pass
        try:
            def cancel_all():
                for task in asyncio.all_tasks(loop):
                    task.cancel()
                loop.stop()
            loop.call_soon_threadsafe(cancel_all)
        except RuntimeError:
            pass
        thread.join(15)
        if not thread.is_alive():
            try:
                self._server.close()   # in case _shutdown() did not run
            except Exception:
                pass
            try:
                # Give cancelled tasks their last step, then close.
                loop.run_until_complete(asyncio.sleep(0))
            except Exception:
                pass
            try:
                loop.close()
            except Exception:
                pass
        self._thread = None
        self._loop = None
        self._server = None
        self._connections.clear()
        self._event("stop", f"port {self.port}")

    def restart(self):
        self.stop()
        return self.start()

    def __enter__(self):
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
