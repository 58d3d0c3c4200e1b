"""Real servers on loopback for the alert tests and the demo: an SMTP server (aiosmtpd) that
wants STARTTLS and AUTH LOGIN with a certificate made for the test (trustme), and an HTTP
receiver for webhooks and ntfy that records what it got, and can answer 503 or be down."""

import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

USER, PASSWORD = "reverbere@mairie.test", "s3cret-de-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Mailbox:
    """What the SMTP server accepted: each message with whether it came over TLS and who
    logged in."""

    messages: list[EmailMessage] = field(default_factory=list)
    sessions: list[tuple[bool, str | None]] = field(default_factory=list)  # (tls, login)
    received: threading.Condition = field(default_factory=threading.Condition)

    async def handle_DATA(self, server, session, envelope) -> str:
        msg = message_from_bytes(envelope.original_content, policy=policy.default)
        login = session.auth_data.login.decode() if session.authenticated else None
        with self.received:
            self.messages.append(msg)
            self.sessions.append((session.ssl is not None, login))
            self.received.notify_all()
        return "250 Message accepted for delivery"

    def wait(self, count: int, timeout: float = 20) -> list[EmailMessage]:
        with self.received:
            assert self.received.wait_for(lambda: len(self.messages) >= count, timeout), (
                f"{len(self.messages)} of {count} messages"
            )
            return list(self.messages)


def _authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == USER
        and auth_data.password.decode() == PASSWORD
    )
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


class SmtpServer:
    """aiosmtpd on 127.0.0.1 requiring STARTTLS, then AUTH LOGIN (PLAIN left out, so the
    client's LOGIN is what is tested); ``ca_file`` is what the gateway must trust."""

    def __init__(self, directory: Path) -> None:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = directory / "smtp-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self.mailbox = Mailbox()
        self.port = free_port()
        self.controller = Controller(
            self.mailbox,
            hostname="127.0.0.1",
            port=self.port,
            tls_context=context,
            require_starttls=True,
            authenticator=_authenticate,
            auth_require_tls=True,
            auth_exclude_mechanism=["PLAIN"],
        )

    def __enter__(self) -> "SmtpServer":
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()

    def toml(self) -> str:
        return (
            f'[alerts.smtp]\nhost = "127.0.0.1"\nport = {self.port}\nsecurity = "starttls"\n'
            f'username = "{USER}"\npassword = "{PASSWORD}"\nsender = "{USER}"\n'
            f'ca_file = "{self.ca_file}"\n'
        )


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict


class HttpReceiver:
    """A webhook / ntfy receiver: records every POST (path, headers, JSON body). ``status``
    is what it answers (set 503 for a failing one); ``stop()`` then ``start()`` on the same
    port is a server down, then back."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.status = 200
        self.got: list[Received] = []
        self.refused = 0
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> "HttpReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._cond:
                    if receiver.status == 200:
                        receiver.got.append(
                            Received(self.path, dict(self.headers), json.loads(body))
                        )
                    else:
                        receiver.refused += 1
                    receiver._cond.notify_all()
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self, predicate, timeout: float = 20) -> list[Received]:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self), timeout), self.got
            return list(self.got)

    def keys(self) -> list[str]:
        return [r.headers.get("Idempotency-Key") for r in self.got]
