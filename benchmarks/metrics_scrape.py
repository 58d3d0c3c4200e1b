"""Issue 13, item 18: what the sync figures of one ``/metrics`` page cost with a month's outbox
of 100 nodes (100 nodes x 5 channels x 720 hours = 360,000 rows), the old way (a scan of
``sync_outbox`` per gauge, ten a page) against ``sync_status`` from the counters.

    python benchmarks/metrics_scrape.py [--nodes 100] [--hours 720]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from gateway.store.db import open_db
from gateway.sync.outbox import Summary, enqueue_summaries
from gateway.sync.service import sync_status

OLD_SCAN = (  # what backlog() ran before the counters
    "SELECT sum(kind = 'event' AND synced_version < version AND rejected IS NULL),"
    " sum(kind = 'summary' AND synced_version < version AND rejected IS NULL),"
    " sum(inflight IS NOT NULL), sum(rejected IS NOT NULL), sum(synced_version = version),"
    " min(CASE WHEN synced_version < version AND rejected IS NULL THEN enq END), max(enq),"
    " min(CASE WHEN synced_version < version AND rejected IS NULL THEN time END) FROM sync_outbox"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--hours", type=int, default=720)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = open_db(Path(tmp) / "gw.db")
        h0 = 1_767_225_600
        t0 = time.perf_counter()
        for n in range(args.nodes):
            rows = [
                Summary(f"lamp-{n:03d}", ch, h0 + 3600 * h, 60, 1.0, 9.0, 5.0)
                for ch in ("p", "e", "t", "lux", "bat")
                for h in range(args.hours)
            ]
            with db.atomic():
                enqueue_summaries(db, rows)
        enq = time.perf_counter() - t0
        # a month synced but the last day: the steady state of a gateway with an uplink
        with db.atomic():
            db.execute(
                "UPDATE sync_outbox SET synced_version = version WHERE time < ?",
                [h0 + 3600 * (args.hours - 24)],
            )
        total = db.execute("SELECT count(*) FROM sync_outbox").fetchone()[0]
        old, new = [], []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(10):  # ten gauges, one scan each
                db.execute(OLD_SCAN).fetchone()
            old.append(time.perf_counter() - t)
            t = time.perf_counter()
            sync_status(db)  # once per scrape now
            new.append(time.perf_counter() - t)
        print(f"outbox rows: {total:,}; enqueue with the counters' triggers: {enq:.1f} s")
        print(
            f"sync figures of a page, old (10 scans): median {statistics.median(old) * 1e3:.0f} ms"
        )
        print(
            f"sync figures of a page, now (1 status): median {statistics.median(new) * 1e3:.2f} ms"
        )
        db.close()


if __name__ == "__main__":
    main()
