"""What the Node, Energy and Gateway pages read, in the console's thread (``ConsoleStore.run``).

Every query is a primary-key range or look-up: a node's readings by ``(node, channel, time)``,
its hourly summaries by ``(node, channel, hour)``, its events through the ``anomalies`` node
index. The Energy page needs every node's energy over a month, which no single cheap query
gives; :class:`EnergyLedger` keeps each past local day's Wh per node in memory (a month of
2,000 nodes is 62,000 numbers) and asks the database only for the days it does not hold and
for today, so a page costs today's hours, not the month's.
"""

import asyncio
import datetime as dt
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import sqlite_utils

from gateway.console.store import ConsoleStore, node_group, node_kind
from gateway.pipeline.detect import DetectConfig
from gateway.pipeline.waste import group_function, lighting_groups

SPANS = {"day": 86400, "week": 7 * 86400, "month": 31 * 86400}  # the node page's charts
NODE_EVENTS = 50  # a node's events on its page, newest first
RECENT_DAYS = 2  # days back that may still change (late packs, backfill): re-read every 10 min
RECENT_TTL = 600.0
ENERGY_TTL = 600.0  # the Energy page's figures are at most this old (today's included)
ENERGY_CHANNELS = ("e", "p")  # a node's energy: its counter's Wh, else its power's


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
    )


# --- energy --------------------------------------------------------------------------------


def local_midnight(t: float, tz: ZoneInfo, days_back: int = 0) -> float:
    """The Unix time of the local midnight that starts ``t``'s day, ``days_back`` days before
    (a local day is 23 or 25 hours on the days the clocks change)."""
    d = dt.datetime.fromtimestamp(t, tz).date() - dt.timedelta(days=days_back)
    return dt.datetime.combine(d, dt.time(), tz).timestamp()


def energy_channel(db: sqlite_utils.Database, node: str) -> str | None:
    """``e`` when the node has an energy counter, else ``p``, else None (a sensor only)."""
    have = {
        r[0]
        for r in db.execute(
            "SELECT channel FROM summary_cursor WHERE node = ? AND channel IN ('e', 'p')", [node]
        )
    }
    return next((c for c in ENERGY_CHANNELS if c in have), None)


def days_wh(
    db: sqlite_utils.Database, node: str, channel: str, days: list[tuple[float, float]]
) -> list[float | None]:
    """The node's Wh in each ``(start, end)`` day, None for a day without a summary; one
    query over the primary key per node (``summaries (node, channel, hour)``)."""
    if not days:
        return []
    values = ", ".join("(?, ?, ?)" for _ in days)
    args: list[Any] = [x for i, (s, e) in enumerate(days) for x in (i, int(s), int(e))]
    # A power channel's hourly mean in W is its Wh over that hour when the summariser had no
    # segment to integrate (reports.node_energy reads it the same way).
    rows = db.execute(
        f"WITH d(i, s, e) AS (VALUES {values})"
        " SELECT d.i, sum(coalesce(m.wh, CASE WHEN m.channel = 'p' THEN m.mean END))"
        " FROM d JOIN summaries m ON m.node = ? AND m.channel = ? AND m.hour >= d.s"
        " AND m.hour < d.e AND m.count > 0 GROUP BY d.i",
        [*args, node, channel],
    ).fetchall()
    out: list[float | None] = [None] * len(days)
    for i, wh in rows:
        out[i] = wh
    return out


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


class EnergyLedger:
    """Past local days' Wh per node, kept in memory (see the module); thread-confined to the
    console's database thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._days: dict[float, tuple[float, dict[str, float | None]]] = {}  # start -> (when, Wh)
        self._channels: dict[str, str | None] = {}
        self._clock = clock

    def _channel(self, db: sqlite_utils.Database, node: str) -> str | None:
        if self._channels.get(node) is None:
            self._channels[node] = energy_channel(db, node)
        return self._channels[node]

    def days(
        self,
        db: sqlite_utils.Database,
        nodes: list[str],
        starts: list[float],
        ends: list[float],
        now: float,
    ) -> dict[float, dict[str, float | None]]:
        """Wh per node for each day ``[starts[i], ends[i])``, today's always fresh."""
        fresh = self._clock()
        wanted = []
        for s, e in zip(starts, ends, strict=True):
            held = self._days.get(s)
            recent = now - e < RECENT_DAYS * 86400
            if e > now or held is None or (recent and fresh - held[0] > RECENT_TTL):
                wanted.append((s, e))
        if wanted:
            got: dict[float, dict[str, float | None]] = {s: {} for s, _ in wanted}
            for node in nodes:
                channel = self._channel(db, node)
                if channel is None:
                    continue
                for (s, _), wh in zip(wanted, days_wh(db, node, channel, wanted), strict=True):
                    got[s][node] = wh
            for s, e in wanted:
                if e <= now:
                    self._days[s] = (fresh, got[s])
            result = {s: self._days[s][1] if s in self._days else {} for s in starts}
            result.update({s: got[s] for s, e in wanted if e > now})
            return result
        return {s: self._days[s][1] for s in starts}

    def energy(self, db: sqlite_utils.Database, detect: DetectConfig, now: float) -> list[AssetRow]:
        """Per building (meters' id prefix) and lighting group: today, the last 7 local days
        and the last 31 (today included), against the same days a year before."""
        tz = detect.tz
        nodes = [r[0] for r in db.execute("SELECT id FROM nodes WHERE key IS NOT NULL ORDER BY id")]
        group_of = group_function(lighting_groups(detect))
        starts = [local_midnight(now, tz, k) for k in range(31)]
        ends = [local_midnight(now, tz, k - 1) for k in range(31)]
        this = self.days(db, nodes, starts, ends, now)
        year = 365 * 86400  # the same weekdays a year (52 weeks + a day) before: close enough
        ref_s = [local_midnight(s - year, tz) for s in starts]
        ref_e = [local_midnight(e - year, tz) for e in ends]
        before = self.days(db, nodes, ref_s, ref_e, now)
        rows: dict[str, AssetRow] = {}
        for node in nodes:
            kind = node_kind(detect, node)
            asset = group_of(node) if kind == "lamp" else node_group(node)
            row = rows.setdefault(asset, AssetRow(asset, kind, 0))
            row.nodes += 1
            for period, n_days in zip(PERIODS, (1, 7, 31), strict=True):
                wh = [this[s].get(node) for s in starts[:n_days]]
                ref = [before[s].get(node) for s in ref_s[:n_days]]
                row.kwh[period] = row.kwh.get(period, 0.0) + sum(w or 0.0 for w in wh) / 1000
                if any(r is not None for r in ref):
                    old = row.reference.get(period) or 0.0
                    row.reference[period] = old + sum(r or 0.0 for r in ref) / 1000
        return sorted(rows.values(), key=lambda r: (r.kind != "building", r.asset))


class EnergyBoard:
    """The Energy page's figures, computed off the page: the first time when the console
    starts, then again in the background once they are ``ENERGY_TTL`` old, in a database
    thread of their own (the other pages do not queue behind it). A visit reads the last
    figures (at most ten minutes old, and says when they were computed): re-reading every
    node's today at each visit cost 0.4 s with a town of 2,000 nodes, and the first visit
    after a start, which fills the ledger, 6 s (issue 16). Only the first visit before the
    first computation ends waits for it."""

    def __init__(
        self, database: os.PathLike | str, detect: DetectConfig, clock: Callable[[], float]
    ):
        self.detect = detect
        self._clock = clock
        self._store = ConsoleStore(database)
        self._ledger = EnergyLedger()
        self._figures: tuple[float, list[AssetRow]] | None = None  # (computed at, rows)
        self._computing: asyncio.Future[list[AssetRow]] | None = None

    def _compute(self) -> asyncio.Future[list[AssetRow]]:
        if self._computing is None:
            now = self._clock()

            async def compute() -> list[AssetRow]:
                try:
                    rows = await self._store.run(self._ledger.energy, self.detect, now)
                    self._figures = (now, rows)
                    return rows
                finally:
                    self._computing = None

            self._computing = asyncio.ensure_future(compute())
        return self._computing

    def start(self) -> None:
        """Compute the figures now, in the background (the console's start)."""
        self._compute()

    async def figures(self) -> tuple[float, list[AssetRow]]:
        """(when they were computed, per asset): the last figures, refreshed in the
        background once stale; awaited only when there are none yet."""
        if self._figures is None:
            await asyncio.shield(self._compute())
            assert self._figures is not None
            return self._figures
        if self._clock() - self._figures[0] > ENERGY_TTL:
            self._compute()
        return self._figures

    async def refresh(self) -> None:
        """Compute the figures again now, every day re-read (the ledger keeps past days for
        good), and wait for them (after the one under way)."""
        if self._computing is not None:
            await asyncio.shield(self._computing)
        self._ledger = EnergyLedger()
        await asyncio.shield(self._compute())

    async def close(self) -> None:
        if self._computing is not None:
            await asyncio.wait([self._computing])
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
