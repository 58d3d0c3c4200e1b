"""Hourly summaries: values, energy by trapezoid and by counter, late readings re-open an hour."""

import pytest
from detect_helpers import make_db, store

from gateway.pipeline.summarise import segment_energy, summarise
from gateway.store.records import Reading

H = 1_800_000_000 // 3600 * 3600  # an hour boundary


def rows(db):
    return {(r["channel"], r["hour"]): r for r in db.query("SELECT * FROM summaries")}


def feed(db, readings, chunk=10):
    for k in range(0, len(readings), chunk):
        summarise(db, store(db, readings[k : k + chunk]))


def test_power_count_min_max_mean_and_trapezoid(tmp_path):
    db = make_db(tmp_path / "g.db")
    # 100 W for the first half hour, 200 W after, one reading a minute, over two hours.
    rs = [Reading("lamp-001", "p", H + 60 * k, 100.0 if k < 30 else 200.0) for k in range(121)]
    feed(db, rs)
    r = rows(db)
    first = r[("p", H)]
    assert (first["count"], first["min"], first["max"]) == (60, 100.0, 200.0)
    assert first["mean"] == pytest.approx(150.0)
    # Trapezoid: 29 min at 100 W, one minute ramping 100 -> 200, 30 min at 200 W.
    assert first["wh"] == pytest.approx((29 * 100 + 150 + 30 * 200) / 60)
    # The second hour has 60 full minutes at 200 W (its last segment ends at 2:00 exactly).
    assert r[("p", H + 3600)]["wh"] == pytest.approx(200.0)
    assert r[("p", H + 7200)]["count"] == 1


def test_segment_split_across_hours_and_long_gaps():
    # 60 W flat from 0:55 to 1:05: 5 minutes, 5 Wh, in each hour.
    parts = segment_energy("power", (H + 3300, 60.0), (H + 3900, 60.0))
    assert parts == [(H, pytest.approx(5.0)), (H + 3600, pytest.approx(5.0))]
    # A power gap longer than MAX_GAP is not invented.
    assert segment_energy("power", (H, 60.0), (H + 3600, 60.0)) == []
    # A counter spreads its increase over the time it took, whatever the gap.
    assert segment_energy("counter", (H + 1800, 100.0), (H + 5400, 160.0)) == [
        (H, pytest.approx(30.0)),
        (H + 3600, pytest.approx(30.0)),
    ]
    # ...and a counter going backwards adds nothing.
    assert segment_energy("counter", (H, 100.0), (H + 60, 5.0)) == []


def test_energy_counter(tmp_path):
    db = make_db(tmp_path / "g.db")
    rs = [Reading("school-01", "e", H + 300 * k, 1000.0 + 25.0 * k) for k in range(25)]
    feed(db, rs)
    r = rows(db)
    assert r[("e", H)]["wh"] == pytest.approx(300.0)  # 12 steps of 25 Wh, 5 minutes each
    assert r[("e", H + 3600)]["wh"] == pytest.approx(300.0)


def test_the_drop_counter_counts_the_readings_dropped_in_each_hour(tmp_path):
    # A node sends its drop counter only when it grew; its increase is spread over the time
    # between two sends, like the energy counter's.
    db = make_db(tmp_path / "g.db")
    feed(db, [Reading("lamp-001", "drop", t, v) for t, v in ((H, 4.0), (H + 5400, 10.0))])
    r = rows(db)
    assert r[("drop", H)]["wh"] == pytest.approx(4.0)  # 6 dropped over 1.5 h: 4 in the first
    assert r[("drop", H + 3600)]["wh"] == pytest.approx(2.0)


def test_late_reading_corrects_hour_and_marks_it_for_resync(tmp_path):
    db = make_db(tmp_path / "g.db")
    rs = [Reading("lamp-001", "p", H + 60 * k, 60.0) for k in range(130)]
    late = rs[10:20]  # a pack overtaken by fresher ones (reordered by the network)
    feed(db, rs[:10] + rs[20:])
    before = rows(db)[("p", H)]
    assert before["count"] == 50
    assert before["wh"] == pytest.approx(60.0)  # the 9:00..19:00 gap is short: interpolated
    # The sync stage has sent it.
    db.execute("UPDATE summaries SET synced_version = version")
    db.conn.commit()
    # The late pack, with a different value, arrives.
    late = [Reading(r.node, r.channel, r.time, 120.0) for r in late]
    feed(db, late)
    after = rows(db)[("p", H)]
    assert after["count"] == 60
    assert after["max"] == 120.0
    assert after["mean"] == pytest.approx((50 * 60 + 10 * 120) / 60)
    # Energy redone with the late values: 10 minutes at 120 W instead of 60 W, with ramps
    # of one minute on either side (half a minute of 60 W extra each).
    assert after["wh"] == pytest.approx(60.0 + (9 * 60 + 60) / 60)
    assert after["version"] > after["synced_version"]  # dirty: to be sent again
    dirty = db.execute("SELECT hour FROM summaries WHERE version > synced_version").fetchall()
    assert dirty == [(H,)]  # only the hour it changed


def test_other_channels_have_no_energy(tmp_path):
    db = make_db(tmp_path / "g.db")
    feed(db, [Reading("school-01", "t", H + 60 * k, 20.0 + k) for k in range(3)])
    r = rows(db)[("t", H)]
    assert (r["count"], r["min"], r["max"], r["mean"], r["wh"]) == (3, 20.0, 22.0, 21.0, None)
