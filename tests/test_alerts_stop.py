"""A stop of the gateway is prompt with alerts owed to a mail server that stopped answering
(docs/alerts.md, "A prompt stop"): systemd gives the whole stop 30 s (TimeoutStopSec), and an
SMTP server holds a message for the sender's timeout, 30 s by default and up to 600. The
sender waits ``STOP_GRACE`` (5 s) for the message in flight, then leaves it owed.

The server here is a real aiosmtpd whose handler has the whole message and then hangs before
its 250, until the test lets it go: the worst case, a message delivered but not yet marked.
After the restart the receiver has that one twice, with the same Message-ID; every other
message arrives once."""

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller
from alert_servers import Mailbox, free_port

from gateway import config
from gateway.alerts.config import from_config as alerts_config
from gateway.alerts.outbox import route_events
from gateway.alerts.sender import AlertSender
from gateway.daemon import STOP_GRACE
from gateway.store.db import open_db

TZ = "Europe/Paris"


@dataclass
class HangingMailbox(Mailbox):
    """Records each message as it arrives, then answers only once ``release`` is set (an
    event the test sets after the stop, never to synchronise with the sender)."""

    release: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server, session, envelope) -> str:
        answer = await super().handle_DATA(server, session, envelope)  # the message is here
        await asyncio.get_running_loop().run_in_executor(None, self.release.wait)
        return answer


@pytest.fixture
def mailbox():
    box = HangingMailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield box, controller.port
    box.release.set()  # a handler still waiting ends, so the server can stop
    controller.stop()


def test_stop_waits_the_grace_not_the_mail_servers_timeout_and_nothing_is_lost(tmp_path, mailbox):
    box, port = mailbox
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[alerts.smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\n'
        'sender = "reverbere@mairie.test"\n'  # timeout: the default 30 s
        '[[alerts.routes]]\nname = "astreinte"\nemail = "astreinte@mairie.test"\n'
        'severity = "urgent"\n'
    )
    cfg = alerts_config(config.load(path), TZ)
    assert cfg.smtp.timeout == 30.0 > STOP_GRACE
    db = open_db(tmp_path / "reverbere.db")
    now = time.time()
    for node in ("lamp-001", "lamp-002"):  # two dark streets: two urgent messages owed
        db["anomalies"].insert(
            {
                "node": node,
                "channel": "p",
                "kind": "dark_at_night",
                "start": now - 60,
                "end": None,
                "score": 0.9,
                "reason": f"{node} dark",
                "version": 1,
            }
        )
    assert route_events(db, cfg, now) == 2

    sender = AlertSender(tmp_path / "reverbere.db", cfg).start()
    (first,) = box.wait(1)  # the first is at the server, which does not answer
    began = time.monotonic()
    assert sender.stop() is False  # gave up on the message in flight
    took = time.monotonic() - began
    assert STOP_GRACE - 0.5 < took < STOP_GRACE + 2, took

    box.release.set()  # the server's late 250 reaches the abandoned thread...
    assert sender.stop(timeout=30) is True  # ...which ends, and wrote nothing:
    owed = db.execute("SELECT key FROM alerts WHERE sent IS NULL ORDER BY id").fetchall()
    assert [k for (k,) in owed] == [first["X-Reverbere-Alert"], "astreinte/event/2"]
    assert len(box.messages) == 1  # the second was not started after the stop

    # The next start, the server answering again: both go, the first a second time.
    sender = AlertSender(tmp_path / "reverbere.db", cfg).start()
    mails = box.wait(3)
    assert sender.stop() is True
    assert db.execute("SELECT count(*) FROM alerts WHERE sent IS NULL").fetchone()[0] == 0
    ids = [m["Message-ID"] for m in mails]
    assert ids == [
        first["Message-ID"],
        first["Message-ID"],
        "<reverbere.astreinte.event.2@mairie.test>",
    ]
    assert mails[1]["X-Reverbere-Alert"] == first["X-Reverbere-Alert"] == "astreinte/event/1"
    assert len(box.messages) == 3  # nothing more after the stop
    db.close()


class HangingWebhook:
    """A webhook receiver that records each POST (its Idempotency-Key and body) as it
    arrives, then answers 200 only once ``release`` is set."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict]] = []
        self.arrived = threading.Condition()
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with hook.arrived:
                    hook.got.append((self.headers["Idempotency-Key"], body))
                    hook.arrived.notify_all()
                hook.release.wait()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int) -> list[tuple[str, dict]]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.got) >= count, 20), self.got
            return list(self.got)


def test_a_webhook_that_hangs_gets_the_same_key_again_after_the_restart(tmp_path):
    hook = HangingWebhook()
    try:
        path = tmp_path / "gateway.toml"
        path.write_text(
            "[alerts]\ntimeout = 600\n"  # the longest a request may take
            f'[[alerts.routes]]\nname = "services"\n'
            f'webhook = "http://127.0.0.1:{hook.server.server_port}/hook"\n'
        )
        cfg = alerts_config(config.load(path), TZ)
        db = open_db(tmp_path / "reverbere.db")
        now = time.time()
        db["anomalies"].insert(
            {
                "node": "lamp-001",
                "channel": "p",
                "kind": "dark_at_night",
                "start": now - 60,
                "end": None,
                "score": 0.9,
                "reason": "dark",
                "version": 1,
            }
        )
        assert route_events(db, cfg, now) == 1
        sender = AlertSender(tmp_path / "reverbere.db", cfg).start()
        hook.wait(1)
        began = time.monotonic()
        assert sender.stop() is False
        assert time.monotonic() - began < STOP_GRACE + 2
        hook.release.set()
        assert sender.stop(timeout=30) is True

        sender = AlertSender(tmp_path / "reverbere.db", cfg).start()
        (key, body), again = hook.wait(2)
        assert sender.stop() is True
        assert again == (key, body) and key == body["id"] == "services/event/1"
        assert db.execute("SELECT sent IS NOT NULL FROM alerts").fetchall() == [(1,)]
        db.close()
    finally:
        hook.release.set()
        hook.server.shutdown()
        hook.server.server_close()


def test_an_idle_sender_stops_at_once(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('[[alerts.routes]]\nwebhook = "http://127.0.0.1:9/hook"\n')
    open_db(tmp_path / "reverbere.db").close()
    sender = AlertSender(tmp_path / "reverbere.db", alerts_config(config.load(path), TZ))
    sender.start()
    began = time.monotonic()
    assert sender.stop() is True
    assert time.monotonic() - began < 1
