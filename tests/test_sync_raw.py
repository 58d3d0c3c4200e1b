"""Raw readings to the platform (``[sync] raw``): off by default, every stored reading once
when on (late readings of a node that was offline included), last under the byte budget,
kept by the retention until the platform has them.

The platform is the real SensorThings server (sim/platform), the database a real SQLite file
written by the real committer (``store.commit_batch`` with the raw log in its transaction),
and in the end-to-end cases a real gateway on UDP.
"""

import asyncio
import json
import sqlite3
import threading
import time
from collections import Counter

import pytest

from gateway import config
from gateway.ingest import registry
from gateway.service import Gateway, pipeline_config
from gateway.store.db import open_db
from gateway.sync.budget import Budget
from gateway.sync.config import SyncConfig
from gateway.sync.outbox import backlog, enqueue_events, enqueue_summaries
from gateway.sync.raw import raw_backlog
from gateway.sync.sensorthings import SensorThingsTarget
from gateway.sync.service import build_worker, sync_status
from gateway.sync.worker import SyncWorker
from sim.platform import FaultProxy
from sim.sender import Sender, SimNode
from tests.sync_helpers import (
    H0,
    RawStore,
    locations,
    minutes,
    raw_in_gateway,
    raw_on_platform,
    some_events,
    week_of_summaries,
)


def worker_for(db, url: str, **kw) -> SyncWorker:
    opts = {"backoff_base": 0.01, "backoff_cap": 0.05}
    opts.update(kw)
    cfg = SyncConfig(url=url, raw=True, raw_interval=0, timeout=3.0)
    return build_worker(db, cfg, locations(3), **opts)


def test_every_reading_once_with_late_ones_straddling_what_was_sent(tmp_path, platform):
    db = open_db(tmp_path / "gw.db")
    st = RawStore(db)
    st.put("lamp-000", minutes("p", H0, 120) + minutes("t", H0, 120, base=10))
    st.put("lamp-001", minutes("p", H0, 60))
    worker = worker_for(db, platform.url, batch_rows=100)
    assert worker.sync_until_idle() == "idle"
    assert raw_backlog(db).pending == 0
    # The cursor has moved past these times; a node that was offline now sends readings
    # from before them, interleaved with the ones already sent (30 s offsets), and new ones.
    st.put("lamp-000", minutes("p", H0 + 30.25, 40))  # times to the millisecond
    st.put("lamp-001", minutes("p", H0 + 60 * 60, 30) + minutes("p", H0 - 600, 5))
    assert raw_backlog(db).pending == 40 + 30 + 5
    # One more commit lands while a batch is on its way (inside a span being sent).
    st.put("lamp-001", minutes("p", H0 + 15, 3, step=120))
    assert worker.sync_until_idle() == "idle"
    worker.target.close()
    got = raw_on_platform(platform.db_path)
    assert max(got.values()) == 1, "a raw reading twice on the platform"
    assert got == raw_in_gateway(db)
    assert sum(got.values()) == 240 + 60 + 40 + 35 + 3
    assert db.execute("SELECT count(*) FROM sync_raw").fetchone()[0] == 0
    assert worker.stats.raw_sent == sum(got.values())


def test_the_log_costs_a_row_per_channel_not_per_reading(tmp_path):
    db = open_db(tmp_path / "gw.db")
    st = RawStore(db, channels=("p",))
    for k in range(50):  # 50 commits of 10 readings of p and e each
        st.put("lamp-000", minutes("p", H0 + 600 * k, 10) + minutes("e", H0 + 600 * k, 10))
    rows = list(db.query("SELECT first, last, n FROM sync_raw"))
    assert rows == [{"first": H0, "last": H0 + 600 * 49 + 540, "n": 500}]  # only p, one span
    # A late commit whose new readings straddle stored ones becomes tight spans of its own.
    st.put("lamp-000", [("p", H0 + 30, 1.0), ("p", H0 + 90, 2.0), ("p", H0 + 150, 3.0)])
    spans = db.execute("SELECT first, last, n FROM sync_raw ORDER BY id").fetchall()
    assert spans[1:] == [(H0 + 30, H0 + 30, 1), (H0 + 90, H0 + 90, 1), (H0 + 150, H0 + 150, 1)]
    assert raw_backlog(db).pending == 503


def test_uncertain_outcomes_are_read_back_not_sent_twice(tmp_path, platform):
    db = open_db(tmp_path / "gw.db")
    st = RawStore(db)
    for k in range(6):
        st.put("lamp-000", minutes("p", H0 + 3600 * k, 60))
        st.put("lamp-001", minutes("e", H0 + 3600 * k, 60, base=1000))
    creates = []

    def faults(number, method, target):
        # Every kind on CreateObservations, in turn; two of them after the platform stored it.
        if "CreateObservations" in target:
            creates.append(number)
            return {1: "502", 2: "drop", 4: "reset", 5: "500", 7: "502"}.get(len(creates))
        return None

    with FaultProxy(platform.address) as proxy:
        proxy.choose = faults
        worker = worker_for(db, proxy.url + "/v1.1", batch_rows=150)
        assert worker.sync_until_idle() == "idle"
        worker.target.close()
    assert {f for _, f in proxy.log.faults} == {"502", "drop", "reset", "500"}
    assert worker.stats.raw_adopted >= 2 * 150  # stored by the platform, answer lost: adopted
    got = raw_on_platform(platform.db_path)
    assert max(got.values()) == 1
    assert got == raw_in_gateway(db) and sum(got.values()) == 720


def test_under_the_budget_raw_readings_go_last_and_never_over_it(tmp_path, platform):
    db = open_db(tmp_path / "gw.db")
    st = RawStore(db)
    for k in range(24):
        st.put("lamp-000", minutes("p", H0 + 3600 * k, 60))
    enqueue_summaries(db, week_of_summaries(2, hours=24))
    enqueue_events(db, some_events(2))
    now = [H0 + 30 * 86400.0]
    limit = 3_000
    budget = Budget(db, limit, clock=lambda: now[0])
    target = SensorThingsTarget(platform.url, db, budget, locations=locations(2))
    worker = SyncWorker(
        db, target, budget, clock=lambda: now[0], batch_rows=500, backoff_base=0.01, raw=True
    )
    days, raw_days = 0, 0
    while raw_backlog(db).pending or backlog(db).pending_summaries:
        sent_raw = worker.stats.raw_sent
        assert worker.sync_until_idle() in ("budget", "idle")
        assert 0 < budget.use().sent <= limit
        if worker.stats.raw_sent > sent_raw:  # raw went out today: the outbox was empty first
            raw_days += 1
            b = backlog(db)
            assert b.pending_events == b.pending_summaries == 0
        elif days == 0:
            assert raw_backlog(db).pending == 24 * 60  # not one raw reading on day one
        now[0] += 86400
        days += 1
        assert days < 30
    target.close()
    assert days >= 3 and raw_days >= 2
    assert max(r[0] for r in db.execute("SELECT sent FROM sync_budget")) <= limit
    got = raw_on_platform(platform.db_path)
    assert got == raw_in_gateway(db) and max(got.values()) == 1


def test_bad_raw_values_name_file_line_and_key(tmp_path):
    path = tmp_path / "gateway.toml"
    for value, words in (
        ('"yes"', "expected true, false or a list of channels"),
        ('["p", "watts"]', "unknown channel 'watts'"),
    ):
        path.write_text(f'[sync]\nurl = "http://x/v1.1"\n\nraw = {value}\n')
        with pytest.raises(config.ConfigError) as e:
            pipeline_config(config.load(path))
        assert str(e.value).startswith(f"{path}:4: sync.raw: {words}")
    path.write_text('[sync]\nurl = "http://x/v1.1"\nraw = ["p"]\nraw_interval = -1\n')
    with pytest.raises(config.ConfigError, match=r":4: sync\.raw_interval: must not be negative"):
        pipeline_config(config.load(path))
    # The template `gateway init` writes documents the key, off.
    from gateway.service import init_dir

    template = init_dir(tmp_path / "init")
    assert "\nraw = false " in template.read_text()
    assert pipeline_config(config.load(template)).sync is None  # no uplink until configured


# -- the real gateway on UDP -------------------------------------------------------------------


def gateway_config(tmp_path, url: str, raw: str | None) -> config.Config:
    text = f'[sync]\nurl = "{url}"\nlocation = [4.83, 45.76]\n'
    if raw is not None:
        text += f"raw = {raw}\nraw_interval = 0\n"
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return config.load(path, {"coap_host": "127.0.0.1", "coap_port": 0, "http_port": 0})


async def send_all(gw: Gateway, node: SimNode, readings: list[tuple]) -> None:
    async with Sender("127.0.0.1", gw.coap_port, ack_timeout=0.2) as sender:
        for i in range(0, len(readings), 10):
            assert (await sender.send(node, readings[i : i + 10], attempts=5)).acked


async def in_worker(gw: Gateway, change) -> None:
    """``change(worker)`` in the worker's thread, between two of its cycles: every later
    cycle sees it (a change from here could land in the middle of one)."""
    done = threading.Event()
    worker = gw.sync.worker

    def between() -> None:
        change(worker)
        done.set()

    worker.on_idle = between
    gw.sync.notify()
    try:
        assert await asyncio.to_thread(done.wait, 20)
    finally:
        worker.on_idle = None


async def drained(gw: Gateway, raw: bool = True, timeout: float = 20) -> None:
    """Until the sync worker has nothing left to send, raw readings included when ``raw``
    (woken by its on_idle, not a timer)."""
    done = threading.Event()
    worker = gw.sync.worker

    def idle() -> None:  # in the worker's thread: its own connection
        owed, b = raw_backlog(worker.db), backlog(worker.db)
        left = b.pending_summaries + b.pending_events + b.inflight
        if raw:
            left += owed.pending + owed.inflight
        if left == 0:
            done.set()

    worker.on_idle = idle
    gw.sync.notify()
    try:
        if not await asyncio.to_thread(done.wait, timeout):
            db = open_db(gw.cfg.database)
            raise AssertionError(sync_status(db))
    finally:
        worker.on_idle = None


def test_gateway_raw_on_sends_every_stored_reading_once_and_retention_waits(tmp_path, platform):
    cfg = gateway_config(tmp_path, platform.url, "true")
    start = int(time.time()) // 3600 * 3600 - 6 * 3600
    late = start + 3600 + 90 * 60 + 30  # between the last 30 readings of p already sent

    async def run() -> tuple[int, str]:
        gw = Gateway(cfg)
        db = open_db(cfg.database)
        node = SimNode("lamp-000", registry.add_node(db, "lamp-000"))
        await gw.start()
        try:
            await send_all(gw, node, minutes("p", start + 3600, 120) + minutes("t", start, 60))
            await gw.flush()
            await drained(gw)
            assert sum(raw_on_platform(platform.db_path).values()) == 180
            # A node that was offline sends readings older than what was sent, in between
            # them. The raw batch is not due yet (raw_interval): the summaries go, raw waits.
            await in_worker(gw, lambda w: setattr(w.raw_sender, "interval", 3600))
            await send_all(gw, node, minutes("p", late, 30))
            await gw.flush()
            await drained(gw, raw=False)
            assert raw_backlog(db).pending == 30, (sync_status(db), gw.sync.worker.stats)
            text = gw.metrics.render()
            # The retention: everything older than the oldest reading owed may go, not those.
            await gw.retention(now=time.time() + 400 * 86400)
            left = db.execute("SELECT count(*) FROM readings").fetchone()[0]
            assert left == 29 + 30  # p from start + 1 h + 91 min, and the late ones
            await in_worker(gw, lambda w: setattr(w.raw_sender, "interval", 0))
            await drained(gw)
        finally:
            await gw.stop()
        on_platform = raw_on_platform(platform.db_path)
        assert max(on_platform.values()) == 1
        assert sum(on_platform.values()) == 180 + 30
        assert raw_in_gateway(db) <= on_platform  # what is left here is there, once
        # Now they are on the platform, the retention lets them go too.
        gw = Gateway(cfg)
        await gw.start()
        try:
            await gw.retention(now=time.time() + 400 * 86400)
        finally:
            await gw.stop()
        left = db.execute("SELECT count(*) FROM readings").fetchone()[0]
        db.close()
        return left, text

    left, metrics = asyncio.run(run())
    assert "reverbere_sync_pending_raw 30" in metrics
    assert left == 0


def test_gateway_raw_off_by_default_sends_none(tmp_path, platform):
    cfg = gateway_config(tmp_path, platform.url, None)
    start = int(time.time()) // 3600 * 3600 - 3 * 3600

    async def run() -> str:
        gw = Gateway(cfg)
        db = open_db(cfg.database)
        node = SimNode("lamp-000", registry.add_node(db, "lamp-000"))
        await gw.start()
        try:
            assert gw.raw_log is None and not gw.committer.in_commit
            await send_all(gw, node, minutes("p", start, 150))
            await gw.flush()
            done = threading.Event()
            worker = gw.sync.worker
            worker.on_idle = lambda: backlog(worker.db).synced and done.set()
            gw.sync.notify()
            assert await asyncio.to_thread(done.wait, 20)
            text = gw.metrics.render()
        finally:
            await gw.stop()
        assert db.execute("SELECT count(*) FROM sync_raw").fetchone()[0] == 0
        db.close()
        return text

    metrics = asyncio.run(run())
    assert "reverbere_sync_pending_raw" not in metrics
    assert raw_on_platform(platform.db_path) == Counter()
    with sqlite3.connect(platform.db_path) as conn:
        sql = "SELECT name FROM sensorthings_v1_1_django_backend_datastream"
        names = [r[0] for r in conn.execute(sql)]
    assert names and not [n for n in names if n.endswith(".raw")]  # summaries went, no raw


def test_sync_status_and_push_show_the_raw_backlog(tmp_path, platform):
    from click.testing import CliRunner

    from gateway.cli.main import cli

    db = open_db(tmp_path / "gw.db")
    st = RawStore(db, channels=("p",))
    st.put("lamp-000", minutes("p", H0, 45) + minutes("e", H0, 45))
    path = tmp_path / "gateway.toml"
    path.write_text(
        f'[gateway]\ndatabase = "gw.db"\n[sync]\nurl = "{platform.url}"\n'
        'location = [4.83, 45.76]\nraw = ["p"]\n'
    )
    run = CliRunner().invoke
    out = run(cli, ["sync", "status", "--config", str(path)])
    assert out.exit_code == 0, out.output
    # (no [site] timezone in this config: the town's zone is UTC, and the first line says so)
    assert out.output.startswith("times:         UTC\n")
    assert "raw backlog:   45 readings owed (p, oldest 2026-01-01 00:00:00+00:00;" in out.output
    got = json.loads(run(cli, ["sync", "status", "--config", str(path), "--json"]).output)
    assert (got["raw"], got["pending_raw"], got["raw_oldest_pending"]) == (["p"], 45, H0)
    out = run(cli, ["sync", "push", "--config", str(path)])
    assert (
        out.exit_code == 0 and "idle: 0 created" in out.output and "45 raw readings" in out.output
    )
    got = json.loads(run(cli, ["sync", "status", "--config", str(path), "--json"]).output)
    assert got["pending_raw"] == 0
    assert sum(raw_on_platform(platform.db_path).values()) == 45
