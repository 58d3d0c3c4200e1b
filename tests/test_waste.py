"""Waste in kWh and euros (issue 15, item 3): each event of a kind of waste carries the energy
drawn above what its detector expected, priced with the [site] tariff, and `reverbere waste`
sums it. Figures are checked against hand computations."""

import datetime as dt
import json
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from detect_helpers import make_db, store

from gateway import config
from gateway.cli.main import cli
from gateway.pipeline.detect import DetectConfig, Detector
from gateway.pipeline.detect.engine import save_event
from gateway.pipeline.detect.events import Event, Finding, Tracker
from gateway.pipeline.waste import Tariff, group_function, prefix_group, waste
from gateway.service import pipeline_config
from gateway.store.records import Reading

PARIS = ZoneInfo("Europe/Paris")
# 2026-11-10 21:30 in Paris (UTC+1): half an hour before the off-peak hours start.
EVENING = dt.datetime(2026, 11, 10, 21, 30, tzinfo=PARIS).timestamp()
FLAT = Tariff(0.20, "Europe/Paris")
HCHP = Tariff(0.20, "Europe/Paris", 0.15, ((22 * 60, 6 * 60),))  # off-peak 22:00-06:00


def run_tracker(kind, powers, expected, step=60.0, cost=None, t0=EVENING):
    """Feed one tracker a confirmed finding of ``kind`` per reading; the open event."""
    tr = Tracker()
    last = None
    for i, p in enumerate(powers):
        t = t0 + i * step
        f = Finding(kind, 1.0, True, lambda: "words", expected=expected)
        tr.step("n", "p", t, f, 0.5, power=p, since=last, cost=cost)
        last = t
    return tr.event


# The kinds of waste of issue 15 as the detectors name them today, and the new ones' names: a
# kind is waste when its finding says what was expected, whatever its name.
@pytest.mark.parametrize(
    "kind, powers, expected",
    [
        ("lit_by_day", [70.0] * 11, 0.0),  # a 70 W lamp lit by day, 10 minutes
        ("off_schedule", [2400.0] * 11, 400.0),  # a school at 2.4 kW at night, 0.4 kW expected
        ("switch_off", [70.0] * 11, 2.0),  # lit in the switch-off window, 2 W standby
        ("dimming", [70.0] * 11, 35.0),  # dimming to half not applied
        ("base_load", [900.0, 1000.0, 1100.0] * 3 + [1000.0, 1000.0], 600.0),  # raised base load
    ],
)
def test_the_waste_of_each_kind_by_hand(kind, powers, expected):
    ev = run_tracker(kind, powers, expected, cost=FLAT.cost)
    # Each reading after the first adds (power - expected) for its 60 s: W x s / 3.6e6 = kWh.
    hand = sum((p - expected) * 60 for p in powers[1:]) / 3.6e6
    assert ev.waste_kwh == pytest.approx(hand)
    assert ev.waste_eur == pytest.approx(hand * 0.20)
    assert ev.as_row()["waste_kwh"] == round(hand, 4)


def test_a_reading_below_what_was_expected_wastes_nothing():
    ev = run_tracker("lit_by_day", [70.0, 0.0, 0.0, 70.0], 10.0)
    assert ev.waste_kwh == pytest.approx(60 * 60 / 3.6e6)  # only the last minute
    assert ev.waste_eur is None  # no tariff: kWh only


def test_kinds_that_are_not_waste_carry_none():
    tr = Tracker()
    for i in range(3):
        tr.step("n", "t", EVENING + 60 * i, Finding("stuck", 1.0, True, str), 0.5, 20.0, None)
    assert tr.event.waste_kwh is None and tr.event.as_row()["waste_kwh"] is None


def test_peak_and_off_peak_across_the_hour_boundary():
    # 21:57 to 22:02 at 1,000 W above expected: 3 minutes at the peak price, 2 off-peak.
    t0 = dt.datetime(2026, 11, 10, 21, 57, tzinfo=PARIS).timestamp()
    ev = run_tracker("lit_by_day", [1000.0, 1000.0], 0.0, step=300.0, cost=HCHP.cost, t0=t0)
    kwh = 1000 * 300 / 3.6e6
    assert ev.waste_kwh == pytest.approx(kwh)
    assert ev.waste_eur == pytest.approx(kwh * (3 / 5 * 0.20 + 2 / 5 * 0.15))
    # An evening from 21:30 to 22:30 in 10-minute steps: half at each price.
    ev = run_tracker("lit_by_day", [600.0] * 7, 0.0, step=600.0, cost=HCHP.cost)
    assert ev.waste_kwh == pytest.approx(0.6)
    assert ev.waste_eur == pytest.approx(0.3 * 0.20 + 0.3 * 0.15)
    # Off-peak until 06:00: the morning edge splits too; a whole day is 8 h off-peak.
    midnight = dt.datetime(2026, 11, 11, 0, 0, tzinfo=PARIS).timestamp()
    assert HCHP.cost(midnight, midnight + 86400, 24.0) == pytest.approx(8 * 0.15 + 16 * 0.20)


def test_a_tariff_over_the_clock_change():
    # 25 October 2026, Paris goes back from UTC+2 to UTC+1 at 03:00: the day has 25 hours,
    # off-peak 22:00-06:00 local holds 9 of them (22:00 to 06:00 over the change: 9 h).
    day = dt.datetime(2026, 10, 24, 22, 0, tzinfo=PARIS).timestamp()
    end = dt.datetime(2026, 10, 25, 22, 0, tzinfo=PARIS).timestamp()
    assert end - day == 25 * 3600
    assert HCHP.cost(day, end, 25.0) == pytest.approx(9 * 0.15 + 16 * 0.20)


class ExpectLevel:
    """A detector of a kind of waste, for the engine's wiring: above 100 W is waste, 20 W
    expected (as a lighting schedule's switch-off window would say)."""

    def step(self, t, x):
        return [Finding("switch_off", 1.0 if x > 100 else 0.0, x > 100, str, expected=20.0)]

    def dump(self):
        return None

    def load(self, d):
        pass


def test_an_open_event_waste_grows_as_readings_come(tmp_path):
    db = make_db(tmp_path / "g.db")
    detect = Detector(DetectConfig(timezone="Europe/Paris"), cost=HCHP.cost)
    detect.channel(db, "lamp-1", "p").rules.append(ExpectLevel())
    stored = []
    for k in range(6):  # six packs of 10 readings, a minute apart, at 120 W
        rs = [Reading("lamp-1", "p", EVENING + 60 * (10 * k + i), 120.0) for i in range(10)]
        detect(db, store(db, rs))
        stored.append(
            db.execute(
                "SELECT waste_kwh, waste_eur, end, version FROM anomalies WHERE kind = 'switch_off'"
            ).fetchone()
        )
    # Stored once a quarter hour of readings: the row grows with the event, still open.
    kwh = [row[0] for row in stored]
    assert kwh == sorted(kwh) and kwh[-1] > kwh[0]
    assert all(row[2] is None for row in stored)
    # 21:30 to 22:29: 59 minutes of 100 W above expected; the pack that crossed 22:15 (its
    # readings 22:10 to 22:19) stored the event as of its last reading: 49 minutes.
    assert kwh[-1] == pytest.approx(100 * 49 * 60 / 3.6e6, abs=1e-4)
    # Its cost: 30 minutes before 22:00 at 0.20, 19 after at 0.15.
    assert stored[-1][1] == pytest.approx(100 * (30 * 0.20 + 19 * 0.15) * 60 / 3.6e6, abs=1e-4)
    # The detector holds the rest, and its saved state carries it over a restart.
    tracker = detect.channel(db, "lamp-1", "p").trackers["switch_off"]
    assert tracker.event.waste_kwh == pytest.approx(100 * 59 * 60 / 3.6e6)
    again = Tracker.load("lamp-1", "p", json.loads(json.dumps(tracker.dump())))
    assert again.event.waste_kwh == tracker.event.waste_kwh
    assert again.event.waste_eur == tracker.event.waste_eur


def test_an_energy_counter_wastes_its_rate_above_expected(tmp_path):
    db = make_db(tmp_path / "g.db")
    detect = Detector(DetectConfig())
    detect.channel(db, "school-1", "e").rules.append(ExpectLevel())
    # +50 Wh every 10 minutes: 300 W, 280 W above the 20 W expected, for 50 minutes.
    rs = [Reading("school-1", "e", EVENING + 600 * i, 1000.0 + 50 * i) for i in range(7)]
    detect(db, store(db, rs))
    cd = detect.channel(db, "school-1", "e")
    # The event opens at the first reading (the test rule looks at the counter's value); each
    # of the 6 intervals after it is charged at its own rate: exact for a counter.
    assert cd.trackers["switch_off"].event.waste_kwh == pytest.approx(6 * 280 * 600 / 3.6e6)


def test_the_tariff_in_site_is_checked(tmp_path):
    base = '[site]\ntimezone = "Europe/Paris"\n'
    ok = config.loads(
        base + 'price_kwh = 0.2\noff_peak_price_kwh = 0.15\noff_peak_hours = ["22:00-06:00"]\n'
    )
    assert pipeline_config(ok).tariff == HCHP
    assert pipeline_config(config.loads(base)).tariff is None
    for text, key, words in [
        ("price_kwh = 20.16\n", "price_kwh", "out of range"),  # cents, not euros
        ('price_kwh = 0.2\noff_peak_hours = ["22:00-06:00"]\n', "off_peak_hours", "both"),
        (
            'price_kwh = 0.2\noff_peak_price_kwh = 0.1\noff_peak_hours = ["22h-6h"]\n',
            "off_peak_hours",
            "HH:MM-HH:MM",
        ),
    ]:
        path = tmp_path / "gateway.toml"
        path.write_text(base + text)
        with pytest.raises(config.ConfigError) as e:
            pipeline_config(config.load(path))
        assert e.value.key == "site." + key and words in str(e.value)
        assert e.value.line == base.count("\n") + 1 + text[: text.index(key)].count("\n")


def add_event(db, node, kind, start, end, kwh, eur):
    ev = Event(node, "p", kind, start, end, 1.0, "words", waste_kwh=kwh, waste_eur=eur)
    save_event(db, ev)


@pytest.fixture
def wasteful(tmp_path):
    """A database with five events of waste in October and November 2026, and a stuck one."""
    db = make_db(tmp_path / "g.db")
    oct31 = dt.datetime(2026, 10, 31, 23, 30, tzinfo=PARIS).timestamp()  # UTC: still October
    nov = dt.datetime(2026, 11, 1, 0, 30, tzinfo=PARIS).timestamp()  # UTC: 31 October 23:30
    add_event(db, "lamp-001", "lit_by_day", oct31, oct31 + 3600, 0.5, 0.10)
    add_event(db, "lamp-002", "lit_by_day", nov, nov + 7200, 1.0, 0.20)
    add_event(db, "lamp-101", "switch_off", nov, None, 0.25, 0.04)  # still open
    add_event(db, "ecole-e1", "off_schedule", nov + 86400, nov + 90000, 10.0, 1.5)
    add_event(db, "mairie-e1", "off_schedule", nov + 86400, nov + 90000, 4.0, 0.6)
    save_event(db, Event("lamp-001", "p", "stuck", nov, nov + 60, 1.0, "flat"))  # not waste
    return db, nov + 100000


def test_waste_sums_by_node_group_kind_and_month(wasteful):
    db, now = wasteful
    by_node = {r["node"]: r for r in waste(db, "node", timezone="Europe/Paris")}
    assert by_node["ecole-e1"]["kwh"] == 10.0 and by_node["ecole-e1"]["eur"] == 1.5
    assert by_node["total"] == {
        "node": "total",
        "events": 5,
        "open": 1,
        "kwh": 15.75,
        "eur": 2.44,
    }
    # The lighting groups of [[detect.lighting]] when they name the node, else the prefix.
    groups = group_function({"Rue de la Mairie": ["lamp-00*"]})
    by_group = {r["group"]: r["kwh"] for r in waste(db, "group", group_of=groups)}
    assert by_group == {
        "ecole": 10.0,
        "mairie": 4.0,
        "Rue de la Mairie": 1.5,
        "lamp": 0.25,
        "total": 15.75,
    }
    assert prefix_group("lamp-012") == "lamp" and prefix_group("mairie-e1") == "mairie"
    by_kind = {r["kind"]: r["kwh"] for r in waste(db, "kind")}
    assert by_kind == {"off_schedule": 14.0, "lit_by_day": 1.5, "switch_off": 0.25, "total": 15.75}
    # Months are local: 00:30 on 1 November in Paris is November, though UTC says October.
    months = waste(db, "month", timezone="Europe/Paris")
    assert [(r["month"], r["events"]) for r in months] == [
        ("2026-10", 1),
        ("2026-11", 4),
        ("total", 5),
    ]
    assert [r["month"] for r in waste(db, "month")][:2] == ["2026-10", "2026-11"]
    assert waste(db, "node", since=now + 86400 * 30)[0]["node"] == "lamp-101"  # open ones stay


@pytest.mark.parametrize("by", ["node", "group", "kind", "month"])
def test_the_waste_command_sums_each_way(wasteful, tmp_path, by):
    out = CliRunner().invoke(
        cli,
        [
            "waste",
            "--db",
            str(tmp_path / "g.db"),
            "--since",
            "2026-10-01",
            "--by",
            by,
            "--format",
            "json",
        ],
    )
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert rows[-1] == {by: "total", "events": 5, "open": 1, "kwh": 15.75, "eur": 2.44}
    table = CliRunner().invoke(
        cli, ["waste", "--db", str(tmp_path / "g.db"), "--by", by, "--since", "2026-10-01"]
    )
    assert table.output.splitlines()[0].split() == [by, "events", "open", "kwh", "eur"]


def test_the_waste_command_writes_excel_csv(wasteful, tmp_path):
    out = CliRunner().invoke(
        cli,
        [
            "waste",
            "--db",
            str(tmp_path / "g.db"),
            "--since",
            "2026-10-01",
            "--by",
            "kind",
            "--format",
            "csv",
            "--excel",
        ],
    )
    assert out.exit_code == 0, out.output
    assert out.output_bytes.startswith("\ufeffkind;events;open;kwh;eur\r\n".encode())
    text = out.output_bytes.decode("utf-8")
    assert "consommation hors horaires;2;0;14;2,1\r\n" in text
    assert text.endswith("total;5;1;15,75;2,44\r\n")
    # --excel is a CSV, as in every command: no need to say --format csv too.
    args = ["waste", "--db", str(tmp_path / "g.db"), "--since", "2026-10-01", "--by", "kind"]
    alone = CliRunner().invoke(cli, [*args, "--excel"])
    assert alone.output_bytes == out.output_bytes
    json_too = CliRunner().invoke(cli, [*args, "--excel", "--format", "json"])
    assert json_too.exit_code == 2 and "drop --format json" in json_too.output


def test_the_waste_goes_to_the_platform_with_its_event(wasteful, tmp_path, platform):
    """A parameter of the anomaly's Observation: `summaries --from URL --anomalies` shows it
    as the gateway does, an open event's waste too (sent again as it grows)."""
    from gateway.pipeline.handoff import feed_outbox
    from gateway.sync.config import SyncConfig
    from gateway.sync.service import build_worker

    db, _ = wasteful
    nodes = ["lamp-001", "lamp-002", "lamp-101", "ecole-e1", "mairie-e1"]
    assert feed_outbox(db) == 6
    worker = build_worker(db, SyncConfig(url=platform.url), {n: (4.83, 45.76) for n in nodes})
    assert worker.sync_until_idle() == "idle"
    args = ("--since", "2026-10-01T00:00Z", "--anomalies", "--format", "json")
    pulled = CliRunner().invoke(cli, ["summaries", "--from", platform.url, *args])
    assert pulled.exit_code == 0, pulled.output
    rows = json.loads(pulled.output)
    assert {r["node"]: (r["waste_kwh"], r["waste_eur"]) for r in rows if r["kind"] != "stuck"} == {
        "lamp-001": (0.5, 0.1),
        "lamp-002": (1.0, 0.2),
        "lamp-101": (0.25, 0.04),
        "ecole-e1": (10.0, 1.5),
        "mairie-e1": (4.0, 0.6),
    }
    assert [r["waste_kwh"] for r in rows if r["kind"] == "stuck"] == [None]
    local = CliRunner().invoke(
        cli, ["summaries", "--from", "gateway", "--db", str(tmp_path / "g.db"), *args]
    )
    assert json.loads(local.output) == rows
    # The open event's waste grows: the next sync updates the same Observation.
    db.execute(
        "UPDATE anomalies SET waste_kwh = 0.75, waste_eur = 0.12, version = version + 1"
        " WHERE node = 'lamp-101'"
    )
    db.conn.commit()
    assert feed_outbox(db) == 1 and worker.sync_until_idle() == "idle"
    worker.target.close()
    again = json.loads(CliRunner().invoke(cli, ["summaries", "--from", platform.url, *args]).output)
    assert [(r["waste_kwh"], r["waste_eur"]) for r in again if r["node"] == "lamp-101"] == [
        (0.75, 0.12)
    ]
