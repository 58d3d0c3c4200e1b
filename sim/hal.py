"""The node's HAL on CPython (see firmware/hal.py): a simulated clock, profile sensors, UDP.

The firmware code runs unchanged on top of it. Time is the fleet's ``SimClock`` (Unix seconds,
moving faster than real time); flash and files are RAM (``MemDev``, ``MemFS``), so a node can
"lose power" and boot again from the same flash; datagrams go out through the fleet's asyncio
transport for this node.
"""

import random
import runpy
from collections.abc import Callable
from pathlib import Path

from firmware import ota
from firmware.hal import MemDev, MemFS
from sim.profiles import Profile

# The real boot shim (firmware/boot/fwboot.py), run as is on a node's directory.
_SHIM = runpy.run_path(str(Path(__file__).resolve().parent.parent / "firmware/boot/fwboot.py"))
# A file that makes a simulated slot crash at boot: how the simulator ships a broken version
# (sim.demo's deliberately broken update). The real shim then rolls it back after its tries.
CRASH = "crash-at-boot"


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
        self.firmware: SimFirmware | None = None  # set by the fleet: updates over the air

    @property
    def files(self):  # read by firmware/node.py: None, no updates
        return self.firmware.files if self.firmware else None

    def reset(self) -> None:
        if self.firmware:
            self.firmware.reset()

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


class SimFirmware:
    """A node's filesystem for updates over the air: a directory (``files``, the same
    ``OsFiles`` a board uses) flashed with slot "a" as version 0, and a reset that the fleet
    carries out (``boot``) by running the real boot shim on it."""

    def __init__(self, root: Path):
        self.root = root
        (root / "fw" / "a").mkdir(parents=True, exist_ok=True)
        if not (root / "fw" / "current").exists():
            (root / "fw" / "current").write_text("a")
        self.files = ota.OsFiles(str(root))
        self.wanted = False  # the node asked for a reset
        self.boots = 0
        self.crashes = 0

    def reset(self) -> None:
        self.wanted = True

    def boot(self) -> str | None:
        """What the board does after a reset: the shim picks a slot; a slot that crashes
        (``CRASH``) resets again, each boot counted by the shim, until it gives the slot up."""
        self.wanted = False
        for _ in range(_SHIM["TRIES"] + 2):
            self.boots += 1
            slot = _SHIM["choose"](str(self.root))
            if slot is None or not (self.root / "fw" / slot / CRASH).exists():
                return slot
            self.crashes += 1
        return slot
