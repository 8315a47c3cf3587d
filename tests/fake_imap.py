"""A scripted IMAP server with one INBOX of synthetic messages, for what a
real server will not do on a test machine: hold a message larger than
4 GiB, or announce sizes no real message has.

Each message is given by its announced size and a function content(offset,
length) -> bytes, so a message of many GiB is never held in memory.  The
server speaks just enough IMAP4rev1 for mailfs (CAPABILITY, LOGIN, LIST,
EXAMINE/SELECT, UID FETCH of the listing and of partial bodies, NOOP,
LOGOUT) over TLS, and records every partial FETCH it was asked for."""

import re
import ssl
import threading

from faultproxy import ScriptedImapServer

LISTING_FIELDS = (b"DATE", b"SUBJECT", b"MESSAGE-ID", b"FROM")


class FakeMessage:
    def __init__(self, uid, size, content, header):
        self.uid = uid
        self.size = size          # announced as RFC822.SIZE
        self.content = content    # content(offset, length) -> bytes
        self.header = header      # the header fields the listing returns


def _tagged(tag, text=b"OK done"):
    return tag + b" " + text + b"\r\n"


class FakeImapServer:
    """Use as a context manager; .port, .fetches ([(uid, origin, length)]).
    messages: [FakeMessage] in INBOX."""

    def __init__(self, cert, key, messages, uidvalidity=7):
        self.messages = {m.uid: m for m in messages}
        self.uidvalidity = uidvalidity
        self.fetches = []
        self._lock = threading.Lock()
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        self._server = ScriptedImapServer(
            b"* OK [CAPABILITY IMAP4rev1 UIDPLUS] fake ready\r\n",
            answer=self._answer, tls=tls)
        self.port = self._server.port

    def close(self):
        self._server.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ commands

    def _answer(self, line):
        parts = line.split(b" ", 2)
        if len(parts) < 2:
            return b"* BAD no tag\r\n"
        tag, cmd = parts[0], parts[1].upper()
        rest = parts[2] if len(parts) > 2 else b""
        if cmd == b"CAPABILITY":
            return b"* CAPABILITY IMAP4rev1 UIDPLUS\r\n" + _tagged(tag)
        if cmd == b"LOGIN":
            return _tagged(tag, b"OK [CAPABILITY IMAP4rev1 UIDPLUS] in")
        if cmd in (b"NOOP", b"CHECK"):
            return _tagged(tag)
        if cmd == b"LOGOUT":
            return b"* BYE bye\r\n" + _tagged(tag)
        if cmd in (b"LIST", b"LSUB"):
            return (b"* " + cmd + b" (\\HasNoChildren) \"/\" INBOX\r\n" +
                    _tagged(tag))
        if cmd in (b"EXAMINE", b"SELECT"):
            uids = sorted(self.messages)
            return (b"* %d EXISTS\r\n* 0 RECENT\r\n"
                    b"* OK [UIDVALIDITY %d] ok\r\n"
                    b"* OK [UIDNEXT %d] ok\r\n"
                    b"* FLAGS (\\Seen)\r\n" %
                    (len(uids), self.uidvalidity,
                     (uids[-1] + 1) if uids else 1) +
                    _tagged(tag, b"OK [READ-ONLY] done"))
        if cmd == b"UID" and rest.upper().startswith(b"FETCH "):
            return self._fetch(tag, rest[6:])
        return _tagged(tag, b"BAD not supported here")

    def _uids(self, spec):
        out = []
        for piece in spec.split(b","):
            if b":" in piece:
                lo, hi = piece.split(b":")
                lo = int(lo)
                hi = None if hi == b"*" else int(hi)
                out += [u for u in sorted(self.messages)
                        if u >= lo and (hi is None or u <= hi)]
            elif int(piece) in self.messages:
                out.append(int(piece))
        return out

    def _fetch(self, tag, args):
        spec, _, items = args.partition(b" ")
        resp = b""
        partial = re.search(rb"BODY\.PEEK\[\]<(\d+)\.(\d+)>", items,
                            re.IGNORECASE)
        for seq, uid in enumerate(self._uids(spec), 1):
            m = self.messages[uid]
            if partial:
                origin, length = int(partial.group(1)), int(partial.group(2))
                with self._lock:
                    self.fetches.append((uid, origin, length))
                data = m.content(origin, max(0, min(length,
                                                    m.size - origin)))
                resp += (b"* %d FETCH (UID %d BODY[]<%d> {%d}\r\n" %
                         (seq, uid, origin, len(data)) + data + b")\r\n")
            elif b"RFC822.SIZE" in items.upper():
                resp += (b"* %d FETCH (UID %d RFC822.SIZE %d INTERNALDATE "
                         b"\"02-Jun-2025 10:00:00 +0000\" FLAGS (\\Seen) "
                         b"BODY[HEADER.FIELDS (DATE SUBJECT MESSAGE-ID "
                         b"FROM)] {%d}\r\n" %
                         (seq, uid, m.size, len(m.header)) + m.header +
                         b")\r\n")
            else:
                resp += b"* %d FETCH (UID %d FLAGS (\\Seen))\r\n" % (seq, uid)
        return resp + _tagged(tag)
