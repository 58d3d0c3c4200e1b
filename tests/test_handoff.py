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
