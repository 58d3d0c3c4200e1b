"""``reverbere summaries`` and ``reverbere sync status``, and the ``[sync]`` config checks."""

import csv
import json
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

from gateway.cli.main import cli
from gateway.pipeline.handoff import feed_outbox
from gateway.store.db import open_db
from gateway.sync.config import SyncConfig, SyncConfigError, parse_bytes
from gateway.sync.service import build_worker
from sim.platform import start_platform
from tests.sync_helpers import H0, locations, week_of_summaries


@pytest.fixture(scope="module")
def synced(tmp_path_factory):
    """A gateway database whose summarise and detect tables went through the outbox to a
    platform: (db path, platform url). Figures have at most 3 decimals, the platform's."""
    tmp = tmp_path_factory.mktemp("cli")
    with start_platform(tmp / "platform.sqlite3") as platform:
        db = open_db(tmp / "gw.db")
        db["summaries"].insert_all(
            {
                "node": s.node,
                "channel": s.channel,
                "hour": s.hour,
                "count": s.count,
                "min": round(s.min, 3),
                "max": round(s.max, 3),
                "sum": 0.0,
                "mean": round(s.mean, 3),
                "wh": round(s.wh, 3),
            }
            for s in week_of_summaries(3, hours=30)
        )
        db["anomalies"].insert_all(
            {
                "node": f"lamp-{n:03d}",
                "channel": "p",
                "kind": "lit_by_day",
                "start": H0 + 3600 * (10 + n),
                "end": H0 + 3600 * (11 + n) if n else None,
                "score": 0.75,
                "reason": "lamp on in daylight",
            }
            for n in range(3)
        )
        assert feed_outbox(db) == 3 * 2 * 30 + 3
        worker = build_worker(db, SyncConfig(url=platform.url), locations(3), batch_rows=50)
        assert worker.sync_until_idle() == "idle"
        worker.target.close()
        yield tmp / "gw.db", platform.url


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


WINDOW = ("--since", "2026-01-01T00:00Z", "--until", "2026-01-02T06:00Z")


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_the_platform_and_the_gateway_print_the_same(synced, fmt):
    db, url = synced
    from_platform = run("summaries", "--from", url, *WINDOW, "--format", fmt)
    from_gateway = run("summaries", "--from", "gateway", "--db", str(db), *WINDOW, "--format", fmt)
    assert from_platform == from_gateway
    if fmt == "json":
        data = json.loads(from_platform)
        assert len(data) == 3 * 2 * 30
        assert data[0]["hour"] == "2026-01-01T00:00:00Z"
    if fmt == "csv":
        lines = from_platform.splitlines()
        # (no config here: the town's zone is unknown, so the hours stay UTC)
        assert lines[0] == "node,channel,grandeur,hour,count,min,max,mean,wh"
        assert len(lines) == 1 + 3 * 2 * 30
    if fmt == "table":
        assert "anomalies:" in from_platform and "lamp on in daylight" in from_platform


def test_summaries_in_the_towns_time_and_for_excel(synced, tmp_path):
    # With the gateway's config, the hours are the town's (Europe/Paris, as init writes it):
    # the first UTC hour of 2026 is 01:00 in Paris. --excel is the CSV French Excel opens.
    _, url = synced
    run("gateway", "init", str(tmp_path))
    cfg = ("--config", str(tmp_path / "gateway.toml"))
    lines = run("summaries", "--from", url, *cfg, *WINDOW, "--format", "csv").splitlines()
    assert lines[0] == "node,channel,grandeur,hour (Europe/Paris),count,min,max,mean,wh"
    assert ',"énergie, Wh",2026-01-01 01:00:00+01:00,' in lines[1]
    excel = run("summaries", "--from", url, *cfg, *WINDOW, "--excel")
    header, first = excel.lstrip("\ufeff").splitlines()[:2]
    assert excel.startswith("\ufeff") and header.startswith("node;channel;grandeur;hour (Europe")
    assert ";01/01/2026 01:00;" in first
    utc = run("summaries", "--from", url, *cfg, *WINDOW, "--format", "csv", "--utc").splitlines()
    assert utc[0].split(",")[3] == "hour" and "2026-01-01T00:00:00Z" in utc[1]


def test_anomalies_alike_from_both(synced):
    db, url = synced
    args = (*WINDOW, "--anomalies", "--format", "json")
    from_platform = json.loads(run("summaries", "--from", url, *args))
    assert from_platform == json.loads(
        run("summaries", "--from", "gateway", "--db", str(db), *args)
    )
    assert [e["end"] for e in from_platform] == [
        None,
        "2026-01-01T12:00:00Z",
        "2026-01-01T13:00:00Z",
    ]


def test_paging_through_next_links(synced):
    """Fewer rows per page than rows: the client must follow @iot.nextLink."""
    from gateway.sync.report import pull

    _, url = synced
    got = pull(url, H0, H0 + 30 * 3600, page_size=40)
    assert got.requests > 5 and len(got.summaries) == 180 and got.duplicates == 0


def test_node_filter(synced):
    _, url = synced
    out = json.loads(
        run("summaries", "--from", url, *WINDOW, "--format", "json", "--node", "lamp-001")
    )
    assert {s["node"] for s in out} == {"lamp-001"}


@pytest.mark.parametrize("suffix", [".svg", ".html"])
def test_chart_of_energy_per_hour_with_anomalies(synced, tmp_path, suffix):
    _, url = synced
    chart = tmp_path / ("chart" + suffix)
    run("summaries", "--from", url, *WINDOW, "--chart", str(chart))
    text = chart.read_text()
    # the lamps' panel, their names in its legend, the anomalies marked with their kind
    assert "lamp-000" in text and "Anomalies" in text and "lamp-001 : allumé de jour" in text
    if suffix == ".svg":
        ET.fromstring(text)  # well-formed SVG
    else:
        assert "<svg" in text and "lamp on in daylight" in text


def test_chart_format_errors_say_what_to_use(synced, tmp_path):
    _, url = synced
    result = CliRunner().invoke(
        cli, ["summaries", "--from", url, *WINDOW, "--chart", str(tmp_path / "c.gif")]
    )
    assert result.exit_code != 0 and ".svg" in result.output


def test_sync_status(synced):
    db, _ = synced
    status = json.loads(run("sync", "status", "--db", str(db), "--json"))
    assert status["pending_summaries"] == 0 and status["synced"] == 3 * 2 * 30 + 3
    assert status["budget_sent"] > 0 and status["last_success"]
    text = run("sync", "status", "--db", str(db))
    assert "backlog:       0 events, 0 summaries" in text


def test_unreachable_platform_is_a_message_with_a_hint():
    result = CliRunner().invoke(cli, ["summaries", "--from", "http://127.0.0.1:9/v1.1"])
    assert result.exit_code == 1 and "hint" in result.output


def test_config_errors_name_the_key():
    with pytest.raises(SyncConfigError, match="url"):
        SyncConfig.from_dict({"target": "sensorthings"})
    with pytest.raises(SyncConfigError, match="daily_budget"):
        SyncConfig.from_dict({"url": "http://x/v1.1", "daily_budget": "lots"})
    with pytest.raises(SyncConfigError, match="batch_size"):
        SyncConfig.from_dict({"url": "http://x/v1.1", "batch_size": 3})
    with pytest.raises(SyncConfigError, match=r"mqtt\.preset"):
        SyncConfig.from_dict({"target": "mqtt", "mqtt": {"preset": "aws"}})
    cfg = SyncConfig.from_dict({"url": "http://x/v1.1", "daily_budget": "5 MB", "timeout": 5})
    assert cfg.daily_budget == 5_000_000 and cfg.timeout == 5.0
    assert parse_bytes("1MiB") == 1 << 20 and parse_bytes(0) is None


def test_a_counter_shows_its_energy_and_no_mean(synced):
    # The energy counter "e": the platform's result is the Wh counted in the hour, and the mean
    # of a counter's values means nothing, so the mean column is empty from both sources (the
    # Wh used to show under "mean" from one of them).
    from gateway.sync.outbox import Summary, summary_row
    from gateway.sync.report import as_record

    db, url = synced
    outbox = open_db(db)
    row = outbox.execute(
        "SELECT result, parameters FROM sync_outbox WHERE stream = 'e' ORDER BY time LIMIT 1"
    ).fetchone()
    params = json.loads(row[1])
    assert row[0] == params["wh"] and "mean" not in params
    for source in (url, "gateway"):
        rows = json.loads(
            run("summaries", "--from", source, "--db", str(db), *WINDOW, "--format", "json")
        )
        e = [r for r in rows if r["channel"] == "e"]
        p = [r for r in rows if r["channel"] == "p"]
        assert len(e) == len(p) == 3 * 30
        assert all(r["mean"] is None and r["wh"] is not None for r in e), source
        assert all(r["mean"] is not None for r in p), source
        assert e[0]["min"] == 1000 and e[0]["max"] == 1060  # the counter's readings
    csv_lines = run("summaries", "--from", url, *WINDOW, "--format", "csv").splitlines()
    e_line = next(row for row in csv.reader(csv_lines) if row[1] == "e")
    assert e_line[2] == "énergie, Wh" and e_line[7] == "" and e_line[8] != ""  # mean, wh
    # An Observation carries no mean for a counter: the result (Wh) is not taken for one.
    _, s = as_record("lamp-000", "e", H0, 61.5, {"count": 60, "min": 1000, "wh": 61.5})
    assert s.mean is None and s.wh == 61.5
    # An hour whose energy is not counted yet (one reading so far) says 0 Wh, not the counter.
    assert summary_row(Summary("lamp-000", "e", H0, 1, 5181.0, 5181.0, 5181.0, None))["result"] == 0
    # The drop counter likewise sends the readings dropped in the hour, not its mean value.
    assert summary_row(Summary("lamp-000", "drop", H0, 2, 40.0, 46.0, 43.0, 6.0))["result"] == 6
