"""Integration tests: mailfs mounting a real Dovecot over IMAP.

Every test gets its own user with an empty mailbox and its own mount; what
the server holds is always read back over a separate imaplib connection.
"""

import os
import re
import subprocess
import unicodedata

import pytest

import corpus as corpus_mod
from conftest import (assert_no_sanitizer_report, mailfs_bin, message_files,
                      read_bytes)
from helpers import assert_one_line, files_in, poll_until, sha, uid_of
from mailserver import closed_port

NAME_RE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2}_\d{4})_(?P<slug>.+)_(?P<hash>[0-9a-f]{8})"
    r"(?:~(?P<n>\d+))?\.eml$")


# ---------------------------------------------------------------- harness

def test_server_keeps_corpus_bytes(account, corpus):
    """Precondition for everything below: Dovecot returns every corpus
    message byte for byte, with the size and date it was appended with."""
    uids = account.seed(corpus)
    server = account.fetch("INBOX")
    assert len(server) == len(corpus)
    for m in corpus:
        info = server[uids[m.key]]
        assert info["raw"] == m.raw, m.key
        assert info["size"] == len(m.raw), m.key
        assert info["internaldate"] == m.internaldate, m.key
        assert info["flags"] - {"\\Recent"} == set(m.flags), m.key


def test_server_hierarchy(account):
    with account.client() as c:
        assert c.delimiter == "/"
        c.create("A/B/C")
        c.create("Entwürfe")
        folders = {name: flags for name, flags, _ in c.list()}
        raw = {name: r for name, _, r in c.list()}
    assert "\\Noselect" in folders["A"] and "\\Noselect" in folders["A/B"]
    assert "\\Noselect" not in folders["A/B/C"]
    assert raw["Entwürfe"] == "Entw&APw-rfe"


# ---------------------------------------------------------------- contents

def test_corpus_reads_back_byte_identical(account, corpus, mount):
    account.seed(corpus)
    server = account.fetch("INBOX")
    m = mount(account)
    inbox = os.path.join(m.path, "INBOX")
    names = files_in(inbox)
    assert len(names) == len(corpus)
    got = sorted(sha(read_bytes(os.path.join(inbox, n))) for n in names)
    want = sorted(sha(info["raw"]) for info in server.values())
    assert got == want


def test_size_and_mtime_before_any_read(account, corpus, mount):
    account.seed(corpus)
    server = account.fetch("INBOX", body=False)
    m = mount(account)
    inbox = os.path.join(m.path, "INBOX")
    stats = [os.stat(os.path.join(inbox, n)) for n in files_in(inbox)]
    got = sorted((st.st_size, int(st.st_mtime)) for st in stats)
    want = sorted((i["size"], i["internaldate"]) for i in server.values())
    assert got == want


def test_reading_does_not_set_seen(account, corpus, mount):
    account.seed(corpus)
    before = account.flags()
    assert any("\\Seen" not in fl for fl in before.values())
    m = mount(account)
    for rel in message_files(m.path):
        read_bytes(os.path.join(m.path, rel))
        with open(os.path.join(m.path, rel), "rb") as f:
            f.read(100)
    m.unmount()
    assert account.flags() == before


def test_head_of_big_message(account, corpus, mount):
    big = corpus_mod.by_key(corpus)["attachment"]
    assert len(big.raw) > 3 * 1024 * 1024
    account.seed([big])
    m = mount(account)
    inbox = os.path.join(m.path, "INBOX")
    [name] = files_in(inbox)
    path = os.path.join(inbox, name)
    r = subprocess.run(["head", "-c", "1024", path], stdout=subprocess.PIPE,
                       timeout=120, check=True)
    assert r.stdout == big.raw[:1024]
    with open(path, "rb") as f:
        f.seek(2 * 1024 * 1024 + 123)
        assert f.read(70000) == big.raw[2 * 1024 * 1024 + 123:][:70000]
        f.seek(len(big.raw) - 10)
        assert f.read(100) == big.raw[-10:]
    assert read_bytes(path) == big.raw


def test_grep_finds_word_in_one_message(account, corpus, mount):
    account.seed(corpus)
    m = mount(account)
    r = subprocess.run(["grep", "-rl", corpus_mod.GREP_WORD, m.path],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    hits = r.stdout.decode().splitlines()
    assert len(hits) == 1, hits
    assert read_bytes(hits[0]) == corpus_mod.by_key(corpus)["grep"].raw


# ---------------------------------------------------------------- names

def test_message_names(account, corpus, mount):
    account.seed(corpus)
    msgs = {sha(m.raw): m for m in corpus}
    m = mount(account)
    inbox = os.path.join(m.path, "INBOX")
    names = files_in(inbox)
    assert len(names) == len(corpus)
    for n in names:
        assert len(n.encode()) <= 255
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in n), n
        match = NAME_RE.match(n)
        assert match, f"{n!r} does not look like YYYY-MM-DD_HHMM_slug_hash.eml"
        msg = msgs[sha(read_bytes(os.path.join(inbox, n)))]
        assert match.group("date") == msg.name_prefix, (n, msg.key)
        slug = unicodedata.normalize("NFC", match.group("slug")).lower()
        for w in msg.slug_words:
            assert w in slug, (n, msg.key, w)
        if msg.key == "nosubject":
            assert slug == "no-subject", n


def test_identical_messages_get_numbered(account, corpus, mount):
    keys = corpus_mod.by_key(corpus)
    account.seed([keys["dup1"], keys["dup2"], keys["plain"]])
    m = mount(account)
    inbox = os.path.join(m.path, "INBOX")
    names = files_in(inbox)
    assert len(names) == 3
    dups = [n for n in names if "duplicate-notice" in n]
    assert len(dups) == 2, names
    plain, second = sorted(dups, key=len)
    assert second == plain[:-len(".eml")] + "~2.eml"
    # the lower UID keeps the plain name
    assert uid_of(os.path.join(inbox, plain)) < uid_of(os.path.join(inbox, second))
    for n in dups:
        assert read_bytes(os.path.join(inbox, n)) == keys["dup1"].raw


def test_names_stable_across_remounts(account, corpus, mount, tmp_path):
    account.seed(corpus)
    with account.client() as c:
        c.create("Work")
    account.seed(corpus[:4], folder="Work")
    cache = str(tmp_path / "cache-kept")
    m = mount(account, cache_dir=cache)
    first = message_files(m.path)
    assert len(first) == len(corpus) + 4
    m.unmount()
    m = mount(account, cache_dir=cache)
    assert message_files(m.path) == first
    m.unmount()
    m = mount(account)  # a fresh cache: names come from the headers alone
    assert message_files(m.path) == first


# ---------------------------------------------------------------- folders

def test_nested_and_non_ascii_folders(account, corpus, mount):
    keys = corpus_mod.by_key(corpus)
    with account.client() as c:
        c.create("Entwürfe")
        c.create("Projects/2026/Q1 & Q2")
        c.append("Entwürfe", keys["utf8body"].raw,
                 date=keys["utf8body"].internaldate)
        c.append("Projects/2026/Q1 & Q2", keys["plain"].raw,
                 date=keys["plain"].internaldate)
        raw_names = {r for _, _, r in c.list()}
    assert "Projects/2026/Q1 &- Q2" in raw_names
    assert "Entw&APw-rfe" in raw_names
    m = mount(account)
    top = os.listdir(m.path)
    assert "INBOX" in top and "Entwürfe" in top and "Projects" in top, top
    assert "Entw&APw-rfe" not in top, top
    assert os.path.isdir(os.path.join(m.path, "Projects", "2026"))
    assert os.listdir(os.path.join(m.path, "Projects", "2026")) == ["Q1 & Q2"]
    q = os.path.join(m.path, "Projects", "2026", "Q1 & Q2")
    [name] = files_in(q)
    assert read_bytes(os.path.join(q, name)) == keys["plain"].raw
    e = os.path.join(m.path, "Entwürfe")
    [name] = files_in(e)
    assert read_bytes(os.path.join(e, name)) == keys["utf8body"].raw


def test_server_delimiter_is_used(make_account, corpus, mount):
    """A server whose hierarchy delimiter is '.' still nests folders."""
    account = make_account("dot")
    with account.client() as c:
        assert c.delimiter == "."
        c.create("Projects/2026")
        assert "Projects.2026" in {r for _, _, r in c.list()}
    account.seed(corpus[:1], folder="Projects/2026")
    m = mount(account)
    d = os.path.join(m.path, "Projects", "2026")
    assert os.path.isdir(d)
    [name] = files_in(d)
    assert read_bytes(os.path.join(d, name)) == corpus[0].raw


def test_noselect_folder_is_empty_directory(account, mount):
    with account.client() as c:
        c.create("A/B/C")
        flags = {n: f for n, f, _ in c.list()}
    assert "\\Noselect" in flags["A"]
    m = mount(account)
    a = os.path.join(m.path, "A")
    assert os.path.isdir(a)
    assert os.listdir(a) == ["B"]
    assert os.listdir(os.path.join(a, "B")) == ["C"]
    assert os.listdir(os.path.join(a, "B", "C")) == []


# ---------------------------------------------------------------- xattrs

def test_xattrs(account, corpus, mount):
    keys = corpus_mod.by_key(corpus)
    chosen = [keys["plain"], keys["attachment"], keys["utf8body"],
              keys["subject_b"]]
    uids = account.seed(chosen)
    server = account.fetch("INBOX")
    by_sha = {sha(info["raw"]): uid for uid, info in server.items()}
    m = mount(account)
    inbox = os.path.join(m.path, "INBOX")
    seen_uids = set()
    for n in files_in(inbox):
        p = os.path.join(inbox, n)
        names = os.listxattr(p)
        assert "user.mail.flags" in names and "user.mail.uid" in names, names
        uid = uid_of(p)
        assert uid == by_sha[sha(read_bytes(p))]
        seen_uids.add(uid)
        flags = set(os.getxattr(p, "user.mail.flags").decode().split())
        assert flags - {"\\Recent"} == server[uid]["flags"] - {"\\Recent"}, n
    assert seen_uids == set(uids.values())
    flagged = os.path.join(inbox, [n for n in files_in(inbox)
                                   if uid_of(os.path.join(inbox, n))
                                   == uids["attachment"]][0])
    assert "\\Flagged" in os.getxattr(flagged, "user.mail.flags").decode().split()
    # Asked for by name; not listed, so backups do not copy a status report.
    assert "user.mailfs.stats" not in os.listxattr(m.path)
    stats = os.getxattr(m.path, "user.mailfs.stats").decode()
    assert stats.strip() and "\n" not in stats.strip(), stats


# ---------------------------------------------------------------- connecting

def dovecot_logins(account):
    """Dovecot's log lines of the IMAP logins of account, so far."""
    with open(account.server.log_path, errors="replace") as f:
        return [line for line in f
                if re.search(r"imap-login: (Info: )?Login: ", line)
                and f"user=<{account.user}>" in line]


def test_starttls(account, corpus, mount):
    account.seed(corpus[:2])
    before = len(dovecot_logins(account))
    m = mount(account, scheme="imap")
    inbox = os.path.join(m.path, "INBOX")
    got = sorted(read_bytes(os.path.join(inbox, n)) for n in files_in(inbox))
    assert got == sorted(x.raw for x in corpus[:2])
    # Dovecot logs how each login came in: mailfs's, over STARTTLS, name
    # TLS ("secured" alone would be a clear-text login on loopback).
    ours = poll_until(lambda: dovecot_logins(account)[before:],
                      "Dovecot's log of mailfs's login", timeout=30)
    for line in ours:
        assert re.search(r", TLS[,:]", line), line


def test_host_name_localhost(account, corpus, mount):
    account.seed(corpus[:1])
    m = mount(account, host="localhost")
    [name] = files_in(os.path.join(m.path, "INBOX"))
    assert read_bytes(os.path.join(m.path, "INBOX", name)) == corpus[0].raw


def test_password_from_environment(account, corpus, mount):
    account.seed(corpus[:1])
    m = mount(account, password_file=False,
              env={"MAILFS_PASSWORD": account.password})
    assert len(files_in(os.path.join(m.path, "INBOX"))) == 1


def test_debug_log_hides_password(account, corpus, mount):
    account.seed(corpus[:2])
    m = mount(account, args=["-d"])
    for rel in message_files(m.path):
        read_bytes(os.path.join(m.path, rel))
    m.unmount()  # checks the output for the password
    assert account.password.encode() not in m.output()


def test_plaintext_when_allowed(make_account, corpus, mount):
    account = make_account("nossl")
    account.seed(corpus[:1])
    m = mount(account, scheme="imap", ca_file=False,
              options=["allow_plaintext"])
    [name] = files_in(os.path.join(m.path, "INBOX"))
    assert read_bytes(os.path.join(m.path, "INBOX", name)) == corpus[0].raw


# ---------------------------------------------------------------- refusals

def test_refuses_untrusted_certificate(account, mount_fails):
    rc, err = mount_fails(account, ca_file=False)
    assert_one_line(err, "certificate", "verif", "trust", "tls")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_refuses_wrong_host_name(make_account, mount_fails, host):
    account = make_account("wrongcert")
    rc, err = mount_fails(account, host=host)
    assert_one_line(err, "certificate", "host", "name", "verif", "tls")


def test_refuses_wrong_password(account, mount_fails):
    rc, err = mount_fails(account, password="not-" + account.password)
    assert_one_line(err, "auth", "login", "password", "credential")


def test_refuses_server_without_starttls(make_account, mount_fails):
    account = make_account("nossl")
    rc, err = mount_fails(account, scheme="imap", ca_file=False)
    assert_one_line(err, "starttls", "tls")


@pytest.mark.parametrize("url", ["http://x", "imaps://@host",
                                 "imaps://user@host:99999"])
def test_refuses_bad_url(account, mount_fails, url):
    rc, err = mount_fails(account, source=url)
    assert_one_line(err, "url", "source", "invalid", "port", "user", "scheme")


def test_refuses_unreachable_host(account, mount_fails):
    url = f"imaps://{account.user}@127.0.0.1:{closed_port()}"
    rc, err = mount_fails(account, source=url)
    assert_one_line(err, "connect", "refused", "unreachable", "reach")


# ---------------------------------------------------------------- command line

def test_help_and_version():
    for arg, word in (("--help", "usage"), ("--version", "mailfs")):
        r = subprocess.run([mailfs_bin(), arg], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=30)
        assert_no_sanitizer_report(r.stdout + r.stderr, f"mailfs {arg}")
        assert r.returncode == 0, (arg, r.stderr)
        assert word in (r.stdout + r.stderr).decode().lower(), arg
