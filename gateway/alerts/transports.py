"""The ways an alert reaches people: e-mail (SMTP with STARTTLS and login, ``smtplib``), a
webhook (a JSON POST, ``httpx``) and an ntfy server (its JSON publishing API, ``httpx``).

``deliver(alert, route, config)`` returns when the server accepted the message (SMTP 250 for
every recipient, HTTP 2xx) and raises :class:`DeliveryError` otherwise. Every message carries
the alert's ``key``: the mail's Message-ID and ``X-Reverbere-Alert``, the HTTP header
``Idempotency-Key`` and the webhook's ``id``: a receiver that got it twice (a crash between
its delivery and the mark in the database) can tell.
"""

import html
import json
import logging
import smtplib
import ssl
import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from zoneinfo import ZoneInfo

import httpx

from gateway import __version__
from gateway.alerts.config import AlertsConfig, Route

log = logging.getLogger("reverbere.alerts")

USER_AGENT = f"reverbere/{__version__}"
# ntfy priorities (docs.ntfy.sh/publish/#message-priority): 5 max/urgent, 3 default, 2 low.
NTFY_PRIORITY = {"open": 5, "close": 3, "digest": 2}


class DeliveryError(Exception):
    """The message was not accepted (server down, refused, answered an error): try later."""


@dataclass(frozen=True)
class Alert:
    """One row of ``alerts`` to send."""

    id: int
    key: str
    route: str
    phase: str
    urgent: bool
    subject: str
    body: str
    data: dict


def deliver(alert: Alert, route: Route, config: AlertsConfig) -> None:
    try:
        if route.transport == "email":
            _mail(alert, route, config)
        elif route.transport == "webhook":
            _post(route, config, route.target[0], alert.data, alert.key)
        else:
            _ntfy(alert, route, config)
    except (OSError, smtplib.SMTPException, httpx.HTTPError, ssl.SSLError) as e:
        raise DeliveryError(f"{type(e).__name__}: {e}") from e


def mail_message(alert: Alert, route: Route, config: AlertsConfig) -> EmailMessage:
    """The e-mail as it leaves: French plain text, with an HTML alternative of the same words."""
    smtp = config.smtp
    msg = EmailMessage()
    msg["From"] = f"Réverbère <{smtp.sender}>"
    msg["To"] = ", ".join(route.target)
    msg["Subject"] = alert.subject
    msg["Date"] = format_datetime(datetime.now(ZoneInfo(config.timezone)))  # the town's time
    # The same for every attempt at this alert: a second copy (a crash between the server's
    # 250 and the mark) is the same message to the mail clients that deduplicate.
    domain = smtp.sender.rsplit("@", 1)[-1]
    msg["Message-ID"] = f"<reverbere.{alert.key.replace('/', '.')}@{domain}>"
    msg["X-Reverbere-Alert"] = alert.key
    if alert.urgent and alert.phase == "open":
        msg["Importance"] = "high"
        msg["X-Priority"] = "1"
    msg.set_content(alert.body)
    paragraphs = "".join(
        f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>" for p in alert.body.split("\n\n")
    )
    msg.add_alternative(
        f'<html><body style="font-family: sans-serif">{paragraphs}</body></html>', subtype="html"
    )
    return msg


def _mail(alert: Alert, route: Route, config: AlertsConfig) -> None:
    smtp = config.smtp
    msg = mail_message(alert, route, config)
    if smtp.security == "tls":
        client: smtplib.SMTP = smtplib.SMTP_SSL(
            smtp.host, smtp.port, timeout=smtp.timeout, context=smtp.tls_context()
        )
    else:
        client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
    with client:
        if smtp.security == "starttls":
            client.starttls(context=smtp.tls_context())
        if smtp.username:
            client.login(smtp.username, smtp.password or "")
        refused = client.send_message(msg)  # raises unless at least one recipient took it
    if refused:  # some took it: resending would duplicate theirs; say who did not
        log.warning("alert %s refused by the server for %s", alert.key, ", ".join(refused))


def _post(route: Route, config: AlertsConfig, url: str, payload: dict, key: str) -> None:
    headers = {"Idempotency-Key": key, "User-Agent": USER_AGENT}
    if route.token:
        headers["Authorization"] = f"Bearer {route.token}"
    r = httpx.post(
        url,
        content=json.dumps(payload, ensure_ascii=False).encode(),
        headers={**headers, "Content-Type": "application/json; charset=utf-8"},
        timeout=config.timeout,
        follow_redirects=False,
    )
    if not 200 <= r.status_code < 300:
        raise DeliveryError(f"HTTP {r.status_code} from {url}")


def _ntfy(alert: Alert, route: Route, config: AlertsConfig) -> None:
    """ntfy's JSON publishing (a POST of {topic, title, message...} to the server's root):
    UTF-8 titles, which its header API cannot carry."""
    parts = urllib.parse.urlsplit(route.target[0])
    root = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/", "", ""))
    payload = {
        "topic": parts.path.strip("/").split("/")[-1],
        "title": alert.subject,
        "message": alert.body,
        "priority": NTFY_PRIORITY.get(alert.phase, 3),
        "tags": ["rotating_light"] if alert.urgent and alert.phase == "open" else [],
    }
    _post(route, config, root, payload, alert.key)
