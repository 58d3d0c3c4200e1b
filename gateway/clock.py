"""Whether the gateway can trust its own clock, and by how much it seems to be off.

A Raspberry Pi has no real-time clock: at boot without network its time is the last one saved
(fake-hwclock, systemd-timesyncd), possibly days behind, until NTP answers. The gateway hands
its time to every node in the 2.04 answer (docs/protocol.md), and a node stamps its readings
with it, so a wrong gateway clock would spread to the whole fleet. ``ClockWatch`` says whether
to trust it, from three witnesses:

- the kernel (``adjtimex``): ``STA_UNSYNC`` stays set until an NTP daemon disciplines the clock,
  so ``TIME_ERROR`` means "not synchronised". Without any time service it is set for ever,
  even on a machine whose clock is right (a VM kept by its host): it is heard only while a time
  service runs (``TIME_SERVICES``);
- systemd-timesyncd's flag ``/run/systemd/timesync/synchronized``, touched at each successful
  synchronisation (absent until the first one after boot);
- the readings: authenticated packs with absolute times from at least ``min_nodes`` distinct
  nodes whose median offset (newest reading minus the gateway's time) is beyond ``bound``.
  Only "nodes ahead" counts: a node cannot sample in the future, while a node behind may just
  be sending old readings (backfill after an outage), so a gateway *ahead* of its nodes is not
  seen this way; the Pi's failure is to be behind.

While the clock is not trusted the gateway leaves its time out of the 2.04 answer (the node
keeps its own clock, or keeps sending relative times), and measures reading times against
``reference()``: its clock plus the fleet's offset, so that good readings are not refused.
"""

import ctypes
import ctypes.util
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.logs import event

log = logging.getLogger("reverbere.clock")

TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")
# Paths that exist while a time service runs (timesyncd's RuntimeDirectory=, chronyd's and
# ntpd's run files; not an "enabled" symlink, which a container without systemd has too):
# without one, the kernel's STA_UNSYNC is never cleared and says nothing about the clock.
TIME_SERVICES = (
    Path("/run/systemd/timesync"),
    Path("/run/chrony"),
    Path("/run/ntpd.pid"),
)
TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised (STA_UNSYNC or STA_CLOCKERR)
BOUND = 300.0  # seconds: a fleet median offset beyond this says the gateway is behind
MIN_NODES = 3  # distinct nodes that must agree before their offset is believed
WINDOW = 900.0  # seconds (monotonic) an offset sample counts
CHECK_EVERY = 10.0  # seconds (monotonic) between two readings of the system's witnesses


def kernel_synchronized() -> bool | None:
    """The kernel's word (``adjtimex`` with no change, which any user may call): False while
    ``STA_UNSYNC`` is set, None where it cannot be asked (not Linux, no libc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        adjtimex = libc.adjtimex
    except (OSError, AttributeError):
        return None
    buf = ctypes.create_string_buffer(512)  # struct timex (208 bytes on 64-bit), modes = 0
    state = adjtimex(buf)
    if state < 0:
        return None
    return state != TIME_ERROR


def timesyncd_synchronized(flag: Path = TIMESYNCD_FLAG) -> bool | None:
    """systemd-timesyncd's word: True once it synchronised since boot, False while its run
    directory exists without the flag, None where it does not run."""
    if flag.exists():
        return True
    return False if flag.parent.is_dir() else None


def system_witnesses(
    services: tuple[Path, ...] = TIME_SERVICES, flag: Path = TIMESYNCD_FLAG
) -> dict[str, bool | None]:
    """What the operating system says of its clock: ``{"kernel": ..., "timesyncd": ...}``,
    each True, False or None (no opinion)."""
    kernel = kernel_synchronized() if any(p.exists() for p in services) else None
    return {"kernel": kernel, "timesyncd": timesyncd_synchronized(flag)}


@dataclass(frozen=True)
class ClockState:
    """What the console and ``/metrics`` show: ``offset`` is the fleet's estimate of how far
    the gateway is behind (seconds, None without enough nodes), ``witnesses`` each source's
    word (True, False or None)."""

    synchronized: bool
    offset: float | None
    nodes: int  # distinct nodes behind the offset
    witnesses: dict[str, bool | None] = field(default_factory=dict)


@dataclass
class _Sample:
    mono: float  # time.monotonic() when seen
    wall: float  # the gateway's time then
    offset: float  # newest reading time minus ``wall``


class ClockWatch:
    """The gateway's trust in ``clock``: feed it with ``observe``, ask ``state``.

    ``system`` returns the operating system's witnesses (``system_witnesses``); they describe
    the system clock, so a gateway run on another clock (a test's) passes one that describes
    it. ``monotonic`` ages the samples and notices steps of ``clock``: an offset measured
    before NTP stepped the clock is corrected by the step, not thrown away.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        system: Callable[[], dict[str, bool | None]] = system_witnesses,
        monotonic: Callable[[], float] = time.monotonic,
        bound: float = BOUND,
        min_nodes: int = MIN_NODES,
        window: float = WINDOW,
    ):
        self.clock = clock
        self.system = system
        self.monotonic = monotonic
        self.bound = bound
        self.min_nodes = min_nodes
        self.window = window
        self._samples: dict[str, _Sample] = {}
        self._system: dict[str, bool | None] = {}
        self._checked = float("-inf")
        self._state: ClockState | None = None

    def observe(self, node_id: str, newest: float) -> None:
        """An authenticated pack of ``node_id`` whose newest absolute reading time is
        ``newest``; per node the freshest sample in the window is kept (packs of backfill,
        older readings, do not displace it)."""
        mono, wall = self.monotonic(), self.clock()
        old = self._samples.get(node_id)
        offset = newest - wall
        if old is None or mono - old.mono > self.window or offset >= self._corrected(old, mono):
            self._samples[node_id] = _Sample(mono, wall, offset)

    def _corrected(self, s: _Sample, mono: float, wall: float | None = None) -> float:
        """``s.offset`` against the clock as it is now: minus whatever the clock was stepped
        by since (its change beyond the monotonic time that passed)."""
        wall = self.clock() if wall is None else wall
        return s.offset - ((wall - s.wall) - (mono - s.mono))

    def offset(self) -> tuple[float | None, int]:
        """``(median offset, nodes)`` over the nodes seen within the window; the offset is
        None with fewer than ``min_nodes`` of them."""
        mono, wall = self.monotonic(), self.clock()
        for node in [n for n, s in self._samples.items() if mono - s.mono > self.window]:
            del self._samples[node]
        offsets = [self._corrected(s, mono, wall) for s in self._samples.values()]
        if len(offsets) < self.min_nodes:
            return None, len(offsets)
        return statistics.median(offsets), len(offsets)

    def state(self) -> ClockState:
        """The state now; one log line each time ``synchronized`` changes."""
        mono = self.monotonic()
        if mono - self._checked >= CHECK_EVERY:
            self._system, self._checked = self.system(), mono
        offset, nodes = self.offset()
        fleet = None if offset is None else offset <= self.bound
        witnesses = {**self._system, "readings": fleet}
        synchronized = False not in witnesses.values()
        state = ClockState(synchronized, offset, nodes, witnesses)
        if self._state is None or self._state.synchronized != synchronized:
            event(
                log,
                logging.INFO if synchronized else logging.WARNING,
                "clock synchronized" if synchronized else "clock not synchronized",
                offset=None if offset is None else round(offset, 1),
                nodes=nodes,
                **witnesses,
            )
        self._state = state
        return state

    def reference(self, state: ClockState | None = None) -> float:
        """The best time the gateway has: its clock, plus the fleet's offset while the clock
        is not trusted and enough nodes are ahead of it."""
        state = self.state() if state is None else state
        now = self.clock()
        if not state.synchronized and state.offset is not None and state.offset > 0:
            return now + state.offset
        return now


def console_state(watch: ClockWatch) -> dict[str, object]:
    """The clock's state for the operators' console (a plain dict, ready for a template or
    JSON): whether it is trusted, the estimated offset, and what each witness said."""
    s = watch.state()
    return {
        "synchronized": s.synchronized,
        "offset_s": s.offset,
        "nodes": s.nodes,
        "witnesses": dict(s.witnesses),
        "time": watch.clock(),
    }
