"""Integration tests: OAuth2 logins (XOAUTH2, OAUTHBEARER) with tokens
from a token command, against Dovecot's oauth2 passdb.

Dovecot asks a token introspection endpoint of the tests (tests/oauth2.py)
whether a token is good and for whom; a test issues and revokes tokens
there while a mount runs.  The token command reads a file the test
rewrites, and counts its runs.  Every token issued is a secret that must
never appear in mailfs's output, the -d log included.
"""

import errno
import os
import re

import pytest

from helpers import files_in, poll_until, proxy_url, read_uncached, seed
from smtpserver import SmtpServer

DEADLINE = 60


class TokenFile:
    """A token command and the file it prints: `cat` of the current token,
    one line appended to a run log per run."""

    def __init__(self, directory, token):
        self.path = os.path.join(directory, "token")
        self.runs_path = os.path.join(directory, "runs")
        self.command = f"echo run >>{self.runs_path}; cat {self.path}"
        self.write(token)

    def write(self, token):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(token + "\n")
        os.rename(tmp, self.path)

    def runs(self):
        try:
            with open(self.runs_path) as f:
                return len(f.read().splitlines())
        except FileNotFoundError:
            return 0


@pytest.fixture
def oauth_account(make_account):
    return make_account("oauth2")


@pytest.fixture
def idp(servers):
    return servers.introspection()


def message(n):
    return (f"From: Alice <alice@example.org>\r\n"
            f"To: Bob <bob@example.net>\r\n"
            f"Subject: token test {n}\r\n"
            f"Date: Tue, 03 Jun 2025 10:0{n}:00 +0000\r\n"
            f"Message-ID: <token-{n}@example.org>\r\n"
            f"\r\n"
            f"Body {n}\r\n").encode()


def logins(server, user, mech):
    """How many logins of user with mech Dovecot has logged."""
    with open(server.log_path, errors="replace") as f:
        return len(re.findall(rf"Login: user=<{re.escape(user)}>.*"
                              rf"method={mech}", f.read()))


def mount_with_token(mount, account, tokens, mech=None, **kw):
    options = [f"token_cmd={tokens.command}"] + kw.pop("options", [])
    if mech:
        options.append(f"auth={mech}")
    return mount(account, password_file=False, options=options, **kw)


@pytest.mark.parametrize("mech", ["xoauth2", "oauthbearer"])
def test_mount_and_read_with_each_mechanism(oauth_account, idp, mount,
                                             tmp_path, mech):
    seed(oauth_account, {"INBOX": [message(1)]})
    token = idp.issue(oauth_account.user)
    tokens = TokenFile(str(tmp_path), token)
    m = mount_with_token(mount, oauth_account, tokens, mech, args=["-d"],
                         secrets=[token])
    inbox = os.path.join(m.path, "INBOX")
    [name] = files_in(inbox)
    assert read_uncached(os.path.join(inbox, name)) == message(1)
    assert logins(oauth_account.server, oauth_account.user,
                  mech.upper()) >= 1
    m.unmount()


def test_auto_prefers_oauthbearer(oauth_account, idp, mount, tmp_path):
    token = idp.issue(oauth_account.user)
    tokens = TokenFile(str(tmp_path), token)
    m = mount_with_token(mount, oauth_account, tokens, secrets=[token])
    assert os.listdir(m.path)
    assert logins(oauth_account.server, oauth_account.user,
                  "OAUTHBEARER") >= 1
    assert logins(oauth_account.server, oauth_account.user, "XOAUTH2") == 0


def test_token_rotates_while_mounted(oauth_account, idp, mount, proxies,
                                     tmp_path):
    """The old token is revoked and the connections drop: the next read
    logs in with the command's new token, without a remount."""
    seed(oauth_account, {"INBOX": [message(1), message(2)]})
    old = idp.issue(oauth_account.user)
    tokens = TokenFile(str(tmp_path), old)
    proxy = proxies(oauth_account.server.imaps_port)
    m = mount_with_token(mount, oauth_account, tokens,
                         source=proxy_url(oauth_account, proxy),
                         secrets=[old])
    inbox = os.path.join(m.path, "INBOX")
    names = sorted(files_in(inbox))
    assert read_uncached(os.path.join(inbox, names[0])) == message(1)

    new = idp.issue(oauth_account.user)
    m.secrets.append(new)
    tokens.write(new)
    idp.revoke(old)
    proxy.drop_all()
    assert read_uncached(os.path.join(inbox, names[1])) == message(2)
    assert idp.checks(new) >= 1
    m.unmount()


def test_wrong_token_at_mount(oauth_account, idp, mount_fails, tmp_path):
    tokens = TokenFile(str(tmp_path), "ya29.not-a-token")
    rc, err = mount_fails(oauth_account, password_file=False,
                          options=[f"token_cmd={tokens.command}"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "login failed" in lines[0] or "authentication" in lines[0], err
    # the command ran for each attempt, and at most twice in all
    assert 1 <= idp.checks("ya29.not-a-token") <= 2
    assert tokens.runs() <= 2


def test_failing_token_command_at_mount(oauth_account, mount_fails,
                                        tmp_path):
    cmd = "echo 'the refresh token expired' >&2; exit 4"
    rc, err = mount_fails(oauth_account, password_file=False,
                          options=[f"token_cmd={cmd}"])
    assert "token_cmd failed (exit status 4)" in err, err
    assert "the refresh token expired" in err, err


def test_token_goes_bad_and_recovers(oauth_account, idp, mount, proxies,
                                     tmp_path):
    """A revoked token that the command keeps printing: reads that need
    the server fail with EACCES, the server is asked a bounded number of
    times, cached reads go on, and the mount recovers by itself once the
    command prints a good token."""
    seed(oauth_account, {"INBOX": [message(1), message(2), message(3)]})
    token = idp.issue(oauth_account.user)
    tokens = TokenFile(str(tmp_path), token)
    proxy = proxies(oauth_account.server.imaps_port)
    m = mount_with_token(mount, oauth_account, tokens,
                         source=proxy_url(oauth_account, proxy),
                         options=["connections=1"], secrets=[token])
    inbox = os.path.join(m.path, "INBOX")
    names = sorted(files_in(inbox))
    first = read_uncached(os.path.join(inbox, names[0]))
    assert first == message(1)

    idp.revoke(token)
    proxy.drop_all()
    with pytest.raises(OSError) as e:
        read_uncached(os.path.join(inbox, names[1]))
    assert e.value.errno == errno.EACCES
    asked = idp.checks(token)
    # while held, more reads fail at once without asking the server
    for _ in range(5):
        with pytest.raises(OSError) as e:
            read_uncached(os.path.join(inbox, names[2]))
        assert e.value.errno == errno.EACCES
    assert idp.checks(token) <= asked + 1
    # what is cached still reads, and the mount says what is wrong
    assert read_uncached(os.path.join(inbox, names[0])) == first
    assert os.getxattr(m.path, "user.mailfs.status") == \
        b"authentication refused: re-authorize the token command"

    good = idp.issue(oauth_account.user)
    m.secrets.append(good)
    tokens.write(good)

    def readable():
        try:
            return read_uncached(os.path.join(inbox, names[1])) == \
                message(2)
        except OSError as e:
            if e.errno != errno.EACCES:
                raise
            return False

    poll_until(readable, "a read with the new token", DEADLINE,
               interval=0.5)
    assert os.getxattr(m.path, "user.mailfs.status") == b"ok"
    m.unmount()
    assert "re-authorize the token command" in m.stderr()


# ---------------------------------------------------------------- SMTP

@pytest.fixture
def oauth_smtp(servers, oauth_account, idp, tmp_path):
    """make(mechanisms) -> a started SMTP server that takes the account's
    tokens with those mechanisms; stopped at teardown."""
    made = []

    def make(mechanisms, two_step=False):
        s = SmtpServer(cert=servers.cert, key=servers.key,
                       user=oauth_account.user, password=None, oauth2=idp,
                       auth_mechanisms=mechanisms, two_step=two_step,
                       log_path=str(tmp_path / f"smtp{len(made)}.log"))
        made.append(s)
        s.start()
        return s

    try:
        yield make
    finally:
        for s in made:
            s.stop()


def outgoing(n):
    return (f"From: {n}@example.org\r\n"
            f"To: bob@example.net\r\n"
            f"Subject: sent with a token {n}\r\n"
            f"\r\n"
            f"Hello.\r\n").encode()


def drop(m, name, data):
    path = os.path.join(m.path, "outbox", name)
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("mech,two_step", [("XOAUTH2", False),
                                           ("XOAUTH2", True),
                                           ("OAUTHBEARER", False)])
def test_smtp_with_each_mechanism(oauth_account, idp, mount, oauth_smtp,
                                  tmp_path, mech, two_step):
    """Two-step: the server asks for the response after an empty 334, as
    Microsoft 365 does."""
    server = oauth_smtp(("PLAIN", mech), two_step)
    token = idp.issue(oauth_account.user)
    tokens = TokenFile(str(tmp_path), token)
    m = mount_with_token(mount, oauth_account, tokens, args=["-d"],
                         options=[f"smtp={server.url()}", "sent=none",
                                  f"spool_dir={tmp_path / 'spool'}"],
                         secrets=[token])
    drop(m, "one.eml", outgoing(1))
    [d] = server.wait_deliveries(1)
    assert d.login == oauth_account.user and d.tls
    _, _, events = server.snapshot()
    assert ("auth", f"{mech} {oauth_account.user}") in events
    m.unmount()


def test_smtp_refused_token_is_retried_with_the_next(oauth_account, idp,
                                                     mount, oauth_smtp,
                                                     tmp_path):
    """SMTP takes its own token command; a refused token is answered as
    the mechanism requires, and the next token is used."""
    server = oauth_smtp(("XOAUTH2",))
    imap_token = idp.issue(oauth_account.user)
    imap_tokens = TokenFile(str(tmp_path), imap_token)
    os.makedirs(tmp_path / "smtp-token")
    smtp_tokens = TokenFile(str(tmp_path / "smtp-token"), "ya29.revoked")
    m = mount_with_token(mount, oauth_account, imap_tokens,
                         options=[f"smtp={server.url()}", "sent=none",
                                  f"smtp_token_cmd={smtp_tokens.command}",
                                  f"spool_dir={tmp_path / 'spool'}",
                                  "retry_min=1"],
                         secrets=[imap_token])
    drop(m, "two.eml", outgoing(2))
    server.wait(lambda s: any(k == "auth-failed" for k, _ in s.events),
                what="a refused token")
    good = idp.issue(oauth_account.user)
    m.secrets.append(good)
    smtp_tokens.write(good)
    [d] = server.wait_deliveries(1)
    assert d.login == oauth_account.user
    _, _, events = server.snapshot()
    assert not [e for e in events if e[0] == "auth-protocol"], events
    m.unmount()


# ---------------------------------------------------------------- POP3

@pytest.mark.parametrize("mech", ["xoauth2", "oauthbearer"])
def test_pop3_view_with_each_mechanism(oauth_account, idp, mount, tmp_path,
                                       mech):
    seed(oauth_account, {"INBOX": [message(1)]})
    token = idp.issue(oauth_account.user)
    tokens = TokenFile(str(tmp_path), token)
    m = mount_with_token(mount, oauth_account, tokens, mech, args=["-d"],
                         source=oauth_account.url("pop3s"),
                         secrets=[token])
    inbox = os.path.join(m.path, "INBOX")
    [name] = files_in(inbox)
    assert read_uncached(os.path.join(inbox, name)) == message(1)
    with open(oauth_account.server.log_path, errors="replace") as f:
        assert re.search(rf"pop3-login: Info: Login: user=<"
                         rf"{re.escape(oauth_account.user)}>.*"
                         rf"method={mech.upper()}", f.read())
    m.unmount()


def test_pop3_wrong_token(oauth_account, idp, mount_fails, tmp_path):
    tokens = TokenFile(str(tmp_path), "ya29.not-for-pop3")
    rc, err = mount_fails(oauth_account, password_file=False,
                          source=oauth_account.url("pop3s"),
                          options=[f"token_cmd={tokens.command}"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "login failed" in lines[0], err
    assert 1 <= idp.checks("ya29.not-for-pop3") <= 2
