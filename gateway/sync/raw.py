"""Raw readings owed to the platform (``[sync] raw``, off by default): a log of ranges over
the ``readings`` table, never a copy of a reading.

``sync_raw`` holds spans ``(node, channel, first, last)``: the readings of that node and
channel with a time in ``[first, last]`` that are not yet confirmed by the platform. A span is
written by ``RawLog.log`` (gateway/sync/raw_spans.py) inside the very transaction that stores its
readings (the committer's ``in_commit`` hook, gateway/store/committer.py), so the sync worker, which
reads from its own connection, never sees a stored reading that no span accounts for.

Ownership, the rule that makes late readings and retries exact:

* a span is *tight* when written: its range holds only its own new readings (a commit whose
  new readings straddle older stored ones is split into several spans);
* a reading belongs to the newest span (highest ``id``) whose range covers it. A late reading
  of a node that was offline lands inside the range of an older span, or of readings already
  sent; its own span is newer, so it is sent once, by that span;
* the common case costs one row per (node, channel): the new readings of a commit that come
  right after the newest span of their channel (no stored reading in between) extend it.

The worker takes a span's oldest owned readings (marking the span ``inflight`` with ``upto``,
the time of the last one taken, before the request leaves) and settles it from the platform's
answer (:func:`settle`): the span is trimmed past ``upto``; readings the platform did not take
get new tight spans of their own. After an uncertain outcome the worker reads back the
platform's Observations of ``[first, upto]`` and settles from what it finds.
"""

import math
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import sqlite_utils
from sqlite_utils.migrations import Migrations

from gateway.store.records import Reading
from gateway.sync.outbox import RAW_SUFFIX
from gateway.sync.raw_spans import RawSpans, log_times

migrations = Migrations("reverbere.sync.raw")


@migrations()
def m001_raw(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE sync_raw (
            id INTEGER PRIMARY KEY,          -- its age: the newest span covering a reading owns it
            node INTEGER NOT NULL,           -- nodes.ref, as in readings
            channel TEXT NOT NULL,
            first REAL NOT NULL,             -- time range of the readings it owns
            last REAL NOT NULL,
            n INTEGER NOT NULL,              -- how many readings it owns
            upto REAL,                       -- while inflight: time of the last reading sent
            inflight INTEGER,                -- attempt number of an unconfirmed request
            errors INTEGER NOT NULL DEFAULT 0,
            rejected TEXT                    -- why the platform keeps refusing it
        )"""
    )
    db.execute("CREATE INDEX sync_raw_stream ON sync_raw (node, channel, id)")


@migrations()
def m002_status(db: sqlite_utils.Database) -> None:
    # The status (raw_backlog: /metrics on the event loop, the console's Passerelle page)
    # reads the spans owed oldest first, the in-flight and the rejected ones by indexes of
    # their own, not the table whole. Partial, and on columns a span's extension (last, n)
    # does not change: the committer's transaction does not update them.
    db.execute("CREATE INDEX sync_raw_owed ON sync_raw (first) WHERE rejected IS NULL")
    db.execute("CREATE INDEX sync_raw_inflight ON sync_raw (inflight) WHERE inflight IS NOT NULL")
    db.execute("CREATE INDEX sync_raw_rejected ON sync_raw (id) WHERE rejected IS NOT NULL")


def raw_stream(channel: str) -> str:
    """The stream (Datastream ``<node>/<channel>.raw``) of a channel's raw readings."""
    return channel + RAW_SUFFIX


class RawLog:
    """The log of raw readings owed, for the channels in ``channels`` (None: every channel).

    ``log`` (a ``gateway.sync.raw_spans.RawSpans``) goes in the committer's ``in_commit``
    (gateway/service.py wires it), which runs it in the store's writer process, inside the
    commit's transaction; calling the object is the after-commit stage, which only wakes the
    sync worker (``listeners``), at most every ``interval`` seconds: raw readings go in
    batches, not a request per commit.
    """

    def __init__(self, channels: Collection[str] | None = None, interval: float = 0.0) -> None:
        self.channels = None if channels is None else frozenset(channels)
        self.interval = interval
        self.listeners: list = []
        self._notified = -math.inf
        self.log = RawSpans(self.channels)  # in the commit's transaction

    def __call__(self, db: sqlite_utils.Database, new: list[Reading]) -> None:
        now = time.monotonic()
        if now - self._notified < self.interval:
            return
        if any(self.channels is None or r.channel in self.channels for r in new):
            self._notified = now
            for notify in self.listeners:
                notify()


@dataclass(frozen=True)
class Span:
    id: int
    node_ref: int
    node: str  # the node's id
    channel: str
    first: float
    last: float
    upto: float | None
    errors: int


_SPAN = (
    "SELECT s.id, s.node, n.id, s.channel, s.first, s.last, s.upto, s.errors"
    " FROM sync_raw s JOIN nodes n ON n.ref = s.node"
)

_OWNED = (
    "SELECT r.time, r.value FROM readings r"
    " WHERE r.node = :node AND r.channel = :channel AND r.time BETWEEN :first AND :last"
    " AND NOT EXISTS (SELECT 1 FROM sync_raw o WHERE o.node = r.node AND o.channel = r.channel"
    "  AND o.id > :id AND r.time BETWEEN o.first AND o.last)"
    " ORDER BY r.time LIMIT :limit"
)


def owned(
    db: sqlite_utils.Database, span: Span, last: float | None = None, limit: int = -1
) -> list[tuple[float, float]]:
    """``(time, value)`` of the readings ``span`` owns, oldest first, up to ``last``."""
    args = {
        "node": span.node_ref,
        "channel": span.channel,
        "first": span.first,
        "last": span.last if last is None else last,
        "id": span.id,
        "limit": limit,
    }
    return [(t, v) for t, v in db.execute(_OWNED, args)]


@dataclass
class Taken:
    """A span's readings in a request: ``readings`` = ``(time, value)``, oldest first."""

    span: Span
    readings: list[tuple[float, float]]


def take(db: sqlite_utils.Database, limit: int, attempt: int) -> list[Taken]:
    """The oldest owed readings, at most ``limit``, their spans marked inflight (committed)
    before the caller sends them. Spans that turn out to own nothing are dropped."""
    out: list[Taken] = []
    left = limit
    with db.atomic():
        spans = [
            Span(*row)
            for row in db.execute(
                _SPAN + " WHERE s.inflight IS NULL AND s.rejected IS NULL"
                " ORDER BY s.first, s.id LIMIT ?",
                [limit],
            )
        ]
        for span in spans:
            if left <= 0:
                break
            readings = owned(db, span, limit=left)
            if not readings:
                db.execute("DELETE FROM sync_raw WHERE id = ?", [span.id])
                continue
            upto = readings[-1][0]
            db.execute(
                "UPDATE sync_raw SET inflight = ?, upto = ? WHERE id = ?", [attempt, upto, span.id]
            )
            out.append(Taken(span, readings))
            left -= len(readings)
    return out


def inflight(db: sqlite_utils.Database) -> list[Taken]:
    """Spans whose request had no clear answer, with the readings it carried."""
    spans = [Span(*row) for row in db.execute(_SPAN + " WHERE s.inflight IS NOT NULL")]
    return [Taken(s, owned(db, s, last=s.upto)) for s in spans]


def inflight_count(db: sqlite_utils.Database) -> int:
    return db.execute("SELECT count(*) FROM sync_raw WHERE inflight IS NOT NULL").fetchone()[0]


def release(db: sqlite_utils.Database, taken: Iterable[Taken]) -> None:
    """Nothing reached the platform: the spans are owed as before."""
    ids = [t.span.id for t in taken]
    with db.atomic():
        db.conn.executemany(
            "UPDATE sync_raw SET inflight = NULL, upto = NULL WHERE id = ?", [(i,) for i in ids]
        )


def settle(
    db: sqlite_utils.Database, taken: Taken, confirmed: Collection[float], error: bool = True
) -> int:
    """The platform holds the readings of ``taken`` whose time is in ``confirmed``: trim the
    span past them; the others get spans of their own (one more error each when ``error``:
    the platform refused them, rather than never got them). Returns how many were confirmed."""
    span = taken.span
    times = [t for t, _ in taken.readings]
    failed = [t for t in times if t not in confirmed]
    with db.atomic():
        if times:
            upto = times[-1]
            row = db.execute(
                "SELECT min(r.time) FROM readings r, sync_raw s WHERE s.id = ? AND"
                " r.node = s.node AND r.channel = s.channel AND r.time > ? AND r.time <= s.last",
                [span.id, upto],
            ).fetchone()
            if row[0] is None:
                db.execute("DELETE FROM sync_raw WHERE id = ?", [span.id])
            else:
                db.execute(
                    "UPDATE sync_raw SET first = ?, n = n - ?, inflight = NULL, upto = NULL"
                    " WHERE id = ?",
                    [row[0], len(times), span.id],
                )
        else:
            db.execute("UPDATE sync_raw SET inflight = NULL, upto = NULL WHERE id = ?", [span.id])
        if failed:
            errors = span.errors + 1 if error else span.errors
            log_times(db.conn, span.node_ref, span.channel, failed, errors=errors)
    return len(times) - len(failed)


STATUS_SPANS = 20_000  # spans the status reads at most (a town's steady state: a few per node)


@dataclass(frozen=True)
class RawBacklog:
    pending: int  # readings owed (not set aside)
    inflight: int  # spans whose request awaits reconciliation
    rejected: int  # readings the platform keeps refusing
    oldest: float | None  # time of the oldest reading owed
    complete: bool = True  # False: more spans than STATUS_SPANS, the counts are floors


def raw_backlog(db: sqlite_utils.Database) -> RawBacklog:
    """How many raw readings the gateway still owes the platform, from the spans' counts:
    it runs on the event loop for /metrics, so it reads at most ``STATUS_SPANS`` spans owed
    (oldest first) and as many set aside, each through its partial index (migration m002),
    and the in-flight ones through theirs; beyond that the counts are floors."""
    owed = db.execute(
        "SELECT sum(n), min(first), count(*) FROM (SELECT n, first FROM sync_raw"
        " WHERE rejected IS NULL ORDER BY first LIMIT ?)",
        [STATUS_SPANS],
    ).fetchone()
    set_aside = db.execute(
        "SELECT sum(n), count(*) FROM (SELECT n FROM sync_raw WHERE rejected IS NOT NULL"
        " ORDER BY id LIMIT ?)",
        [STATUS_SPANS],
    ).fetchone()
    inflight = db.execute("SELECT count(*) FROM sync_raw WHERE inflight IS NOT NULL").fetchone()[0]
    complete = owed[2] < STATUS_SPANS and set_aside[1] < STATUS_SPANS
    return RawBacklog(owed[0] or 0, inflight, set_aside[0] or 0, owed[1], complete)


def raw_synced_until(db: sqlite_utils.Database) -> float | None:
    """The retention guard while raw sync is on: readings older than the oldest one owed
    may go (a reading set aside as rejected does not hold the retention back)."""
    row = db.execute("SELECT min(first) FROM sync_raw WHERE rejected IS NULL").fetchone()
    return row[0]


def time_key(t: float) -> int:
    """Times compared in milliseconds: what an ISO 8601 time on the wire keeps."""
    return math.floor(t * 1000 + 0.5)
