"""The stage scheduler: the committer's loop, which gives the turns to the group commit
(gateway/store/group.py) and to the after-commit stages, and what the stages owe.

Ingest comes first: while packs wait, the group commit commits them and the stages wait; they
run once no pack came for ``STAGES_IDLE`` (5 ms), in slices of ``STAGE_SLICE`` readings so
that a pack that comes meanwhile does not wait long, or, when they are ``STAGES_LAG_MAX``
(30 s) behind, as many readings after each commit as it stored, so that they keep pace with a
gateway that is never idle. What they owe is held in memory up to ``OWED_IN_MEMORY`` readings
and read back from ``stages_pending`` beyond (gateway/store/readings.py); the gauges
``reverbere_stage_backlog_readings`` and ``reverbere_stage_lag_seconds`` show how far behind
they are. Once every stage ran on a commit, its ``seq`` goes in ``processed``, and the next
commit deletes its log. ``catch_up`` replays at start what an earlier run left owed.
The stages run in the writer thread (gateway/store/thread.py) between commits, so they take
no turn of their own; the WAL is checkpointed after their slices too (gateway/store/checkpoint.py).
"""

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from gateway.logs import event
from gateway.store.checkpoint import Checkpointer
from gateway.store.group import GroupCommit
from gateway.store.readings import forget_logged, logged_readings, oldest_logged, pending_readings
from gateway.store.records import Reading
from gateway.store.thread import WriterThread

log = logging.getLogger("reverbere.store")

AfterCommit = Callable[[sqlite_utils.Database, list[Reading]], None]

OWED_IN_MEMORY = 5_000  # readings owed to the stages kept in memory; more are read back
# (held longer, they are objects every full garbage collection walks: the ack latency tail)
STAGES_LAG_MAX = 30.0  # seconds: stages this far behind run between commits even when busy
STAGE_SLICE = 200  # readings per call of the stages (a pack that comes meanwhile waits for it)
STAGES_IDLE = 0.005  # seconds without a pack before the stages run


@dataclass
class _Owed:
    """A commit whose stages have not all run yet."""

    seq: int
    readings: list[Reading] | None  # None: read back from ``stages_pending`` when its turn comes
    n: int  # readings it stored
    kept: bool  # its readings are held in memory (counted in ``OWED_IN_MEMORY``)
    at: float = field(default_factory=time.monotonic)  # when it was committed
    done: int = 0  # readings already through the stages
    ok: bool = True  # no stage failed on it so far


class StageScheduler:
    """Runs ``after_commit`` on what ``group`` commits, in ``thread``, when ingest leaves time:
    ``catch_up`` (in the thread) and ``start()``, then ``await settled()`` as needed, and
    ``stop()`` once the group commit refuses packs."""

    def __init__(
        self,
        thread: WriterThread,
        group: GroupCommit,
        checkpointer: Checkpointer,
        metrics: Any = None,
    ):
        self.thread = thread
        self.group = group
        self.checkpointer = checkpointer
        self.metrics = metrics
        self.after_commit: list[AfterCommit] = []
        self.processed: list[int] = []  # commits whose stages all ran: their log goes next
        self.owed = 0  # readings committed whose stages have not run yet
        self._owed: collections.deque[_Owed] = collections.deque()  # oldest first
        self._owed_in_memory = 0
        self._task: asyncio.Task | None = None
        self._settled: asyncio.Event | None = None  # set when nothing waits (made by start)
        if metrics is not None:
            metrics.gauge(
                "reverbere_stage_backlog_readings",
                "Readings stored whose after-commit stages have not run yet.",
            ).set_function(lambda: self.owed)
            metrics.gauge(
                "reverbere_stage_lag_seconds",
                "How long ago the oldest commit whose stages have not run yet was made.",
            ).set_function(self.lag)

    def catch_up(self, db: sqlite_utils.Database) -> int:
        """Replay through the stages what was committed but not seen by all of them (a crash
        between a commit and its stages, a stage that failed); return how many readings. In
        the writer thread, before the first pack is taken."""
        if not self.after_commit:
            return 0
        total = 0
        for seqs, readings in pending_readings(db):
            ok = self._stages(db, readings) if readings else True
            if ok:
                forget_logged(db, seqs)
            total += len(readings)
        if total:
            event(log, logging.INFO, "stages caught up", readings=total)
        return total

    def start(self) -> None:
        self._settled = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="reverbere-committer")

    async def stop(self) -> None:
        """Let the loop commit what is queued and run the stages on everything owed."""
        if self._task is not None:
            await self._task

    async def _loop(self) -> None:
        """Ingest first: a batch is committed as soon as packs wait. The stages run on what
        earlier commits stored once no pack came for ``STAGES_IDLE`` seconds, or when they are
        ``STAGES_LAG_MAX`` behind (then, after each commit, as many readings as it stored, so
        they keep pace). A burst is acknowledged at the rate of the store, and the stages catch up
        after it; a quiet gateway runs them right after each commit."""
        group = self.group
        while True:
            if group.depth:
                stored = await self._commit_next()
                # Far behind: the stages take as many readings as this commit stored.
                while stored > 0 and self._owed and self.lag() > STAGES_LAG_MAX:
                    stored -= await self._run_owed()
            elif self._owed:
                quiet = time.monotonic() - group.submitted
                if not group.stopping and quiet < STAGES_IDLE:
                    await group.woken(STAGES_IDLE - quiet)  # a pack that comes goes first
                    continue
                await self._run_owed()
            elif group.stopping:
                self._settled.set()
                return
            else:
                self._settled.set()
                self.checkpointer.maybe(idle=True)
                await group.woken(None)

    async def _commit_next(self) -> int:
        """The group commit's next batch; what it stored is owed to the stages. Return how
        many readings it stored."""
        new = await self.group.commit_next(self.processed)
        if new is not None:  # committed: the log of ``processed`` went with it
            self.processed = []
        self.checkpointer.maybe()
        if new and self.after_commit:
            kept = self._owed_in_memory + len(new) <= OWED_IN_MEMORY
            self._owed.append(_Owed(self.group.seq, new if kept else None, len(new), kept))
            self._owed_in_memory += len(new) if kept else 0
            self.owed += len(new)
        return len(new or ())

    def unstaged_since(self, db: sqlite_utils.Database) -> float | None:
        """A retention guard: the time of the oldest reading the stages have not run on yet
        (None: none), since they run after the acks, when ingest leaves them time. In the
        writer thread (``Committer.run``)."""
        return oldest_logged(db, but=list(self.processed))  # their rows go in the next commit

    async def settled(self) -> None:
        """Return once no pack waits and the stages have run on everything committed."""
        while self.group.depth or self._owed:
            self._settled.clear()
            await self._settled.wait()

    def lag(self) -> float:
        """Seconds since the oldest commit whose stages have not all run (0: none)."""
        return time.monotonic() - self._owed[0].at if self._owed else 0.0

    async def _run_owed(self) -> int:
        """Run the stages on the next ``STAGE_SLICE`` readings of the oldest commit owed (read
        back from the database if they were not kept in memory); return how many."""
        owed = self._owed[0]

        def run(db: sqlite_utils.Database) -> tuple[bool, int]:
            if owed.readings is None:
                owed.readings = logged_readings(db, owed.seq)
            part = owed.readings[owed.done : owed.done + STAGE_SLICE]
            return (self._stages(db, part) if part else True), len(part)

        try:
            ok, n = await self.thread.call(run)
        except Exception:  # reading it back failed: its log stays for the next start
            log.exception("stages could not read a commit back", extra={"fields": {}})
            ok, n = False, len(owed.readings or ())
        owed.ok &= ok
        owed.done += n
        self.checkpointer.maybe()  # what the stages wrote, too (below)
        if owed.done >= len(owed.readings or ()):
            self._owed.popleft()
            if owed.ok:
                self.processed.append(owed.seq)
            self._owed_in_memory -= owed.n if owed.kept else 0
            self.owed -= owed.n
        return max(n, 1)  # a commit that read back nothing still counts as a step

    def _stages(self, db: sqlite_utils.Database, new: list[Reading]) -> bool:
        """Run every stage on ``new``; False if one of them failed.

        The stages commit without an fsync of their own (``synchronous=NORMAL``): what they
        write is rebuilt from the readings by the catch-up as long as the commit's row in
        ``stages_pending`` is there, and that row goes only in the next commit, whose fsync
        also makes every earlier frame of the WAL durable (a WAL is replayed in order). One
        fsync per batch instead of one per stage: less latency and less wear on an SD card.
        """
        db.execute("PRAGMA synchronous=NORMAL")
        try:
            return self._run_stages(db, new)
        finally:
            db.execute("PRAGMA synchronous=FULL")

    def _run_stages(self, db: sqlite_utils.Database, new: list[Reading]) -> bool:
        ok = True
        for stage in self.after_commit:
            name = getattr(stage, "__qualname__", repr(stage))
            try:
                stage(db, new)
            except Exception:
                # A stage's failure must not stop ingestion; stages catch up from the tables.
                log.exception("after-commit stage %s failed", name, extra={"fields": {}})
                if self.metrics is not None:
                    self.metrics.counter("reverbere_stage_errors_total").inc(stage=name)
                ok = False
        return ok

    def forget_processed(self, db: sqlite_utils.Database) -> None:
        """Drop the log of the commits whose stages ran (a clean stop replays nothing)."""
        if self.processed:
            forget_logged(db, self.processed)
            self.processed = []
