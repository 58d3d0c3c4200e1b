"""reverbere anomalies / anomalies replay, on a real database file."""

import csv
import io
import json
import math
import random

from click.testing import CliRunner
from detect_helpers import make_db, store

from gateway import render
from gateway.cli.main import cli
from gateway.pipeline.detect import DetectConfig, Detector
from gateway.pipeline.summarise import summarise
from gateway.store.records import Reading

T0 = 1_791_158_400


def test_replay_prints_score_and_alarm(tmp_path):
    rng = random.Random(1)
    path = tmp_path / "meter.csv"
    with open(path, "w") as f:
        f.write("timestamp,value\n")
        for k in range(6 * 288):
            v = 20 + 3 * math.sin(2 * math.pi * k / 288) + rng.gauss(0, 0.3)
            if k == 5 * 288:
                v += 10
            f.write(f"{T0 + 300 * k},{v:.3f}\n")
    # No town's config: times print in UTC (tests/test_cli_town_lists.py: with one)
    nowhere = ["--config", str(tmp_path / "none.toml")]
    result = CliRunner().invoke(
        cli, ["anomalies", "replay", str(path), "--kind", "temperature", *nowhere]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert len(rows) == 6 * 288
    assert all(0 <= float(r["score"]) <= 1 for r in rows)
    alarmed = [r["timestamp"] for r in rows if r["alarm"] == "1"]
    assert render.iso(T0 + 300 * 5 * 288) in alarmed
    as_json = CliRunner().invoke(
        cli, ["anomalies", "replay", str(path), "--format", "json", *nowhere]
    )
    assert json.loads(as_json.output)[0].keys() == {"timestamp", "score", "alarm"}


def test_replay_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("timestamp,value\n1791158400,1\n1791158460,oops\n")
    result = CliRunner().invoke(cli, ["anomalies", "replay", str(path)])
    assert result.exit_code == 1 and "bad.csv:3" in result.output


def test_anomalies_from_the_database(tmp_path):
    db = make_db(tmp_path / "g.db")
    rs = [Reading("school-01", "e", T0 + 300 * k, 1000.0 + 10 * k) for k in range(30)]
    rs += [Reading("school-01", "e", T0 + 300 * (30 + k), 5.0 * k) for k in range(10)]
    detect = Detector(DetectConfig())
    for k in range(0, len(rs), 10):
        chunk = store(db, rs[k : k + 10])
        detect(db, chunk)
        summarise(db, chunk)
    run = CliRunner().invoke
    out = run(cli, ["anomalies", "--db", str(tmp_path / "g.db"), "--format", "json"])
    assert out.exit_code == 0, out.output
    events = json.loads(out.output)
    assert [e["kind"] for e in events] == ["counter_reset"]
    assert events[0]["start"] == "2026-10-05T02:30:00Z"
    table = run(cli, ["anomalies", "--db", str(tmp_path / "g.db"), "--open"])
    assert table.output.splitlines()[0].split()[:4] == ["id", "node", "channel", "grandeur"]
    # Spelled out for the energy manager: the counter is energy in Wh; the times are the
    # town's (no config here: UTC, said in each time's Z).
    everything = run(cli, ["anomalies", "--db", str(tmp_path / "g.db")]).output
    assert "énergie, Wh" in everything and "2026-10-05T02:30:00Z" in everything
    # The summaries the stage wrote (printed by `reverbere summaries`, gateway/cli/sync.py).
    wh = [r["wh"] for r in db.query("SELECT wh FROM summaries ORDER BY hour")]
    assert wh[0] == 120.0  # 12 steps of 10 Wh in the first hour


def test_missing_database_gives_a_hint(tmp_path):
    result = CliRunner().invoke(cli, ["anomalies", "--db", str(tmp_path / "nope.db")])
    assert result.exit_code == 1 and "hint" in result.output


def test_large_values_print_whole_not_in_exponent_form():
    # An energy counter's readings (min, max of the hour) run into tens of thousands of Wh.
    from gateway.render import render

    rows = [{"min": 12345.6, "max": 123456.7, "mean": 5030.25, "wh": 0.75}]
    out = render(rows, ("min", "max", "mean", "wh"), "csv")
    assert out.splitlines()[1] == "12346,123457,5030,0.75"
