"""The store's writer process (gateway/store/commit.py): the commits run there, it ends with the
gateway however the gateway ends, and one that dies is replaced without losing a reading."""

import asyncio
import os
import select
import signal

from gateway_helpers import GatewayProcess

from gateway.ingest import registry
from gateway.metrics import Registry
from gateway.service import init_dir
from gateway.store.commit import Outcome, Setup, open_writer
from gateway.store.committer import Committer
from gateway.store.db import open_db
from gateway.store.group import Pack
from gateway.store.records import Reading


def _exited(pid: int, timeout: float) -> bool:
    """Wait until process ``pid`` (not our child) ends; False if it still runs after ``timeout``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])  # readable once it has ended
    finally:
        os.close(fd)


def test_the_writer_commits_with_an_fsync_each_time(tmp_path):
    # PRAGMA synchronous 2 = FULL: an acknowledged reading survives a power cut.
    open_db(tmp_path / "r.db").close()
    conn = open_writer(Setup(str(tmp_path / "r.db"), 1 << 30, 0, []))
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_writer_process_that_dies_is_replaced_and_nothing_acknowledged_is_lost(tmp_path):
    async def go():
        db = open_db(tmp_path / "r.db")
        key = registry.add_node(db, "n1")
        ref = registry.lookup(db, "n1")[0]
        c = Committer(tmp_path / "r.db", max_packs=16, delay=0, metrics=Registry())
        await c.start()

        def pack(seq):
            return Pack(ref, "n1", key, seq, [Reading("n1", "p", 100 * seq, seq)])

        assert await c.submit(pack(1)) is Outcome.STORED
        first = c.writer.proc
        first.kill()
        first.wait()
        # The pack in hand when the writer died gets 5.03 (nothing to say it was stored); the
        # node sends it again, as it does after any 5.03, and a new writer stores it.
        outcome = await c.submit(pack(2))
        if outcome is Outcome.FULL:
            outcome = await c.submit(pack(2))
        assert outcome is Outcome.STORED
        assert c.writer.proc.pid != first.pid
        assert await c.submit(pack(3)) is Outcome.STORED
        await c.stop()
        rows = db.execute("SELECT time, value FROM readings ORDER BY time").fetchall()
        assert rows == [(100, 1), (200, 2), (300, 3)]
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()

    asyncio.run(go())


def test_the_writer_process_ends_with_the_gateway_even_killed(tmp_path):
    # kill -9 leaves the writer no signal, only the end of its socket: it exits by itself, so
    # that a restarted gateway does not find an old writer still holding the database.
    cfg = init_dir(tmp_path)
    for how in (signal.SIGTERM, signal.SIGKILL):
        gw = GatewayProcess(cfg)
        (writer,) = [r["pid"] for r in gw.log if r.get("msg") == "store writer started"]
        assert not _exited(writer, 0)
        gw.proc.send_signal(how)
        gw.proc.wait()
        assert _exited(writer, 10)


def test_too_little_free_disk_refuses_the_batch_and_stores_nothing(tmp_path):
    # min_free: the writer process checks the disk's free space before each commit.
    async def go():
        db = open_db(tmp_path / "r.db")
        key = registry.add_node(db, "n1")
        ref = registry.lookup(db, "n1")[0]
        metrics = Registry()
        c = Committer(tmp_path / "r.db", delay=0, min_free=1 << 60, metrics=metrics)
        await c.start()
        pack = Pack(ref, "n1", key, 1, [Reading("n1", "p", 100, 1)])
        assert await c.submit(pack) is Outcome.FULL  # 5.03: the node keeps it and tries later
        assert metrics.gauge("reverbere_store_full").get() == 1
        await c.stop()
        assert db.execute("SELECT count(*) FROM readings").fetchone()[0] == 0
        assert db.execute("SELECT last_seq FROM nodes WHERE ref = ?", [ref]).fetchone()[0] == -1
        db.close()

    asyncio.run(go())
