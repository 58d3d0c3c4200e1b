"""Stopping the gateway while the uplink owes a big backlog: prompt, and nothing lost.

systemd gives the service ``TimeoutStopSec=30`` (gateway/systemd/reverbere.service) before it
kills it. A stop used to wait up to 30 s for the sync thread, which could be in a request to a
platform that stopped answering (``[sync] timeout``, 30 s), or sending one batch after another
of a month's backlog: the stop of the gateway took the whole of it, and systemd's SIGKILL came
first. Now the worker stops between two requests, and the stop waits ``STOP_GRACE`` seconds at
most for the one in flight; what is not confirmed stays in the outbox for the next start.
"""

import asyncio
import socket
import threading
import time

from gateway.pipeline.summarise import summarise
from gateway.service import OUTBOX_SLICE, Gateway, pipeline_config
from gateway.store.db import open_db
from gateway.store.records import Reading
from gateway.sync.outbox import backlog, enqueue_summaries
from gateway.sync.service import STOP_GRACE, build_worker
from sim.platform import FaultProxy
from tests.detect_helpers import make_db, store
from tests.gateway_helpers import make_config
from tests.sync_helpers import H0, assert_platform_matches, week_of_summaries


class SilentPlatform:
    """A TCP server on loopback that takes a request and never answers it: a platform
    behind a link that went dead mid-request (the 4G cell lost, a proxy hung)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1.1"
        self.received = threading.Event()
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            self.connections.append(conn)
            if conn.recv(65536):
                self.received.set()

    def close(self) -> None:
        """Drop every connection: the request in flight fails at last."""
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        self.listener.close()
        self._thread.join()
        for conn in self.connections:
            conn.close()


def test_a_stop_with_the_platform_silent_mid_request_is_prompt_and_loses_nothing(tmp_path):
    owed = week_of_summaries(150)  # 150 lamps x 2 channels x 168 hours: 50,400 summaries
    silent = SilentPlatform()
    cfg = make_config(tmp_path, f'[sync]\nurl = "{silent.url}"\n')  # timeout: 30 s
    db = open_db(cfg.database)
    enqueue_summaries(db, owed)
    db.close()

    async def stop_mid_request() -> tuple[float, threading.Thread]:
        gw = Gateway(cfg)
        await gw.start()
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, silent.received.wait, 60), "no request sent"
        t0 = time.monotonic()
        await gw.stop()
        return time.monotonic() - t0, gw.sync._thread

    try:
        took, sync_thread = asyncio.run(stop_mid_request())
        assert took < STOP_GRACE + 2, f"the stop took {took:.1f} s"
        assert sync_thread.is_alive()  # still in its request: left to the next start
    finally:
        silent.close()
    sync_thread.join(60)  # its request failed: it ends (as the process would have ended it)
    assert not sync_thread.is_alive()

    # The next start finds every summary still owed: confirmed ones only ever leave.
    db = open_db(cfg.database)
    b = backlog(db)
    db.close()
    assert (b.pending_summaries, b.synced) == (len(owed), 0)


def test_a_stop_mid_backlog_waits_for_one_request_and_the_next_start_finishes(tmp_path, platform):
    # A reachable platform and a backlog of many batches: the stop does not send them all
    # first; the batch in flight is confirmed or reconciled, none is lost or duplicated.
    owed = week_of_summaries(20, hours=72)  # 2,880 summaries, 10 batches of 300
    with FaultProxy(platform.address) as proxy:
        sync = f'url = "{proxy.url}/v1.1"\nbatch_rows = 300\nlocation = [4.83, 45.76]\n'
        cfg = make_config(tmp_path, "[sync]\n" + sync)
        db = open_db(cfg.database)
        enqueue_summaries(db, owed)
        db.close()

        third_batch = threading.Event()
        creates = []

        def count_batches(number, method, target):
            if "CreateObservations" in target:
                creates.append(number)
                if len(creates) == 3:
                    third_batch.set()  # on its way to the platform as the stop begins
            return None

        proxy.choose = count_batches

        async def stop_on_third_batch() -> float:
            gw = Gateway(cfg)
            await gw.start()
            loop = asyncio.get_running_loop()
            assert await loop.run_in_executor(None, third_batch.wait, 60), "no third batch"
            t0 = time.monotonic()
            await gw.stop()
            assert not gw.sync._thread.is_alive()
            return time.monotonic() - t0

        took = asyncio.run(stop_on_third_batch())
        db = open_db(cfg.database)
        first = backlog(db)
        assert 0 < first.synced < len(owed), first  # stopped part-way, not after it all
        assert took < STOP_GRACE, f"the stop took {took:.1f} s"

        # The next start sends the rest (its worker, as the gateway runs it), reconciling
        # what was in flight: the platform holds each summary once.
        worker = build_worker(db, pipeline_config(cfg).sync, backoff_base=0.01)
        try:
            assert worker.sync_until_idle() == "idle"
        finally:
            worker.target.close()
    assert backlog(db).synced == len(owed)
    assert assert_platform_matches(db, platform)["summaries"] == len(owed)
    db.close()


def test_a_flush_before_a_stop_takes_the_backlog_a_slice_per_turn_of_the_writer(tmp_path):
    # Gateway.flush (the hours still open go too, e.g. before a planned stop) took a backlog
    # of any size in one turn of the writer: with 1.5 M summaries owed, every ack behind it
    # waited for the whole of it. Now a slice of OUTBOX_SLICE at a time, as close_hours.
    cfg = make_config(tmp_path)
    db = make_db(cfg.database)
    hours = 2 * OUTBOX_SLICE + 500
    readings = [Reading("bldg-001", "p", H0 + 3600 * h + 60, 100.0 + h % 7) for h in range(hours)]
    db.execute("BEGIN")  # one transaction (store commits it), not one fsync a reading
    store(db, readings)
    summarise(db, readings)
    db.close()

    async def flush() -> tuple[int, list[int]]:
        gw = Gateway(cfg)
        await gw.start()
        slices, take = [], gw.outbox.flush
        gw.outbox.flush = lambda db: slices.append(take(db)) or slices[-1]
        try:
            return await gw.flush(), slices
        finally:
            await gw.stop()

    total, slices = asyncio.run(flush())
    assert total == hours and slices == [OUTBOX_SLICE, OUTBOX_SLICE, 500]
    db = open_db(cfg.database)
    assert backlog(db).pending_summaries == hours
    db.close()
