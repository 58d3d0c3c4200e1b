"""The whole pipeline in one process: CoAP ingest -> store -> detect -> summarise -> outbox ->
sync, against a real SensorThings server (sim/platform) behind the fault proxy.

What must hold: every hourly summary the gateway made, and the anomaly event it raised, are on
the platform exactly once, with the gateway's figures, even though the proxy breaks requests
(some after the platform has processed them) and the link is down when the first ones go.
"""

import asyncio
import time

import pytest

from gateway import config
from gateway.ingest import registry
from gateway.service import Gateway
from gateway.store.db import open_db
from gateway.sync.service import sync_status
from sim.platform import FaultProxy, start_platform
from sim.sender import Sender, SimNode
from tests.sync_helpers import assert_platform_matches, platform_records

HOURS = 4
RESET_AT = 150  # minute at which the meter's counter falls back to zero


def test_nodes_silent_with_no_reading_at_all_reach_the_outbox(tmp_path):
    # The gateway's timer (Gateway.quiet, every minute) finds the silent nodes when nothing
    # comes, and hands the events to the outbox without waiting for a reading. The readings
    # are temperatures: a lamp's power an hour ago is lit_by_day when the test runs by day.
    from gateway_helpers import add_node, minute_readings, running_gateway

    async def go():
        async with running_gateway(tmp_path) as gw:
            node = SimNode("lamp-001", add_node(gw))
            async with Sender("127.0.0.1", gw.coap_port) as s:
                assert (await s.send(node, minute_readings(channel="t"))).acked
            assert await gw.quiet() == 0  # a reading came less than a minute ago
            assert await gw.quiet(at=time.monotonic() + 2 * 3600) == 1
            db = open_db(gw.cfg.database)
            outbox = db.execute("SELECT node, stream FROM sync_outbox WHERE kind = 'event'")
            assert outbox.fetchall() == [("lamp-001", "anomalies")]

    asyncio.run(go())


def meter_readings(start: int) -> list[tuple[str, int, float]]:
    """A building meter: power every minute, its energy counter, and a counter reset."""
    out = []
    energy = 5000.0
    for m in range(HOURS * 60):
        t = start + 60 * m
        watts = 800.0 + (m * 37) % 90  # never the same value long (not a stuck sensor)
        energy = 0.0 if m == RESET_AT else energy + watts / 60
        out += [("p", t, watts), ("e", t, round(energy, 1))]
    return out


@pytest.fixture
def platform(tmp_path):
    with start_platform(tmp_path / "platform.sqlite3") as server:
        # Breaks requests before and after they reach the platform: the gateway must
        # reconcile (read back) instead of sending twice.
        proxy = FaultProxy(
            server.address, seed=5, rate=0.3, faults=("drop", "500", "502", "reset")
        ).start()
        # However few requests the sync makes (it batches what it finds), the first two
        # POSTs once the link is up break: one after the platform took it, one before.
        first: list[int] = []

        def choose(number: int, method: str, path: str) -> str | None:
            if method == "POST" and not proxy.down and len(first) < 2:
                first.append(number)
                return ("reset", "500")[len(first) - 1]
            return None

        proxy.choose = choose
        try:
            yield server, proxy
        finally:
            proxy.stop()


def gateway_config(tmp_path, url: str) -> config.Config:
    text = f"""
[site]
latitude = 44.24
longitude = 5.07
timezone = "Etc/GMT-1"

[detect]
lamps = ["lamp-*"]

[sync]
target = "sensorthings"
url = "{url}"
timeout = 2.0
backoff_base = 0.05
backoff_cap = 0.3
"""
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return config.load(path, {"coap_host": "127.0.0.1", "coap_port": 0, "http_port": 0})


async def wait_synced(gw: Gateway, deadline: float) -> dict:
    """Until the outbox is empty and nothing awaits reconciliation (or the deadline)."""
    db = open_db(gw.cfg.database)
    try:
        while True:
            st = sync_status(db)
            idle = st["pending_summaries"] + st["pending_events"] + st["inflight"] == 0
            if (idle and st["synced"]) or time.monotonic() > deadline:
                return st
            await asyncio.sleep(0.05)
    finally:
        db.close()


async def run(tmp_path, url: str, proxy: FaultProxy) -> Gateway:
    gw = Gateway(gateway_config(tmp_path, url))
    assert gw.outbox is not None, "[sync] with a target adds the outbox stage"
    db = open_db(gw.cfg.database)
    node = SimNode("bldg-001", registry.add_node(db, "bldg-001"))
    db.close()
    proxy.down = True  # the uplink is down when the first summaries are due
    await gw.start()
    assert gw.sync is not None, "[sync] with a target starts the sync worker"
    start = (int(time.time()) // 3600 - HOURS - 2) * 3600
    readings = meter_readings(start)
    async with Sender("127.0.0.1", gw.coap_port, ack_timeout=0.2) as sender:
        for i in range(0, len(readings), 10):
            if i == len(readings) // 2:
                proxy.down = False
            result = await sender.send(node, readings[i : i + 10], attempts=5)
            assert result.acked
    # The last hour is still open (no reading after it): take it now, as before a stop.
    await gw.flush()
    st = await wait_synced(gw, time.monotonic() + 15)
    assert st["pending_summaries"] == st["pending_events"] == st["inflight"] == 0, st
    await gw.stop()
    return gw


def test_summaries_and_an_anomaly_reach_the_platform_exactly_once(tmp_path, platform):
    server, proxy = platform
    gw = asyncio.run(run(tmp_path, proxy.url + "/v1.1", proxy))
    assert proxy.log.count() > 0, "the proxy broke some requests"

    db = open_db(gw.cfg.database)
    # The gateway's own tables: 4 hours of p and e, and the counter reset.
    summaries = db.execute("SELECT count(*) FROM summaries WHERE count > 0").fetchone()[0]
    assert summaries == 2 * HOURS
    events = list(db.query("SELECT node, channel, kind FROM anomalies"))
    assert {"node": "bldg-001", "channel": "e", "kind": "counter_reset"} in events
    # Every source row is confirmed at its latest version.
    dirty = "SELECT count(*) FROM summaries WHERE version > synced_version"
    assert db.execute(dirty).fetchone()[0] == 0
    # The platform holds exactly those, each once, with the gateway's figures.
    got = assert_platform_matches(db, server)
    assert got == {"summaries": summaries, "events": len(events)}
    _, evs = platform_records(server.db_path)
    assert any(e.kind == "counter_reset" and "counter went back" in e.reason for e in evs)
    db.close()


def test_retention_forgets_outbox_rows_the_platform_confirmed(tmp_path, platform):
    # Without this the outbox would grow by every summary ever sent.
    _, proxy = platform
    cfg = asyncio.run(run(tmp_path, proxy.url + "/v1.1", proxy)).cfg
    db = open_db(cfg.database)
    outbox = "SELECT count(*) FROM sync_outbox"
    assert db.execute(outbox).fetchone()[0] > 0

    async def retention_later() -> None:
        gw = Gateway(cfg)
        await gw.start()
        try:
            await gw.retention(now=time.time() + 400 * 86400)
        finally:
            await gw.stop()

    asyncio.run(retention_later())
    assert db.execute(outbox).fetchone()[0] == 0
    db.close()


def test_retention_keeps_raw_readings_until_summarised_and_synced(tmp_path):
    # The platform is unreachable (nothing gets confirmed): however old the readings, the sync
    # guard keeps them; without [sync] the summaries are all the retention waits for.
    async def stored_after_retention(with_sync: bool) -> int:
        d = tmp_path / ("sync" if with_sync else "nosync")
        d.mkdir()
        text = '[sync]\ntarget = "sensorthings"\nurl = "http://127.0.0.1:9/v1.1"\n'
        (d / "gateway.toml").write_text(text if with_sync else "")
        ports = {"coap_host": "127.0.0.1", "coap_port": 0, "http_port": 0}
        cfg = config.load(d / "gateway.toml", ports)
        gw = Gateway(cfg)
        db = open_db(cfg.database)
        node = SimNode("bldg-001", registry.add_node(db, "bldg-001"))
        await gw.start()
        start = (int(time.time()) // 3600 - HOURS - 2) * 3600
        readings = meter_readings(start)[:200]
        async with Sender("127.0.0.1", gw.coap_port, ack_timeout=0.2) as sender:
            for i in range(0, len(readings), 10):
                assert (await sender.send(node, readings[i : i + 10], attempts=5)).acked
        await gw.committer.settled()  # the stages ran on them (they run after the acks)
        await gw.retention(now=time.time() + 400 * 86400)  # far beyond retention_days
        await gw.stop()
        left = db.execute("SELECT count(*) FROM readings").fetchone()[0]
        db.close()
        return left

    assert asyncio.run(stored_after_retention(True)) == 200
    assert asyncio.run(stored_after_retention(False)) == 0


def test_stage_sections_are_checked_with_file_and_line(tmp_path):
    from gateway.service import pipeline_config

    path = tmp_path / "gateway.toml"
    path.write_text('[site]\nlatitude = 45.0\n\n[detect]\nthreshold = "high"\n')
    with pytest.raises(config.ConfigError) as e:
        pipeline_config(config.load(path))
    assert str(e.value).startswith(f"{path}:5: detect.threshold: expected a number")
    path.write_text('[sync]\ntarget = "sensorthings"\nurl = "http://x/v1.1"\nbatch_rows = "many"\n')
    with pytest.raises(config.ConfigError) as e:
        pipeline_config(config.load(path))
    assert str(e.value).startswith(f"{path}:4: sync.batch_rows:")
    # The template `gateway init` writes is valid, and has no uplink until one is configured.
    from gateway.service import init_dir

    p = pipeline_config(config.load(init_dir(tmp_path / "init")))
    assert p.sync is None and p.detect.threshold == 0.5


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_sync_worker_that_dies_is_started_again(tmp_path, monkeypatch):
    # An error the worker's own loop does not survive (here: setting it up, e.g. a disk error
    # opening the database) ends its thread; the gateway notices, logs it, counts it and
    # starts a new worker, so the uplink does not stay silent until someone restarts it.
    import gateway.service
    import gateway.sync.service

    monkeypatch.setattr(gateway.service, "SYNC_WATCH_PERIOD", 0.05)
    real_build, calls = gateway.sync.service.build_worker, []

    def build_worker(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OSError("disk I/O error")
        return real_build(*args, **kwargs)

    monkeypatch.setattr(gateway.sync.service, "build_worker", build_worker)
    (tmp_path / "gateway.toml").write_text(
        '[sync]\ntarget = "sensorthings"\nurl = "http://127.0.0.1:9/v1.1"\n'
    )
    ports = {"coap_host": "127.0.0.1", "coap_port": 0, "http_port": 0}
    gw = Gateway(config.load(tmp_path / "gateway.toml", ports))

    async def run() -> None:
        await gw.start()
        first = gw.sync
        assert first.error is not None
        deadline = time.monotonic() + 10
        while gw.sync is first and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert gw.sync is not first and gw.sync.error is None and gw.sync.worker is not None
        assert "reverbere_sync_restarts_total 1" in gw.metrics.render()
        await gw.stop()

    asyncio.run(run())
