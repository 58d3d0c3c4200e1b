"""Issue 13, item 17: a node that falls silent must still get its last hour summarised and
synced. An hour used to be handed to the outbox only once a later reading closed it, so a dead
node's last hour waited for ever. The gateway's own clock now closes it too (hour end plus the
node's grace for late packs), only while that clock is trusted, and a late reading still
corrects the hour afterwards. Real packs over CoAP, a real gateway and a real SensorThings
platform on loopback; the gateway's clock is injected (``tests/conftest.py``)."""

import asyncio
import threading

from gateway.service import Gateway
from gateway.store.db import open_db
from sim.sender import Sender, SimNode
from tests.gateway_helpers import add_node, make_config

TRUSTED = {"kernel": True, "timesyncd": True}


def sync_config(platform) -> str:
    return f'[sync]\nurl = "{platform.url}"\nlocation = [4.83, 45.76]\n'


def outbox_row(db, hour: int) -> tuple | None:
    return db.execute(
        "SELECT version, synced_version, parameters FROM sync_outbox"
        " WHERE kind = 'summary' AND stream = 'p' AND time = ?",
        [hour],
    ).fetchone()


async def run_silent_node(tmp_path, platform, clock) -> dict:
    gw = Gateway(make_config(tmp_path, sync_config(platform)))
    await gw.start()
    out: dict = {}
    try:
        gw._ingest.clock = clock
        watch = gw._ingest.clock_watch
        watch.system = lambda: dict(TRUSTED)
        watch._checked = float("-inf")
        hour = (int(clock.now) // 3600 - 3) * 3600  # "10:00", three hours ago
        clock.now = hour + 20 * 60 + 30  # the node sends up to 10:20, then stops
        node = SimNode("lamp-001", add_node(gw))
        readings = [("p", hour + 60 * k, 60.0 + k) for k in range(21)]
        async with Sender("127.0.0.1", gw.coap_port, ack_timeout=0.3) as s:
            for i in range(0, len(readings), 10):
                assert (await s.send(node, readings[i : i + 10], attempts=5)).acked
        await gw.committer.settled()
        db = open_db(gw.cfg.database)
        grace = gw.close_grace("lamp-001")
        assert grace == 2 * 600  # two of the default node's packs (10 readings a minute)

        # Before 11:00 + grace the hour is still open: nothing is handed over.
        clock.now = hour + 3600 + grace - 1
        await gw.close_hours()
        out["before_grace"] = outbox_row(db, hour)

        synced = threading.Event()
        worker = gw.sync.worker
        wanted = {"version": 1}

        def idle() -> None:
            row = outbox_row(worker.db, hour)
            if row is not None and row[0] == row[1] == wanted["version"]:
                synced.set()

        worker.on_idle = idle
        # The gateway's clock moves past 11:00 + grace: the silent node's hour goes.
        clock.now = hour + 3600 + grace + 1
        out["closed"] = await gw.close_hours()
        assert await asyncio.to_thread(synced.wait, 60)
        out["first"] = outbox_row(db, hour)

        # A late pack for 10:50 comes: the hour is recomputed and re-versioned, then synced.
        synced.clear()
        wanted["version"] = 2
        async with Sender("127.0.0.1", gw.coap_port, ack_timeout=0.3) as s:
            assert (await s.send(node, [("p", hour + 50 * 60, 99.0)], attempts=5)).acked
        await gw.committer.settled()
        await gw.close_hours()
        assert await asyncio.to_thread(synced.wait, 60)
        out["corrected"] = outbox_row(db, hour)
        db.close()
    finally:
        await gw.stop()
    return out


def test_a_silent_nodes_last_hour_is_closed_by_the_trusted_clock(tmp_path, platform, clock):
    out = asyncio.run(run_silent_node(tmp_path, platform, clock))
    assert out["before_grace"] is None
    assert out["closed"] >= 1
    version, synced, params = out["first"]
    assert (version, synced) == (1, 1) and '"count":21' in params
    version, synced, params = out["corrected"]
    assert (version, synced) == (2, 2) and '"count":22' in params and '"max":99' in params


async def run_untrusted(tmp_path, clock) -> tuple:
    gw = Gateway(make_config(tmp_path))
    await gw.start()
    try:
        gw._ingest.clock = clock
        watch = gw._ingest.clock_watch
        watch.system = lambda: {"kernel": False, "timesyncd": False}
        watch._checked = float("-inf")
        hour = (int(clock.now) // 3600 - 3) * 3600
        clock.now = hour + 20 * 60 + 30
        node = SimNode("lamp-001", add_node(gw))
        async with Sender("127.0.0.1", gw.coap_port, ack_timeout=0.3) as s:
            pack = [("p", hour + 60 * k, 60.0) for k in range(10)]
            assert (await s.send(node, pack, attempts=5)).acked
        await gw.committer.settled()
        clock.now = hour + 3 * 3600  # far past the hour, but by a clock nobody vouches for
        closed = await gw.close_hours()
        db = open_db(gw.cfg.database)
        row = outbox_row(db, hour)
        db.close()
    finally:
        await gw.stop()
    return closed, row


def test_an_untrusted_clock_closes_no_hour(tmp_path, clock):
    """A Pi booted days ahead or behind must not hand over hours by its own clock."""
    assert asyncio.run(run_untrusted(tmp_path, clock)) == (0, None)
