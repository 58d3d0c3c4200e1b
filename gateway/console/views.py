"""What the Node, Energy and Gateway pages read, in the console's thread (``ConsoleStore.run``).

Every query is a primary-key range or look-up: a node's readings by ``(node, channel, time)``,
its hourly summaries by ``(node, channel, hour)``, its events through the ``anomalies`` node
index. The Energy page needs every node's energy over a month: it reads the per-day sums that
the database keeps as summaries are written (:mod:`gateway.console.daily`), not the summaries.
"""

import asyncio
import datetime as dt
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import sqlite_utils

from gateway.console import daily
from gateway.console.store import ConsoleStore, node_group, node_kind
from gateway.console.updates import UpdateView, update_view
from gateway.pipeline.detect import DetectConfig
from gateway.pipeline.waste import group_function, lighting_groups

SPANS = {"day": 86400, "week": 7 * 86400, "month": 31 * 86400}  # the node page's charts
NODE_EVENTS = 50  # a node's events on its page, newest first
ENERGY_TTL = 60.0  # the Energy page's figures are at most this old (today's included)


class UnknownNode(LookupError):
    pass


def _ref(db: sqlite_utils.Database, node: str) -> int:
    row = db.execute("SELECT ref FROM nodes WHERE id = ?", [node]).fetchone()
    if row is None:
        raise UnknownNode(node)
    return row[0]


def node_channels(db: sqlite_utils.Database, node: str) -> list[str]:
    """The channels the node has sent (the summariser's cursor: one row per channel)."""
    rows = db.execute("SELECT channel FROM summary_cursor WHERE node = ? ORDER BY channel", [node])
    return [r[0] for r in rows]


def series(
    db: sqlite_utils.Database, node: str, channel: str, span: str, now: float
) -> list[tuple[float, float]]:
    """(time, value) of a channel over the last ``span``: the raw readings for a day (at most
    a few thousand), the hourly means of ``summaries`` for a week or a month."""
    since = now - SPANS[span]
    if span == "day":
        rows = db.execute(
            "SELECT time, value FROM readings WHERE node = ? AND channel = ? AND time >= ?"
            " ORDER BY time",
            [_ref(db, node), channel, since],
        ).fetchall()
    else:
        rows = db.execute(
            "SELECT hour, mean FROM summaries WHERE node = ? AND channel = ? AND hour >= ?"
            " AND mean IS NOT NULL ORDER BY hour",
            [node, channel, int(since)],
        ).fetchall()
    return [(float(t), float(v)) for t, v in rows]


def node_events(db: sqlite_utils.Database, node: str, limit: int = NODE_EVENTS) -> list[dict]:
    """The node's events, newest first, with their reasons and waste (when computed)."""
    have = {r[1] for r in db.execute("PRAGMA table_info(anomalies)")}
    cols = ["id", "channel", "kind", "start", '"end"', "score", "reason", "ack_by"]
    cols += [c for c in ("waste_kwh", "waste_eur") if c in have]
    rows = db.execute(
        f"SELECT {', '.join(cols)} FROM anomalies WHERE node = ? ORDER BY start DESC LIMIT ?",
        [node, limit],
    ).fetchall()
    names = [c.strip('"') for c in cols]
    return [dict(zip(names, r, strict=True)) for r in rows]


@dataclass
class NodeView:
    """One node as the gateway sees it."""

    id: str
    group: str
    kind: str
    added: float
    last_seen: float | None
    battery: float | None
    retired: bool
    channels: list[str]
    config: dict[str, Any]
    events: list[dict]
    waste_kwh: float | None  # the sum of its events' waste (those listed)
    waste_eur: float | None
    update: UpdateView  # its firmware and its update (gateway.console.updates)


def node_view(
    db: sqlite_utils.Database,
    detect: DetectConfig,
    node_config: Callable[[str], dict[str, Any]],
    node: str,
) -> NodeView:
    row = db.execute(
        "SELECT added, last_seen, battery, key IS NULL FROM nodes WHERE id = ?", [node]
    ).fetchone()
    if row is None:
        raise UnknownNode(node)
    events = node_events(db, node)
    kwh = [e["waste_kwh"] for e in events if e.get("waste_kwh") is not None]
    eur = [e["waste_eur"] for e in events if e.get("waste_eur") is not None]
    return NodeView(
        node,
        node_group(node),
        node_kind(detect, node),
        row[0],
        row[1],
        row[2],
        bool(row[3]),
        node_channels(db, node),
        dict(node_config(node)),
        events,
        round(sum(kwh), 3) if kwh else None,
        round(sum(eur), 2) if eur else None,
        update_view(db, node, _ref(db, node)),
    )


# --- energy --------------------------------------------------------------------------------


def local_midnight(t: float, tz: ZoneInfo, days_back: int = 0) -> float:
    """The Unix time of the local midnight that starts ``t``'s day, ``days_back`` days before
    (a local day is 23 or 25 hours on the days the clocks change)."""
    d = dt.datetime.fromtimestamp(t, tz).date() - dt.timedelta(days=days_back)
    return dt.datetime.combine(d, dt.time(), tz).timestamp()


@dataclass
class AssetRow:
    """A building or a lighting group over today, this week and this month (kWh), and the
    same days a year before when the gateway has them."""

    asset: str
    kind: str  # lamp, building, other
    nodes: int
    kwh: dict[str, float] = field(default_factory=dict)  # period -> kWh
    reference: dict[str, float | None] = field(default_factory=dict)

    def change(self, period: str) -> float | None:
        ref = self.reference.get(period)
        return None if not ref else self.kwh.get(period, 0.0) / ref - 1


PERIODS = ("day", "week", "month")


def energy(db: sqlite_utils.Database, detect: DetectConfig, now: float) -> list[AssetRow]:
    """Per building (meters' id prefix) and lighting group: today, the last 7 local days and
    the last 31 (today included), against the same days a year before; from the per-day sums
    the database keeps (:mod:`gateway.console.daily`): two primary-key ranges."""
    tz = detect.tz
    nodes = [r[0] for r in db.execute("SELECT id FROM nodes WHERE key IS NOT NULL ORDER BY id")]
    group_of = group_function(lighting_groups(detect))
    firsts = [int(local_midnight(now, tz, n - 1)) for n in (1, 7, 31)]  # today, 7, 31 days
    this = daily.periods_wh(db, firsts, firsts[0])
    year = 365 * 86400  # the same weekdays a year (52 weeks + a day) before: close enough
    ref_firsts = [int(local_midnight(s - year, tz)) for s in firsts]
    before = daily.periods_wh(db, ref_firsts, ref_firsts[0])
    rows: dict[str, AssetRow] = {}
    for node in nodes:
        kind = node_kind(detect, node)
        asset = group_of(node) if kind == "lamp" else node_group(node)
        row = rows.setdefault(asset, AssetRow(asset, kind, 0))
        row.nodes += 1
        wh, ref = this.get(node), before.get(node)
        for i, period in enumerate(PERIODS):
            row.kwh[period] = row.kwh.get(period, 0.0) + ((wh[i] or 0.0) if wh else 0.0) / 1000
            if ref and ref[i] is not None:
                row.reference[period] = (row.reference.get(period) or 0.0) + ref[i] / 1000
    return sorted(rows.values(), key=lambda r: (r.kind != "building", r.asset))


class EnergyBoard:
    """The Energy page's figures, in a database thread of their own (the other pages do not
    queue behind them). The database keeps each node's Wh per local day as the summaries are
    written (:mod:`gateway.console.daily`), so the figures cost two primary-key ranges (62,000
    rows for 2,000 nodes, 0.1 to 0.2 s), not a month of summaries: computed at the console's
    start, then again in the background by a visit that finds them ``ENERGY_TTL`` old (the
    visit shows the last ones, and when they were computed). The start first makes sure the
    sums are those of the town's zone (:func:`gateway.console.daily.ensure_zone`): only the
    first start after the upgrade, or after ``[detect] timezone`` changed, recounts them from
    the summaries, and a first visit meanwhile waits for it."""

    def __init__(
        self, database: os.PathLike | str, detect: DetectConfig, clock: Callable[[], float]
    ):
        self.detect = detect
        self._clock = clock
        self._store = ConsoleStore(database)
        self._figures: tuple[float, list[AssetRow]] | None = None  # (computed at, rows)
        self._computing: asyncio.Future[list[AssetRow]] | None = None
        self._zone: asyncio.Future[bool] | None = None

    def _compute(self) -> asyncio.Future[list[AssetRow]]:
        if self._computing is None:
            now = self._clock()

            async def compute() -> list[AssetRow]:
                try:
                    if self._zone is not None:
                        await asyncio.shield(self._zone)
                    rows = await self._store.run(energy, self.detect, now)
                    self._figures = (now, rows)
                    return rows
                finally:
                    self._computing = None

            self._computing = asyncio.ensure_future(compute())
        return self._computing

    def start(self) -> None:
        """The sums in the town's zone, then the figures, in the background (the start)."""
        self._zone = asyncio.ensure_future(self._store.run(daily.ensure_zone, self.detect.timezone))
        self._compute()

    async def figures(self) -> tuple[float, list[AssetRow]]:
        """(when they were computed, per asset): the last figures, computed again in the
        background once ``ENERGY_TTL`` old; awaited only when there are none yet."""
        if self._figures is None:
            await asyncio.shield(self._compute())
            assert self._figures is not None
        elif self._clock() - self._figures[0] > ENERGY_TTL:
            self._compute()
        return self._figures

    async def refresh(self) -> None:
        """Compute the figures again now and wait for them (after the one under way)."""
        if self._computing is not None:
            await asyncio.shield(self._computing)
        await asyncio.shield(self._compute())

    async def close(self) -> None:
        pending = [f for f in (self._zone, self._computing) if f is not None]
        if pending:
            await asyncio.wait(pending)
        await self._store.close()


def waste_ledger(
    db: sqlite_utils.Database, detect: DetectConfig, since: float, limit: int = 200
) -> list[dict]:
    """The events with a waste that started since ``since`` (the ``start`` index), costliest
    first, with their node's asset."""
    have = {r[1] for r in db.execute("PRAGMA table_info(anomalies)")}
    if "waste_kwh" not in have:
        return []
    rows = db.execute(
        'SELECT id, node, kind, start, "end", reason, waste_kwh, waste_eur FROM anomalies'
        " WHERE start >= ? AND waste_kwh IS NOT NULL ORDER BY start DESC LIMIT ?",
        [since, limit],
    ).fetchall()
    keys = ("id", "node", "kind", "start", "end", "reason", "waste_kwh", "waste_eur")
    out = [dict(zip(keys, r, strict=True)) for r in rows]
    return sorted(out, key=lambda e: (-(e["waste_eur"] or 0.0), -(e["waste_kwh"] or 0.0)))


# --- the gateway ---------------------------------------------------------------------------


def storage(db: sqlite_utils.Database, path: os.PathLike | str) -> dict[str, float]:
    """The database's size (its pages, the WAL beside it) and the disk's free space."""
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    wal = f"{os.fspath(path)}-wal"
    usage = shutil.disk_usage(os.path.dirname(os.path.abspath(path)))
    return {
        "database_bytes": float(page_size * pages),
        "wal_bytes": float(os.path.getsize(wal)) if os.path.exists(wal) else 0.0,
        "free_bytes": float(usage.free),
        "disk_bytes": float(usage.total),
    }
