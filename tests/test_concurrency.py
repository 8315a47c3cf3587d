"""Integration tests: changes through the mount while a folder's listing is
being refreshed in the background, and server answers that list one
message twice.

A refresh is held at a known point with the fault proxy's gate: the
command it sent waits in the proxy, not yet seen by the server, while the
test changes the folder through the mount.  Then the gate opens and the
refresh completes on a listing that predates those changes.
"""

import errno
import os
import threading
from collections import Counter

from helpers import files_in, poll_until, proxy_url, seed
from test_faults import make_message

DEADLINE = 60


def flags_of(path):
    return set(os.getxattr(path, "user.mail.flags").decode().split())


def mount_plain(make_account, proxies, mount, messages, options=()):
    """A mount of a fresh account seeded with messages ({folder: [raw]})
    through a fault proxy, with a refresh period of one second."""
    account = make_account("nossl")
    seed(account, messages)
    proxy = proxies(account.server.imap_port)
    m = mount(account, source=proxy_url(account, proxy, "imap"),
              ca_file=False,
              options=["allow_plaintext", "pop3=none", "refresh=1",
                       *options])
    return account, proxy, m


def start_held_refresh(proxy, folder_path, pattern):
    """Lists folder_path until a background refresh sends a command
    matching pattern, which the proxy then holds."""
    proxy.gate(pattern)
    poll_until(lambda: (os.listdir(folder_path), proxy.gated)[1] > 0,
               "a background refresh reaching the server", DEADLINE)


def names_by_uid(account, folder_path, folder="INBOX"):
    """{uid: file name} of the folder as listed through the mount; the
    file's Message-ID tells its UID on the server."""
    on_server = {info["raw"]: uid
                 for uid, info in account.fetch(folder).items()}
    out = {}
    for name in files_in(folder_path):
        with open(os.path.join(folder_path, name), "rb") as f:
            out[on_server.get(f.read(), None)] = name
    return out


def assert_listed_once(folder_path):
    names = os.listdir(folder_path)
    twice = [n for n, c in Counter(names).items() if c > 1]
    assert not twice, f"listed more than once: {twice}"
    return set(names)


def test_rm_and_mv_while_refresh_waits_on_server(make_account, proxies,
                                                  mount):
    msgs = [make_message(f"held-{i}", 2000) for i in range(5)]
    account, proxy, m = mount_plain(make_account, proxies, mount,
                                    {"INBOX": msgs, "Archive": []})
    inbox = os.path.join(m.path, "INBOX")
    archive = os.path.join(m.path, "Archive")
    by_uid = names_by_uid(account, inbox)
    assert len(by_uid) == 5 and None not in by_uid
    uids = sorted(by_uid)
    os.listdir(archive)

    # Another client flags a message: the next resync asks for the flags
    # of the known messages, and that command is held.
    with account.client() as c:
        c.store("INBOX", uids[2], ["\\Flagged"])
    start_held_refresh(proxy, inbox, rb"UID FETCH [0-9:]+ \(UID FLAGS\)")

    # The first and the last message in UID order go while it waits.
    os.unlink(os.path.join(inbox, by_uid[uids[0]]))
    os.rename(os.path.join(inbox, by_uid[uids[4]]),
              os.path.join(archive, by_uid[uids[4]]))
    proxy.open_gate()

    flagged = os.path.join(inbox, by_uid[uids[2]])
    poll_until(lambda: "\\Flagged" in flags_of(flagged),
               "the held refresh completing", DEADLINE)
    want = {by_uid[u] for u in uids[1:4]}
    assert assert_listed_once(inbox) == want
    # The next refresh agrees, and every file reads back.
    with account.client() as c:
        c.store("INBOX", uids[3], ["\\Flagged"])
    poll_until(lambda: (os.listdir(inbox), "\\Flagged" in flags_of(
        os.path.join(inbox, by_uid[uids[3]])))[1],
        "the next refresh", DEADLINE)
    assert assert_listed_once(inbox) == want
    for name in want:
        with open(os.path.join(inbox, name), "rb") as f:
            assert f.read()
    assert set(account.fetch("INBOX", body=False)) == set(uids[1:4])
    assert len(account.fetch("Archive", body=False)) == 1
    assert set(files_in(archive)) == {by_uid[uids[4]]}
    assert m.proc.poll() is None, "mailfs died"


def test_server_listing_one_uid_twice(make_account, proxies, mount):
    """A server that answers the listing with one UID twice: the message
    is listed once, the repeat logged as the server's error, and later
    refreshes (the UID expunged by another client) leave mailfs intact."""
    msgs = [make_message(f"twice-{i}", 1500) for i in range(3)]
    account = make_account("nossl")
    seed(account, {"INBOX": msgs})
    uids = sorted(account.fetch("INBOX", body=False))
    proxy = proxies(account.server.imap_port)
    # The second message of the answer claims the first one's UID.
    proxy.rewrite(rb"^(\* 2 FETCH \(UID )%d " % uids[1],
                  rb"\g<1>%d " % uids[0])
    m = mount(account, source=proxy_url(account, proxy, "imap"),
              ca_file=False,
              options=["allow_plaintext", "pop3=none", "refresh=1"])
    inbox = os.path.join(m.path, "INBOX")
    # A lookup loads the listing without readdir references to its names.
    assert not os.path.exists(os.path.join(inbox, "nonexistent"))
    assert proxy.rewritten == 1
    listed = assert_listed_once(inbox)
    assert len(listed) == 2
    poll_until(lambda: "lists UID" in m.stderr(),
               "the repeat logged", DEADLINE)
    proxy.clear()

    # The doubled UID goes.  The answer was contradictory, so the next
    # refresh lists in full: the message it hid shows up too.
    with account.client() as c:
        c.expunge_uid("INBOX", uids[0])

    def contents():
        out = []
        for name in assert_listed_once(inbox):
            with open(os.path.join(inbox, name), "rb") as f:
                out.append(f.read())
        return sorted(out)

    poll_until(lambda: contents() == sorted(msgs[1:]),
               "the server's messages listed through the mount", DEADLINE,
               tolerate=OSError)
    assert m.proc.poll() is None, "mailfs died"


def test_mv_of_copied_in_file_while_its_append_waits(make_account, proxies,
                                                     mount):
    """A file copied in is moved to another folder while its APPEND is
    held on the way to the server: the move either lands the message in
    the new folder or fails, never reports success with the message left
    in the old one."""
    account, proxy, m = mount_plain(make_account, proxies, mount,
                                    {"INBOX": [], "Archive": []})
    inbox = os.path.join(m.path, "INBOX")
    archive = os.path.join(m.path, "Archive")
    os.listdir(archive)
    proxy.gate(rb"APPEND INBOX")
    with open(os.path.join(inbox, "new.eml"), "wb") as f:
        f.write(make_message("moved-while-appended", 1500))
    poll_until(lambda: proxy.gated > 0, "the APPEND reaching the proxy",
               DEADLINE)

    outcome = []

    def move():
        try:
            os.rename(os.path.join(inbox, "new.eml"),
                      os.path.join(archive, "new.eml"))
            outcome.append(0)
        except OSError as e:
            outcome.append(e.errno)

    mover = threading.Thread(target=move, daemon=True)
    mover.start()
    # The rename either waits for the APPEND or has already returned.
    mover.join(1.0)
    proxy.open_gate()
    mover.join(DEADLINE)
    assert not mover.is_alive(), "the rename hangs"
    where = "Archive" if outcome == [0] else "INBOX"
    assert outcome in ([0], [errno.ENOENT]), outcome
    poll_until(lambda: len(account.fetch(where, body=False)) == 1,
               f"the message in {where}", DEADLINE)
    other = "INBOX" if where == "Archive" else "Archive"
    assert not account.fetch(other, body=False)
    assert m.proc.poll() is None, "mailfs died"
