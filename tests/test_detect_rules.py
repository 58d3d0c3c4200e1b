"""Each energy rule on a small, labelled series, through the real stage and a real database."""

import random

import pytest
from detect_helpers import make_db

from gateway.pipeline.detect import DetectConfig, Detector, check_silent
from gateway.pipeline.detect.config import DetectConfigError
from gateway.pipeline.detect.rules import Clock
from gateway.store.records import Reading

SITE = {"latitude": 48.8566, "longitude": 2.3522, "timezone": "Europe/Paris"}
T0 = 1_791_158_400  # Monday 2026-10-05 00:00 UTC


def lamp_series(cfg, days=3, node="lamp-042", fault=None, watts=60.0, every=60):
    """A street light: lit from sunset to sunrise; ``fault(t, p) -> p or None`` changes it."""
    clock = Clock(cfg)
    rng = random.Random(1)
    out = []
    for k in range(days * 86400 // every):
        t = T0 + every * k
        rise, set_ = clock.sun(t)
        p = watts + rng.gauss(0, 0.3) if (t > set_ + 300 or t < rise - 300) else 0.0
        if fault is not None:
            p = fault(t, p)
            if p is None:
                continue
        out.append(Reading(node, "p", t, round(p, 2)))
    return out


def run(db, cfg, readings, batch=20):
    detect = Detector(cfg)
    for k in range(0, len(readings), batch):
        detect(db, readings[k : k + batch])
    return list(db.query("SELECT * FROM anomalies ORDER BY start"))


def test_lit_by_day(tmp_path):
    cfg = DetectConfig(**SITE)
    a0, a1 = T0 + 2 * 86400 + 11 * 3600, T0 + 2 * 86400 + 13 * 3600  # 13:00-15:00 local
    events = run(
        make_db(tmp_path / "g.db"),
        cfg,
        lamp_series(cfg, fault=lambda t, p: 61.0 if a0 <= t < a1 else p),
    )
    lit = [e for e in events if e["kind"] == "lit_by_day"]
    assert len(lit) == 1  # one event for the whole episode: deduplicated
    e = lit[0]
    assert a0 <= e["start"] <= a0 + 300  # confirmed after 3 readings
    assert a1 <= e["end"] <= a1 + 300  # closed once the lamp is off again
    assert e["reason"].startswith("lamp-042 drew 61 W at 13:0")
    assert "lamps are off between sunrise 07:" in e["reason"] and "and sunset 19:" in e["reason"]
    assert not [e for e in events if e["kind"] == "dark_at_night"]


def test_dark_at_night_respects_planned_switch_off(tmp_path):
    cfg = DetectConfig(**SITE)
    a0 = T0 + 2 * 86400 + 19 * 3600  # 21:00 local
    fault = lambda t, p: 0.0 if a0 <= t < a0 + 3600 else p  # noqa: E731
    events = run(make_db(tmp_path / "g.db"), cfg, lamp_series(cfg, fault=fault))
    dark = [e for e in events if e["kind"] == "dark_at_night"]
    assert len(dark) == 1 and a0 <= dark[0]["start"] <= a0 + 300
    assert "lamps are on between sunset" in dark[0]["reason"]
    # A town that switches its lights off from 21:00 to 22:00 sees nothing wrong.
    planned = DetectConfig(**SITE, lamps_off=("21:00", "22:00"))
    planned = DetectConfig.from_mapping({**SITE, "lamps_off": ["21:00", "22:00"]})
    events = run(make_db(tmp_path / "h.db"), planned, lamp_series(planned, fault=fault))
    assert not [e for e in events if e["kind"] == "dark_at_night"]


def test_drift(tmp_path):
    cfg = DetectConfig(**SITE)
    start = T0 + 2 * 86400  # after two nights of learning, the lamp draws 20 % more

    def fault(t, p):
        return p * 1.2 if t > start and p > 0 else p

    events = run(make_db(tmp_path / "g.db"), cfg, lamp_series(cfg, days=4, fault=fault))
    drift = [e for e in events if e["kind"] == "drift"]
    assert drift and drift[0]["start"] > start
    assert "20 % more than it learnt" in drift[-1]["reason"] or "% more" in drift[-1]["reason"]
    healthy = run(make_db(tmp_path / "h.db"), cfg, lamp_series(cfg, days=4))
    assert not [e for e in healthy if e["kind"] in ("drift", "lit_by_day", "dark_at_night")]


def test_off_schedule(tmp_path):
    cfg = DetectConfig.from_mapping(
        {
            **SITE,
            "buildings": [
                {"nodes": ["school-*"], "days": "mon-fri", "open": "07:30", "close": "18:30"}
            ],
        }
    )
    clock = Clock(cfg)
    sched = cfg.buildings[0]
    a0 = T0 + 3 * 86400 + 20 * 3600  # Thursday 22:00 local
    rng = random.Random(2)
    rs = []
    for k in range(5 * 288):
        t = T0 + 300 * k
        wd, now = clock.weekday_time(t)
        p = (3000.0 if sched.is_open(wd, now) else 400.0) * (1 + rng.gauss(0, 0.03))
        if a0 <= t < a0 + 2 * 3600:
            p = 2800.0
        rs.append(Reading("school-01", "p", t, p))
    events = [e for e in run(make_db(tmp_path / "g.db"), cfg, rs) if e["kind"] == "off_schedule"]
    assert len(events) == 1
    assert a0 <= events[0]["start"] <= a0 + 900
    assert "outside its hours (mon-fri 07:30-18:30)" in events[0]["reason"]


def test_counter_reset(tmp_path):
    rs = [Reading("school-01", "e", T0 + 300 * k, 5000.0 + 10 * k) for k in range(50)]
    rs += [Reading("school-01", "e", T0 + 300 * (50 + k), 10.0 * k) for k in range(10)]
    events = run(make_db(tmp_path / "g.db"), DetectConfig(**SITE), rs)
    reset = [e for e in events if e["kind"] == "counter_reset"]
    assert len(reset) == 1 and reset[0]["start"] == T0 + 300 * 50
    assert "counter went back from 5490 Wh to 0 Wh" in reset[0]["reason"]
    assert reset[0]["end"] is not None  # closed: counting normally again


def test_stuck_sensor(tmp_path):
    rng = random.Random(3)
    rs = [Reading("school-01", "t", T0 + 300 * k, 20 + rng.gauss(0, 0.2)) for k in range(100)]
    rs += [Reading("school-01", "t", T0 + 300 * (100 + k), 21.5) for k in range(40)]
    events = run(make_db(tmp_path / "g.db"), DetectConfig(**SITE, stuck_readings=30), rs)
    stuck = [e for e in events if e["kind"] == "stuck"]
    assert len(stuck) == 1
    assert stuck[0]["start"] == T0 + 300 * (100 + 29)  # the 30th identical reading
    assert "read exactly 21.5 °C 30 times in a row" in stuck[0]["reason"]


def test_node_silent(tmp_path):
    db = make_db(tmp_path / "g.db")
    cfg = DetectConfig(**SITE, silent_intervals=5, silent_minutes=10)
    detect = Detector(cfg)
    a = [Reading("lamp-001", "p", T0 + 60 * k, 0.0) for k in range(10)]
    b = [Reading("lamp-002", "p", T0 + 60 * k, 0.0) for k in range(60)]
    detect(db, a + b[:10])
    detect(db, b[10:])  # lamp-001 says nothing for 50 minutes
    silent = list(db.query("SELECT * FROM anomalies WHERE kind = 'silent'"))
    assert len(silent) == 1 and silent[0]["node"] == "lamp-001" and silent[0]["end"] is None
    assert silent[0]["channel"] == "*"
    assert "lamp-001 has sent nothing since" in silent[0]["reason"]
    # It speaks again: the event closes.
    detect(db, [Reading("lamp-001", "p", T0 + 3600, 0.0)])
    closed = db["anomalies"].get(silent[0]["id"])
    assert closed["end"] is not None
    # Nothing new to open when everyone is heard from.
    with db.conn:
        assert check_silent(db, T0 + 3600, cfg, heard={"lamp-001", "lamp-002"}) == []


def test_a_node_backfilling_after_an_outage_is_silent_once(tmp_path):
    # lamp-001 is cut off for 50 minutes, then sends what it buffered, a pack at a time, in the
    # same commits as lamp-002's fresh readings: its readings are old, but it is not silent.
    db = make_db(tmp_path / "g.db")
    cfg = DetectConfig(**SITE, silent_intervals=5, silent_minutes=15)
    detect = Detector(cfg)
    a = [Reading("lamp-001", "p", T0 + 60 * k, 0.0) for k in range(60)]
    b = [Reading("lamp-002", "p", T0 + 60 * k, 0.0) for k in range(70)]
    detect(db, a[:10] + b[:10])
    detect(db, b[10:60])  # lamp-001 silent: one event opens
    for k in range(10, 60, 10):  # its backfill, 10 old readings beside 2 fresh ones
        detect(db, a[k : k + 10] + b[60 + k // 5 : 62 + k // 5])
    silent = list(db.query("SELECT * FROM anomalies WHERE kind = 'silent'"))
    assert len(silent) == 1 and silent[0]["end"] is not None
    assert silent[0]["end"] >= silent[0]["start"]  # closed by a backfill of older readings


def test_nodes_sending_short_packs_are_not_silent(tmp_path):
    # Two nodes, a pack of 5 minutes each in turn: neither is ever 7 minutes behind the
    # other. A node's state is saved only every 10 minutes of readings (every other pack),
    # but the look for silent nodes goes by their newest readings.
    db = make_db(tmp_path / "g.db")
    detect = Detector(DetectConfig(**SITE, silent_intervals=5, silent_minutes=7))
    for k in range(36):  # 3 hours
        for node, offset in (("lamp-001", 0), ("lamp-002", 150)):
            t = T0 + 300 * k + offset
            detect(db, [Reading(node, "p", t + 60 * i, 0.0) for i in range(5)])
    assert list(db.query("SELECT * FROM anomalies WHERE kind = 'silent'")) == []


def test_a_node_sending_hourly_packs_is_not_silent_between_them(tmp_path):
    # lamp-002 is set to send a pack of 60 readings an hour (to save its battery); lamp-001
    # sends every 10 minutes. Silent after 30 minutes would be wrong for lamp-002: the
    # detector is told each node's pack span (the gateway gives pack x interval).
    def readings(node, start, n):  # one a minute
        return [Reading(node, "p", start + 60 * i, 0.0) for i in range(n)]

    for told, expected in ((None, ["lamp-002"]), ({"lamp-001": 600, "lamp-002": 3600}, [])):
        db = make_db(tmp_path / f"g{told is None}.db")
        pack = None if told is None else told.__getitem__
        detect = Detector(DetectConfig(**SITE, silent_minutes=30), pack_seconds=pack)
        for hour in range(4):
            h = T0 + 3600 * hour
            for k in range(6):  # lamp-001's six packs of the hour, then lamp-002's one
                detect(db, readings("lamp-001", h + 600 * k, 10))
            detect(db, readings("lamp-002", h, 60))
        silent = db.execute("SELECT DISTINCT node FROM anomalies WHERE kind = 'silent'")
        assert [row[0] for row in silent] == expected


def test_a_fleet_that_falls_silent_altogether_is_found_on_the_timer(tmp_path):
    # No reading comes at all (the nodes' Wi-Fi is down): no commit runs the stage, so the
    # gateway's timer asks; the time is the fleet's, the newest reading's plus the time since.
    db = make_db(tmp_path / "g.db")
    cfg = DetectConfig(**SITE, silent_intervals=5, silent_minutes=10)
    detect = Detector(cfg)
    a = [Reading("lamp-001", "p", T0 + 60 * k, 0.0) for k in range(10)]
    b = [Reading("lamp-002", "p", T0 + 60 * k, 0.0) for k in range(12)]
    detect(db, a + b)
    heard = detect.last_reading_at
    assert detect.quiet(db, at=heard + 300) == []  # 7 and 5 minutes: not yet (10 needed)
    assert detect.now(db, at=heard + 300) == T0 + 660 + 300
    opened = detect.quiet(db, at=heard + 550)  # lamp-001 quiet for 11 minutes, lamp-002 9
    assert [(e.node, e.kind, e.start) for e in opened] == [("lamp-001", "silent", T0 + 540 + 600)]
    opened = detect.quiet(db, at=heard + 3600)
    assert [e.node for e in opened] == ["lamp-002"]  # lamp-001's is open already
    detect(db, [Reading("lamp-001", "p", T0 + 4200, 0.0)])  # it speaks: its event closes
    ends = dict(db.execute("SELECT node, end FROM anomalies WHERE kind = 'silent'").fetchall())
    assert ends == {"lamp-001": T0 + 4200, "lamp-002": None}


def test_config_errors_name_the_key():
    with pytest.raises(DetectConfigError, match=r"detect\.latitude"):
        DetectConfig.from_mapping({"latitude": 123})
    with pytest.raises(DetectConfigError, match=r"detect.buildings\[0\].open"):
        DetectConfig.from_mapping({"buildings": [{"nodes": "x", "close": "18:00"}]})
    with pytest.raises(DetectConfigError, match=r"detect\.timezone"):
        DetectConfig.from_mapping({"timezone": "Mars/Olympus"})
    with pytest.raises(DetectConfigError, match="unknown key"):
        DetectConfig.from_mapping({"treshold": 0.5})
