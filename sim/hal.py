"""The node's HAL on CPython (see firmware/hal.py): a simulated clock, profile sensors, UDP.

The firmware code runs unchanged on top of it. Time is the fleet's ``SimClock`` (Unix seconds,
moving faster than real time); flash and files are RAM (``MemDev``, ``MemFS``), so a node can
"lose power" and boot again from the same flash; datagrams go out through the fleet's asyncio
transport for this node.
"""

import random
from collections.abc import Callable

from firmware.hal import MemDev, MemFS
from sim.profiles import Profile


class SimClock:
    """Simulated Unix time, moved forward by the fleet's scheduler."""

    def __init__(self, start: float):
        self.now = float(start)

    def __call__(self) -> float:
        return self.now


class SimHal:
    def __init__(
        self,
        node: str,
        clock: SimClock,
        profile: Profile,
        send: Callable[[bytes], None],
        seed: int = 0,
        store_kb: int = 16,
        know_time: bool = True,
        until: float | None = None,
    ):
        self.node = node
        self.clock = clock
        self.profile = profile
        self._send = send
        self.rng = random.Random(f"hal:{seed}:{node}")
        self.dev = MemDev(store_kb * 1024)
        self.fs = MemFS()
        self.know_time = know_time
        self.until = until  # sensors give nothing from then on (the fleet is draining)
        self.boot_at = float(int(clock.now))  # whole seconds: node time == int(clock)
        self.sampled: list[tuple[str, int]] | None = None  # (channel, time) when recording
        self.sent = 0
        self.reads = 0

    def boot(self) -> None:
        """Power comes back: the monotonic clock starts again from zero."""
        self.boot_at = float(int(self.clock.now))

    def ms(self) -> int:
        return round((self.clock.now - self.boot_at) * 1000)

    def unix(self) -> int | None:
        return int(self.boot_at) + self.ms() // 1000 if self.know_time else None

    def set_unix(self, t: int) -> None:
        pass  # the simulated clock is the truth

    def read(self, ch: str) -> float | None:
        t = self.clock.now
        if self.until is not None and t >= self.until:
            return None
        v = self.profile.read(ch, t)
        if v is not None:
            self.reads += 1
            if self.sampled is not None:  # the time the node gives this reading
                self.sampled.append((ch, int(self.boot_at) + self.ms() // 1000))
        return v

    def send(self, data: bytes) -> None:
        self.sent += 1
        self._send(data)

    def urandom(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def feed(self) -> None:
        pass

    def led(self, on: bool) -> None:
        pass
