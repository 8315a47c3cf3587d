"""Integration tests: sending mail through MOUNTPOINT/outbox/.

Every test gets its own Dovecot user, its own SMTP server (smtpserver.py,
STARTTLS and AUTH with that user's credentials), its own spool directory
and its own mount.  What was sent is read back from the SMTP server's
records; what was filed is read back over a separate IMAP connection.

Nothing here depends on how fast the machine is: every wait polls with a
generous deadline, and "X did not happen" is shown by sending a later
message and waiting for it to arrive first (the sender works through the
queue in order, so an earlier message it was going to send would have
arrived before it).
"""

import email.utils
import errno
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from conftest import FUSERMOUNT, MountError, read_bytes
from helpers import fill_up, leave_room, poll_until, tmpfs
from smtpserver import SmtpServer

DEADLINE = float(os.environ.get("MAILFS_TEST_OUTBOX_DEADLINE", "120"))
STATUS = "user.mail.status"

SENDER = "alice@example.org"


# ---------------------------------------------------------------- helpers

def message(subject, to="bob@example.net", sender=SENDER, extra=b"",
            body=b"Hello.\r\n", date=True, msgid=True):
    """A complete message with CRLF line ends (Date and Message-ID fixed,
    so that it must arrive byte for byte)."""
    head = b""
    if sender is not None:
        head += b"From: " + sender.encode() + b"\r\n"
    if to is not None:
        head += b"To: " + to.encode() + b"\r\n"
    head += extra
    head += b"Subject: " + subject.encode() + b"\r\n"
    if date:
        head += b"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
    if msgid:
        token = re.sub(r"[^A-Za-z0-9]", "", subject)[:40] or "x"
        head += b"Message-ID: <" + token.encode() + b".1@example.org>\r\n"
    return head + b"\r\n" + body


def write_file(path, data):
    """open/write/close; returns what close() returned (0) or raises
    OSError from whichever step failed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)   # the outbox reports acceptance here
    return 0


def close_errno(path, data):
    """Writes path and returns the errno close() failed with (None if it
    succeeded).  open and write must succeed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        raise
    try:
        os.close(fd)
    except OSError as e:
        return e.errno
    return None


def wait_until(predicate, what, timeout=DEADLINE):
    return poll_until(predicate, what, timeout, interval=0.1)


def wait_filed(account, folder):
    """Waits until the server has `folder` and it holds messages; returns
    them as account.fetch(folder) does."""
    def filed():
        with account.client() as c:
            if folder not in {name for name, _, _ in c.list()}:
                return None
            return c.fetch(folder) or None

    return wait_until(filed, f"the copy in {folder}")


def status_of(path):
    try:
        return os.getxattr(path, STATUS).decode()
    except OSError as e:
        return f"<{errno.errorcode.get(e.errno, e.errno)}>"


def listing(directory):
    return sorted(os.listdir(directory))


def without_fields(data, *names):
    """data with the named header fields (and their continuation lines)
    removed."""
    head, sep, body = data.partition(b"\r\n\r\n")
    out, skipping = [], False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        skipping = name in {n.lower().encode() for n in names}
        if not skipping:
            out.append(line)
    return b"\r\n".join(out) + sep + body


def header_values(data, name):
    head = data.partition(b"\r\n\r\n")[0]
    return [line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.split(b":", 1)[0].strip().lower() == name.lower().encode()]


def subject_of(d):
    vals = header_values(d.data, "Subject")
    return vals[0].decode() if vals else None


def deliveries_of(server, subject):
    return [d for d in server.snapshot()[0] if subject_of(d) == subject]


def no_bare_lf(data):
    return re.search(rb"(?<!\r)\n", data) is None and \
        re.search(rb"\r(?!\n)", data) is None


# ---------------------------------------------------------------- fixtures

class Outbox:
    """A mount with an SMTP server.  path: MOUNTPOINT/outbox."""

    def __init__(self, m, server, spool_dir):
        self.mount = m
        self.server = server
        self.spool_dir = spool_dir
        self.path = os.path.join(m.path, "outbox")
        self.failed = os.path.join(self.path, "failed")

    def file(self, name):
        return os.path.join(self.path, name)

    def send(self, name, data):
        """Drops a message; asserts close() accepted it."""
        assert write_file(self.file(name), data) == 0
        return self.file(name)

    def barrier(self, subject="barrier"):
        """Sends one more message and waits until it arrived, so that
        everything queued before it had its chance."""
        self.send(f"{subject}.eml", message(subject))
        self.server.wait(lambda s: any(subject_of(d) == subject
                                       for d in s.deliveries),
                         what=f"delivery of {subject!r}")

    def wait_gone(self, name):
        wait_until(lambda: name not in listing(self.path),
                   f"outbox/{name} to leave the queue "
                   f"(status: {status_of(self.file(name))})")

    def wait_failed(self, name):
        """Waits until the message left the queue for failed/ (both
        listings agree); returns the text of NAME.error."""
        wait_until(lambda: {name, name + ".error"} <= set(
                       listing(self.failed)) and
                   name not in listing(self.path),
                   f"outbox/failed/{name} and its .error "
                   f"(status: {status_of(self.file(name))})")
        return read_bytes(os.path.join(self.failed, name + ".error")) \
            .decode(errors="replace")


@pytest.fixture
def make_smtp(servers, account, tmp_path):
    """make_smtp(start=True, **SmtpServer kwargs) -> SmtpServer for the
    test's account; every server is stopped at teardown."""
    made = []

    def make(start=True, **kw):
        kw.setdefault("cert", servers.cert)
        kw.setdefault("key", servers.key)
        kw.setdefault("user", account.user)
        kw.setdefault("password", account.password)
        kw.setdefault("log_path", str(tmp_path / f"smtp{len(made) + 1}.log"))
        s = SmtpServer(**kw)
        made.append(s)
        if start:
            s.start()
        return s

    try:
        yield make
    finally:
        for s in made:
            s.stop()


@pytest.fixture
def smtp(make_smtp):
    return make_smtp()


@pytest.fixture
def outbox(account, mount, smtp, tmp_path):
    """outbox(server=None, spool_dir=None, options=(), **mount kwargs) ->
    Outbox.  retry_min=1 unless options say otherwise."""
    count = [0]

    def make(server=None, spool_dir=None, options=(), **kw):
        server = server or smtp
        count[0] += 1
        if spool_dir is None:
            spool_dir = str(tmp_path / f"spool{count[0]}")
        opts = [f"smtp={server.url()}", f"spool_dir={spool_dir}"]
        if not any(o.startswith("retry_min=") for o in options):
            opts.append("retry_min=1")
        opts.extend(options)
        m = mount(account, options=opts, **kw)
        return Outbox(m, server, spool_dir)

    return make


# ---------------------------------------------------------------- envelope

def test_envelope_to_cc_bcc(account, outbox, smtp):
    raw = (b"From: Alice Example <alice@example.org>\r\n"
           b"To: Bob <bob@example.net>, carol@example.net\r\n"
           b"Cc: Dave <dave@example.com>, bob@example.net\r\n"
           b"Subject: envelope\r\n"
           b"Bcc: eve@example.com,\r\n"
           b" Frank <frank@example.com>\r\n"
           b"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
           b"Message-ID: <envelope.1@example.org>\r\n"
           b"\r\n"
           b"Hello, everyone.\r\n")
    ob = outbox()
    ob.send("envelope.eml", raw)
    [d] = smtp.wait_deliveries(1)
    assert d.mail_from == "alice@example.org"
    assert d.rcpt_tos == ["bob@example.net", "carol@example.net",
                          "dave@example.com", "eve@example.com",
                          "frank@example.com"]
    assert d.data == without_fields(raw, "Bcc")
    assert b"eve@example.com" not in d.data
    assert b"frank@example.com" not in d.data
    # Submission was authenticated, over TLS, as the account's user.
    assert d.tls
    assert d.login == account.user
    ob.wait_gone("envelope.eml")
    ob.barrier()
    assert len(deliveries_of(smtp, "envelope")) == 1


def test_group_bcc_only_and_sender(outbox, smtp):
    raw = (b"From: Alice <alice@example.org>, Carl <carl@example.org>\r\n"
           b"Sender: Secretary <sec@example.org>\r\n"
           b"To: Friends: anna@example.net, Ben <ben@example.net>;\r\n"
           b"bcc: hidden@example.com\r\n"
           b"Subject: groups\r\n"
           b"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
           b"Message-ID: <groups.1@example.org>\r\n"
           b"\r\n"
           b"Hello, group.\r\n")
    only_bcc = message("only bcc", to=None,
                       extra=b"BCC: secret@example.com\r\n")
    ob = outbox()
    ob.send("groups.eml", raw)
    ob.send("onlybcc.eml", only_bcc)
    smtp.wait_deliveries(2)
    [d] = deliveries_of(smtp, "groups")
    # Several authors: the Sender field names the one responsible.
    assert d.mail_from == "sec@example.org"
    assert d.rcpt_tos == ["anna@example.net", "ben@example.net",
                          "hidden@example.com"]
    assert d.data == without_fields(raw, "Bcc")
    [d] = deliveries_of(smtp, "only bcc")
    assert d.rcpt_tos == ["secret@example.com"]
    assert d.data == without_fields(only_bcc, "Bcc")
    assert b"secret@example.com" not in d.data


def test_header_only_message_completed(outbox, smtp):
    raw = (b"From: alice@example.org\n"
           b"To: bob@example.net\n"
           b"Subject: header only")
    ob = outbox()
    ob.send("headeronly.eml", raw)
    [d] = smtp.wait_deliveries(1)
    lines = d.data.split(b"\r\n")
    assert lines[:3] == [b"From: alice@example.org", b"To: bob@example.net",
                         b"Subject: header only"]
    assert d.data.endswith(b"\r\n")
    assert no_bare_lf(d.data)
    names = sorted(line.split(b":", 1)[0] for line in lines if line)
    assert names == [b"Date", b"From", b"Message-ID", b"Subject", b"To"]


@pytest.mark.parametrize("offered", [True, False])
def test_utf8_address(outbox, make_smtp, offered):
    server = make_smtp(smtputf8=offered)
    raw = message("utf8 address", to="Jörg <jörg@bücher.example>")
    ob = outbox(server=server)
    ob.send("utf8addr.eml", raw)
    if offered:
        [d] = server.wait_deliveries(1)
        assert d.rcpt_tos == ["jörg@bücher.example"]
        assert "SMTPUTF8" in d.mail_options
        assert d.data == raw
    else:
        reason = ob.wait_failed("utf8addr.eml")
        assert "SMTPUTF8" in reason, reason
        assert server.snapshot()[1] == []


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"mixed"])
def test_bare_line_ends_arrive_as_crlf(outbox, smtp, eol):
    raw = message("line ends",
                  body=b"line one\r\nline two\r\n\r\n.\r\nlast\r\n")
    lines = raw.split(b"\r\n")
    if eol == b"mixed":
        ends = [b"\n", b"\r", b"\r\n"]
        dropped = b"".join(line + ends[i % 3]
                           for i, line in enumerate(lines[:-1]))
    else:
        dropped = raw.replace(b"\r\n", eol)
        assert b"\r\n" not in dropped
    ob = outbox()
    ob.send("eol.eml", dropped)
    [d] = smtp.wait_deliveries(1)
    assert d.data == raw
    assert no_bare_lf(d.data)


def test_missing_final_line_end_is_added(outbox, smtp):
    raw = message("no final newline", body=b"first\r\nno newline at the end")
    ob = outbox()
    ob.send("nofinal.eml", raw)
    [d] = smtp.wait_deliveries(1)
    assert d.data == raw + b"\r\n"


def test_dot_lines_arrive_intact(outbox, smtp):
    body = (b"before\r\n"
            b".\r\n"
            b"..x\r\n"
            b".x\r\n"
            b"...\r\n"
            b". space\r\n"
            b"after\r\n"
            b".\r\n")
    raw = message("dots", body=body)
    ob = outbox()
    ob.send("dots.eml", raw)
    [d] = smtp.wait_deliveries(1)
    assert d.data == raw


def test_8bit_utf8_body_arrives_intact(outbox, smtp):
    body = ("Grüße aus Köln — ½ € ☃ 𝄞\r\n"
            "Ünïcödé on a second line: 日本語のテキスト\r\n").encode("utf-8")
    raw = message("eight bit", body=body,
                  extra=b"MIME-Version: 1.0\r\n"
                        b"Content-Type: text/plain; charset=utf-8\r\n"
                        b"Content-Transfer-Encoding: 8bit\r\n")
    ob = outbox()
    ob.send("utf8.eml", raw)
    [d] = smtp.wait_deliveries(1)
    assert d.data == raw
    assert "BODY=8BITMIME" in d.mail_options


def test_date_and_message_id_added(outbox, smtp):
    raw = message("no date", date=False, msgid=False)
    ob = outbox()
    before = time.time()
    ob.send("nodate.eml", raw)
    [d] = smtp.wait_deliveries(1)
    after = time.time()

    [date] = header_values(d.data, "Date")
    when = email.utils.parsedate_to_datetime(date.decode())
    assert when.tzinfo is not None
    # The time of submission (a day's slack for clocks, not for speed).
    assert before - 86400 <= when.timestamp() <= after + 86400
    [msgid] = header_values(d.data, "Message-ID")
    assert re.fullmatch(rb"<[^<>@\s]+@[^<>@\s]+>", msgid), msgid
    assert without_fields(d.data, "Date", "Message-ID") == raw

    # A second message gets a Message-ID of its own.
    ob.send("nodate2.eml", message("no date 2", date=False, msgid=False))
    d2 = smtp.wait_deliveries(2)[1]
    [msgid2] = header_values(d2.data, "Message-ID")
    assert msgid2 != msgid


def test_from_option_supplies_sender(outbox, smtp):
    raw = message("default sender", sender=None)
    ob = outbox(options=["from=robot@example.org"])
    ob.send("nofrom.eml", raw)
    [d] = smtp.wait_deliveries(1)
    assert d.mail_from == "robot@example.org"
    assert header_values(d.data, "From") == [b"robot@example.org"]
    assert without_fields(d.data, "From") == raw


def test_from_header_wins_over_from_option(outbox, smtp):
    raw = message("own sender")
    ob = outbox(options=["from=robot@example.org"])
    ob.send("own.eml", raw)
    [d] = smtp.wait_deliveries(1)
    assert d.mail_from == SENDER
    assert d.data == raw


# ---------------------------------------------------------------- Sent copy

@pytest.mark.parametrize("folder,option,exists", [
    ("Sent", None, False),          # the default, created on first use
    ("Sent", None, True),
    ("Gesendete Objekte", "sent=Gesendete Objekte", False),
    ("Éléments envoyés", "sent=Éléments envoyés", True),
])
def test_sent_copy_filed_with_seen(account, outbox, smtp, folder, option,
                                   exists):
    if exists:
        with account.client() as c:
            c.create(folder)
    raw = message("filed", extra=b"Bcc: hidden@example.com\r\n")
    ob = outbox(options=[option] if option else [])
    ob.send("filed.eml", raw)
    [d] = smtp.wait_deliveries(1)
    assert b"hidden@example.com" not in d.data
    ob.wait_gone("filed.eml")
    copies = wait_filed(account, folder)
    [(uid, info)] = copies.items()
    assert "\\Seen" in info["flags"]
    # The sender's record keeps the Bcc; otherwise it is what was sent.
    assert header_values(info["raw"], "Bcc") == [b"hidden@example.com"]
    assert without_fields(info["raw"], "Bcc") == d.data
    # Filed once only.
    ob.barrier()
    titles = [header_values(i["raw"], "Subject")
              for i in account.fetch(folder).values()]
    assert titles.count([b"filed"]) == 1


@pytest.mark.parametrize("msgid", [True, False])
def test_server_filing_sent_mail_gets_no_second_copy(account, outbox, smtp,
                                                     msgid):
    """A server that files sent mail itself (Gmail, Microsoft 365): mailfs
    finds the copy by its Message-ID (its own when the message had none)
    and files none.  Without the server's copy, exactly one is filed."""
    def server_files(data):
        with account.client() as c:
            if "Sent" not in {name for name, _, _ in c.list()}:
                c.create("Sent")
            c.append("Sent", data)

    smtp.file_sent(server_files)
    ob = outbox()
    ob.send("self.eml", message("server files", msgid=msgid))
    [d] = smtp.wait_deliveries(1)
    assert header_values(d.data, "Message-ID")
    ob.wait_gone("self.eml")
    ob.barrier("first barrier")
    smtp.file_sent(None)
    ob.send("own.eml", message("mailfs files", msgid=msgid))
    ob.wait_gone("own.eml")
    ob.barrier("second barrier")
    wait_until(lambda: len(account.fetch("Sent", body=False)) == 4,
               "the copy of the second barrier")
    titles = sorted(header_values(i["raw"], "Subject")[0]
                    for i in account.fetch("Sent").values())
    assert titles == [b"first barrier", b"mailfs files", b"second barrier",
                      b"server files"], titles
    assert [i["raw"] for i in account.fetch("Sent").values()
            if header_values(i["raw"], "Subject") == [b"server files"]] == \
        [d.data]
    assert "filed it in the Sent folder itself" in ob.mount.stderr()


def test_nested_sent_folder_not_silently_ignored(account, outbox, smtp):
    """sent=A/B names a folder by its path, as the mount shows it.  Either
    the copies go there, or the mount is refused: never a mount that sends
    and quietly files nothing."""
    folder = "Archiv/Gesendet"
    try:
        ob = outbox(options=[f"sent={folder}"])
    except MountError as e:
        assert folder in e.stderr, e.stderr
        return
    ob.send("nested.eml", message("nested"))
    smtp.wait_deliveries(1)
    ob.wait_gone("nested.eml")
    found = wait_filed(account, folder)
    [(uid, info)] = found.items()
    assert header_values(info["raw"], "Subject") == [b"nested"]
    assert "\\Seen" in info["flags"]


def test_sent_none_files_nothing(account, outbox, smtp):
    ob = outbox(options=["sent=none"])
    ob.send("unfiled.eml", message("unfiled"))
    smtp.wait_deliveries(1)
    ob.wait_gone("unfiled.eml")
    ob.barrier()
    with account.client() as c:
        names = {name for name, _, _ in c.list()}
        for name in names:
            for info in c.fetch(name).values():
                assert header_values(info["raw"], "Subject") != [b"unfiled"]


# ---------------------------------------------------------------- drafts

def test_dot_file_draft_sent_only_when_renamed(outbox, smtp):
    raw = message("draft")
    ob = outbox()
    draft = ob.file(".msg.eml.tmp")
    assert write_file(draft, raw) == 0
    assert ".msg.eml.tmp" in listing(ob.path)
    assert status_of(draft) == "draft"
    assert read_bytes(draft) == raw

    ob.barrier("after draft")
    assert [subject_of(d) for d in smtp.snapshot()[0]] == ["after draft"]
    assert ".msg.eml.tmp" in listing(ob.path)

    # Renamed to another dot name it stays a draft; removed, it is gone.
    other = ob.file(".other")
    assert write_file(other, message("deleted draft")) == 0
    os.rename(other, ob.file(".other2"))
    assert status_of(ob.file(".other2")) == "draft"
    os.unlink(ob.file(".other2"))
    assert ".other2" not in listing(ob.path)

    os.rename(draft, ob.file("msg.eml"))
    assert ".msg.eml.tmp" not in listing(ob.path)
    smtp.wait(lambda s: any(subject_of(d) == "draft" for d in s.deliveries),
              what="the renamed draft")
    ob.wait_gone("msg.eml")
    ob.barrier("after rename")
    [d] = deliveries_of(smtp, "draft")
    assert d.data == raw
    assert deliveries_of(smtp, "deleted draft") == []


def test_shell_write_then_mv(outbox, smtp):
    raw = message("shell draft")
    ob = outbox()
    r = subprocess.run(["sh", "-c", 'cat > .tmp && mv .tmp msg.eml'],
                       cwd=ob.path, input=raw, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=DEADLINE)
    assert r.returncode == 0, r.stdout
    [d] = smtp.wait_deliveries(1)
    assert d.data == raw
    ob.wait_gone("msg.eml")
    ob.barrier()
    assert len(deliveries_of(smtp, "shell draft")) == 1


@pytest.mark.parametrize("command", [
    "cp {src} {dst}",
    "cp -p {src} {dst}",
    "mv {src} {dst}",
    "tee {dst} < {src} > /dev/null",
])
def test_copy_tools(outbox, smtp, tmp_path, command):
    """Files put into outbox/ with the usual tools (mv from another file
    system copies, with times and modes) are sent once each."""
    raw = message("copied")
    src = tmp_path / "message.eml"
    src.write_bytes(raw)
    ob = outbox()
    r = subprocess.run(["sh", "-c", command.format(src=src,
                                                   dst=ob.file("copied.eml"))],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=DEADLINE)
    assert r.returncode == 0, r.stdout
    [d] = smtp.wait_deliveries(1)
    assert d.data == raw
    ob.wait_gone("copied.eml")
    ob.barrier()
    assert len(deliveries_of(smtp, "copied")) == 1
    assert listing(ob.failed) == []


@pytest.mark.parametrize("command", [
    "cat {src} > {dst}",
    "{{ cat {src}; }} > {dst}",
    "dd if={src} of={dst} status=none",
])
def test_shell_redirect_into_outbox(outbox, smtp, tmp_path, command):
    """A shell redirection opens the file, dup2()s it onto a standard
    descriptor and closes the original before anything is written: that
    first close must not take the still empty file."""
    raw = message("redirected")
    src = tmp_path / "message.eml"
    src.write_bytes(raw)
    ob = outbox()
    r = subprocess.run(["sh", "-c", command.format(src=src,
                                                   dst=ob.file("redir.eml"))],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=DEADLINE)
    assert r.returncode == 0, r.stdout
    assert listing(ob.failed) == [], read_bytes(
        os.path.join(ob.failed, "redir.eml.error"))
    [d] = smtp.wait_deliveries(1)
    assert d.data == raw
    ob.wait_gone("redir.eml")
    ob.barrier()
    assert len(deliveries_of(smtp, "redirected")) == 1


def test_message_assembled_by_several_commands(outbox, smtp, tmp_path):
    """{ cat head; cat body; } > outbox/NAME: each cat is a child process
    holding the file open; the first one to finish must not take a file
    the shell is still writing."""
    raw = message("assembled", body=b"the body\r\n" * 100)
    cut = raw.index(b"\r\n\r\n") + 4
    head, body = tmp_path / "head", tmp_path / "body"
    head.write_bytes(raw[:cut])
    body.write_bytes(raw[cut:])
    ob = outbox()
    dst = ob.file("assembled.eml")
    r = subprocess.run(["sh", "-c", f"{{ cat {head}; cat {body}; }} > {dst}"
                        f" && (cat {head}; cat {body}) > {dst}.2"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=DEADLINE)
    assert r.returncode == 0, r.stdout
    ob.wait_gone("assembled.eml")
    ob.wait_gone("assembled.eml.2")
    ob.barrier()
    got = deliveries_of(smtp, "assembled")
    assert [d.data == raw for d in got] == [True, True], \
        [len(d.data) for d in got]
    assert listing(ob.failed) == []


def test_half_written_file_not_taken(outbox, smtp):
    """Until the writer closes it, a file is not sent: not when another
    process opens and closes it meanwhile, and not by the sender."""
    raw = message("half written", body=b"first half\r\nsecond half\r\n")
    cut = raw.index(b"second half")
    ob = outbox()
    path = ob.file("half.eml")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, raw[:cut])
        assert "half.eml" in listing(ob.path)
        assert status_of(path) == "writing"
        # A reader (a file manager, less, grep -r) comes and goes.
        with open(path, "rb") as f:
            f.read()
        ob.barrier("meanwhile")
        assert [subject_of(d) for d in smtp.snapshot()[1]] == ["meanwhile"]
        os.write(fd, raw[cut:])
    finally:
        os.close(fd)
    [d] = smtp.wait(lambda s: [x for x in s.deliveries
                               if subject_of(x) == "half written"],
                    what="the completed message")
    assert d.data == raw
    ob.wait_gone("half.eml")
    ob.barrier("after")
    assert len(deliveries_of(smtp, "half written")) == 1
    assert listing(ob.failed) == []


def test_shell_fd_written_by_builtins_sent_once_whole(outbox, smtp):
    """exec 3> outbox/NAME; echo ... >&3: every builtin's redirection dups
    fd 3 onto stdout and closes that copy again; the message is taken
    only when the shell closes fd 3, whole and once."""
    raw = message("by builtins", body=b"line one\r\nline two\r\n")
    ob = outbox()
    lines = raw.decode().split("\r\n")[:-1]
    script = "set -e\nexec 3> outbox/builtins.eml\n" + "".join(
        f"printf '%s\\r\\n' '{line}' >&3\n" for line in lines) + \
        "exec 3>&-\n"
    r = subprocess.run(["bash", "-c", script], cwd=ob.mount.path,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=DEADLINE)
    assert r.returncode == 0, r.stdout
    ob.wait_gone("builtins.eml")
    ob.barrier()
    got = deliveries_of(smtp, "by builtins")
    assert [d.data for d in got] == [raw]
    assert [subject_of(d) for d in smtp.snapshot()[1]] == \
        ["by builtins", "barrier"]
    assert listing(ob.failed) == []


def test_python_file_object_sent(outbox, smtp):
    raw = message("python file object")
    ob = outbox()
    with open(ob.file("py.eml"), "wb") as f:
        f.write(raw[:10])
        f.flush()
        f.write(raw[10:])
    ob.wait_gone("py.eml")
    ob.barrier()
    assert [d.data for d in deliveries_of(smtp, "python file object")] == \
        [raw]


def close_in_thread(fd):
    """Closes fd from another thread of this process; returns the errno
    close() failed with, or None."""
    result = []

    def run():
        try:
            os.close(fd)
            result.append(None)
        except OSError as e:
            result.append(e.errno)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return result[0]


def test_close_from_another_thread(outbox, smtp):
    """Thread pools (Node's fs, Go) open in one thread and close in
    another: close() reports a refused message all the same, and a good
    one is sent."""
    ob = outbox()
    fd = os.open(ob.file("thread-bad.eml"),
                 os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, message("no recipient", to=None))
    assert close_in_thread(fd) == errno.EINVAL
    assert "thread-bad.eml" in listing(ob.failed)

    raw = message("closed by a thread")
    fd = os.open(ob.file("thread-good.eml"),
                 os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, raw)
    assert close_in_thread(fd) is None
    ob.wait_gone("thread-good.eml")
    ob.barrier()
    assert [d.data for d in deliveries_of(smtp, "closed by a thread")] == \
        [raw]
    assert [subject_of(d) for d in smtp.snapshot()[1]] == \
        ["closed by a thread", "barrier"]


def test_unicode_file_name(outbox, smtp):
    ob = outbox()
    name = "Grüße an Jörg — 2025.eml"
    ob.send(name, message("unicode name"))
    [d] = smtp.wait_deliveries(1)
    assert subject_of(d) == "unicode name"
    ob.wait_gone(name)


def test_many_messages_each_sent_once(outbox, smtp):
    ob = outbox()
    subjects = [f"bulk {i:02d}" for i in range(15)]
    raws = {}
    for i, subj in enumerate(subjects):
        raws[subj] = message(subj, to=f"r{i}@example.net")
        ob.send(f"bulk{i:02d}.eml", raws[subj])
    smtp.wait_deliveries(len(subjects))
    wait_until(lambda: listing(ob.path) == ["failed"], "an empty queue")
    ob.barrier()
    deliveries = smtp.snapshot()[0]
    got = sorted(subject_of(d) for d in deliveries if d.data in
                 raws.values())
    assert got == subjects
    for i, subj in enumerate(subjects):
        [d] = deliveries_of(smtp, subj)
        assert d.rcpt_tos == [f"r{i}@example.net"]
        assert d.data == raws[subj]


def test_large_message_intact(outbox, smtp):
    line = b"".join(bytes([0x41 + (i % 26)]) for i in range(76)) + b"\r\n"
    body = b"".join(b"%06d " % i + line for i in range(40000))
    assert len(body) > 3 * 1024 * 1024
    raw = message("large", body=body)
    ob = outbox()
    ob.send("large.eml", raw)
    [d] = smtp.wait_deliveries(1)
    assert len(d.data) == len(raw)
    assert d.data == raw


# ---------------------------------------------------------------- refused

@pytest.mark.parametrize("case", ["no-recipient", "no-sender"])
def test_invalid_message_refused_at_close(outbox, smtp, case):
    if case == "no-recipient":
        raw = message("invalid", to=None)
        words = ["recipient"]
    else:
        raw = message("invalid", sender=None)
        words = ["sender", "From"]
    ob = outbox()
    path = ob.file("invalid.eml")
    assert close_errno(path, raw) == errno.EINVAL

    assert "invalid.eml" not in listing(ob.path)
    assert set(listing(ob.failed)) == {"invalid.eml", "invalid.eml.error"}
    assert read_bytes(os.path.join(ob.failed, "invalid.eml")) == raw
    reason = read_bytes(os.path.join(ob.failed, "invalid.eml.error")) \
        .decode()
    assert all(w in reason for w in words), reason

    ob.barrier()
    deliveries, attempts, events = smtp.snapshot()
    assert [subject_of(d) for d in attempts] == ["barrier"]
    assert [subject_of(d) for d in deliveries] == ["barrier"]


def test_hostile_crlf_addresses_refused(outbox, smtp):
    inject = b"RCPT TO:<evil@x>"
    hostile = {
        "bare-line.eml":
            b"To: bob@example.net\r\n" + inject + b"\r\n",
        "in-angle.eml":
            b"To: Bob <bob@example.net\r\n" + inject + b">\r\n",
        "in-quotes.eml":
            b'To: "bob\r\n' + inject + b'"@example.net\r\n',
        "folded-quotes.eml":
            b'To: "bob\r\n ' + inject + b'"@example.net\r\n',
        "bare-cr.eml":
            b"To: bob@example.net\r" + inject + b"\r\n",
        "bare-lf.eml":
            b"To: bob@example.net\n" + inject + b"\r\n",
        "nul.eml":
            b"To: bob@example.net\x00\r\n" + inject + b"\r\n",
        "cc-crlf.eml":
            b"To: bob@example.net\r\nCc: <carol@example.net\r\n"
            + inject + b">\r\n",
        "from-crlf.eml":
            b"To: bob@example.net\r\n",
    }
    ob = outbox()
    for name, to_lines in hostile.items():
        sender = b"From: alice@example.org\r\n"
        if name == "from-crlf.eml":
            sender = b"From: <alice@example.org\r\nMAIL FROM:<evil@x>>\r\n"
        raw = (sender + to_lines +
               b"Subject: hostile\r\n"
               b"Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
               b"Message-ID: <hostile.1@example.org>\r\n"
               b"\r\n"
               b"body\r\n")
        assert close_errno(ob.file(name), raw) == errno.EINVAL, name
        assert name not in listing(ob.path), name
        assert name in listing(ob.failed), name

    ob.barrier()
    deliveries, attempts, events = smtp.snapshot()
    assert [subject_of(d) for d in attempts] == ["barrier"]
    for kind, detail in events:
        assert "evil" not in detail, (kind, detail)
    assert [d for k, d in events if k == "rcpt"] == \
        ["bob@example.net -> 250 2.1.5 OK"]


def test_bad_name_refused(outbox, smtp):
    ob = outbox()
    with pytest.raises(OSError) as e:
        write_file(ob.file("x.error"), message("bad name"))
    assert e.value.errno == errno.EINVAL
    assert "x.error" not in listing(ob.path)
    ob.barrier()
    assert [subject_of(d) for d in smtp.snapshot()[1]] == ["barrier"]


def test_name_length_limit(outbox, smtp):
    """Names of up to 240 bytes are taken (room is left for "~N.error" in
    failed/); longer ones are refused as too long."""
    ob = outbox()
    longest = "n" * 236 + ".eml"
    ob.send(longest, message("longest name"))
    with pytest.raises(OSError) as e:
        write_file(ob.file("n" * 237 + ".eml"), message("too long"))
    assert e.value.errno == errno.ENAMETOOLONG
    ob.wait_gone(longest)
    ob.barrier()
    assert [subject_of(d) for d in smtp.snapshot()[1]] == \
        ["longest name", "barrier"]


# ---------------------------------------------------------------- SMTP errors

def test_550_rcpt_moves_to_failed(account, outbox, smtp):
    reply = "550 5.1.1 <nobody@example.net>: Recipient address rejected:" \
            " User unknown in virtual mailbox table"
    smtp.reject_rcpt("nobody@example.net", reply)
    raw = message("unknown user", to="nobody@example.net")
    ob = outbox()
    ob.send("unknown.eml", raw)
    reason = ob.wait_failed("unknown.eml")
    assert reply in reason
    assert "nobody@example.net" in reason
    assert "unknown.eml" not in listing(ob.path)
    assert read_bytes(os.path.join(ob.failed, "unknown.eml")) \
        .endswith(b"\r\n\r\nHello.\r\n")
    ob.barrier()
    deliveries, attempts, _ = smtp.snapshot()
    assert [subject_of(d) for d in attempts] == ["barrier"]
    # Nobody got it: no copy in Sent claims it was sent.
    with account.client() as c:
        if "Sent" in {name for name, _, _ in c.list()}:
            for info in c.fetch("Sent").values():
                assert header_values(info["raw"], "Subject") != \
                    [b"unknown user"]


def test_sender_rejected_moves_to_failed(outbox, smtp):
    reply = "553 5.7.1 <alice@example.org>: Sender address rejected:" \
            " not owned by user"
    smtp.reject_mail(reply)
    ob = outbox()
    ob.send("sender.eml", message("sender refused"))
    reason = ob.wait_failed("sender.eml")
    assert reply in reason
    smtp.reject_mail(None)
    ob.barrier()
    assert [subject_of(d) for d in smtp.snapshot()[1]] == ["barrier"]


def test_refusal_does_not_disturb_next_message(outbox, make_smtp):
    """Messages refused in different ways and a good one, all due at
    once: each gets its own outcome."""
    server = make_smtp(start=False)
    server.reject_rcpt("nobody@example.net")
    ob = outbox(server=server)
    ob.send("a-refused.eml", message("refused", to="nobody@example.net"))
    ob.send("b-good.eml", message("good"))
    ob.send("c-partial.eml",
            message("partial", to="nobody@example.net, carol@example.net"))
    ob.send("d-good.eml", message("good too"))
    for name in ("a-refused.eml", "b-good.eml", "c-partial.eml",
                 "d-good.eml"):
        wait_until(lambda: status_of(ob.file(name)).startswith("deferred"),
                   f"{name} to be deferred")
    server.start()
    ob.wait_failed("a-refused.eml")
    ob.wait_failed("c-partial.eml")
    wait_until(lambda: listing(ob.path) == ["failed"], "an empty queue")
    ob.barrier()
    got = {subject_of(d): d.rcpt_tos for d in server.snapshot()[0]}
    assert got == {"good": ["bob@example.net"],
                   "partial": ["carol@example.net"],
                   "good too": ["bob@example.net"],
                   "barrier": ["bob@example.net"]}
    assert len(server.snapshot()[0]) == 4


def test_550_data_moves_to_failed(outbox, smtp):
    reply = "554 5.7.1 Message rejected as spam by content filter"
    smtp.reject_data(reply)
    ob = outbox()
    ob.send("spam.eml", message("spam"))
    reason = ob.wait_failed("spam.eml")
    assert reply in reason
    smtp.reject_data(None)
    ob.barrier()
    deliveries, attempts, _ = smtp.snapshot()
    assert [subject_of(d) for d in attempts] == ["spam", "barrier"]
    assert [subject_of(d) for d in deliveries] == ["barrier"]


def test_451_retried_and_delivered_once(outbox, smtp):
    smtp.fail_data(2, "451 4.7.1 Greylisted, please try again later")
    raw = message("greylisted")
    ob = outbox()
    ob.send("grey.eml", raw)
    smtp.wait(lambda s: any(subject_of(d) == "greylisted"
                            for d in s.deliveries), what="the retry")
    ob.wait_gone("grey.eml")
    ob.barrier()
    deliveries, attempts, _ = smtp.snapshot()
    assert [subject_of(d) for d in attempts] == \
        ["greylisted", "greylisted", "greylisted", "barrier"]
    [d] = deliveries_of(smtp, "greylisted")
    assert d.data == raw
    assert "grey.eml" not in listing(ob.failed)


def test_deferred_status_names_the_reply(outbox, smtp):
    reply = "451 4.3.2 System busy, come back in a while"
    smtp.fail_data(1, reply)
    ob = outbox(options=["retry_min=3600"])
    path = ob.send("busy.eml", message("busy"))
    smtp.wait_attempts(1)
    st = wait_until(lambda: status_of(path).startswith("deferred until")
                    and status_of(path), "the deferred status")
    assert reply in st
    assert "busy.eml" in listing(ob.path)
    assert "busy.eml" not in listing(ob.failed)


def test_dropped_connection_retried(outbox, smtp):
    smtp.drop_data(1)
    raw = message("dropped")
    ob = outbox()
    ob.send("dropped.eml", raw)
    smtp.wait(lambda s: any(subject_of(d) == "dropped"
                            for d in s.deliveries), what="the retry")
    ob.wait_gone("dropped.eml")
    ob.barrier()
    deliveries, attempts, _ = smtp.snapshot()
    assert [d.reply for d in attempts if subject_of(d) == "dropped"][0] == \
        "dropped"
    [d] = deliveries_of(smtp, "dropped")
    assert d.data == raw


def test_partial_rejection(account, outbox, smtp):
    reply = "550 5.1.1 <gone@example.net>: mailbox unavailable"
    smtp.reject_rcpt("gone@example.net", reply)
    raw = message("partial", to="bob@example.net, gone@example.net",
                  extra=b"Cc: carol@example.net\r\n")
    ob = outbox()
    ob.send("partial.eml", raw)
    reason = ob.wait_failed("partial.eml")
    assert reply in reason
    assert "gone@example.net" in reason
    [d] = smtp.snapshot()[0]
    assert d.rcpt_tos == ["bob@example.net", "carol@example.net"]
    assert d.data == raw
    # Those who received it are named, so the user does not resend to them.
    delivered = reason.split("gone@example.net", 1)[1]
    assert "bob@example.net" in delivered and "carol@example.net" in delivered
    ob.barrier()
    assert len(deliveries_of(smtp, "partial")) == 1
    # It did reach someone: the Sent copy exists.
    wait_until(lambda: any(header_values(i["raw"], "Subject") == [b"partial"]
                           for i in account.fetch("Sent").values()),
               "the Sent copy")


def test_temporary_rcpt_failure_not_resent_to_others(account, outbox, smtp):
    smtp.fail_rcpt("carol@example.net", 1)
    raw = message("later for carol",
                  to="bob@example.net, carol@example.net, dave@example.com")
    ob = outbox()
    ob.send("later.eml", raw)
    first, second = smtp.wait_deliveries(2)
    assert first.rcpt_tos == ["bob@example.net", "dave@example.com"]
    assert second.rcpt_tos == ["carol@example.net"]
    assert first.data == raw and second.data == raw
    ob.wait_gone("later.eml")
    ob.barrier()
    assert len(deliveries_of(smtp, "later for carol")) == 2
    assert "later.eml" not in listing(ob.failed)
    sent = [i for i in account.fetch("Sent").values()
            if header_values(i["raw"], "Subject") == [b"later for carol"]]
    assert len(sent) == 1


# ---------------------------------------------------------------- restarts

def test_server_down_then_sigkill_and_remount(outbox, make_smtp, tmp_path):
    server = make_smtp(start=False)
    spool = str(tmp_path / "spool-kept")
    raw = message("survives")
    ob = outbox(server=server, spool_dir=spool)
    path = ob.file("survives.eml")
    assert write_file(path, raw) == 0   # queued although nothing listens

    assert "survives.eml" in listing(ob.path)
    st = wait_until(lambda: status_of(path).startswith("deferred until")
                    and status_of(path), "the deferred status")
    assert re.match(r"deferred until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
                    r" [+-]\d{4}: .+", st), st
    # The queued form can be read back.
    queued = read_bytes(path)
    assert without_fields(queued, "Date", "Message-ID") == \
        without_fields(raw, "Date", "Message-ID")

    # Queued mail is private.
    for dirpath, dirnames, filenames in os.walk(spool):
        assert os.stat(dirpath).st_mode & 0o077 == 0, dirpath
        for f in filenames:
            p = os.path.join(dirpath, f)
            assert os.stat(p).st_mode & 0o077 == 0, p
    kill_mount(ob.mount)
    assert server.snapshot()[1] == []

    server.start()
    ob2 = outbox(server=server, spool_dir=spool)
    [d] = server.wait_deliveries(1)
    assert d.data == raw
    ob2.wait_gone("survives.eml")
    ob2.barrier()
    assert len(deliveries_of(server, "survives")) == 1
    assert listing(ob2.failed) == []


def test_server_restart_while_mounted(outbox, smtp):
    smtp.stop()
    raw = message("while down")
    ob = outbox()
    path = ob.send("down.eml", raw)
    wait_until(lambda: status_of(path).startswith("deferred until"),
               "the deferred status")
    smtp.start()
    [d] = smtp.wait_deliveries(1)
    assert d.data == raw
    ob.wait_gone("down.eml")
    ob.barrier()
    assert len(deliveries_of(smtp, "while down")) == 1


def test_cancel_queued_message(outbox, make_smtp):
    server = make_smtp(start=False)
    ob = outbox(server=server, options=["retry_min=3600"])
    keep = ob.send("keep.eml", message("keep"))
    drop = ob.send("cancel.eml", message("cancel"))
    wait_until(lambda: status_of(drop).startswith("deferred until"),
               "the deferred status")
    os.unlink(drop)
    assert listing(ob.path) == ["failed", "keep.eml"]
    assert status_of(keep) in ("queued", "sending") or \
        status_of(keep).startswith("deferred until")
    with pytest.raises(OSError):
        write_file(keep, message("edited"))
    # A draft cannot take the name of a queued message.
    assert write_file(ob.file(".new"), message("new")) == 0
    with pytest.raises(FileExistsError):
        os.rename(ob.file(".new"), keep)
    assert listing(ob.path) == [".new", "failed", "keep.eml"]
    assert without_fields(read_bytes(keep), "Date", "Message-ID") == \
        without_fields(message("keep"), "Date", "Message-ID")


def kill_mount(m):
    """SIGKILL, as a crash would; then the lazy unmount a user would do."""
    m.proc.kill()
    m.proc.wait(timeout=30)
    subprocess.run([FUSERMOUNT, "-uz", m.path], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    m.kill()


def test_sigkill_during_data_resent_after_restart(outbox, smtp, tmp_path):
    """Killed while the server holds the reply to the final dot: the
    outcome is unknown to mailfs, so it sends again after the restart."""
    spool = str(tmp_path / "spool-kept")
    raw = message("in flight")
    smtp.hold_data(1)
    ob = outbox(spool_dir=spool)
    ob.send("inflight.eml", raw)
    smtp.wait(lambda s: any(k == "data-held" for k, _ in s.events),
              what="the message to reach the final dot")
    kill_mount(ob.mount)
    smtp.stop()
    smtp.release()
    assert smtp.snapshot()[0] == []

    smtp.start()
    ob2 = outbox(spool_dir=spool)
    [d] = smtp.wait_deliveries(1)
    assert d.data == raw
    ob2.wait_gone("inflight.eml")
    ob2.barrier()
    assert len(deliveries_of(smtp, "in flight")) == 1


def test_unmount_during_data_keeps_message(outbox, smtp, tmp_path):
    """Unmounting does not wait for a server that takes its time, and the
    interrupted message stays queued for the next mount."""
    spool = str(tmp_path / "spool-kept")
    raw = message("interrupted")
    smtp.hold_data(1)
    ob = outbox(spool_dir=spool)
    ob.send("interrupted.eml", raw)
    smtp.wait(lambda s: any(k == "data-held" for k, _ in s.events),
              what="the message to reach the final dot")
    ob.mount.unmount()   # asserts a clean exit
    smtp.release()
    assert smtp.snapshot()[0] == []

    ob2 = outbox(spool_dir=spool)
    [d] = smtp.wait_deliveries(1)
    assert d.data == raw
    ob2.wait_gone("interrupted.eml")
    ob2.barrier()
    assert len(deliveries_of(smtp, "interrupted")) == 1


def test_drafts_and_refused_files_survive_unmount(outbox, smtp, tmp_path):
    """A draft and a file whose close() failed for want of space stay in
    outbox/ across an unmount, unsent, until renamed."""
    fs = str(tmp_path / "spoolfs")
    with tmpfs(fs, "1m", "mailfs-test-spool"):
        spool = os.path.join(fs, "spool")
        ob = outbox(spool_dir=spool)
        draft = message("a draft")
        assert write_file(ob.file(".draft"), draft) == 0

        # Room for the file being written, not for its queued copy too.
        filler = leave_room(fs, 64 * 1024)
        big = message("no room", body=(b"x" * 70 + b"\r\n") * 580)
        assert close_errno(ob.file("big.eml"), big) in (errno.ENOSPC,
                                                        errno.EIO)
        assert status_of(ob.file("big.eml")) == "not queued"
        ob.mount.unmount()
        os.unlink(filler)

        ob2 = outbox(spool_dir=spool)
        assert listing(ob2.path) == [".draft", "big.eml", "failed"]
        assert read_bytes(ob2.file(".draft")) == draft
        assert read_bytes(ob2.file("big.eml")) == big
        assert status_of(ob2.file("big.eml")) == "not queued"
        assert status_of(ob2.file(".draft")) == "draft"
        ob2.barrier("after remount")
        assert [subject_of(d) for d in smtp.snapshot()[1]] == \
            ["after remount"]

        os.rename(ob2.file("big.eml"), ob2.file("big2.eml"))
        os.rename(ob2.file(".draft"), ob2.file("draft.eml"))
        ob2.wait_gone("big2.eml")
        ob2.wait_gone("draft.eml")
        ob2.barrier("after rename")
        assert [d.data for d in deliveries_of(smtp, "no room")] == [big]
        assert [d.data for d in deliveries_of(smtp, "a draft")] == [draft]
        ob2.mount.unmount()


def test_file_cut_off_by_a_crash_is_not_sent(outbox, smtp, tmp_path):
    """A file being written when mailfs is killed is listed again after
    the remount but never sent as it is: it may be a fragment."""
    spool = str(tmp_path / "spool-kept")
    raw = message("cut off")
    ob = outbox(spool_dir=spool)
    fd = os.open(ob.file("cut.eml"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, raw[:40])
        kill_mount(ob.mount)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    ob2 = outbox(spool_dir=spool)
    assert "cut.eml" in listing(ob2.path)
    assert read_bytes(ob2.file("cut.eml")) == raw[:40]
    ob2.barrier("after the crash")
    assert [subject_of(d) for d in smtp.snapshot()[1]] == ["after the crash"]


# Where the daemon is killed (MAILFS_TEST_KILL_AT) and what the README
# promises after the remount: (deliveries, copies in Sent).
KILL_STEPS = {
    "outbox-before-data": (1, 1),   # recipients saved as in flight
    "outbox-after-data": (2, 1),    # the server's 250 not yet saved
    "outbox-after-state": (1, 1),   # delivery saved, nothing filed
    "outbox-before-filing": (1, 1),  # nothing in Sent: one to be filed
    "outbox-after-filing": (1, 1),  # filed in Sent, not yet saved: found
    "outbox-after-finish": (1, 1),  # off the queue
}


@pytest.mark.parametrize("step", sorted(KILL_STEPS))
def test_sigkill_at_each_delivery_step(account, outbox, smtp, tmp_path,
                                       step):
    """Killed at each step of a delivery, mailfs delivers the message
    after the remount at least once, and more often (or files more than
    one copy) only where the README says it can."""
    deliveries, copies = KILL_STEPS[step]
    spool = str(tmp_path / "spool-kept")
    subject = f"killed at {step}"
    raw = message(subject)
    ob = outbox(spool_dir=spool, env={"MAILFS_TEST_KILL_AT": step})
    ob.send("killed.eml", raw)
    assert ob.mount.proc.wait(timeout=DEADLINE) == -signal.SIGKILL
    kill_mount(ob.mount)

    ob2 = outbox(spool_dir=spool)
    ob2.wait_gone("killed.eml")
    ob2.barrier()
    got = deliveries_of(smtp, subject)
    assert len(got) == deliveries and all(d.data == raw for d in got)
    filed = [header_values(i["raw"], "Subject")
             for i in account.fetch("Sent").values()]
    assert filed.count([subject.encode()]) == copies, filed
    assert listing(ob2.failed) == []


def test_failed_state_save_does_not_resend(outbox, smtp, tmp_path):
    """The server took the message but its state could not be saved (a
    full disk): the next attempts in the same run do not send it again."""
    fs = str(tmp_path / "spoolfs")
    with tmpfs(fs, "1m", "mailfs-test-spool"):
        ob = outbox(spool_dir=os.path.join(fs, "spool"))
        raw = message("state not saved")
        smtp.hold_data(1)
        ob.send("unsaved.eml", raw)
        smtp.wait(lambda s: any(k == "data-held" for k, _ in s.events),
                  what="the message to reach the final dot")
        filler = fill_up(fs)
        smtp.release()
        wait_until(lambda: "No space left" in ob.mount.stderr(),
                   "the failed save")
        os.unlink(filler)
        ob.wait_gone("unsaved.eml")
        ob.barrier()
        assert [d.data for d in deliveries_of(smtp, "state not saved")] == \
            [raw]
        ob.mount.unmount()


def test_gives_up_after_retry_max_age(outbox, make_smtp):
    server = make_smtp(start=False)
    ob = outbox(server=server, options=["retry_max_age=2"])
    raw = message("too old")
    ob.send("old.eml", raw)
    reason = ob.wait_failed("old.eml")
    assert "gave up" in reason, reason
    assert "bob@example.net" in reason
    assert "old.eml" not in listing(ob.path)
    assert without_fields(read_bytes(os.path.join(ob.failed, "old.eml")),
                          "Date", "Message-ID") == \
        without_fields(raw, "Date", "Message-ID")


# ---------------------------------------------------------------- failed/

def test_rm_failed_entry(outbox, smtp):
    ob = outbox()
    assert close_errno(ob.file("bad.eml"), message("bad", to=None)) == \
        errno.EINVAL
    assert close_errno(ob.file("bad2.eml"), message("bad2", to=None)) == \
        errno.EINVAL
    assert listing(ob.failed) == ["bad.eml", "bad.eml.error", "bad2.eml",
                                  "bad2.eml.error"]
    os.unlink(os.path.join(ob.failed, "bad.eml"))
    assert listing(ob.failed) == ["bad2.eml", "bad2.eml.error"]
    assert not os.path.exists(os.path.join(ob.failed, "bad.eml"))
    os.unlink(os.path.join(ob.failed, "bad2.eml.error"))
    assert listing(ob.failed) == ["bad2.eml"]
    os.unlink(os.path.join(ob.failed, "bad2.eml"))
    assert listing(ob.failed) == []
    with pytest.raises(FileNotFoundError):
        os.unlink(os.path.join(ob.failed, "bad.eml"))


def test_failed_names_do_not_collide(outbox, smtp):
    ob = outbox()
    first = message("first", to=None)
    second = message("second", to=None)
    assert close_errno(ob.file("same.eml"), first) == errno.EINVAL
    assert close_errno(ob.file("same.eml"), second) == errno.EINVAL
    assert listing(ob.failed) == ["same.eml", "same.eml.error",
                                  "same.eml~2", "same.eml~2.error"]
    assert read_bytes(os.path.join(ob.failed, "same.eml")) == first
    assert read_bytes(os.path.join(ob.failed, "same.eml~2")) == second


# ---------------------------------------------------------------- TLS, AUTH

@pytest.mark.parametrize("options", [[], ["allow_plaintext"]],
                         ids=["default", "imap-allow-plaintext"])
def test_starttls_required(outbox, make_smtp, options):
    """A server (or a man in the middle) that offers no STARTTLS gets no
    AUTH; allow_plaintext is for the IMAP source only."""
    plain = make_smtp(tls="none")
    ob = outbox(server=plain, options=options)
    path = ob.send("secret.eml", message("secret"))
    st = wait_until(lambda: status_of(path).startswith("deferred until")
                    and status_of(path), "the deferred status")
    assert "STARTTLS" in st, st
    _, attempts, events = plain.snapshot()
    assert attempts == []
    kinds = {k for k, _ in events}
    assert not kinds & {"auth", "auth-failed", "mail", "rcpt", "data"}, events
    assert "secret.eml" in listing(ob.path)


def test_smtp_allow_plaintext_on_loopback(account, outbox, make_smtp):
    plain = make_smtp(tls="none")
    raw = message("plain text allowed")
    ob = outbox(server=plain, options=["smtp_allow_plaintext"])
    ob.send("plain.eml", raw)
    [d] = plain.wait_deliveries(1)
    assert d.data == raw
    assert not d.tls and d.login == account.user
    assert "smtp_allow_plaintext" in ob.mount.stderr()


def test_smtps_implicit_tls(account, outbox, make_smtp):
    server = make_smtp(tls="implicit")
    assert server.url().startswith("smtps://")
    raw = message("implicit tls")
    ob = outbox(server=server)
    ob.send("tls.eml", raw)
    [d] = server.wait_deliveries(1)
    assert d.data == raw
    assert d.tls and d.login == account.user


@pytest.mark.parametrize("mechs", [("PLAIN",), ("LOGIN",)])
def test_smtp_password_file(account, outbox, make_smtp, tmp_path, mechs):
    pw = "smtp-only-Secret-4711"
    pwfile = tmp_path / "smtp.password"
    pwfile.write_text(pw + "\n")
    os.chmod(pwfile, 0o600)
    server = make_smtp(password=pw, auth_mechanisms=mechs)
    ob = outbox(server=server, options=[f"smtp_password_file={pwfile}"])
    ob.mount.secrets.append(pw)
    ob.send("pw.eml", message("own password"))
    [d] = server.wait_deliveries(1)
    assert d.login == account.user
    events = server.snapshot()[2]
    assert ("auth", f"{mechs[0]} {account.user}") in events


def test_wrong_password_keeps_message_queued(outbox, make_smtp):
    server = make_smtp(password="not-the-account-password")
    ob = outbox(server=server)
    path = ob.send("kept.eml", message("kept"))
    st = wait_until(lambda: status_of(path).startswith("deferred until")
                    and status_of(path), "the deferred status")
    assert "kept.eml" in listing(ob.path)
    assert "kept.eml" not in listing(ob.failed)
    assert server.snapshot()[1] == []
    assert st


# ---------------------------------------------------------------- no smtp=

def test_no_outbox_without_smtp(account, mount):
    m = mount(account)
    assert "outbox" not in os.listdir(m.path)
    assert not os.path.exists(os.path.join(m.path, "outbox"))


@pytest.mark.parametrize("option,words", [
    ("from=not an address", ["from=", "not an address"]),
    ("from=alice@example.org\r\nRCPT TO:<evil@x>", ["from="]),
    ("smtp=https://user@127.0.0.1:1", ["https://user@127.0.0.1:1"]),
])
def test_bad_outbox_options_refused(account, mount_fails, tmp_path, option,
                                    words):
    options = [f"smtp=smtp://{account.user}@127.0.0.1:1",
               f"spool_dir={tmp_path / 'spool'}"]
    if option.startswith("smtp="):
        options[0] = option
    else:
        options.append(option)
    rc, err = mount_fails(account, options=options)
    assert rc != 0
    assert all(w in err for w in words), err
