"""The administrator's lists (``alerts list``, ``user list``, ``token list``, ``fleet status``),
``anomalies replay`` and a lighting group's night (``gateway check --group``) show a French town
its times and CSV as ``readings`` and ``node list`` do (issue 15, item 6;
gateway/cli/display.py): local time with the zone named on either side of a clock change,
``--utc``, JSON in UTC for programs, and the CSV French Excel opens when ``--excel`` says so or
the locale writes a decimal comma. ``waste --excel`` is a CSV too."""

import datetime as dt
import json
from zoneinfo import ZoneInfo

import pytest
from alert_servers import HttpReceiver
from click.testing import CliRunner

from gateway import config
from gateway.alerts.config import from_config as alerts_config
from gateway.alerts.outbox import route_events
from gateway.alerts.sender import send_due
from gateway.cli.main import cli
from gateway.console import accounts
from gateway.ingest import registry
from gateway.store.db import open_db

# Summer time starts in Paris on 29 March 2026 at 01:00 UTC (02:00 local becomes 03:00): the
# same UTC hour is 01:30+01:00 before and 03:30+02:00 after.
BEFORE = dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.UTC).timestamp()
AFTER = dt.datetime(2026, 3, 29, 1, 30, tzinfo=dt.UTC).timestamp()


def invoke(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output_bytes.decode("utf-8")  # as written: Excel's CRLF line ends kept


@pytest.fixture
def town(tmp_path):
    """A gateway made by ``gateway init`` (its config says Europe/Paris); the config's path."""
    invoke("gateway", "init", tmp_path)
    return tmp_path / "gateway.toml"


@pytest.fixture
def french(monkeypatch):
    """A French user's shell: its spreadsheet reads ';' and a decimal comma."""
    monkeypatch.setenv("LANG", "fr_FR.UTF-8")


def test_alerts_list_in_the_towns_time_across_the_clock_change(town, french):
    db = open_db(town.parent / "reverbere.db")
    for node, start in (("lamp-001", BEFORE), ("lamp-002", AFTER)):
        db["anomalies"].insert(
            {
                "node": node,
                "channel": "p",
                "kind": "dark_at_night",
                "start": start,
                "score": 0.9,
                "reason": "éteint la nuit",
                "version": 1,
            }
        )
    route = '[[alerts.routes]]\nname = "astreinte"\nwebhook = "http://127.0.0.1:9/"\n'
    route_events(db, alerts_config(config.loads(route, town), "Europe/Paris"), None)
    # A message is made when the stage sees its event: here, on each side of the change.
    for node, made in (("lamp-001", BEFORE), ("lamp-002", AFTER)):
        db.execute("UPDATE alerts SET created = ? WHERE node = ?", [made, node])
    db.conn.commit()
    db.close()

    table = invoke("alerts", "list", "--config", town).splitlines()
    assert "created (Europe/Paris)" in table[0]
    assert "2026-03-29 01:30:00+01:00" in table[1] and "lamp-001" in table[1]
    assert "2026-03-29 03:30:00+02:00" in table[2] and "lamp-002" in table[2]
    utc = invoke("alerts", "list", "--config", town, "--utc").splitlines()
    assert "Europe/Paris" not in utc[0] and "2026-03-29T00:30:00Z" in utc[1]
    # JSON is for programs: ISO 8601 UTC, as every command's JSON.
    rows = json.loads(invoke("alerts", "list", "--config", town, "--format", "json"))
    assert [r["created"] for r in rows] == ["2026-03-29T00:30:00Z", "2026-03-29T01:30:00Z"]
    # The locale writes a decimal comma: --format csv is French Excel's.
    excel = invoke("alerts", "list", "--config", town, "--format", "csv")
    assert excel.startswith("\ufeffid;created (Europe/Paris);route;phase;node;kind;state;")
    assert "29/03/2026 01:30;astreinte;open;lamp-001" in excel
    assert "29/03/2026 03:30;astreinte;open;lamp-002" in excel
    plain = invoke("alerts", "list", "--config", town, "--format", "csv", "--no-excel")
    assert "2026-03-29 03:30:00+02:00,astreinte,open,lamp-002" in plain


@pytest.fixture
def receiver():
    r = HttpReceiver().start()
    yield r
    r.stop()


def test_alerts_list_says_when_each_message_was_sent(town, french, receiver):
    # One event, two routes: the town's webhook takes the message, the other's server is down.
    db = open_db(town.parent / "reverbere.db")
    db["anomalies"].insert(
        {
            "node": "lamp-001",
            "channel": "p",
            "kind": "dark_at_night",
            "start": BEFORE,
            "score": 0.9,
            "reason": "éteint la nuit",
            "version": 1,
        }
    )
    routes = (
        f'[[alerts.routes]]\nname = "services"\nwebhook = "{receiver.url}"\n'
        '[[alerts.routes]]\nname = "panne"\nwebhook = "http://127.0.0.1:9/"\n'
    )
    cfg = alerts_config(config.loads(routes, town), "Europe/Paris")
    route_events(db, cfg, None)
    before = dt.datetime.now(dt.UTC)
    assert send_due(db, cfg) == 1
    after = dt.datetime.now(dt.UTC)
    db.close()

    header, services, panne = invoke("alerts", "list", "--config", town).splitlines()
    assert "created (Europe/Paris)" in header and "sent (Europe/Paris)" in header
    assert header.index("state") < header.index("sent (") < header.index("attempts")
    # Sent: when the server took it, in the town's time with its offset.
    cells = services.split()
    assert cells[3:8] == ["services", "open", "lamp-001", "dark_at_night", "envoyé"]
    sent = dt.datetime.fromisoformat(" ".join(cells[8:10]))
    assert before.replace(microsecond=0) <= sent <= after
    assert sent.utcoffset() == sent.astimezone(ZoneInfo("Europe/Paris")).utcoffset()
    # Not sent: the sent column stays empty; the attempts and the error say why.
    assert panne.split()[3:9] == ["panne", "open", "lamp-001", "dark_at_night", "en", "échec"]
    assert panne.split()[9] == "1" and "ConnectError" in panne

    excel = invoke("alerts", "list", "--config", town, "--format", "csv").split("\r\n")
    assert excel[0] == (
        "\ufeffid;created (Europe/Paris);route;phase;node;kind;state;sent (Europe/Paris);"
        "attempts;error"
    )
    minute = dt.datetime.fromtimestamp(round(sent.timestamp()), ZoneInfo("Europe/Paris"))
    assert excel[1].split(";")[6:9] == ["envoyé", f"{minute:%d/%m/%Y %H:%M}", "0"]
    assert excel[2].split(";")[6:9] == ["en échec", "", "1"]
    # JSON for programs: UTC, and null while unsent.
    rows = json.loads(invoke("alerts", "list", "--config", town, "--format", "json"))
    assert rows[0]["sent"].endswith("Z") and dt.datetime.fromisoformat(rows[0]["sent"]) == sent
    assert rows[1]["sent"] is None and rows[1]["state"] == "en échec"
    utc = invoke("alerts", "list", "--config", town, "--utc").splitlines()
    assert "sent (" not in utc[0] and rows[0]["sent"] in utc[1]


def test_user_and_token_lists_in_the_towns_time(town, french):
    db = open_db(town.parent / "reverbere.db")
    accounts.add_user(db, "anne", "admin", "une longue phrase")
    accounts.add_token(db, "supervision", "viewer")
    db.execute("UPDATE console_users SET created = ?", [BEFORE])
    db.execute("UPDATE console_tokens SET created = ?, last_used = ?", [BEFORE, AFTER])
    db.conn.commit()
    db.close()

    users = invoke("user", "list", "--config", town).splitlines()
    assert users[0].split() == ["name", "role", "created", "(Europe/Paris)"]
    assert users[1].split() == ["anne", "admin", "2026-03-29", "01:30:00+01:00"]
    tokens = invoke("token", "list", "--config", town).splitlines()
    assert "created (Europe/Paris)" in tokens[0] and "last_used (Europe/Paris)" in tokens[0]
    assert tokens[1].split()[2:] == ["2026-03-29", "01:30:00+01:00", "2026-03-29", "03:30:00+02:00"]
    assert "2026-03-29T01:30:00Z" in invoke("token", "list", "--config", town, "--utc")
    assert invoke("user", "list", "--config", town, "--format", "csv") == (
        "\ufeffname;role;created (Europe/Paris)\r\nanne;admin;29/03/2026 01:30\r\n"
    )
    token = json.loads(invoke("token", "list", "--config", town, "--format", "json"))[0]
    assert (token["created"], token["last_used"]) == (
        "2026-03-29T00:30:00Z",
        "2026-03-29T01:30:00Z",
    )


def test_fleet_status_csv_follows_the_locale_and_excel_implies_csv(town, french):
    db = open_db(town.parent / "reverbere.db")
    registry.add_node(db, "lamp-001")
    db.conn.commit()
    db.close()
    excel = "\ufeffnode;running;trial;target;state\r\nlamp-001;;;;idle\r\n"
    assert invoke("fleet", "status", "--config", town, "--format", "csv") == excel
    assert invoke("fleet", "status", "--config", town, "--excel") == excel
    plain = invoke("fleet", "status", "--config", town, "--format", "csv", "--no-excel")
    assert plain == "node,running,trial,target,state\nlamp-001,,,,idle\n"
    assert invoke("fleet", "status", "--config", town).split()[:5] == [
        "node",
        "running",
        "trial",
        "target",
        "state",
    ]


@pytest.fixture
def meter_csv(tmp_path):
    """Three readings of a meter, written in UTC, the middle ones either side of the change."""
    path = tmp_path / "meter.csv"
    path.write_text(
        f"timestamp,value\n2026-03-28T23:30:00Z,20.5\n2026-03-29 00:30:00,21\n{AFTER:.0f},21.25\n"
    )
    return path


def test_replay_prints_the_towns_time(town, meter_csv, french):
    excel = invoke("anomalies", "replay", meter_csv, "--config", town)
    lines = excel.split("\r\n")
    assert lines[0] == "\ufefftimestamp (Europe/Paris);score;alarm"
    assert [line.split(";")[0] for line in lines[1:4]] == [
        "29/03/2026 00:30",
        "29/03/2026 01:30",
        "29/03/2026 03:30",
    ]
    plain = invoke("anomalies", "replay", meter_csv, "--config", town, "--no-excel")
    assert [line.split(",")[0] for line in plain.splitlines()] == [
        "timestamp (Europe/Paris)",
        "2026-03-29 00:30:00+01:00",
        "2026-03-29 01:30:00+01:00",
        "2026-03-29 03:30:00+02:00",
    ]
    utc = invoke("anomalies", "replay", meter_csv, "--config", town, "--utc", "--no-excel")
    assert utc.splitlines()[0] == "timestamp,score,alarm"
    assert utc.splitlines()[3].startswith("2026-03-29T01:30:00Z,")
    rows = json.loads(
        invoke("anomalies", "replay", meter_csv, "--config", town, "--format", "json")
    )
    assert rows[0]["timestamp"] == "2026-03-28T23:30:00Z"


def test_replay_without_a_town_says_utc(tmp_path, meter_csv):
    # No config (replay is often run on a laptop): the zone is unknown, the times say Z.
    out = invoke("anomalies", "replay", meter_csv, "--config", tmp_path / "none.toml")
    assert out.splitlines()[1].startswith("2026-03-28T23:30:00Z,")


LIGHTING = """
[[detect.lighting]]
name = "Rue de la Mairie"
nodes = ["lamp-0*"]
[[detect.lighting.switch_off]]
from = "01:00"
to = "05:00"
days = "sun-thu"
[[detect.lighting.dim]]
from = "22:00"
percent = 37.5
"""


def test_a_lighting_night_in_the_towns_time_and_excels_csv(town, french):
    # The night of 28 March 2026, when 02:00 CET becomes 03:00 CEST inside the switch-off.
    with town.open("a") as f:
        f.write(LIGHTING)
    night = ("gateway", "check", "--config", town, "--group", "Rue de la Mairie")
    night += ("--night", "2026-03-28")
    # The screen keeps the weekday and the zone's abbreviation of each time.
    table = invoke(*night).splitlines()
    assert table[0] == "Rue de la Mairie: night of Saturday 2026-03-28, times in Europe/Paris"
    assert "Sat 28 22:00 CET   Sun 29 07:" in table[4] and "37.5 %" in table[4]
    # The locale writes a decimal comma: the CSV is French Excel's, the dimmed level 37,5.
    excel = invoke(*night, "--format", "csv")
    lines = excel.split("\r\n")
    assert lines[0] == "\ufefffrom (Europe/Paris);to (Europe/Paris);level (%);why"
    assert lines[3].startswith("28/03/2026 22:00;29/03/2026 07:")
    assert ";37,5;dimmed to 37.5 % from 22:00" in lines[3]
    assert lines[1].startswith("28/03/2026 12:00;28/03/2026 19:") and ";0;day: dark" in lines[1]
    assert invoke(*night, "--excel") == excel
    # --no-excel: a plain CSV, local times with their offset, either side of the change.
    plain = invoke(*night, "--format", "csv", "--no-excel").splitlines()
    assert plain[0] == "from (Europe/Paris),to (Europe/Paris),level (%),why"
    assert plain[3].startswith("2026-03-28 22:00:00+01:00,2026-03-29 07:")
    assert "+02:00,37.5,dimmed to 37.5 % from 22:00" in plain[3]
    # JSON is for programs: ISO 8601 UTC, as every command's; the level from 0 to 1.
    periods = json.loads(invoke(*night, "--format", "json"))
    assert periods[0]["start"] == "2026-03-28T11:00:00Z"  # noon, CET
    assert periods[-1]["end"] == "2026-03-29T10:00:00Z"  # noon, CEST
    assert [p["level"] for p in periods] == [0.0, 1.0, 0.375, 0.0]  # a Saturday: no switch-off
