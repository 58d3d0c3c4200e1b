"""Catch-up after an outage: 200 nodes x 2 channels, one reading a minute, 7 days offline.

The gateway summarised every hour while the link was down (count = 60 readings each); when
the link comes back, how long until the platform (a real SensorThings server on loopback)
has everything, how many bytes per node per day went up, and how many requests it took.
Targets (issue 6): caught up in under 60 s; at most 2 KB per node per day.

    python benchmarks/sync.py [--nodes 200] [--days 7] [--batch 2000]
"""

import argparse
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.store.db import open_db
from gateway.sync.config import SyncConfig
from gateway.sync.outbox import ANOMALIES, Event, Summary, enqueue_events, enqueue_summaries
from gateway.sync.service import build_worker
from sim.platform import start_platform

H0 = 1767225600  # 2026-01-01T00:00Z


def outage_summaries(nodes: int, days: int, seed: int = 1) -> tuple[list, list]:
    """Hourly summaries of street lights (power p, energy counter e) and a few anomalies."""
    rng = random.Random(seed)
    sums, events = [], []
    for n in range(nodes):
        node = f"lamp-{n:03d}"
        counter = rng.uniform(0, 50000)
        for h in range(days * 24):
            lit = (h % 24) >= 17 or (h % 24) < 7
            w = 60 + rng.gauss(0, 2) if lit else max(0.0, rng.gauss(0.4, 0.1))
            t = H0 + 3600 * h
            sums.append(Summary(node, "p", t, 60, w * 0.95, w * 1.05, w, w))
            sums.append(Summary(node, "e", t, 60, counter, counter + w, counter + w / 2, w))
            counter += w
        if rng.random() < 0.3:  # about one node in three lit by day once in the week
            h = rng.randrange(days) * 24 + 12
            events.append(
                Event(
                    node,
                    "p",
                    H0 + 3600 * h,
                    H0 + 3600 * (h + 3),
                    "lit_by_day",
                    round(rng.uniform(4, 9), 2),
                    "lamp on in daylight for 3 h",
                )
            )
    return sums, events


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--batch", type=int, default=2000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="reverbere-bench-sync-"))
    sums, events = outage_summaries(args.nodes, args.days)
    locs = {f"lamp-{n:03d}": (4.83 + n * 1e-4, 45.76) for n in range(args.nodes)}
    with start_platform(tmp / "platform.sqlite3") as platform:
        db = open_db(tmp / "gateway.store.db")
        worker = build_worker(db, SyncConfig(url=platform.url), locs, batch_rows=args.batch)
        # Before the outage the gateway was syncing: its Things and Datastreams exist.
        t = time.perf_counter()
        worker.target.ensure_streams({(node, s) for node in locs for s in ("p", "e", ANOMALIES)})
        provision_s = time.perf_counter() - t
        before = worker.budget.use()
        t = time.perf_counter()
        enqueue_summaries(db, sums)
        enqueue_events(db, events)
        enqueue_s = time.perf_counter() - t
        # Link up.
        t = time.perf_counter()
        outcome = worker.sync_until_idle()
        catch_up = time.perf_counter() - t
        after = worker.budget.use()
        worker.target.close()
        with sqlite3.connect(platform.db_path) as conn:
            on_platform = conn.execute(
                "SELECT count(*) FROM sensorthings_v1_1_django_backend_observation"
            ).fetchone()[0]
    rows = len(sums) + len(events)
    sent = after.sent - before.sent
    received = after.received - before.received
    requests = after.requests - before.requests
    node_days = args.nodes * args.days
    per_node_day = sent / node_days
    print(
        f"outage: {args.nodes} nodes x 2 channels x {args.days} days at 1 reading/min "
        f"= {args.nodes * 2 * args.days * 1440:,} readings -> {len(sums):,} hourly summaries "
        f"+ {len(events)} events"
    )
    print(
        f"first-time provisioning of {args.nodes} Things ({args.nodes * 3} Datastreams): "
        f"{provision_s:.1f} s, {before.requests} requests, {before.sent:,} B "
        "(once per node, not part of the catch-up)"
    )
    print(f"enqueue into the outbox: {enqueue_s:.2f} s")
    print(
        f"catch-up ({outcome}): {catch_up:.1f} s, {rows / catch_up:,.0f} observations/s "
        f"(target < 60 s: {'OK' if catch_up < 60 else 'MISSED'}, {catch_up / 60:.2f} of it)"
    )
    print(
        f"requests: {requests} ({rows / max(1, requests):,.0f} observations per request, "
        f"batch {args.batch})"
    )
    print(
        f"uplink: {sent:,} B = {per_node_day:,.0f} B/node/day = {sent / rows:.1f} B/observation "
        f"(target <= 2048 B/node/day: {'OK' if per_node_day <= 2048 else 'MISSED'}, "
        f"{per_node_day / 2048:.2f} of it)"
    )
    print(f"downlink: {received:,} B = {received / node_days:,.0f} B/node/day")
    print(
        f"platform holds {on_platform:,} observations for {rows:,} owed "
        f"({'exact' if on_platform == rows else 'MISMATCH'})"
    )


if __name__ == "__main__":
    main()
