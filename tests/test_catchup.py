"""Catch-up of the stages after the store: readings committed whose stages never ran (a crash
between the commit and detect/summarise/outbox) are replayed through them when the gateway
starts, so the hourly summaries end up complete, and nothing is counted twice (real SQLite)."""

import asyncio
import itertools
import os
import random
import signal
import time

import pytest
from gateway_helpers import GatewayProcess, make_config

from gateway.ingest import registry
from gateway.pipeline.summarise import ENERGY_CHANNELS, HOUR, segment_energy
from gateway.service import Gateway, init_dir, stages
from gateway.store.commit import Outcome, commit_batch
from gateway.store.db import open_db
from gateway.store.group import Pack
from gateway.store.readings import pending_readings
from gateway.store.records import Reading
from sim.sender import Sender, SimNode

H = 1_800_000_000 // HOUR * HOUR  # an hour boundary


def expected(db) -> dict:
    """(node, channel, hour) -> (count, mean, wh) computed from every stored reading."""
    rows = db.execute(
        "SELECT n.id, r.channel, r.time, r.value FROM readings r JOIN nodes n ON n.ref = r.node"
        " ORDER BY n.id, r.channel, r.time"
    ).fetchall()
    out: dict = {}
    for (node, channel), group in itertools.groupby(rows, key=lambda r: (r[0], r[1])):
        points = [(t, v) for _, _, t, v in group]
        hours: dict[int, list[float]] = {}
        for t, v in points:
            hours.setdefault(int(t // HOUR) * HOUR, []).append(v)
        energy: dict[int, float] = {}
        if channel in ENERGY_CHANNELS:
            for a, b in itertools.pairwise(points):
                for hour, wh in segment_energy(ENERGY_CHANNELS[channel], a, b):
                    energy[hour] = energy.get(hour, 0.0) + wh
        for hour, values in hours.items():
            wh = energy.get(hour, 0.0) if channel in ENERGY_CHANNELS else None
            out[(node, channel, hour)] = (len(values), sum(values) / len(values), wh)
    return out


def summaries(db) -> dict:
    return {
        (node, ch, hour): (count, mean, wh)
        for node, ch, hour, count, mean, wh in db.execute(
            "SELECT node, channel, hour, count, mean, wh FROM summaries WHERE count > 0"
        ).fetchall()
    }


def assert_complete(db) -> None:
    got, want = summaries(db), expected(db)
    assert got.keys() == want.keys()
    for key, (count, mean, wh) in want.items():
        assert got[key][0] == count, key
        assert got[key][1] == pytest.approx(mean), key
        assert got[key][2] == (None if wh is None else pytest.approx(wh, abs=1e-5)), key


def versions(db) -> dict:
    return {
        (n, c, h): (v, sv)
        for n, c, h, v, sv in db.execute(
            "SELECT node, channel, hour, version, synced_version FROM summaries"
        ).fetchall()
    }


def commit(db, node: str, seq: int, readings: list[tuple]) -> list[Reading]:
    """One commit through the store, no stage after it: what a crash right after it leaves."""
    ref, key, _ = registry.lookup(db, node)
    pack = Pack(ref, node, key, seq, [Reading(node, *r) for r in readings])
    return commit_batch(db.conn, [pack])[1]


async def start_stop(cfg) -> int:
    gw = Gateway(cfg)
    await gw.start()
    caught_up = gw.committer.caught_up
    await gw.stop()
    return caught_up


def power(start: float, n: int, step: float = 60.0) -> list[tuple]:
    return [("p", start + step * k, 40.0 + (k * 7) % 50) for k in range(n)]


def test_start_replays_commits_whose_stages_never_ran_and_only_once(tmp_path):
    cfg = make_config(tmp_path)
    db = open_db(cfg.database)
    for node in ("a", "b"):
        registry.add_node(db, node)
    # Commit 1 went through every stage; the crash came before the next commit dropped its log.
    new = commit(db, "a", 1, power(H, 90))
    for stage in stages(cfg).after_commit:
        stage(db, new)
    # Commits 2-4 never reached the stages: a's next hours (and a late reading inside an hour
    # already summarised), b's power and energy counter.
    commit(db, "a", 2, [*power(H + 5400, 100), ("p", H + 30, 500.0)])
    commit(db, "b", 1, [*power(H, 150, 30.0), *(("e", H + 120 * k, 10.0 * k) for k in range(60))])
    commit(db, "a", 3, [("t", H + 600 * k, 20.0 + k) for k in range(20)])
    assert db.execute("SELECT count(DISTINCT seq) FROM stages_pending").fetchone()[0] == 4
    assert summaries(db) != expected(db)  # the gap: hours the stages never saw

    assert asyncio.run(start_stop(cfg)) == 90 + 101 + 150 + 60 + 20
    assert_complete(db)
    assert db.execute("SELECT count(*) FROM stages_pending").fetchone()[0] == 0
    # The outbox took every hour that is over (a later reading of its channel exists).
    for (node, ch, hour), (v, sv) in versions(db).items():
        last = db.execute(
            "SELECT max(time) FROM readings r JOIN nodes n ON n.ref = r.node"
            " WHERE n.id = ? AND r.channel = ?",
            [node, ch],
        ).fetchone()[0]
        if last >= hour + HOUR:
            assert sv == v, (node, ch, hour)
    # The detectors saw every channel up to its newest reading.
    seen = dict(
        ((n, c), t)
        for n, c, t in db.execute("SELECT node, channel, last_time FROM detect_state").fetchall()
    )
    assert seen == {
        ("a", "p"): H + 5400 + 99 * 60,
        ("a", "t"): H + 600 * 19,
        ("b", "p"): H + 149 * 30,
        ("b", "e"): H + 120 * 59,
    }
    # A second start has nothing to do: no summary changes, nothing counted twice.
    before = versions(db)
    assert asyncio.run(start_stop(cfg)) == 0
    assert versions(db) == before
    assert_complete(db)
    db.close()


def test_a_gateway_stopped_cleanly_replays_nothing(tmp_path):
    cfg = make_config(tmp_path)
    db = open_db(cfg.database)
    registry.add_node(db, "a")
    commit(db, "a", 1, power(H, 30))
    db.close()

    async def go():
        gw = Gateway(cfg)
        await gw.start()
        assert gw.committer.caught_up == 30
        ref, key, _ = registry.lookup(gw.db, "a")
        pack = Pack(ref, "a", key, 2, [Reading("a", *r) for r in power(H + 1800, 60)])
        assert await gw.committer.submit(pack) == Outcome.STORED
        await gw.stop()

    asyncio.run(go())
    db = open_db(cfg.database)
    assert db.execute("SELECT count(*) FROM stages_pending").fetchone()[0] == 0
    assert_complete(db)
    db.close()
    assert asyncio.run(start_stop(cfg)) == 0


def test_summaries_are_complete_after_kill_9_under_load(tmp_path):
    cfg_path = init_dir(tmp_path)
    db = open_db(tmp_path / "reverbere.db")
    fleet = [SimNode(f"n{i}", registry.add_node(db, f"n{i}")) for i in range(4)]
    db.close()
    rng = random.Random(7)
    start = int(time.time()) // HOUR * HOUR - 2 * 86400
    gw = GatewayProcess(cfg_path)
    port = gw.coap_port

    async def load(node: SimNode, sender: Sender, stop: asyncio.Event, acked: list):
        t = start
        while not stop.is_set():
            pack = [("p", t + 60 * k, rng.randint(0, 200)) for k in range(10)]
            if (await sender.send(node, pack)).acked:
                t += 600
                acked.append(t)

    async def go():
        nonlocal gw
        stop, acked = asyncio.Event(), []
        async with Sender("127.0.0.1", port, ack_timeout=0.05, max_retransmit=2) as sender:
            tasks = [asyncio.create_task(load(n, sender, stop, acked)) for n in fleet]
            for _ in range(3):
                target = len(acked) + rng.randint(20, 60)
                while len(acked) < target:
                    await asyncio.sleep(0.01)
                gw.kill()
                gw = await asyncio.to_thread(GatewayProcess, cfg_path, f"127.0.0.1:{port}")
            stop.set()
            await asyncio.gather(*tasks)
        gw.kill()  # the last commits may not have reached the stages either

    try:
        asyncio.run(go())
        gw = GatewayProcess(cfg_path)  # catches up before it listens
    finally:
        if gw.proc.poll() is None:
            os.kill(gw.proc.pid, signal.SIGTERM)
            gw.proc.wait(timeout=30)
    db = open_db(tmp_path / "reverbere.db")
    assert db.execute("SELECT count(*) FROM readings").fetchone()[0] >= 4 * 10 * 20
    assert_complete(db)
    db.close()


def test_readings_a_failed_stage_missed_are_caught_up_at_the_next_start(tmp_path):
    cfg = make_config(tmp_path)
    db = open_db(cfg.database)
    registry.add_node(db, "a")
    db.close()

    def broken(db, new):
        raise RuntimeError("summarise is broken today")

    async def go():
        gw = Gateway(cfg)
        gw.after_commit[1] = broken  # summarise
        await gw.start()
        ref, key, _ = registry.lookup(gw.db, "a")
        for seq, start in ((1, H), (2, H + 3000)):
            pack = Pack(ref, "a", key, seq, [Reading("a", *r) for r in power(start, 50)])
            assert await gw.committer.submit(pack) == Outcome.STORED
        await gw.stop()

    asyncio.run(go())
    db = open_db(cfg.database)
    assert summaries(db) == {}
    assert asyncio.run(start_stop(cfg)) == 100
    assert_complete(db)
    assert asyncio.run(start_stop(cfg)) == 0
    db.close()


def test_pending_readings_come_in_commit_order_and_chunks(tmp_path):
    db = open_db(tmp_path / "r.db")
    registry.add_node(db, "a")
    commit(db, "a", 1, power(H + 600, 10))
    commit(db, "a", 2, [*power(H, 5), ("t", H, 20.0)])  # older readings, committed later
    commit(db, "a", 3, power(H + 1200, 10))
    chunks = list(pending_readings(db, chunk=12))
    assert [seqs for seqs, _ in chunks] == [[1, 2], [3]]
    times = [(r.channel, r.time) for _, rs in chunks for r in rs]
    assert times == [
        *(("p", H + 600 + 60 * k) for k in range(10)),
        *(("p", H + 60 * k) for k in range(5)),
        ("t", H),
        *(("p", H + 1200 + 60 * k) for k in range(10)),
    ]
    db.close()
