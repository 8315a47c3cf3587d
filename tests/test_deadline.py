"""Integration tests: the exchange deadline (proto/net_stream.h).

A server that trickles its answer a byte at a time never lets a single
wait reach the timeout, yet must not hold a command open for ever: each
command exchange may take at most 4 x timeout, plus a second per 4 KiB
moved.  The faults come from faultproxy.FaultProxy in front of a plain-text
Dovecot (with TLS a trickled record is already cut by the per-wait
timeout).

As in test_faults.py nothing depends on the speed of the machine: the
tests only check that a read fails instead of hanging, with a guard many
times the deadline, and that the rest of the mount answers meanwhile.
"""

import errno
import os
import time

import pytest

from helpers import Background, files_in, proxy_url, read_uncached, seed
from test_faults import make_message, wait_for

MiB = 1024 * 1024
TIMEOUT = 2                  # -o timeout=: the exchange deadline is 8 s
GUARD_SECONDS = 90           # "fails rather than hangs"; the trickled
                             # read would take days to complete


@pytest.mark.parametrize("scheme", ["imap", "pop3"])
def test_trickling_server_fails_uncached_read(scheme, proxies, make_account,
                                              mount):
    account = make_account("nossl")
    cached = make_message(f"trickle-{scheme}-cached", 100000)
    big = make_message(f"trickle-{scheme}-big", 2 * MiB)
    seed(account, {"INBOX": [cached, big]})
    port = account.server.imap_port if scheme == "imap" \
        else account.server.pop3_port
    proxy = proxies(port)
    options = ["allow_plaintext" if scheme == "imap" else
               "pop3_allow_plaintext", f"timeout={TIMEOUT}"]
    if scheme == "imap":
        options.append("pop3=none")
    m = mount(account, source=proxy_url(account, proxy, scheme),
              ca_file=False, args=["-d"], options=options)
    inbox = os.path.join(m.path, "INBOX")
    names = files_in(inbox)
    assert len(names) == 2
    by_size = {os.stat(os.path.join(inbox, n)).st_size: n for n in names}
    cached_path = os.path.join(inbox, by_size[len(cached)])
    big_path = os.path.join(inbox, by_size[len(big)])
    assert read_uncached(cached_path) == cached

    # Ten bytes a second: every wait ends well within the timeout.
    proxy.trickle(0.1)
    reader = Background(lambda: read_uncached(big_path, 0, 4096))

    def cached_round():
        assert files_in(inbox) == names
        assert read_uncached(cached_path) == cached

    rounds = 0
    while reader.alive() and time.monotonic() - reader.started < \
            GUARD_SECONDS:
        Background(cached_round).join(
            GUARD_SECONDS, "a listing and a cached read during the trickle")
        rounds += 1
        time.sleep(0.2)
    result = reader.join(GUARD_SECONDS, "an uncached read from a server "
                         "that trickles its answer")
    assert result[0] == "error", \
        "a read of a 2 MiB message at ten bytes a second succeeded"
    assert result[1].errno in (errno.EIO, errno.ETIMEDOUT), result[1]
    assert rounds >= 1, "the mount did not answer during the trickle"
    assert m.proc.poll() is None, "mailfs died"
    assert "too slow" in m.stderr(), \
        "the read failed, but not on the exchange deadline"

    # The trickled connection was dropped: at full speed the message
    # reads again, over a fresh one.
    proxy.clear()
    data = wait_for("the message readable once the server is fast again",
                    lambda: read_uncached(big_path))
    assert data == big
