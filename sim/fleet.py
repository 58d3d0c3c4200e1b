"""A fleet of simulated nodes, each running the real firmware (firmware/node.py) on sim/hal.py.

All nodes live in one process and one asyncio loop; each has its own UDP socket on loopback, so
the gateway (or a ``sim.net`` proxy in front of it) sees one address per node, as in the field.

Time is simulated (``SimClock``) and runs as fast as the traffic allows: the scheduler jumps
to the next instant a node has something to do (wake-ups are rounded up to ``tick``, 1 s, so
that nodes share instants and the gateway sees bursts it can commit together), runs every
node due then, and, if they sent
datagrams, waits (in real time) until their exchanges are answered or the network has been
quiet for ``quiet`` seconds, before moving time on. Readings carry their own timestamps, so
nothing downstream depends on the pace. ``speed`` caps it (simulated seconds per real second),
for a demo that should look alive.

    stats = await run_fleet(100, ("127.0.0.1", 5683), duration=86400)
"""

import asyncio
import heapq
import json
import random
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from firmware import config
from firmware.node import Node
from sim.hal import SimClock, SimFirmware, SimHal
from sim.profiles import Anomaly, Building, Profile, StreetLight, closing_days, plan_anomalies

BUILDING_SHARE = 0.2  # one node in five meters a public building, the rest are street lights
# The fleet waits for answers at least SLOW_FACTOR times the gateway's recent answer time (an
# average weighted ANSWER_WEIGHT to the newest), each answer counted up to SLOW_MAX seconds.
SLOW_FACTOR = 3.0
ANSWER_WEIGHT = 0.05
SLOW_MAX = 0.25


@dataclass
class FleetStats:
    nodes: int
    sim_seconds: float
    wall_seconds: float
    speedup: float  # simulated seconds per real second
    readings: int  # sampled and stored by the nodes
    packs: int  # packs built and sent (first transmissions)
    acked: int  # packs acknowledged with 2.xx
    failed: int  # exchanges that gave up or were refused (then retried)
    datagrams: int  # datagrams the nodes sent, retransmissions included
    dropped: int  # readings the nodes dropped (buffer full)
    pending: int  # readings still in the nodes' buffers at the end
    anomalies: int

    def as_dict(self) -> dict:
        return asdict(self)


def make_keys(n: int, seed: int = 0) -> dict[str, bytes]:
    """``n`` node ids and 32-byte keys, reproducible from ``seed``: lamps, then buildings."""
    rng = random.Random(f"keys:{seed}")
    buildings = round(n * BUILDING_SHARE)
    ids = [f"lamp-{i + 1:03d}" for i in range(n - buildings)]
    ids += [f"bldg-{i + 1:03d}" for i in range(buildings)]
    return {node: rng.randbytes(32) for node in ids}


def kind_of(node: str) -> str:
    return "building" if node.startswith("bldg") else "lamp"


def make_profile(
    node: str,
    seed: int,
    anomalies: list[Anomaly],
    closed: list[int] | tuple[int, ...] = (),
    lamp_schedule: dict | None = None,
) -> Profile:
    """The energy profile of ``node`` as the fleet runs it: a ``Building`` closed on the
    ``closed`` local dates, or a ``StreetLight`` on the cabinet's ``lamp_schedule``; with the
    node's own anomalies of ``anomalies``."""
    mine = tuple(a for a in anomalies if a.node == node)
    if kind_of(node) == "building":
        return Building(node, seed, mine, closing_days=closed)
    return StreetLight(node, seed, mine, **(lamp_schedule or {}))


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, fleet: "Fleet", idx: int):
        self.fleet = fleet
        self.idx = idx
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.fleet._datagram(self.idx, data)

    def error_received(self, exc):
        pass  # ICMP port unreachable while the gateway is down: the node retransmits


class _Member:
    def __init__(self, node_id, key, hal, cfg, sock):
        self.id = node_id
        self.key = key
        self.hal = hal
        self.cfg = cfg
        self.sock = sock
        self.node = Node(hal, cfg)
        self.version = 0  # invalidates stale entries in the scheduler's heap
        self.off_until: float | None = None  # powered off (a "silent" anomaly) until then
        self.before: dict[str, int] = {}  # statistics of the node's earlier boots

    def reboot(self) -> None:
        for k, v in self.node.stats.items():
            self.before[k] = self.before.get(k, 0) + v
        self.hal.boot()
        self.node = Node(self.hal, self.cfg)

    def total(self, stat: str) -> int:
        return self.before.get(stat, 0) + self.node.stats[stat]


class Fleet:
    """N virtual nodes; ``await Fleet(...).run()`` simulates ``duration`` seconds."""

    def __init__(
        self,
        keys: dict[str, bytes],
        gateway: tuple[str, int],
        start: float | None = None,
        duration: float = 86400,
        seed: int = 0,
        anomalies: list[Anomaly] | int = 0,
        speed: float | None = None,
        quiet: float = 0.005,
        tick: float = 1.0,
        drain: float = 3600,
        know_time: bool = True,
        record: bool = False,
        store_kb: int = 16,
        node_config: dict | None = None,
        firmware_dir: str | Path | None = None,
        timer: tuple[float, Callable[[float], None]] | None = None,
        lamp_schedule: dict | None = None,
        closed: list[int] | None = None,
        profiles: dict[str, Profile] | None = None,
    ):
        self.keys = keys
        # Updates over the air: each node's filesystem in firmware_dir/<node> (sim/hal.py).
        self.firmware_dir = Path(firmware_dir) if firmware_dir is not None else None
        # (period, fn): fn(simulated time) every period simulated seconds, e.g. a rollout's
        # steps, in step with the fleet's time however fast it runs.
        self.timer = timer
        # The street lights' cabinet schedule (sim.profiles.StreetLight's dim, dim_level,
        # switch_off), the same as the gateway's [[detect.lighting]] says; None: the default.
        self.lamp_schedule = lamp_schedule or {}
        self.gateway = gateway
        self.start = float(int(start if start is not None else time.time() - duration))
        self.duration = duration
        self.seed = seed
        # The town's closing days (local dates): its buildings are closed then. ``closed``
        # gives them (the demo's: the town's public holidays and its own closing day).
        self.closing_days = closing_days(self.start, duration) if closed is None else closed
        # The nodes' profiles as a past left them (sim/history.py): counters run on.
        self.profiles = profiles or {}
        if isinstance(anomalies, int):
            kinds = {n: kind_of(n) for n in keys}
            anomalies = plan_anomalies(
                kinds, self.start, duration, anomalies, seed, self.closing_days
            )
        self.anomalies = anomalies
        self.speed = speed
        self.quiet = quiet
        self._tick = max(1, round(tick * 1000))
        self.drain = drain
        self.know_time = know_time
        self.record = record
        self.store_kb = store_kb
        self.node_config = node_config or {}
        self.clock = SimClock(self.start)
        self.members: list[_Member] = []
        self._heap: list[tuple[int, int, int, int]] = []  # (ms since start, seq, node, version)
        self._seq = 0
        self._activity = asyncio.Event()
        self._batch: set[int] = set()
        # How long (wall seconds) the gateway has lately taken to answer a node's datagram: a
        # loaded machine answers in tens of milliseconds, not in ``quiet``.
        self._answer_time = 0.0
        self._sent_at: dict[int, float] = {}  # node -> when it last sent (wall)

    # --- set-up --------------------------------------------------------------------------------

    def _profile(self, node: str) -> Profile:
        if node in self.profiles:
            return self.profiles[node]
        return make_profile(node, self.seed, self.anomalies, self.closing_days, self.lamp_schedule)

    def _config(self, node: str, key: bytes, profile: Profile) -> dict:
        cfg = {
            "node": node,
            "key": key.hex(),
            "gateway": self.gateway[0],
            "port": self.gateway[1],
            "channels": dict(profile.channels),
            "sync_time": not self.know_time,
            "store_kb": self.store_kb,
            "backoff_max": 300,
        }
        cfg.update(self.node_config)
        return config.validate(cfg)

    async def _open(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 3 * len(self.keys) + 256  # node sockets, and a proxy's upstream sockets
        if soft < want <= hard or (soft < want and hard == resource.RLIM_INFINITY):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        loop = asyncio.get_running_loop()
        end = self.start + self.duration
        for idx, (node, key) in enumerate(self.keys.items()):
            sock = _Socket(self, idx)
            await loop.create_datagram_endpoint(lambda s=sock: s, remote_addr=self.gateway)
            profile = self._profile(node)

            def send(data, sock=sock, idx=idx):
                self._batch.add(idx)
                self._sent_at[idx] = time.monotonic()
                sock.transport.sendto(data)

            hal = SimHal(
                node, self.clock, profile, send, self.seed, self.store_kb, self.know_time, end
            )
            if self.record:
                hal.sampled = []
            if self.firmware_dir is not None:
                hal.firmware = SimFirmware(self.firmware_dir / node)
            self.members.append(_Member(node, key, hal, self._config(node, key, profile), sock))
            self._schedule(idx, self.start)

    def _close(self) -> None:
        for m in self.members:
            if m.sock.transport:
                m.sock.transport.close()

    # --- the scheduler -------------------------------------------------------------------------

    def _schedule(self, idx: int, t: float) -> None:
        """Wake node ``idx`` at Unix time ``t``, rounded up to the next tick (whole ms)."""
        m = self.members[idx]
        m.version += 1
        self._seq += 1
        ms = round((t - self.start) * 1000)
        ms = -(-ms // self._tick) * self._tick
        heapq.heappush(self._heap, (ms, self._seq, idx, m.version))

    def _now_ms(self) -> int:
        return round((self.clock.now - self.start) * 1000)

    def _step(self, idx: int) -> None:
        m = self.members[idx]
        now = self.clock.now
        if m.off_until is not None:
            if now < m.off_until:
                self._schedule(idx, m.off_until)
                return
            m.off_until = None  # power is back: boot from the same flash
            m.reboot()
        else:
            silent = m.hal.profile.silent(now)
            if silent is not None:
                m.off_until = silent.end
                self._schedule(idx, silent.end)
                return
        ms = m.node.poll()
        if m.hal.firmware is not None and m.hal.firmware.wanted:  # an update switched slots
            m.hal.firmware.boot()
            m.reboot()
            ms = m.node.poll()
        wake = self.start + (self._now_ms() + max(ms, 1)) / 1000
        for a in m.hal.profile.anomalies:  # be there when the power goes
            if a.kind == "silent" and now < a.start < wake:
                wake = a.start
        self._schedule(idx, wake)

    def _datagram(self, idx: int, data: bytes) -> None:
        m = self.members[idx]
        self._activity.set()
        sent = self._sent_at.pop(idx, None)
        if sent is not None:  # how long the gateway took to answer it, late or not
            took = min(time.monotonic() - sent, SLOW_MAX)
            self._answer_time += ANSWER_WEIGHT * (took - self._answer_time)
        if m.off_until is not None:
            return
        m.node.datagram(data)
        if m.hal.firmware is not None and m.hal.firmware.wanted:
            m.hal.firmware.boot()
            m.reboot()
        self._step(idx)

    def _waiting(self) -> bool:
        """Some node that sent in this instant still waits for its answer."""
        for idx in self._batch:
            link = self.members[idx].node.link
            if link.busy() and link.tries >= 0:
                return True
        return False

    async def _settle(self) -> None:
        """Wait until this instant's exchanges are answered, or until nothing has arrived for
        ``quiet`` seconds (what is missing then was lost: time may move on). The first answer
        of a large burst may take longer: the receiver has the whole burst to read. And a
        gateway on a loaded machine answers late, not never: each wait is at least
        ``SLOW_FACTOR`` times its recent answer time (up to ``SLOW_MAX``). Moving simulated
        time on instead (at 2,000x, 50 ms are 100 simulated seconds) made its nodes time out,
        back off and deliver their readings half an hour after the others': the gateway rightly
        called them silent, and the demo counted false ``silent`` events."""
        slow = SLOW_FACTOR * self._answer_time
        wait = max(self.quiet, 0.0005 * len(self._batch), slow)
        while self._waiting():
            self._activity.clear()
            try:
                await asyncio.wait_for(self._activity.wait(), wait)
            except TimeoutError:
                return
            wait = max(self.quiet, slow)

    def _drained(self) -> bool:
        return all(
            m.off_until is None and not m.node.link.busy() and not m.node.store.pending()
            for m in self.members
        )

    async def run(self) -> FleetStats:
        await self._open()
        wall0 = time.monotonic()
        end = round(self.duration * 1000)
        timer_at = self.start
        try:
            while self._heap:
                t = self._heap[0][0]
                if t >= end and (t >= end + self.drain * 1000 or self._drained()):
                    break
                if self.speed:
                    ahead = t / 1000 / self.speed - (time.monotonic() - wall0)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                t = max(self._now_ms(), t)
                self.clock.now = self.start + t / 1000
                if self.timer is not None and self.clock.now >= timer_at:
                    self.timer[1](self.clock.now)
                    timer_at = self.clock.now + self.timer[0]
                self._batch.clear()
                # Everything due at this instant, then let the network answer.
                while self._heap and self._heap[0][0] <= t:
                    _, _, idx, version = heapq.heappop(self._heap)
                    if version == self.members[idx].version:
                        self._step(idx)
                if self._batch:
                    await self._settle()
                else:
                    await asyncio.sleep(0)
        finally:
            self._close()
        return self._stats(time.monotonic() - wall0)

    def _stats(self, wall: float) -> FleetStats:
        ns = [m.node for m in self.members]
        sim = self.clock.now - self.start
        return FleetStats(
            nodes=len(ns),
            sim_seconds=sim,
            wall_seconds=wall,
            speedup=sim / wall if wall else 0.0,
            readings=sum(m.hal.reads for m in self.members),
            packs=sum(m.total("packs") for m in self.members),
            acked=sum(m.total("acked") for m in self.members),
            failed=sum(m.total("failed") for m in self.members),
            datagrams=sum(m.hal.sent for m in self.members),
            dropped=sum(n.store.drops for n in ns),
            pending=sum(n.store.pending() for n in ns),
            anomalies=len(self.anomalies),
        )

    def sampled(self) -> set[tuple[str, str, int]]:
        """(node, channel, time) of every reading the nodes made (``record=True``)."""
        return {(m.id, ch, t) for m in self.members for ch, t in (m.hal.sampled or ())}

    def write_truth(self, path: str | Path) -> None:
        """The injected anomalies, one JSON object per line: node, channel, kind, start, end."""
        with open(path, "w") as f:
            for a in self.anomalies:
                f.write(json.dumps(a.as_json()) + "\n")


async def run_fleet(
    nodes: int | dict[str, bytes],
    gateway: tuple[str, int],
    *,
    start: float | None = None,
    duration: float = 86400,
    speed: float | None = None,
    seed: int = 0,
    anomalies: list[Anomaly] | int = 0,
    truth: str | Path | None = None,
    **options,
) -> FleetStats:
    """Simulate ``nodes`` (a count, or node id -> key) sending to ``gateway`` for ``duration``.

    ``truth``: where to write the injected anomalies (JSON lines). Other ``options`` go to
    ``Fleet`` (quiet, drain, know_time, record, store_kb, node_config).
    """
    keys = make_keys(nodes, seed) if isinstance(nodes, int) else nodes
    fleet = Fleet(keys, gateway, start, duration, seed, anomalies, speed, **options)
    if truth is not None:
        fleet.write_truth(truth)
    return await fleet.run()


class KeysError(Exception):
    """A keys file that cannot be used; ``hint`` says what to do."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.hint = hint


def load_keys(path: str | Path) -> dict[str, bytes]:
    """Node keys from a JSON file: {"lamp-001": "<64 hex digits>", ...}."""
    try:
        raw = json.loads(Path(path).read_text())
        keys = {str(node): bytes.fromhex(k) for node, k in raw.items()}
    except (OSError, ValueError, AttributeError) as e:
        raise KeysError(
            f"{path}: not a JSON object of node id -> 64 hex digits ({e})",
            "delete it to have keys generated, or write one per node",
        ) from None
    bad = [node for node, k in keys.items() if len(k) != 32]
    if bad:
        raise KeysError(f"{path}: keys of {', '.join(bad)} are not 32 bytes", "64 hex digits")
    return keys


def save_keys(path: str | Path, keys: dict[str, bytes]) -> None:
    """Write keys as load_keys reads them (mode 0600: they are secrets)."""
    p = Path(path)
    p.write_text(json.dumps({node: k.hex() for node, k in keys.items()}, indent=1) + "\n")
    p.chmod(0o600)


def gateway_keys(config_path: str | Path, ids: list[str]) -> dict[str, bytes]:
    """Keys for ``ids`` from the gateway's registry: new nodes are added, known ones get a new
    key and a fresh counter (a simulated node boots with empty flash: its counter restarts)."""
    from gateway import config as gw_config
    from gateway.ingest import registry
    from gateway.store.db import open_db

    db = open_db(gw_config.load(config_path).database)
    try:
        keys = {}
        for node in ids:
            found = registry.lookup(db, node)
            keys[node] = registry.rotate_key(db, node) if found else registry.add_node(db, node)
        return keys
    finally:
        db.close()
