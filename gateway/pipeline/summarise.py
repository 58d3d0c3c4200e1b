"""Hourly summaries per node and channel: count, min, max, mean, and energy in Wh.

``summarise(db, readings)`` runs on each commit's new readings (after detect, see
``gateway/service.py``) and keeps the table ``summaries`` up to date incrementally, one row
per (node, channel, hour):

=================  ==================================================================
``hour``           start of the hour, Unix seconds (UTC), a multiple of 3600
``count``          readings in the hour; ``min``, ``max``, ``sum``, ``mean`` of their values
``wh``             energy in the hour, Wh: for power ``p`` the trapezoidal integral of the
                   linearly interpolated power; for the counter ``e`` the counter's
                   increase; for the counter ``drop`` likewise its increase (readings the
                   node dropped in the hour, not Wh); NULL for other channels
``version``        grows by one at every change of the row
``synced_version`` the version the platform has (set by the sync stage); the row needs
                   (re-)sending while ``version > synced_version`` (index ``summaries_dirty``)
=================  ==================================================================

Energy between two consecutive readings is split between the hours the segment spans, in
proportion to time (interpolated), so an hour's energy is final once the first reading after
it has arrived. Power segments longer than ``MAX_GAP`` seconds are not integrated (the node
was away: its energy there is unknown); counter segments are, whatever their length, since the
counter measured them (a counter that went backwards contributes nothing).

An hour that only a long counter segment crosses has a row with ``count`` 0, NULL min, max and
mean, and its share of the energy.

Late readings (older than the newest one of their channel: packs reordered by the network, a
backfill overtaken by fresher readings) are folded in exactly: every hour they change (their own,
and those the segments to their stored neighbours span) is recomputed from the stored raw
readings (tables ``readings`` and ``nodes`` of gateway/store/committer.py and
gateway/ingest/registry.py), and gets
a new ``version``, which marks it for re-sync. This holds while the raw readings of that hour
are kept (``retention_days``).
"""

import itertools
from collections.abc import Sequence

import sqlite_utils
from sqlite_utils.migrations import Migrations

from gateway.store.records import Reading

HOUR = 3600
MAX_GAP = 900.0  # seconds: longer gaps in a power channel are not integrated
# The channels whose hours get a ``wh``, and how it is integrated (``segment_energy``).
ENERGY_CHANNELS = {"p": "power", "e": "counter", "drop": "counter"}

migrations = Migrations("reverbere.summarise")


@migrations()
def m001_summaries(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE summaries (
            node TEXT NOT NULL,
            channel TEXT NOT NULL,
            hour INTEGER NOT NULL,
            count INTEGER NOT NULL,
            min REAL,
            max REAL,
            sum REAL NOT NULL,
            mean REAL,
            wh REAL,
            version INTEGER NOT NULL DEFAULT 1,
            synced_version INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (node, channel, hour)
        )
        """
    )
    db.execute("CREATE INDEX summaries_dirty ON summaries (hour) WHERE version > synced_version")
    # The newest reading of each channel: where the next in-order segment starts.
    db.execute(
        """
        CREATE TABLE summary_cursor (
            node TEXT NOT NULL,
            channel TEXT NOT NULL,
            time REAL NOT NULL,
            value REAL NOT NULL,
            PRIMARY KEY (node, channel)
        )
        """
    )


class _Hours:
    """The rows a batch touches, loaded once, changed in memory, written once."""

    def __init__(self, db: sqlite_utils.Database):
        self.db = db
        self.rows: dict[tuple[str, str, int], dict] = {}

    def get(self, node: str, channel: str, hour: int) -> dict:
        key = (node, channel, hour)
        row = self.rows.get(key)
        if row is None:
            cur = self.db.execute(
                "SELECT count, min, max, sum, wh, version FROM summaries"
                " WHERE node = ? AND channel = ? AND hour = ?",
                key,
            ).fetchone()
            if cur is None:
                row = {
                    "node": node,
                    "channel": channel,
                    "hour": hour,
                    "count": 0,
                    "min": None,
                    "max": None,
                    "sum": 0.0,
                    "wh": None,
                    "version": 0,
                }
            else:
                c, mn, mx, s, wh, v = cur
                row = {
                    "node": node,
                    "channel": channel,
                    "hour": hour,
                    "count": c,
                    "min": mn,
                    "max": mx,
                    "sum": s,
                    "wh": wh,
                    "version": v,
                }
            row["_changed"] = False
            self.rows[key] = row
        return row

    def add_reading(self, r: Reading) -> None:
        row = self.get(r.node, r.channel, int(r.time // HOUR) * HOUR)
        row["count"] += 1
        row["sum"] += r.value
        row["min"] = r.value if row["min"] is None else min(row["min"], r.value)
        row["max"] = r.value if row["max"] is None else max(row["max"], r.value)
        row["_changed"] = True

    def add_segment(
        self,
        node: str,
        channel: str,
        a: tuple[float, float],
        b: tuple[float, float],
        sign: float = 1.0,
    ) -> None:
        """Add (sign=-1: take out) the energy of the segment from reading ``a`` to ``b``."""
        for hour, wh in segment_energy(ENERGY_CHANNELS[channel], a, b):
            row = self.get(node, channel, hour)
            row["wh"] = (row["wh"] or 0.0) + sign * wh
            row["_changed"] = True

    def write(self) -> int:
        out = []
        for row in self.rows.values():
            if not row.pop("_changed"):
                continue
            row["version"] += 1
            row["mean"] = row["sum"] / row["count"] if row["count"] else None
            if row["wh"] is not None:
                row["wh"] = round(row["wh"], 6)
            out.append(row)
        if out:
            self.db["summaries"].upsert_all(out, pk=("node", "channel", "hour"))
        return len(out)


def segment_energy(
    kind: str, a: tuple[float, float], b: tuple[float, float]
) -> list[tuple[int, float]]:
    """Energy (Wh) of the segment between readings ``a`` and ``b`` = (time, value), split by
    hour: ``[(hour, wh), ...]``. ``kind`` is "power" (W, trapezoid) or "counter" (Wh)."""
    (t1, v1), (t2, v2) = a, b
    if t2 <= t1:
        return []
    if kind == "power":
        if t2 - t1 > MAX_GAP:
            return []
    elif v2 < v1:
        return []
    out = []
    start = t1
    while start < t2:
        hour = int(start // HOUR) * HOUR
        end = min(t2, hour + HOUR)
        if kind == "power":
            va = v1 + (v2 - v1) * (start - t1) / (t2 - t1)
            vb = v1 + (v2 - v1) * (end - t1) / (t2 - t1)
            wh = (va + vb) / 2 * (end - start) / HOUR
        else:
            wh = (v2 - v1) * (end - start) / (t2 - t1)
        out.append((hour, wh))
        start = end
    return out


_RAW = (
    "SELECT r.time, r.value FROM readings r JOIN nodes n ON n.ref = r.node"
    " WHERE n.id = ? AND r.channel = ? AND r.time {op} ? ORDER BY r.time {order} LIMIT 1"
)


def _raw_before(db, node: str, channel: str, t: float) -> tuple[float, float] | None:
    row = db.execute(_RAW.format(op="<", order="DESC"), (node, channel, t)).fetchone()
    return tuple(row) if row else None


def _raw_from(db, node: str, channel: str, t: float) -> tuple[float, float] | None:
    row = db.execute(_RAW.format(op=">=", order="ASC"), (node, channel, t)).fetchone()
    return tuple(row) if row else None


def _recompute(db: sqlite_utils.Database, row: dict) -> None:
    """Redo one hour from the stored readings (for late readings)."""
    node, channel, hour = row["node"], row["channel"], row["hour"]
    points = db.execute(
        "SELECT r.time, r.value FROM readings r JOIN nodes n ON n.ref = r.node"
        " WHERE n.id = ? AND r.channel = ? AND r.time >= ? AND r.time < ? ORDER BY r.time",
        (node, channel, hour, hour + HOUR),
    ).fetchall()
    values = [v for _, v in points]
    row["count"] = len(values)
    row["sum"] = float(sum(values))
    row["min"] = min(values) if values else None
    row["max"] = max(values) if values else None
    row["_changed"] = True
    if channel not in ENERGY_CHANNELS:
        return
    seq = [tuple(p) for p in points]
    before = _raw_before(db, node, channel, hour)
    after = _raw_from(db, node, channel, hour + HOUR)
    seq = ([before] if before else []) + seq + ([after] if after else [])
    wh = 0.0
    for a, b in itertools.pairwise(seq):
        wh += sum(w for h, w in segment_energy(ENERGY_CHANNELS[channel], a, b) if h == hour)
    row["wh"] = wh


def summarise(db: sqlite_utils.Database, readings: Sequence[Reading]) -> int:
    """Fold newly stored ``readings`` into the hourly summaries, in one transaction. Returns the
    number of summary rows written (each one now needs syncing)."""
    if not readings:
        return 0
    hours = _Hours(db)
    cursors: dict[tuple[str, str], tuple[float, float] | None] = {}
    late: list[Reading] = []
    for r in readings:
        key = (r.node, r.channel)
        if key not in cursors:
            row = db.execute(
                "SELECT time, value FROM summary_cursor WHERE node = ? AND channel = ?", key
            ).fetchone()
            cursors[key] = tuple(row) if row else None
        cur = cursors[key]
        if cur is not None and r.time <= cur[0]:
            late.append(r)
            continue
        hours.add_reading(r)
        if cur is not None and r.channel in ENERGY_CHANNELS:
            hours.add_segment(r.node, r.channel, cur, (r.time, r.value))
        cursors[key] = (r.time, r.value)
    # Late readings: redo, from the stored readings, every hour whose values or energy they
    # change: their own, and those the segments to their neighbours span.
    dirty = set()
    for r in late:
        first = last = int(r.time // HOUR) * HOUR
        if r.channel in ENERGY_CHANNELS:
            before = _raw_before(db, r.node, r.channel, r.time)
            after = _raw_from(db, r.node, r.channel, r.time + 1e-6)
            if before is not None:
                first = int(before[0] // HOUR) * HOUR
            if after is not None:
                last = int(after[0] // HOUR) * HOUR
        for hour in range(first, last + HOUR, HOUR):
            dirty.add((r.node, r.channel, hour))
    for key in sorted(dirty):
        _recompute(db, hours.get(*key))
    with db.atomic():  # one transaction: sqlite-utils commits on its own inside `with db.conn`
        n = hours.write()
        db["summary_cursor"].upsert_all(
            (
                {"node": k[0], "channel": k[1], "time": v[0], "value": v[1]}
                for k, v in cursors.items()
                if v is not None
            ),
            pk=("node", "channel"),
        )
    return n
