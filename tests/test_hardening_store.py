"""The store under hardening (issue 13): counters SQLite cannot hold, counter 0, and a gateway
at its disk budget (real gateways, real SQLite files, real CoAP on loopback)."""

import asyncio
import logging
import sqlite3
import time

import pytest
import sqlite_utils
from gateway_helpers import add_node, make_config, minute_readings, running_gateway
from test_catchup import commit, expected, power, start_stop, summaries

from gateway.ingest import registry
from gateway.metrics import Registry
from gateway.pipeline.summarise import HOUR
from gateway.service import Gateway
from gateway.store.commit import (
    MAX_COUNTER,
    NO_COUNTER,
    Outcome,
    OverBudget,
    check_readings_budget,
    readings_budget,
    set_disk_budget,
)
from gateway.store.committer import Committer
from gateway.store.db import open_db
from gateway.store.group import Pack
from gateway.store.readings import query_readings
from gateway.store.records import Reading
from sim.sender import Sender, SimNode

CHANGED, BAD_REQUEST, SERVICE_UNAVAILABLE = 68, 128, 163  # 2.04, 4.00, 5.03


def run(coro):
    return asyncio.run(coro)


# --- item 4: a counter of 2^63 or more ----------------------------------------------------


def test_a_counter_sqlite_cannot_hold_is_refused_with_4_00_and_the_largest_one_is_stored(tmp_path):
    # A Partial IV may be 8 bytes (up to 2^64 - 1); nodes.last_seq is a signed 64-bit INTEGER.
    # Before: the writer refused the whole batch (OverflowError) and the node got 5.03 forever.
    async def go():
        async with running_gateway(tmp_path) as gw:
            node = SimNode("lamp-001", add_node(gw))
            async with Sender("127.0.0.1", gw.coap_port) as s:
                node.seq = MAX_COUNTER  # the next one is 2^63
                r = await s.send(node, minute_readings(3))
                assert (r.code, r.payload) == (BAD_REQUEST, b"counter above 2^63 - 1")
                assert query_readings(gw.db) == []
                node.seq = MAX_COUNTER - 1  # the next one is 2^63 - 1: it fits
                assert (await s.send(node, minute_readings(3))).code == CHANGED
                assert registry.lookup(gw.db, "lamp-001")[2] == MAX_COUNTER
                assert len(query_readings(gw.db)) == 3

    run(go())


def test_a_pack_the_database_refuses_costs_only_its_own_node_a_5_03(tmp_path, caplog):
    # Past ingest's check (a bug, a value SQLite cannot hold) a pack makes the transaction
    # fail: the batch is committed again in halves, and the other nodes' packs are stored.
    async def go():
        db = open_db(tmp_path / "r.db")
        keys = {f"n{i}": registry.add_node(db, f"n{i}") for i in range(7)}
        c = Committer(tmp_path / "r.db", max_packs=16, delay=0.005, metrics=Registry())
        await c.start()
        futures = []
        for i, (node_id, key) in enumerate(keys.items()):
            ref = registry.lookup(db, node_id)[0]
            seq = 1 << 63 if node_id == "n3" else 1  # n3: too big for SQLite's INTEGER
            futures.append(c.submit(Pack(ref, node_id, key, seq, [Reading(node_id, "p", 100, i)])))
        outcomes = await asyncio.gather(*futures)
        await c.stop()
        assert outcomes == [Outcome.STORED] * 3 + [Outcome.FULL] + [Outcome.STORED] * 3
        assert sorted(r.node for r in query_readings(db)) == ["n0", "n1", "n2", "n4", "n5", "n6"]
        assert registry.lookup(db, "n3")[2] == NO_COUNTER
        assert registry.lookup(db, "n4")[2] == 1
        db.close()

    with caplog.at_level(logging.ERROR, logger="reverbere.store"):
        run(go())
    (line,) = [r for r in caplog.records if r.getMessage() == "pack refused by the database"]
    assert "OverflowError" in line.fields["trace"]


# --- item 5: counter 0 --------------------------------------------------------------------


def test_counter_0_is_stored_for_a_new_node_and_after_rotate_key(tmp_path):
    # docs/protocol.md encodes 0 as h'00', so other implementations start there. Before: a new
    # node had "last counter 0", and its pack 0 was answered 2.04 as a repeat and lost.
    async def go():
        async with running_gateway(tmp_path) as gw:
            node = SimNode("lamp-001", add_node(gw))
            t = int(time.time()) // 60 * 60 - 3600
            async with Sender("127.0.0.1", gw.coap_port) as s:
                node.seq = -1  # the next one is 0
                assert (await s.send(node, minute_readings(3, start=t))).code == CHANGED
                assert len(query_readings(gw.db)) == 3
                node.seq = -1  # the same counter again: a repeat, nothing stored
                assert (await s.send(node, minute_readings(3, start=t + 600))).code == CHANGED
                assert len(query_readings(gw.db)) == 3
                node.key = registry.rotate_key(gw.db, "lamp-001")
                node.seq = -1  # a new key: counter 0 again, taken again
                assert (await s.send(node, minute_readings(3, start=t + 1200))).code == CHANGED
                assert len(query_readings(gw.db)) == 6
            (n,) = registry.list_nodes(gw.db)
            assert (n.last_seq, n.messages, n.gaps) == (0, 2, 0)

    run(go())


def test_the_firmware_s_first_counter_1_skips_nothing(tmp_path):
    # firmware/store.py starts its counters at 1: its first pack is taken, and the counter it
    # never used (0) is not counted as a gap, nor is where a re-keyed node's counter is.
    db = open_db(tmp_path / "r.db")
    registry.add_node(db, "a")
    commit(db, "a", 1, [("p", 100, 1)])
    assert registry.list_nodes(db)[0].gaps == 0
    registry.rotate_key(db, "a")
    commit(db, "a", 500, [("p", 200, 1)])
    commit(db, "a", 502, [("p", 300, 1)])
    (n,) = registry.list_nodes(db)
    assert (n.last_seq, n.messages, n.gaps) == (502, 3, 1)
    db.close()


def test_the_migration_marks_every_counter_0_as_nothing_stored(tmp_path):
    # A counter 0 could never be stored before (it had to be above 0): every 0 means nothing.
    db = open_db(tmp_path / "r.db")
    for node in ("new", "used"):
        registry.add_node(db, node)
    with db.conn:
        db.execute("UPDATE nodes SET last_seq = CASE id WHEN 'new' THEN 0 ELSE 41 END")
        db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm002_no_counter_yet'")
    db.close()
    db = sqlite_utils.Database(tmp_path / "r.db")
    registry.migrations.apply(db)  # the set again: only m002 is new
    rows = dict(db.execute("SELECT id, last_seq FROM nodes").fetchall())
    assert rows == {"new": NO_COUNTER, "used": 41}
    assert {n.id: n.last_seq for n in registry.list_nodes(db)} == {"new": None, "used": 41}
    db.close()


# --- item 8: at the disk budget -----------------------------------------------------------


def test_the_readings_leave_the_stages_their_share_and_the_wal_counts(tmp_path):
    # The writer process refuses readings at the budget minus the stages' share, and counts
    # the WAL, which it truncates first when that is what tips the balance.
    assert readings_budget(1 << 30) == (1 << 30) - int((1 << 30) * 0.05)
    assert readings_budget(1 << 20) == (1 << 20) - (256 << 10)
    assert readings_budget(400 << 10) == (400 << 10) - (100 << 10)  # a quarter at most
    path = tmp_path / "r.db"
    db = open_db(path)
    used = db.execute("PRAGMA page_count").fetchone()[0] * 4096
    with db.conn:  # a WAL of about 400 KB
        db.execute("CREATE TABLE ballast (b BLOB)")
        db.conn.executemany("INSERT INTO ballast VALUES (?)", [(b"x" * 4000,)] * 100)
    with db.conn:
        db.execute("DELETE FROM ballast")
    conn = sqlite3.connect(path)
    reader = sqlite3.connect(path)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM nodes").fetchone()  # holds the WAL: no truncation
    with pytest.raises(OverBudget, match="KB of WAL"):
        check_readings_budget(conn, str(path), used + (200 << 10))
    reader.rollback()
    check_readings_budget(conn, str(path), used + (200 << 10))  # truncated: it fits
    assert (tmp_path / "r.db-wal").stat().st_size == 0
    for c in (conn, reader, db):
        c.close()


def test_stage_failures_are_logged_once_per_stage_a_minute_with_a_count(tmp_path, caplog):
    # Before: one traceback per failure (5,436 of them at a full budget).
    async def go():
        db = open_db(tmp_path / "r.db")
        key = registry.add_node(db, "a")
        metrics = Registry()
        c = Committer(tmp_path / "r.db", delay=0, metrics=metrics)

        def broken(wdb, new):
            raise RuntimeError("a broken stage")

        c.after_commit.append(broken)
        await c.start()
        for seq in range(1, 6):
            pack = Pack(1, "a", key, seq, [Reading("a", "p", 100 * seq, 1)])
            assert await c.submit(pack) is Outcome.STORED
            await c.settled()
        await c.stop()
        stage = broken.__qualname__
        assert metrics.counter("reverbere_stage_errors_total").get(stage=stage) == 5
        db.close()

    with caplog.at_level(logging.ERROR, logger="reverbere.store"):
        run(go())
    lines = [r for r in caplog.records if r.getMessage().startswith("after-commit stage")]
    assert len(lines) == 1 and lines[0].fields["suppressed"] == 0


def _fill(db, budget: int) -> None:
    """Fill the database up to ``budget`` from outside the gateway (as the stages' share
    of years of summaries would), with rows small enough to plug every hole."""
    set_disk_budget(db.conn, budget)
    db.execute("CREATE TABLE IF NOT EXISTS ballast (b BLOB)")
    for size in (4000, 1000, 200, 40, 8):
        try:
            while True:
                with db.conn:
                    db.execute("INSERT INTO ballast VALUES (?)", [b"x" * size])
        except sqlite3.OperationalError as e:
            assert "full" in str(e)


def _complete_for_stored(db, since: float = 0) -> None:
    """Every hour of every stored reading (from ``since``: retention leaves part of an
    hour) is summarised, exactly."""
    got = summaries(db)
    want = {k: v for k, v in expected(db).items() if k[2] >= since}
    assert want
    for key, (count, mean, _wh) in want.items():
        assert got[key][0] == count, key
        assert got[key][1] == pytest.approx(mean), key


def test_at_the_budget_readings_get_5_03_and_the_stages_go_on(tmp_path):
    # A small budget: readings fill it to their share, then get 5.03 with Max-Age; the
    # stages, which have the rest, summarise every hour that was stored.
    async def go():
        async with running_gateway(tmp_path, disk_budget=1 << 20, retry_after=30) as gw:
            node = SimNode("lamp-001", add_node(gw))
            start = int(time.time()) // HOUR * HOUR - 300 * 86400
            async with Sender("127.0.0.1", gw.coap_port) as s:
                for i in range(2000):
                    r = await s.send(node, minute_readings(100, start=start + 6000 * i))
                    if r.code != CHANGED:
                        break
                assert (r.code, r.max_age) == (SERVICE_UNAVAILABLE, 30), "budget never reached"
                await gw.committer.settled()
                _complete_for_stored(gw.db)
                assert i > 100  # the readings had most of the budget

    run(go())


def test_stages_a_full_database_stopped_resume_when_retention_frees_space(tmp_path, caplog):
    # A database at its budget (as an older gateway left it: readings took the last pages),
    # with commits whose stages never ran. The restart at the same budget: the stages stop
    # on "database or disk is full" (once, not at every commit), readings get 5.03; then
    # retention deletes old summarised readings and both resume, without a restart.
    # (a year's retention: the pass at start deletes nothing; the test's pass, 100 days on, does)
    cfg = make_config(tmp_path, disk_budget=1 << 20, retry_after=30, retention_days=365)
    db = open_db(cfg.database)
    registry.add_node(db, "a")
    h = int(time.time()) // HOUR * HOUR - 300 * 86400
    for seq in range(1, 31):  # 30,000 readings, summarised by the first start
        commit(db, "a", seq, power(h + (seq - 1) * 60_000, 1000))
    gw_cfg = make_config(tmp_path)  # without the budget
    assert run(start_stop(gw_cfg)) == 30_000
    for seq in range(31, 34):  # then commits whose stages never ran: 250 hours
        commit(db, "a", seq, power(h + 600 * HOUR + (seq - 31) * 300_000, 500, step=600))
    _fill(db, 1 << 20)

    async def go():
        gw = Gateway(cfg)
        await gw.start()
        try:
            assert gw.committer.caught_up == 0  # stopped by the full database
            node = SimNode("a", registry.lookup(gw.db, "a")[1])
            node.seq = 40
            later = h + 900 * HOUR
            async with Sender("127.0.0.1", gw.coap_port) as s:
                r = await s.send(node, power(later, 50))
                assert (r.code, r.max_age) == (SERVICE_UNAVAILABLE, 30)
                assert await gw.retention(time.time() + 100 * 86400) > 0  # the stages resume
                await gw.committer.settled()
                _complete_for_stored(gw.db, since=h + 600 * HOUR)
                r = await s.send(node, power(later, 50))
                assert r.code == CHANGED
                await gw.committer.settled()
                _complete_for_stored(gw.db, since=h + 600 * HOUR)
                assert len(query_readings(gw.db, since=later)) == 50
        finally:
            await gw.stop()

    with caplog.at_level(logging.INFO, logger="reverbere.store"):
        run(go())
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("stages stopped: the database is full") == 1
    assert messages.count("stages running again") == 1
    failed = [m for m in messages if m.startswith("after-commit stage")]
    assert 1 <= len(failed) <= 3  # at most once per stage (detect, summarise, outbox)
    db.close()
