"""The fleet against the real gateway (gateway/service.py), through a lossy proxy.

The same acceptance as tests/test_fleet.py, with the gateway's SQLite store as the judge:
every reading the simulated nodes made is in the readings table once.
"""

import asyncio

from gateway.store.db import open_db
from sim.fleet import Fleet
from sim.net import Impairments, LossyProxy
from tests.gateway_helpers import add_node, running_gateway


async def _run(tmp_path, n, duration, loss):
    # The gateway sends only the pack size: the nodes keep their profiles' intervals (power
    # every minute, energy and light every five), a day of ordinary traffic.
    async with running_gateway(tmp_path, node_defaults={"pack": 10}) as gw:
        ids = [f"lamp-{i + 1:03d}" for i in range(n - n // 5)]
        ids += [f"bldg-{i + 1:03d}" for i in range(n // 5)]
        keys = {node: add_node(gw, node) for node in ids}
        fleet = None
        proxy = LossyProxy(
            ("127.0.0.1", gw.coap_port),
            Impairments(loss=loss),
            seed=2,
            clock=lambda: fleet.clock.now,
        )
        addr = await proxy.start()
        fleet = Fleet(keys, addr, None, duration, seed=2, record=True)
        try:
            stats = await fleet.run()
        finally:
            proxy.close()
    return gw.cfg, fleet, stats


def test_hundred_nodes_one_day_ten_percent_loss_into_the_gateway(tmp_path):
    cfg, fleet, stats = asyncio.run(_run(tmp_path, 100, 86400, 0.1))
    db = open_db(cfg.database)
    try:
        rows = db.execute(
            "SELECT n.id, r.channel, r.time FROM readings r JOIN nodes n ON n.ref = r.node"
            " WHERE r.channel != 'drop'"
        ).fetchall()
    finally:
        db.close()
    stored = [(node, ch, int(t)) for node, ch, t in rows]
    assert len(stored) == len(set(stored))  # the primary key says so; and:
    assert set(stored) == fleet.sampled()
    assert stats.pending == 0 and stats.dropped == 0 and stats.readings == len(stored)
