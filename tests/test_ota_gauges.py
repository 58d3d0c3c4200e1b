"""The OTA gauge of /metrics during a rollout over a whole town (issue 16): a scrape runs on
the connection that acknowledges the packs, so its count must be one cheap query, and the
same counts as ``reverbere fleet status`` gives."""

import os
import time
from collections import Counter

from gateway.metrics import Registry
from gateway.ota import gauges, rollout
from gateway.store.db import open_db

NODES = 2000


def town(path):
    """2,000 registered nodes (and one retired, never counted), each with readings of its
    power and battery, 1,500 of them in a rollout at every stage, the rest idle."""
    db = open_db(path)
    ids = [f"lamp-{i:04d}" for i in range(NODES)]
    with db.conn:
        db.conn.executemany(
            "INSERT INTO nodes (id, key, added) VALUES (?, ?, 0)",
            [(n, os.urandom(32)) for n in ids],
        )
        db.execute("INSERT INTO nodes (id, key, added) VALUES ('lamp-old', NULL, 0)")
        db.conn.executemany(
            "INSERT INTO readings (node, channel, time, value) VALUES (?, ?, ?, 1)",
            [(ref, ch, 1_800_000_000 + k) for ref in range(1, NODES + 1)
             for ch in ("p", "bat") for k in range(10)],
        )  # fmt: skip
    rollout.start(db, 2, [("firmware/node.mpy", b"M\x06node")], ids[:1500], canary=1500, now=0)
    with db.conn:  # 100 nodes in each end state, the other 1,100 offered
        for i, state in enumerate(rollout.ENDED):
            db.execute(
                "UPDATE ota_rollout SET state = ? WHERE node IN"
                " (SELECT node FROM ota_rollout ORDER BY node LIMIT 100 OFFSET ?)",
                [state, 100 * i],
            )
    return db


def test_the_gauge_counts_what_fleet_status_counts_in_one_cheap_query(tmp_path):
    db = town(tmp_path / "gw.db")
    t = time.perf_counter()
    slow = Counter(u.state for u in rollout.node_states(db))  # fleet status, node by node
    slow_ms = (time.perf_counter() - t) * 1e3
    statements = []
    db.conn.set_trace_callback(statements.append)
    t = time.perf_counter()
    counts = rollout.state_counts(db)
    ms = (time.perf_counter() - t) * 1e3
    db.conn.set_trace_callback(None)
    print(f"{NODES} nodes: the gauge's count {ms:.1f} ms, fleet status's {slow_ms:.0f} ms")
    assert counts == slow == {
        "idle": 500, "offered": 1100, "confirmed": 100, "rolled_back": 100,
        "failed": 100, "cancelled": 100,
    }  # fmt: skip
    assert len(statements) == 1 and "readings" not in statements[0]
    plan = " ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + statements[0]))
    assert "SEARCH r USING INDEX sqlite_autoindex_ota_rollout_1 (node=?)" in plan
    assert ms < slow_ms / 10


def test_a_scrape_reuses_the_counts_for_a_while(tmp_path):
    db = town(tmp_path / "gw.db")
    registry = Registry()
    gauges.declare_ota_metrics(registry, db, every=3600)
    assert 'reverbere_ota_nodes{state="confirmed"} 100' in registry.render()
    statements = []
    db.conn.set_trace_callback(statements.append)
    assert 'reverbere_ota_nodes{state="idle"} 500' in registry.render()
    db.conn.set_trace_callback(None)
    assert statements == []  # within the hour: nothing read again
