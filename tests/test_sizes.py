"""Integration tests of sizes and offsets at the 32- and 64-bit edges,
against a scripted IMAP server (fakeimap.py): no real server on a test
machine holds a message of more than 4 GiB, and none announces a size no
file can have.  The content of the huge message is computed from the
offset, so nothing of that size is ever held or written."""

import errno
import os
import ssl

import pytest

from fakeimap import FakeImapServer, VirtualMessage
from faultproxy import ScriptedImapServer
from helpers import files_in, read_uncached

GiB = 1 << 30
MiB = 1 << 20

HEAD = (b"From: big@example.org\r\nSubject: huge\r\n"
        b"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
        b"Message-ID: <huge@example.org>\r\n")
HEAD += b"X-Pad: " + b"p" * (-(len(HEAD) + 11) % 16) + b"\r\n\r\n"
assert len(HEAD) % 16 == 0
HUGE_SIZE = 4 * GiB + 3 * MiB + 5


def huge_content(offset, length):
    """Bytes [offset, offset + length) of the huge message: HEAD, then
    16-byte lines each holding its own number in hex."""
    end = min(offset + length, HUGE_SIZE)
    out = bytearray()
    if offset < len(HEAD):
        out += HEAD[offset:min(end, len(HEAD))]
        offset = len(HEAD)
    if offset < end:
        rel, rel_end = offset - len(HEAD), end - len(HEAD)
        first, last = rel // 16, (rel_end + 15) // 16
        lines = b"".join(b"%015x\n" % k for k in range(first, last))
        out += lines[rel - first * 16:rel_end - first * 16]
    return bytes(out)


def header_of(head):
    fields = [line for line in head.split(b"\r\n")
              if line.split(b":")[0].upper() in
              (b"DATE", b"SUBJECT", b"MESSAGE-ID", b"FROM")]
    return b"\r\n".join(fields) + b"\r\n\r\n"


def fake_mount(servers, mount, messages, **kw):
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(servers.cert, servers.key)
    server = FakeImapServer({"INBOX": messages}, tls=tls)
    try:
        m = mount(None, source=f"imaps://u@127.0.0.1:{server.port}",
                  password="secret", options=["pop3=none", "timeout=10"],
                  **kw)
    except BaseException:
        server.close()
        raise
    return server, m


def test_message_over_4gib_reads_right(servers, mount):
    huge = VirtualMessage(HUGE_SIZE, huge_content, header_of(HEAD))
    server, m = fake_mount(servers, mount, [huge])
    with server:
        inbox = os.path.join(m.path, "INBOX")
        [name] = files_in(inbox)
        path = os.path.join(inbox, name)
        assert os.stat(path).st_size == HUGE_SIZE

        assert read_uncached(path, 0, 4096) == huge_content(0, 4096)
        below = 4 * GiB - 4096
        assert read_uncached(path, below, 4096) == huge_content(below, 4096)
        # At and past 4 GiB, and across it: the bytes of that offset,
        # never those of another and never an early end.
        for offset, length in [(4 * GiB, 4096), (4 * GiB + MiB + 7, 5000),
                               (4 * GiB - 10, 20),
                               (HUGE_SIZE - 100, 100)]:
            got = read_uncached(path, offset, length)
            assert got == huge_content(offset, length), \
                (offset, length, got[:32])
        assert read_uncached(path, HUGE_SIZE, 10) == b""
        # Asked for with 64-bit origins, none cut to 32 bits.
        origins = {o for _, o, _ in server.fetches}
        assert {4 * GiB, 4 * GiB + MiB, HUGE_SIZE // MiB * MiB} <= origins, \
            sorted(origins)
        assert all(o % MiB == 0 and o < HUGE_SIZE for o in origins)


def test_size_beyond_any_file_refused(servers, mount):
    """An RFC822.SIZE above INT64_MAX cannot be a file's size: the listing
    is refused as a protocol error, never shown as a negative size."""
    header = header_of(HEAD)
    absurd = VirtualMessage(1 << 63, huge_content, header)
    server, m = fake_mount(servers, mount, [absurd])
    with server:
        with pytest.raises(OSError) as e:
            os.listdir(os.path.join(m.path, "INBOX"))
        assert e.value.errno == errno.EIO, e.value


def pop3_answer(list_size):
    """A POP3 server with one message whose LIST size is list_size."""
    def answer(line):
        cmd = line.split(b" ", 1)[0].upper()
        if cmd == b"CAPA":
            return b"+OK\r\nTOP\r\nUIDL\r\nUSER\r\n.\r\n"
        if cmd in (b"USER", b"PASS", b"NOOP"):
            return b"+OK\r\n"
        if cmd == b"LIST":
            return b"+OK\r\n1 %d\r\n.\r\n" % list_size
        if cmd == b"UIDL":
            return b"+OK\r\n1 only-one\r\n.\r\n"
        if cmd == b"TOP":
            return b"+OK\r\n" + header_of(HEAD) + b".\r\n"
        if cmd == b"QUIT":
            return None
        return b"-ERR not here\r\n"
    return answer


@pytest.mark.parametrize("list_size", [1 << 63, (1 << 64) - 1])
def test_pop3_size_beyond_any_file_refused(servers, mount, list_size):
    """The same for a POP3 LIST size: never a negative file size."""
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(servers.cert, servers.key)
    with ScriptedImapServer(b"+OK fake ready\r\n", pop3_answer(list_size),
                            tls=tls) as server:
        m = mount(None, source=f"pop3s://u@127.0.0.1:{server.port}",
                  password="secret", options=["timeout=10"])
        with pytest.raises(OSError) as e:
            os.listdir(os.path.join(m.path, "INBOX"))
        assert e.value.errno == errno.EIO, e.value
