"""The real summarise stage through the outbox stage (gateway.pipeline.handoff) to the platform, and
the gateway service's wiring of sync (gateway/service.py)."""

import threading

import pytest

from gateway.pipeline.handoff import feed_outbox
from gateway.pipeline.summarise import summarise
from gateway.store.db import open_db
from gateway.store.records import Reading
from gateway.sync.config import SyncConfig
from gateway.sync.outbox import backlog
from gateway.sync.service import build_worker
from tests.sync_helpers import H0, assert_platform_matches, locations


def readings(nodes: int, hours: int) -> list[Reading]:
    out = []
    for n in range(nodes):
        for m in range(hours * 60 + 1):
            t = H0 + 60 * m
            out.append(Reading(f"lamp-{n:03d}", "p", t, 60.0 + (m % 7)))
            out.append(Reading(f"lamp-{n:03d}", "e", t, 1000.0 + m))
    return out


def test_summaries_and_anomalies_flow_through_the_outbox(tmp_path, platform):
    db = open_db(tmp_path / "gw.db")
    summarise(db, readings(2, 3))
    db["anomalies"].insert(
        {
            "node": "lamp-001",
            "channel": "p",
            "kind": "lit_by_day",
            "start": H0 + 600,
            "end": None,
            "score": 0.9,
            "reason": "lamp on at noon",
        }
    )
    dirty = db.execute("SELECT count(*) FROM summaries WHERE version > synced_version")
    n_summaries = dirty.fetchone()[0]
    assert feed_outbox(db) == n_summaries + 1
    assert feed_outbox(db) == 0  # taken once per version
    worker = build_worker(db, SyncConfig(url=platform.url), locations(2))
    assert worker.sync_until_idle() == "idle"
    # The platform's confirmation reached the source tables.
    assert (
        db.execute("SELECT count(*) FROM summaries WHERE version > synced_version").fetchone()[0]
        == 0
    )
    assert db.execute("SELECT synced_version FROM anomalies").fetchone()[0] == 1
    # A late reading corrects an hour (summarise bumps its version); the event closes.
    db.execute(
        "UPDATE summaries SET mean = mean + 1, version = version + 1 "
        "WHERE node = 'lamp-000' AND channel = 'p' AND hour = ?",
        [H0],
    )
    db.execute("UPDATE anomalies SET end = ?, version = version + 1", [H0 + 3000])
    assert feed_outbox(db) == 2
    assert worker.sync_until_idle() == "idle"
    worker.target.close()
    assert worker.stats.updated == 2  # the same Observations, updated
    assert backlog(db).pending_summaries == 0
    assert (
        db.execute("SELECT count(*) FROM summaries WHERE version > synced_version").fetchone()[0]
        == 0
    )
    got = assert_platform_matches(db, platform)
    assert got == {"summaries": n_summaries, "events": 1}


def test_the_gateway_service_wires_sync(tmp_path, platform):
    """``[sync]`` with a target: ``Gateway`` adds the outbox stage, starts the worker on
    ``start()`` (nudged by the stage), declares the gauges, and checks the section."""
    import asyncio

    from gateway.config import ConfigError, loads
    from gateway.service import Gateway, Outbox

    text = f"""
[gateway]
database = "gw.db"
[coap]
host = "127.0.0.1"
port = 0
[http]
host = "127.0.0.1"
port = 0
[sync]
url = "{platform.url}"
daily_budget = "1 MB"
location = [4.83, 45.76]
"""
    cfg = loads(text, tmp_path / "gateway.toml")

    async def run() -> dict:
        gw = Gateway(cfg)
        assert isinstance(gw.after_commit[-1], Outbox) and gw.after_commit[-1] is gw.outbox
        await gw.start()
        try:
            db = open_db(cfg.database)
            summarise(db, readings(1, 2))
            done = threading.Event()
            worker = gw.sync.worker
            worker.on_idle = lambda: worker.stats.created and done.set()
            gw.outbox(db, [])  # what the committer does after a commit
            assert await asyncio.to_thread(done.wait, 30)
            text = gw.metrics.render()
        finally:
            await gw.stop()
        return {"metrics": text}

    out = asyncio.run(run())
    assert "reverbere_sync_pending_summaries 0" in out["metrics"]
    assert "reverbere_sync_budget_limit_bytes 1000000" in out["metrics"]
    db = open_db(cfg.database)
    assert backlog(db).synced == db.execute("SELECT count(*) FROM summaries").fetchone()[0] > 0
    bad = loads(
        text.replace('daily_budget = "1 MB"', 'daily_budget = "lots"'), tmp_path / "gateway.toml"
    )
    with pytest.raises(ConfigError, match=r"sync\.daily_budget"):
        Gateway(bad)
