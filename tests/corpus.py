"""A deterministic, realistic set of messages for the tests and the demo.

build() returns the same bytes on every run (fixed seed, fixed dates).
Every message uses CRLF line endings, as IMAP stores them.

The corpus covers: plain text, multipart/alternative, multipart/mixed
with a ~3 MiB base64 attachment, an 8-bit UTF-8 body, RFC 2047 subjects
(UTF-8 "B" and ISO-8859-1 "Q"), a folded long subject, no Subject, no
Date, a Subject with '/', and two byte-identical duplicates.  One word,
GREP_WORD, occurs in exactly one message body.
"""

import base64
import datetime
import random

SEED = 20250604
GREP_WORD = "quokkafjord"
UTC = datetime.timezone.utc

_WORDS = (
    "the storage migration is on track and the team agreed to move the "
    "remaining services next week please review the attached plan before "
    "friday we still need numbers for the budget and a date for the "
    "rollout of the new backup system thanks for the quick feedback on "
    "the draft let me know if anything is missing from the list of open "
    "questions the meeting notes are below as usual"
).split()


class Message:
    """One message of the corpus.

    key           short stable identifier ("plain", "dup1", ...)
    raw           the exact bytes (CRLF line ends)
    internaldate  Unix time to APPEND with (INTERNALDATE)
    flags         flags to APPEND with
    folder        '/'-separated folder path ("INBOX" by default)
    date_utc      the Date header as an aware UTC datetime, or None
    subject       the decoded Subject, or None when there is none
    slug_words    lowercase words the file name's subject part should show
    """

    def __init__(self, key, raw, internaldate, flags=(), folder="INBOX",
                 date_utc=None, subject=None, slug_words=()):
        self.key = key
        self.raw = raw
        self.internaldate = internaldate
        self.flags = tuple(flags)
        self.folder = folder
        self.date_utc = date_utc
        self.subject = subject
        self.slug_words = tuple(slug_words)

    def __repr__(self):
        return f"<Message {self.key} {len(self.raw)} bytes>"

    @property
    def name_prefix(self):
        """The "YYYY-MM-DD_HHMM" the file name starts with: the Date header
        in UTC, or INTERNALDATE when there is no Date header."""
        when = self.date_utc or datetime.datetime.fromtimestamp(
            self.internaldate, UTC)
        return when.strftime("%Y-%m-%d_%H%M")


def _crlf(text):
    """Joins lines with CRLF; the input uses '\\n'."""
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def _paragraphs(rng, n, width=72, extra=()):
    """n paragraphs of plain words, wrapped at width, '\\n' line ends."""
    out = []
    for i in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(25, 60))]
        if i == 0:
            words[0] = words[0].capitalize()
        for w in extra:
            words.insert(rng.randrange(len(words)), w)
        lines, line = [], ""
        for w in words:
            if line and len(line) + 1 + len(w) > width:
                lines.append(line)
                line = w
            else:
                line = f"{line} {w}" if line else w
        lines.append(line + ".")
        out.append("\n".join(lines))
        extra = ()
    return "\n\n".join(out) + "\n"


def _msgid(rng, domain="example.org"):
    return f"<{rng.getrandbits(64):016x}.{rng.getrandbits(32):08x}@{domain}>"


def _date_header(dt):
    """RFC 5322 date, keeping dt's own offset."""
    days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep",
              "Oct", "Nov", "Dec"]
    off = dt.utcoffset()
    minutes = int(off.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return (f"{days[dt.weekday()]}, {dt.day:02d} {months[dt.month - 1]} "
            f"{dt.year} {dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} "
            f"{sign}{minutes // 60:02d}{minutes % 60:02d}")


def _tz(hours, minutes=0):
    return datetime.timezone(datetime.timedelta(hours=hours, minutes=minutes))


def _headers(fields):
    """fields: list of (name, value or None); None values are left out.
    Values may contain '\\n ' folds."""
    return "".join(f"{k}: {v}\n" for k, v in fields if v is not None)


def _b64_lines(data, width=76):
    text = base64.b64encode(data).decode("ascii")
    return "\n".join(text[i:i + width] for i in range(0, len(text), width))


def _message(head_fields, body):
    """head_fields and body use '\\n'; body is str (encoded UTF-8) or bytes
    with '\\n' line ends.  Returns CRLF bytes."""
    head = _crlf(_headers(head_fields)).encode("utf-8")
    if isinstance(body, str):
        body = body.encode("utf-8")
    body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return head + b"\r\n" + body


def build(seed=SEED, attachment_size=3 * 1024 * 1024):
    """The test corpus: a list of Message, in APPEND order."""
    rng = random.Random(seed)
    msgs = []
    base = datetime.datetime(2025, 6, 2, 9, 0, 0, tzinfo=UTC)

    def add(key, fields, body, date, flags=(), subject=None, slug_words=(),
            has_date=True):
        idate = int((base + datetime.timedelta(hours=len(msgs) * 7,
                                               minutes=len(msgs) * 3,
                                               seconds=len(msgs) * 11)
                     ).timestamp())
        fields = [("Date", _date_header(date) if has_date else None)] + fields
        raw = _message(fields, body)
        m = Message(key, raw, idate, flags,
                    date_utc=date.astimezone(UTC).replace(second=0)
                    if has_date else None,
                    subject=subject, slug_words=slug_words)
        msgs.append(m)
        return m

    alice = "Alice Example <alice@example.org>"
    bob = "Bob Builder <bob@example.net>"
    carol = "=?UTF-8?Q?Car=C3=B6l_M=C3=BCller?= <carol@example.de>"

    # 1. plain text
    add("plain",
        [("From", alice), ("To", bob), ("Subject", "Quarterly report"),
         ("Message-ID", _msgid(rng)), ("MIME-Version", "1.0"),
         ("Content-Type", "text/plain; charset=us-ascii")],
        "Hi Bob,\n\n" + _paragraphs(rng, 4) + "\n-- \nAlice\n",
        datetime.datetime(2025, 6, 4, 12, 0, 17, tzinfo=_tz(2)),
        flags=("\\Seen",), subject="Quarterly report",
        slug_words=("quarterly", "report"))

    # 2. multipart/alternative
    text = _paragraphs(rng, 2)
    html = "<html><body>" + "".join(
        f"<p>{p}</p>" for p in text.strip().split("\n\n")) + "</body></html>\n"
    body = ("This is a multi-part message in MIME format.\n\n"
            "--alt-7f3a\n"
            "Content-Type: text/plain; charset=us-ascii\n\n"
            f"{text}\n"
            "--alt-7f3a\n"
            "Content-Type: text/html; charset=us-ascii\n\n"
            f"{html}\n"
            "--alt-7f3a--\n")
    add("alternative",
        [("From", bob), ("To", alice), ("Subject", "Team lunch on Friday"),
         ("Message-ID", _msgid(rng)), ("MIME-Version", "1.0"),
         ("Content-Type",
          'multipart/alternative; boundary="alt-7f3a"')],
        body, datetime.datetime(2025, 6, 5, 8, 30, 0, tzinfo=_tz(-4)),
        subject="Team lunch on Friday", slug_words=("team", "lunch", "friday"))

    # 3. multipart/mixed with a ~3 MiB base64 attachment
    blob = rng.randbytes(attachment_size)
    body = ("--mix-0b1c\n"
            "Content-Type: text/plain; charset=us-ascii\n\n"
            "The scans are attached.\n\n"
            "--mix-0b1c\n"
            "Content-Type: application/octet-stream; name=\"scans.bin\"\n"
            "Content-Transfer-Encoding: base64\n"
            "Content-Disposition: attachment; filename=\"scans.bin\"\n\n"
            f"{_b64_lines(blob)}\n"
            "--mix-0b1c--\n")
    add("attachment",
        [("From", alice), ("To", bob), ("Subject", "Scanned contracts"),
         ("Message-ID", _msgid(rng)), ("MIME-Version", "1.0"),
         ("Content-Type", 'multipart/mixed; boundary="mix-0b1c"')],
        body, datetime.datetime(2025, 6, 6, 23, 45, 0, tzinfo=_tz(0)),
        flags=("\\Flagged",), subject="Scanned contracts",
        slug_words=("scanned", "contracts"))

    # 4. 8-bit UTF-8 body
    add("utf8body",
        [("From", carol), ("To", alice), ("Subject", "Notes from the trip"),
         ("Message-ID", _msgid(rng)), ("MIME-Version", "1.0"),
         ("Content-Type", "text/plain; charset=utf-8"),
         ("Content-Transfer-Encoding", "8bit")],
        "Hallo Alice,\n\n"
        "Grüße aus Zürich! Das Café am See war großartig, naïve Touristen "
        "überall.\n日本語のテキストも少し。Ελληνικά. Emoji: 🎉☕\n\n"
        + _paragraphs(rng, 2) + "\nCarö\n",
        datetime.datetime(2025, 6, 7, 18, 5, 0, tzinfo=_tz(2)),
        flags=("\\Seen", "\\Answered"), subject="Notes from the trip",
        slug_words=("notes", "trip"))

    # 5. RFC 2047, UTF-8 base64
    add("subject_b",
        [("From", carol), ("To", bob),
         ("Subject", "=?UTF-8?B?R3LDvMOfZSBhdXMgTcO8bmNoZW4=?="),
         ("Message-ID", _msgid(rng, "example.de")), ("MIME-Version", "1.0"),
         ("Content-Type", "text/plain; charset=us-ascii")],
        _paragraphs(rng, 1),
        datetime.datetime(2025, 6, 8, 7, 0, 0, tzinfo=_tz(1)),
        subject="Grüße aus München", slug_words=("grüße", "münchen"))

    # 6. RFC 2047, ISO-8859-1 quoted-printable
    add("subject_q",
        [("From", alice), ("To", carol),
         ("Subject", "=?ISO-8859-1?Q?Caf=E9_cr=E8me_=E0_la_carte?="),
         ("Message-ID", _msgid(rng)), ("MIME-Version", "1.0"),
         ("Content-Type", "text/plain; charset=us-ascii")],
        _paragraphs(rng, 1),
        datetime.datetime(2025, 6, 9, 13, 14, 0, tzinfo=_tz(0)),
        subject="Café crème à la carte", slug_words=("café", "crème"))

    # 7. folded long subject
    add("folded",
        [("From", bob), ("To", alice),
         ("Subject", "Re: Fwd: Minutes of the architecture review meeting "
                     "held on Tuesday\n about the storage migration and the "
                     "rollout plan\n for the next quarter"),
         ("Message-ID", _msgid(rng)), ("In-Reply-To", _msgid(rng)),
         ("MIME-Version", "1.0"),
         ("Content-Type", "text/plain; charset=us-ascii")],
        "> earlier text\n\n" + _paragraphs(rng, 2),
        datetime.datetime(2025, 6, 10, 16, 40, 0, tzinfo=_tz(-7)),
        subject="Re: Fwd: Minutes of the architecture review meeting held "
                "on Tuesday about the storage migration and the rollout plan "
                "for the next quarter",
        slug_words=("minutes", "architecture"))

    # 8. no Subject
    add("nosubject",
        [("From", alice), ("To", bob), ("Message-ID", _msgid(rng)),
         ("MIME-Version", "1.0"),
         ("Content-Type", "text/plain; charset=us-ascii")],
        _paragraphs(rng, 1),
        datetime.datetime(2025, 6, 11, 10, 0, 0, tzinfo=_tz(0)),
        subject=None, slug_words=())

    # 9, 10. two byte-identical messages
    dup_fields = [("From", bob), ("To", alice), ("Subject", "Duplicate notice"),
                  ("Message-ID", _msgid(rng)), ("MIME-Version", "1.0"),
                  ("Content-Type", "text/plain; charset=us-ascii")]
    dup_body = _paragraphs(rng, 1)
    dup_date = datetime.datetime(2025, 6, 12, 9, 15, 0, tzinfo=_tz(0))
    d1 = add("dup1", dup_fields, dup_body, dup_date,
             subject="Duplicate notice", slug_words=("duplicate", "notice"))
    d2 = add("dup2", dup_fields, dup_body, dup_date,
             subject="Duplicate notice", slug_words=("duplicate", "notice"))
    assert d1.raw == d2.raw

    # 11. no Date
    add("nodate",
        [("From", alice), ("To", bob), ("Subject", "Undated memo"),
         ("Message-ID", _msgid(rng)), ("MIME-Version", "1.0"),
         ("Content-Type", "text/plain; charset=us-ascii")],
        _paragraphs(rng, 1),
        datetime.datetime(2025, 6, 13, 0, 0, 0, tzinfo=_tz(0)),
        has_date=False, subject="Undated memo", slug_words=("undated", "memo"))

    # 12. '/' in the Subject
    add("slash",
        [("From", bob), ("To", alice),
         ("Subject", "Budget 2025/2026 and/or forecast"),
         ("Message-ID", _msgid(rng)), ("MIME-Version", "1.0"),
         ("Content-Type", "text/plain; charset=us-ascii")],
        _paragraphs(rng, 1),
        datetime.datetime(2025, 6, 14, 11, 11, 0, tzinfo=_tz(3)),
        subject="Budget 2025/2026 and/or forecast",
        slug_words=("budget", "forecast"))

    # 13. the one message with GREP_WORD
    add("grep",
        [("From", carol), ("To", bob), ("Subject", "Packing list"),
         ("Message-ID", _msgid(rng, "example.de")), ("MIME-Version", "1.0"),
         ("Content-Type", "text/plain; charset=us-ascii")],
        _paragraphs(rng, 2, extra=(GREP_WORD,)),
        datetime.datetime(2025, 6, 15, 20, 20, 0, tzinfo=_tz(2)),
        subject="Packing list", slug_words=("packing", "list"))

    for m in msgs:
        assert b"\n" not in m.raw.replace(b"\r\n", b"")
        assert (GREP_WORD.encode() in m.raw) == (m.key == "grep"), m.key
    return msgs


def by_key(msgs):
    return {m.key: m for m in msgs}


# ---------------------------------------------------------------- demo mailbox

_DEMO_SUBJECTS = [
    "Quarterly report Q2", "Grüße aus München", "Café crème à la carte",
    "Invoice #4711", "Re: Storage migration", "Fwd: Conference schedule",
    "Weekly sync – agenda", "Überweisung bestätigt", "Résumé attached",
    "Photos from the trip 📷", "Meeting notes", "Your order has shipped",
    "Budget 2025/2026", "Lunch?", "Reminder: dentist on Thursday",
    "Προσφορά για το έργο", "プロジェクトの進捗", "Code review feedback",
    "Re: Re: Re: holiday plans", "Newsletter – June", "Ticket #1203 resolved",
    "Draft: blog post", "Entwurf: Antrag", "Release 2.4 checklist",
    "Happy birthday! 🎂",
]
_DEMO_PEOPLE = [
    ("Alice Example", "alice@example.org"), ("Bob Builder", "bob@example.net"),
    ("Carö Müller", "carol@example.de"), ("Dmitri Ivanov", "dmitri@example.com"),
    ("Eve Martin", "eve@example.fr"),
]


def _encode_word(text):
    try:
        text.encode("ascii")
        return text
    except UnicodeEncodeError:
        return "=?UTF-8?B?" + base64.b64encode(text.encode()).decode() + "?="


def demo_mailbox(seed=SEED, count=50):
    """About `count` messages spread over INBOX, Archive/2025, Entwürfe and
    Work, with Unicode subjects and one attachment."""
    rng = random.Random(seed + 1)
    folders = ["INBOX"] * 5 + ["Archive/2025"] * 3 + ["Work"] * 2 + ["Entwürfe"]
    start = datetime.datetime(2025, 1, 6, 8, 0, 0, tzinfo=UTC)
    msgs = []
    for i in range(count):
        when = start + datetime.timedelta(days=i * 6, hours=rng.randint(0, 12),
                                          minutes=rng.randint(0, 59))
        folder = rng.choice(folders)
        subject = rng.choice(_DEMO_SUBJECTS)
        name, addr = rng.choice(_DEMO_PEOPLE)
        fields = [("From", f"{_encode_word(name)} <{addr}>"),
                  ("To", "Demo User <demo@example.org>"),
                  ("Subject", _encode_word(subject)),
                  ("Message-ID", _msgid(rng)), ("MIME-Version", "1.0")]
        text = f"Hello,\n\n{_paragraphs(rng, rng.randint(1, 4))}\n{name}\n"
        if i == 7:
            blob = rng.randbytes(256 * 1024)
            fields.append(("Content-Type",
                           'multipart/mixed; boundary="demo-att"'))
            body = ("--demo-att\nContent-Type: text/plain; charset=utf-8\n"
                    "Content-Transfer-Encoding: 8bit\n\n" + text +
                    "\n--demo-att\nContent-Type: application/pdf; "
                    "name=\"report.pdf\"\nContent-Transfer-Encoding: base64\n"
                    "Content-Disposition: attachment; filename=\"report.pdf\""
                    "\n\n" + _b64_lines(blob) + "\n--demo-att--\n")
            subject = "Quarterly report Q2 (with attachment)"
            fields[2] = ("Subject", subject)
        else:
            fields += [("Content-Type", "text/plain; charset=utf-8"),
                       ("Content-Transfer-Encoding", "8bit")]
            body = text
        fields.insert(0, ("Date", _date_header(when)))
        flags = []
        if when < start + datetime.timedelta(days=240):
            flags.append("\\Seen")
        if rng.random() < 0.1:
            flags.append("\\Flagged")
        msgs.append(Message(f"demo{i}", _message(fields, body),
                            int(when.timestamp()) + 60, flags, folder=folder,
                            date_utc=when, subject=subject))
    return msgs
