"""The console on a Pi: no page scans a whole table (issue 16). Every statement the console's
reads run is captured (SQLite's trace callback) and its query plan checked: readings,
anomalies, summaries, sessions and tokens are reached through an index, never scanned. The
fleet itself (the ``nodes`` table) is read whole: it is what the page shows."""

import re
import time

from gateway.console import accounts, store
from gateway.ingest.registry import add_node
from gateway.pipeline.detect import DetectConfig
from gateway.store.db import open_db

NODES = 100
HOURS = 24
NEVER_SCANNED = ("readings", "anomalies", "summaries", "console_sessions", "console_tokens")
PARTIAL = "console_open_anomalies"  # the index of the open events only


def seeded(path):
    """A town's day: 100 nodes with a reading a minute on p, bat and rssi, 2,000 events."""
    db = open_db(path)
    t0 = time.time() - HOURS * 3600
    for i in range(NODES):
        add_node(db, f"lamp-{i:03d}")
    refs = dict(db.execute("SELECT id, ref FROM nodes").fetchall())
    with db.conn:
        db.conn.executemany(
            "INSERT INTO readings (node, channel, time, value) VALUES (?, ?, ?, ?)",
            (
                (ref, ch, t0 + 60 * k, 50.0)
                for ref in refs.values()
                for ch in ("p", "bat", "rssi")
                for k in range(HOURS * 60)
            ),
        )
        db.conn.executemany(
            "INSERT INTO anomalies (node, channel, kind, start, end, score, reason, version)"
            " VALUES (?, 'p', 'lit_by_day', ?, ?, 0.9, 'allumé', 1)",
            (
                (f"lamp-{k % NODES:03d}", t0 + 40 * k, None if k % 50 == 0 else t0 + 40 * k + 30)
                for k in range(2000)
            ),
        )
        db.conn.executemany(
            "INSERT INTO summary_cursor (node, channel, time, value) VALUES (?, 'p', ?, 50)",
            ((n, t0 + HOURS * 3600) for n in refs),
        )
    accounts.add_user(db, "tech", "technician", "tech-passphrase")
    return db


def test_no_console_read_scans_a_big_table(tmp_path):
    db = seeded(tmp_path / "gw.db")
    token = accounts.add_token(db, "script", "viewer")
    cookie = accounts.open_session(db, "tech", 3600, time.time())
    statements = []
    db.conn.set_trace_callback(statements.append)
    now = time.time()
    t = time.perf_counter()
    fleet = store.fleet(db, DetectConfig(), lambda n: {"interval": 60, "pack": 10}, {}, now)
    fleet_ms = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    events = store.events(db)
    events_ms = (time.perf_counter() - t) * 1000
    store.summaries(db, None, now - 86400, now)
    accounts.session(db, cookie, now)
    accounts.token_role(db, token, now)
    db.conn.set_trace_callback(None)
    assert len(fleet.nodes) == NODES and len(events) == store.EVENTS_LIMIT
    assert sum(e["end"] is None for e in events) == 40  # every open event, however old
    print(f"fleet of {NODES} nodes: {fleet_ms:.1f} ms; events page: {events_ms:.1f} ms")
    scans = []
    for sql in {s for s in statements if s.lstrip().upper().startswith("SELECT")}:
        plan = " | ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + sql).fetchall())
        for table in NEVER_SCANNED:
            for step in re.findall(rf"\bSCAN {table}\b[^|]*", plan):
                # a walk along an index is bounded only by a LIMIT, or by a partial index
                # that holds only the open events
                bounded = "USING" in step and (" LIMIT " in sql or PARTIAL in step)
                if not bounded:
                    scans.append((sql, step))
    assert scans == []
    db.close()


def test_a_fleet_page_reads_the_readings_of_its_own_nodes_only(tmp_path):
    """The fleet page shows ``FLEET_PAGE`` nodes at a time: the state, the filter and the
    count come from the ``nodes`` table, the last readings only for the page's nodes."""
    db = seeded(tmp_path / "gw.db")
    now = time.time()
    ref = db.execute("SELECT ref FROM nodes WHERE id = 'lamp-030'").fetchone()[0]
    with db.conn:  # lamp-030 reported the version it runs after an update (docs/ota.md)
        db.execute("INSERT INTO readings VALUES (?, 'fw', ?, 3)", [ref, now - 600])
    statements = []
    db.conn.set_trace_callback(statements.append)
    page = store.fleet(db, DetectConfig(), lambda n: {"interval": 60, "pack": 10}, {}, now,
                       offset=30, limit=10)  # fmt: skip
    db.conn.set_trace_callback(None)
    assert [n.id for n in page.nodes] == [f"lamp-{i:03d}" for i in range(30, 40)]
    assert page.total == NODES and page.offset == 30
    assert page.nodes[0].last_value == 50.0 and page.nodes[0].rssi == 50.0
    assert page.nodes[0].firmware == "3" and page.nodes[1].firmware is None
    readings = [s for s in statements if "FROM readings" in s]
    # its p, its rssi, its firmware version: ten nodes, not a hundred
    assert len(readings) == 10 * 3
    db.close()


def scans_in(db, statements, tables=NEVER_SCANNED):
    """The steps of the statements' query plans that scan one of ``tables`` unbounded."""
    found = []
    for sql in {s for s in statements if s.lstrip().upper().startswith(("SELECT", "WITH"))}:
        plan = " | ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + sql).fetchall())
        for table in tables:
            for step in re.findall(rf"\bSCAN {table}\b[^|]*", plan):
                bounded = "USING" in step and (" LIMIT " in sql or PARTIAL in step)
                if not bounded:
                    found.append((sql, step))
    return found


def test_the_node_energy_and_gateway_pages_and_the_report_use_indexes(tmp_path):
    """The other pages' reads, and the month's report the Energy page offers to download
    (``gateway.reports``, which sums the per-day energy the database keeps): SQLite's query
    plan of each says SEARCH."""
    from gateway import reports
    from gateway.console import daily, views
    from gateway.sync.service import sync_status

    db = seeded(tmp_path / "gw.db")
    daily.ensure_zone(db, "Europe/Paris")
    now = time.time()
    hour = int(now // 3600 * 3600)
    with db.conn:
        db.conn.executemany(
            "INSERT INTO summaries (node, channel, hour, count, min, max, sum, mean, wh)"
            " VALUES (?, ?, ?, 60, 0, 1, 0, 50, 50)",
            ((f"lamp-{i:03d}", ch, hour - 3600 * k)
             for i in range(NODES) for ch in ("p", "bat") for k in range(48)),
        )  # fmt: skip
    detect = DetectConfig(timezone="Europe/Paris")
    statements = []
    db.conn.set_trace_callback(statements.append)
    view = views.node_view(db, detect, lambda n: {"interval": 60}, "lamp-007")
    for span in views.SPANS:
        views.series(db, "lamp-007", "p", span, now)
    assets = views.energy(db, detect, now)
    views.waste_ledger(db, detect, now - 31 * 86400)
    views.storage(db, tmp_path / "gw.db")
    sync_status(db)
    period = reports.Period.month(time.strftime("%Y-%m", time.gmtime(now)), "Europe/Paris")
    report = reports.build(db, period, reports.Town.from_detect(detect))
    db.conn.set_trace_callback(None)
    assert view.channels == ["p"] and sum(a.nodes for a in assets) == NODES
    assert report is not None
    energy = [s for s in statements if "console_energy_days" in s]
    assert energy and not any("FROM summaries" in s for s in statements if "console_" in s)
    # the sync state's raw backlog (gateway.sync.raw.raw_backlog) reads the spans owed, set
    # aside and in flight through partial indexes of their own, at most STATUS_SPANS of each
    assert sum("FROM sync_raw" in s for s in statements) == 3
    tables = (*NEVER_SCANNED, "console_energy_days", "console_days", "sync_raw")
    assert scans_in(db, statements, tables) == []
    # the report sums the days kept in its zone, not the hours (in another zone it reads
    # them through console_summaries_energy: tests/test_reports_sums.py)
    assert any("FROM console_energy_days" in s and "json_each" in s for s in statements)
    assert not any("FROM summaries" in s and "channel IN" in s for s in statements)
    db.close()
