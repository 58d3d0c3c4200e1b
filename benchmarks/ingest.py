"""Ingest benchmark: how fast the gateway acknowledges signed packs, against bare aiocoap.

    python benchmarks/ingest.py [--seconds 10] [--window 64] [--soak 300]

This process is the sender; the gateway (``reverbere gateway run``) and a bare aiocoap server
whose ``/r`` handler only returns 2.04 each run in their own process. The sender uses raw UDP
sockets and pre-signed packs of 10 readings, with ``--window`` messages in flight (one per
node at a time, as a real node), spread over 16 source ports so that CoAP message IDs do not
wrap within the deduplication lifetime. Phases:

1. maximum rate (``--window`` in flight), 2. half that rate (paced): ack latency p50/p99,
each for the bare server and the gateway alternately, in ``--rounds`` slices so that other load
on the machine weighs on both alike; 3. with ``--soak S``: the gateway at maximum rate for S
seconds (peak RSS with a full deduplication cache).

Printed: messages/s, readings/s, ack latency p50/p99, gateway CPU (% of one core) and peak RSS
(both over the gateway's process and its writer process, gateway/store/commit.py),
database growth per stored reading, and the ratios to the targets of issue 4. The growth is
measured between the end of phase 1 (every node has sent, so its fixed per-channel rows exist:
detector state, summary cursor) and the end of the run; the whole file per reading, which also
counts those fixed rows, is printed beside it.
"""

import argparse
import collections
import json
import os
import selectors
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.ingest import registry  # noqa: E402
from gateway.service import init_dir  # noqa: E402
from gateway.store.db import open_db  # noqa: E402
from protocols import coap, cose, senml  # noqa: E402
from protocols.const import (  # noqa: E402
    CF_COSE_MAC0,
    CON,
    CONTENT_FORMAT,
    POST,
    READINGS_PATH,
    URI_PATH,
)

NODES = 512
SOCKETS = 16
PACK = 10


# --- the servers under test ------------------------------------------------------------------


def bare_server() -> None:
    """A bare aiocoap server: /r returns 2.04 and nothing else. Prints its port."""
    import asyncio

    import aiocoap
    from aiocoap import resource

    class R(resource.Resource):
        async def render_post(self, request):
            return aiocoap.Message(code=aiocoap.CHANGED)

    async def main():
        site = resource.Site()
        site.add_resource([READINGS_PATH], R())
        ctx = await aiocoap.Context.create_server_context(
            site, bind=("127.0.0.1", 0), transports=["udp6"]
        )
        mman = ctx.request_interfaces[0].token_interface
        print(json.dumps({"coap_port": mman.message_interface._local_port()}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def start_process(args: list[str], cwd: Path = ROOT) -> tuple[subprocess.Popen, dict]:
    """Start a server (a gateway, bare aiocoap) and wait for the JSON line naming its CoAP
    port (a gateway's first log line); its output is drained from then on. The other
    benchmarks start their gateways with it too."""
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd
    )
    for line in proc.stdout:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "coap_port" in rec:
            # keep draining its output so that it never blocks on a full pipe
            import threading

            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, rec
    raise SystemExit("server did not start: " + str(proc.wait()))


class Behind:
    """The gateway's after-commit stages: how far behind the acknowledged readings they are
    (``reverbere_stage_backlog_readings`` on /metrics), and waiting until they caught up."""

    def __init__(self, http_port: int):
        self.url = f"http://127.0.0.1:{http_port}/metrics"
        self.most = 0  # readings, the most seen at the end of a slice
        self.catch_up: list[float] = []  # seconds each wait took

    def backlog(self) -> int:
        with urllib.request.urlopen(self.url, timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("reverbere_stage_backlog_readings "):
                    return int(float(line.split()[1]))
        return 0

    def note(self) -> None:
        self.most = max(self.most, self.backlog())

    def wait(self) -> None:
        t0 = time.perf_counter()
        while self.backlog():
            time.sleep(0.05)
        self.catch_up.append(time.perf_counter() - t0)


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the gateway's writer process)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            pids += tree(int(child))
    return pids


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and its descendants."""
    total = 0
    for p in tree(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def status_kb(pid: int, key: str) -> int:
    """``key`` of /proc/PID/status, summed over ``pid`` and its descendants (for ``VmHWM``, the
    sum of each process's peak: at least the peak of the sum)."""
    total = 0
    for p in tree(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                total += int(line.split()[1])
    return total


# --- the sender --------------------------------------------------------------------------------


class Load:
    """Signed packs per node (made as they are needed), and raw UDP sockets to send them."""

    def __init__(self, keys: dict[str, bytes], presign: int = 20):
        self.keys = keys
        self.nodes = list(keys)
        self.t0 = int(time.time()) - 300 * 86400
        self.seq = dict.fromkeys(keys, 0)
        self.last = dict.fromkeys(keys, self.t0 - PACK * 60)  # each node's last pack's time
        self.signed = 0
        # The nodes' turn, kept from one run to the next (a slice that starts again from the
        # first node would send the first ones more often, and the last ones would lag).
        self.ready = collections.deque(self.nodes)
        self.packs: dict[str, collections.deque] = {n: collections.deque() for n in keys}
        for _ in range(presign):
            for n in self.nodes:
                self.packs[n].append(self._sign(n))

    def _sign(self, node: str) -> bytes:
        # One clock for the fleet: a pack is as old as the fleet's round it goes in (its
        # node's next 10 minutes at least), so that no node lags the others by more than
        # a round or two, as real nodes do not (a lagging node would look silent).
        self.seq[node] += 1
        k = self.seq[node]
        base = max(
            self.t0 + self.signed // len(self.nodes) * PACK * 60, self.last[node] + PACK * 60
        )
        self.last[node] = base
        self.signed += 1
        readings = [("p", base + 60 * i, 40 + (k + i) % 50) for i in range(PACK)]
        return cose.sign(self.keys[node], node.encode(), k, senml.encode(readings))

    def next_pack(self, node: str) -> bytes:
        q = self.packs[node]
        return q.popleft() if q else self._sign(node)

    def run(self, port: int, seconds: float, window: int, rate: float | None = None) -> dict:
        """Send for ``seconds``: ``window`` in flight, or paced at ``rate`` messages/s."""
        sel = selectors.DefaultSelector()
        socks = []
        for _ in range(SOCKETS):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.connect(("127.0.0.1", port))
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            socks.append(s)
        ready = self.ready
        inflight: dict[tuple[int, int], tuple[str, float, bytes]] = {}
        mids = [0] * SOCKETS
        latencies: list[float] = []  # seconds from first send to answer
        codes: collections.Counter = collections.Counter()
        sent = resent = 0
        start = time.perf_counter()
        end = start + seconds
        next_send = start

        def send_one(now: float) -> None:
            nonlocal sent
            node = ready.popleft()
            si = hash(node) % SOCKETS
            mids[si] = (mids[si] + 1) & 0xFFFF
            body = self.next_pack(node)
            wire = coap.encode(
                CON,
                POST,
                mids[si],
                mids[si].to_bytes(2, "big"),
                options=[
                    (URI_PATH, READINGS_PATH.encode()),
                    (CONTENT_FORMAT, bytes([CF_COSE_MAC0])),
                ],
                payload=body,
            )
            socks[si].send(wire)
            inflight[(si, mids[si])] = (node, now, wire)
            sent += 1

        last_check = start
        while True:
            now = time.perf_counter()
            if now >= end and not inflight:
                break
            if now < end:
                if rate is None:
                    while ready and len(inflight) < window:
                        send_one(now)
                else:
                    # A sender that was not scheduled for a while does not catch up in one
                    # burst (which would overflow the server's socket buffer): at most 5 ms.
                    next_send = max(next_send, now - 0.005)
                    while ready and now >= next_send:
                        send_one(now)
                        next_send += 1.0 / rate
            timeout = 0.05 if rate is None else max(0.0, min(0.05, next_send - now))
            for key, _ in sel.select(timeout):
                s = key.fileobj
                si = socks.index(s)
                while True:
                    try:
                        data = s.recv(2048)
                    except BlockingIOError:
                        break
                    mtype, code = (data[0] >> 4) & 3, data[1]
                    if code == 0:  # empty ACK: the response will come separately
                        entry = inflight.get((si, int.from_bytes(data[2:4], "big")))
                        if entry is not None:
                            inflight[(si, int.from_bytes(data[2:4], "big"))] = (*entry[:2], None)
                        continue
                    if mtype == 0:  # a separate (CON) response: acknowledge it
                        s.send(bytes((0x60, 0)) + data[2:4])
                        tkl = data[0] & 0x0F
                        mid = int.from_bytes(data[4 : 4 + tkl], "big")  # our token is our MID
                    else:
                        mid = int.from_bytes(data[2:4], "big")
                    entry = inflight.pop((si, mid), None)
                    if entry is None:
                        continue  # the answer to a retransmission we no longer wait for
                    t = time.perf_counter()
                    if t <= end:
                        latencies.append(t - entry[1])
                        codes[data[1]] += 1
                    ready.append(entry[0])
            now = time.perf_counter()
            if now - last_check > 0.5:  # retransmit what got no answer in 2 s
                last_check = now
                for (si, _mid), (_node, t0, wire) in list(inflight.items()):
                    if wire is not None and now - t0 > 2.0:  # None: ACKed, response pending
                        socks[si].send(wire)
                        resent += 1
            if now > end + 10:
                break
        ready.extend(node for node, _t0, _wire in inflight.values())  # their turn next run
        for s in socks:
            s.close()
        return {
            "latencies": latencies,
            "codes": codes,
            "sent": sent,
            "resent": resent,
            "seconds": seconds,
        }


def timed(proc: subprocess.Popen, phase) -> dict:
    """Run ``phase()``; add the server's CPU seconds over it."""
    c0 = cpu_seconds(proc.pid)
    raw = phase()
    raw["cpu"] = cpu_seconds(proc.pid) - c0
    return raw


def summary(parts: list[dict], proc: subprocess.Popen) -> dict:
    """Figures over the slices of one phase."""
    lat = sorted(x for p in parts for x in p["latencies"])
    seconds = sum(p["seconds"] for p in parts)
    codes: collections.Counter = collections.Counter()
    for p in parts:
        codes.update(p["codes"])
    n = len(lat)
    return {
        "messages_per_s": n / seconds,
        "readings_per_s": n * PACK / seconds,
        "p50_ms": 1000 * lat[n // 2] if n else float("nan"),
        "p99_ms": 1000 * lat[min(n - 1, int(n * 0.99))] if n else float("nan"),
        "answered": n,
        "retransmitted": sum(p["resent"] for p in parts),
        "codes": {f"{c >> 5}.{c & 31:02d}": k for c, k in codes.items()},
        "server_cpu_pct": 100 * sum(p["cpu"] for p in parts) / seconds,
        "server_peak_rss_mb": status_kb(proc.pid, "VmHWM") / 1024,
    }


def show(name: str, r: dict) -> None:
    print(
        f"{name:<28} {r['messages_per_s']:8.0f} msg/s {r['readings_per_s']:9.0f} readings/s"
        f"  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  CPU {r['server_cpu_pct']:5.1f} %"
        f"  peak RSS {r['server_peak_rss_mb']:6.1f} MB  codes {r['codes']}"
        f"  resent {r['retransmitted']}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=12.0, help="per phase and server")
    ap.add_argument("--rounds", type=int, default=4, help="slices each phase is cut into")
    ap.add_argument("--window", type=int, default=64, help="messages in flight")
    ap.add_argument("--soak", type=float, default=0.0, help="seconds of max rate for RSS")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a gateway config value, e.g. --set coap.dedup_max=1000 (repeatable)",
    )
    ap.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_server:
        return bare_server()

    tmp = Path(tempfile.mkdtemp(prefix="reverbere-bench-"))
    cfg = init_dir(tmp)
    if args.set:
        sections: dict[str, list[str]] = collections.defaultdict(list)
        for item in args.set:
            key, _, value = item.partition("=")
            section, _, name = key.partition(".")
            sections[section].append(f"{name} = {value}")
        cfg.write_text("".join(f"[{k}]\n" + "\n".join(v) + "\n" for k, v in sections.items()))
    db = open_db(tmp / "reverbere.db")
    keys = {f"node-{i:04d}": registry.add_node(db, f"node-{i:04d}") for i in range(NODES)}
    db.close()
    gw_load, bare_load = Load(keys), Load(keys)
    bare, bare_started = start_process([sys.executable, __file__, "--bare-server"])
    gw, gw_started = start_process(
        [
            sys.executable,
            "-m",
            "gateway",
            "gateway",
            "run",
            "--config",
            str(cfg),
            "--coap",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ]
    )
    bare_port, gw_port = bare_started["coap_port"], gw_started["coap_port"]
    behind = Behind(gw_started["http_port"])
    # Both servers run side by side and the phases alternate in short slices, so that a busy
    # machine (CI, other jobs) weighs on both alike.
    slice_s = args.seconds / args.rounds
    try:
        maxed: dict[str, list] = {"bare": [], "gw": []}
        for _ in range(args.rounds):
            behind.wait()  # the gateway's stages are not left to compete with the bare server
            maxed["bare"].append(
                timed(bare, lambda: bare_load.run(bare_port, slice_s, args.window))
            )
            maxed["gw"].append(timed(gw, lambda: gw_load.run(gw_port, slice_s, args.window)))
            behind.note()
        r_bare, r_max = summary(maxed["bare"], bare), summary(maxed["gw"], gw)
        warm = in_use(tmp / "reverbere.db")
        show("bare aiocoap, max rate", r_bare)
        show("gateway, max rate", r_max)
        half = min(r_max["messages_per_s"], r_bare["messages_per_s"]) / 2
        halved: dict[str, list] = {"bare": [], "gw": []}
        for _ in range(args.rounds):
            behind.wait()
            halved["bare"].append(
                timed(bare, lambda: bare_load.run(bare_port, slice_s, 10_000, rate=half))
            )
            halved["gw"].append(timed(gw, lambda: gw_load.run(gw_port, slice_s, 10_000, rate=half)))
            behind.note()
        r_bare_half, r_half = summary(halved["bare"], bare), summary(halved["gw"], gw)
        show(f"bare aiocoap, {half:.0f}/s", r_bare_half)
        show(f"gateway, {half:.0f}/s", r_half)
        if args.soak:
            r_soak = summary([timed(gw, lambda: gw_load.run(gw_port, args.soak, args.window))], gw)
            show(f"gateway, max rate {args.soak:.0f} s", r_soak)
            behind.note()
            behind.wait()
        rss = status_kb(gw.pid, "VmHWM") / 1024
        bare_rss = status_kb(bare.pid, "VmHWM") / 1024
    finally:
        bare.terminate()
        gw.send_signal(signal.SIGTERM)
        bare.wait()
        gw.wait()
    db = open_db(tmp / "reverbere.db")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    stored = db.execute("SELECT count(*) FROM readings").fetchone()[0]
    page, count, free = (
        db.execute(f"PRAGMA {p}").fetchone()[0]
        for p in ("page_size", "page_count", "freelist_count")
    )
    readings_pages = (
        db.execute("SELECT count(*) FROM dbstat WHERE name = 'readings'").fetchone()[0]
        if _has_dbstat(db)
        else None
    )
    db.close()
    per_reading = (count - free) * page / stored
    growth = ((count - free) * page - warm[0]) / max(1, stored - warm[1])
    print()
    print(
        f"readings stored: {stored}; database {(count - free) * page / 1e6:.1f} MB in use"
        f" = {per_reading:.1f} bytes/reading"
        + (
            f" (readings table alone {readings_pages * page / stored:.1f})"
            if readings_pages
            else ""
        )
    )
    ratio = r_max["messages_per_s"] / r_bare["messages_per_s"]
    print(f"rate vs bare aiocoap:     {ratio:.2f}   (target >= 0.8)")
    print(
        f"p99 at half rate:         {r_half['p99_ms']:.1f} ms (target < 25 ms;"
        f" bare aiocoap at the same rate: {r_bare_half['p99_ms']:.1f} ms)"
    )
    print(
        f"gateway peak RSS:         {rss:.1f} MB (bare aiocoap {bare_rss:.1f} MB; target < 120 MB"
        + (
            f" over {args.soak:.0f} s)"
            if args.soak
            else "; run --soak 300 for the 5-minute figure)"
        )
    )
    print(
        f"stages behind the acks:   at most {behind.most} readings at the end of a slice;"
        f" caught up in at most {max(behind.catch_up):.1f} s (they run when no pack waits)"
    )
    print(
        f"database growth/reading:  {growth:.1f} bytes (target <= 40; over {stored - warm[1]}"
        f" readings after phase 1; whole file {per_reading:.1f} incl. fixed per-channel rows)"
    )


def in_use(path: Path) -> tuple[int, int]:
    """Bytes of the database in use (WAL included, free pages not) and readings stored."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        page, count, free = (
            db.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("page_size", "page_count", "freelist_count")
        )
        return (count - free) * page, db.execute("SELECT count(*) FROM readings").fetchone()[0]
    finally:
        db.close()


def _has_dbstat(db) -> bool:
    try:
        db.execute("SELECT 1 FROM dbstat LIMIT 1").fetchall()
        return True
    except Exception:
        return False


if __name__ == "__main__":
    main()
