"""How fast the simulated fleet runs: simulated time per real second, readings per second.

Each scenario runs N virtual nodes (the real firmware code) over real UDP on loopback to a
receiver in the same process: sim/receiver.py (aiocoap, COSE check, dedup), or with
``--gateway`` the real gateway service on a temporary directory (SQLite, fsync per commit).

    python benchmarks/fleet_speed.py                 # 1,000 nodes for 2 h; 100 nodes for 7 days
    python benchmarks/fleet_speed.py --gateway --quick
"""

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sim.fleet import Fleet, make_keys
from sim.receiver import Receiver


async def scenario(n: int, duration: float, use_gateway: bool) -> dict:
    keys = make_keys(n, 1)
    box: dict = {}
    cpu0 = time.process_time()
    if use_gateway:
        from gateway import config
        from gateway.ingest import registry
        from gateway.service import Gateway
        from gateway.store.db import open_db

        tmp = tempfile.mkdtemp()
        cfg = config.loads(
            "",
            Path(tmp) / "gateway.toml",
            {
                "coap_host": "127.0.0.1",
                "coap_port": 0,
                "http_host": "127.0.0.1",
                "http_port": 0,
                "node_defaults": {"pack": 10},
            },
        )
        gw = Gateway(cfg)
        await gw.start()
        db = open_db(cfg.database)
        keys = {node: registry.add_node(db, node) for node in keys}
        db.close()
        addr = ("127.0.0.1", gw.coap_port)
        start = None
    else:
        rx = Receiver(keys, clock=lambda: box["fleet"].clock.now)
        addr = await rx.start()
        start = 1700006400
    fleet = box["fleet"] = Fleet(keys, addr, start, duration, seed=1)
    stats = await fleet.run()
    if use_gateway:
        await gw.stop()
    else:
        await rx.stop()
    cpu = time.process_time() - cpu0
    return {"stats": stats, "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gateway", action="store_true", help="the real gateway, not sim/receiver")
    ap.add_argument("--quick", action="store_true", help="smaller scenarios")
    args = ap.parse_args()
    runs = [(1000, 2 * 3600), (100, 7 * 86400)]
    if args.quick:
        runs = [(1000, 1800), (100, 6 * 3600)]
    print(
        f"receiver: {'gateway service' if args.gateway else 'sim/receiver.py'}; "
        f"{os.cpu_count()} CPUs (shared)"
    )
    for n, duration in runs:
        r = asyncio.run(scenario(n, duration, args.gateway))
        s = r["stats"]
        print(
            f"{n:5d} nodes, {duration / 3600:6.1f} simulated h: {s.wall_seconds:6.1f} s wall, "
            f"{r['cpu']:6.1f} s CPU, {s.speedup:7.0f}x real time, "
            f"{s.readings / s.wall_seconds:7.0f} readings/s, {s.packs} packs, "
            f"{s.datagrams} datagrams, {s.pending} left unsent"
        )


if __name__ == "__main__":
    main()
