"""The durable buffer: one transaction per batch, counter checks inside it, INSERT OR IGNORE,
group commit, after-commit stages, retention and the disk budget (real SQLite files)."""

import asyncio

import pytest
from gateway_helpers import make_config

from gateway.ingest import registry
from gateway.metrics import Registry
from gateway.service import Gateway
from gateway.store import checkpoint, stages
from gateway.store.checkpoint import wal_bytes
from gateway.store.commit import (
    NO_COUNTER,
    Outcome,
    commit_batch,
    is_full_error,
    set_disk_budget,
)
from gateway.store.committer import Committer
from gateway.store.db import open_db
from gateway.store.group import Pack
from gateway.store.readings import db_bytes, query_readings
from gateway.store.records import Reading


@pytest.fixture
def db(tmp_path):
    d = open_db(tmp_path / "r.db")
    yield d
    d.close()


def _pack(db, node_id, seq, readings, key=None):
    ref, k, _ = registry.lookup(db, node_id)
    return Pack(ref, node_id, key or k, seq, [Reading(node_id, *r) for r in readings])


def test_commit_batch_checks_counters_in_the_transaction(db):
    registry.add_node(db, "a")
    batch = [
        _pack(db, "a", 1, [("p", 100, 1), ("bat", 100, 87)]),
        _pack(db, "a", 3, [("p", 160, 2)]),  # counter 2 lost: a gap
        _pack(db, "a", 3, [("p", 220, 3)]),  # same counter again in the batch
        _pack(db, "a", 2, [("p", 280, 4)]),  # older: replay
        _pack(db, "a", 9, [("p", 340, 5)], key=b"x" * 32),  # verified with another key
    ]
    outcomes, new = commit_batch(db.conn, batch, now=1000.0)
    assert outcomes == [
        Outcome.STORED,
        Outcome.STORED,
        Outcome.REPEATED,
        Outcome.REPLAY,
        Outcome.UNKNOWN_NODE,
    ]
    assert [(r.channel, r.time) for r in new] == [("p", 100), ("bat", 100), ("p", 160)]
    (node,) = registry.list_nodes(db)
    assert (node.last_seq, node.gaps, node.messages, node.battery, node.last_seen) == (
        3,
        1,
        2,
        87,
        1000.0,
    )


def test_a_resent_pack_inserts_nothing_and_reports_no_new_readings(db):
    registry.add_node(db, "a")
    readings = [("p", 100 + 60 * i, i) for i in range(10)]
    commit_batch(db.conn, [_pack(db, "a", 1, readings)])
    outcomes, new = commit_batch(db.conn, [_pack(db, "a", 2, [*readings[5:], ("p", 9999, 1)])])
    assert outcomes == [Outcome.STORED] and new == [Reading("a", "p", 9999, 1)]
    assert db.execute("SELECT count(*) FROM readings").fetchone()[0] == 11


def test_a_failed_transaction_leaves_nothing_behind(db):
    registry.add_node(db, "a")
    bad = _pack(db, "a", 2, [("p", 100, 1)])
    bad.readings.append(Reading("a", "p", 200, 2**70))  # too big for SQLite: raises mid-batch
    with pytest.raises(OverflowError):
        commit_batch(db.conn, [_pack(db, "a", 1, [("p", 50, 1)]), bad])
    assert db.execute("SELECT count(*) FROM readings").fetchone()[0] == 0
    assert registry.lookup(db, "a")[2] == NO_COUNTER  # counter untouched: nothing stored


def test_group_commit_shares_transactions_and_stages_see_new_readings_in_order(tmp_path):
    async def go():
        open_db(tmp_path / "r.db").close()
        db = open_db(tmp_path / "r.db")
        keys = {f"n{i}": registry.add_node(db, f"n{i}") for i in range(50)}
        metrics = Registry()
        c = Committer(tmp_path / "r.db", max_packs=16, delay=0.005, metrics=metrics)
        seen = []
        c.after_commit.append(lambda wdb, new: seen.extend(new))
        c.after_commit.insert(0, _failing_stage)  # a failing stage must not stop the others
        await c.start()
        futures = []
        for i, (node_id, key) in enumerate(keys.items()):
            ref = registry.lookup(db, node_id)[0]
            futures.append(
                c.submit(Pack(ref, node_id, key, 1, [Reading(node_id, "p", 100 + i, i)]))
            )
        outcomes = await asyncio.gather(*futures)
        await c.stop()
        assert outcomes == [Outcome.STORED] * 50
        # 50 packs submitted at once, at most 16 per transaction: 4 commits (one fsync each)
        assert metrics.counter("reverbere_commits_total").get() == 4
        assert metrics.counter("reverbere_stage_errors_total").get(stage="_failing_stage") == 4
        assert [r.time for r in seen] == [100 + i for i in range(50)]

    asyncio.run(go())


async def _fifty_packs_at_once(path, metrics):
    """A committer (16 packs a commit) given 50 packs of one reading at once; returns the
    number of commits made before each call of its stage, and the readings the stage saw."""
    open_db(path).close()
    db = open_db(path)
    keys = {f"n{i:02d}": registry.add_node(db, f"n{i:02d}") for i in range(50)}
    c = Committer(path, max_packs=16, delay=0, metrics=metrics)
    commits_before, seen = [], []

    def stage(wdb, new):
        commits_before.append(metrics.counter("reverbere_commits_total").get())
        seen.extend(new)

    c.after_commit.append(stage)
    await c.start()
    futures = []
    for i, (node_id, key) in enumerate(keys.items()):
        ref = registry.lookup(db, node_id)[0]
        futures.append(c.submit(Pack(ref, node_id, key, 1, [Reading(node_id, "p", 100 + i, i)])))
    assert await asyncio.gather(*futures) == [Outcome.STORED] * 50
    await c.stop()
    assert metrics.gauge("reverbere_stage_backlog_readings").render()[-1].endswith(" 0")
    return commits_before, seen


def test_packs_waiting_are_committed_before_the_stages_run(tmp_path):
    # Ingest first: the four commits go out, then the stages run on what each stored, in order.
    commits_before, seen = asyncio.run(_fifty_packs_at_once(tmp_path / "r.db", Registry()))
    assert commits_before == [4, 4, 4, 4]
    assert [r.time for r in seen] == [100 + i for i in range(50)]


def test_stages_far_behind_run_between_commits(tmp_path, monkeypatch):
    # Past STAGES_LAG_MAX, as many readings as a commit stored go through the stages after it.
    monkeypatch.setattr(stages, "STAGES_LAG_MAX", -1.0)
    commits_before, seen = asyncio.run(_fifty_packs_at_once(tmp_path / "r.db", Registry()))
    assert commits_before == [1, 2, 3, 4]
    assert [r.time for r in seen] == [100 + i for i in range(50)]


def test_readings_owed_beyond_the_memory_cap_are_read_back(tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "OWED_IN_MEMORY", 20)  # the first commit's 16 only
    _, seen = asyncio.run(_fifty_packs_at_once(tmp_path / "r.db", Registry()))
    assert [r.time for r in seen] == [100 + i for i in range(50)]
    assert seen[20] == Reading("n20", "p", 120, 20)  # read back from the database


def _failing_stage(db, new):
    raise RuntimeError("a broken stage")


def test_stages_commit_without_an_fsync_and_the_readings_with_one(tmp_path):
    # PRAGMA synchronous: 2 = FULL (fsync at each commit), 1 = NORMAL (the next FULL one or a
    # checkpoint syncs it). The stages can be replayed, the readings cannot.
    async def go():
        db = open_db(tmp_path / "r.db")
        key = registry.add_node(db, "n1")
        ref = registry.lookup(db, "n1")[0]
        c = Committer(tmp_path / "r.db", max_packs=16, delay=0)
        during = []
        c.after_commit.append(
            lambda wdb, new: during.append(wdb.execute("PRAGMA synchronous").fetchone()[0])
        )
        c.after_commit.insert(0, _failing_stage)  # and a stage that fails changes nothing
        await c.start()
        for seq in (1, 2):
            await c.submit(Pack(ref, "n1", key, seq, [Reading("n1", "p", 100 * seq, 1)]))
            assert await c.run(lambda wdb: wdb.execute("PRAGMA synchronous").fetchone()[0]) == 2
        await c.stop()
        assert during == [1, 1]

    asyncio.run(go())


def test_retention_keeps_what_a_guard_has_not_released(tmp_path):
    async def go():
        gw = Gateway(make_config(tmp_path, retention_days=30))
        await gw.start()
        db = open_db(gw.cfg.database)
        registry.add_node(db, "a")
        now = 100 * 86400.0
        old = [("p", now - 40 * 86400 + i, i) for i in range(5)]
        recent = [("p", now - 86400, 1)]
        commit_batch(db.conn, [_pack(db, "a", 1, old + recent)])
        # summaries reach only up to 35 days ago: readings after that must stay
        # commit_batch alone runs no stage: the committer's own guard keeps what they owe
        assert await gw.retention(now) == 0
        gw.retention_guards[:] = [lambda wdb: now - 40 * 86400 + 2]
        assert await gw.retention(now) == 2
        gw.retention_guards.clear()
        assert await gw.retention(now) == 3
        assert [r.time for r in query_readings(db)] == [now - 86400]
        await gw.stop()

    asyncio.run(go())


def test_query_readings_filters_by_node_and_time(db):
    registry.add_node(db, "a")
    registry.add_node(db, "b")
    commit_batch(
        db.conn,
        [_pack(db, "a", 1, [("p", 100, 1), ("p", 200, 2)]), _pack(db, "b", 1, [("t", 150, 20.5)])],
    )
    assert query_readings(db, node="a", since=150) == [Reading("a", "p", 200, 2)]
    assert [r.node for r in query_readings(db)] == ["a", "a", "b"]
    assert query_readings(db, limit=1) == [Reading("a", "p", 100, 1)]


def test_disk_budget_makes_sqlite_refuse_not_corrupt(db):
    registry.add_node(db, "a")
    budget = db.execute("PRAGMA page_count").fetchone()[0] * 4096 + 16 * 4096  # schema + 16
    set_disk_budget(db.conn, budget)
    seq = 0
    with pytest.raises(Exception) as info:
        for i in range(1000):
            seq += 1
            commit_batch(
                db.conn, [_pack(db, "a", seq, [("p", i * 1000 + k, k) for k in range(50)])]
            )
    assert is_full_error(info.value)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db_bytes(db) <= budget


def test_the_wal_starts_over_under_a_load_that_never_pauses(tmp_path, monkeypatch):
    # SQLite starts the WAL over only after a checkpoint caught up with the last commit, which
    # never happens while commits follow each other: past WAL_RESTART_FRAMES it starts over.
    monkeypatch.setattr(checkpoint, "WAL_RESTART_FRAMES", 64)  # 256 KB
    monkeypatch.setattr(checkpoint, "CHECKPOINT_PERIOD", 0.0)

    async def go():
        db = open_db(tmp_path / "r.db")
        keys = {f"n{i:03d}": registry.add_node(db, f"n{i:03d}") for i in range(200)}
        refs = {n: registry.lookup(db, n)[0] for n in keys}
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the WAL of the load alone
        c = Committer(tmp_path / "r.db", max_packs=16, delay=0)
        await c.start()
        largest = 0
        for seq in range(1, 61):  # 12,000 packs, always some waiting for a commit
            futures = [
                c.submit(Pack(refs[n], n, k, seq, [Reading(n, "p", 60 * seq, seq)]))
                for n, k in keys.items()
            ]
            assert set(await asyncio.gather(*futures)) == {Outcome.STORED}
            largest = max(largest, wal_bytes(tmp_path / "r.db"))
        await c.stop()
        assert db.execute("SELECT count(*) FROM readings").fetchone()[0] == 12000
        db.close()
        return largest

    # 750 commits of a few pages each (without the restarts: a WAL of 14 MB and growing)
    assert asyncio.run(go()) < 8 * (256 << 10)  # 2 MB: it does not grow with the load
