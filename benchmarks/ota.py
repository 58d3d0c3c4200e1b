"""Firmware updates over the air: what a typical update costs; print figures.

    python benchmarks/ota.py              # 100 nodes, with and without compression
    python benchmarks/ota.py --nodes 10   # smaller
    python benchmarks/ota.py --heap       # only the node's heap, in MicroPython

1. The fleet (sim/fleet.py, the real firmware on CPython, the real boot shim after each reset)
   behind a proxy that loses 2 % of the datagrams and cuts the link for 30 minutes from 5
   minutes into the update, against the real gateway; the gateway's own firmware (compiled as
   the flash tool does) rolled out to every node, 2 canaries first (gateway/ota/rollout.py).
   Counted on the proxy, from each datagram's CoAP header: the bytes of the update's
   exchanges (GETs to /u/... and their 2.05 blocks, retransmissions included) per node; the
   simulated time from the offer to the node's signed "fw" reading; how many nodes confirmed.
   Once with the files deflated (as served by default), once as they are.
2. The node's heap during an update, inside a real MicroPython (sim/ota_heap.py): the
   compiled device build, booted through its boot shim, its flash a real directory, updates
   to the same firmware as the gateway serves it. The collector of that WASI build cannot run
   inside an exchange (sim/ota_heap.py says why), so it runs between exchanges and the
   figures are upper bounds: what the node's heaviest step (a request, or what it does with
   an answer) held and allocated over its resident heap, for the files and for the manifest
   (its decoding, verification and the clearing of the slot, at the request after its last
   block); and what the update kept between exchanges. Then the proof: the same update with
   a ballast leaving only the 16 KB budget before each step, which must end without
   MemoryError.
"""

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import config
from gateway.ingest import registry
from gateway.ota import rollout, updates
from gateway.provision import build
from gateway.service import Gateway
from gateway.store.db import open_db
from protocols import coap
from sim import ota_heap
from sim.fleet import Fleet, make_keys
from sim.net import Impairments, LossyProxy

HOUR = 3600
GET, CONTENT = 1, 0x45


class CountingProxy(LossyProxy):
    """The lossy proxy, counting the bytes of the update's exchanges that reach the wire."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.update_bytes = 0
        self.update_datagrams = 0

    def _count(self, data: bytes) -> None:
        try:
            m = coap.decode(data)
        except Exception:  # not CoAP: not ours to count
            return
        if m.code in (GET, CONTENT):
            self.update_bytes += len(data)
            self.update_datagrams += 1

    def _from_client(self, data, addr):
        self._count(data)
        super()._from_client(data, addr)

    def _from_upstream(self, data, client):
        self._count(data)
        super()._from_upstream(data, client)


async def rollout_run(n: int, files: list, deflate: bool) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="reverbere-ota-"))
    overrides = {"coap_host": "127.0.0.1", "coap_port": 0, "http_host": "127.0.0.1"}
    cfg = config.loads("", tmp / "gateway.toml", {**overrides, "http_port": 0,
                                                   "node_defaults": {"pack": 10}})  # fmt: skip
    gw = Gateway(cfg)
    await gw.start()
    db = open_db(cfg.database)
    keys = {node: registry.add_node(db, node) for node in make_keys(n, 1)}
    fleet = None
    at = 1 * HOUR
    done_at: dict[str, float] = {}
    offered_at: dict[str, float] = {}

    def tick(now):
        if now - fleet.start < at:
            return
        if not offered_at and not done_at:
            rollout.start(db, 1, files, list(keys), "linux", 2, 0, deflate, now)
        p = rollout.advance(db, now)
        for node, state, offered in db.execute(
            "SELECT node, state, offered FROM ota_rollout"
        ).fetchall():
            if offered is not None:
                offered_at.setdefault(node, offered)
            if state == "confirmed":
                done_at.setdefault(node, now)
        gw.ota_pending.reload()
        return p

    t0 = None
    cut = (at + 300, at + 300 + 0.5 * HOUR)  # 5 min into the update, for 30 min
    proxy = CountingProxy(
        ("127.0.0.1", gw.coap_port),
        Impairments(loss=0.02, outages=[cut]),
        seed=1,
        clock=lambda: fleet.clock.now - t0 if fleet else 0.0,
    )
    addr = await proxy.start()
    fleet = Fleet(keys, addr, None, 8 * HOUR, seed=1, firmware_dir=tmp / "nodes",
                  timer=(60, tick))  # fmt: skip
    t0 = fleet.start
    wall = time.monotonic()
    await fleet.run()
    wall = time.monotonic() - wall
    proxy.close()
    await gw.stop()
    served = updates.status(db)
    per_node = sorted(done_at[x] - offered_at[x] for x in done_at if x in offered_at)
    confirmed = sum(1 for u in rollout.node_states(db) if u.running == 1)
    size = sum(len(d) for _, d in files)
    db.close()
    return {
        "deflated": deflate,
        "nodes": n,
        "confirmed": confirmed,
        "files": len(files),
        "firmware_bytes": size,
        "served_bytes_per_node": _served(files, deflate),
        "bytes_on_air_per_node": round(proxy.update_bytes / n),
        "datagrams_per_node": round(proxy.update_datagrams / n, 1),
        "sim_minutes_offer_to_confirmed_median": round(per_node[len(per_node) // 2] / 60, 1)
        if per_node
        else None,
        "sim_minutes_offer_to_confirmed_max": round(per_node[-1] / 60, 1) if per_node else None,
        "wall_seconds": round(wall, 1),
        "offers_left": sum(1 for s in served if s["version"] is not None),
    }


def _served(files, deflate: bool) -> int:
    import zlib

    total = 0
    for _, data in files:
        if not deflate:
            total += len(data)
            continue
        z = zlib.compressobj(9, zlib.DEFLATED, updates.WBITS)
        total += min(len(data), len(z.compress(data) + z.flush()))
    return total


def heap(files: list, deflate: bool) -> dict:
    """The node's heap in MicroPython: measured, then proved within the budget."""
    whole = ota_heap.measure(files, deflate, budget=None)
    cut = ota_heap.measure(files, deflate, budget=ota_heap.HEAP_BUDGET)
    return {
        "deflated": deflate,
        "files_exchange_peak_bytes": whole["files_peak"],
        "manifest_exchange_peak_bytes": whole["manifest_peak"],
        "kept_between_exchanges_bytes": whole["live"],
        "budget_bytes": ota_heap.HEAP_BUDGET,
        "within_budget": "memory_error" not in cut and cut["installed"],
        "steps": whole["steps"],
    }


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--heap", action="store_true", help="only the node's heap (about 30 s)")
    args = ap.parse_args()
    files = [(f.path, f.data) for f in build.compile_firmware()]
    for deflate in (True, False):
        h = heap(files, deflate)
        print(h)
        print(
            f"  node heap, {'deflated' if deflate else 'as they are'}: a file's exchange "
            f"{_kb(h['files_exchange_peak_bytes'])}, the manifest's "
            f"{_kb(h['manifest_exchange_peak_bytes'])} (decoded, verified, slot cleared), "
            f"{_kb(h['kept_between_exchanges_bytes'])} kept between exchanges; "
            f"budget {_kb(h['budget_bytes'])}: "
            f"{'no MemoryError within it' if h['within_budget'] else 'MemoryError'}",
            flush=True,
        )
    for deflate in () if args.heap else (True, False):
        print(asyncio.run(rollout_run(args.nodes, files, deflate)), flush=True)


if __name__ == "__main__":
    main()
