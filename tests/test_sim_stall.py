"""A stall of the machine is not a silent node: the fleet at 2,000 times real time against the
real gateway, stalled for a second twice, a gateway slow to answer, and one node that really
goes silent.

The demo once counted a false ``silent`` event, and a stall was suspected: at 2,000x a second
of wall time is most of a simulated hour. The gateway judges silence on the readings' own
clock (``Detector``: the newest reading's time, not the wall clock), so a stall of either side
moves no node's silence on:

- the whole process blocked (the demo's fleet and gateway share one event loop; a loaded
  machine deschedules it): no simulated time passes, nothing looks silent;
- the store's writer process stopped (SIGSTOP/SIGCONT): no pack is acknowledged for a second
  while the fleet's clock runs on (its nodes take the missing answers for losses, back off and
  keep their readings), then the queued packs commit with their own times.

A loaded machine does worse than stall once: the gateway answers in tens of milliseconds for
minutes on end. The fleet took what had not come within ``quiet`` (5 ms) for lost and moved its
clock on, so its nodes timed out, backed off, and delivered their readings half an hour after
the others': the silent check rightly saw half an hour without a reading from them (events that
closed at once, when the backlog came). The fleet now waits at least three times the gateway's
recent answer time (sim/fleet.py, ``SLOW_FACTOR``).

Another false event was something else, which the silent check also saw rightly: a lamp that
delivered nothing for 17.6 simulated hours, its buffer overflowing (3,166 readings dropped),
ten hours after the firmware update's reset. The gateway keeps each CoAP response
``dedup_lifetime_s`` (60 s of wall time) to answer retransmissions (RFC 7252 section 4.5), keyed
by the source and the message ID; a node picks a random first message ID at each boot. In the
field a minute is a minute, but at 2,000x it is 33 simulated hours: a node whose new IDs ran
into the ones it used before its reset got the stale answers (another exchange's token,
ignored), failed pack after pack and backed off until its IDs left that range. The demo's
gateway.toml keeps responses for 1 s (half an hour of the fleet's time, still 40 times the 45 s
a node retransmits for); a real gateway keeps its 60 s.
"""

import asyncio
import os
import signal
import time

import sim.fleet
from sim.fleet import Fleet
from sim.net import Impairments, LossyProxy
from sim.profiles import Anomaly
from tests.gateway_helpers import add_node, running_gateway

H = 3600


async def _run(tmp_path):
    async with running_gateway(tmp_path, node_defaults={"pack": 10}) as gw:
        keys = {f"lamp-{i:03d}": add_node(gw, f"lamp-{i:03d}") for i in range(1, 6)}
        start = (int(time.time()) - 9 * H) // H * H
        off = Anomaly("lamp-005", "*", "silent", start + 5 * H, start + 7 * H)
        addr = ("127.0.0.1", gw.coap_port)
        fleet = Fleet(keys, addr, start, 8 * H, seed=2, anomalies=[off], speed=2000)
        advanced = {}

        async def at(hours: float) -> float:
            while fleet.clock.now < start + hours * H:
                await asyncio.sleep(0.005)
            return fleet.clock.now

        async def stalls():
            t0 = await at(2)
            time.sleep(1.0)  # the whole process: the fleet and the gateway's event loop
            advanced["process"] = fleet.clock.now - t0
            writer = gw.committer.group.writer.proc.pid
            t0 = await at(3)
            os.kill(writer, signal.SIGSTOP)
            try:
                await asyncio.sleep(1.0)
            finally:
                os.kill(writer, signal.SIGCONT)
            advanced["writer"] = fleet.clock.now - t0

        task = asyncio.create_task(stalls())
        stats = await fleet.run()
        await task
        await gw.flush()
        silent = list(
            gw.db.query("SELECT node, start, end, reason FROM anomalies WHERE kind = 'silent'")
        )
    return start, stats, advanced, silent


async def _reset_into_old_message_ids(tmp_path, dedup_lifetime: float):
    """Three lamps at the demo's pace; at hour 2 lamp-001 resets (as after an update) and its
    new random first message ID falls 30 below the last one it used before."""
    async with running_gateway(
        tmp_path, node_defaults={"pack": 10}, dedup_lifetime=dedup_lifetime
    ) as gw:
        keys = {n: add_node(gw, n) for n in ("lamp-001", "lamp-002", "lamp-003")}
        start = (int(time.time()) - 9 * H) // H * H
        fleet = None

        def reset(now: float) -> None:
            m = fleet.members[0]
            if now >= start + 2 * H and m.before == {}:
                old = m.node.link.mid
                m.reboot()
                m.node.link.mid = (old - 30) & 0xFFFF

        addr = ("127.0.0.1", gw.coap_port)
        fleet = Fleet(keys, addr, start, 6 * H, seed=2, speed=2000, timer=(60, reset))
        stats = await fleet.run()
        await gw.flush()
        silent = [
            r["node"] for r in gw.db.query("SELECT node FROM anomalies WHERE kind = 'silent'")
        ]
    return stats, silent


def test_a_reset_node_whose_new_message_ids_were_cached_minutes_ago_looks_silent(tmp_path):
    # Kept 60 s of wall time, the old answers are still there for the next 30 packs of the
    # reset node, sent within a few seconds of wall time at this pace: each one fails, and
    # the node backs off for longer than the silent rule's 30 minutes.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    stats, silent = asyncio.run(_reset_into_old_message_ids(tmp_path / "a", 60))
    assert stats.speedup > 1000
    assert stats.failed >= 10 and silent == ["lamp-001"], (stats, silent)
    # Kept 1 s (the demo's gateway.toml): only the answers of the last half hour of the
    # fleet's time are there, and the node is heard again in time.
    again, silent = asyncio.run(_reset_into_old_message_ids(tmp_path / "b", 1))
    assert silent == [], (again, silent)


def test_a_second_of_stall_at_2000x_opens_no_silent_event_and_a_silent_node_is_found(tmp_path):
    start, stats, advanced, silent = asyncio.run(_run(tmp_path))
    assert stats.speedup > 1000  # the pace of the demo
    # The stalls were real: with the writer stopped, the fleet's clock ran on without an
    # answer (a blocked process stops it too).
    assert advanced["writer"] >= 60, advanced
    assert stats.failed > 0 and stats.pending == 0 and stats.dropped == 0
    # Only the node that was really off is silent, from 30 minutes after its last reading.
    assert [e["node"] for e in silent] == ["lamp-005"], silent
    assert start + 5 * H + 1800 - 120 <= silent[0]["start"] <= start + 5 * H + 1800 + 60
    assert silent[0]["end"] is not None  # and it spoke again when it came back


async def _slow_gateway(tmp_path):
    """Five lamps for four hours at full speed, each answer 20 to 40 ms late (a proxy's delay
    both ways: what a gateway on a loaded machine does)."""
    async with running_gateway(tmp_path, node_defaults={"pack": 10}) as gw:
        keys = {f"lamp-{i:03d}": add_node(gw, f"lamp-{i:03d}") for i in range(1, 6)}
        start = (int(time.time()) - 9 * H) // H * H
        fleet = None
        proxy = LossyProxy(
            ("127.0.0.1", gw.coap_port),
            Impairments(delay=(0.02, 0.04)),
            seed=2,
            clock=lambda: fleet.clock.now,
        )
        addr = await proxy.start()
        fleet = Fleet(keys, addr, start, 4 * H, seed=2)
        try:
            stats = await fleet.run()
        finally:
            proxy.close()
        await gw.flush()
        query = "SELECT node FROM anomalies WHERE kind = 'silent'"
        silent = [r["node"] for r in gw.db.query(query)]
    return stats, silent


def test_a_gateway_slow_to_answer_is_waited_for_not_taken_for_a_lossy_one(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    waited, silent = asyncio.run(_slow_gateway(tmp_path / "a"))
    # A few exchanges of the first instants fail, before the fleet has measured the delay.
    assert waited.failed < 10 and waited.pending == 0 and silent == [], (waited, silent)
    assert waited.speedup > 500  # slower than at rest (2,000x), as the machine is
    # Before: answers later than 5 ms were losses; nodes backed off and looked silent.
    monkeypatch.setattr(sim.fleet, "SLOW_FACTOR", 0.0)
    lost, silent = asyncio.run(_slow_gateway(tmp_path / "b"))
    # (Nodes still holding readings at the end of the drain, or called silent, or both.)
    assert lost.failed > 3 * max(waited.failed, 5), (lost, silent)
    assert lost.pending > 0 or silent, (lost, silent)
