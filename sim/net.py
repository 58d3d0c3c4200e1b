"""A UDP proxy between nodes and the gateway that loses, duplicates, reorders and delays.

Every client (source address) gets its own upstream socket, so the gateway sees one address
per node, as it would in the field. Each datagram's fate (lost, duplicated, held back to be
overtaken, delayed) is drawn from a hash of the seed, the direction, the datagram's bytes and
how often those bytes passed before: a run with the same seed and the same traffic meets the
same faults, whatever the timing of the event loop. Scheduled outages drop everything between
their start and end, on the proxy's clock (wall time, or the fleet's simulated clock).
"""

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Impairments:
    loss: float = 0.0  # probability a datagram is dropped
    duplicate: float = 0.0  # probability it is sent twice
    reorder: float = 0.0  # probability it is held back until the next one passes
    delay: tuple[float, float] = (0.0, 0.0)  # uniform extra delay, real seconds
    outages: list[tuple[float, float]] = field(default_factory=list)  # (start, end), clock time


@dataclass
class NetStats:
    forwarded: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    outage_dropped: int = 0


class _Listen(asyncio.DatagramProtocol):
    def __init__(self, proxy: "LossyProxy"):
        self.proxy = proxy

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.proxy._from_client(data, addr)


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, proxy: "LossyProxy", client):
        self.proxy = proxy
        self.client = client
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.proxy._from_upstream(data, self.client)


class LossyProxy:
    def __init__(
        self,
        upstream: tuple[str, int],
        impairments: Impairments | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
    ):
        self.upstream = upstream
        self.imp = impairments or Impairments()
        self.seed = seed
        self.clock = clock
        self.stats = NetStats()
        self._seen: dict[bytes, int] = {}
        self._held: dict[tuple, list] = {}
        self._clients: dict[tuple, _Upstream] = {}
        self._pending: dict[tuple, list[bytes]] = {}
        self._listen: asyncio.DatagramTransport | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen for nodes on ``host:port`` (0: a free port); return the address bound."""
        loop = asyncio.get_running_loop()
        self._listen, _ = await loop.create_datagram_endpoint(
            lambda: _Listen(self), local_addr=(host, port)
        )
        return self._listen.get_extra_info("sockname")[:2]

    def close(self) -> None:
        if self._listen:
            self._listen.close()
        for up in self._clients.values():
            if up.transport:
                up.transport.close()

    # --- the fate of one datagram --------------------------------------------------------------

    def _draws(self, direction: bytes, data: bytes) -> list[float]:
        h = hashlib.sha256(direction + data).digest()
        n = self._seen.get(h, 0)
        self._seen[h] = n + 1
        d = hashlib.sha256(b"%d:%d:" % (self.seed, n) + h).digest()
        return [int.from_bytes(d[i : i + 4], "big") / 2**32 for i in range(0, 20, 4)]

    def _in_outage(self) -> bool:
        now = self.clock()
        return any(a <= now < b for a, b in self.imp.outages)

    def _pass(self, direction: bytes, data: bytes, flow: tuple, deliver) -> None:
        if self._in_outage():
            self.stats.outage_dropped += 1
            return
        r = self._draws(direction, data)
        imp = self.imp
        if r[0] < imp.loss:
            self.stats.dropped += 1
            return
        copies = 2 if r[1] < imp.duplicate else 1
        self.stats.duplicated += copies - 1
        lo, hi = imp.delay
        delay = lo + (hi - lo) * r[3]
        held = self._held.pop(flow, None)
        if r[2] < imp.reorder and held is None:
            # Hold this one back: the next datagram of the flow overtakes it (or 50 ms pass).
            self.stats.reordered += 1
            loop = asyncio.get_running_loop()
            handle = loop.call_later(0.05, self._release, flow)
            self._held[flow] = [data, copies, deliver, handle]
            return
        for _ in range(copies):
            self._later(delay, deliver, data)
        if held is not None:
            held[3].cancel()
            for _ in range(held[1]):
                self._later(delay, held[2], held[0])

    def _release(self, flow: tuple) -> None:
        held = self._held.pop(flow, None)
        if held is not None:
            for _ in range(held[1]):
                held[2](held[0])

    def _later(self, delay: float, deliver, data: bytes) -> None:
        self.stats.forwarded += 1
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, deliver, data)
        else:
            deliver(data)

    # --- the two directions --------------------------------------------------------------------

    def _from_client(self, data: bytes, addr) -> None:
        up = self._clients.get(addr)
        if up is None:
            up = _Upstream(self, addr)
            self._clients[addr] = up
            self._pending[addr] = []
            asyncio.get_running_loop().create_task(self._connect(up, addr))

        def deliver(d, up=up, addr=addr):
            if up.transport is None:
                self._pending[addr].append(d)
            else:
                up.transport.sendto(d)

        self._pass(b">", data, (addr, ">"), deliver)

    async def _connect(self, up: _Upstream, addr) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: up, remote_addr=self.upstream)
        for d in self._pending.pop(addr, []):
            up.transport.sendto(d)

    def _from_upstream(self, data: bytes, client) -> None:
        def deliver(d, client=client):
            if self._listen is not None:
                self._listen.sendto(d, client)

        self._pass(b"<", data, (client, "<"), deliver)


async def serve(
    listen: tuple[str, int],
    upstream: tuple[str, int],
    impairments: Impairments,
    seed: int = 0,
    report: Callable[[NetStats], None] | None = None,
    every: float = 10.0,
) -> None:
    """Run a proxy until cancelled, reporting its statistics every ``every`` seconds."""
    proxy = LossyProxy(upstream, impairments, seed)
    await proxy.start(*listen)
    try:
        while True:
            await asyncio.sleep(every)
            if report:
                report(proxy.stats)
    finally:
        proxy.close()
