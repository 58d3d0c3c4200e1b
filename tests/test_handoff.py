"""The hand-off to the sync outbox: new and changed summaries and events are owed once each."""

from detect_helpers import make_db, store

from gateway.pipeline.detect import DetectConfig, Detector
from gateway.pipeline.handoff import feed_outbox
from gateway.pipeline.summarise import summarise
from gateway.store.records import Reading

T0 = 1_791_158_400


def outbox(db):
    return {(r["kind"], r["key"]): r for r in db.query("SELECT * FROM sync_outbox")}


def test_summaries_and_events_reach_the_outbox_once_and_again_when_changed(tmp_path):
    db = make_db(tmp_path / "g.db")
    detect = Detector(DetectConfig())

    def stages(rs):
        store(db, rs)
        detect(db, rs)
        summarise(db, rs)
        return feed_outbox(db, rs)

    # A counter that goes backwards: one event, two hours of summaries.
    rs = [Reading("bldg-001", "e", T0 + 300 * k, 1000.0 + 10 * k) for k in range(20)]
    rs += [Reading("bldg-001", "e", T0 + 300 * (20 + k), 5.0 * k) for k in range(2)]
    assert stages(rs) == 3  # hours 0 and 1, one event (open)
    rows = outbox(db)
    assert {k for k, _ in rows} == {"summary", "event"}
    event = next(r for (kind, _), r in rows.items() if kind == "event")
    assert event["key"].startswith("e:counter_reset:")
    # Nothing changed: nothing new is owed.
    assert feed_outbox(db) == 0
    # The counter counts on: the event closes and the second hour grows: both owed again.
    more = [Reading("bldg-001", "e", T0 + 300 * (22 + k), 10.0 + 5.0 * k) for k in range(4)]
    assert stages(more) == 3  # hour 1 again, hour 2, the event (closed)
    again = outbox(db)
    assert again[("event", event["key"])]["version"] == 2


def test_a_large_backlog_is_handed_over_in_slices_oldest_hours_first(tmp_path):
    # The stage runs in the writer's turn: a month of hours owed at once (an upgrade, a long
    # outage of the stages) goes a slice at a time, so the commits are not held behind it.
    db = make_db(tmp_path / "g.db")
    rs = [Reading("bldg-001", "p", T0 + 600 * k, 100.0 + k % 7) for k in range(6 * 30)]
    store(db, rs)
    summarise(db, rs)
    now = T0 + 600 * 6 * 30 + 7200
    assert feed_outbox(db, settled_at=now, limit=12) == 12
    hours = sorted(r["time"] for r in db.query("SELECT time FROM sync_outbox"))
    assert hours == [T0 + 3600 * h for h in range(12)]  # the oldest first
    assert feed_outbox(db, settled_at=now, limit=100) == 30 - 12
    assert feed_outbox(db, settled_at=now, limit=100) == 0
