"""The outbox: what the gateway owes the platform, in the gateway's own database.

One row per Observation the platform should end up with: an hourly summary of one channel
of one node, or an anomaly event. A row carries the latest version of its content
(``version``) and what the platform confirmed (``synced_version``, ``obs_id``); a corrected
summary (late readings) bumps ``version`` and is sent again as an update of the same
Observation. ``inflight`` marks rows whose request may have reached the platform without a
confirmation (timeout, reset, crash): those are reconciled by reading the platform back before
anything about them is sent again.

The summarise and detect stages call :func:`enqueue_summaries` and :func:`enqueue_events`
with the open database, inside or after their own commit.
"""

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlite_utils
from sqlite_utils.migrations import Migrations

from protocols.const import SUM_CHANNELS

migrations = Migrations("reverbere.sync")

ANOMALIES = "anomalies"  # the per-node Datastream that carries anomaly events
RAW_SUFFIX = ".raw"  # stream "<channel>.raw": the raw readings of a channel ([sync] raw)
OUTBOX = "sync_outbox"
STREAMS = "sync_streams"
STATE = "sync_state"
BUDGET = "sync_budget"


@migrations()
def m001_outbox(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE sync_outbox (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,              -- 'summary' or 'event'
            node TEXT NOT NULL,
            stream TEXT NOT NULL,            -- the channel, or 'anomalies'
            key TEXT NOT NULL,               -- identity within (node, stream)
            time INTEGER NOT NULL,           -- phenomenonTime, Unix seconds
            result REAL NOT NULL,
            parameters TEXT NOT NULL,        -- JSON object
            version INTEGER NOT NULL DEFAULT 1,
            synced_version INTEGER NOT NULL DEFAULT 0,
            enq INTEGER NOT NULL,            -- enqueue sequence number (the cursor's scale)
            obs_id TEXT,                     -- the platform's Observation id, once known
            inflight INTEGER,                -- attempt number of an unconfirmed request
            errors INTEGER NOT NULL DEFAULT 0,
            rejected TEXT,                   -- why the platform keeps refusing it
            UNIQUE (kind, node, stream, key)
        )"""
    )
    db.execute(
        "CREATE INDEX sync_outbox_pending ON sync_outbox (kind, time) "
        "WHERE synced_version < version AND rejected IS NULL"
    )
    db.execute(
        """CREATE TABLE sync_streams (
            node TEXT NOT NULL,
            stream TEXT NOT NULL,            -- channel, 'anomalies', or '' for the Thing
            target TEXT NOT NULL,            -- which platform (its URL)
            entity_id TEXT NOT NULL,         -- Thing id (stream '') or Datastream id
            PRIMARY KEY (target, node, stream)
        )"""
    )
    db.execute("CREATE TABLE sync_state (name TEXT PRIMARY KEY, value TEXT)")
    db.execute(
        """CREATE TABLE sync_budget (
            day TEXT PRIMARY KEY,            -- UTC date
            sent INTEGER NOT NULL DEFAULT 0,
            received INTEGER NOT NULL DEFAULT 0,
            requests INTEGER NOT NULL DEFAULT 0
        )"""
    )


# What ``backlog`` counts, kept by triggers in ``sync_counts`` (one row) as rows are enqueued,
# confirmed, refused or pruned, instead of a scan of the whole outbox (a month of 100 nodes is
# 360,000 rows: 230 ms a scan, ten per /metrics page, one inside each confirmation).
_COUNTED = {
    "pending_events": "{r}.kind = 'event' AND {r}.synced_version < {r}.version"
    " AND {r}.rejected IS NULL",
    "pending_summaries": "{r}.kind = 'summary' AND {r}.synced_version < {r}.version"
    " AND {r}.rejected IS NULL",
    "inflight": "{r}.inflight IS NOT NULL",
    "rejected": "{r}.rejected IS NOT NULL",
    "synced": "{r}.synced_version = {r}.version",
}


@migrations()
def m002_counts(db: sqlite_utils.Database) -> None:
    """``sync_counts`` and its triggers, initialised from one scan (the only one); a partial
    index on ``enq`` of the rows owed gives the cursor without a scan either."""
    cols = ", ".join(f"{name} INTEGER NOT NULL DEFAULT 0" for name in _COUNTED)
    db.execute(
        f"CREATE TABLE sync_counts (id INTEGER PRIMARY KEY CHECK (id = 1), {cols},"
        " max_enq INTEGER NOT NULL DEFAULT 0)"
    )
    sums = ", ".join(f"coalesce(sum({c.format(r='o')}), 0)" for c in _COUNTED.values())
    db.execute(
        f"INSERT INTO sync_counts (id, {', '.join(_COUNTED)}, max_enq)"
        f" SELECT 1, {sums}, coalesce(max(enq), 0) FROM sync_outbox o"
    )

    def delta(sign: str, row: str) -> str:
        return ", ".join(f"{n} = {n} {sign} ({c.format(r=row)})" for n, c in _COUNTED.items())

    both = ", ".join(
        f"{n} = {n} + ({c.format(r='NEW')}) - ({c.format(r='OLD')})" for n, c in _COUNTED.items()
    )
    db.execute(
        "CREATE TRIGGER sync_counts_insert AFTER INSERT ON sync_outbox BEGIN"
        f" UPDATE sync_counts SET {delta('+', 'NEW')}, max_enq = max(max_enq, NEW.enq); END"
    )
    db.execute(
        "CREATE TRIGGER sync_counts_update AFTER UPDATE OF"
        " kind, version, synced_version, inflight, rejected, enq ON sync_outbox BEGIN"
        f" UPDATE sync_counts SET {both}, max_enq = max(max_enq, NEW.enq); END"
    )
    db.execute(
        "CREATE TRIGGER sync_counts_delete AFTER DELETE ON sync_outbox BEGIN"
        f" UPDATE sync_counts SET {delta('-', 'OLD')}; END"
    )
    db.execute(
        "CREATE INDEX sync_outbox_pending_enq ON sync_outbox (enq) "
        "WHERE synced_version < version AND rejected IS NULL"
    )


@dataclass(frozen=True, slots=True)
class Summary:
    """One channel of one node over one hour: what the summarise stage hands to sync."""

    node: str
    channel: str
    hour: int  # start of the hour, Unix seconds (UTC)
    count: int
    min: float
    max: float
    mean: float
    wh: float | None = None  # energy over the hour, when the channel gives it


@dataclass(frozen=True, slots=True)
class Event:
    """One anomaly event: what the detect stage hands to sync."""

    node: str
    channel: str
    start: float  # Unix seconds: the window the event covers
    end: float | None  # None while it is ongoing
    kind: str  # the rule or detector, e.g. "lit_by_day"
    score: float
    reason: str  # plain words for the operator
    key: str | None = None  # stable identity; derived from channel, kind, start if None
    # The energy a kind of waste drew above the expected (kWh) and its cost (€), so far.
    waste_kwh: float | None = None
    waste_eur: float | None = None
    # An operator's acknowledgement in the console (gateway.console): who, when, their note.
    ack: tuple[str, float, str] | None = None

    def identity(self) -> str:
        return self.key or f"{self.channel}:{self.kind}:{int(self.start)}"


def _num(x: float) -> float | int:
    """Round to what a summary can claim (milli-units) and drop a useless '.0'."""
    r = round(float(x), 3)
    return int(r) if r.is_integer() and abs(r) < 2**53 else r


def summary_row(s: Summary) -> dict:
    """The outbox form of a summary: result = the mean, or for a counter its increase in the
    hour (``wh``: the Wh of ``e``, the readings ``drop`` counts; 0 when no counted segment lies
    in the hour yet: a single reading, a reset). The mean of a counter's values means
    nothing: it is not sent."""
    params: dict = {"count": int(s.count)}
    for name in ("min", "max", "wh"):
        value = getattr(s, name)
        if value is not None:  # an hour only a counter segment crossed has no min or max
            params[name] = _num(value)
    result = (s.wh or 0.0) if s.channel in SUM_CHANNELS else s.mean
    return {
        "kind": "summary",
        "node": s.node,
        "stream": s.channel,
        "key": str(int(s.hour)),
        "time": int(s.hour),
        "result": _num(result),
        "parameters": json.dumps(params, separators=(",", ":"), sort_keys=True),
    }


def event_row(e: Event) -> dict:
    """The outbox form of an event: result = score, the reason and window in parameters."""
    params = {
        "id": e.identity(),
        "channel": e.channel,
        "kind": e.kind,
        "reason": e.reason,
        "end": int(e.end) if e.end is not None else None,
    }
    if e.waste_kwh is not None:  # a kind of waste: its kWh and euros (docs/reports.md)
        params["waste_kwh"] = _num(e.waste_kwh)
        if e.waste_eur is not None:
            params["waste_eur"] = round(float(e.waste_eur), 2)
    if e.ack is not None:  # shown to the platform's users too: who took it in hand, and how
        params["ack"] = {"by": e.ack[0], "at": int(e.ack[1]), "note": e.ack[2]}
    return {
        "kind": "event",
        "node": e.node,
        "stream": ANOMALIES,
        "key": e.identity(),
        "time": int(e.start),
        "result": _num(e.score),
        "parameters": json.dumps(params, separators=(",", ":"), sort_keys=True),
    }


def _next_enq(db: sqlite_utils.Database, n: int) -> int:
    """Reserve ``n`` enqueue numbers; returns the first."""
    row = db.execute("SELECT value FROM sync_state WHERE name = 'enq'").fetchone()
    first = int(row[0]) + 1 if row else 1
    db.execute(
        "INSERT INTO sync_state (name, value) VALUES ('enq', ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        [str(first + n - 1)],
    )
    return first


def _enqueue(db: sqlite_utils.Database, rows: Sequence[dict]) -> int:
    """Insert new rows, bump the version of changed ones; unchanged ones cost nothing."""
    if not rows:
        return 0
    changed = 0
    # One transaction (a savepoint inside the caller's transaction, if it has one).
    with db.atomic():
        enq = _next_enq(db, len(rows))
        for i, r in enumerate(rows):
            cur = db.execute(
                "INSERT INTO sync_outbox (kind, node, stream, key, time, result, parameters, enq) "
                "VALUES (:kind, :node, :stream, :key, :time, :result, :parameters, :enq) "
                "ON CONFLICT (kind, node, stream, key) DO UPDATE SET "
                "result = excluded.result, parameters = excluded.parameters, "
                "time = excluded.time, version = version + 1, enq = excluded.enq, "
                "errors = 0, rejected = NULL "
                "WHERE result IS NOT excluded.result OR parameters IS NOT excluded.parameters",
                {**r, "enq": enq + i},
            )
            changed += cur.rowcount
    return changed


def enqueue_summaries(db: sqlite_utils.Database, summaries: Iterable[Summary]) -> int:
    """Owe the platform these hourly summaries; a summary already owed with other figures
    (late readings changed it) replaces the old one and will update the same Observation.
    Returns how many rows are new or changed."""
    return _enqueue(db, [summary_row(s) for s in summaries])


def enqueue_events(db: sqlite_utils.Database, events: Iterable[Event]) -> int:
    """Owe the platform these anomaly events (same identity = same Observation)."""
    return _enqueue(db, [event_row(e) for e in events])


@dataclass(frozen=True)
class Backlog:
    """How much the gateway still owes the platform."""

    pending_events: int
    pending_summaries: int
    inflight: int
    rejected: int
    synced: int
    cursor: int  # every row enqueued at or before this number is confirmed
    oldest_pending: int | None  # phenomenonTime of the oldest pending row


def backlog(db: sqlite_utils.Database) -> Backlog:
    """What is owed, from the counters in ``sync_counts`` and three index look-ups: no scan
    of the outbox, so ``/metrics`` and each confirmation cost the same whatever its size."""
    counts = db.execute(
        f"SELECT {', '.join(_COUNTED)}, max_enq FROM sync_counts WHERE id = 1"
    ).fetchone()
    ev, su, infl, rej, ok, max_enq = counts or (0,) * 6
    min_pending = db.execute(
        "SELECT min(enq) FROM sync_outbox WHERE synced_version < version AND rejected IS NULL"
    ).fetchone()[0]
    cursor = (min_pending - 1) if min_pending else max_enq
    oldest = [
        db.execute(
            "SELECT min(time) FROM sync_outbox WHERE kind = ? AND synced_version < version"
            " AND rejected IS NULL",
            [kind],
        ).fetchone()[0]
        for kind in ("event", "summary")
    ]
    known = [t for t in oldest if t is not None]
    return Backlog(ev, su, infl, rej, ok, cursor, min(known) if known else None)


def get_state(db: sqlite_utils.Database, name: str, default: str | None = None) -> str | None:
    row = db.execute("SELECT value FROM sync_state WHERE name = ?", [name]).fetchone()
    return row[0] if row else default


def set_state(db: sqlite_utils.Database, name: str, value: str) -> None:
    db.execute(
        "INSERT INTO sync_state (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        [name, value],
    )


def prune_synced(db: sqlite_utils.Database, before: float) -> int:
    """Forget confirmed rows older than ``before`` (Unix seconds); returns how many.

    A late correction of an hour older than this would then be sent as a new Observation,
    so keep at least as long as readings may arrive late (the retention period)."""
    with db.atomic():
        cur = db.execute(
            "DELETE FROM sync_outbox WHERE synced_version = version AND inflight IS NULL "
            "AND time < ?",
            [int(before)],
        )
    return cur.rowcount
