"""Integration tests: what real providers do differently.

Special-use folders where an expunge deletes nothing (Gmail's All Mail),
servers that file sent mail themselves, connection limits, throttling,
and servers without CONDSTORE.  Each runs against Dovecot configured to
show the behaviour, or, where Dovecot cannot, through a proxy or fake
server in tests/.
"""

import os

import corpus as corpus_mod
from helpers import files_in, uid_of


def test_rm_in_all_mail_moves_to_trash(make_account, corpus, mount):
    """In a \\All folder an expunge would only drop a label (Gmail): rm
    moves the message to the \\Trash folder.  Elsewhere rm expunges."""
    account = make_account("special")
    k = corpus_mod.by_key(corpus)
    with account.client() as c:
        c.create("All Mail")
        c.create("Trash")
        flags = {name: fl for name, fl, _ in c.list()}
    assert "\\All" in flags["All Mail"] and "\\Trash" in flags["Trash"]
    uids = account.seed([k["plain"], k["subject_b"]], folder="All Mail")
    inbox_uids = account.seed([k["subject_q"], k["utf8body"]],
                              folder="INBOX")
    before = account.fetch("All Mail")
    m = mount(account)

    folder = os.path.join(m.path, "All Mail")
    names = {uid_of(os.path.join(folder, n)): n for n in files_in(folder)}
    victim = names[uids["subject_b"]]
    os.unlink(os.path.join(folder, victim))
    assert set(account.fetch("All Mail", body=False)) == {uids["plain"]}
    trash = account.fetch("Trash")
    assert [i["raw"] for i in trash.values()] == [k["subject_b"].raw]
    [moved] = trash.values()
    assert moved["internaldate"] == before[uids["subject_b"]]["internaldate"]
    assert victim not in os.listdir(folder)

    # An ordinary folder: rm deletes, nothing reaches Trash.
    inbox = os.path.join(m.path, "INBOX")
    names = {uid_of(os.path.join(inbox, n)): n for n in files_in(inbox)}
    os.unlink(os.path.join(inbox, names[inbox_uids["utf8body"]]))
    assert set(account.fetch("INBOX", body=False)) == \
        {inbox_uids["subject_q"]}
    assert len(account.fetch("Trash", body=False)) == 1

    # In Trash itself rm deletes for good.
    trash_dir = os.path.join(m.path, "Trash")
    [name] = files_in(trash_dir)
    os.unlink(os.path.join(trash_dir, name))
    assert account.fetch("Trash", body=False) == {}
