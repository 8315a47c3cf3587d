"""Integration tests: mailfs against servers that stall, cut connections,
corrupt or inject bytes, restart, or lie about literal sizes; signals to the
daemon; and a cache directory on a full disk.

The faults come from faultproxy.FaultProxy between mailfs and a real
Dovecot: mailfs mounts the proxy's port (the test certificate is for
127.0.0.1, so TLS verifies as usual).  What the server holds is always
read over a separate imaplib connection, never through the proxy.

Nothing here depends on the speed of the machine: deadlines are generous
(they only say "bounded", not "fast"), and where mailfs works in the
background the tests poll.
"""

import errno
import os
import random
import signal
import ssl
import subprocess
import time

import pytest

from conftest import FUSERMOUNT, Account, is_mounted, read_bytes
from faultproxy import ScriptedImapServer
from helpers import (BLOCK_HEADER, Background, assert_one_line, block_files,
                     block_header, files_in, fill_up, poll_until, proxy_url,
                     read_uncached, seed, sha, sized_message, tmp_files,
                     tmpfs, uid_of)

MiB = 1024 * 1024
BLOCK = MiB
POLL_SECONDS = 180           # for anything mailfs does by itself
BOUND_SECONDS = 60           # "fails within a bounded time"


# ---------------------------------------------------------------- helpers

def make_message(tag, size=0, subject=None):
    """A message whose bytes are determined by tag, about `size` bytes
    long (never less than its header): base64-looking CRLF lines."""
    rng = random.Random(tag)
    date = (f"Tue, 03 Jun 2025 {rng.randrange(8, 18):02d}:"
            f"{rng.randrange(60):02d}:00 +0000")
    return sized_message(rng, tag, size, subject or f"Fault test {tag}",
                         date, "faults.example")


def server_messages(account, folder="INBOX"):
    """{uid: bytes} as the server holds them."""
    return {uid: info["raw"]
            for uid, info in account.fetch(folder).items()}


def wait_for(what, check, timeout=POLL_SECONDS, interval=0.5):
    """Polls check() until it returns something true (OSError counts as
    not yet); returns that."""
    return poll_until(check, what, timeout, interval, tolerate=OSError)


def assert_eio_or_correct(result, want, what):
    """A read either failed with EIO or returned exactly the right bytes:
    never a short or altered file."""
    kind, value = result
    if kind == "error":
        assert value.errno == errno.EIO, f"{what}: {value!r}, expected EIO"
        return False
    if value != want:
        if want.startswith(value):
            raise AssertionError(f"{what}: returned {len(value)} of "
                                 f"{len(want)} bytes without an error "
                                 f"(a truncated file)")
        raise AssertionError(f"{what}: returned {len(value)} bytes that "
                             f"differ from the server's {len(want)}")
    return True


def assert_blocks_whole(cache_dir, sizes):
    """Every cached block holds a whole block of one of the messages: 1 MiB,
    or the tail of a message of one of `sizes` bytes.  A block cut short
    by a failed transfer would have another length."""
    allowed = {BLOCK} | {s % BLOCK for s in sizes if s % BLOCK}
    for p in block_files(cache_dir):
        magic, length = block_header(p)
        assert magic == b"MFSBLK01", p
        assert os.path.getsize(p) == BLOCK_HEADER + length, p
        assert length in allowed, \
            f"{p}: a cached block of {length} bytes, a whole block has " \
            f"one of {sorted(allowed)}"


def proc_status_kib(pid, field):
    """A size from /proc/<pid>/status (VmHWM, VmPeak, ...) in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def end_daemon(m):
    """After the daemon is gone by other means: the fixture must neither
    unmount nor expect status 0 again."""
    m.closed = True
    m.kill()


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs; detached lazily at teardown (a mount may still hold
    files in it then)."""
    with tmpfs(str(tmp_path / "tmpfs"), "2m", "mailfs-test") as path:
        yield path


# ---------------------------------------------------------- a stalled server

def test_stalled_server_fails_uncached_reads_but_serves_the_cache(
        proxies, account, mount):
    cached = make_message("stall-cached", 300000)
    other = make_message("stall-other", 40000)
    big = make_message("stall-big", 3 * MiB)
    seed(account, {"INBOX": [cached, big], "Other": [other]})
    proxy = proxies(account.server.imaps_port)
    # refresh=1: every listing also starts a background refresh, which
    # stalls too and must not hold the listing up.
    m = mount(account, source=proxy_url(account, proxy),
              options=["timeout=3", "refresh=1", "pop3=none"])
    inbox = os.path.join(m.path, "INBOX")
    folder = os.path.join(m.path, "Other")
    inbox_names, other_names = files_in(inbox), files_in(folder)
    assert len(inbox_names) == 2 and len(other_names) == 1
    root_names = sorted(os.listdir(m.path))
    by_size = {os.stat(os.path.join(inbox, n)).st_size: n for n in inbox_names}
    cached_path = os.path.join(inbox, by_size[len(cached)])
    big_path = os.path.join(inbox, by_size[len(big)])
    other_path = os.path.join(folder, other_names[0])
    assert read_bytes(cached_path) == cached
    assert read_bytes(other_path) == other

    proxy.stall()
    sent_before = proxy.client_bytes_stalled
    t0 = time.monotonic()
    reader = Background(lambda: read_uncached(big_path))
    proxy.wait_for("mailfs asked the stalled server for the message",
                   lambda: proxy.client_bytes_stalled > sent_before
                   or not reader.alive())

    def cached_round():
        assert sorted(os.listdir(m.path)) == root_names
        assert files_in(inbox) == inbox_names
        assert files_in(folder) == other_names
        assert read_uncached(cached_path) == cached
        assert read_uncached(other_path) == other

    # The cached folders and messages answer while the read waits.
    rounds_during_stall = 0
    while reader.alive() and time.monotonic() - t0 < BOUND_SECONDS + 30:
        Background(cached_round).join(
            BOUND_SECONDS, "listings and cached reads during the stall")
        if reader.alive():
            rounds_during_stall += 1
        time.sleep(0.05)
    result = reader.join(BOUND_SECONDS,
                         "an uncached read from a stalled server")
    elapsed = reader.ended - reader.started
    assert result[0] == "error", \
        "a read of a message the stalled server never sent succeeded"
    assert result[1].errno == errno.EIO, result[1]
    assert elapsed < BOUND_SECONDS, \
        f"the read failed only after {elapsed:.0f}s with timeout=3"
    assert rounds_during_stall >= 1, \
        "listings and cached reads waited for the stalled read to fail"
    # ... and still answer with the server stalled and the pool failing.
    Background(cached_round).join(
        BOUND_SECONDS, "listings and cached reads after the stalled read")
    assert m.proc.poll() is None

    proxy.resume()
    data = wait_for("the message readable once the server answers again",
                    lambda: read_uncached(big_path))
    assert data == big


def test_slow_trickle_is_bounded_by_the_timeout(proxies, account, mount):
    """A server that sends a few bytes now and then (never a whole TLS
    record within the timeout) makes the read fail, not hang."""
    big = make_message("trickle-big", 2 * MiB)
    seed(account, {"INBOX": [big]})
    proxy = proxies(account.server.imaps_port)
    m = mount(account, source=proxy_url(account, proxy),
              options=["timeout=3", "pop3=none"])
    inbox = os.path.join(m.path, "INBOX")
    [name] = files_in(inbox)
    path = os.path.join(inbox, name)
    proxy.delay(0.5, chunk=16)     # 32 bytes a second
    result = Background(lambda: read_uncached(path)).join(
        BOUND_SECONDS, "a read from a trickling server")
    assert result[0] == "error", "2 MiB arrived at 32 bytes a second?"
    assert result[1].errno == errno.EIO, result[1]
    proxy.clear()
    data = wait_for("the message readable at full speed",
                    lambda: read_uncached(path))
    assert data == big


# ----------------------------------------------------------- cut connections

CUT_CASES = {
    # TLS: the proxy cannot see the literal, but 600 KiB into a 1 MiB
    # block is inside it.
    "tls-first-block": ("imaps", None, 600 * 1024),
    # Plain text: cut 100000 bytes into the literal of a given block.
    "plain-first-block": ("imap", rb"BODY\[\]<0> \{\d+\}\r\n$", 100000),
    "plain-later-block": ("imap", rb"BODY\[\]<[1-9]\d*> \{\d+\}\r\n$",
                          100000),
}


def scheme_options(scheme):
    """The mount options and keywords for TLS (imaps) or plain text
    (imap)."""
    if scheme == "imap":
        return ["timeout=10", "pop3=none", "allow_plaintext"], \
            {"ca_file": False}
    return ["timeout=10", "pop3=none"], {}


def mount_proxied(mount, proxies, account, scheme, **kw):
    """Mounts account through a new fault proxy, over TLS (imaps) or in
    plain text (imap); returns the mount and the proxy."""
    port = account.server.imaps_port if scheme == "imaps" \
        else account.server.imap_port
    proxy = proxies(port)
    opts, extra = scheme_options(scheme)
    m = mount(account, source=proxy_url(account, proxy, scheme),
              options=opts, **extra, **kw)
    return m, proxy


@pytest.mark.parametrize("case", sorted(CUT_CASES))
def test_connection_cut_mid_literal(case, proxies, make_account, mount,
                                    tmp_path):
    scheme, after, nbytes = CUT_CASES[case]
    account = make_account("main" if scheme == "imaps" else "nossl")
    raw = make_message(f"cut-{case}", 5 * MiB + 12345)
    seed(account, {"INBOX": [raw]})
    [want] = server_messages(account).values()
    assert want == raw
    cache = str(tmp_path / "cache-cut")
    m, proxy = mount_proxied(mount, proxies, account, scheme,
                             cache_dir=cache)
    inbox = os.path.join(m.path, "INBOX")
    [name] = files_in(inbox)
    path = os.path.join(inbox, name)
    assert os.stat(path).st_size == len(want)

    proxy.cut_after(nbytes, after=after)
    whole = Background(lambda: read_uncached(path)).join(
        BOUND_SECONDS * 2, "a read over a connection cut mid-literal")
    assert_eio_or_correct(whole, want, "reading the whole file")
    assert proxy.cuts >= 1 or whole[0] == "ok", proxy.cuts
    # One read across the first block boundary.
    edge = Background(lambda: read_uncached(path, BLOCK - 100000, 200000))
    assert_eio_or_correct(edge.join(BOUND_SECONDS * 2, "a read across blocks"),
                          want[BLOCK - 100000:BLOCK + 100000],
                          "reading across the first block boundary")
    assert os.stat(path).st_size == len(want), \
        "the file's size changed after a failed read"

    proxy.clear()
    data = wait_for("the full message once connections are left alone",
                    lambda: read_uncached(path))
    assert data == want, "a reread after the cut returned other bytes"
    assert os.stat(path).st_size == len(want)
    m.unmount()
    assert_blocks_whole(cache, [len(want)])

    # A remount serves the cached blocks: they must be the right ones.
    opts, kw = scheme_options(scheme)
    m = mount(account, source=account.url(scheme=scheme), cache_dir=cache,
              options=opts, **kw)
    assert read_bytes(os.path.join(m.path, "INBOX", name)) == want


def test_flipped_byte_in_tls_stream_is_never_served(proxies, account, mount,
                                                    tmp_path):
    raw = make_message("flip-big", 3 * MiB)
    seed(account, {"INBOX": [raw]})
    proxy = proxies(account.server.imaps_port)
    cache = str(tmp_path / "cache-flip")
    m = mount(account, source=proxy_url(account, proxy), cache_dir=cache,
              options=["timeout=10", "pop3=none"])
    inbox = os.path.join(m.path, "INBOX")
    [name] = files_in(inbox)
    path = os.path.join(inbox, name)
    proxy.flip(200000)
    result = Background(lambda: read_uncached(path)).join(
        BOUND_SECONDS * 2, "a read over a corrupted TLS stream")
    assert_eio_or_correct(result, raw, "reading over a corrupted stream")
    assert proxy.flipped >= 1
    proxy.clear()
    data = wait_for("the message once the stream is clean",
                    lambda: read_uncached(path))
    assert data == raw
    m.unmount()
    assert_blocks_whole(cache, [len(raw)])


# ---------------------------------------------------------------- restarts

@pytest.fixture
def restartable_server(servers):
    """A Dovecot of the test's own whose start() after stop() keeps the
    ports, so that a mount made before the stop can reconnect."""
    with servers.private_dovecot("faults") as server:
        yield server


@pytest.mark.parametrize("what", ["proxy", "dovecot"])
def test_server_restart_while_mounted(what, proxies, restartable_server,
                                      mount, tmp_path):
    """The server goes away (the proxy closes every connection and the
    port, or Dovecot itself is stopped, saying BYE) and comes back: the
    mount reconnects by itself."""
    account = Account(restartable_server, str(tmp_path / "accounts"))
    first = make_message("restart-first", 20000)
    second = make_message("restart-second", 1 * MiB + 5000)
    seed(account, {"INBOX": [first, second]})
    proxy = proxies(restartable_server.imaps_port)
    m = mount(account, source=proxy_url(account, proxy),
              options=["timeout=5", "refresh=1", "pop3=none"])
    inbox = os.path.join(m.path, "INBOX")
    names = files_in(inbox)
    by_size = {os.stat(os.path.join(inbox, n)).st_size: n for n in names}
    first_path = os.path.join(inbox, by_size[len(first)])
    second_path = os.path.join(inbox, by_size[len(second)])
    assert read_bytes(first_path) == first

    if what == "proxy":
        proxy.down()       # every connection closed, the port refuses
    else:
        restartable_server.stop()
        proxy.wait_for("the connections closed after Dovecot stopped",
                       lambda: proxy.open_connections() == 0)
    assert proxy.open_connections() == 0
    result = Background(lambda: read_uncached(second_path)).join(
        BOUND_SECONDS, "a read while the server is down")
    assert result[0] == "error" and result[1].errno == errno.EIO, result
    # What is cached stays readable.
    assert read_uncached(first_path) == first
    assert files_in(inbox) == names
    connections = proxy.connections

    if what == "proxy":
        proxy.up()
    else:
        restartable_server.start()
    data = wait_for("the uncached message readable after the restart",
                    lambda: read_uncached(second_path))
    assert data == second
    assert proxy.connections > connections, "no new connection was made"

    # Listings and changes go through again as well.
    third = make_message("restart-third", 30000)
    seed(account, {"INBOX": [third]})
    wait_for("new mail listed after the restart",
             lambda: len(files_in(inbox)) == 3)
    new = [n for n in files_in(inbox) if n not in names]
    assert read_bytes(os.path.join(inbox, new[0])) == third

    def mkdir():
        try:
            os.mkdir(os.path.join(m.path, "AfterRestart"))
        except FileExistsError:
            pass   # an earlier attempt got through after all
        return True

    wait_for("mkdir after the restart", mkdir)
    with account.client() as c:
        assert "AfterRestart" in {n for n, _, _ in c.list()}
    m.unmount()


# ---------------------------------------------------------------- STARTTLS

@pytest.mark.parametrize("separate", [False, True],
                         ids=["same-segment", "later-segment"])
def test_starttls_response_injection_refused(separate, proxies, account,
                                             mount_fails):
    proxy = proxies(account.server.imap_port)
    # The tagged OK to STARTTLS; not the greeting, which is untagged.
    proxy.inject_after(rb"^[A-Za-z0-9.]+ OK [^\r\n]*TLS", b"* OK injected\r\n",
                       separate=separate)
    rc, err = mount_fails(account, source=proxy_url(account, proxy, "imap"),
                          options=["timeout=10", "pop3=none"])
    assert proxy.injected >= 1, "the STARTTLS answer was never seen"
    if separate:
        # Read as the start of the server's TLS handshake.
        assert_one_line(err, "tls")
    else:
        assert_one_line(err, "inject", "before the tls handshake")
    assert account.password not in err


@pytest.mark.parametrize("greeting", [
    b"* PREAUTH hi\r\n",
    b"* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] hi\r\n",
])
def test_preauth_when_starttls_required_refused(greeting, account,
                                                mount_fails):
    server = ScriptedImapServer(greeting)
    try:
        rc, err = mount_fails(
            account, source=f"imap://{account.user}@127.0.0.1:{server.port}",
            options=["timeout=10", "pop3=none"])
    finally:
        server.close()
    assert_one_line(err, "preauth")
    sent = b"\n".join(server.lines).upper()
    assert b"LOGIN" not in sent and b"AUTHENTICATE" not in sent, sent


# ----------------------------------------------------------- absurd literals

ABSURD_CASES = {
    # The announced size, and what follows it before the connection
    # closes: 200000 of the real bytes, or that much filler.
    "4000000000": (b"4000000000", None),
    "4294967295": (b"4294967295", None),
    "99999999999": (b"99999999999", None),
    "4000000000-flood": (b"4000000000", 640 * MiB),
}


@pytest.mark.parametrize("case", list(ABSURD_CASES))
def test_absurd_literal_size(case, proxies, make_account, mount):
    size, flood = ABSURD_CASES[case]
    account = make_account("nossl")
    raw = make_message("absurd-literal", 2 * MiB)
    seed(account, {"INBOX": [raw]})
    proxy = proxies(account.server.imap_port)
    m = mount(account, source=proxy_url(account, proxy, "imap"),
              ca_file=False,
              options=["allow_plaintext", "timeout=10", "pop3=none"])
    inbox = os.path.join(m.path, "INBOX")
    [name] = files_in(inbox)
    path = os.path.join(inbox, name)
    pid = m.proc.pid
    assert read_uncached(path, 0, 4096) == raw[:4096]
    peak_before = proc_status_kib(pid, "VmPeak")

    # The answer to a content FETCH (mailfs asks for at most a block)
    # announces `size` bytes, sends some and closes the connection.
    proxy.rewrite(rb"(BODY\[\]<\d+> )\{\d+\}(\r\n)$",
                  rb"\1{" + size + rb"}\2",
                  cut_after=None if flood else 200000, flood=flood)
    result = Background(lambda: read_uncached(path, BLOCK, 4096)).join(
        BOUND_SECONDS * 2, "a read of a literal of absurd size")
    assert proxy.rewritten >= 1, "the FETCH answer was never seen"
    assert result[0] == "error", "a read of a lying literal succeeded"
    assert result[1].errno == errno.EIO, result[1]
    assert m.proc.poll() is None, "mailfs died"
    hwm = proc_status_kib(pid, "VmHWM")
    assert hwm < 500 * 1024, f"mailfs's peak resident size was {hwm} KiB"
    grown = proc_status_kib(pid, "VmPeak") - peak_before
    assert grown < 1024 * 1024, \
        f"mailfs's address space grew by {grown} KiB for a literal that " \
        f"announced {size.decode()} bytes in answer to a request for " \
        f"{BLOCK}"

    proxy.clear()
    data = wait_for("the message once the server is honest",
                    lambda: read_uncached(path))
    assert data == raw
    assert proc_status_kib(pid, "VmHWM") < 500 * 1024


# ---------------------------------------------------------------- signals

def test_sigterm_during_cp_r(proxies, account, mount, tmp_path):
    raws = [make_message(f"term-{i}", 1 * MiB + 300000) for i in range(8)]
    seed(account, {"INBOX": raws})
    server = {sha(r): r for r in server_messages(account).values()}
    proxy = proxies(account.server.imaps_port)
    m = mount(account, source=proxy_url(account, proxy),
              options=["timeout=10", "pop3=none"])
    inbox = os.path.join(m.path, "INBOX")
    assert len(files_in(inbox)) == len(raws)
    proxy.delay(0.02, chunk=16384)       # about 800 KB/s: cp takes a while
    dest = str(tmp_path / "copy")
    base = proxy.server_bytes
    cp = subprocess.Popen(["cp", "-r", m.path, dest], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        proxy.wait_for("cp is reading", lambda: proxy.server_bytes > base
                       + 512 * 1024 or cp.poll() is not None,
                       timeout=POLL_SECONDS)
        os.kill(m.proc.pid, signal.SIGTERM)
        out, _ = cp.communicate(timeout=POLL_SECONDS)
    finally:
        if cp.poll() is None:
            cp.kill()
            cp.wait()
    wait_for("the mount gone after SIGTERM", lambda: not is_mounted(m.path),
             interval=0.2)
    try:
        rc = m.proc.wait(timeout=POLL_SECONDS)
    except subprocess.TimeoutExpired:
        raise AssertionError("mailfs did not exit after SIGTERM")
    end_daemon(m)
    assert rc == 0, f"mailfs exited with {rc} after SIGTERM:\n{m.stderr()}"

    copied = []
    for dirpath, _, names in os.walk(dest):
        copied += [os.path.join(dirpath, n) for n in names]
    for p in copied:
        data = read_bytes(p)
        if sha(data) in server:
            continue
        assert cp.returncode != 0, \
            f"cp exited 0 but {p} holds {len(data)} bytes that are no message"
        assert any(r.startswith(data) for r in server.values()), \
            f"{p}: bytes that are not the server's"
    if cp.returncode == 0:
        assert len(copied) == len(raws), (copied, out)


def test_sigkill_then_remount_on_same_cache(proxies, account, mount, tmp_path):
    raws = [make_message("kill-big", 4 * MiB + 1000),
            make_message("kill-small", 60000)]
    seed(account, {"INBOX": raws})
    server = server_messages(account)
    proxy = proxies(account.server.imaps_port)
    cache = str(tmp_path / "cache-kill")
    m = mount(account, source=proxy_url(account, proxy), cache_dir=cache,
              options=["timeout=10", "pop3=none"])
    inbox = os.path.join(m.path, "INBOX")
    names = files_in(inbox)
    uids = {n: uid_of(os.path.join(inbox, n)) for n in names}
    small = [n for n in names if len(server[uids[n]]) < MiB][0]
    big = [n for n in names if n != small][0]
    assert read_bytes(os.path.join(inbox, small)) == server[uids[small]]

    proxy.delay(0.02, chunk=16384)
    base = proxy.server_bytes
    reader = Background(lambda: read_uncached(os.path.join(inbox, big)))
    proxy.wait_for("the big read under way",
                   lambda: proxy.server_bytes > base + 1536 * 1024
                   or not reader.alive(), timeout=POLL_SECONDS)
    os.kill(m.proc.pid, signal.SIGKILL)
    m.proc.wait(timeout=60)
    r = subprocess.run([FUSERMOUNT, "-uz", m.path], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert r.returncode == 0, r.stdout
    reader.join(POLL_SECONDS, "a read on the mount of a killed daemon")
    end_daemon(m)
    assert not is_mounted(m.path)
    proxy.clear()

    m = mount(account, source=proxy_url(account, proxy), cache_dir=cache,
              mountpoint=m.path, options=["timeout=10", "pop3=none"])
    inbox = os.path.join(m.path, "INBOX")
    assert files_in(inbox) == names
    for n in names:
        assert read_uncached(os.path.join(inbox, n)) == server[uids[n]], n
    m.unmount()
    assert_blocks_whole(cache, [len(r) for r in server.values()])


# ---------------------------------------------------------------- a full disk

def test_full_cache_disk_still_reads(account, mount, small_tmpfs):
    raws = [make_message("full-3", 3 * MiB + 500),
            make_message("full-5", 5 * MiB + 700),
            make_message("full-9", 9 * MiB + 900)]
    seed(account, {"INBOX": raws})
    server = server_messages(account)
    m = mount(account, cache_dir=small_tmpfs,
              options=["refresh=1", "pop3=none"])
    inbox = os.path.join(m.path, "INBOX")
    names = files_in(inbox)
    uids = {n: uid_of(os.path.join(inbox, n)) for n in names}
    for _ in range(2):
        for n in names:
            assert read_uncached(os.path.join(inbox, n)) == server[uids[n]], n

    # Now not a byte is left.
    filler = fill_up(small_tmpfs)
    for n in names:
        assert read_uncached(os.path.join(inbox, n)) == server[uids[n]], n
    late = make_message("full-late", 2 * MiB + 300)
    seed(account, {"INBOX": [late]})
    wait_for("new mail listed with the cache disk full",
             lambda: len(files_in(inbox)) == len(names) + 1)
    [new] = [n for n in files_in(inbox) if n not in names]
    assert read_uncached(os.path.join(inbox, new)) == late
    assert tmp_files(small_tmpfs) == [], "temporary files left on a full disk"
    os.unlink(filler)
    m.unmount()
    assert_blocks_whole(small_tmpfs, [len(r) for r in raws] + [len(late)])


# ---------------------------------------------------------------- copying out

COPY_FAULTS = {
    # Every connection closed after that many bytes from the server.
    "cut300k": ("imaps", None, 300 * 1024),
    "cut1536k": ("imaps", None, 1536 * 1024),
    # Plain text: every answer with a block after the first is cut 100000
    # bytes into its literal; first blocks come through.
    "later-blocks": ("imap", rb"BODY\[\]<[1-9]\d*> \{\d+\}\r\n$", 100000),
}


@pytest.mark.parametrize("tool", ["cp", "rsync"])
@pytest.mark.parametrize("fault", sorted(COPY_FAULTS))
def test_copy_out_through_cutting_proxy(tool, fault, proxies, make_account,
                                        mount, tmp_path):
    scheme, after, nbytes = COPY_FAULTS[fault]
    account = make_account("main" if scheme == "imaps" else "nossl")
    msgs = {
        "INBOX": [make_message("copy-tiny", 3000),
                  make_message("copy-small", 150000),
                  make_message("copy-mid", 900000),
                  make_message("copy-1m", 1 * MiB + 200000),
                  make_message("copy-3m", 3 * MiB + 70000)],
        "Archive": [make_message("copy-arch-small", 20000),
                    make_message("copy-arch-2m", 2 * MiB + 4000),
                    make_message("copy-arch-5m", 5 * MiB + 12345)],
    }
    seed(account, msgs)
    server = {f: server_messages(account, f) for f in msgs}
    m, proxy = mount_proxied(mount, proxies, account, scheme)
    want = {}
    for folder in msgs:
        d = os.path.join(m.path, folder)
        for n in files_in(d):
            want[os.path.join(folder, n)] = server[folder][uid_of(
                os.path.join(d, n))]
    assert len(want) == sum(len(v) for v in msgs.values())

    proxy.cut_after(nbytes, after=after)
    dest = str(tmp_path / f"copy-{tool}")
    os.makedirs(dest)
    argv = ["cp", "-a", m.path + "/.", dest] if tool == "cp" else \
        ["rsync", "-a", m.path + "/", dest + "/"]
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=POLL_SECONDS * 3)
    report = r.stdout.decode(errors="replace")
    copied = {}
    for dirpath, _, names in os.walk(dest):
        for n in names:
            p = os.path.join(dirpath, n)
            copied[os.path.relpath(p, dest)] = read_bytes(p)
    for rel, data in copied.items():
        assert rel in want, f"{tool} made {rel}, which is no message"
        if data == want[rel]:
            continue
        what = f"{len(data)} of {len(want[rel])} bytes" + \
            (" (truncated)" if want[rel].startswith(data) else
             ", not the server's")
        assert r.returncode != 0, f"{tool} exited 0 but {rel} has {what}"
        assert os.path.basename(rel) in report, \
            f"{rel} has {what}, and {tool} reported no error for it:\n" \
            f"{report[-3000:]}"
        assert want[rel].startswith(data), \
            f"{rel}: bytes that are not the server's"
    if r.returncode == 0:
        assert sorted(copied) == sorted(want), report[-3000:]
    else:
        assert proxy.cuts > 0, f"{tool} failed without a fault:\n{report}"
    # The mount still tells the right sizes.
    for rel, data in want.items():
        assert os.stat(os.path.join(m.path, rel)).st_size == len(data), rel


# ---------------------------------- response codes libetpan mishandles

# libetpan 1.9.4 parses a greeting's response code without a parser
# context: PERMANENTFLAGS or BADCHARSET with a list there crash it.  Before
# STARTTLS anyone on the path can send such a greeting; mailfs must refuse
# it with one clear line, never crash.
GREETING_CODES = {
    "permanentflags": (b"PERMANENTFLAGS", rb"[PERMANENTFLAGS (\Seen)]"),
    "badcharset": (b"BADCHARSET", rb"[BADCHARSET (x)]"),
}


def assert_refused_cleanly(rc, err, account, *words):
    assert rc > 0, f"mailfs died of signal {-rc}:\n{err}"
    line = assert_one_line(err, *words)
    assert account.password not in err
    return line


@pytest.mark.parametrize("code", sorted(GREETING_CODES))
def test_starttls_greeting_with_bad_response_code_refused(code, proxies,
                                                          account,
                                                          mount_fails):
    name, text = GREETING_CODES[code]
    proxy = proxies(account.server.imap_port)
    # Dovecot's greeting, "* OK [CAPABILITY ...] ...", with a code in front
    # (a replacement template: backslashes doubled).
    proxy.rewrite(rb"^\* OK ",
                  b"* OK " + text.replace(b"\\", b"\\\\") + b" ")
    rc, err = mount_fails(account, source=proxy_url(account, proxy, "imap"),
                          options=["timeout=10", "pop3=none"])
    assert proxy.rewritten >= 1, "the greeting was never seen"
    line = assert_refused_cleanly(rc, err, account, "greeting")
    assert name.decode() in line, line


@pytest.mark.parametrize("code", sorted(GREETING_CODES))
def test_imaps_greeting_with_bad_response_code_refused(code, servers,
                                                       account, mount_fails):
    """Inside TLS only the server itself can send it; still no crash."""
    name, text = GREETING_CODES[code]
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(servers.cert, servers.key)
    server = ScriptedImapServer(b"* OK " + text + b" hi\r\n", tls=tls)
    try:
        rc, err = mount_fails(
            account, source=f"imaps://{account.user}@127.0.0.1:{server.port}",
            options=["timeout=10", "pop3=none"])
    finally:
        server.close()
    assert server.connections >= 1
    line = assert_refused_cleanly(rc, err, account, "greeting")
    assert name.decode() in line, line
    sent = b"\n".join(server.lines).upper()
    assert b"LOGIN" not in sent and b"AUTHENTICATE" not in sent, sent


def test_starttls_injected_response_codes_refused(proxies, account,
                                                  mount_fails):
    """Two BADCHARSET codes in one answer make libetpan free a list twice;
    injected after the greeting they would be read with the answer to
    STARTTLS, before TLS."""
    proxy = proxies(account.server.imap_port)
    proxy.inject_after(rb"^\* OK ", b"* OK [BADCHARSET (a)] one\r\n"
                       b"* OK [BADCHARSET (b)] two\r\n")
    rc, err = mount_fails(account, source=proxy_url(account, proxy, "imap"),
                          options=["timeout=10", "pop3=none"])
    assert proxy.injected >= 1
    line = assert_refused_cleanly(rc, err, account, "badcharset")
    # Refused with the greeting they arrived with, or at STARTTLS.
    assert "starttls" in line.lower() or "greeting" in line.lower(), line


# The same codes hidden the ways libetpan (built with UNSTRICT_SYNTAX)
# still reads them: runs of SP and TAB wherever one SP goes, blanks after
# "[", keywords in any case.  Before TLS anyone on the path can send them.
HIDDEN_CODES = {
    "tab-before-code": b"* OK\t[BADCHARSET (A)] one\r\n"
                       b"* OK\t[BADCHARSET (B)] two\r\n",
    "tab-after-star": b"*\tOK [BADCHARSET (A)] one\r\n"
                      b"*\tOK [BADCHARSET (B)] two\r\n",
    "two-spaces": b"*  OK [BADCHARSET (A)] one\r\n"
                  b"*  OK [BADCHARSET (B)] two\r\n",
    "blank-after-bracket": b"* OK [ BADCHARSET (A)] one\r\n"
                           b"* OK [ BADCHARSET (B)] two\r\n",
    "permanentflags-tab": b"* OK\t[PERMANENTFLAGS (%] x\r\n",
    "permanentflags-lower": b"* ok [ permanentflags (%] x\r\n",
}


@pytest.mark.parametrize("case", sorted(HIDDEN_CODES))
def test_hidden_response_codes_before_tls_refused(case, account,
                                                  mount_fails):
    def answer(line):
        tag = line.split(b" ", 1)[0]
        if line[len(tag):].strip().upper() == b"CAPABILITY":
            return (HIDDEN_CODES[case] +
                    b"* CAPABILITY IMAP4rev1 STARTTLS\r\n" +
                    tag + b" OK done\r\n")
        return tag + b" BAD no\r\n"

    server = ScriptedImapServer(b"* OK fake ready\r\n", answer)
    try:
        rc, err = mount_fails(
            account, source=f"imap://{account.user}@127.0.0.1:{server.port}",
            options=["timeout=10", "pop3=none"])
    finally:
        server.close()
    assert_refused_cleanly(rc, err, account, "badcharset",
                           "permanentflags")
    sent = b"\n".join(server.lines).upper()
    assert b"LOGIN" not in sent and b"AUTHENTICATE" not in sent, sent


def test_permanentflags_after_select_still_works(account, mount):
    """The same codes in their proper place (Dovecot answers SELECT and
    EXAMINE with PERMANENTFLAGS) are parsed as before."""
    raw = make_message("permflags", 5000)
    seed(account, {"INBOX": [raw]})
    m = mount(account, args=["-d"], options=["pop3=none"])
    inbox = os.path.join(m.path, "INBOX")
    [name] = files_in(inbox)
    path = os.path.join(inbox, name)
    assert read_bytes(path) == raw
    os.setxattr(path, "user.mail.flags", b"\\Flagged $Checked")
    [flags] = account.flags().values()
    assert flags == {"\\Flagged", "$Checked"}, flags
    assert "[PERMANENTFLAGS (" in m.stderr(), \
        "Dovecot's SELECT answer carried no PERMANENTFLAGS"
    m.unmount()


# ------------------------------------ continuation requests (APPEND, IDLE)

# libetpan 1.9.4 parses the "+" line that answers APPEND or IDLE without a
# parser context, like a greeting, and crashes on a response code with a
# list in it.  mailfs reads that line itself and refuses it; given
# LITERAL+ (Dovecot offers it) it sends the message without waiting for
# one at all.  Dovecot's go-ahead is "+ OK" for APPEND, "+ idling" for IDLE.
BAD_CODE = b"[BADCHARSET (x)] "


def spoil_continuations(proxy, go_ahead, strip_literal_plus):
    """Puts BAD_CODE in front of the text of every continuation request
    matching go_ahead (a regex for the text after "+ "); with
    strip_literal_plus, drops LITERAL+ and LITERAL- from every capability
    list too.  Returns counters {"go_ahead": n, "caps": n}, updated as the
    proxy rewrites."""
    seen = {"go_ahead": 0, "caps": 0}

    def repl(match):
        if match.group("lit") is None:
            seen["go_ahead"] += 1
            return b"+ " + BAD_CODE
        if not strip_literal_plus:
            return match.group(0)
        seen["caps"] += 1
        return b""

    proxy.rewrite(rb"(?P<lit> LITERAL[+-](?=[ \]\r]))|^\+ (?=" + go_ahead +
                  rb")", repl, every=True)
    return seen


def mount_through(mount, account, proxy, args=()):
    return mount(account, source=proxy_url(account, proxy, "imap"),
                 ca_file=False, args=list(args),
                 options=["allow_plaintext", "timeout=10", "pop3=none"])


def log_lines_with(m, *words):
    return [line for line in m.stderr().splitlines()
            if all(w in line for w in words)]


def test_copy_in_with_bad_go_ahead_is_refused(proxies, make_account, mount):
    """Without LITERAL+ mailfs waits for the "+": one that carries a
    response code libetpan mishandles fails that APPEND (logged, retried),
    never mailfs."""
    account = make_account("nossl")
    proxy = proxies(account.server.imap_port)
    seen = spoil_continuations(proxy, rb"OK\r\n$", strip_literal_plus=True)
    m = mount_through(mount, account, proxy)
    assert seen["caps"] >= 1, "the server offered no LITERAL+ to take away"
    inbox = os.path.join(m.path, "INBOX")
    raw = make_message("bad-go-ahead", 5000)
    with open(os.path.join(inbox, "incoming.eml"), "wb") as f:
        f.write(raw)

    wait_for("the refused APPEND in the log",
             lambda: log_lines_with(m, "APPEND", "BADCHARSET"))
    assert m.proc.poll() is None, "mailfs died"
    assert seen["go_ahead"] >= 1
    assert account.password not in m.stderr()
    assert account.fetch("INBOX") == {}
    assert "incoming.eml" in os.listdir(inbox)

    # The copy-in is kept and goes in once the server behaves.
    proxy.clear()
    wait_for("the message on the server",
             lambda: list(server_messages(account).values()) == [raw])
    assert m.proc.poll() is None, "mailfs died"
    m.unmount()


def test_copy_in_with_literal_plus_reads_no_go_ahead(proxies, make_account,
                                                     mount):
    """With LITERAL+ the message goes with the command ("{n+}"): a "+"
    the server might send is never waited for."""
    account = make_account("nossl")
    proxy = proxies(account.server.imap_port)
    seen = spoil_continuations(proxy, rb"OK\r\n$", strip_literal_plus=False)
    m = mount_through(mount, account, proxy, args=["-d"])
    inbox = os.path.join(m.path, "INBOX")
    raw = make_message("literal-plus", 5000)
    with open(os.path.join(inbox, "incoming.eml"), "wb") as f:
        f.write(raw)
    wait_for("the message on the server",
             lambda: list(server_messages(account).values()) == [raw])
    assert log_lines_with(m, "APPEND INBOX", f"{{{len(raw)}+}}"), \
        "the APPEND did not use a non-synchronizing literal"
    assert seen["go_ahead"] == 0
    assert not log_lines_with(m, "BADCHARSET", "refused")
    assert m.proc.poll() is None, "mailfs died"
    m.unmount()


def test_idle_with_bad_go_ahead_is_refused(proxies, make_account, mount):
    """The watcher's IDLE: refused the same way (the session is dropped,
    no DONE), retried only after a pause; the mount goes on working."""
    account = make_account("nossl")
    seed(account, {"INBOX": [make_message("idle-go-ahead", 2000)]})
    proxy = proxies(account.server.imap_port)
    seen = spoil_continuations(proxy, rb"idling", strip_literal_plus=False)
    m = mount_through(mount, account, proxy, args=["-d"])
    wait_for("the watcher's IDLE", lambda: seen["go_ahead"] >= 1)
    assert len(files_in(os.path.join(m.path, "INBOX"))) == 1
    time.sleep(2)
    assert m.proc.poll() is None, "mailfs died"
    assert seen["go_ahead"] == 1, "IDLE was retried at once"
    # The watcher logs why once its pause (30 s) is over.
    wait_for("the bad go-ahead in the log",
             lambda: log_lines_with(m, "IDLE", "BADCHARSET"))
    assert not log_lines_with(m, "C: DONE")
    m.unmount()


# ------------------------------ what libetpan mishandles after login

AFTER_LOGIN = {
    "badcharset-twice": b"* OK [BADCHARSET (a)] one\r\n"
                        b"* OK [BADCHARSET (b)] two\r\n",
    "permanentflags-open": b"* OK [PERMANENTFLAGS (%\r\n",
    "literal-4gib": b"* LIST () \"/\" {4294967295}\r\n",
}


@pytest.mark.parametrize("case", sorted(AFTER_LOGIN))
def test_hostile_answers_after_login_are_refused(case, proxies, make_account,
                                                 mount):
    """After login libetpan parses everything itself: two BADCHARSET codes
    make it free a list twice, an unclosed PERMANENTFLAGS list crashes it,
    and it allocates what a literal announces.  The stream guard refuses
    such answers first: the folder's listing fails, mailfs lives on, and
    the next attempt on a new connection works."""
    account = make_account("nossl")
    raw = make_message(f"after-login-{case}", 3000)
    seed(account, {"INBOX": [raw]})
    proxy = proxies(account.server.imap_port)
    m = mount_through(mount, account, proxy, args=["-d"])
    proxy.inject_after(rb"^\* OK \[UIDVALIDITY ", AFTER_LOGIN[case])
    inbox = os.path.join(m.path, "INBOX")
    with pytest.raises(OSError):
        os.listdir(inbox)
    assert proxy.injected >= 1
    assert m.proc.poll() is None, "mailfs died"
    assert log_lines_with(m, "refused answer")
    proxy.clear()
    [name] = os.listdir(inbox)
    assert read_bytes(os.path.join(inbox, name)) == raw
