"""The demo's past (sim/history.py): the gateway's detectors learn from the fleet's own profiles
before the run, so that a short demo is judged by detectors that speak (issue 14, items 4-5).

Without it the demo's 48 hours ended before the statistical detector spoke and before a
building's closed days were known: a closing day run as a working day (``holiday_as_workday``)
could not be found, and "0 false alarms" said nothing. These run the demo's own pieces (its
gateway.toml, its closing days, its plan, the gateway's detect stage) on real SQLite files,
without the network.
"""

from datetime import date

from gateway import config
from gateway.service import stages
from gateway.store.db import open_db
from sim import demo
from sim.fleet import make_profile
from sim.groundtruth import evaluate
from sim.history import learn, past_readings
from sim.profiles import Anomaly, Building

MONDAY = 1795996800  # 2026-11-30 00:00 UTC, a Monday (the demo starts on one)
DAY = 86400


def _gateway_config(tmp_path, own: list[int]) -> config.Config:
    """The demo's gateway.toml, with the town's own closing days written as the demo does."""
    toml = demo.GATEWAY_TOML.format(
        lat=demo.LATITUDE, lon=demo.LONGITUDE, url="http://127.0.0.1:9/"
    )
    days = tmp_path / "closing-days.txt"
    days.write_text("".join(f"{date.fromordinal(demo.EPOCH + d)}\n" for d in own))
    toml = toml.replace("[detect]\n", f'[detect]\nclosing_days = "{days}"\n', 1)
    (tmp_path / "gateway.toml").write_text(toml)
    return config.load(tmp_path / "gateway.toml", {"coap_port": 0, "http_port": 0})


def test_the_town_closes_on_a_weekday_of_the_run_and_on_public_holidays():
    closed, own = demo._closed_days(MONDAY, 48 * 3600, 16 * DAY)
    # 48 hours from Monday 01:00 local: Tuesday is the last weekday whose 08:00-18:00 it
    # covers; the town's own closing day is that one.
    assert [date.fromordinal(demo.EPOCH + d) for d in own] == [date(2026, 12, 1)]
    assert own[0] in closed
    # Eight hours cover no working day: no closing day, and so no holiday run as a weekday.
    assert demo._closed_days(MONDAY, 8 * 3600, 16 * DAY)[1] == []
    # France's public holidays in the past the detectors learn from close the buildings too
    # (11 November 2026, a Wednesday, is in the 16 days before Monday 16 November).
    closed, _ = demo._closed_days(MONDAY - 2 * 7 * DAY, 48 * 3600, 16 * DAY)
    assert date(2026, 11, 11) in [date.fromordinal(demo.EPOCH + d) for d in closed]


def test_with_a_past_every_building_gets_a_meter_fault_inside_the_run():
    keys = {f"lamp-{i:03d}": b"k" * 32 for i in range(1, 17)}
    keys.update({f"bldg-{i:03d}": b"k" * 32 for i in range(1, 5)})
    _, own = demo._closed_days(MONDAY, 48 * 3600, 16 * DAY)
    truth, _ = demo._plan(keys, MONDAY, 48 * 3600, own, learnt=True)
    meters = {a.node: a for a in truth if a.node.startswith("bldg")}
    assert sorted(a.kind for a in meters.values()) == sorted(demo.BUILDING_FAULTS)
    for a in meters.values():
        assert MONDAY <= a.start < a.end <= MONDAY + 48 * 3600, a
    holiday = next(a for a in meters.values() if a.kind == "holiday_as_workday")
    assert (holiday.start + 3600) // DAY == own[0]  # 08:00 local of the closing day
    # Without a past, a 48-hour run leaves the buildings' faults out, as before.
    truth, note = demo._plan(keys, MONDAY, 48 * 3600, own, learnt=False)
    assert not [a for a in truth if a.node.startswith("bldg")] and "left out" in note


def test_the_profiles_run_on_from_their_past_without_a_counter_reset():
    b = Building("bldg-001", 1, closing_days=())
    readings = list(past_readings({"bldg-001": b}, MONDAY - DAY, MONDAY))
    assert [r.time for r in readings] == sorted(r.time for r in readings)
    per_channel = {ch: sum(r.channel == ch for r in readings) for ch in b.channels}
    assert per_channel == {ch: DAY // every for ch, every in b.channels.items()}
    last_e = max((r for r in readings if r.channel == "e"), key=lambda r: r.time).value
    # The same profile goes on into the run (Fleet(profiles=...)): its counter carries on.
    assert b.read("e", MONDAY) >= last_e > 10_000


def test_after_sixteen_days_a_closing_day_run_as_a_working_day_is_found(tmp_path):
    """Two buildings of the demo: on the town's closing day one runs as on a weekday (the
    waste the town wants to cut), the other is closed as it should be. The detectors, which
    learnt the buildings' closed days from the weekends before (the first one only
    teaches them what a Saturday is), tell them apart."""
    duration = 48 * 3600
    closed, own = demo._closed_days(MONDAY, duration, 16 * DAY)
    holiday = Anomaly(
        "bldg-001", "p", "holiday_as_workday", own[0] * DAY + 7 * 3600, own[0] * DAY + 17 * 3600
    )
    cfg = _gateway_config(tmp_path, own)
    profiles = {n: make_profile(n, demo.SEED, [holiday], closed) for n in ("bldg-001", "bldg-002")}
    db = open_db(cfg.database)
    try:
        detect = stages(cfg).detect
        past = learn(db, detect, profiles, MONDAY - 16 * DAY, MONDAY)
        assert past == {"readings": 2 * 16 * 2016, "events": 0}  # a clean past raises nothing
        learn(db, detect, profiles, MONDAY, MONDAY + duration)  # the run, straight in
        events = list(db.query("SELECT * FROM anomalies ORDER BY start"))
    finally:
        db.close()
    found = evaluate(events, [holiday])
    assert found["per_kind"]["holiday_as_workday"]["found_as"] == {"wrong_time": 1}, events
    assert found["false_alarms"] == 0, [e["reason"] for e in events]
    reason = next(e["reason"] for e in events if e["node"] == "bldg-001")
    assert "closed days draw" in reason, reason  # judged against its closed days
