"""Issue 16: what the console's pages cost with a whole town, and whether fetching them holds
up the nodes' acknowledgements.

Builds a gateway database of ``--nodes`` nodes (lamps and building meters) with a month of
hourly summaries each (one energy channel), an event per node (half with a waste), a day of
minute readings for one node (its page's 24-hour chart) and a last reading for every node
(the fleet); starts the real gateway (``reverbere gateway run``, a process of its own) on
loopback, logs in and times every page (p50/p99 of ``--fetches``; the Energy page's first
visit after the start apart, and the month's report it offers to download). Then sends
``--rate`` packs a second from ``--senders`` nodes for ``--seconds``, twice: alone, and with
a page fetched every second, and prints each phase's p50/p99 ack latency and their ratio.

    python benchmarks/console.py [--nodes 2000] [--rate 50] [--seconds 20]
"""

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from ingest import start_process  # noqa: E402  (benchmarks/ingest.py, beside this file)

from gateway.console import accounts, daily  # noqa: E402
from gateway.ingest import registry  # noqa: E402
from gateway.store.db import open_db  # noqa: E402
from sim.sender import Sender, SimNode  # noqa: E402

CONFIG = """
[site]
latitude = 45.0
longitude = 5.0
timezone = "Europe/Paris"

[detect]
lamps = ["lamp-*"]

[[detect.buildings]]
nodes = ["ecole-*"]
days = "mon-fri"
open = "07:30"
close = "18:30"
"""
PASSWORD = "bench-passphrase"


def node_ids(n: int) -> list[str]:
    """Nine lamps in ten (in streets of 50), a meter in ten (buildings of 4 meters)."""
    return [
        f"rue{i // 50:02d}-{i:04d}" if i % 10 else f"ecole{i // 40:02d}-{i:04d}" for i in range(n)
    ]


def build(path: Path, n: int, now: float) -> dict[str, bytes]:
    db = open_db(path)
    accounts.add_user(db, "bench", "viewer", PASSWORD)
    keys = {}
    for node in node_ids(n):
        keys[node] = registry.add_node(db, node)
    hour = int(now // 3600 * 3600)
    with db.conn:
        for node in keys:
            ch = "e" if node.startswith("ecole") else "p"
            db.conn.executemany(
                "INSERT INTO summaries (node, channel, hour, count, min, max, sum, mean, wh)"
                " VALUES (?, ?, ?, 60, 0, 100, 0, 40.0, 40.0)",
                [(node, ch, hour - k * 3600) for k in range(31 * 24)],
            )
            db.execute(
                "INSERT INTO summary_cursor (node, channel, time, value) VALUES (?, ?, ?, 0)",
                [node, ch, now - 60],
            )
            ref = registry.lookup(db, node)[0]
            db.execute(
                "INSERT INTO readings (node, channel, time, value) VALUES (?, ?, ?, 40)",
                [ref, ch, now - 60],
            )
        # A gateway that has run for the month: its closed hours are with the outbox already
        # (a month owed at once is the backlog an upgrade makes, not the steady state).
        db.execute("UPDATE summaries SET synced_version = version WHERE hour < ?", [hour - 3600])
    first = next(iter(keys))
    ref = registry.lookup(db, first)[0]
    with db.conn:
        db.conn.executemany(
            "INSERT OR IGNORE INTO readings (node, channel, time, value) VALUES (?, 'p', ?, 40)",
            [(ref, now - 60 * k) for k in range(2, 1440)],
        )
    have = {r[1] for r in db.execute("PRAGMA table_info(anomalies)")}
    events = []
    for i, node in enumerate(keys):
        e = dict(node=node, channel="p", kind="lit_by_day", start=now - (i % 700) * 3600,
                 end=None if i % 5 == 0 else now - (i % 700) * 3600 + 1800, score=0.8,
                 reason="allumé en plein jour", version=1)  # fmt: skip
        if "waste_kwh" in have and i % 2 == 0:
            e.update(waste_kwh=1.5, waste_eur=0.3)
        events.append(e)
    db["anomalies"].insert_all(events)
    db.conn.commit()
    db.close()
    return keys


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def login(url: str) -> httpx.Client:
    c = httpx.Client(base_url=url, timeout=30)
    form = c.get("/login")
    csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
    r = c.post("/login", data={"csrf": csrf, "name": "bench", "password": PASSWORD})
    assert r.status_code == 303, r.text
    return c


async def ack_phase(port: int, nodes: list[SimNode], rate: float, seconds: float) -> list[float]:
    """Packs at ``rate`` a second for ``seconds``, each one's time to its ACK (ms)."""
    lat: list[float] = []
    lost: list[int | None] = []  # packs never acknowledged (their last code, None: silence)
    async with Sender("127.0.0.1", port) as s:

        async def one(node: SimNode) -> None:
            t = time.time()
            t0 = time.perf_counter()
            r = await s.send(node, [("p", int(t), 40.0), ("p", int(t) + 1, 41.0)])
            if r.acked:
                lat.append((time.perf_counter() - t0) * 1e3)
            else:
                lost.append(r.code)

        tasks, start, i = [], time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            tasks.append(asyncio.create_task(one(nodes[i % len(nodes)])))
            i += 1
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        await asyncio.gather(*tasks)
    if lost:
        print(f"  {len(lost)} of {len(lost) + len(lat)} packs not acknowledged: {set(lost)}")
    return lat or [float("nan")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--fetches", type=int, default=5)
    ap.add_argument("--rate", type=float, default=50.0, help="packs a second (half load)")
    ap.add_argument("--senders", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="reverbere-console-"))
    now = time.time()
    t0 = time.perf_counter()
    keys = build(tmp / "reverbere.db", args.nodes, now)
    print(f"database: {args.nodes} nodes x 744 hourly summaries, {args.nodes} events,"
          f" built in {time.perf_counter() - t0:.0f} s")  # fmt: skip
    # The per-day energy sums (gateway/console/daily.py), which a gateway keeps as the
    # summaries come, counted here at once, as the first start after the upgrade does.
    db = open_db(tmp / "reverbere.db")
    t0 = time.perf_counter()
    daily.ensure_zone(db, "Europe/Paris")
    print(f"per-day energy sums counted from the summaries (once, after the upgrade):"
          f" {time.perf_counter() - t0:.1f} s")  # fmt: skip
    db.close()
    (tmp / "gateway.toml").write_text(CONFIG)
    gw, rec = start_process(
        [sys.executable, "-m", "gateway", "gateway", "run", "--config", str(tmp / "gateway.toml"),
         "--coap", "127.0.0.1:0", "--http", "127.0.0.1:0"],
        cwd=tmp,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{rec['http_port']}"
        c = login(url)
        first = next(iter(keys))
        t = time.perf_counter()
        assert c.get("/energy").status_code == 200
        cold = (time.perf_counter() - t) * 1e3
        print(f"{'/energy (first visit after the start)':<42} {cold:7.0f} ms")
        month = time.strftime("%Y-%m", time.localtime(now))
        pages = ["/", "/events", f"/nodes/{first}", f"/nodes/{first}?span=week",
                 f"/nodes/{first}?span=month", "/energy", "/gateway", "/metrics"]  # fmt: skip
        print(f"{'page':<42} {'p50 ms':>7} {'p99 ms':>7} {'KB':>6}")
        for page in pages:
            times = []
            for _ in range(args.fetches):
                t = time.perf_counter()
                r = c.get(page)
                times.append((time.perf_counter() - t) * 1e3)
                assert r.status_code == 200, (page, r.status_code)
            print(f"{page:<42} {statistics.median(times):7.0f} {pct(times, 0.99):7.0f}"
                  f" {len(r.content) / 1000:6.0f}")  # fmt: skip
        # the month's report, a download the Energy page offers (gateway.reports): timed
        # apart, and not among the pages fetched while the acks are measured
        # (this month's few days, and the whole of last month)
        last = time.strftime("%Y-%m", time.localtime(now - time.localtime(now).tm_mday * 86400))
        for m in (month, last):
            t = time.perf_counter()
            r = c.get(f"/energy/report?month={m}")
            assert r.status_code == 200
            ms, kb = (time.perf_counter() - t) * 1e3, len(r.content) / 1000
            print(
                f"{'/energy/report?month=' + m + ' (a download)':<42} {ms:7.0f} {'':>7} {kb:6.0f}"
            )
        senders = [SimNode(n, keys[n]) for n in list(keys)[: args.senders]]
        alone = asyncio.run(ack_phase(rec["coap_port"], senders, args.rate, args.seconds))
        stop = threading.Event()

        def fetch() -> None:
            i = 0
            while not stop.wait(1.0):
                c.get(pages[i % len(pages)])
                i += 1

        fetcher = threading.Thread(target=fetch)
        fetcher.start()
        try:
            busy = asyncio.run(ack_phase(rec["coap_port"], senders, args.rate, args.seconds))
        finally:
            stop.set()
            fetcher.join()
        print(
            f"acks at {args.rate:.0f} packs/s for {args.seconds:.0f} s: {'p50 ms':>7} {'p99 ms':>7}"
        )
        for name, lat in (("alone", alone), ("a page every second", busy)):
            print(f"  {name:<38} {statistics.median(lat):7.1f} {pct(lat, 0.99):7.1f}")
        print(f"  ratio p99 with/without pages: {pct(busy, 0.99) / pct(alone, 0.99):.2f}"
              f" (p50 {statistics.median(busy) / statistics.median(alone):.2f})")  # fmt: skip
    finally:
        gw.terminate()
        try:
            gw.wait(30)
        except subprocess.TimeoutExpired:  # a gateway stuck under the load is a finding too
            print("the gateway did not stop within 30 s of SIGTERM: killed")
            gw.kill()
            gw.wait()


if __name__ == "__main__":
    main()
