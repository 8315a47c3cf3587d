"""Integration tests of the .parts view: FOLDER/.parts/<message>/ holds the
message's text, html, headers, attachments and nested messages, decoded.

Every expectation comes from Python's email package (get_payload(decode=
True)), never from mailfs.  Transfers are measured with the root's
user.mailfs.stats counter parts_fetched_bytes.  Nothing depends on timing.
"""

import base64
import email
import errno
import email.header
import email.quoprimime
import email.policy
import os
import random
import subprocess

import pytest

from helpers import poll_until, seed

KiB = 1024
MiB = 1024 * KiB


# ---------------------------------------------------------------- messages

def _mime(head, parts, boundary="==b=="):
    out = [head.rstrip("\r\n") + "\r\nMIME-Version: 1.0\r\n"
           f"Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n"
           "preamble\r\n"]
    for p in parts:
        out.append(f"--{boundary}\r\n")
        out.append(p)
    out.append(f"--{boundary}--\r\n")
    return "".join(x if isinstance(x, str) else x.decode("latin-1")
                   for x in out).encode("latin-1")


def _b64(data):
    return base64.encodebytes(data).replace(b"\n", b"\r\n").decode()


def _part(ctype, body, cte=None, disposition=None):
    h = f"Content-Type: {ctype}\r\n"
    if cte:
        h += f"Content-Transfer-Encoding: {cte}\r\n"
    if disposition:
        h += f"Content-Disposition: {disposition}\r\n"
    return h + "\r\n" + body + "\r\n"


def attachments_message():
    rng = random.Random(18)
    pdf = bytes(rng.randrange(256) for _ in range(30 * KiB))
    binary = bytes(rng.randrange(256) for _ in range(5000))
    qp_text = "caf=C3=A9 na=C3=AFve =3D long line that goes on and =\r\non\r\n"
    inner = ("Subject: inner message\r\nFrom: b@example.org\r\n"
             "MIME-Version: 1.0\r\n"
             "Content-Type: multipart/mixed; boundary=in\r\n\r\n"
             "--in\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
             "inner text\r\n--in\r\n"
             "Content-Type: application/octet-stream; name=inner.bin\r\n"
             "Content-Transfer-Encoding: base64\r\n\r\n"
             + _b64(b"\x00\x01inner\xff") + "--in--\r\n")
    parts = [
        _part("multipart/alternative; boundary=alt",
              "--alt\r\n" + _part("text/plain; charset=iso-8859-1",
                                  "Bonjour, caf=E9.\r\nLigne deux.",
                                  "quoted-printable")
              + "--alt\r\n" + _part("text/html; charset=utf-8",
                                    "<p>Bonjour, caf\u00c3\u00a9.</p>")  # UTF-8 bytes
              + "--alt--"),
        _part("application/pdf; name=\"report.pdf\"", _b64(pdf), "base64",
              "attachment; filename=\"report.pdf\""),
        _part("application/octet-stream", _b64(binary), "base64",
              "attachment; filename*=utf-8''%E2%82%AC%20r%C3%A9sum%C3%A9.bin"),
        _part("text/plain; charset=utf-8", qp_text, "quoted-printable",
              "attachment; filename*0*=utf-8''na%C3%AF; filename*1=\"ve.txt\""),
        _part("image/png; name=\"=?utf-8?q?=C3=A9t=C3=A9?= photo.png\"",
              _b64(b"\x89PNG\r\n\x1a\n" + binary[:200]), "base64",
              "inline"),
        _part("message/rfc822", inner),
    ]
    head = ("From: a@example.org\r\nTo: c@example.org\r\n"
            "Subject: =?utf-8?q?Attachments_=C3=A9t=C3=A9?=\r\n"
            "Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
            "Message-ID: <parts-1@example.org>\r\n")
    return _mime(head, parts)


HOSTILE_NAMES = ["../../x", "/etc/passwd", "..", "a\r\nb", "n" * 1000,
                 ".hidden"]


def hostile_message():
    parts = [_part("text/plain", "hostile text")]
    for i, name in enumerate(HOSTILE_NAMES):
        enc = "".join(c if c.isalnum() else "%%%02X" % ord(c) for c in name)
        parts.append(_part("application/octet-stream",
                           _b64(f"payload {i}".encode()), "base64",
                           f"attachment; filename*=utf-8''{enc}"))
    head = ("From: a@example.org\r\nSubject: hostile names\r\n"
            "Date: Mon, 02 Jun 2025 11:00:00 +0000\r\n"
            "Message-ID: <parts-2@example.org>\r\n")
    return _mime(head, parts)


def html_only_message():
    return (b"From: a@example.org\r\nSubject: html only\r\n"
            b"Date: Mon, 02 Jun 2025 12:00:00 +0000\r\n"
            b"Message-ID: <parts-3@example.org>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/html; charset=utf-8\r\n\r\n"
            b"<html><head><style>p {}</style></head><body>"
            b"<p>Hello &amp; welcome</p><script>evil()</script>"
            b"<p>Second</p></body></html>\r\n")


def big_message():
    rng = random.Random(1818)
    big = bytes(rng.randrange(256) for _ in range(6 * MiB))
    small = bytes(rng.randrange(256) for _ in range(10 * KiB))
    head = ("From: a@example.org\r\nSubject: big and small\r\n"
            "Date: Mon, 02 Jun 2025 13:00:00 +0000\r\n"
            "Message-ID: <parts-4@example.org>\r\n")
    return _mime(head, [
        _part("text/plain", "see attached"),
        _part("application/octet-stream", _b64(big), "base64",
              "attachment; filename=big.bin"),
        _part("application/octet-stream", _b64(small), "base64",
              "attachment; filename=small.bin"),
    ])


# ---------------------------------------------------------------- helpers

def safe(name):
    """A file name made safe as mailfs promises."""
    out = "".join("_" if (ord(c) < 0x20 or ord(c) == 0x7f or
                          0x80 <= ord(c) < 0xa0 or c == "/") else c
                  for c in name)
    if out in ("", ".", ".."):
        out = "_" + out
    if out.startswith("."):
        out = "_" + out
    b = out.encode()[:255]
    return b.decode("utf-8", "ignore")


def decoded_filename(part):
    fn = part.get_filename()
    if fn and "=?" in fn:
        fn = str(email.header.make_header(email.header.decode_header(fn)))
    return fn


def parts_dir(mount_path, folder, raw):
    """The .parts directory of the message whose bytes are raw."""
    d = os.path.join(mount_path, folder)
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as f:
            if f.read() == raw:
                return os.path.join(d, ".parts", name[:-len(".eml")])
    raise AssertionError("message not found in " + folder)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def leaves(part):
    """The leaf parts of a message, a message/rfc822 part being a leaf
    (it is a subdirectory); email's walk() would descend into it."""
    if part.get_content_type() == "message/rfc822":
        yield part
    elif part.is_multipart():
        for sub in part.get_payload():
            yield from leaves(sub)
    else:
        yield part


def check_tree(pdir, msg):
    """Every leaf of msg (an email.message.Message) against pdir."""
    names = set(os.listdir(pdir))
    assert {"text", "headers"} <= names, names
    text_part = html_part = None
    subdirs = []
    for part in leaves(msg):
        ctype = part.get_content_type()
        if ctype == "message/rfc822":
            subdirs.append(part)
            continue
        fn = decoded_filename(part)
        attach = (part.get("Content-Disposition", "")
                  .lower().startswith("attachment"))
        if not fn and not attach and ctype == "text/plain" and not text_part:
            text_part = part
        elif not fn and not attach and ctype == "text/html" and not html_part:
            html_part = part
        elif fn:
            got = read(os.path.join(pdir, safe(fn)))
            assert got == part.get_payload(decode=True), fn
    if text_part is not None:
        want = text_part.get_payload(decode=True).decode(
            text_part.get_content_charset() or "us-ascii")
        print("TEXT", repr(read(os.path.join(pdir, "text"))), list(sorted(names)))
        assert read(os.path.join(pdir, "text")).decode() == want
    if html_part is not None:
        want = html_part.get_payload(decode=True).decode(
            html_part.get_content_charset() or "us-ascii")
        assert read(os.path.join(pdir, "html")).decode() == want
    return subdirs


# ---------------------------------------------------------------- tests

def test_parts_decoded_like_python(account, mount):
    raw = attachments_message()
    seed(account, {"INBOX": [raw]})
    m = mount(account)
    pdir = parts_dir(m.path, "INBOX", raw)
    msg = email.message_from_bytes(raw)
    subdirs = check_tree(pdir, msg)
    names = set(os.listdir(pdir))
    assert {"report.pdf", "\u20ac r\u00e9sum\u00e9.bin", "na\u00efve.txt",
            "\u00e9t\u00e9 photo.png", "html"} <= names, names
    headers = read(os.path.join(pdir, "headers")).decode()
    assert "Subject: Attachments \u00e9t\u00e9\n" in headers
    assert "From: a@example.org\n" in headers
    # the nested message is a directory laid out the same way
    assert len(subdirs) == 1 and "message-6" in names
    inner = subdirs[0].get_payload(0)
    check_tree(os.path.join(pdir, "message-6"), inner)
    assert read(os.path.join(pdir, "message-6", "text")) == b"inner text"
    # read-only, whatever is tried
    text = os.path.join(pdir, "text")
    for attempt in (lambda: open(text, "wb"),
                    lambda: open(text, "r+b"),
                    lambda: open(os.path.join(pdir, "new"), "wb"),
                    lambda: os.mkdir(os.path.join(pdir, "d")),
                    lambda: os.unlink(text),
                    lambda: os.rename(text, os.path.join(pdir, "t2")),
                    lambda: os.utime(text, (0, 0)),
                    lambda: os.setxattr(text, "user.x", b"1")):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS, e.value


def test_parts_copied_out_with_cp_a_and_tar(account, mount, tmp_path):
    raw = attachments_message()
    seed(account, {"INBOX": [raw]})
    m = mount(account)
    pdir = parts_dir(m.path, "INBOX", raw)
    dest = tmp_path / "copy"
    subprocess.run(["cp", "-a", pdir, str(dest)], check=True, timeout=300)
    for name in os.listdir(pdir):
        src = os.path.join(pdir, name)
        if os.path.isfile(src):
            assert read(src) == read(dest / name), name
    out = subprocess.run(["tar", "-cf", "-", "-C", m.path, "INBOX"],
                         capture_output=True, check=True, timeout=300).stdout
    assert b".parts" not in out


def test_parts_html_only(account, mount):
    raw = html_only_message()
    seed(account, {"INBOX": [raw]})
    m = mount(account)
    pdir = parts_dir(m.path, "INBOX", raw)
    text = read(os.path.join(pdir, "text")).decode()
    assert "Hello & welcome" in text and "Second" in text
    assert "<" not in text and "evil" not in text
    assert read(os.path.join(pdir, "html")).startswith(b"<html>")


def test_parts_hidden_from_listings(account, mount, tmp_path):
    raw = attachments_message()
    seed(account, {"INBOX": [raw]})
    m = mount(account)
    inbox = os.path.join(m.path, "INBOX")
    assert ".parts" not in os.listdir(inbox)
    assert os.path.isdir(os.path.join(inbox, ".parts"))
    for dirpath, dirnames, filenames in os.walk(m.path):
        assert ".parts" not in dirnames + filenames, dirpath
    found = subprocess.run(["find", m.path], capture_output=True,
                           check=True).stdout.decode()
    assert "/.parts" not in found
    backup = tmp_path / "backup"
    subprocess.run(["rsync", "-a", "--exclude=outbox", m.path + "/",
                    str(backup) + "/"], check=True, timeout=300)
    copied = [os.path.join(d, n) for d, ds, fs in os.walk(backup)
              for n in ds + fs]
    assert copied and not any("/.parts" in p for p in copied)


def test_parts_hostile_names_stay_inside(account, mount):
    raw = hostile_message()
    seed(account, {"INBOX": [raw]})
    m = mount(account)
    pdir = parts_dir(m.path, "INBOX", raw)
    names = os.listdir(pdir)
    for n in names:
        assert "/" not in n and n not in (".", "..")
        assert not n.startswith(".")
        assert len(n.encode()) <= 255
        assert not any(ord(c) < 0x20 for c in n)
        assert os.path.realpath(os.path.join(pdir, n)).startswith(
            os.path.realpath(pdir) + "/")
    for i, name in enumerate(HOSTILE_NAMES):
        assert read(os.path.join(pdir, safe(name))) == \
            f"payload {i}".encode(), name
    assert not os.path.exists(os.path.join(m.path, "x"))


def stats(m):
    text = os.getxattr(m.path, "user.mailfs.stats").decode()
    return dict((k, int(v)) for k, _, v in
                (f.partition("=") for f in text.split()))


def test_parts_partial_read_costs_what_it_reads(account, mount):
    raw = big_message()
    seed(account, {"INBOX": [raw]})
    m = mount(account)
    msg = email.message_from_bytes(raw)
    want = {p.get_filename(): p.get_payload(decode=True)
            for p in msg.walk() if p.get_filename()}
    inbox = os.path.join(m.path, "INBOX")
    name = os.listdir(inbox)[0]
    pdir = os.path.join(inbox, ".parts", name[:-len(".eml")])

    before = stats(m)["parts_fetched_bytes"]
    assert read(os.path.join(pdir, "small.bin")) == want["small.bin"]
    small_cost = stats(m)["parts_fetched_bytes"] - before
    # 10 KiB decoded is 14 KiB of base64, plus two probes of its lines
    assert small_cost < 24 * KiB, small_cost
    assert os.path.getsize(os.path.join(pdir, "big.bin")) == \
        len(want["big.bin"])

    before = stats(m)["parts_fetched_bytes"]
    with open(os.path.join(pdir, "big.bin"), "rb") as f:
        f.seek(3 * MiB + 12345)
        chunk = f.read(64 * KiB)
    assert chunk == want["big.bin"][3 * MiB + 12345:3 * MiB + 12345 + 64 * KiB]
    cost = stats(m)["parts_fetched_bytes"] - before
    # the kernel reads ahead a little; never the 8 MiB of the part
    assert cost < 1 * MiB, cost


def test_parts_pop3_view(account, mount):
    raw = attachments_message()
    seed(account, {"INBOX": [raw]})
    m = mount(account, source=account.url("pop3s"))
    pdir = parts_dir(m.path, "INBOX", raw)
    msg = email.message_from_bytes(raw)
    subdirs = check_tree(pdir, msg)
    assert len(subdirs) == 1
    check_tree(os.path.join(pdir, "message-6"), subdirs[0].get_payload(0))
    assert ".parts" not in os.listdir(os.path.join(m.path, "INBOX"))


def test_parts_of_the_corpus(account, mount, corpus):
    """The odd messages of tests/corpus.py: every attachment and text as
    Python's email package decodes them."""
    seed(account, {"INBOX": [m.raw for m in corpus]})
    m = mount(account)
    for msg in corpus:
        pdir = parts_dir(m.path, "INBOX", msg.raw)
        parsed = email.message_from_bytes(msg.raw)
        check_tree(pdir, parsed)


def test_parts_come_from_the_block_cache(account, mount, tmp_path):
    raw = big_message()
    seed(account, {"INBOX": [raw]})
    msg = email.message_from_bytes(raw)
    want = {p.get_filename(): p.get_payload(decode=True)
            for p in msg.walk() if p.get_filename()}
    cache_dir = str(tmp_path / "cache")

    def read_small():
        m = mount(account, cache_dir=cache_dir)
        inbox = os.path.join(m.path, "INBOX")
        name = os.listdir(inbox)[0]
        path = os.path.join(inbox, ".parts", name[:-len(".eml")],
                            "small.bin")
        assert read(path) == want["small.bin"]
        s = stats(m)
        m.unmount()
        return s["parts_fetched_bytes"], s["parts_structures_fetched"]

    assert read_small()[0] > 10 * KiB
    assert read_small() == (0, 0), "fetched again after a remount"


def awkward_message():
    """A large quoted-printable attachment (decoded from its start, across
    several reads) and a base64 one whose lines are irregular (its ranges
    cannot be mapped, so it is decoded from the start too)."""
    rng = random.Random(4242)
    text = "".join(rng.choice("abc=\u00e9\t xyz") for _ in range(400 * KiB))
    qp = email.quoprimime.body_encode(text.encode().decode("latin-1"),
                                      maxlinelen=76, eol="\r\n")
    data = bytes(rng.randrange(256) for _ in range(300 * KiB))
    enc = base64.b64encode(data).decode()
    lines, i = [], 0
    while i < len(enc):
        n = rng.choice((76, 64, 40, 72))
        lines.append(enc[i:i + n])
        i += n
    head = ("From: a@example.org\r\nSubject: awkward encodings\r\n"
            "Date: Mon, 02 Jun 2025 14:00:00 +0000\r\n"
            "Message-ID: <parts-5@example.org>\r\n")
    return _mime(head, [
        _part("text/plain", "two attachments"),
        _part("text/plain; charset=utf-8", qp, "quoted-printable",
              "attachment; filename=long.txt"),
        _part("application/octet-stream", "\r\n".join(lines) + "\r\n",
              "base64", "attachment; filename=ragged.bin"),
    ])


def test_parts_decoded_from_the_start(account, mount):
    raw = awkward_message()
    seed(account, {"INBOX": [raw]})
    m = mount(account)
    msg = email.message_from_bytes(raw)
    want = {p.get_filename(): p.get_payload(decode=True)
            for p in msg.walk() if p.get_filename()}
    pdir = parts_dir(m.path, "INBOX", raw)
    for name in ("long.txt", "ragged.bin"):
        path = os.path.join(pdir, name)
        with open(path, "rb") as f:
            got = b""
            while True:      # small reads: the cursor carries on
                chunk = f.read(50 * KiB)
                if not chunk:
                    break
                got += chunk
        assert got == want[name], name
        # the size was an estimate until that full read settled it (the
        # kernel is told so from another thread)
        poll_until(lambda: os.path.getsize(path) == len(want[name]),
                   f"the size of {name} corrected", 60)
        with open(path, "rb") as f:
            f.seek(200 * KiB)
            assert f.read(1000) == want[name][200 * KiB:200 * KiB + 1000]


def test_parts_of_hostile_structures_are_bounded(account, mount):
    """10,000 parts, and messages nested 100 deep: a bounded tree."""
    many = _mime("From: a@example.org\r\nSubject: many parts\r\n"
                 "Message-ID: <parts-6@example.org>\r\n",
                 [_part("image/gif", "R0lGODlh", "base64")
                  for _ in range(10000)])
    deep = b"inner\r\n"
    for i in range(100):
        deep = (b"Content-Type: message/rfc822\r\n\r\nSubject: level %d\r\n"
                % i + deep)
    deep = (b"From: a@example.org\r\nSubject: deep\r\n"
            b"Message-ID: <parts-7@example.org>\r\n" + deep)
    seed(account, {"INBOX": [many, deep]})
    m = mount(account)
    top = parts_dir(m.path, "INBOX", many)
    names = os.listdir(top)
    assert 3 <= len(names) <= 1000
    assert read(os.path.join(top, "part-2.gif")) == base64.b64decode(
        "R0lGODlh")
    d, depth = parts_dir(m.path, "INBOX", deep), 0
    while True:
        subs = [n for n in os.listdir(d)
                if os.path.isdir(os.path.join(d, n))]
        if not subs:
            break
        d = os.path.join(d, subs[0])
        depth += 1
    assert depth <= 32
    assert ".parts" not in os.listdir(os.path.join(m.path, "INBOX"))


def test_parts_of_a_replaced_message(account, mount):
    """A message expunged and appended again (same name, new UID) gets a
    .parts directory of its own while the old one is still open."""
    raw = attachments_message()
    with account.client() as c:
        old_uid = c.append("INBOX", raw)
    m = mount(account, options=("refresh=1",))
    pdir = parts_dir(m.path, "INBOX", raw)
    eml = os.path.join(m.path, "INBOX", os.path.basename(pdir) + ".eml")
    with open(os.path.join(pdir, "text"), "rb") as held:
        with account.client() as c:
            c.expunge_uid("INBOX", old_uid)
            new_uid = c.append("INBOX", raw)

        def replaced():
            os.listdir(os.path.join(m.path, "INBOX"))
            return os.getxattr(eml, "user.mail.uid").decode() == \
                str(new_uid)
        poll_until(replaced, "the message's new UID", 120,
                   tolerate=(OSError,))
        assert held.read().startswith(b"Bonjour")
        poll_until(lambda: read(os.path.join(pdir, "report.pdf")),
                   "the new message's parts", 60, tolerate=(OSError,))
        assert read(os.path.join(pdir, "text")).startswith(b"Bonjour")
