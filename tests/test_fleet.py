"""sim/fleet.py: virtual nodes running the real firmware, over real UDP on loopback.

The receiver is sim/receiver.py (aiocoap, COSE check, replay protection, readings keyed by
node, channel and time), on the fleet's simulated clock.
"""

import asyncio
import json

from sim.fleet import Fleet, make_keys
from sim.net import Impairments, LossyProxy
from sim.profiles import Anomaly
from sim.receiver import Receiver

DAY0 = 1700006400  # 2023-11-15 00:00 UTC


async def _run(n, duration, imp=None, seed=1, **kw):
    keys = make_keys(n, seed)
    box = {}

    def clock():
        return box["fleet"].clock.now

    rx = Receiver(keys, clock=clock)
    addr = await rx.start()
    proxy = None
    if imp is not None:
        proxy = LossyProxy(addr, imp, seed=seed, clock=clock)
        addr = await proxy.start()
    fleet = box["fleet"] = Fleet(keys, addr, DAY0, duration, seed, record=True, **kw)
    try:
        stats = await fleet.run()
    finally:
        if proxy:
            proxy.close()
        await rx.stop()
    return fleet, rx, stats, proxy


def _delivered(rx):
    return {k for k in rx.readings if k[1] != "drop"}


def test_one_day_through_ten_percent_loss_delivers_every_reading_once():
    # Each datagram, either way, has a 10 % chance of being lost; every reading a node made
    # must be stored once, none invented, none changed. (The 100-node run against the real
    # gateway is tests/test_fleet_gateway.py.)
    fleet, rx, stats, proxy = asyncio.run(_run(30, 86400, Impairments(loss=0.1)))
    sampled = fleet.sampled()
    assert stats.readings == len(sampled) > 30 * 1440  # 1-minute power and more
    assert _delivered(rx) == sampled
    assert rx.conflicts == [] and rx.rejected == 0
    assert proxy.stats.dropped > 0.08 * (proxy.stats.forwarded + proxy.stats.dropped)
    assert stats.datagrams > stats.packs  # retransmissions happened
    assert stats.pending == 0 and stats.dropped == 0


def test_outage_backfill_duplicates_reordering_and_a_rebooting_node():
    # Two hours without the gateway: nodes keep sampling, back off, then backfill. One node is
    # powered off for an hour and boots from its flash. The network also duplicates, reorders
    # and delays.
    imp = Impairments(
        loss=0.05,
        duplicate=0.05,
        reorder=0.05,
        delay=(0.0, 0.002),
        outages=[(DAY0 + 3600, DAY0 + 3 * 3600)],
    )
    silent = Anomaly("lamp-002", "*", "silent", DAY0 + 4 * 3600, DAY0 + 5 * 3600)
    fleet, rx, stats, proxy = asyncio.run(_run(10, 6 * 3600, imp, anomalies=[silent]))
    sampled = fleet.sampled()
    assert _delivered(rx) == sampled
    assert rx.conflicts == []
    assert proxy.stats.outage_dropped > 0 and proxy.stats.duplicated > 0
    assert proxy.stats.reordered > 0
    lamp2 = sorted(t for node, ch, t in sampled if node == "lamp-002" and ch == "p")
    assert not [t for t in lamp2 if DAY0 + 4 * 3600 <= t < DAY0 + 5 * 3600]  # it was off
    assert lamp2[-1] > DAY0 + 5 * 3600  # and came back
    assert fleet.members[1].node.store.boot == 1
    assert stats.failed > 0  # the outage was felt


def test_nodes_without_a_clock_send_relative_times_until_the_gateway_gives_it():
    fleet, rx, _, _ = asyncio.run(_run(5, 3600, know_time=False))
    assert _delivered(rx) == fleet.sampled()
    assert all(m.node.off is not None for m in fleet.members)  # time taken from 2.04


def test_same_seed_same_run_and_ground_truth_file(tmp_path):
    keys = make_keys(20, 3)
    a = Fleet(keys, ("127.0.0.1", 9), DAY0, 7 * 86400, seed=3, anomalies=14)
    b = Fleet(keys, ("127.0.0.1", 9), DAY0, 7 * 86400, seed=3, anomalies=14)
    assert a.anomalies == b.anomalies and len(a.anomalies) == 14
    a.write_truth(tmp_path / "truth.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert [sorted(r) for r in rows] == [["channel", "end", "kind", "node", "start"]] * 14
    kinds = {r["kind"] for r in rows}
    assert kinds >= {"lit_by_day", "out_at_night", "spike", "drift", "stuck", "silent"}
    assert "counter_reset" in kinds
    for r in rows:
        assert DAY0 <= r["start"] < r["end"] <= DAY0 + 7 * 86400
        assert r["node"] in keys
