"""A restart keeps what the detectors learnt: the stage's state lives in SQLite."""

import math
import random

from detect_helpers import make_db

from gateway.pipeline.detect import DetectConfig, Detector
from gateway.store.records import Reading

T0 = 1_791_158_400


def series(days=5):
    rng = random.Random(4)
    out = []
    for k in range(days * 288):
        t = T0 + 300 * k
        v = 20 + 3 * math.sin(2 * math.pi * (t % 86400) / 86400) + rng.gauss(0, 0.3)
        out.append(Reading("school-01", "t", t, v))
    out[-100] = Reading("school-01", "t", out[-100].time, out[-100].value + 9)  # an anomaly
    return out


def feed(detect, db, readings):
    for k in range(0, len(readings), 10):
        detect(db, readings[k : k + 10])


def events(db):
    return [(e["kind"], e["start"], e["end"]) for e in db.query("SELECT * FROM anomalies")]


def test_restart_keeps_baseline_and_open_events(tmp_path):
    rs = series()
    cfg = DetectConfig()
    # One gateway that never stops...
    db1 = make_db(tmp_path / "a.db")
    feed(Detector(cfg), db1, rs)
    # ...and one restarted (a fresh Detector, the database reopened) after four days.
    cut = 4 * 288
    db2 = make_db(tmp_path / "b.db")
    feed(Detector(cfg), db2, rs[:cut])
    db2.close()
    db2 = make_db(tmp_path / "b.db")
    feed(Detector(cfg), db2, rs[cut:])
    assert events(db1) == events(db2)
    assert any(kind == "unusual" for kind, _, _ in events(db1))  # it did find the anomaly
    # Without the saved state the restarted detector would have to learn again (and stay
    # quiet for three days): the anomaly would be missed.
    db3 = make_db(tmp_path / "c.db")
    feed(Detector(cfg), db3, rs[cut:])
    assert not any(kind == "unusual" for kind, _, _ in events(db3))
    # The state per channel stays within its bound.
    assert max(len(s) for (s,) in db2.execute("SELECT state FROM detect_state")) <= 4096
