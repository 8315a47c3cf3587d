"""Integration tests: server input is bounded.

Servers that never end a line: the IMAP, POP3 and SMTP greetings (which
come before TLS), and an IMAP LIST answer after login.  Each time the
operation fails with a protocol error well within the timeout, the
connection is dropped after a few bounded reads (the server manages to
send little more than what the socket buffers hold), the daemon lives
on where it was mounted, and its peak resident size grows by a few MiB
at most.
"""

import os

import pytest

from fakeimap import EndlessServer, FakeImapServer, endless
from helpers import assert_one_line, files_in, poll_until
from test_faults import MiB, proc_status_kib
# The outbox fixtures (make_smtp, smtp, outbox) are shared.
from test_outbox import (  # noqa: F401,F811  (fixtures used by name)
    make_smtp, message, outbox, smtp, status_of, wait_until)

PASSWORD = "fake-secret"
# Socket buffers on both sides hold a few MiB; a reader without a bound
# takes hundreds in the time the timeout allows.
SENT_MAX = 24 * MiB
GROWTH_MAX_KIB = 8 * 1024


@pytest.mark.parametrize("scheme,prefix,option", [
    ("imap", b"* OK ", "allow_plaintext"),
    ("pop3", b"+OK ", "pop3_allow_plaintext"),
])
def test_endless_greeting(scheme, prefix, option, mount_fails):
    with EndlessServer(prefix) as server:
        rc, err = mount_fails(
            None, source=f"{scheme}://someone@127.0.0.1:{server.port}",
            password=PASSWORD, ca_file=False,
            options=[option, "timeout=20", "pop3=none"])
        assert server.connections >= 1
        assert server.sent < SENT_MAX, \
            f"mailfs read {server.sent} bytes of one greeting"
    assert rc > 0, f"mailfs died of signal {-rc}:\n{err}"
    err = "\n".join(ln for ln in err.splitlines() if "warning:" not in ln)
    assert_one_line(err, "greeting", "line", "longer")


def test_endless_list_line_after_login(mount):
    fake = FakeImapServer({"INBOX": [message("bounds")], "Archive": []})
    try:
        m = mount(None, source=f"imap://someone@127.0.0.1:{fake.port}",
                  password=PASSWORD, ca_file=False,
                  options=["allow_plaintext", "timeout=20", "pop3=none",
                           "refresh=1"])
        pid = m.proc.pid
        assert len(files_in(os.path.join(m.path, "INBOX"))) == 1
        before = proc_status_kib(pid, "VmHWM")
        fake.fail("LIST", endless(b'* LIST () "/" "'))
        # The folder list is read again on a listing after `refresh`
        # seconds.

        def refused_twice():
            try:
                os.listdir(m.path)
            except OSError:
                pass
            return fake.failed.get("LIST", 0) >= 2

        poll_until(refused_twice, "two refused LIST answers", timeout=120)
        assert m.proc.poll() is None, "mailfs died"
        assert fake.endless_sent < 2 * SENT_MAX, fake.endless_sent
        grown = proc_status_kib(pid, "VmHWM") - before
        assert grown < GROWTH_MAX_KIB, \
            f"mailfs's peak resident size grew by {grown} KiB"
        assert "a line longer than 1 MiB" in m.stderr() or \
            "refused answer" in m.stderr(), m.stderr()[-2000:]
        fake.clear()
        poll_until(lambda: "Archive" in os.listdir(m.path),
                   "the folder list once the server behaves", timeout=60)
        m.unmount()
    finally:
        fake.close()


def test_endless_smtp_greeting(account, outbox):
    with EndlessServer(b"220-") as server:
        server.url = lambda: f"smtp://{account.user}@127.0.0.1:{server.port}"
        ob = outbox(server=server, options=["timeout=20"])
        pid = ob.mount.proc.pid
        before = proc_status_kib(pid, "VmHWM")
        path = ob.send("endless.eml", message("endless greeting"))
        st = wait_until(lambda: status_of(path).startswith("deferred")
                        and status_of(path), "the deferred status")
        assert ob.mount.proc.poll() is None, "mailfs died"
        assert server.sent < SENT_MAX, server.sent
        grown = proc_status_kib(pid, "VmHWM") - before
        assert grown < GROWTH_MAX_KIB, \
            f"mailfs's peak resident size grew by {grown} KiB"
        assert "longer than 512" in st, st
