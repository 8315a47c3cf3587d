"""A small OAuth2 token introspection endpoint (RFC 7662) for the tests.

Dovecot's oauth2 passdb POSTs the client's access token as the form field
`token` and reads `active` and `username` from the JSON answer.  The SMTP
test server asks the same object directly.  Tests decide which tokens are
valid, for whom, and may revoke them while a mount is running:

    idp = Introspection().start()
    token = idp.issue("alice")      # a fresh random token for alice
    idp.revoke(token)
    idp.url                         # http://127.0.0.1:PORT/introspect
    idp.checks(token)               # how often a server asked about it
"""

import json
import secrets
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mailserver import free_port


class Introspection:
    def __init__(self):
        self._lock = threading.Lock()
        self._valid = {}     # token -> user name
        self._checks = {}    # token -> how often asked
        self.port = None
        self._httpd = None
        self._thread = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/introspect"

    def issue(self, user):
        token = "ya29." + secrets.token_urlsafe(48)
        with self._lock:
            self._valid[token] = user
        return token

    def revoke(self, token):
        with self._lock:
            self._valid.pop(token, None)

    def user_of(self, token):
        """The user a token stands for, or None; counts the question."""
        with self._lock:
            self._checks[token] = self._checks.get(token, 0) + 1
            return self._valid.get(token)

    def checks(self, token):
        with self._lock:
            return self._checks.get(token, 0)

    def start(self):
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(
                    self.rfile.read(min(length, 1 << 16)).decode("ascii",
                                                                 "replace"))
                token = (form.get("token") or [""])[0]
                user = idp.user_of(token)
                body = json.dumps({"active": True, "username": user}
                                  if user else {"active": False}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.port = free_port()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        daemon=True)
        self._thread.start()
        return self

    def close(self):
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=10)
            self._httpd = None
