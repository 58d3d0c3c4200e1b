"""The operator's commands, through click's runner and (for `gateway run`) a real process."""

import asyncio
import json
import signal
import sqlite3
import time

from click.testing import CliRunner
from gateway_helpers import GatewayProcess, http_get, metric, minute_readings

from gateway import render
from gateway.cli.main import cli
from gateway.ingest import registry
from gateway.store import group as store
from gateway.store.commit import commit_batch
from gateway.store.db import open_db
from gateway.store.records import Reading
from sim.sender import Sender, SimNode


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_init_writes_a_commented_config_and_the_database(tmp_path):
    r = invoke("gateway", "init", tmp_path / "gw")
    assert r.exit_code == 0, r.output
    text = (tmp_path / "gw" / "gateway.toml").read_text()
    assert "[coap]" in text and "# " in text
    assert (tmp_path / "gw" / "reverbere.db").exists()
    again = invoke("gateway", "init", tmp_path / "gw")
    assert again.exit_code == 1 and "already exists" in again.output


def test_node_commands(tmp_path):
    invoke("gateway", "init", tmp_path)
    cfg = tmp_path / "gateway.toml"
    r = invoke("node", "add", "lamp-001", "--config", cfg, "--json")
    out = json.loads(r.output)
    assert out["node_id"] == "lamp-001" and len(bytes.fromhex(out["key"])) == 32
    assert registry.lookup(open_db(tmp_path / "reverbere.db"), "lamp-001")[1].hex() == out["key"]
    dup = invoke("node", "add", "lamp-001", "--config", cfg)
    assert dup.exit_code == 1 and "rotate-key" in dup.output  # the hint
    r = invoke("node", "rotate-key", "lamp-001", "--config", cfg, "--json")
    assert json.loads(r.output)["key"] != out["key"]
    invoke("node", "add", "lamp-002", "--config", cfg)
    listing = invoke("node", "list", "--config", cfg)
    assert "lamp-001" in listing.output and "never" in listing.output
    assert invoke("node", "remove", "lamp-002", "--config", cfg).exit_code == 0
    nodes = json.loads(invoke("node", "list", "--config", cfg, "--json").output)
    assert [n["id"] for n in nodes] == ["lamp-001"]
    assert invoke("node", "remove", "lamp-002", "--config", cfg).exit_code == 1


def test_readings_in_three_formats(tmp_path):
    invoke("gateway", "init", tmp_path)
    cfg = tmp_path / "gateway.toml"
    db = open_db(tmp_path / "reverbere.db")
    registry.add_node(db, "a")
    ref, key, _ = registry.lookup(db, "a")
    commit_batch(
        db.conn,
        [
            store.Pack(
                ref,
                "a",
                key,
                1,
                [Reading("a", "p", 1767225600, 61.5), Reading("a", "t", 1767225660, 4)],
            )
        ],
    )
    rows = json.loads(invoke("readings", "--config", cfg, "--format", "json").output)
    assert rows[0] == {"node": "a", "channel": "p", "time": "2026-01-01T00:00:00Z", "value": 61.5}
    csv_out = invoke("readings", "--config", cfg, "--format", "csv", "--node", "a").output
    # For people: the town's time (init writes Europe/Paris), the zone in the header, and what
    # the channel measures spelled out beside it.
    lines = csv_out.splitlines()
    assert lines[0] == "node,channel,grandeur,time (Europe/Paris),value" and len(lines) == 3
    assert lines[1] == 'a,p,"puissance, W",2026-01-01 01:00:00+01:00,61.5'
    since = invoke("readings", "--config", cfg, "--since", "2026-01-01T00:00:30Z").output
    assert "61.5" not in since and "2026-01-01 01:01:00+01:00" in since
    utc = invoke("readings", "--config", cfg, "--format", "csv", "--utc").output.splitlines()
    assert utc[0] == "node,channel,grandeur,time,value" and "2026-01-01T00:00:00Z" in utc[1]


def test_readings_for_french_excel(tmp_path):
    # --excel: what the technical services open by double-clicking, local dates, decimal comma.
    invoke("gateway", "init", tmp_path)
    _store(tmp_path / "reverbere.db", Reading("a", "t", 1782900000, 21.5))  # 10:00 UTC, summer
    r = invoke("readings", "--config", tmp_path / "gateway.toml", "--excel")
    assert r.output.startswith("\ufeff")
    header, row = r.output.lstrip("\ufeff").splitlines()[:2]
    assert header == "node;channel;grandeur;time (Europe/Paris);value"
    assert row == "a;t;température, °C;01/07/2026 12:00;21,5"
    bad = invoke("readings", "--config", tmp_path / "gateway.toml", "--excel", "--format", "json")
    assert bad.exit_code != 0 and "--excel writes CSV" in bad.output


def _store(db_path, *readings):
    db = open_db(db_path)
    registry.add_node(db, "a")
    ref, key, _ = registry.lookup(db, "a")
    commit_batch(db.conn, [store.Pack(ref, "a", key, 1, list(readings))])


def test_readings_since_a_week(tmp_path):
    # `readings --since 1w` used to fail where `anomalies --since 1w` worked: two parsers.
    invoke("gateway", "init", tmp_path)
    now = int(time.time())
    _store(
        tmp_path / "reverbere.db",
        Reading("a", "p", now - 10 * 86400, 10.0),
        Reading("a", "p", now - 3 * 86400, 30.0),
    )
    r = invoke(
        "readings", "--config", tmp_path / "gateway.toml", "--since", "1w", "--format", "json"
    )
    assert r.exit_code == 0, r.output
    assert [row["value"] for row in json.loads(r.output)] == [30.0]
    # --until takes the same forms: what is older than a week.
    r = invoke("readings", "--db", tmp_path / "reverbere.db", "--until", "1w", "--format", "csv")
    # (--db alone: no config to read the town's zone from, so UTC, each time ending in Z)
    assert r.output.splitlines()[1:] == [f'a,p,"puissance, W",{render.iso(now - 10 * 86400)},10.0']


def test_readings_print_values_whole_and_times_to_the_millisecond(tmp_path):
    # A reading's value is data: the table and CSV do not round it as they round a summary's
    # mean; a time with a fraction keeps it.
    invoke("gateway", "init", tmp_path)
    _store(tmp_path / "reverbere.db", Reading("a", "e", 1767225600.25, 123456.789))
    csv_out = invoke("readings", "--db", tmp_path / "reverbere.db", "--format", "csv").output
    assert csv_out.splitlines()[1] == 'a,e,"énergie, Wh",2026-01-01T00:00:00.250Z,123456.789'
    local = invoke("readings", "--config", tmp_path / "gateway.toml", "--format", "csv").output
    assert "2026-01-01 01:00:00.250+01:00,123456.789" in local


def test_node_list_in_three_formats(tmp_path):
    invoke("gateway", "init", tmp_path)
    cfg = tmp_path / "gateway.toml"
    invoke("node", "add", "lamp-001", "--config", cfg)
    table = invoke("node", "list", "--config", cfg).output.splitlines()
    # last_seen is the town's time: its header names the zone (gateway init: Europe/Paris)
    assert table[0].split() == [
        "id",
        "last_seen",
        "(Europe/Paris)",
        "last_seq",
        "messages",
        "lost",
        "battery",
    ]
    assert table[1].split()[:2] == ["lamp-001", "never"]
    csv_out = invoke("node", "list", "--config", cfg, "--format", "csv").output
    # CSV leaves "never" empty, and the counter too: the node has stored nothing yet
    assert csv_out.splitlines()[1] == "lamp-001,,,0,0,"
    (node,) = json.loads(invoke("node", "list", "--config", cfg, "--format", "json").output)
    assert node["last_seen"] is None and node["added"].endswith("Z") and node["active"] is True
    assert node["last_seq"] is None


def test_a_missing_database_is_not_created_by_a_command_that_reads(tmp_path):
    r = CliRunner().invoke(cli, ["readings", "--db", str(tmp_path / "typo.db")])
    assert r.exit_code == 1 and "no database at" in r.output and "hint:" in r.output
    assert not (tmp_path / "typo.db").exists()


def test_a_file_that_is_not_the_gateway_database_is_refused_untouched(tmp_path):
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    for path, why in ((other, "without the gateway's tables"), (text, "not an SQLite database")):
        for args in (["readings"], ["anomalies"], ["node", "list"], ["sync", "status"]):
            r = CliRunner().invoke(cli, [*args, "--db", str(path)])
            assert r.exit_code == 1, (args, r.output)
            assert why in r.output and "hint:" in r.output, (args, r.output)
    con = sqlite3.connect(other)
    assert [n for (n,) in con.execute("SELECT name FROM sqlite_master")] == ["t"]  # no migration
    con.close()


def test_config_errors_name_file_line_and_key(tmp_path):
    cfg = tmp_path / "gateway.toml"
    cfg.write_text("[store]\nmax_queue = -1\n")
    r = invoke("node", "list", "--config", cfg)
    assert r.exit_code == 1
    assert f"{cfg}:2: store.max_queue: must be at least 1" in r.output


def test_gateway_run_serves_coap_and_metrics_and_stops_on_sigterm(tmp_path):
    invoke("gateway", "init", tmp_path)
    key = bytes.fromhex(
        json.loads(
            invoke("node", "add", "n1", "--config", tmp_path / "gateway.toml", "--json").output
        )["key"]
    )
    gw = GatewayProcess(tmp_path / "gateway.toml")
    try:

        async def go():
            async with Sender("127.0.0.1", gw.coap_port) as s:
                assert (await s.send(SimNode("n1", key), minute_readings())).acked
            return await http_get(gw.http_port, "/metrics")

        status, text = asyncio.run(go())
        assert status == 200 and metric(text, "reverbere_readings_stored_total") == 10
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(timeout=20) == 0
        assert any(rec.get("msg") == "gateway stopped" for rec in gw.log)
    finally:
        if gw.proc.poll() is None:
            gw.kill()


def test_demo_ends_with_one_json_line(tmp_path):
    r = invoke("demo", "--nodes", 2, "--hours", 1, "--out", tmp_path, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output.strip().splitlines()[-1])
    assert report["readings_sent"] == report["readings_acked"] == report["readings_stored"] > 0
    assert report["duplicates_stored"] == report["acked_but_lost"] == 0
    assert json.loads((tmp_path / "report.json").read_text())["nodes"] == 2


def test_every_command_and_config_key_is_documented():
    # docs/gateway.md cannot drift from the code: each command and each config key is in it.
    from pathlib import Path

    from gateway import config

    doc = (Path(__file__).parent.parent / "docs" / "gateway.md").read_text()
    for group in ("gateway", "node"):
        for name, command in cli.commands[group].commands.items():
            if command.callback.__module__ == "gateway.cli.gateway":  # others document theirs
                assert f"reverbere {group} {name}" in doc, name
    for name in ("readings", "demo"):
        assert f"reverbere {name}" in doc
    for section, keys in config._KEYS.items():
        for key in keys:
            assert f"`{section}.{key}`" in doc, f"{section}.{key}"
