"""What the console reads and writes in the gateway's database, off the event loop.

:class:`ConsoleStore` owns one connection in one thread of its own: every page's reads and
the few writes (a session, an acknowledgement) run there (``await store.run(fn, ...)``), so
a slow query or a write waiting for the committer's lock never holds up the event loop, and
with it the acks of the nodes' packs. Each query is bounded or uses an index (the fleet:
one primary-key look-up per node and channel; the events: the ``start`` index and the
partial index of open events, ``LIMIT``-ed): nothing here scans a whole table.
"""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from gateway.console import updates
from gateway.console.i18n import N_
from gateway.ingest.registry import remove_node
from gateway.pipeline.detect import DetectConfig
from gateway.store.db import open_db

T = TypeVar("T")

FLEET_PAGE = 100  # nodes a fleet page shows: a town's 2,000 in one table cost a second to draw
EVENTS_LIMIT = 200  # events a page shows: the open ones, then the most recent closed ones
SUMMARIES_LIMIT = 5000  # rows an /api/summaries answer holds at most
LAST_READING_CHANNELS = ("p", "e", "t", "lux")  # what "last reading" shows, first found
STATES = (N_("alive"), N_("silent"), N_("never"))
KINDS = (N_("lamp"), N_("building"), N_("other"))


class ConsoleStore:
    """The console's connection to the database, in a thread of its own (see the module)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="console-db")
        self._db: sqlite_utils.Database | None = None

    def _in_thread(self, fn: Callable[..., T], args: tuple) -> T:
        if self._db is None:
            self._db = open_db(self.path)
            self._db.execute("PRAGMA busy_timeout = 5000")
        return fn(self._db, *args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(db, *args)`` in the console's thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._in_thread, fn, args)

    async def close(self) -> None:
        def _close(db: sqlite_utils.Database) -> None:
            db.close()

        if self._db is not None:
            await self.run(_close)
            self._db = None
        self._pool.shutdown(wait=True)


@dataclass
class FleetNode:
    """One line of the fleet page."""

    id: str
    group: str
    kind: str  # lamp, building (a meter with opening hours), other
    state: str  # alive, silent, never (heard)
    last_seen: float | None
    last_channel: str | None
    last_value: float | None
    battery: float | None  # %
    rssi: float | None  # dBm
    firmware: str | None  # the version its signed readings report (channel fw: docs/ota.md)
    key_age_days: float
    open_events: int
    update: str | None = None  # its update's state while a rollout exists (console.updates)
    update_target: int | None = None  # the version rolled out to it


def node_group(node_id: str) -> str:
    """A node's group: its id without the last ``-part`` (``lamp-012`` -> ``lamp``), the
    naming the town uses for its streets and buildings (docs/console.md)."""
    return node_id.rsplit("-", 1)[0] if "-" in node_id else node_id


def node_kind(detect: DetectConfig, node_id: str) -> str:
    if detect.is_lamp(node_id):
        return "lamp"
    if detect.schedule_for(node_id) is not None:
        return "building"
    return "other"


def silent_after(detect: DetectConfig, node_config: dict[str, Any]) -> float:
    """Seconds without a pack after which a node is silent: the detector's rule (so many of
    its intervals, at least so many minutes), and never less than two of its packs' span."""
    interval = float(node_config.get("interval", 60))
    pack = float(node_config.get("pack", 1))
    return max(
        detect.silent_intervals * interval, detect.silent_minutes * 60.0, 2 * interval * pack
    )


@dataclass(frozen=True)
class FleetFilter:
    group: str = ""
    kind: str = ""
    state: str = ""
    update: str = ""  # an update state (gateway.console.updates.UPDATE_STATES)


@dataclass
class Fleet:
    nodes: list[FleetNode]  # the requested slice of the matching nodes
    groups: list[str] = field(default_factory=list)
    total: int = 0  # nodes matching the filter, in every slice
    offset: int = 0
    rollout: bool = False  # a rollout exists: the page shows each node's update


def fleet(
    db: sqlite_utils.Database,
    detect: DetectConfig,
    node_config: Callable[[str], dict[str, Any]],
    heard: dict[str, Any],
    now: float,
    only: FleetFilter = FleetFilter(),
    offset: int = 0,
    limit: int | None = None,
) -> Fleet:
    """The active nodes matching ``only``, ``limit`` of them from ``offset`` (None: all).
    ``heard`` is ingest's memory of each node's last pack, battery and signal
    (``NodeCache.heard``): fresher than the table. The state and the filter come from the
    ``nodes`` table and that memory; the last reading and signal (primary-key look-ups) are
    read only for the nodes of the slice, so a page costs its 100 nodes, not the town's."""
    rows = db.execute(
        "SELECT ref, id, added, last_seen, battery FROM nodes WHERE key IS NOT NULL ORDER BY id"
    ).fetchall()
    open_counts = dict(
        db.execute(
            "SELECT node, count(*) FROM anomalies INDEXED BY console_open_anomalies"
            ' WHERE "end" IS NULL GROUP BY node'
        ).fetchall()
    )
    rollout = updates.rollout_states(db)  # a row per node of the rollout, if any
    # the states of the nodes offered the version, from their readings: only to filter on
    offered = updates.offered_states(db) if only.update and rollout else {}
    matching = []
    groups = sorted({node_group(r[1]) for r in rows})
    for ref, node_id, added, last_seen, battery in rows:
        h = heard.get(node_id)
        if h is not None and h.last_seen is not None:
            last_seen = max(last_seen or 0.0, h.last_seen)
            battery = h.battery if h.battery is not None else battery
        if last_seen is None:
            state = "never"
        elif now - last_seen > silent_after(detect, node_config(node_id)):
            state = "silent"
        else:
            state = "alive"
        group, kind = node_group(node_id), node_kind(detect, node_id)
        if (only.group and group != only.group) or (only.kind and kind != only.kind):
            continue
        if only.state and state != only.state:
            continue
        if only.update and updates.state_of(node_id, rollout, offered) != only.update:
            continue
        matching.append((ref, node_id, group, kind, state, added, last_seen, battery, h))
    end = None if limit is None else offset + limit
    out = []
    for ref, node_id, group, kind, state, added, last_seen, battery, h in matching[offset:end]:
        last_channel = last_value = None
        for channel in LAST_READING_CHANNELS:  # primary key (node, channel, time)
            row = db.execute(
                "SELECT value FROM readings WHERE node = ? AND channel = ?"
                " ORDER BY time DESC LIMIT 1",
                [ref, channel],
            ).fetchone()
            if row is not None:
                last_channel, last_value = channel, row[0]
                break
        rssi = h.rssi if h is not None else None
        if rssi is None:
            row = db.execute(
                "SELECT value FROM readings WHERE node = ? AND channel = 'rssi'"
                " ORDER BY time DESC LIMIT 1",
                [ref],
            ).fetchone()
            rssi = row[0] if row else None
        row = db.execute(  # the version it runs, from its own signed readings (docs/ota.md)
            "SELECT value FROM readings WHERE node = ? AND channel = 'fw'"
            " ORDER BY time DESC LIMIT 1",
            [ref],
        ).fetchone()
        firmware = str(int(row[0])) if row else None
        update = updates.update_view(db, node_id, ref) if rollout else None
        out.append(
            FleetNode(
                node_id,
                group,
                kind,
                state,
                last_seen,
                last_channel,
                last_value,
                battery,
                rssi,
                firmware,
                (now - added) / 86400.0,
                open_counts.get(node_id, 0),
                update.state if update else None,
                update.target if update else None,
            )
        )
    return Fleet(out, groups, len(matching), offset, bool(rollout))


def retire_node(db: sqlite_utils.Database, node_id: str) -> None:
    """``node remove``: the node's key goes (it can no longer send), its history stays."""
    remove_node(db, node_id)


# The waste figures another stage adds to anomalies (issue 15): shown when the column exists.
WASTE_COLUMNS = ("waste_kwh", "waste_eur")


def _anomaly_columns(db: sqlite_utils.Database) -> list[str]:
    have = {r[1] for r in db.execute("PRAGMA table_info(anomalies)").fetchall()}
    base = ["id", "node", "channel", "kind", "start", '"end"', "score", "reason"]
    base += ["ack_by", "ack_at", "ack_note"]
    return base + [c for c in WASTE_COLUMNS if c in have]


def events(db: sqlite_utils.Database, limit: int = EVENTS_LIMIT) -> list[dict[str, Any]]:
    """The open events (however old), then the recent closed ones, each newest first, at
    most ``limit``: two index scans (the partial index of open events, then ``start``)."""
    cols = _anomaly_columns(db)
    sel = ", ".join(cols)
    names = [c.strip('"') for c in cols]
    open_rows = db.execute(
        f'SELECT {sel} FROM anomalies WHERE "end" IS NULL ORDER BY start DESC LIMIT ?', [limit]
    ).fetchall()
    recent = db.execute(
        f"SELECT {sel} FROM anomalies ORDER BY start DESC LIMIT ?", [limit]
    ).fetchall()
    seen = {r[0] for r in open_rows}
    rows = list(open_rows) + [r for r in recent if r[0] not in seen]  # each newest first
    return [dict(zip(names, r, strict=True)) for r in rows[:limit]]


class EventNotFound(LookupError):
    pass


def acknowledge(db: sqlite_utils.Database, event_id: int, user: str, note: str, now: float) -> None:
    """Record ``user``'s acknowledgement of the event with ``note``, and owe the platform the
    event again (``synced_version = 0``: the outbox stage sends its latest content, the
    acknowledgement included, at its next turn). ``version`` is the detector's, not touched."""
    with db.conn:
        cur = db.execute(
            "UPDATE anomalies SET ack_by = ?, ack_at = ?, ack_note = ?, synced_version = 0"
            " WHERE id = ?",
            [user, now, note, event_id],
        )
    if cur.rowcount == 0:
        raise EventNotFound(event_id)


def summaries(
    db: sqlite_utils.Database, node: str | None, since: float, until: float
) -> list[dict[str, Any]]:
    """Hourly summaries from ``since`` to ``until`` (one node, or each active node in turn:
    primary-key ranges), at most ``SUMMARIES_LIMIT`` rows."""
    nodes = (
        [node]
        if node
        else [r[0] for r in db.execute("SELECT id FROM nodes WHERE key IS NOT NULL ORDER BY id")]
    )
    out: list[dict[str, Any]] = []
    for n in nodes:
        channels = [
            r[0]
            for r in db.execute(
                "SELECT DISTINCT channel FROM summary_cursor WHERE node = ?", [n]
            ).fetchall()
        ]
        for ch in channels:
            rows = db.execute(
                "SELECT node, channel, hour, count, min, max, mean, wh FROM summaries"
                " WHERE node = ? AND channel = ? AND hour >= ? AND hour < ? ORDER BY hour"
                " LIMIT ?",
                [n, ch, int(since), int(until), SUMMARIES_LIMIT - len(out)],
            ).fetchall()
            keys = ("node", "channel", "hour", "count", "min", "max", "mean", "wh")
            out.extend(dict(zip(keys, r, strict=True)) for r in rows)
            if len(out) >= SUMMARIES_LIMIT:
                return out
    return out
