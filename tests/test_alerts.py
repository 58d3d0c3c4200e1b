"""Alerts (docs/alerts.md): routing, no storm, the digest, closing messages, delivery after an
outage; each message through a real server on loopback (aiosmtpd with STARTTLS and AUTH
LOGIN, an HTTP receiver for webhooks and ntfy) from a real gateway database.

Events are written into ``anomalies`` as the detector writes them (a new row at version 1,
then the same row with a higher version when it closes): the alert stage only reads them.
"""

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from alert_servers import HttpReceiver, SmtpServer

from gateway import config
from gateway.alerts.config import AlertsConfig
from gateway.alerts.config import from_config as alerts_config
from gateway.alerts.outbox import route_events
from gateway.alerts.sender import send_due
from gateway.config import ConfigError
from gateway.store.db import open_db

TZ = "Europe/Paris"


def at(text: str) -> float:
    """A local time in the town (Paris: UTC+1 in December)."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(TZ)).timestamp()


def alerts(tmp_path, text: str) -> AlertsConfig:
    return alerts_config(config.loads(text, tmp_path / "gateway.toml"), TZ)


def open_event(db, node: str, kind: str, start: float, channel: str = "p") -> int:
    return (
        db["anomalies"]
        .insert(
            {
                "node": node,
                "channel": channel,
                "kind": kind,
                "start": start,
                "end": None,
                "score": 0.9,
                "reason": f"{node} {kind}",
                "version": 1,
            }
        )
        .last_pk
    )


def close_event(db, event: int, end: float) -> None:
    version = db["anomalies"].get(event)["version"]
    db["anomalies"].update(event, {"end": end, "version": version + 1})


def phases(db, route: str) -> list[tuple[str, str, str]]:
    return [
        (r["phase"], r["node"], r["kind"])
        for r in db.query("SELECT * FROM alerts WHERE route = ? ORDER BY id", [route])
    ]


@pytest.fixture
def db(tmp_path):
    db = open_db(tmp_path / "reverbere.db")
    yield db
    db.close()


@pytest.fixture
def smtp(tmp_path):
    with SmtpServer(tmp_path) as server:
        yield server


@pytest.fixture
def receiver():
    r = HttpReceiver().start()
    yield r
    r.stop()


def test_urgent_event_is_mailed_at_once_over_starttls_then_its_end(tmp_path, db, smtp):
    # The on-call technician hears of a dark street at night at once, and when it is over.
    cfg = alerts(
        tmp_path,
        smtp.toml() + '[[alerts.routes]]\nname = "astreinte"\nemail = ["astreinte@mairie.test"]\n'
        'severity = "urgent"\n',
    )
    ev = open_event(db, "lamp-007", "dark_at_night", at("2026-12-07T21:14"))
    assert route_events(db, cfg, at("2026-12-07T21:15")) == 1
    assert send_due(db, cfg) == 1
    (mail,) = smtp.mailbox.wait(1)
    assert smtp.mailbox.sessions[0] == (True, "reverbere@mairie.test")  # STARTTLS + AUTH LOGIN
    assert mail["Subject"] == (
        "[Réverbère] URGENT : lampe éteinte la nuit : la rue est dans le noir (lamp-007)"
    )
    assert mail["To"] == "astreinte@mairie.test"
    assert mail["X-Reverbere-Alert"] == f"astreinte/event/{ev}"
    assert mail["Message-ID"] == f"<reverbere.astreinte.event.{ev}@mairie.test>"  # every attempt
    assert mail["Date"].datetime.utcoffset().total_seconds() == 3600  # Paris in December
    text = mail.get_body(("plain",)).get_content()
    assert "depuis le 07/12/2026 à 21:14" in text  # local time, and it says whose
    assert "Heures locales (Europe/Paris)." in text
    assert "Que faire : Intervenir dès que possible" in text
    assert mail.get_body(("html",)) is not None
    print("\n" + mail.as_string())  # pytest -s: the mail as it is received

    close_event(db, ev, at("2026-12-08T08:02"))
    assert route_events(db, cfg, at("2026-12-08T08:03")) == 1
    assert send_due(db, cfg) == 1
    closing = smtp.mailbox.wait(2)[1]
    assert closing["Subject"].startswith("[Réverbère] Terminé : lampe éteinte la nuit")
    text = closing.get_body(("plain",)).get_content()
    assert "du 07/12/2026 à 21:14 au 08/12/2026 à 08:02" in text
    assert send_due(db, cfg) == 0  # nothing twice


def test_routes_by_kind_group_and_severity(tmp_path, db, receiver):
    cfg = alerts(
        tmp_path,
        f"""
[[alerts.routes]]
name = "astreinte"              # the night on-call: urgent only, street lights only
webhook = "{receiver.url}/astreinte"
nodes = ["lamp-*"]
severity = "urgent"

[[alerts.routes]]
name = "services"               # technical services: everything about lamps
webhook = "{receiver.url}/services"
nodes = ["lamp-*"]

[[alerts.routes]]
name = "energie"                # the energy manager: buildings, in the digest
ntfy = "{receiver.url}/energie"
kinds = ["off_schedule", "unusual"]
severity = "digest"
""",
    )
    open_event(db, "lamp-001", "dark_at_night", at("2026-12-07T22:00"))
    open_event(db, "lamp-002", "lit_by_day", at("2026-12-07T14:00"))
    open_event(db, "school-1", "off_schedule", at("2026-12-07T23:00"))
    route_events(db, cfg, at("2026-12-07T23:01"))
    assert phases(db, "astreinte") == [("open", "lamp-001", "dark_at_night")]
    assert phases(db, "services") == [
        ("open", "lamp-001", "dark_at_night"),  # urgent: at once
        ("item", "lamp-002", "lit_by_day"),  # can wait for the morning
    ]
    assert phases(db, "energie") == [("item", "school-1", "off_schedule")]

    assert send_due(db, cfg) == 2
    got = receiver.wait(lambda r: len(r.got) == 2)
    assert {g.path for g in got} == {"/astreinte", "/services"}
    assert got[0].body["event"]["kind"] == "dark_at_night"
    assert got[0].headers["Idempotency-Key"] == got[0].body["id"]

    # 07:00 the next morning: one digest per route that has something waiting.
    assert route_events(db, cfg, at("2026-12-08T07:00")) == 2
    assert send_due(db, cfg) == 2
    got = receiver.wait(lambda r: len(r.got) == 4)
    services = next(g for g in got[2:] if g.path == "/services")
    assert services.body["phase"] == "digest"
    assert (
        "- lamp-002 : lampe allumée en plein jour, depuis le 07/12/2026 à 14:00"
        in (services.body["text"])
    )
    ntfy = next(g for g in got[2:] if g.path == "/")  # ntfy's JSON API: POST to the root
    assert ntfy.body["topic"] == "energie"
    assert ntfy.body["title"].startswith("[Réverbère] Récapitulatif du 08/12/2026 : 1 anomalie")
    assert ntfy.body["priority"] == 2


def test_one_message_per_node_and_kind_until_it_closes(tmp_path, db, receiver):
    cfg = alerts(tmp_path, f'[[alerts.routes]]\nwebhook = "{receiver.url}"\n')
    first = open_event(db, "lamp-001", "dark_at_night", at("2026-12-07T22:00"), channel="p")
    route_events(db, cfg, at("2026-12-07T22:00"))
    # The same lamp's energy counter says the same thing: covered by the first message.
    second = open_event(db, "lamp-001", "dark_at_night", at("2026-12-07T22:01"), channel="e")
    db["anomalies"].update(first, {"score": 1.0, "version": 2})  # a higher score: no message
    route_events(db, cfg, at("2026-12-07T22:02"))
    assert phases(db, "route-1") == [
        ("open", "lamp-001", "dark_at_night"),
        ("covered", "lamp-001", "dark_at_night"),
    ]
    close_event(db, second, at("2026-12-07T23:00"))
    close_event(db, first, at("2026-12-07T23:00"))
    route_events(db, cfg, at("2026-12-07T23:00"))
    # Closed: the next one is news again.
    open_event(db, "lamp-001", "dark_at_night", at("2026-12-08T20:00"))
    route_events(db, cfg, at("2026-12-08T20:00"))
    assert [p for p, *_ in phases(db, "route-1")] == ["open", "covered", "close", "open"]
    assert send_due(db, cfg) == 3
    assert len(set(receiver.keys())) == 3


def test_hourly_cap_sends_the_rest_in_the_digest(tmp_path, db, receiver):
    # A storm cut at 2 messages an hour: a whole street going dark is 2 messages, not 6.
    cfg = alerts(
        tmp_path, f'[alerts]\nmax_per_hour = 2\n[[alerts.routes]]\nwebhook = "{receiver.url}"\n'
    )
    for i in range(6):
        open_event(db, f"lamp-{i:03d}", "dark_at_night", at(f"2026-12-07T22:{i:02d}"))
    route_events(db, cfg, at("2026-12-07T22:06"))
    assert [p for p, *_ in phases(db, "route-1")] == ["open", "open"] + ["item"] * 4
    # An hour after the first ones, the cap has room again.
    open_event(db, "lamp-100", "dark_at_night", at("2026-12-07T23:01"))
    route_events(db, cfg, at("2026-12-07T23:01"))
    assert phases(db, "route-1")[-1][0] == "open"
    route_events(db, cfg, at("2026-12-08T07:00"))
    send_due(db, cfg)
    digest = receiver.wait(lambda r: len(r.got) == 4)[-1].body
    assert digest["phase"] == "digest" and len(digest["events"]) == 4
    assert "plafond de messages par heure atteint" in digest["text"]


def test_undelivered_alerts_wait_and_go_when_the_server_is_back(tmp_path, db):
    receiver = HttpReceiver()  # not started: the link is down
    cfg = alerts(
        tmp_path,
        f'[alerts]\nretry_base_s = 1\n[[alerts.routes]]\nwebhook = "{receiver.url}"\n',
    )
    ev = open_event(db, "lamp-001", "dark_at_night", at("2026-12-07T22:00"))
    route_events(db, cfg, at("2026-12-07T22:00"))
    close_event(db, ev, at("2026-12-07T22:30"))
    route_events(db, cfg, at("2026-12-07T22:30"))
    assert send_due(db, cfg) == 0
    row = db.execute("SELECT attempts, error, next_try FROM alerts WHERE phase = 'open'").fetchone()
    assert row[0] == 1 and "ConnectError" in row[1]
    # The closing message waits behind its opening, not tried on its own.
    assert db.execute("SELECT attempts FROM alerts WHERE phase = 'close'").fetchone()[0] == 0

    receiver.start()
    try:
        receiver.status = 503  # up, but failing: still not sent
        assert send_due(db, cfg, now=row[2]) == 0
        assert receiver.refused == 1
        receiver.status = 200
        later = db.execute("SELECT max(next_try) FROM alerts").fetchone()[0]
        assert send_due(db, cfg, now=later) == 2
        assert [g.body["phase"] for g in receiver.got] == ["open", "close"]
        assert send_due(db, cfg, now=later + 86400) == 0
    finally:
        receiver.stop()


def test_config_errors_name_file_line_and_key(tmp_path):
    text = (
        '[[alerts.routes]]\nname = "a"\nwebhook = "http://x/"\n\n'
        '[[alerts.routes]]\nname = "b"\nemail = ["b@x.fr"]\n'
    )
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        alerts_config(config.load(path), TZ)
    assert str(e.value) == (
        f"{path}:7: alerts.routes[1].email: a route by e-mail needs an [alerts.smtp] server"
    )
    path.write_text("[alerts]\nmax_per_hour = 0\n")
    with pytest.raises(ConfigError, match=r":2: alerts.max_per_hour: must be between 1 and 1000"):
        alerts_config(config.load(path), TZ)
    path.write_text('[alerts]\nurgent = ["dark"]\n')
    with pytest.raises(ConfigError, match=r"unknown kind 'dark'"):
        alerts_config(config.load(path), TZ)
    path.write_text(
        '[alerts.smtp]\nhost = "x"\nusername = "u"\npassword = "p"\nsecurity = "none"\n'
    )
    with pytest.raises(ConfigError, match=r":5: alerts.smtp.security: a login is never sent"):
        alerts_config(config.load(path), TZ)


def test_cli_alerts_test_and_list(tmp_path, smtp, receiver):
    from click.testing import CliRunner

    from gateway.cli.main import cli

    path = tmp_path / "gateway.toml"
    path.write_text(
        '[site]\ntimezone = "Europe/Paris"\n'
        + smtp.toml()
        + '[[alerts.routes]]\nname = "astreinte"\nemail = "astreinte@mairie.test"\n'
        + f'[[alerts.routes]]\nname = "services"\nwebhook = "{receiver.url}"\n'
        + '[[alerts.routes]]\nname = "panne"\nwebhook = "http://127.0.0.1:9/"\n'
    )
    path.chmod(0o600)  # it holds the SMTP password
    run = CliRunner().invoke(cli, ["alerts", "test", "--config", str(path)])
    assert run.exit_code == 1
    assert "astreinte: sent (email astreinte@mairie.test)" in run.output
    assert "services: sent (webhook" in run.output
    assert "panne: NOT sent (webhook http://127.0.0.1:9/): ConnectError" in run.output
    assert "Message d'essai" in smtp.mailbox.wait(1)[0]["Subject"]
    assert receiver.got[0].body["phase"] == "test"

    db = open_db(tmp_path / "reverbere.db")
    open_event(db, "lamp-001", "dark_at_night", at("2026-12-07T22:00"))
    cfg = alerts_config(config.load(path), TZ)
    route_events(db, cfg, at("2026-12-07T22:00"))
    db.close()
    run = CliRunner().invoke(cli, ["alerts", "list", "--config", str(path), "--unsent"])
    assert run.exit_code == 0, run.output
    header, *rows = run.output.splitlines()
    assert "created (Europe/Paris)" in header  # local time, and the zone said
    assert [r.split()[3:5] for r in rows] == [
        [n, "open"] for n in ("astreinte", "services", "panne")
    ]
    assert all("en attente" in r for r in rows)


def test_an_event_after_its_digest_went_gets_a_digest_of_its_own(tmp_path, db, receiver):
    # A backfill after an outage: an event from before 07:00 reaches the gateway after the
    # morning's digest was made; it must not join (and vanish into) the digest already sent.
    cfg = alerts(tmp_path, f'[[alerts.routes]]\nwebhook = "{receiver.url}"\n')
    open_event(db, "lamp-001", "lit_by_day", at("2026-12-07T14:00"))
    route_events(db, cfg, at("2026-12-08T07:00"))
    open_event(db, "lamp-002", "lit_by_day", at("2026-12-07T15:00"))
    route_events(db, cfg, at("2026-12-08T07:30"))
    assert send_due(db, cfg) == 2
    first, late = (g.body for g in receiver.wait(lambda r: len(r.got) == 2))
    assert [e["node"] for e in first["events"]] == ["lamp-001"]
    assert [e["node"] for e in late["events"]] == ["lamp-002"]


def test_every_kind_a_route_may_name_is_said_in_french_with_what_to_do():
    from gateway.alerts.config import KINDS
    from gateway.alerts.messages import KIND_WORDS

    assert set(KINDS) == set(KIND_WORDS)


def test_mail_over_implicit_tls(tmp_path, db):
    # Port 465 servers speak TLS from the first byte (security = "tls"): no STARTTLS there.
    import ssl

    import trustme
    from aiosmtpd.controller import Controller
    from alert_servers import Mailbox, free_port

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    mailbox, port = Mailbox(), free_port()
    server = Controller(mailbox, hostname="127.0.0.1", port=port, ssl_context=context)
    server.start()
    try:
        cfg = alerts(
            tmp_path,
            f'[alerts.smtp]\nhost = "127.0.0.1"\nport = {port}\nsecurity = "tls"\n'
            f'ca_file = "{tmp_path / "ca.pem"}"\n'
            '[[alerts.routes]]\nemail = "astreinte@mairie.test"\n',
        )
        open_event(db, "lamp-001", "silent", at("2026-12-07T22:00"), channel="*")
        route_events(db, cfg, at("2026-12-07T22:00"))
        assert send_due(db, cfg) == 1
        (mail,) = mailbox.wait(1)  # this server speaks nothing but TLS (ssl_context)
        assert "capteur muet" in mail["Subject"]
    finally:
        server.stop()


def test_a_condition_that_comes_and_goes_is_one_message(tmp_path, db, receiver):
    # A node heard, silent, heard again, silent again within minutes: the technician gets the
    # first opening and its end; the recurrences wait for the digest, which says why.
    cfg = alerts(tmp_path, f'[[alerts.routes]]\nwebhook = "{receiver.url}"\n')
    for minute in (0, 3, 6):
        ev = open_event(db, "lamp-015", "silent", at(f"2026-12-07T05:{minute:02d}"), "*")
        close_event(db, ev, at(f"2026-12-07T05:{minute + 1:02d}"))
        route_events(db, cfg, at(f"2026-12-07T05:{minute + 1:02d}"))
    assert [p for p, *_ in phases(db, "route-1")] == ["open", "item", "item"]
    # An hour after the last message, it is news again.
    open_event(db, "lamp-015", "silent", at("2026-12-07T06:30"), "*")
    route_events(db, cfg, at("2026-12-07T06:30"))
    assert phases(db, "route-1")[-1][0] == "open"
    route_events(db, cfg, at("2026-12-07T07:00"))
    assert send_due(db, cfg) == 3
    digest = receiver.wait(lambda r: len(r.got) == 3)[-1].body
    assert digest["text"].count("revenue moins d'une heure après un message") == 2
