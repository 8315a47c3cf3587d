"""Integration tests: an IMAP server that says NO or BAD.

Servers refuse commands in ordinary situations: Microsoft 365 answers NO
when it throttles, some servers answer a FETCH of a message another
client expunged with NO (RFC 3501 allows it), and any server can fail
internally.  libetpan's commands disagree on who frees what in those
cases, so each command mailfs sends is answered with NO and with BAD by
a fake server (tests/fakeimap.py): the operation fails with an errno,
mailfs lives on, and the same operation works once the server behaves.
"""

import errno
import os

import pytest

from fakeimap import FakeImapServer
from helpers import assert_one_line, files_in, poll_until, read_uncached

PASSWORD = "fake-secret"


def message(tag, size=3000):
    head = (f"Date: Tue, 03 Jun 2025 10:00:00 +0000\r\n"
            f"From: Alice <alice@example.org>\r\n"
            f"Subject: Refusal {tag}\r\n"
            f"Message-ID: <{tag}@refusal.example>\r\n\r\n").encode()
    return head + (b"x" * 70 + b"\r\n") * (size // 72)


@pytest.fixture
def fake():
    server = FakeImapServer({"INBOX": [message("one"), message("two")],
                             "Archive": []})
    yield server
    server.close()


def mount_fake(mount, fake, args=()):
    return mount(None, source=f"imap://someone@127.0.0.1:{fake.port}",
                 password=PASSWORD, ca_file=False, args=list(args),
                 options=["allow_plaintext", "timeout=10", "pop3=none"])


def first_file(m):
    inbox = os.path.join(m.path, "INBOX")
    names = sorted(files_in(inbox))
    assert len(names) == 2, names
    return os.path.join(inbox, names[0])


def attempt(fn):
    """fn()'s result, or the OSError it raised."""
    try:
        return fn()
    except OSError as e:
        return e


# What each operation does through the mount, and the commands it sends
# (each answered NO or BAD in turn).  Every operation runs on a fresh
# mount so no cache hides the command.
def op_list_folder(m, fake):
    return sorted(os.listdir(os.path.join(m.path, "INBOX")))


def op_read(m, fake):
    path = first_file(m)
    return read_uncached(path, 0, 100)


def op_flag(m, fake):
    path = first_file(m)
    os.setxattr(path, "user.mail.flags", b"\\Flagged")
    return fake.flags()[1]


def op_remove(m, fake):
    os.unlink(first_file(m))
    return fake.uids()


def op_move(m, fake):
    path = first_file(m)
    os.rename(path, os.path.join(m.path, "Archive",
                                 os.path.basename(path)))
    return fake.uids("Archive")


def op_mkdir(m, fake):
    os.mkdir(os.path.join(m.path, "Made"))
    return sorted(fake.folders)


def op_rmdir(m, fake):
    os.rmdir(os.path.join(m.path, "Archive"))
    return sorted(fake.folders)


OPS = {
    "EXAMINE": op_list_folder,
    "FETCH-META": op_list_folder,
    "FETCH-BODY": op_read,
    "SELECT": op_flag,
    "STORE": op_flag,
    "EXPUNGE": op_remove,
    "MOVE": op_move,
    "CREATE": op_mkdir,
    "DELETE": op_rmdir,
}


@pytest.mark.parametrize("answer", ["NO", "BAD"])
@pytest.mark.parametrize("kind", sorted(OPS))
def test_refused_command_fails_the_operation_only(kind, answer, fake, mount):
    op = OPS[kind]
    m = mount_fake(mount, fake)
    # The listing is read before the fault where the operation needs it.
    if kind not in ("EXAMINE", "FETCH-META"):
        first_file(m)
    # Every such command, as mailfs may retry on a new connection.
    fake.fail(kind, answer)
    result = attempt(lambda: op(m, fake))
    assert fake.failed.get(kind, 0) >= 1, \
        f"no {kind} was refused; commands: {fake.lines[-8:]}"
    assert m.proc.poll() is None, "mailfs died"
    assert isinstance(result, OSError), \
        f"the operation succeeded though {kind} was refused: {result!r}"
    assert result.errno in (errno.EIO, errno.EAGAIN, errno.EACCES,
                            errno.EPERM, errno.ENOENT), result
    # The next attempt (on the same or a new connection) works.
    fake.clear()
    poll_until(lambda: not isinstance(attempt(lambda: op(m, fake)),
                                      OSError),
               f"the operation after the refused {kind}", timeout=60)
    assert m.proc.poll() is None, "mailfs died"
    assert PASSWORD not in m.stderr()
    m.unmount()


@pytest.mark.parametrize("answer", ["NO", "BAD", "BYE"])
@pytest.mark.parametrize("kind", ["CAPABILITY", "LOGIN", "LIST"])
def test_refused_command_at_mount_fails_the_mount_cleanly(kind, answer,
                                                          fake, mount_fails):
    fake.fail(kind, answer)
    rc, err = mount_fails(None, source=f"imap://someone@127.0.0.1:{fake.port}",
                          password=PASSWORD, ca_file=False,
                          options=["allow_plaintext", "timeout=10",
                                   "pop3=none"])
    assert fake.failed.get(kind, 0) >= 1, fake.lines
    assert rc > 0, f"mailfs died of signal {-rc}:\n{err}"
    # Beside allow_plaintext's warning, one line says why.
    err = "\n".join(line for line in err.splitlines()
                    if "warning: allow_plaintext" not in line)
    print(assert_one_line(err, kind, "refused", "closed", "failed"))
    assert PASSWORD not in err


@pytest.mark.parametrize("sasl_ir", [True, False], ids=["sasl-ir", "no-ir"])
def test_authenticate_plain_uses_initial_response_when_offered(sasl_ir,
                                                               mount):
    """A password LOGIN cannot quote (8-bit) goes through AUTHENTICATE
    PLAIN: on the command line when the server offers SASL-IR, else
    after its "+"."""
    caps = b"IMAP4rev1 " + (b"SASL-IR " if sasl_ir else b"") + \
        b"LITERAL+ UIDPLUS MOVE IDLE AUTH=PLAIN"
    password = "p\u00e4ssw\u00f6rd"
    with FakeImapServer({"INBOX": []}, caps=caps) as fake:
        m = mount(None, source=f"imap://someone@127.0.0.1:{fake.port}",
                  password=password, ca_file=False,
                  options=["allow_plaintext", "pop3=none"])
        assert fake.auth, fake.lines
        for ir, response in fake.auth:
            assert ir == sasl_ir, fake.lines
            assert response == b"\0someone\0" + password.encode()
        assert not any(b" LOGIN " in line for line in fake.lines)
        m.unmount()
