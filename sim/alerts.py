"""The demo's people who act: a real SMTP server (aiosmtpd) for the on-call technician's mail
and a webhook receiver for the technical services, both on loopback, counting what they got
by alert key; and what the routing rules call for, from the ground truth.

``alerts_duplicated`` counts deliveries of a key already received: it must be 0.
"""

import json
import threading
from collections import Counter
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller

from gateway.alerts.config import KINDS, AlertsConfig
from gateway.alerts.outbox import digest_time
from sim.groundtruth import EXPECTED_KIND

ALERTS_TOML = """
[alerts]                       # docs/alerts.md
urgent = ["dark_at_night", "silent"]
digest_at = "07:00"
max_per_hour = 10
retry_base_s = 1
retry_cap_s = 4

[alerts.smtp]                  # a local aiosmtpd (sim/alerts.py): no TLS on loopback
host = "127.0.0.1"
port = {smtp_port}
security = "none"
sender = "reverbere@demo.invalid"

[[alerts.routes]]
name = "astreinte"             # the on-call technician: street lights, urgent only
email = ["astreinte@mairie.invalid"]
nodes = ["lamp-*"]
severity = "urgent"

[[alerts.routes]]
name = "services"              # the technical services' tool: everything
webhook = "{webhook}"
"""


class AlertServers:
    """aiosmtpd and a webhook receiver on 127.0.0.1; ``keys`` counts deliveries per key."""

    def __init__(self) -> None:
        self.keys: Counter[str] = Counter()
        self.mails: list = []
        self._lock = threading.Lock()
        servers = self

        class Mailbox:
            async def handle_DATA(self, server, session, envelope) -> str:
                msg = message_from_bytes(envelope.original_content, policy=policy.default)
                with servers._lock:
                    servers.mails.append(msg)
                    servers.keys[msg["X-Reverbere-Alert"]] += 1
                return "250 Message accepted for delivery"

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with servers._lock:
                    servers.keys[self.headers.get("Idempotency-Key") or body.get("id")] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        self.webhook = f"http://127.0.0.1:{self.http.server_address[1]}/reverbere"
        self.smtp = Controller(Mailbox(), hostname="127.0.0.1", port=_free_port())

    def start(self) -> "AlertServers":
        self.smtp.start()
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.smtp.stop()
        self.http.shutdown()
        self.http.server_close()

    def toml(self) -> str:
        return ALERTS_TOML.format(smtp_port=self.smtp.port, webhook=self.webhook)

    def figures(self) -> dict:
        with self._lock:
            return {
                "alerts_sent": len(self.keys),
                "alerts_duplicated": sum(n - 1 for n in self.keys.values()),
                "alerts_mailed": len(self.mails),
            }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expected_alerts(truth: list, config: AlertsConfig, end: float) -> int:
    """The messages the routing rules call for if every injected anomaly is found as its
    expected kind (one the detectors open, ``KINDS``): per matching route, an urgent one's
    opening (and its closing when it ended before ``end``), and one digest per route and
    digest time for the others. The hourly cap is not applied (the demo stays under it)."""
    count, digests = 0, set()
    for a in truth:
        kind = EXPECTED_KIND.get(a.kind, a.kind)
        if kind not in KINDS:  # no detector opens such an event: nobody is told
            continue
        for route in config.routes:
            if not route.wants(a.node, kind):
                continue
            urgent = kind in config.urgent
            if route.severity == "urgent" and not urgent:
                continue
            if urgent and route.severity != "digest":
                count += 1 + (a.end < end)
            else:
                digests.add((route.name, digest_time(a.start, config)))
    return count + len(digests)
