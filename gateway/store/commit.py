"""One commit: the transaction that stores a batch of verified packs, and the process it runs in.

``commit_batch`` is the whole write of a group commit: it checks each pack's message counter
against ``nodes.last_seq`` inside the transaction, inserts the readings with ``INSERT OR
IGNORE`` (the key (node, channel, time) makes a retransmitted pack a no-op), moves the
counters on, logs what it stored for the after-commit stages (``stages_pending``), and commits
with ``synchronous=FULL`` (one fsync for the batch).

The gateway runs its commits in a process of their own, the *writer process* (``serve``,
started and fed by ``gateway.store.group.GroupCommit``). In a thread of the gateway's process each
SQLite call let go of the GIL and had to win it back from the event loop, which verifies the
next packs: a commit of 1 ms of work took 8 to 9 ms, and the packs of the next batch waited
for it. In its own process a commit takes its own time and a core of its own, and the event
loop only pickles the batch and reads the answer. This module is all that process imports
(the standard library's sqlite3, not sqlite-utils): it adds about 14 MB.

The conversation, over a socket (``multiprocessing.connection`` messages): the first message
is a ``Setup``, answered ``("ready",)``; then each message is ``(packs, seq, processed)``, the
packs as ``(node_ref, key, seq, readings)`` tuples, answered ``("stored", outcomes, new,
errors)`` (``new``: None when every reading of every stored pack was new, which is the rule,
else the new readings; ``errors``: the tracebacks of the packs the database refused alone, see
``commit_apart``) or ``("refused", reason, trace)`` after a rollback (``trace``: None when the
readings' budget or the disk's free space refused it, else the traceback to log). End of file on the
socket means the gateway is gone (stopped, or killed): the process exits, after finishing the
commit in hand. It ignores SIGINT and SIGTERM, which the gateway's process group or systemd
also send it: the gateway stops it, once the packs it acknowledged are committed.
"""

import enum
import functools
import os
import signal
import sqlite3
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from gateway.store.records import Reading

BATTERY_CHANNEL = "bat"

# A log written inside the commit's own transaction: ``log(conn, new)`` with the times of the
# new readings per (node ref, channel). It commits with the readings or not at all, so a reader
# never sees a stored reading the log does not account for (see gateway/sync/raw.py). It is
# pickled into the writer process.
InCommit = Callable[[sqlite3.Connection, dict[tuple[int, str], list[float]]], None]


# The largest message counter the store takes: ``nodes.last_seq`` is an SQLite INTEGER, a
# signed 64-bit number, while a COSE Partial IV may hold 8 bytes (up to 2^64 - 1). Ingest
# refuses a larger counter with 4.00 before it reaches a commit (gateway/ingest/resource.py).
MAX_COUNTER = (1 << 63) - 1

# ``nodes.last_seq`` of a node that has stored nothing since ``node add`` or ``rotate-key``:
# any counter is above it, 0 included (docs/protocol.md: counters start at 0).
NO_COUNTER = -1

# The disk budget's share kept for what the stages write after the readings (summaries,
# detector state, outbox): the readings are refused (5.03) once the pages in use and the WAL
# reach the budget minus this share, so that the stages still summarise what was stored.
STAGES_RESERVE = 0.05  # of the budget
STAGES_RESERVE_MIN = 256 << 10  # bytes, but never more than a quarter of the budget


def readings_budget(disk_budget: int) -> int:
    """Bytes (pages in use and WAL) past which the writer process refuses readings: the disk
    budget minus the stages' share (``STAGES_RESERVE``)."""
    reserve = max(int(disk_budget * STAGES_RESERVE), STAGES_RESERVE_MIN)
    return disk_budget - min(reserve, disk_budget // 4)


class Outcome(enum.Enum):
    """What became of a pack; ingest turns it into a CoAP code."""

    STORED = "stored"  # committed (some readings may have been there already) -> 2.04
    REPEATED = "repeated"  # the counter of the last stored pack again: already stored -> 2.04
    REPLAY = "replay"  # an older counter -> 4.01
    UNKNOWN_NODE = "unknown_node"  # removed or re-keyed since it was verified -> 4.01
    FULL = "full"  # disk budget reached or the database refused -> 5.03


class Sent(NamedTuple):
    """A verified pack as the writer process gets it."""

    node_ref: int
    key: bytes  # the key that verified it; the commit checks it is still the node's key
    seq: int
    readings: list[Reading]


def commit_batch(
    conn: sqlite3.Connection,
    batch: Sequence[Any],
    now: float | None = None,
    *,
    seq: int | None = None,
    processed: Sequence[int] = (),
    in_commit: Sequence[InCommit] = (),
) -> tuple[list[Outcome], list[Reading]]:
    """Store ``batch`` (packs: ``node_ref``, ``key``, ``seq``, ``readings``) in one
    transaction; return each pack's outcome and the new readings.

    The new readings are logged in ``stages_pending`` under ``seq`` (default: after the newest
    logged commit) until the stages have run on them; ``processed`` names the earlier commits
    whose stages have, and whose log goes in this transaction. Each of ``in_commit`` is called
    inside the transaction with the new readings' times per (node ref, channel).

    Raises ``sqlite3.Error`` after rolling back if the database refuses the transaction.

    Few statements, each doing many rows: the sqlite3 module lets go of the GIL at every step
    of a statement (each row of an ``executemany``, each row ``RETURNING`` hands back).
    """
    now = time.time() if now is None else now
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
        stored: list[Any] = []
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
            # The first pack after ``node add`` or ``rotate-key`` skips nothing, wherever the
            # node's counter starts (0, or 1 as the firmware's does, or where a re-keyed node is).
            skipped = pack.seq - last - 1 if last != NO_COUNTER else 0
            node[1], node[2], node[3] = pack.seq, node[2] + 1, node[3] + skipped
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


def _insert_readings(conn: sqlite3.Connection, packs: list[Any]) -> list[tuple[Any, list[Reading]]]:
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


def set_disk_budget(conn: sqlite3.Connection, budget_bytes: int) -> None:
    """Cap the database file at ``budget_bytes`` (rounded down to whole pages)."""
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {max(1, budget_bytes // page)}")


def is_full_error(e: BaseException) -> bool:
    """True for SQLite's 'database or disk is full'."""
    return isinstance(e, sqlite3.Error) and getattr(e, "sqlite_errorcode", 0) == sqlite3.SQLITE_FULL


# --- the writer process -------------------------------------------------------------------


class Setup(NamedTuple):
    """What the writer process needs: the first message it gets."""

    path: str
    disk_budget: int  # bytes (``PRAGMA max_page_count``)
    min_free: int  # bytes the disk must keep free, or the commit is refused
    in_commit: list[InCommit]


def serve(fd: int) -> None:
    """The writer process: commit what comes on the socket ``fd`` until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    channel = Connection(fd)
    try:
        setup: Setup = channel.recv()
        conn = open_writer(setup)
        channel.send(("ready",))
        while True:
            packs, seq, processed = channel.recv()
            channel.send(_commit(conn, setup, packs, seq, processed))
    except (EOFError, OSError):  # the gateway is gone
        pass


def open_writer(setup: Setup) -> sqlite3.Connection:
    """The writer's connection (the database exists: the gateway made its schema)."""
    conn = sqlite3.connect(setup.path)
    conn.execute("PRAGMA synchronous=FULL")  # an acknowledged reading survives a power cut
    conn.execute("PRAGMA foreign_keys=ON")
    prepare_writer(conn, setup.disk_budget)
    return conn


def prepare_writer(conn: sqlite3.Connection, disk_budget: int) -> None:
    """What every connection that writes readings or what follows from them needs: the disk
    budget, and no automatic checkpoint. SQLite would checkpoint inside the commit that fills
    the WAL past 1000 pages, and every pack of that batch would wait for it; the gateway
    checkpoints beside the commits instead (``Checkpointer``, gateway/store/checkpoint.py)."""
    set_disk_budget(conn, disk_budget)
    conn.execute("PRAGMA wal_autocheckpoint = 0")


def _commit(
    conn: sqlite3.Connection, setup: Setup, packs: list[tuple], seq: int, processed: list[int]
) -> tuple:
    """One commit, as the answer to send back."""
    batch = [Sent(*p) for p in packs]
    try:
        disk = os.statvfs(os.path.dirname(os.path.abspath(setup.path)))
        free = disk.f_bavail * disk.f_frsize
        if free < setup.min_free:
            raise OSError(f"only {free >> 20} MB free on the disk (min_free)")
        check_readings_budget(conn, setup.path, readings_budget(setup.disk_budget))
        outcomes, new, errors = commit_apart(
            conn, batch, seq=seq, processed=processed, in_commit=setup.in_commit
        )
    except (sqlite3.Error, OSError) as e:  # refused: nothing of the batch is stored
        full = is_full_error(e) or isinstance(e, OSError)
        return ("refused", str(e), None if full else traceback.format_exc())
    except Exception as e:  # a bug: the gateway logs it, this process goes on
        return ("refused", repr(e), traceback.format_exc())
    stored = (p for p, o in zip(batch, outcomes, strict=True) if o is Outcome.STORED)
    every = sum(len(p.readings) for p in stored)
    return ("stored", outcomes, None if len(new) == every else new, errors)


class OverBudget(OSError):
    """The pages in use and the WAL have reached the readings' share of the disk budget."""


def check_readings_budget(conn: sqlite3.Connection, path: str, budget: int) -> None:
    """Raise ``OverBudget`` when the database's pages in use and its WAL reach ``budget``
    bytes (``readings_budget``): the rest of the disk budget is the stages'.

    The WAL counts: it is on the disk too, and under load it holds up to 16 MB
    (gateway/store/checkpoint.py). SQLite keeps its file at its largest size, so when the WAL
    is what tips the balance it is checkpointed and truncated first, here (a gateway at its
    budget answers 5.03 anyway, and the wait for readers is bounded by ``CHECKPOINT_BUSY_MS``).
    That fails at once while the gateway's own checkpoint runs (SQLite waits for no other
    checkpoint), so once the store is full the committer lets that one end before each commit
    (``StageScheduler._commit_next``)."""
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    count = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    used = (count - free) * page
    if used + _wal_size(path) < budget:
        return
    if used < budget:  # the WAL tips it: give its blocks back, then look again
        conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_BUSY_MS}")
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
        if used + _wal_size(path) < budget:
            return
    raise OverBudget(
        f"database or disk is full: {used >> 10} KB in use and {_wal_size(path) >> 10} KB"
        f" of WAL reach the readings' share of the disk budget ({budget >> 10} KB)"
    )


BUSY_MS = 5000  # the writer's busy timeout (sqlite3.connect's default)
CHECKPOINT_BUSY_MS = 50  # how long truncating the WAL waits for readers, at most


def _wal_size(path: str) -> int:
    try:
        return os.stat(path + "-wal").st_size
    except FileNotFoundError:
        return 0


def commit_apart(
    conn: sqlite3.Connection,
    batch: Sequence[Any],
    *,
    seq: int | None = None,
    processed: Sequence[int] = (),
    in_commit: Sequence[InCommit] = (),
) -> tuple[list[Outcome], list[Reading], list[str]]:
    """``commit_batch``, and when the database refuses the batch for another reason than a
    full disk (a value SQLite cannot hold, a bug), the batch again in halves, and so on,
    so that the packs of other nodes are stored and only the pack that fails alone gets
    ``Outcome.FULL`` (5.03: the node keeps it). Return the outcomes, the new readings and
    the tracebacks of the packs refused alone.

    Raises what ``commit_batch`` raises if nothing could be stored (a full disk refuses the
    whole batch: there is nothing to single out). Each part is a transaction of its own, with
    the same ``seq`` in ``stages_pending`` and the same ``processed`` to delete (a second
    delete deletes nothing). A single culprit costs about twice log2(batch) transactions.
    """
    try:
        outcomes, new = commit_batch(conn, batch, seq=seq, processed=processed, in_commit=in_commit)
        return outcomes, new, []
    except Exception as e:
        if is_full_error(e) or len(batch) == 1:
            raise
    outcomes, new, errors = [], [], []
    refused: Exception | None = None
    stored = False
    half = len(batch) // 2
    for part in (batch[:half], batch[half:]):
        try:
            o, n, err = commit_apart(conn, part, seq=seq, processed=processed, in_commit=in_commit)
            stored = True
        except Exception as e:
            o, n, err = [Outcome.FULL] * len(part), [], []
            if not is_full_error(e):
                err = [traceback.format_exc()]
            refused = e
        outcomes += o
        new += n
        errors += err
    if not stored and refused is not None:  # no part stored: the batch is refused as a whole
        raise refused
    return outcomes, new, errors
