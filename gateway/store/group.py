"""The group commit: verified packs wait in a queue, a batch of them is committed in one
transaction (one fsync) by the store's writer process, and only then is each pack's future
resolved, so that its 2.04 goes out after the commit.

``GroupCommit.submit`` queues a pack (``Overloaded`` past ``max_queue``, ``Stopped`` once the
committer stops); ``commit_next`` takes up to ``max_packs`` of them, has the writer process
(``WriterProcess``, gateway/store/commit.py says why a process) commit them, and resolves
their futures with an ``Outcome``. While one commit runs, the next batch gathers: the busier
the gateway, the more packs share an fsync. The committer's loop (gateway/store/stages.py)
decides when: a batch as soon as packs wait, the stages in between.

A writer process that ends (killed, crashed) costs the batch in hand a 5.03 (the nodes send
it again) and is replaced at the next batch; the commit it may have made is caught up at the
next start (gateway/store/committer.py). A batch the writer refuses (disk budget, free space,
another database error: nothing of it is stored) answers every pack ``Outcome.FULL`` (5.03)
(``_commit`` is the one place that turns the writer's answer into outcomes). When the database
refuses a batch for another reason than a full disk, the writer process commits it again in
halves (``commit_apart``): the packs of other nodes are stored, and only the pack that fails
alone gets 5.03, its traceback logged once a minute.
"""

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import gateway
from gateway.logs import RateLimiter, event
from gateway.store.commit import InCommit, Outcome, Setup
from gateway.store.readings import newest_seq
from gateway.store.records import Reading
from gateway.store.thread import WriterThread

log = logging.getLogger("reverbere.store")


@dataclass
class Pack:
    """A verified pack on its way to the database."""

    node_ref: int
    node_id: str
    key: bytes  # the key that verified it; the commit checks it is still the node's key
    seq: int
    readings: list[Reading]
    received: float = field(default_factory=time.time)
    future: Any = None  # asyncio.Future resolved with an Outcome


class Overloaded(Exception):
    """Too many packs wait for a commit: answer 5.03."""


class Stopped(Exception):
    """The committer is shutting down: answer 5.03."""


class WriterGone(Exception):
    """The writer process ended (or could not start): the commit in hand has no outcome."""


class WriterProcess:
    """The store's writer process (gateway/store/commit.py), seen from the event loop: ``await
    start()``, then ``await ask(message)`` for each commit, one at a time."""

    def __init__(self, setup: Setup):
        self.setup = setup
        self.proc: subprocess.Popen | None = None
        self._channel: Connection | None = None
        self._reply: asyncio.Future | None = None

    @property
    def alive(self) -> bool:
        return self._channel is not None

    async def start(self) -> None:
        mine, theirs = socket.socketpair()
        # ``gateway`` is importable there as it is here, installed or not.
        root = os.path.dirname(os.path.dirname(os.path.abspath(gateway.__file__)))
        paths = [root, *filter(None, [os.environ.get("PYTHONPATH")])]
        with theirs:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SERVE, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
            )
        self._channel = Connection(mine.detach())
        asyncio.get_running_loop().add_reader(self._channel.fileno(), self._readable)
        answer = await self.ask(self.setup)
        if answer[0] != "ready":
            raise WriterGone(f"the writer process answered {answer!r}")
        event(log, logging.INFO, "store writer started", pid=self.proc.pid)

    async def ask(self, message: Any) -> tuple:
        """Send ``message``; return the answer (raises ``WriterGone`` if there is none)."""
        if self._channel is None:
            raise WriterGone("the writer process is not running")
        self._reply = asyncio.get_running_loop().create_future()
        try:
            self._channel.send(message)
        except OSError as e:
            self._gone(e)
        return await self._reply

    def _readable(self) -> None:
        try:
            answer = self._channel.recv()
        except (EOFError, OSError) as e:
            self._gone(e)
            return
        if self._reply is not None and not self._reply.done():
            self._reply.set_result(answer)

    def _gone(self, e: BaseException) -> None:
        if self._channel is not None:
            asyncio.get_running_loop().remove_reader(self._channel.fileno())
            self._channel.close()
            self._channel = None
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(WriterGone(f"the writer process ended ({e!r})"))

    async def stop(self) -> int | None:
        """Close the socket (the process exits after the commit in hand); return its code."""
        if self._channel is not None:
            self._gone(EOFError())
        if self.proc is None:
            return None
        return await asyncio.get_running_loop().run_in_executor(None, self.proc.wait)


# The writer process's main: ``serve`` on the socket whose number follows.
SERVE = "import sys; from gateway.store.commit import serve; serve(int(sys.argv[1]))"


class GroupCommit:
    """The queue of packs and the writer process that commits them, a batch at a time."""

    def __init__(
        self,
        path: Path,
        thread: WriterThread,
        *,
        max_packs: int,
        delay: float,
        max_queue: int,
        min_free: int,
        metrics: Any = None,
    ):
        self.path = path
        self.thread = thread  # the writer thread: its turn, and the database after a crash
        self.max_packs = max_packs
        self.delay = delay
        self.max_queue = max_queue
        self.min_free = min_free
        self.metrics = metrics
        self.in_commit: list[InCommit] = []  # logs written in the commit's transaction
        self.full = False
        self.last_commit_seconds = 0.0
        self.seq = 0  # of the last commit; its new readings are logged under it
        self.stopping = False
        self.submitted = 0.0  # time.monotonic() of the last pack submitted
        self.writer: WriterProcess | None = None  # commits the batches (made by start)
        self._pending: list[Pack] = []
        self._wake: asyncio.Event | None = None
        self._full_log = RateLimiter(60.0)

    @property
    def depth(self) -> int:
        return len(self._pending)

    async def start(self, seq: int) -> None:
        """Start the writer process; the next commit logs its readings after ``seq``."""
        self.seq = seq
        setup = Setup(str(self.path), self.thread.disk_budget, self.min_free, list(self.in_commit))
        self.writer = WriterProcess(setup)
        await self.writer.start()
        self._wake = asyncio.Event()

    def submit(self, pack: Pack) -> "asyncio.Future[Outcome]":
        """Queue ``pack``; its future resolves with an ``Outcome`` after the commit."""
        if self.stopping:
            raise Stopped()
        if len(self._pending) >= self.max_queue:
            raise Overloaded()
        pack.future = asyncio.get_running_loop().create_future()
        self._pending.append(pack)
        self.submitted = time.monotonic()
        self._wake.set()
        return pack.future

    async def woken(self, timeout: float | None) -> None:
        """Wait until a pack is submitted (or the stop), at most ``timeout`` seconds."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def wake(self) -> None:
        """Wake the committer's loop as a pack would (``woken`` returns)."""
        if self._wake is not None:
            self._wake.set()

    def stop_taking(self) -> None:
        """Refuse packs from now on (``Stopped``); those queued are still committed."""
        self.stopping = True
        if self._wake is not None:
            self._wake.set()

    async def close(self) -> None:
        """Stop the writer process (after the commits: nothing is in hand)."""
        if self.writer is not None:
            await self.writer.stop()

    async def commit_next(self, processed: list[int]) -> list[Reading] | None:
        """Commit the next batch of packs and resolve their futures (the 2.04s go out);
        return the new readings it stored (logged under ``seq``), or None if the batch was
        refused. ``processed``: the commits whose stages all ran, whose log in
        ``stages_pending`` this commit deletes (unless refused).

        In the writer process, so that the event loop goes on verifying packs meanwhile, and
        neither waits for the other's GIL (see gateway/store/commit.py)."""
        if len(self._pending) < self.max_packs and self.delay > 0 and not self.stopping:
            await asyncio.sleep(self.delay)  # let a few more packs join this commit
        batch = self._pending[: self.max_packs]
        del self._pending[: self.max_packs]
        t0 = time.perf_counter()
        async with self.thread.turn:
            outcomes, new = await self._commit(batch, processed)
        self.last_commit_seconds = time.perf_counter() - t0
        for pack, outcome in zip(batch, outcomes, strict=True):
            if not pack.future.done():
                pack.future.set_result(outcome)
        self._count(batch, outcomes, len(new or ()))
        return new

    async def _commit(
        self, batch: list[Pack], processed: list[int]
    ) -> tuple[list[Outcome], list[Reading] | None]:
        """The writer process's outcomes for ``batch``, and the new readings; all
        ``Outcome.FULL`` and None if it refused the batch or ended."""
        try:
            if not self.writer.alive:
                await self._restart_writer()
            seq = self.seq + 1
            packs = [(p.node_ref, p.key, p.seq, p.readings) for p in batch]
            answer = await self.writer.ask((packs, seq, processed))
        except (WriterGone, OSError) as e:  # it ended, or a new one could not start
            answer = ("refused", e, None)
        if answer[0] == "refused":
            _, reason, trace = answer
            self._note_full(reason, trace)
            return [Outcome.FULL] * len(batch), None
        _, outcomes, new, errors = answer
        if errors and self._full_log.allow("pack") is not None:
            event(log, logging.ERROR, "pack refused by the database", trace=errors[0])
        if new is None:  # every reading of every stored pack was new (the rule)
            stored = (p for p, o in zip(batch, outcomes, strict=True) if o is Outcome.STORED)
            new = [r for p in stored for r in p.readings]
        if new:
            self.seq = seq
        if self.full:
            self.full = False
            event(log, logging.INFO, "storing again")
        return outcomes, new

    async def _restart_writer(self) -> None:
        """A new writer process after the last one ended. The commit it had in hand may have
        been stored: its log in ``stages_pending`` stays for the next start's catch-up, and
        the next commits take ``seq`` numbers after it."""
        code = await self.writer.stop()
        event(log, logging.ERROR, "store writer process ended: starting a new one", code=code)
        self.seq = max(self.seq, await self.thread.call(newest_seq))
        self.writer = WriterProcess(self.writer.setup)
        await self.writer.start()

    def _note_full(self, reason: object, trace: str | None) -> None:
        """Disk budget or free space reached, or another database error (with its trace)."""
        self.full = True
        if self.metrics is not None:
            self.metrics.gauge("reverbere_store_full").set(1)
        if self._full_log.allow("full") is not None:
            event(log, logging.ERROR, "cannot store: answering 5.03", reason=str(reason))
            if trace is not None:
                event(log, logging.ERROR, "database error", trace=trace)

    def _count(self, batch: list[Pack], outcomes: list[Outcome], new: int) -> None:
        m = self.metrics
        if m is None:
            return
        m.counter("reverbere_readings_stored_total").inc(new)
        m.counter("reverbere_commits_total").inc()
        m.counter("reverbere_packs_committed_total").inc(len(batch))
        m.gauge("reverbere_store_full").set(1 if self.full else 0)
        m.gauge("reverbere_last_commit_seconds").set(self.last_commit_seconds)
