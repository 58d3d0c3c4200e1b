"""Sync to a real SensorThings server (django-ogc-sensorthings) through a fault proxy.

The platform does not deduplicate (it stores every Observation it is sent), so these tests
are the proof that the gateway's outbox, read-back and cursor give exactly-once.
"""

import random
import subprocess
import sys
import textwrap

import pytest

from gateway.store.db import open_db
from gateway.sync.budget import Budget
from gateway.sync.config import SyncConfig
from gateway.sync.link import put_numbers
from gateway.sync.outbox import Summary, backlog, enqueue_events, enqueue_summaries
from gateway.sync.report import PullError, pull
from gateway.sync.sensorthings import SensorThingsTarget
from gateway.sync.service import build_worker
from gateway.sync.target import ReadBack
from gateway.sync.worker import SyncWorker
from sim.platform import FaultProxy, start_platform
from tests.sync_helpers import (
    H0,
    assert_platform_matches,
    assert_pull_matches,
    locations,
    make_tls,
    some_events,
    week_of_summaries,
)


@pytest.fixture
def tls(tmp_path):
    return make_tls(tmp_path)


def fast_worker(db, url, ca_file=None, **kw) -> SyncWorker:
    """Test timings: short timeouts and backoffs (the faults are real, the waits small)."""
    cfg = SyncConfig(url=url, ca_file=ca_file, timeout=3.0)
    opts = {"backoff_base": 0.01, "backoff_cap": 0.05, "batch_rows": 1000}
    opts.update(kw)
    return build_worker(db, cfg, locations(50), **opts)


def test_a_week_of_50_nodes_arrives_exactly_once_through_20_faults_and_more(
    tmp_path, platform, tls
):
    server_ctx, ca_file = tls
    db = open_db(tmp_path / "gw.db")
    sums = week_of_summaries(50)
    enqueue_summaries(db, sums)
    enqueue_events(db, some_events(50))
    # Every kind of fault; a stall costs a whole client timeout, so it is made rarer.
    faults = ("drop", "500", "502", "reset", "slow") * 3 + ("stall",)
    with FaultProxy(
        platform.address,
        seed=7,
        rate=0.12,
        faults=faults,
        tls=server_ctx,
        tls_rate=0.05,
        stall_limit=5,
    ) as proxy:
        worker = fast_worker(db, proxy.url + "/v1.1", ca_file)
        assert worker.sync_until_idle() == "idle"
        # Late readings correct 100 summaries; two more events; sync again through faults.
        rng = random.Random(3)
        fixed = [
            Summary(s.node, s.channel, s.hour, s.count + 1, s.min, s.max + 1, s.mean + 0.5, s.wh)
            for s in rng.sample(sums, 100)
        ]
        assert enqueue_summaries(db, fixed) == 100
        enqueue_events(db, some_events(2, seed=9))
        assert worker.sync_until_idle() == "idle"
        worker.target.close()
    # The faults really happened, some of them after the platform had stored the batch.
    assert proxy.log.count() >= 20, proxy.log.faults
    assert {f for _, f in proxy.log.faults} == {
        "drop",
        "500",
        "502",
        "reset",
        "slow",
        "stall",
        "tls",
    }
    assert worker.stats.requests_failed >= 20
    assert worker.stats.adopted > 0  # found on the platform after an uncertain outcome
    assert worker.stats.updated >= 100
    b = backlog(db)
    assert (b.pending_summaries, b.pending_events, b.inflight) == (0, 0, 0)
    got = assert_platform_matches(db, platform)
    assert got["summaries"] == len(sums) == 50 * 2 * 168


WORKER = textwrap.dedent(
    """
    import sys
    from gateway.store.db import open_db
    from gateway.sync.config import SyncConfig
    from gateway.sync.service import build_worker
    from tests.sync_helpers import locations
    db = open_db(sys.argv[1])
    cfg = SyncConfig(url=sys.argv[2], timeout=60)
    build_worker(db, cfg, locations(50), batch_rows=300).sync_until_idle()
    """
)


def test_a_gateway_killed_mid_request_loses_and_duplicates_nothing(tmp_path, platform):
    db_path = tmp_path / "gw.db"
    db = open_db(db_path)
    enqueue_summaries(db, week_of_summaries(5, hours=72))
    enqueue_events(db, some_events(5))
    creates = []

    def stall_third_batch(number, method, target):
        if "CreateObservations" in target:
            creates.append(number)
            if len(creates) == 3:
                return "stall"  # forwarded and stored, then the answer never comes
        return None

    with FaultProxy(platform.address, stall_limit=60) as proxy:
        proxy.choose = stall_third_batch
        url = proxy.url + "/v1.1"
        proc = subprocess.Popen([sys.executable, "-c", WORKER, str(db_path), url])
        try:
            assert proxy.stalled.wait(60), "the worker never sent a third batch"
        finally:
            proc.kill()  # the gateway dies between the platform's commit and its own
            proc.wait()
        proxy.choose = None
        assert backlog(db).inflight == 725 - 600  # it knew the third batch was on its way
        worker = fast_worker(db, url)
        assert worker.sync_until_idle() == "idle"
        worker.target.close()
    assert worker.stats.adopted == 125 and worker.stats.resent == 0
    got = assert_platform_matches(db, platform)
    assert got["summaries"] == 5 * 2 * 72


def test_the_byte_budget_is_never_exceeded_and_events_go_first(tmp_path, platform):
    db = open_db(tmp_path / "gw.db")
    sums = week_of_summaries(3, hours=72)
    enqueue_summaries(db, sums)
    enqueue_events(db, some_events(3))
    now = [H0 + 72 * 3600.0]
    limit = 5000
    budget = Budget(db, limit, clock=lambda: now[0])
    target = SensorThingsTarget(platform.url, db, budget, locations=locations(3))
    worker = SyncWorker(db, target, budget, clock=lambda: now[0], batch_rows=200, backoff_base=0.01)
    days = 0
    while backlog(db).pending_summaries:
        assert worker.sync_until_idle() in ("budget", "idle")
        use = budget.use()
        assert 0 < use.sent <= limit
        if days == 0:
            # Day one: every event, then the newest hours; older hours wait for backfill.
            assert backlog(db).pending_events == 0
            rows = list(
                db.query("SELECT time, synced_version FROM sync_outbox WHERE kind = 'summary'")
            )
            done = [r["time"] for r in rows if r["synced_version"]]
            left = [r["time"] for r in rows if not r["synced_version"]]
            assert done and left and min(done) >= max(left)
        now[0] += 86400  # the next day brings a new budget
        days += 1
        assert days < 20
    target.close()
    assert days >= 2
    sent = [r["sent"] for r in db.query("SELECT sent FROM sync_budget")]
    assert len(sent) == days and max(sent) <= limit
    assert_platform_matches(db, platform)


def test_unreachable_platform_backs_off_and_costs_no_budget(tmp_path, platform):
    db = open_db(tmp_path / "gw.db")
    enqueue_summaries(db, week_of_summaries(2, hours=4))
    with FaultProxy(platform.address) as proxy:
        proxy.down = True
        now = [1000.0]
        budget = Budget(db, 10_000, clock=lambda: now[0])
        target = SensorThingsTarget(proxy.url + "/v1.1", db, budget, locations=locations(2))
        assert isinstance(target, ReadBack)  # it can be read back after an uncertain outcome
        worker = SyncWorker(
            db,
            target,
            budget,
            clock=lambda: now[0],
            backoff_base=2,
            backoff_cap=60,
            rng=random.Random(1),
        )
        delays = []
        for _ in range(8):
            assert worker.step() == "failed"
            delays.append(worker.link.next_attempt - now[0])
        # Exponential with "equal jitter" (between half and all of base * 2**n), capped.
        for n, d in enumerate(delays):
            full = min(60, 2 * 2**n)
            assert full / 2 <= d <= full
        assert budget.use().sent == 0  # nothing left the gateway
        assert worker.last_error.startswith("Unreachable")
        # The link comes back: a small probe first, then growing batches.
        proxy.down = False
        assert worker.link.batch_size() == worker.link.probe_rows
        assert worker.step() == "sent"
        assert worker.link.batch_size() == 2 * worker.link.probe_rows
        target.close()


def test_bearer_and_basic_auth(tmp_path):
    with start_platform(tmp_path / "p.sqlite3", token="s3cret", basic="gw:pw") as p:
        db = open_db(tmp_path / "gw.db")
        enqueue_summaries(db, week_of_summaries(1, hours=2))
        bad = build_worker(db, SyncConfig(url=p.url, token="wrong"), locations(1))
        assert bad.step() == "auth"
        good = build_worker(db, SyncConfig(url=p.url, token="s3cret"), locations(1))
        put_numbers(db, next_attempt=0)  # the wrong token's backoff is over
        assert good.sync_until_idle() == "idle"
        enqueue_summaries(db, week_of_summaries(1, hours=3))
        basic = build_worker(db, SyncConfig(url=p.url, username="gw", password="pw"), locations(1))
        assert basic.sync_until_idle() == "idle"
        assert backlog(db).synced == 6
        assert_platform_matches(db, p)
        with pytest.raises(PullError):
            assert_pull_matches(db, p.url)  # reading needs the credentials too
        got = pull(p.url, 0, 2**31, basic=("gw", "pw"))
        assert len(got.summaries) == 6 and got.duplicates == 0


def test_demo_hooks_outage_then_pull_back_and_chart(tmp_path):
    from sim.platform.demo import pull_back, start_demo_platform

    plat = start_demo_platform(tmp_path / "demo", fault_rate=0.0)
    try:
        db = open_db(tmp_path / "gw.db")
        enqueue_summaries(db, week_of_summaries(3, hours=24))
        enqueue_events(db, some_events(3))
        worker = fast_worker(db, plat.url)
        plat.proxy.down = True  # the 4G link drops
        assert worker.step() == "failed"
        plat.proxy.down = False
        assert worker.sync_until_idle() == "idle"
        worker.target.close()
        figures = pull_back(db, plat, tmp_path / "chart.svg")
    finally:
        plat.stop()
    assert figures["summaries_synced"] == figures["summaries_on_platform"] == 3 * 2 * 24
    assert figures["duplicates_on_platform"] == 0 and figures["uplink_bytes"] > 0
    chart = (tmp_path / "chart.svg").read_text()
    assert len(chart) > 1000 and "Heure (UTC)" in chart and "Bâtiments" not in chart


def test_demo_chart_is_drawn_for_the_town_of_the_gateway(tmp_path):
    """The demo draws the chart for its gateway's town: in its [site] zone, its [detect] lamps
    drawn as lamps and the other nodes as meters."""
    from gateway import config
    from gateway.reports import Town
    from gateway.service import pipeline_config
    from sim.platform.demo import pull_back, start_demo_platform

    (tmp_path / "gateway.toml").write_text(
        '[site]\ntimezone = "Europe/Paris"\n[detect]\nlamps = ["lamp-000"]\n'
    )
    town = Town.from_detect(pipeline_config(config.load(tmp_path / "gateway.toml")).detect)
    plat = start_demo_platform(tmp_path / "demo", fault_rate=0.0)
    try:
        db = open_db(tmp_path / "gw.db")
        enqueue_summaries(db, week_of_summaries(2, hours=24))
        worker = fast_worker(db, plat.url)
        assert worker.sync_until_idle() == "idle"
        worker.target.close()
        pull_back(db, plat, tmp_path / "chart.svg", town)
    finally:
        plat.stop()
    chart = (tmp_path / "chart.svg").read_text()
    assert "Heure locale (Europe/Paris)" in chart and "Heure (UTC)" not in chart
    assert "Éclairage public" in chart and "Bâtiments" in chart  # lamp-001 is not a lamp here


def test_metrics_and_pruning(tmp_path, platform):
    from gateway.sync.outbox import prune_synced
    from gateway.sync.service import declare_metrics

    class Gauge:
        def set_function(self, fn):
            self.fn = fn

    class Registry(dict):
        def gauge(self, name, text):
            return self.setdefault(name, Gauge())

    db = open_db(tmp_path / "gw.db")
    enqueue_summaries(db, week_of_summaries(1, hours=48))
    reg = Registry()
    # ttl=0: every read is a new scrape here (a live scrape shares one status for 1 s)
    declare_metrics(reg, db, SyncConfig(url=platform.url, daily_budget=10**6), ttl=0)
    assert reg["reverbere_sync_pending_summaries"].fn() == 96
    worker = fast_worker(db, platform.url)
    assert worker.sync_until_idle() == "idle"
    worker.target.close()
    assert reg["reverbere_sync_pending_summaries"].fn() == 0
    assert 0 < reg["reverbere_sync_budget_sent_bytes"].fn() <= 10**6
    assert reg["reverbere_sync_budget_limit_bytes"].fn() == 10**6
    assert prune_synced(db, H0 + 24 * 3600) == 48  # the first day's 2 x 24 hours
    assert backlog(db).synced == 48
