"""What ``node list``, ``sync status`` and every ``--format csv`` give a French town as it is
(issue 15, item 6): times in the town's zone, named, on both sides of a clock change, and the
CSV its spreadsheet opens when the user's locale writes a decimal comma."""

import datetime as dt

import pytest
from click.testing import CliRunner

from gateway import render
from gateway.cli.main import cli
from gateway.ingest import registry
from gateway.store.db import open_db
from gateway.sync.outbox import set_state

# Summer time starts in Paris on 29 March 2026 at 01:00 UTC (02:00 local becomes 03:00): the
# same UTC hour is 01:30+01:00 before and 03:30+02:00 after.
BEFORE = dt.datetime(2026, 3, 29, 0, 30, tzinfo=dt.UTC).timestamp()
AFTER = dt.datetime(2026, 3, 29, 1, 30, tzinfo=dt.UTC).timestamp()


def invoke(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def town(tmp_path):
    """A gateway made by ``gateway init`` (its config says Europe/Paris) with two nodes last
    heard on either side of the change to summer time; the config's path."""
    invoke("gateway", "init", tmp_path)
    db = open_db(tmp_path / "reverbere.db")
    for node, seen in (("lamp-001", BEFORE), ("lamp-002", AFTER)):
        registry.add_node(db, node)
        db.execute("UPDATE nodes SET last_seen = ? WHERE id = ?", [seen, node])
    registry.add_node(db, "lamp-003")  # never heard
    db.conn.commit()
    return tmp_path / "gateway.toml"


def test_node_list_in_the_towns_time_across_the_clock_change(town):
    lines = invoke("node", "list", "--config", town).splitlines()
    assert lines[0].split()[:2] == ["id", "last_seen"] and "(Europe/Paris)" in lines[0]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert "2026-03-29 01:30:00+01:00" in rows["lamp-001"]
    assert "2026-03-29 03:30:00+02:00" in rows["lamp-002"]
    assert "never" in rows["lamp-003"]


def test_node_list_utc_and_json_stay_utc(town):
    utc = invoke("node", "list", "--config", town, "--utc").splitlines()
    assert "Europe/Paris" not in utc[0] and "2026-03-29T00:30:00Z" in utc[1]
    # JSON is for programs: ISO 8601 UTC, as before, whatever the town.
    assert '"last_seen": "2026-03-29T01:30:00Z"' in invoke(
        "node", "list", "--config", town, "--json"
    )


def test_sync_status_in_the_towns_time_across_the_clock_change(town):
    db = open_db(town.parent / "reverbere.db")
    set_state(db, "last_success", str(BEFORE))
    set_state(db, "failures", "2")
    set_state(db, "last_error", "platform unreachable")
    set_state(db, "next_attempt", str(AFTER))
    db.conn.commit()
    out = invoke("sync", "status", "--config", town)
    assert out.splitlines()[0] == "times:         Europe/Paris"
    assert "last success:  2026-03-29 01:30:00+01:00 (" in out
    assert "next try 2026-03-29 03:30:00+02:00 (" in out
    assert " (UTC day): " in out  # the byte budget's day is not the town's: it says so
    utc = invoke("sync", "status", "--config", town, "--utc")
    assert utc.splitlines()[0] == "times:         UTC"
    assert "last success:  2026-03-29 00:30:00Z (" in utc
    assert "next try 2026-03-29 01:30:00Z (" in utc


@pytest.mark.parametrize(
    "env, comma",
    [
        ({"LANG": "fr_FR.UTF-8"}, True),
        ({"LANG": "de_DE.UTF-8"}, True),  # any decimal comma, not only French
        ({"LANG": "en_GB.UTF-8"}, False),
        ({"LANG": "C.UTF-8"}, False),
        ({}, False),
        # LC_ALL overrides LC_NUMERIC, which overrides LANG (POSIX)
        ({"LC_ALL": "C", "LANG": "fr_FR.UTF-8"}, False),
        ({"LC_NUMERIC": "fr_FR.UTF-8", "LANG": "en_US.UTF-8"}, True),
        ({"LANG": "xx_YY"}, False),  # unknown: a plain CSV
    ],
)
def test_which_locales_write_a_decimal_comma(env, comma):
    assert render.locale_decimal_comma(env) is comma


def test_csv_follows_the_locale(town, monkeypatch):
    db = open_db(town.parent / "reverbere.db")
    ref = db.execute("SELECT ref FROM nodes WHERE id = 'lamp-001'").fetchone()[0]
    db["readings"].insert({"node": ref, "channel": "t", "time": AFTER, "value": 21.5})
    db.conn.commit()
    plain = invoke("readings", "--config", town, "--format", "csv")
    assert plain.splitlines()[1] == 'lamp-001,t,"température, °C",2026-03-29 03:30:00+02:00,21.5'
    monkeypatch.setenv("LANG", "fr_FR.UTF-8")
    excel = invoke("readings", "--config", town, "--format", "csv")
    assert (
        excel.startswith("\ufeff") and "lamp-001;t;température, °C;29/03/2026 03:30;21,5" in excel
    )
    # --no-excel: the plain CSV a program reads, whatever the locale
    assert invoke("readings", "--config", town, "--format", "csv", "--no-excel") == plain
    # The locale chooses the CSV's form, not the format: a table stays a table.
    assert not invoke("readings", "--config", town).startswith("\ufeff")
    # The same rule in every command that writes CSV.
    listing = invoke("node", "list", "--config", town, "--format", "csv")
    assert listing.startswith("\ufeffid;last_seen (Europe/Paris);")
