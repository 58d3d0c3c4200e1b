"""Flood benchmark: a legitimate node's ack latency while one host floods the gateway.

    python benchmarks/flood.py [--seconds 8] [--count 300000] [--rate 50]

Loopback only, bounded: each flood stops after ``--count`` datagrams or ``--seconds``, whichever
comes first. The gateway (``reverbere gateway run``) runs in its own process, the flooder in
another, bound to 127.0.0.2 (its own source address, as a host on the network would be); the
legitimate node posts a signed pack every 1/``--rate`` s from 127.0.0.1 in this process and
waits up to 2 s for each answer. Phases, one after the other: no flood, then each kind:

- ``junk``: CON POSTs to /r with Content-Format 17 and CBOR that is no COSE_Mac0 (a tag 35,
  regular expression, as in the finding): 4.00 each, charged to the source;
- ``block1``: first blocks of Block1 uploads that never finish, a new token each: 4.13 each;
- ``forged``: COSE_Mac0s with unknown kids: 4.01 each;
- ``replay``: one pack the node really sent, again and again with new message IDs: 4.01.

Printed per phase: the node's acks, timeouts, latency p50/p99 (target p99 < 50 ms), the
datagrams the flooder sent, the gateway's CPU (% of one core), the most its socket's receive
queue held (KB, sampled every 20 ms) and the datagrams the kernel dropped for it (a banned
source's, ``gateway.ingest.coap.KernelBans``, and overflows alike: ``/proc/net/udp6``), the
load average at the phase's end, and the refusals Python saw, by reason (``/metrics``).
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest import start_process  # noqa: E402  (benchmarks/ingest.py, beside this file)

from gateway.ingest import registry  # noqa: E402
from gateway.store.db import open_db  # noqa: E402
from protocols import coap, cose, senml  # noqa: E402
from protocols.const import CF_COSE_MAC0, CON, CONTENT_FORMAT, POST, URI_PATH  # noqa: E402

KINDS = ("junk", "block1", "forged", "replay")
R = (URI_PATH, b"r")
COSE = (CONTENT_FORMAT, coap.uint_option(CF_COSE_MAC0))


def readings(seq: int) -> bytes:
    t = int(time.time()) // 60 * 60 - 3600 + seq
    return senml.encode([("p", t, 50 + seq % 7)])


def flood(kind: str, port: int, seconds: float, count: int, replayed: bytes) -> None:
    """The flooder's process: send ``kind`` datagrams as fast as the socket takes them."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.2", 0))
    sock.setblocking(False)
    forged = cose.sign(b"\x07" * 32, b"lamp-999", 1, readings(0))
    end, sent = time.monotonic() + seconds, 0
    while sent < count and time.monotonic() < end:
        mid = sent & 0xFFFF
        if kind == "junk":
            wire = coap.encode(CON, POST, mid, b"j", [R, COSE], b"\xd8\x23\x63(a*")
        elif kind == "block1":
            token = sent.to_bytes(4, "big")
            wire = coap.encode(CON, POST, mid, token, [R, COSE, (27, b"\x0e")], b"b" * 1024)
        elif kind == "forged":
            wire = coap.encode(CON, POST, mid, b"f", [R, COSE], forged)
        else:
            wire = coap.encode(CON, POST, mid, b"r", [R, COSE], replayed)
        try:
            sock.sendto(wire, ("127.0.0.1", port))
            sent += 1
        except (BlockingIOError, OSError):
            pass
        if sent % 256 == 0:  # drop the answers the gateway sends back
            try:
                while sock.recv(4096):
                    pass
            except BlockingIOError:
                pass
    print(json.dumps({"sent": sent}), flush=True)


class Node:
    """The legitimate node: one signed pack every ``period`` s, answers awaited (2 s)."""

    def __init__(self, key: bytes, port: int):
        self.key, self.port, self.seq = key, port, 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2.0)
        self.first = b""

    def run(self, seconds: float, period: float) -> tuple[list[float], int]:
        lat, lost = [], 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.seq += 1
            pack = cose.sign(self.key, b"lamp-001", self.seq, readings(self.seq))
            self.first = self.first or pack
            mid = self.seq & 0xFFFF
            t0 = time.perf_counter()
            self.sock.sendto(
                coap.encode(CON, POST, mid, b"n", [R, COSE], pack), ("127.0.0.1", self.port)
            )
            try:
                while coap.decode(self.sock.recv(4096)).mid != mid:
                    pass
                lat.append((time.perf_counter() - t0) * 1000)
            except TimeoutError:
                lost += 1
            time.sleep(max(0.0, period - (time.perf_counter() - t0)))
        return lat, lost


def rejected(http_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("reverbere_packs_rejected_total{"):
            out[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
    return out


class SocketWatch(threading.Thread):
    """Samples the gateway's UDP socket in ``/proc/net/udp6``: the receive queue's peak and
    the kernel's drop counter (which counts what a socket filter refused, too)."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.suffix = f":{port:04X}"
        self.peak, self.drops, self.stop = 0, 0, threading.Event()

    def sample(self) -> tuple[int, int]:
        for line in Path("/proc/net/udp6").read_text().splitlines()[1:]:
            f = line.split()
            if f[1].endswith(self.suffix):
                return int(f[4].split(":")[1], 16), int(f[-1])
        return 0, 0

    def run(self) -> None:
        while not self.stop.wait(0.02):
            queue, self.drops = self.sample()
            self.peak = max(self.peak, queue)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0, help="per phase (and flood bound)")
    ap.add_argument("--count", type=int, default=300000, help="datagrams per flood at most")
    ap.add_argument("--rate", type=float, default=50.0, help="the node's packs a second")
    ap.add_argument("--flood", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--replayed", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.flood:
        return flood(args.flood, args.port, args.seconds, args.count, bytes.fromhex(args.replayed))

    tmp = Path(tempfile.mkdtemp(prefix="reverbere-flood-"))
    cfg = tmp / "gateway.toml"
    cfg.write_text("")
    db = open_db(tmp / "reverbere.db")
    key = registry.add_node(db, "lamp-001")
    db.close()
    gw, rec = start_process(
        [sys.executable, "-m", "gateway", "gateway", "run", "--config", str(cfg),
         "--coap", "127.0.0.1:0", "--http", "127.0.0.1:0"],
        cwd=ROOT,
    )  # fmt: skip
    try:
        port, http_port = rec["coap_port"], rec["http_port"]
        node = Node(key, port)
        print(f"load average {os.getloadavg()[0]:.1f} (other work on this machine shows here)")
        print(
            f"{'phase':<8} {'acks':>5} {'lost':>4} {'p50 ms':>7} {'p99 ms':>7} {'sent':>7} "
            f"{'CPU %':>5} {'queue KB':>8} {'kernel drops':>12} {'load':>4}  refused in Python"
        )
        watch = SocketWatch(port)
        watch.start()
        for kind in (None, *KINDS):
            before = rejected(http_port)
            cpu0, drops0, watch.peak, t0 = cpu_seconds(gw.pid), watch.drops, 0, time.monotonic()
            flooder = None
            if kind is not None:
                flooder = subprocess.Popen(
                    [sys.executable, __file__, "--flood", kind, "--port", str(port),
                     "--seconds", str(args.seconds), "--count", str(args.count),
                     "--replayed", node.first.hex()],
                    stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
            lat, lost = node.run(args.seconds, 1 / args.rate)
            sent = json.loads(flooder.communicate(timeout=60)[0])["sent"] if flooder else 0
            cpu = 100 * (cpu_seconds(gw.pid) - cpu0) / (time.monotonic() - t0)
            after = rejected(http_port)
            refused = {
                k: int(v - before.get(k, 0)) for k, v in after.items() if v > before.get(k, 0)
            }
            q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [float("nan")] * 99
            print(
                f"{kind or 'none':<8} {len(lat):>5} {lost:>4} {q[49]:>7.1f} {q[98]:>7.1f} "
                f"{sent:>7} {cpu:>5.0f} {watch.peak // 1024:>8} {watch.drops - drops0:>12} "
                f"{os.getloadavg()[0]:>4.1f}  {refused}",
                flush=True,
            )
            time.sleep(1.0)  # the flooder's budget refills between phases (20/s, 100 at most)
        print(f"gateway RSS {rss_mb(gw.pid):.0f} MB at the end")
    finally:
        gw.terminate()
        gw.wait(10)


if __name__ == "__main__":
    main()
