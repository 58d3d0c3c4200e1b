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

A stage that fails on "database or disk is full" (the disk budget, or the disk itself) stops
the stages where they are: nothing more is tried until ``STAGES_RETRY`` seconds have passed or
``space_freed`` is called (by retention), and then everything ``stages_pending`` still owes
is replayed in commit order, as ``catch_up`` does at start. Without that, every commit's
stages failed again, one traceback each, until a restart, which did not help either. Stage
failures are logged once per stage per minute, with the number held back (``suppressed``).
"""

import asyncio
import collections
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from gateway.logs import RateLimiter, event
from gateway.store.checkpoint import Checkpointer, wal_bytes
from gateway.store.commit import is_full_error, readings_budget
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
STAGES_RETRY = 60.0  # seconds: stages stopped by a full database try again after this


class Ran(enum.Enum):
    """How the stages went on a slice of readings."""

    OK = "ok"
    FAILED = "failed"  # a stage raised: the commit's log stays for the next start
    FULL = "full"  # a stage failed on a full database: the stages stop (``_stall``)


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
        self._stalled: float | None = None  # time.monotonic() of a failure on a full database
        self._replay: tuple[int, int] | None = None  # (after seq, up to seq) left to replay
        self._errors_log = RateLimiter(60.0)  # one line per stage per minute
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
        the writer thread, before the first pack is taken. A full database stops it: the
        loop replays the rest later (``STAGES_RETRY``, ``space_freed``)."""
        if not self.after_commit:
            return 0
        total = 0
        for seqs, readings in pending_readings(db):
            ran = self._stages(db, readings) if readings else Ran.OK
            if ran is Ran.FULL:
                self._stall()
                break
            if ran is Ran.OK:
                forget_logged(db, seqs)
            total += len(readings)
        if total:
            event(log, logging.INFO, "stages caught up", readings=total)
        return total

    def start(self) -> None:
        self._settled = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="reverbere-committer")

    async def stop(self) -> None:
        """Let the loop commit what is queued and run the stages on everything owed (unless
        a full database stopped them: the next start catches up)."""
        if self._task is not None:
            await self._task

    def space_freed(self) -> None:
        """Space was freed (retention deleted readings): stages that a full database stopped
        try again now rather than after ``STAGES_RETRY``."""
        if self._stalled is not None:
            self._stalled = time.monotonic() - STAGES_RETRY
            self.group.wake()

    async def _loop(self) -> None:
        """Ingest first: a batch is committed as soon as packs wait. The stages run on what
        earlier commits stored once no pack came for ``STAGES_IDLE`` seconds, or when they are
        ``STAGES_LAG_MAX`` behind (then, after each commit, as many readings as it stored, so
        they keep pace). A burst is acknowledged at the rate of the store, and the stages catch up
        after it; a quiet gateway runs them right after each commit. Stopped by a full
        database, they wait for ``STAGES_RETRY`` or ``space_freed``."""
        group = self.group
        while True:
            if group.depth:
                stored = await self._commit_next()
                # Far behind: the stages take as many readings as this commit stored.
                while stored > 0 and self.lag() > STAGES_LAG_MAX and self._due():
                    stored -= await self._step()
            elif self._due():
                quiet = time.monotonic() - group.submitted
                if not group.stopping and quiet < STAGES_IDLE:
                    await group.woken(STAGES_IDLE - quiet)  # a pack that comes goes first
                    continue
                await self._step()
            elif group.stopping:
                self._settled.set()
                return
            elif self._stalled is not None:  # until the retry, or a pack, or space_freed
                await group.woken(max(0.0, self._stalled + STAGES_RETRY - time.monotonic()))
            else:
                self._settled.set()
                self.checkpointer.maybe(idle=True)
                await group.woken(None)

    def _due(self) -> bool:
        """Whether the stages have work they may do now: a replay, or commits owed (not
        while a full database stopped them; once ``STAGES_RETRY`` has passed, a replay of
        everything ``stages_pending`` owes, up to the last commit, starts)."""
        if self._stalled is not None:
            if time.monotonic() - self._stalled < STAGES_RETRY:
                return False
            self._stalled = None
            self._replay = (0, self.group.seq)
        return self._replay is not None or bool(self._owed)

    async def _step(self) -> int:
        """One slice of the stages' work; return how many readings it took (at least 1)."""
        return await (self._replay_step() if self._replay is not None else self._run_owed())

    def _stall(self) -> None:
        """A stage failed on a full database: stop until ``STAGES_RETRY`` or ``space_freed``
        (the readings it missed stay in ``stages_pending`` for the replay)."""
        if self._stalled is None:
            event(log, logging.ERROR, "stages stopped: the database is full", retry_s=STAGES_RETRY)
        self._stalled = time.monotonic()
        self._replay = None

    async def _commit_next(self) -> int:
        """The group commit's next batch; what it stored is owed to the stages. Return how
        many readings it stored."""
        # A commit that may have to truncate the WAL (the store is full, or the WAL is a
        # good part of the readings' share: gateway/store/commit.py) waits for the checkpoint
        # in hand, since SQLite lets no two run at once. Never so with a budget of gigabytes.
        wal = wal_bytes(self.thread.path)
        if self.group.full or wal > readings_budget(self.thread.disk_budget) // 4:
            await self.checkpointer.idle()
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
        """Return once no pack waits and the stages have run on everything committed (while
        a full database stops them, not before they could run again)."""
        while self.group.depth or self._owed or self._replay or self._stalled is not None:
            self._settled.clear()
            await self._settled.wait()

    def lag(self) -> float:
        """Seconds since the oldest commit whose stages have not all run (0: none)."""
        return time.monotonic() - self._owed[0].at if self._owed else 0.0

    async def _run_owed(self) -> int:
        """Run the stages on the next ``STAGE_SLICE`` readings of the oldest commit owed (read
        back from the database if they were not kept in memory); return how many."""
        owed = self._owed[0]

        def run(db: sqlite_utils.Database) -> tuple[Ran, int]:
            if owed.readings is None:
                owed.readings = logged_readings(db, owed.seq)
            part = owed.readings[owed.done : owed.done + STAGE_SLICE]
            return (self._stages(db, part) if part else Ran.OK), len(part)

        try:
            ran, n = await self.thread.call(run)
        except Exception:  # reading it back failed: its log stays for the next start
            log.exception("stages could not read a commit back", extra={"fields": {}})
            ran, n = Ran.FAILED, len(owed.readings or ())
        self.checkpointer.maybe()  # what the stages wrote, too (below)
        if ran is Ran.FULL:  # stopped where it is; the replay takes it from the log
            self._stall()
            return max(n, 1)
        owed.ok &= ran is Ran.OK
        owed.done += n
        if owed.done >= len(owed.readings or ()):
            self._owed.popleft()
            if owed.ok:
                self.processed.append(owed.seq)
            self._forget_owed(owed)
        return max(n, 1)  # a commit that read back nothing still counts as a step

    async def _replay_step(self) -> int:
        """Replay the next commits ``stages_pending`` owes (after a full database stopped the
        stages), in commit order, as ``catch_up`` does; at the end, the commits owed in memory
        that it covered are done. Return how many readings it took."""
        after, upto = self._replay
        but = list(self.processed)  # done already: their log goes with the next commit

        def run(db: sqlite_utils.Database) -> tuple[list[int], int, Ran] | None:
            chunk = next(pending_readings(db, STAGE_SLICE, after=after, upto=upto, but=but), None)
            if chunk is None:
                return None
            seqs, readings = chunk
            ran = self._stages(db, readings) if readings else Ran.OK
            if ran is Ran.OK:
                forget_logged(db, seqs)
            return seqs, len(readings), ran

        try:
            step = await self.thread.call(run)
        except Exception:  # reading back failed: what is owed in memory runs as usual
            log.exception("stages could not read commits back", extra={"fields": {}})
            self._replay = None
            return 1
        self.checkpointer.maybe()
        if step is None:  # replayed up to ``upto``: the commits owed up to there are done
            self._replay = None
            while self._owed and self._owed[0].seq <= upto:
                self._forget_owed(self._owed.popleft())
            event(log, logging.INFO, "stages running again")
            return 1
        seqs, n, ran = step
        if ran is Ran.FULL:
            self._stall()
        else:  # done, or failed otherwise: its log stays for the next start
            self._replay = (max(seqs), upto)
        return max(n, 1)

    def _forget_owed(self, owed: _Owed) -> None:
        self._owed_in_memory -= owed.n if owed.kept else 0
        self.owed -= owed.n

    def _stages(self, db: sqlite_utils.Database, new: list[Reading]) -> "Ran":
        """Run every stage on ``new``; ``Ran.FAILED`` if one of them failed, ``Ran.FULL`` if
        one failed on a full database.

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

    def _run_stages(self, db: sqlite_utils.Database, new: list[Reading]) -> "Ran":
        ran = Ran.OK
        for stage in self.after_commit:
            name = stage_name(stage)
            try:
                stage(db, new)
            except Exception as e:
                # A stage's failure must not stop ingestion; stages catch up from the tables.
                full = is_full_error(e)
                ran = Ran.FULL if full or ran is Ran.FULL else Ran.FAILED
                if self.metrics is not None:
                    self.metrics.counter("reverbere_stage_errors_total").inc(stage=name)
                suppressed = self._errors_log.allow(name)
                if suppressed is not None:  # once per stage a minute, with what it held back
                    fields = {"stage": name, "error": str(e), "suppressed": suppressed}
                    log.error(
                        "after-commit stage %s failed",
                        name,
                        exc_info=not full,  # "database or disk is full" says it all
                        extra={"fields": fields},
                    )
        return ran

    def forget_processed(self, db: sqlite_utils.Database) -> None:
        """Drop the log of the commits whose stages ran (a clean stop replays nothing)."""
        if self.processed:
            forget_logged(db, self.processed)
            self.processed = []


def stage_name(stage: Callable[..., Any]) -> str:
    """A stage's name in logs and in ``reverbere_stage_errors_total{stage}``: a function's
    qualified name, or a callable object's class (``Detector``), never its ``repr`` (which
    holds an address: a new label at every start)."""
    return getattr(stage, "__qualname__", None) or type(stage).__qualname__
