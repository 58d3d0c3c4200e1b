"""The node registry: which nodes may post, their keys, and what the gateway saw of them.

Keys live in the gateway database (table ``nodes``); the database file is created 0600 and
the service runs as its own user (see docs/gateway.md), so only that user can read them.
A removed node keeps its row (its readings refer to it) but loses its key, so it gets 4.01.
``last_seq`` is the last accepted message counter (Partial IV), ``NO_COUNTER`` (-1) while the
node has stored nothing since ``node add`` or ``rotate-key`` (so its first counter may be 0);
it only ever grows, in the
same transaction that stores the readings (``gateway.store.committer``). ``gaps`` counts the counter
values never seen, which are not lost messages: a node reserves its counters on flash 32 at a
time and starts each boot past the reserved block (firmware/store.py), and a pack it gives up
on is sent again, readings and all, under a new counter. What was really lost is what the node
says it dropped: its ``drop`` channel, a count of readings it had to throw away (buffer full,
refused packs), kept across its resets; :func:`list_nodes` sums it as ``lost``, starting again
from zero when a replaced board (:func:`replace_node`) starts its own count.
"""

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import sqlite_utils
from sqlite_utils.migrations import Migrations

from gateway.store.commit import NO_COUNTER
from gateway.store.records import Reading

migrations = Migrations("reverbere.registry")

KEY_BYTES = 32
NODE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # whole string: fullmatch (\Z), never match + $


@migrations()
def m001_nodes(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE nodes (
            ref INTEGER PRIMARY KEY,           -- what readings.node refers to
            id TEXT NOT NULL UNIQUE,           -- the COSE kid, as text
            key BLOB,                          -- 32-byte HMAC key; NULL once removed
            added REAL NOT NULL,               -- Unix time of add or last rotate-key
            last_seq INTEGER NOT NULL DEFAULT 0,
            last_seen REAL,
            messages INTEGER NOT NULL DEFAULT 0,
            gaps INTEGER NOT NULL DEFAULT 0,
            battery REAL                       -- last "bat" reading
        )
        """
    )


@migrations()
def m002_no_counter_yet(db: sqlite_utils.Database) -> None:
    # ``last_seq`` 0 meant "nothing stored yet" as well as "counter 0 stored", so a node's
    # first pack with counter 0 was answered 2.04 as a repeat and dropped. A pack with counter
    # 0 could never be stored (it had to be above 0), so every 0 means nothing: NO_COUNTER.
    db.execute("UPDATE nodes SET last_seq = ? WHERE last_seq = 0", [NO_COUNTER])


class RegistryError(Exception):
    """A registry operation that cannot be done; ``hint`` says what to do instead."""

    hint = ""


class NodeExists(RegistryError):
    hint = "use `reverbere node rotate-key` to give it a new key"


class NodeNotFound(RegistryError):
    hint = "see `reverbere node list`"


class BadNodeId(RegistryError):
    hint = "use 1 to 64 of A-Z a-z 0-9 . _ -"


@dataclass(frozen=True)
class Node:
    """What ``node list`` shows of one node."""

    id: str
    active: bool
    added: float
    last_seq: int | None  # None while the node has stored nothing (NO_COUNTER in the table)
    last_seen: float | None
    messages: int
    gaps: int  # counter values skipped: boots and retries, not losses (see the module doc)
    battery: float | None
    lost: int = 0  # readings the node dropped, from its "drop" channel


def _check_id(node_id: str) -> None:
    if not NODE_ID.fullmatch(node_id):
        raise BadNodeId(f"{node_id!r} is not a valid node id")


def add_node(db: sqlite_utils.Database, node_id: str) -> bytes:
    """Register ``node_id`` with a new random key and return the key (shown once)."""
    _check_id(node_id)
    key = os.urandom(KEY_BYTES)
    with db.conn:
        row = db.execute("SELECT key FROM nodes WHERE id = ?", [node_id]).fetchone()
        if row is not None and row[0] is not None:
            raise NodeExists(f"node {node_id} already exists")
        if row is None:
            db.execute(
                "INSERT INTO nodes (id, key, added, last_seq) VALUES (?, ?, ?, ?)",
                [node_id, key, time.time(), NO_COUNTER],
            )
        else:  # a removed node comes back: same ref, so its old readings stay its own
            db.execute(
                "UPDATE nodes SET key = ?, added = ?, last_seq = ? WHERE id = ?",
                [key, time.time(), NO_COUNTER, node_id],
            )
    return key


def rotate_key(db: sqlite_utils.Database, node_id: str) -> bytes:
    """Give ``node_id`` a new key (the old one stops working) and restart its counter."""
    key = os.urandom(KEY_BYTES)
    with db.conn:
        cur = db.execute(
            "UPDATE nodes SET key = ?, added = ?, last_seq = ? WHERE id = ? AND key IS NOT NULL",
            [key, time.time(), NO_COUNTER, node_id],
        )
        if cur.rowcount == 0:
            raise NodeNotFound(f"no node {node_id}")
    return key


def replace_node(db: sqlite_utils.Database, node_id: str) -> bytes:
    """A new board takes ``node_id``'s place: a new key, the counter restarted, history kept.

    The new board's message counter starts at 1, which the gateway would refuse as a replay
    of the old board's; with a new key and ``last_seq`` restarted its first pack is taken.
    The node keeps its row, so its readings, summaries and anomalies stay its own; its
    dropped-readings count (``lost``) carries on from the old board's. The same as
    :func:`rotate_key` in the database: a separate name for what the technician does.
    """
    try:
        return rotate_key(db, node_id)
    except NodeNotFound:
        raise NodeNotFound(
            f"no node {node_id} to replace (a new node is `reverbere node add {node_id}`)"
        ) from None


def remove_node(db: sqlite_utils.Database, node_id: str) -> None:
    """Revoke ``node_id``: its key is deleted, its readings are kept."""
    with db.conn:
        cur = db.execute("UPDATE nodes SET key = NULL WHERE id = ? AND key IS NOT NULL", [node_id])
        if cur.rowcount == 0:
            raise NodeNotFound(f"no node {node_id}")


def list_nodes(db: sqlite_utils.Database, include_removed: bool = False) -> list[Node]:
    """Every node, by id."""
    rows = db.execute(
        "SELECT id, key IS NOT NULL, added, last_seq, last_seen, messages, gaps, battery, ref"
        " FROM nodes %s ORDER BY id" % ("" if include_removed else "WHERE key IS NOT NULL")
    ).fetchall()
    lost = lost_readings(db)
    return [
        Node(
            r[0],
            bool(r[1]),
            r[2],
            None if r[3] == NO_COUNTER else r[3],
            *r[4:8],
            lost=lost.get(r[8], 0),
        )
        for r in rows
    ]


def lost_readings(db: sqlite_utils.Database) -> dict[int, int]:
    """Readings each node (by ref) dropped, from the ``drop`` sums it sends.

    A node's ``drop`` value is a running total; it goes down only when another board (or a
    wiped flash) starts its own from zero, so a fall counts the new total from zero.
    """
    if not db["readings"].exists():
        return {}
    rows = db.execute(
        "SELECT node, SUM(CASE WHEN value >= prev THEN value - prev ELSE value END) FROM ("
        " SELECT node, value, LAG(value, 1, 0) OVER (PARTITION BY node ORDER BY time) AS prev"
        " FROM readings WHERE channel = 'drop') GROUP BY node"
    ).fetchall()
    return {ref: int(n) for ref, n in rows}


def lookup(db: sqlite_utils.Database, node_id: str) -> tuple[int, bytes, int] | None:
    """``(ref, key, last_seq)`` of an active node, or None."""
    row = db.execute(
        "SELECT ref, key, last_seq FROM nodes WHERE id = ? AND key IS NOT NULL", [node_id]
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def node_ids(db: sqlite_utils.Database) -> dict[int, str]:
    """ref -> id of every node ever registered."""
    return dict(db.execute("SELECT ref, id FROM nodes").fetchall())


@dataclass
class Heard:
    """What the gateway last heard from a node: when (Unix time of the last pack stored),
    its battery (%) and its radio signal, for the per-node gauges of ``/metrics``."""

    last_seen: float | None = None
    battery: float | None = None
    rssi: float | None = None


class NodeCache:
    """The active nodes in memory, for the ingest path: no SQL query per message.

    ``heard`` (node id -> :class:`Heard`) follows the packs ingest stores (``accepted``) and
    the ``last_seen``/``battery`` columns at each reload, so that ``/metrics`` shows every
    node's last-seen time, battery and signal without a query per scrape (a silent node is
    one whose last-seen time stops moving: Prometheus can alert on it).

    Reloaded from the database every ``refresh`` seconds, so ``node add/remove/rotate-key``
    from another process take effect within that time; an id not in the cache is looked up
    at once (and a miss remembered for ``refresh`` seconds, against floods of forged ids).
    The cache is only a pre-filter: the committer checks key and counter again inside the
    transaction that stores the pack, which is what replay protection rests on.
    """

    MAX_MISSES = 10000

    def __init__(self, db: sqlite_utils.Database, refresh: float = 1.0):
        self.db = db
        self.refresh = refresh
        self._nodes: dict[str, tuple[int, bytes, int]] = {}
        self._misses: dict[str, float] = {}
        self._rechecked: dict[str, float] = {}
        self._loaded = float("-inf")
        self.heard: dict[str, Heard] = {}

    def get(self, node_id: str) -> tuple[int, bytes, int] | None:
        """``(ref, key, last_seq)`` of an active node, or None."""
        now = time.monotonic()
        if now - self._loaded >= self.refresh:
            self.reload(now)
        entry = self._nodes.get(node_id)
        if entry is None:
            if now - self._misses.get(node_id, float("-inf")) < self.refresh:
                return None
            entry = lookup(self.db, node_id)
            if entry is None:
                if len(self._misses) >= self.MAX_MISSES:
                    self._misses.clear()
                self._misses[node_id] = now
                return None
            self._nodes[node_id] = entry
        return entry

    def recheck(self, node_id: str) -> tuple[int, bytes, int] | None:
        """The node's entry read again from the database, for when the cached one may be
        stale (a bad MAC or an old counter just after ``rotate-key``); None if it was read
        again less than ``refresh`` seconds ago, so forged packets cannot each cost a query."""
        now = time.monotonic()
        if now - self._rechecked.get(node_id, float("-inf")) < self.refresh:
            return None
        if len(self._rechecked) >= self.MAX_MISSES:
            self._rechecked.clear()
        self._rechecked[node_id] = now
        entry = lookup(self.db, node_id)
        if entry is None:
            self._nodes.pop(node_id, None)
        else:
            self._nodes[node_id] = entry
        return entry

    def reload(self, now: float | None = None) -> None:
        rows = self.db.execute(
            "SELECT id, ref, key, last_seq, last_seen, battery FROM nodes WHERE key IS NOT NULL"
        ).fetchall()
        self._nodes = {r[0]: (r[1], r[2], r[3]) for r in rows}
        heard = {}
        for node_id, *_, last_seen, battery in rows:
            h = heard[node_id] = self.heard.get(node_id) or Heard()
            if last_seen is not None and (h.last_seen is None or last_seen > h.last_seen):
                h.last_seen, h.battery = last_seen, battery if battery is not None else h.battery
        self.heard = heard  # removed nodes leave /metrics
        self._misses.clear()
        self._loaded = time.monotonic() if now is None else now

    def accepted(
        self, node_id: str, key: bytes, seq: int, readings: Sequence[Reading] = ()
    ) -> None:
        """A pack of ``node_id`` with counter ``seq`` and ``readings`` was committed."""
        entry = self._nodes.get(node_id)
        if entry is not None and entry[1] == key and seq > entry[2]:
            self._nodes[node_id] = (entry[0], key, seq)
        h = self.heard.setdefault(node_id, Heard())
        h.last_seen = time.time()
        for r in sorted(readings, key=lambda r: r.time):  # the latest of each stays
            if r.channel == "bat":
                h.battery = r.value
            elif r.channel == "rssi":
                h.rssi = r.value
