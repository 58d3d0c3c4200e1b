"""``reverbere demo``: the whole system on one machine.

This version: a gateway on a temporary directory, ``nodes`` simulated nodes (``sim.sender``)
each sending ``hours`` of one-minute readings through a lossy path (5 % of datagrams dropped
each way, so CoAP retransmissions, lost acknowledgements and re-sent packs all happen), then
a check of what was sent, acknowledged and stored. The fleet, network and platform of sim/
join the demo as they land.
"""

import asyncio
import json
import math
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gateway import config, registry
from gateway.db import open_db
from gateway.service import Gateway
from sim.sender import Sender, SimNode

PACK = 10


def node_readings(index: int, start: int, hours: float) -> list[tuple[str, int, float]]:
    """One-minute power readings of a street light (on at night), a temperature every
    ten minutes and the battery every hour, in time order."""
    rng = random.Random(index)
    out: list[tuple[str, int, float]] = []
    for k in range(int(hours * 60)):
        t = start + 60 * k
        hour = (t // 3600) % 24
        lit = hour >= 18 or hour < 7
        out.append(("p", t, round((60.0 if lit else 0.5) + rng.uniform(-1, 1), 1)))
        if k % 10 == 0:
            out.append(("t", t, round(12 + 6 * math.sin(t / 86400 * 2 * math.pi), 1)))
        if k % 60 == 0:
            out.append(("bat", t, round(100 - k / 600, 1)))
    return out


async def _demo(echo: Callable[[str], None], nodes: int, hours: float, workdir: Path) -> dict:
    cfg = config.loads(
        "", workdir / "gateway.toml", {"coap_host": "127.0.0.1", "coap_port": 0, "http_port": 0}
    )
    gw = Gateway(cfg)
    await gw.start()
    db = open_db(cfg.database)
    fleet = [
        SimNode(f"lamp-{i + 1:03d}", registry.add_node(db, f"lamp-{i + 1:03d}"))
        for i in range(nodes)
    ]
    start = int(time.time() - hours * 3600) // 60 * 60
    sent: set[tuple[str, str, int]] = set()
    acked: set[tuple[str, str, int]] = set()
    echo(f"gateway on udp/{gw.coap_port}, {nodes} nodes, {hours:g} h of readings each")

    async def run_node(i: int, node: SimNode, sender: Sender) -> None:
        readings = node_readings(i, start, hours)
        for j in range(0, len(readings), PACK):
            pack = readings[j : j + PACK]
            keys = {(node.node_id, ch, t) for ch, t, _ in pack}
            sent.update(keys)
            result = await sender.send(node, pack, attempts=20)
            if result.acked:
                acked.update(keys)

    t0 = time.perf_counter()
    async with Sender("127.0.0.1", gw.coap_port, ack_timeout=0.1, loss=0.05, seed=1) as sender:
        await asyncio.gather(*(run_node(i, n, sender) for i, n in enumerate(fleet)))
        datagrams = sender.datagrams_sent
    elapsed = time.perf_counter() - t0
    await gw.stop()

    rows = db.execute(
        "SELECT n.id, r.channel, r.time FROM readings r JOIN nodes n ON n.ref = r.node"
    ).fetchall()
    stored = {(a, b, int(c)) for a, b, c in rows}
    report = {
        "nodes": nodes,
        "hours": hours,
        "readings_sent": len(sent),
        "readings_acked": len(acked),
        "readings_stored": len(rows),
        "duplicates_stored": len(rows) - len(stored),
        "acked_but_lost": len(acked - stored),
        "stored_not_sent": len(stored - sent),
        "datagrams_sent": datagrams,
        "seconds": round(elapsed, 2),
        "readings_per_second": round(len(sent) / elapsed) if elapsed else 0,
    }
    db.close()
    echo(
        f"sent {report['readings_sent']} readings in {datagrams} datagrams "
        f"({elapsed:.1f} s, 5 % loss each way), acknowledged {report['readings_acked']}, "
        f"stored {report['readings_stored']}"
    )
    echo(
        f"duplicates stored: {report['duplicates_stored']}, "
        f"acknowledged but lost: {report['acked_but_lost']}"
    )
    return report


def run_demo(
    echo: Callable[[str], None] = print,
    nodes: int = 20,
    hours: float = 24,
    out: str | Path | None = None,
) -> dict:
    """Run the demo; return its figures (also written to ``out``/report.json if given)."""
    with tempfile.TemporaryDirectory(prefix="reverbere-demo-") as tmp:
        report = asyncio.run(_demo(echo, nodes, hours, Path(tmp)))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        echo(f"report: {out / 'report.json'}")
    return report
