"""The per-day energy the database keeps for the Energy page (gateway/console/daily.py): its
sums must always be what summing the summaries gives, however the summaries were written
(the summariser's upserts, a correction of an hour by a late pack, retention deleting them),
over the local days of the town's zone, 23 or 25 hours long when the clocks change."""

import datetime as dt
import time
from zoneinfo import ZoneInfo

from gateway.console import daily, views
from gateway.ingest.registry import add_node
from gateway.pipeline.detect import DetectConfig
from gateway.store.db import open_db

PARIS = ZoneInfo("Europe/Paris")


def paris_midnight(y: int, m: int, d: int) -> int:
    return int(dt.datetime(y, m, d, tzinfo=PARIS).timestamp())


def summary(node, channel, hour, wh, count=60, mean=None):
    return dict(node=node, channel=channel, hour=hour, count=count, min=0, max=1, sum=0,
                mean=mean if mean is not None else wh, wh=wh, version=1)  # fmt: skip


def by_hand(db, node, channel, start, end):
    """What the reports read: the sum of the hours' Wh (a power channel's mean without one)."""
    rows = db.execute(
        "SELECT wh, mean, count FROM summaries WHERE node = ? AND channel = ?"
        " AND hour >= ? AND hour < ?",
        [node, channel, start, end],
    ).fetchall()
    values = [wh if wh is not None else mean for wh, mean, count in rows if count]
    return sum(values) if values else None


def kept(db, node, channel, day):
    row = db.execute(
        "SELECT wh FROM console_energy_days WHERE day = ? AND node = ? AND channel = ?"
        " AND hours > 0",
        [day, node, channel],
    ).fetchone()
    return row[0] if row else None


def test_the_sums_follow_the_summaries_over_the_day_the_clocks_go_back(tmp_path):
    db = open_db(tmp_path / "gw.db")
    daily.ensure_zone(db, "Europe/Paris")
    # 25 October 2026: the clocks go back, a local day of 25 hours
    day, next_day = paris_midnight(2026, 10, 25), paris_midnight(2026, 10, 26)
    assert next_day - day == 25 * 3600
    hours = range(day - 2 * 3600, next_day + 2 * 3600, 3600)  # the days before and after too
    # as the summariser writes them: an upsert per hour, then the hour corrected (late pack)
    db["summaries"].upsert_all(
        [summary("ecole-01", "e", h, 100.0) for h in hours], pk=("node", "channel", "hour")
    )
    db["summaries"].upsert_all(
        [summary("ecole-01", "e", day + 3600, 250.0)], pk=("node", "channel", "hour")
    )
    # a lamp without an energy counter: its power's mean is its Wh when the hour has no wh
    db["summaries"].upsert_all(
        [summary("lamp-01", "p", h, None, mean=60.0) for h in hours],
        pk=("node", "channel", "hour"),
    )
    db["summaries"].upsert_all(  # an hour without a reading counts for nothing
        [summary("lamp-01", "p", day, None, count=0, mean=None)], pk=("node", "channel", "hour")
    )
    db.conn.commit()
    assert kept(db, "ecole-01", "e", day) == by_hand(db, "ecole-01", "e", day, next_day)
    assert kept(db, "ecole-01", "e", day) == 24 * 100.0 + 250.0  # 25 hours, one at 250
    assert kept(db, "lamp-01", "p", day) == 24 * 60.0  # the empty hour left out
    assert kept(db, "ecole-01", "e", next_day) == 2 * 100.0  # the next day's first 2 hours
    # retention deletes the day's summaries: its sums go with them
    with db.conn:
        db.execute("DELETE FROM summaries WHERE hour >= ? AND hour < ?", [day, next_day])
    assert kept(db, "ecole-01", "e", day) is None and kept(db, "lamp-01", "p", day) is None
    db.close()


def test_the_first_start_after_the_upgrade_counts_what_was_there(tmp_path):
    """Summaries written before the zone was known (or under another zone) are counted again
    by ``ensure_zone``, node by node; after that only the triggers keep the sums."""
    db = open_db(tmp_path / "gw.db")
    day = paris_midnight(2026, 11, 10)
    with db.conn:
        db["summaries"].insert_all(
            [summary("ecole-01", "e", day + k * 3600, 10.0) for k in range(30)]
        )
        db["summary_cursor"].insert(dict(node="ecole-01", channel="e", time=day, value=0))
    assert kept(db, "ecole-01", "e", day) is None  # no zone yet: nothing kept
    assert daily.ensure_zone(db, "Europe/Paris") is True
    assert kept(db, "ecole-01", "e", day) == 24 * 10.0
    assert kept(db, "ecole-01", "e", day + 86400) == 6 * 10.0
    assert daily.ensure_zone(db, "Europe/Paris") is False  # already so: nothing recounted
    # the town's zone changes: midnight moves, and so does every hour's day
    assert daily.ensure_zone(db, "UTC") is True
    utc_day = day + 3600  # Paris is UTC+1 in November
    assert kept(db, "ecole-01", "e", utc_day) == 24 * 10.0
    assert kept(db, "ecole-01", "e", day) is None
    db.close()


def test_the_energy_page_figures_come_from_the_sums(tmp_path):
    """The figures per asset, today / 7 days / 31 days and the year before, as the summaries
    give them: a school meter at 1 kWh an hour, its hours a year before at 0.5 kWh."""
    db = open_db(tmp_path / "gw.db")
    daily.ensure_zone(db, "Europe/Paris")
    for node in ("ecole-jaures-01", "lamp-001"):
        add_node(db, node)
    now = time.time()
    hour = int(now // 3600 * 3600)
    rows = []
    for k in range(40 * 24):
        rows.append(summary("ecole-jaures-01", "e", hour - k * 3600, 1000.0))
        rows.append(summary("ecole-jaures-01", "e", hour - k * 3600 - 365 * 86400, 500.0))
        rows.append(summary("ecole-jaures-01", "p", hour - k * 3600, 999.0))  # e wins
        rows.append(summary("lamp-001", "p", hour - k * 3600, None, mean=50.0))
    db["summaries"].upsert_all(rows, pk=("node", "channel", "hour"))
    db.conn.commit()
    detect = DetectConfig(timezone="Europe/Paris", lamps=["lamp-*"])
    assets = {a.asset: a for a in views.energy(db, detect, now)}
    start = views.local_midnight(now, PARIS, 30)
    school = assets["ecole-jaures"]
    month_wh = by_hand(db, "ecole-jaures-01", "e", start, hour + 3600)
    assert round(school.kwh["month"], 6) == round(month_wh / 1000, 6)
    today = views.local_midnight(now, PARIS)
    assert round(school.kwh["day"], 6) == round(
        by_hand(db, "ecole-jaures-01", "e", today, hour + 3600) / 1000, 6
    )
    assert round(school.change("month"), 2) == 1.0  # twice the energy of a year before
    lamp = next(a for a in assets.values() if a.kind == "lamp")
    assert round(lamp.kwh["week"], 6) == round(
        by_hand(db, "lamp-001", "p", views.local_midnight(now, PARIS, 6), hour + 3600) / 1000, 6
    )
    assert lamp.reference == {}  # no year before: no comparison
    db.close()


def statements_run(db, sql, params):
    """How many programs SQLite starts for ``sql``: the statement's own, and one for each
    trigger that gets past its WHEN and each statement of its body (SQLite's trace callback
    reports each as it starts)."""
    traced = []
    db.conn.set_trace_callback(traced.append)
    with db.conn:
        db.execute(sql, params)
    db.conn.set_trace_callback(None)
    return len(traced)


def test_only_the_energy_channels_summaries_run_the_triggers(tmp_path):
    """The triggers run in the writer's transaction, before the nodes' packs are acknowledged:
    since migration m003 a temperature (or battery, or signal) summary does not run their
    programs, as it has no Wh to count; an energy one does, inserted, corrected or deleted."""
    db = open_db(tmp_path / "gw.db")
    daily.ensure_zone(db, "Europe/Paris")
    day = paris_midnight(2026, 11, 10)
    insert = (
        "INSERT INTO summaries (node, channel, hour, count, min, max, sum, mean, wh, version)"
        " VALUES ('ecole-01', ?, ?, 60, 0, 1, 0, 19.5, ?, 1)"
    )
    correct = "UPDATE summaries SET count = 61, wh = ? WHERE channel = ? AND hour = ?"
    delete = "DELETE FROM summaries WHERE channel = ? AND hour = ?"
    temperature = [
        statements_run(db, insert, ["t", day, None]),
        statements_run(db, correct, [None, "t", day]),
        statements_run(db, delete, ["t", day]),
    ]
    assert db.execute("SELECT count(*) FROM console_energy_days").fetchone()[0] == 0
    energy = [
        statements_run(db, insert, ["e", day, 100.0]),
        statements_run(db, correct, [150.0, "e", day]),
    ]
    assert kept(db, "ecole-01", "e", day) == 150.0
    energy.append(statements_run(db, delete, ["e", day]))
    assert kept(db, "ecole-01", "e", day) is None
    # each energy statement ran its trigger's body; the temperature ones did not
    assert all(t < e for t, e in zip(temperature, energy, strict=True)), (temperature, energy)
    db.close()
