"""The durable buffer: readings in SQLite, written by one committer with group commit.

``Committer`` owns the one writing connection, in its own thread. Verified packs wait in a
queue; the committer takes up to ``commit_max_packs`` of them into one transaction (one fsync
with ``synchronous=FULL``), checks each pack's message counter against ``nodes.last_seq``
inside that transaction and moves it on, inserts the readings with ``INSERT OR IGNORE`` (the
key (node, channel, time) makes a retransmitted pack a no-op), commits, and only then resolves
each pack's future, so the 2.04 goes out after the commit. While one commit runs, the next
batch gathers: the busier the gateway, the more packs share an fsync.

Disk budget: ``PRAGMA max_page_count`` caps the file, so a full budget makes SQLite refuse the
transaction (SQLITE_FULL) rather than corrupt anything; the committer rolls back and every pack
of the batch gets ``Outcome.FULL`` (5.03). Freed pages (after retention) are reused, so the
gateway recovers by itself. The same happens when the disk's free space falls under ``min_free``.

The ``after_commit`` stages run in the writer thread, with the writer database and the
readings that were new (duplicates filtered), in commit order, after the commit's 2.04s went
out. Ingest comes first: while packs wait, the committer commits them and the stages wait; they
run once no pack came for ``STAGES_IDLE`` (5 ms), in slices of ``STAGE_SLICE`` readings so that
a pack that comes meanwhile does not wait long, or, when they are ``STAGES_LAG_MAX`` (30 s)
behind, as many readings after each commit as it stored, so that they keep pace with a gateway
that is never idle (which then acknowledges at the rate of the whole pipeline).
A burst (a fleet sending what it buffered through an outage) is acknowledged at the rate of the
store, and detection catches up after it; a quiet gateway runs the stages right after each
commit. What the stages owe is held in memory up to ``OWED_IN_MEMORY`` readings and read back
from the database beyond (``stages_pending``, below); the gauges
``reverbere_stage_backlog_readings`` and ``reverbere_stage_lag_seconds`` show how far behind
they are, and a stop runs them on everything owed before it closes.
A log that must commit with the readings themselves goes in ``in_commit`` instead: it is called
inside the commit's transaction with the new readings' times per (node ref, channel) (the raw
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
import enum
import functools
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.migrations import Migrations

from gateway.db import open_db
from gateway.logs import RateLimiter, event
from gateway.records import Reading

migrations = Migrations("reverbere.store")
log = logging.getLogger("reverbere.store")

BATTERY_CHANNEL = "bat"
CHECKPOINT_PERIOD = 1.0  # seconds between WAL checkpoints, at most


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


class Outcome(enum.Enum):
    """What became of a pack; ingest turns it into a CoAP code."""

    STORED = "stored"  # committed (some readings may have been there already) -> 2.04
    REPEATED = "repeated"  # the counter of the last stored pack again: already stored -> 2.04
    REPLAY = "replay"  # an older counter -> 4.01
    UNKNOWN_NODE = "unknown_node"  # removed or re-keyed since it was verified -> 4.01
    FULL = "full"  # disk budget reached or the database refused -> 5.03


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
# A log written inside the commit's own transaction: ``log(conn, new)`` with the times of the
# new readings per (node ref, channel). It commits with the readings or not at all, so a reader
# never sees a stored reading the log does not account for (see gateway/sync/raw.py).
InCommit = Callable[[sqlite3.Connection, dict[tuple[int, str], list[float]]], None]


def commit_batch(
    db: sqlite_utils.Database,
    batch: list[Pack],
    now: float | None = None,
    *,
    seq: int | None = None,
    processed: Sequence[int] = (),
    in_commit: Sequence[InCommit] = (),
) -> tuple[list[Outcome], list[Reading]]:
    """Store ``batch`` in one transaction; return each pack's outcome and the new readings.

    The new readings are logged in ``stages_pending`` under ``seq`` (default: after the newest
    logged commit) until the stages have run on them; ``processed`` names the earlier commits
    whose stages have, and whose log goes in this transaction. Each of ``in_commit`` is called
    inside the transaction with the new readings' times per (node ref, channel).

    Raises ``sqlite3.Error`` after rolling back if the database refuses the transaction.

    Few statements, each doing many rows: the sqlite3 module lets go of the GIL at every step
    of a statement (each row of an ``executemany``, each row ``RETURNING`` hands back), and
    each time the event loop's thread, which verifies the next packs, has to give it back.
    """
    now = time.time() if now is None else now
    conn = db.conn
    outcomes: list[Outcome] = []
    new: list[Reading] = []
    spans: dict[tuple[int, str], list[float]] = {}
    times: dict[tuple[int, str], list[float]] | None = {} if in_commit else None
    conn.execute("BEGIN IMMEDIATE")
    try:
        # The nodes of the batch, read once: this transaction holds the write lock, so nobody
        # changes them until it ends. ``nodes`` then follows what the batch accepts.
        refs = sorted({p.node_ref for p in batch})
        nodes = {
            ref: [key, seq, 0, 0, None]  # key, last_seq, messages, gaps, battery
            for ref, key, seq in conn.execute(
                f"SELECT ref, key, last_seq FROM nodes WHERE ref IN ({', '.join('?' * len(refs))})",
                refs,
            )
        }
        stored: list[Pack] = []
        for pack in batch:
            node = nodes.get(pack.node_ref)
            if node is None or node[0] != pack.key:
                outcomes.append(Outcome.UNKNOWN_NODE)
                continue
            last = node[1]
            if pack.seq <= last:
                outcomes.append(Outcome.REPEATED if pack.seq == last else Outcome.REPLAY)
                continue
            for r in pack.readings:
                if r.channel == BATTERY_CHANNEL:
                    node[4] = r.value
            node[1], node[2], node[3] = pack.seq, node[2] + 1, node[3] + pack.seq - last - 1
            outcomes.append(Outcome.STORED)
            stored.append(pack)
        for pack, fresh in _insert_readings(conn, stored):
            new.extend(fresh)
            ref = pack.node_ref
            for r in fresh:
                key = (ref, r.channel)
                if times is not None:
                    times.setdefault(key, []).append(r.time)
                span = spans.get(key)
                if span is None:
                    spans[key] = [r.time, r.time]
                elif r.time < span[0]:
                    span[0] = r.time
                elif r.time > span[1]:
                    span[1] = r.time
        _insert_rows(
            conn,
            "WITH v (ref, seq, seen, messages, gaps, battery) AS (VALUES {values})"
            " UPDATE nodes SET last_seq = v.seq, last_seen = v.seen,"
            " messages = nodes.messages + v.messages, gaps = nodes.gaps + v.gaps,"
            " battery = coalesce(v.battery, nodes.battery) FROM v WHERE nodes.ref = v.ref",
            [(ref, n[1], now, n[2], n[3], n[4]) for ref, n in nodes.items() if n[2]],
        )
        if processed:
            conn.execute(
                f"DELETE FROM stages_pending WHERE seq IN ({', '.join('?' * len(processed))})",
                list(processed),
            )
        if spans:
            if seq is None:
                seq = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM stages_pending")
                seq = seq.fetchone()[0]
            _insert_rows(
                conn,
                "INSERT INTO stages_pending (seq, node, channel, first, last) VALUES {values}",
                [(seq, ref, ch, a, b) for (ref, ch), (a, b) in spans.items()],
            )
        if times:
            for log_new in in_commit:
                log_new(conn, times)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return outcomes, new


INSERT_READINGS = "INSERT OR IGNORE INTO readings (node, channel, time, value) VALUES {values}"
MAX_VARIABLES = 999  # per statement: the lowest limit any SQLite build has


def _insert_readings(
    conn: sqlite3.Connection, packs: list[Pack]
) -> list[tuple[Pack, list[Reading]]]:
    """Insert the readings of ``packs``; return each pack with those that were not there yet.

    Usually all are new, and a few multi-row statements store them all. When some were there
    already (a node sent them again in a pack of its own), the statements are undone and done
    again pack by pack with ``RETURNING``, which names the rows that were inserted.
    """
    rows = [(p.node_ref, r.channel, r.time, r.value) for p in packs for r in p.readings]
    conn.execute("SAVEPOINT readings")
    if _insert_rows(conn, INSERT_READINGS, rows) == len(rows):
        conn.execute("RELEASE readings")
        return [(p, p.readings) for p in packs]
    conn.execute("ROLLBACK TO readings")
    conn.execute("RELEASE readings")
    out = []
    for p in packs:
        args = [x for r in p.readings for x in (p.node_ref, r.channel, r.time, r.value)]
        sql = (
            INSERT_READINGS.format(values=_values(len(p.readings), 4)) + " RETURNING channel, time"
        )
        inserted = set(conn.execute(sql, args).fetchall())
        out.append((p, [r for r in p.readings if (r.channel, r.time) in inserted]))
    return out


def _insert_rows(conn: sqlite3.Connection, sql: str, rows: list[tuple]) -> int:
    """Run ``sql`` (its ``{values}`` standing for a VALUES list) on ``rows``, as many rows per
    statement as SQLite takes; return the number of rows changed."""
    if not rows:
        return 0
    width = len(rows[0])
    step = MAX_VARIABLES // width
    changed = 0
    for i in range(0, len(rows), step):
        chunk = rows[i : i + step]
        args = [x for row in chunk for x in row]
        changed += conn.execute(sql.format(values=_values(len(chunk), width)), args).rowcount
    return changed


@functools.lru_cache(maxsize=256)
def _values(rows: int, width: int) -> str:
    """``(?, ?), (?, ?)`` for 2 rows of width 2."""
    return ", ".join(["(" + ", ".join("?" * width) + ")"] * rows)


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


def set_disk_budget(db: sqlite_utils.Database, budget_bytes: int) -> None:
    """Cap the database file at ``budget_bytes`` (rounded down to whole pages)."""
    page = db.execute("PRAGMA page_size").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {max(1, budget_bytes // page)}")


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
        return await loop.run_in_executor(self._executor, lambda: func(self.db, *args))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.db = await loop.run_in_executor(self._executor, self._open)
        self.caught_up = await loop.run_in_executor(self._executor, self._catch_up)
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="reverbere-committer")

    def _open(self) -> sqlite_utils.Database:
        db = open_db(self.path)
        set_disk_budget(db, self.disk_budget)
        # SQLite would checkpoint inside the commit that fills the WAL past 1000 pages, and every
        # pack of that batch would wait for it; ``_maybe_checkpoint`` does it beside the commits.
        db.execute("PRAGMA wal_autocheckpoint = 0")
        self._seq = db.execute("SELECT coalesce(max(seq), 0) FROM stages_pending").fetchone()[0]
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

    def _maybe_checkpoint(self) -> None:
        """At most once every CHECKPOINT_PERIOD, copy the WAL into the database (PASSIVE: never
        waits for the writer), in the checkpoint thread."""
        now = time.monotonic()
        if self._checkpoint_task is not None and not self._checkpoint_task.done():
            return
        if now - self._checkpoint_at < CHECKPOINT_PERIOD:
            return
        self._checkpoint_at = now
        loop = asyncio.get_running_loop()
        self._checkpoint_task = loop.run_in_executor(self._checkpointer, self._checkpoint)

    def _checkpoint(self) -> None:
        if self._checkpoint_db is None:
            self._checkpoint_db = sqlite3.connect(self.path)
        self._checkpoint_db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

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

        In the writer thread, so that the event loop goes on verifying packs during the fsync
        (an SD card can take a tenth of a second)."""
        loop = asyncio.get_running_loop()
        if len(self._pending) < self.max_packs and self.delay > 0 and not self._stopping:
            await asyncio.sleep(self.delay)  # let a few more packs join this commit
        batch = self._pending[: self.max_packs]
        del self._pending[: self.max_packs]
        t0 = time.perf_counter()
        try:
            outcomes, new = await loop.run_in_executor(self._executor, self._commit, batch)
        except (sqlite3.Error, OSError) as e:  # refused: nothing of the batch is stored
            outcomes, new = [Outcome.FULL] * len(batch), []
            self._note_full(e)
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
        if owed.done >= len(owed.readings or ()):
            self._owed.popleft()
            if owed.ok:
                self._processed.append(owed.seq)
            self._owed_in_memory -= owed.n if owed.kept else 0
            self.owed -= owed.n
        return max(n, 1)  # a commit that read back nothing still counts as a step

    def _commit(self, batch: list[Pack]) -> tuple[list[Outcome], list[Reading]]:
        free = shutil.disk_usage(self.path.parent).free
        if free < self.min_free:
            raise OSError(f"only {free >> 20} MB free on the disk (min_free)")
        seq, done = self._seq + 1, self._processed
        outcomes, new = commit_batch(
            self.db, batch, seq=seq, processed=done, in_commit=self.in_commit
        )
        self._processed = []
        if new:
            self._seq = seq
        if self.full:
            self.full = False
            event(log, logging.INFO, "storing again", db_bytes=db_bytes(self.db))
        return outcomes, new

    def _note_full(self, e: BaseException) -> None:
        """Disk budget or free space reached, or another database error (with its trace)."""
        self.full = True
        if self.metrics is not None:
            self.metrics.gauge("reverbere_store_full").set(1)
        if self._full_log.allow("full") is not None:
            event(log, logging.ERROR, "cannot store: answering 5.03", reason=str(e))
            if not (is_full_error(e) or isinstance(e, OSError)):
                log.error("database error", exc_info=e, extra={"fields": {}})

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


def _close(db: sqlite_utils.Database) -> None:
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def wal_bytes(path: Path) -> int:
    """Size of the write-ahead log next to the database at ``path``."""
    try:
        return os.stat(str(path) + "-wal").st_size
    except FileNotFoundError:
        return 0


def is_full_error(e: BaseException) -> bool:
    """True for SQLite's 'database or disk is full'."""
    return isinstance(e, sqlite3.Error) and getattr(e, "sqlite_errorcode", 0) == sqlite3.SQLITE_FULL
