"""The durable buffer: readings in SQLite, written by one committer with group commit.

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
transaction (SQLITE_FULL) rather than corrupt anything; the committer rolls back and every pack
of the batch gets ``Outcome.FULL`` (5.03). Freed pages (after retention) are reused, so the
gateway recovers by itself. The same happens when the disk's free space falls under ``min_free``.

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
import collections
import contextlib
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.migrations import Migrations

import gateway
from gateway.logs import RateLimiter, event
from gateway.store.commit import InCommit, Outcome, Setup, prepare_writer
from gateway.store.db import open_db
from gateway.store.records import Reading

migrations = Migrations("reverbere.store")
log = logging.getLogger("reverbere.store")

CHECKPOINT_PERIOD = 1.0  # seconds between WAL checkpoints, at most
WAL_RESTART_FRAMES = 4096  # pages (16 MB): a WAL this long starts over between two commits
CHECKPOINT_WAIT = 0.05  # seconds a RESTART checkpoint waits for readers, at most


@migrations()
def m001_readings(db: sqlite_utils.Database) -> None:
    # WITHOUT ROWID: the key is the table, so a reading costs one b-tree entry. node is
    # nodes.ref (an integer: 1-2 bytes instead of the id's text); integral times and values
    # are stored as integers by SQLite, which keeps a reading near 20 bytes.
    db.execute(
        """
        CREATE TABLE readings (
            node INTEGER NOT NULL,
            channel TEXT NOT NULL,
            time REAL NOT NULL,
            value REAL NOT NULL,
            PRIMARY KEY (node, channel, time)
        ) WITHOUT ROWID
        """
    )


@migrations()
def m002_stages_pending(db: sqlite_utils.Database) -> None:
    # What the after-commit stages have not yet confirmed (see the module docstring): a few
    # rows per commit, deleted once the stages ran; a plain table, since it stays tiny.
    db.execute(
        """
        CREATE TABLE stages_pending (
            seq INTEGER NOT NULL,
            node INTEGER NOT NULL,
            channel TEXT NOT NULL,
            first REAL NOT NULL,
            last REAL NOT NULL
        )
        """
    )
    # By seq: deleting what the stages confirmed stays cheap even if a failing stage let it grow.
    db.execute("CREATE INDEX stages_pending_seq ON stages_pending (seq)")


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


AfterCommit = Callable[[sqlite_utils.Database, list[Reading]], None]


CATCH_UP_CHUNK = 5000  # readings per call of the stages when catching up
OWED_IN_MEMORY = 5_000  # readings owed to the stages kept in memory; more are read back
# (held longer, they are objects every full garbage collection walks: the ack latency tail)
STAGES_LAG_MAX = 30.0  # seconds: stages this far behind run between commits even when busy
STAGE_SLICE = 200  # readings per call of the stages (a pack that comes meanwhile waits for it)
STAGES_IDLE = 0.005  # seconds without a pack before the stages run


def pending_readings(
    db: sqlite_utils.Database, chunk: int = CATCH_UP_CHUNK
) -> Iterator[tuple[list[int], list[Reading]]]:
    """The readings of the commits whose stages have not all run (``stages_pending``), in
    commit order: ``(seqs, readings)`` chunks of about ``chunk`` readings, each reading once."""
    seqs = [row[0] for row in db.execute("SELECT DISTINCT seq FROM stages_pending ORDER BY seq")]
    done: list[int] = []
    out: list[Reading] = []
    seen: set[tuple[str, str, float]] = set()
    for seq in seqs:
        for r in logged_readings(db, seq):
            if (r.node, r.channel, r.time) not in seen:
                seen.add((r.node, r.channel, r.time))
                out.append(r)
        done.append(seq)
        if len(out) >= chunk:
            yield done, out
            done, out = [], []
            seen.clear()  # a reading in two chunks goes twice: harmless, stages are idempotent
    if done:
        yield done, out


def logged_readings(db: sqlite_utils.Database, seq: int) -> list[Reading]:
    """The readings commit ``seq`` logged in ``stages_pending``, read back from ``readings``
    (with any other reading of the same node and channel between its first and last)."""
    out = []
    for node, channel, first, last in db.execute(
        "SELECT n.id, p.channel, p.first, p.last FROM stages_pending p"
        " JOIN nodes n ON n.ref = p.node WHERE p.seq = ? ORDER BY n.id, p.channel",
        [seq],
    ).fetchall():
        out.extend(
            Reading(node, channel, t, v)
            for t, v in db.execute(
                "SELECT r.time, r.value FROM readings r JOIN nodes n ON n.ref = r.node"
                " WHERE n.id = ? AND r.channel = ? AND r.time BETWEEN ? AND ? ORDER BY r.time",
                [node, channel, first, last],
            )
        )
    return out


def db_bytes(db: sqlite_utils.Database) -> int:
    """Bytes the database uses (its pages minus the free ones)."""
    page, count, free = (
        db.execute(f"PRAGMA {p}").fetchone()[0]
        for p in ("page_size", "page_count", "freelist_count")
    )
    return (count - free) * page


def query_readings(
    db: sqlite_utils.Database,
    node: str | None = None,
    since: float | None = None,
    until: float | None = None,
    limit: int | None = None,
) -> list[Reading]:
    """Stored readings, by node, channel, time; optionally of one node and a time range."""
    where, args = [], []
    if node is not None:
        where.append("n.id = ?")
        args.append(node)
    if since is not None:
        where.append("r.time >= ?")
        args.append(since)
    if until is not None:
        where.append("r.time < ?")
        args.append(until)
    sql = (
        "SELECT n.id, r.channel, r.time, r.value FROM readings r JOIN nodes n ON n.ref = r.node"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY n.id, r.channel, r.time"
        + (f" LIMIT {int(limit)}" if limit is not None else "")
    )
    return [Reading(*row) for row in db.execute(sql, args).fetchall()]


def delete_before(db: sqlite_utils.Database, before: float) -> int:
    """Delete raw readings older than ``before``; return how many. Their pages get reused."""
    with db.conn:
        return db.execute("DELETE FROM readings WHERE time < ?", [before]).rowcount


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
        self.max_packs = max_packs
        self.delay = delay
        self.max_queue = max_queue
        self.disk_budget = disk_budget
        self.min_free = min_free
        self.metrics = metrics
        self.after_commit: list[AfterCommit] = []
        self.in_commit: list[InCommit] = []  # logs written in the commit's transaction
        self.db: sqlite_utils.Database | None = None  # the writer's; use only via run()
        self.full = False
        self.last_commit_seconds = 0.0
        self._pending: list[Pack] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="reverbere-writer")
        self.writer: WriterProcess | None = None  # commits the batches (made by start)
        # The writer process and the writer thread (stages, ``run``) take turns at the database.
        self._turn = asyncio.Lock()
        self._full_log = RateLimiter(60.0)
        # WAL checkpoints run in their own thread and connection, beside the commits (below).
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="reverbere-checkpoint")
        self._checkpoint_db: sqlite3.Connection | None = None
        self._checkpoint_task: asyncio.Future | None = None
        self._checkpoint_at = 0.0
        self._seq = 0  # of the last commit; its new readings are logged under it
        self._processed: list[int] = []  # commits whose stages all ran: their log goes next
        self._owed: collections.deque[_Owed] = collections.deque()  # oldest first
        self._owed_in_memory = 0
        self.owed = 0  # readings committed whose stages have not run yet
        self._submitted = 0.0  # time.monotonic() of the last pack submitted
        self._settled: asyncio.Event | None = None  # set when nothing waits (made by start)
        if metrics is not None:
            metrics.gauge(
                "reverbere_stage_backlog_readings",
                "Readings stored whose after-commit stages have not run yet.",
            ).set_function(lambda: self.owed)
            metrics.gauge(
                "reverbere_stage_lag_seconds",
                "How long ago the oldest commit whose stages have not run yet was made.",
            ).set_function(self._lag)
        self.caught_up = 0  # readings replayed through the stages by start()

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(db, *args)`` in the writer thread, between commits."""
        loop = asyncio.get_running_loop()
        async with self._turn:
            return await loop.run_in_executor(self._executor, lambda: func(self.db, *args))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.db = await loop.run_in_executor(self._executor, self._open)
        self.caught_up = await loop.run_in_executor(self._executor, self._catch_up)
        setup = Setup(str(self.path), self.disk_budget, self.min_free, list(self.in_commit))
        self.writer = WriterProcess(setup)
        await self.writer.start()
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="reverbere-committer")

    def _open(self) -> sqlite_utils.Database:
        db = open_db(self.path)
        prepare_writer(db.conn, self.disk_budget)
        self._seq = _newest_seq(db)
        return db

    def _catch_up(self) -> int:
        """Replay through the stages what was committed but not seen by all of them (a crash
        between a commit and its stages, a stage that failed); return how many readings."""
        if not self.after_commit:
            return 0
        total = 0
        for seqs, readings in pending_readings(self.db):
            ok = self._stages(readings) if readings else True
            if ok:
                with self.db.conn:
                    self.db.conn.executemany(
                        "DELETE FROM stages_pending WHERE seq = ?", [(s,) for s in seqs]
                    )
            total += len(readings)
        if total:
            event(log, logging.INFO, "stages caught up", readings=total)
        return total

    def _maybe_checkpoint(self, idle: bool = False) -> None:
        """Checkpoint the WAL (``_checkpoints``) at most once every CHECKPOINT_PERIOD, and when
        the committer goes ``idle``: what the stages wrote since the last one (without an fsync,
        ``_stages``) is then synced in the quiet, not by the next commit's fsync (which took
        16-19 ms instead of 2-3 after the stages caught up with a burst)."""
        now = time.monotonic()
        running = self._checkpoint_task is not None and not self._checkpoint_task.done()
        if not idle and (running or now - self._checkpoint_at < CHECKPOINT_PERIOD):
            return
        self._checkpoint_at = now
        self._checkpoint_task = asyncio.ensure_future(
            self._checkpoints(self._checkpoint_task if running else None)
        )

    async def _checkpoints(self, after: asyncio.Future | None = None) -> None:
        """Copy the WAL into the database (PASSIVE: never waits for the writers), in the
        checkpoint thread, beside the commits.

        SQLite writes the WAL from its start again only when a checkpoint has caught up with
        the last commit, which never happens while commits follow each other without a pause:
        under a sustained load the WAL grew by gigabytes. So once it holds more than
        ``WAL_RESTART_FRAMES`` pages, a RESTART checkpoint runs between two commits, which wait
        for it: 1 to 6 ms, since the PASSIVE one just before copied nearly everything (TRUNCATE,
        which also gives the file's blocks back, took 31 to 38 ms). The file keeps its size
        and is written from its start again."""
        if after is not None:  # the one still running
            await asyncio.wait([after])
        loop = asyncio.get_running_loop()
        try:
            frames = await loop.run_in_executor(self._checkpointer, self._checkpoint, "PASSIVE")
            if frames > WAL_RESTART_FRAMES:
                async with self._turn:
                    await loop.run_in_executor(self._checkpointer, self._checkpoint, "RESTART")
        except sqlite3.Error as e:  # the next one tries again
            event(log, logging.WARNING, "WAL checkpoint failed", reason=str(e))

    def _checkpoint(self, mode: str) -> int:
        """Checkpoint the WAL; return how many pages it held."""
        if self._checkpoint_db is None:
            # A short busy timeout: RESTART waits for readers, and the commits wait for it.
            self._checkpoint_db = sqlite3.connect(self.path, timeout=CHECKPOINT_WAIT)
        _busy, frames, _copied = self._checkpoint_db.execute(
            f"PRAGMA wal_checkpoint({mode})"
        ).fetchone()
        return frames

    @property
    def depth(self) -> int:
        return len(self._pending)

    def submit(self, pack: Pack) -> "asyncio.Future[Outcome]":
        """Queue ``pack``; its future resolves with an ``Outcome`` after the commit."""
        if self._stopping:
            raise Stopped()
        if len(self._pending) >= self.max_queue:
            raise Overloaded()
        pack.future = asyncio.get_running_loop().create_future()
        self._pending.append(pack)
        self._submitted = time.monotonic()
        self._wake.set()
        return pack.future

    async def stop(self) -> None:
        """Commit what is queued (those packs still get their answer), then close."""
        self._stopping = True
        if self._task is not None:
            self._wake.set()
            await self._task
        if self._checkpoint_task is not None:
            await asyncio.wait([self._checkpoint_task])
        if self.writer is not None:
            await self.writer.stop()
        self._checkpointer.submit(lambda: self._checkpoint_db and self._checkpoint_db.close())
        self._checkpointer.shutdown(wait=True)
        if self.db is not None:
            await self.run(self._forget_processed)
            await self.run(_close)  # with a last checkpoint: the WAL is emptied
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        """Ingest first: a batch is committed as soon as packs wait. The stages run on what
        earlier commits stored once no pack came for ``STAGES_IDLE`` seconds, or when they are
        ``STAGES_LAG_MAX`` behind (then, after each commit, as many readings as it stored, so
        they keep pace). A burst is acknowledged at the rate of the store, and the stages catch up
        after it; a quiet gateway runs them right after each commit."""
        while True:
            if self._pending:
                stored = await self._commit_next()
                # Far behind: the stages take as many readings as this commit stored.
                while stored > 0 and self._owed and self._lag() > STAGES_LAG_MAX:
                    stored -= await self._run_owed()
            elif self._owed:
                quiet = time.monotonic() - self._submitted
                if not self._stopping and quiet < STAGES_IDLE:
                    await self._woken(STAGES_IDLE - quiet)  # a pack that comes goes first
                    continue
                await self._run_owed()
            elif self._stopping:
                self._settled.set()
                return
            else:
                self._settled.set()
                self._maybe_checkpoint(idle=True)
                await self._woken(None)

    def unstaged_since(self, db: sqlite_utils.Database) -> float | None:
        """A retention guard: the time of the oldest reading the stages have not run on yet
        (None: none), since they run after the acks, when ingest leaves them time. In the
        writer thread (``run``)."""
        done = list(self._processed)  # their rows go in the next commit
        return db.execute(
            "SELECT min(first) FROM stages_pending"
            f" WHERE seq NOT IN ({', '.join('?' * len(done))})",
            done,
        ).fetchone()[0]

    async def settled(self) -> None:
        """Return once no pack waits and the stages have run on everything committed."""
        while self._pending or self._owed:
            self._settled.clear()
            await self._settled.wait()

    async def _woken(self, timeout: float | None) -> None:
        """Wait until a pack is submitted (or the stop), at most ``timeout`` seconds."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _lag(self) -> float:
        """Seconds since the oldest commit whose stages have not all run (0: none)."""
        return time.monotonic() - self._owed[0].at if self._owed else 0.0

    async def _commit_next(self) -> int:
        """Commit the next batch of packs and resolve their futures (the 2.04s go out);
        return how many readings it stored.

        In the writer process, so that the event loop goes on verifying packs meanwhile, and
        neither waits for the other's GIL (see gateway/store/commit.py)."""
        if len(self._pending) < self.max_packs and self.delay > 0 and not self._stopping:
            await asyncio.sleep(self.delay)  # let a few more packs join this commit
        batch = self._pending[: self.max_packs]
        del self._pending[: self.max_packs]
        t0 = time.perf_counter()
        async with self._turn:
            outcomes, new = await self._commit(batch)
        self.last_commit_seconds = time.perf_counter() - t0
        for pack, outcome in zip(batch, outcomes, strict=True):
            if not pack.future.done():
                pack.future.set_result(outcome)
        self._count(batch, outcomes, len(new))
        self._maybe_checkpoint()
        if new and self.after_commit:
            kept = self._owed_in_memory + len(new) <= OWED_IN_MEMORY
            self._owed.append(_Owed(self._seq, new if kept else None, len(new), kept))
            self._owed_in_memory += len(new) if kept else 0
            self.owed += len(new)
        return len(new)

    async def _commit(self, batch: list[Pack]) -> tuple[list[Outcome], list[Reading]]:
        """The writer process's outcomes for ``batch``, and the new readings; all
        ``Outcome.FULL`` if it refused the batch or ended."""
        try:
            if not self.writer.alive:
                await self._restart_writer()
            seq = self._seq + 1
            packs = [(p.node_ref, p.key, p.seq, p.readings) for p in batch]
            answer = await self.writer.ask((packs, seq, self._processed))
        except (WriterGone, OSError) as e:  # it ended, or a new one could not start
            answer = ("refused", e, None)
        if answer[0] == "refused":
            _, reason, trace = answer
            self._note_full(reason, trace)
            return [Outcome.FULL] * len(batch), []
        _, outcomes, new = answer
        self._processed = []
        if new is None:  # every reading of every stored pack was new (the rule)
            stored = (p for p, o in zip(batch, outcomes, strict=True) if o is Outcome.STORED)
            new = [r for p in stored for r in p.readings]
        if new:
            self._seq = seq
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
        loop = asyncio.get_running_loop()
        newest = await loop.run_in_executor(self._executor, _newest_seq, self.db)
        self._seq = max(self._seq, newest)
        self.writer = WriterProcess(self.writer.setup)
        await self.writer.start()

    async def _run_owed(self) -> int:
        """Run the stages on the next ``STAGE_SLICE`` readings of the oldest commit owed (read
        back from the database if they were not kept in memory); return how many."""
        owed = self._owed[0]
        loop = asyncio.get_running_loop()

        def run() -> tuple[bool, int]:
            if owed.readings is None:
                owed.readings = logged_readings(self.db, owed.seq)
            part = owed.readings[owed.done : owed.done + STAGE_SLICE]
            return (self._stages(part) if part else True), len(part)

        try:
            ok, n = await loop.run_in_executor(self._executor, run)
        except Exception:  # reading it back failed: its log stays for the next start
            log.exception("stages could not read a commit back", extra={"fields": {}})
            ok, n = False, len(owed.readings or ())
        owed.ok &= ok
        owed.done += n
        self._maybe_checkpoint()  # what the stages wrote, too (below)
        if owed.done >= len(owed.readings or ()):
            self._owed.popleft()
            if owed.ok:
                self._processed.append(owed.seq)
            self._owed_in_memory -= owed.n if owed.kept else 0
            self.owed -= owed.n
        return max(n, 1)  # a commit that read back nothing still counts as a step

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

    def _stages(self, new: list[Reading]) -> bool:
        """Run every stage on ``new``; False if one of them failed.

        The stages commit without an fsync of their own (``synchronous=NORMAL``): what they
        write is rebuilt from the readings by the catch-up as long as the commit's row in
        ``stages_pending`` is there, and that row goes only in the next commit, whose fsync
        also makes every earlier frame of the WAL durable (a WAL is replayed in order). One
        fsync per batch instead of one per stage: less latency and less wear on an SD card.
        """
        self.db.execute("PRAGMA synchronous=NORMAL")
        try:
            return self._run_stages(new)
        finally:
            self.db.execute("PRAGMA synchronous=FULL")

    def _run_stages(self, new: list[Reading]) -> bool:
        ok = True
        for stage in self.after_commit:
            name = getattr(stage, "__qualname__", repr(stage))
            try:
                stage(self.db, new)
            except Exception:
                # A stage's failure must not stop ingestion; stages catch up from the tables.
                log.exception("after-commit stage %s failed", name, extra={"fields": {}})
                if self.metrics is not None:
                    self.metrics.counter("reverbere_stage_errors_total").inc(stage=name)
                ok = False
        return ok

    def _forget_processed(self, db: sqlite_utils.Database) -> None:
        """Drop the log of the commits whose stages ran (a clean stop replays nothing)."""
        if self._processed:
            with db.conn:
                db.conn.executemany(
                    "DELETE FROM stages_pending WHERE seq = ?", [(s,) for s in self._processed]
                )
            self._processed = []


def _newest_seq(db: sqlite_utils.Database) -> int:
    """The ``seq`` of the newest commit logged in ``stages_pending`` (0: none)."""
    return db.execute("SELECT coalesce(max(seq), 0) FROM stages_pending").fetchone()[0]


def _close(db: sqlite_utils.Database) -> None:
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def wal_bytes(path: Path) -> int:
    """Size of the write-ahead log next to the database at ``path``."""
    try:
        return os.stat(str(path) + "-wal").st_size
    except FileNotFoundError:
        return 0
