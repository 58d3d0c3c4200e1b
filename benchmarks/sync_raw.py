"""Raw readings sync ([sync] raw): what the log costs the database and the commit, and what
sending the readings costs the uplink.

Stores ``--nodes`` x 2 channels x ``--hours`` of one reading a minute the way the gateway does
(packs of 10 readings, 64 packs per group commit, ``commit_batch``), once without and once
with the raw log in the commit; then sends the raw readings to a real SensorThings server on
loopback and reports time, bytes per reading and requests.

    python benchmarks/sync_raw.py [--nodes 50] [--hours 24] [--batch 2000]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.ingest import registry
from gateway.store.commit import commit_batch
from gateway.store.db import open_db
from gateway.store.group import Pack
from gateway.store.readings import db_bytes
from gateway.store.records import Reading
from gateway.sync.config import SyncConfig
from gateway.sync.raw import RawLog, raw_backlog
from gateway.sync.service import build_worker
from sim.platform import start_platform

H0 = 1767225600  # 2026-01-01T00:00Z


def fill(path: Path, nodes: int, hours: int, raw: bool) -> tuple[float, int, int]:
    """Store the readings; return (seconds in commit_batch, readings, database bytes)."""
    db = open_db(path)
    log = [RawLog().log] if raw else []
    refs = {}
    for n in range(nodes):
        node = f"lamp-{n:03d}"
        key = registry.add_node(db, node)
        refs[node] = (db.execute("SELECT ref FROM nodes WHERE id = ?", [node]).fetchone()[0], key)
    packs, seq, spent, count = [], {}, 0.0, 0
    for start in range(0, hours * 60, 10):  # every node sends a pack every 10 minutes
        for node, (ref, key) in refs.items():
            rs = []
            for m in range(start, start + 10):
                t = H0 + 60 * m
                rs += [Reading(node, "p", t, 60.0 + m % 7), Reading(node, "e", t, 1000.0 + m)]
            seq[node] = seq.get(node, 0) + 1
            packs.append(Pack(ref, node, key, seq[node], rs))
            count += len(rs)
            if len(packs) == 64:
                t0 = time.perf_counter()
                commit_batch(db.conn, packs, in_commit=log)
                spent += time.perf_counter() - t0
                packs = []
    if packs:
        commit_batch(db.conn, packs, in_commit=log)
    size = db_bytes(db)
    db.close()
    return spent, count, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--hours", type=int, default=24)
    ap.add_argument("--batch", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        off_s, n, off_b = fill(tmp / "off.db", args.nodes, args.hours, raw=False)
        on_s, _, on_b = fill(tmp / "on.db", args.nodes, args.hours, raw=True)
        db = open_db(tmp / "on.db")
        spans = db.execute("SELECT count(*) FROM sync_raw").fetchone()[0]
        print(f"readings stored:              {n:,}")
        print(f"database, raw log off:        {off_b / n:.1f} B/reading")
        print(f"database, raw log on:         {on_b / n:.1f} B/reading ({spans} spans owed)")
        print(f"commit time off / on:         {off_s:.2f} s / {on_s:.2f} s ({on_s / off_s:.2f}x)")
        with start_platform(tmp / "platform.sqlite3") as platform:
            cfg = SyncConfig(url=platform.url, raw=True, raw_interval=0, location=(4.8, 45.7))
            worker = build_worker(db, cfg, batch_rows=args.batch)
            t0 = time.perf_counter()
            assert worker.sync_until_idle() == "idle"
            took = time.perf_counter() - t0
            worker.target.close()
        use = worker.budget.use()
        assert raw_backlog(db).pending == 0 and worker.stats.raw_sent == n
        per_day = use.sent / args.nodes / (args.hours / 24)
        print(f"raw readings sent:            {worker.stats.raw_sent:,} in {took:.1f} s")
        print(f"uplink:                       {use.sent / n:.2f} B/reading (gzip)")
        print(f"uplink per node per day:      {per_day / 1000:.1f} kB (2 channels, 1/min)")
        print(f"requests:                     {use.requests}")


if __name__ == "__main__":
    main()
