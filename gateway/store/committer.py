"""The durable buffer: readings in SQLite, written by one committer with group commit.

``Committer`` is the store as the gateway sees it (``submit``, ``run``, ``settled``, the
hooks ``after_commit`` and ``in_commit``), made of four parts that share the writer thread
(gateway/store/thread.py) and take turns at the database (``WriterThread.turn``):

- gateway/store/group.py: the group commit: the queue, the batches, the writer process, the
  ack after commit;
- gateway/store/stages.py: the committer's loop (ingest first) and the after-commit stages:
  what they owe, the catch-up, the backlog and lag, ``settled``;
- gateway/store/checkpoint.py: when the WAL is checkpointed, and restarted past 16 MB;
- gateway/store/readings.py: the ``readings`` and ``stages_pending`` tables and their queries.

Verified packs wait in a queue; the ``Committer`` takes up to ``commit_max_packs`` of them
into one transaction (one fsync with ``synchronous=FULL``), which checks each pack's message
counter against ``nodes.last_seq`` and moves it on, inserts the readings with ``INSERT OR
IGNORE`` (the key (node, channel, time) makes a retransmitted pack a no-op) and commits
(``gateway.store.commit.commit_batch``); only then does it resolve each pack's future, so the 2.04
goes out after the commit. While one commit runs, the next batch gathers: the busier the
gateway, the more packs share an fsync.

The commits run in the store's writer process (``WriterProcess``, gateway/store/commit.py says
why): the event loop sends it each batch and reads the outcomes from its socket, and goes on
verifying packs meanwhile. Everything else that writes (the stages, retention, ``run``) runs
in the committer's writer thread, with its own connection; the two take turns (``_turn``), so
neither waits on the other's lock. A writer process that ends (killed, crashed) costs the
batch in hand a 5.03 (the nodes send it again) and is replaced at the next batch; the commit
it may have made is caught up at the next start (``stages_pending``, below).

Disk budget: ``PRAGMA max_page_count`` caps the file, so a full budget makes SQLite refuse the
transaction (SQLITE_FULL) rather than corrupt anything. The readings stop earlier: the writer
process refuses a batch once the pages in use and the WAL reach the budget minus the stages'
share (``gateway.store.commit.readings_budget``), and every pack of it gets ``Outcome.FULL``
(5.03), so that the stages can still write what follows from the readings stored. Freed pages
(after retention) are reused, so the gateway recovers by itself; stages a full database
stopped try again after a while or at ``space_freed``. The same 5.03 when the disk's free
space falls under ``min_free``.

The ``after_commit`` stages run in the writer thread, with its database and the
readings that were new (duplicates filtered), in commit order, after the commit's 2.04s went
out. Ingest comes first: while packs wait, the committer commits them and the stages wait; they
run once no pack came for ``STAGES_IDLE`` (5 ms), in slices of ``STAGE_SLICE`` readings so that
a pack that comes meanwhile does not wait long, or, when they are ``STAGES_LAG_MAX`` (30 s)
behind, as many readings after each commit as it stored, so that they keep pace with a gateway
that is never idle (which then acknowledges at the rate of the whole pipeline). The WAL is
checkpointed while they catch up too, and when the committer goes idle, or the first commit
after a catch-up would wait for the fsync of everything they wrote (they write without one,
``_stages``).
A burst (a fleet sending what it buffered through an outage) is acknowledged at the rate of the
store, and detection catches up after it; a quiet gateway runs the stages right after each
commit. What the stages owe is held in memory up to ``OWED_IN_MEMORY`` readings and read back
from the database beyond (``stages_pending``, below); the gauges
``reverbere_stage_backlog_readings`` and ``reverbere_stage_lag_seconds`` show how far behind
they are, and a stop runs them on everything owed before it closes.
A log that must commit with the readings themselves goes in ``in_commit`` instead (pickled into
the writer process when it starts): it is called inside the commit's transaction with the new
readings' times per (node ref, channel) (the raw
readings owed to the platform, gateway/sync/raw.py, so that no reader ever sees a stored reading
the log does not account for).

Catch-up: the commit also logs, in the same transaction, what it stored for the stages
(table ``stages_pending``: one row per (node, channel) of the commit, with the commit's ``seq``
and the first and last time of its new readings; no bytes per reading). The row goes in a later
commit's transaction once every stage has run on it, so a crash (kill -9, power cut) between a
commit and its stages, or a stage that failed, leaves it there; ``Committer.start`` replays
those readings through the stages, in commit order, before the first pack is taken. The stages
are idempotent for a reading they have seen: detect skips readings not newer than its state,
summarise recomputes the hour of a reading not newer than its cursor from the raw readings,
and the outbox hands over what changed.
"""

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlite_utils

from gateway.store.checkpoint import Checkpointer
from gateway.store.commit import InCommit, Outcome
from gateway.store.group import GroupCommit, Pack, WriterProcess
from gateway.store.readings import newest_seq
from gateway.store.stages import AfterCommit, StageScheduler
from gateway.store.thread import WriterThread


class Committer:
    """The one writer: group commit, ack after commit, then the after-commit stages."""

    def __init__(
        self,
        path: Path,
        *,
        max_packs: int = 128,
        delay: float = 0.001,
        max_queue: int = 2000,
        disk_budget: int = 1 << 30,
        min_free: int = 64 << 20,
        metrics: Any = None,
    ):
        self.path = Path(path)
        self.thread = WriterThread(self.path, disk_budget)
        self.checkpointer = Checkpointer(self.path, self.thread.turn)
        self.group = GroupCommit(
            self.path,
            self.thread,
            max_packs=max_packs,
            delay=delay,
            max_queue=max_queue,
            min_free=min_free,
            metrics=metrics,
        )
        self.stages = StageScheduler(self.thread, self.group, self.checkpointer, metrics)
        self.after_commit: list[AfterCommit] = self.stages.after_commit
        self.in_commit: list[InCommit] = self.group.in_commit  # logs written in the commit
        self.caught_up = 0  # readings replayed through the stages by start()

    @property
    def depth(self) -> int:
        """Packs waiting for a commit."""
        return self.group.depth

    @property
    def writer(self) -> WriterProcess | None:
        """The writer process that commits the batches (made by start)."""
        return self.group.writer

    def submit(self, pack: Pack) -> "asyncio.Future[Outcome]":
        """Queue ``pack``; its future resolves with an ``Outcome`` after the commit."""
        return self.group.submit(pack)

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(db, *args)`` in the writer thread, between commits."""
        return await self.thread.run(func, *args)

    async def settled(self) -> None:
        """Return once no pack waits and the stages have run on everything committed."""
        await self.stages.settled()

    def space_freed(self) -> None:
        """Retention (or an operator) freed space: stages a full database stopped run again
        now (gateway/store/stages.py); ingest needs no call, each commit looks again."""
        self.stages.space_freed()

    def unstaged_since(self, db: sqlite_utils.Database) -> float | None:
        """The retention guard of the readings the stages have not run on yet."""
        return self.stages.unstaged_since(db)

    async def start(self) -> None:
        """Open the writer thread's database, replay what the stages owe from an earlier run
        (before the first pack is taken), start the writer process and the loop."""
        await self.thread.open()
        seq = await self.thread.call(newest_seq)  # before the catch-up deletes its log
        self.caught_up = await self.thread.call(self.stages.catch_up)
        await self.group.start(seq)
        self.stages.start()

    async def stop(self) -> None:
        """Commit what is queued (those packs still get their answer), then close."""
        self.group.stop_taking()
        await self.stages.stop()
        await self.checkpointer.stop()
        await self.group.close()
        if self.thread.db is not None:
            await self.thread.run(self.stages.forget_processed)
        await self.thread.close()
