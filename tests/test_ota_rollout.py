"""Staged rollouts (gateway/ota/rollout.py) on the simulated fleet against the real gateway.

The nodes run the real firmware (firmware/node.py, firmware/ota.py) and, after each reset, the
real boot shim (firmware/boot/fwboot.py) on a directory per node; the network between them and
the gateway loses 2 % of the datagrams and is cut for half an hour in the middle. The rollout
is judged, as the gateway judges it, only from what the nodes signed (their "fw"/"fwx"
readings); the nodes' own files are the second witness.
"""

import asyncio
import json
import random
import time

from gateway.ota import rollout, updates
from gateway.store.db import open_db
from sim.fleet import Fleet
from sim.hal import CRASH
from sim.net import Impairments, LossyProxy
from tests.gateway_helpers import add_node, running_gateway

HOUR = 3600


def release(version: int, kb: int = 24) -> list[tuple[str, bytes]]:
    """A firmware of a few files, about as compressible as .mpy files (partly random)."""
    rng = random.Random(version)
    text = b"def f%d(x):\n    return x * %d\n"
    return [
        (
            f"app/m{i}.mpy",
            b"".join(text % (j, version) for j in range(kb * 10)) + rng.randbytes(800),
        )
        for i in range(3)
    ]


async def _fleet_with_rollouts(tmp_path, n, steps, duration, outage):
    """Run ``n`` nodes for ``duration`` s; ``steps``: (sim seconds from the start, fn(db, now))
    called once each, then ``rollout.advance`` every simulated minute."""
    async with running_gateway(tmp_path, node_defaults={"pack": 10}) as gw:
        keys = {f"lamp-{i + 1:03d}": add_node(gw, f"lamp-{i + 1:03d}") for i in range(n)}
        # The simulated time runs ~2000 times faster than the gateway's 5 s re-read of the
        # offers (made here, through another connection): read them at every answer instead.
        gw._ingest.updates.refresh = 0.0
        db = open_db(gw.cfg.database)
        fleet = None
        started = []
        progress = []

        def tick(now):
            for at, fn in steps:
                if now - fleet.start >= at and (at, fn) not in started:
                    started.append((at, fn))
                    fn(db, now)
            if started:
                progress.append(rollout.advance(db, now))

        t0 = None
        proxy = LossyProxy(
            ("127.0.0.1", gw.coap_port),
            Impairments(loss=0.02, outages=[outage]),
            seed=3,
            clock=lambda: fleet.clock.now - t0 if fleet else 0.0,
        )
        addr = await proxy.start()
        fleet = Fleet(
            keys, addr, None, duration, seed=3, firmware_dir=tmp_path / "nodes", timer=(60, tick)
        )
        t0 = fleet.start
        try:
            stats = await fleet.run()
        finally:
            proxy.close()
    return db, fleet, stats, progress


def test_a_fleet_updates_over_a_lossy_network_and_broken_versions_roll_back(tmp_path):
    n = 8
    nodes = [f"lamp-{i + 1:03d}" for i in range(n)]

    def update_all(db, now):
        rollout.start(db, 1, release(1), nodes, "linux", canary=2, max_failures=0, now=now)

    def break_three(db, now):
        # v2 cannot boot: two canaries try it, roll back by themselves, the rollout stops
        # (more than 1 failure) and the third node is never offered it.
        rollout.start(db, 2, [*release(2), (CRASH, b"")], nodes[:3], "linux", 2, 1, now=now)

    db, fleet, stats, progress = asyncio.run(
        _fleet_with_rollouts(
            tmp_path,
            n,
            [(HOUR, update_all), (5 * HOUR, break_three)],
            duration=8 * HOUR,
            outage=(1.2 * HOUR, 1.7 * HOUR),  # the cut, while the canaries download
        )
    )
    phases = [p.phase for p in progress]
    # The first rollout: canaries alone first, then the rest, then done with no failure.
    assert phases.index("canary") < phases.index("rest") < phases.index("done")
    first = [p for p in progress if p.version == 1][-1]
    assert first.phase == "done" and first.counts == {"confirmed": n}, first
    # The broken one: two rolled back, the third cancelled, nobody left on it.
    last = progress[-1]
    assert (last.version, last.phase) == (2, "stopped")
    assert last.counts == {"rolled_back": 2, "cancelled": 1}
    states = {u.node: u for u in rollout.node_states(db)}
    assert {u.running for u in states.values()} == {1}  # everyone runs v1, confirmed, signed
    assert [states[x].state for x in nodes[:3]] == ["rolled_back", "rolled_back", "cancelled"]
    # Every "u" withdrawn: no 2.04 keeps asking a node to update.
    assert all(r["version"] is None for r in updates.status(db))
    # The nodes' own flash agrees: slot "b" holds v1 and is confirmed; the rolled back two
    # skipped v2 after the shim's 3 boots, and say so in /fw/ota.json.
    for x in nodes:
        root = tmp_path / "nodes" / x / "fw"
        assert (root / "current").read_text() == "b" and not (root / "trial").exists()
        st = json.loads((root / "ota.json").read_text())
        assert st["running"] == 1
        if x in nodes[:2]:
            assert st["skip"] == 2 and st["result"].startswith("rolled back"), st
    assert sum(m.hal.firmware.crashes for m in fleet.members) == 2 * 3
    assert stats.pending == 0


def test_the_gateway_fails_a_silent_canary_after_the_timeout_and_stops_the_rollout(tmp_path):
    asyncio.run(_the_gateway_fails_a_silent_canary(tmp_path))


async def _the_gateway_fails_a_silent_canary(tmp_path):
    # Nobody runs `fleet update` or `fleet status`: the gateway's own minute step
    # (Gateway.ota_step) must end the rollout by itself. The clock is injected: the offers
    # are stamped with the wall clock as `fleet update` stamps them, and the step is told
    # what time it is, just before and just after the timeout.
    async with running_gateway(tmp_path) as gw:
        nodes = ["lamp-001", "lamp-002", "lamp-003"]
        for node in nodes:
            add_node(gw, node)
        db = open_db(gw.cfg.database)  # another connection, as the CLI's
        first = rollout.start(db, 1, release(1, kb=1), nodes, "esp32", canary=1, max_failures=0)
        assert first.phase == "canary" and first.counts == {"offered": 1, "waiting": 2}
        offered = db.execute("SELECT offered FROM ota_rollout WHERE node = 'lamp-001'").fetchone()
        assert gw.ota_pending("lamp-001") == 1  # its 2.04s say "u": 1

        before = await gw.ota_step(now=offered[0] + rollout.TIMEOUT - 60)
        assert before.phase == "canary" and before.counts == first.counts

        # lamp-001 never asked for its update nor sent a signed "fw": failed; one failure is
        # more than --max-failures 0, so the rollout stops before the two others.
        after = await gw.ota_step(now=offered[0] + rollout.TIMEOUT + 60)
        assert after.phase == "stopped"
        assert after.counts == {"failed": 1, "cancelled": 2}
        assert gw.ota_pending("lamp-001") is None  # the offer is withdrawn at once
        assert all(r["version"] is None for r in updates.status(db))
        assert await gw.ota_step() is None  # nothing left open: the step does nothing


def test_the_gateway_leaves_a_simulated_rollouts_timeout_to_its_driver(tmp_path):
    asyncio.run(_the_gateway_leaves_a_simulated_rollouts_timeout(tmp_path))


async def _the_gateway_leaves_a_simulated_rollouts_timeout(tmp_path):
    # A simulator (the demo, the benchmarks) stamps its offers with its own time, here a
    # week ago: on the wall clock they look 7 days old, yet the gateway's step fails nobody;
    # the simulator's own steps judge the timeout on its clock.
    async with running_gateway(tmp_path) as gw:
        add_node(gw, "lamp-001")
        db = open_db(gw.cfg.database)
        week_ago = time.time() - 7 * 24 * HOUR
        rollout.start(db, 1, release(1, kb=1), ["lamp-001"], "esp32", 1, 0, now=week_ago)
        assert (await gw.ota_step()).counts == {"offered": 1}
        late = rollout.advance(db, week_ago + rollout.TIMEOUT + 60)  # the simulator's step
        assert (late.phase, late.counts) == ("stopped", {"failed": 1})
