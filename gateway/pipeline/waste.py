"""Waste in kWh and euros: the tariff of ``[site]`` and the sums ``reverbere waste`` prints.

The detect stage counts an event's waste (:mod:`gateway.pipeline.detect.events`: the energy a
channel drew above what its detector expected, over the event's span) and prices it here, with
:meth:`Tariff.cost`, as it goes. The tariff is the town's, in ``[site]``::

    price_kwh = 0.2016                  # € per kWh, every hour (or the peak hours' price)
    off_peak_price_kwh = 0.1470         # optional: € per kWh in the off-peak hours
    off_peak_hours = ["22:00-06:00"]    # with it: local times, "HH:MM-HH:MM", may cross midnight

An interval that crosses an off-peak edge is split there, its energy shared in proportion to the
time on each side (the waste of one interval is drawn evenly). Without ``price_kwh`` events
carry kWh and no euros.

:func:`waste` sums the events' waste by node, lighting group, kind or month (local time).
"""

import datetime as dt
import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import sqlite_utils

TARIFF_KEYS = ("price_kwh", "off_peak_price_kwh", "off_peak_hours")
MAX_PRICE = 10.0  # € per kWh: above it, a typing slip (a price in cents, say)
WASTE_BY = ("node", "group", "kind", "month")
WASTE_COLUMNS = ("events", "open", "kwh", "eur")

# Kinds in words, for the people who read the reports (the kind's code stays in the data).
# A kind not listed here prints as its code.
KIND_WORDS = {
    "lit_by_day": "allumé de jour",
    "lit_in_switch_off": "allumé pendant l'extinction",
    "not_dimmed": "abaissement non appliqué",
    "wrong_time": "consommation à une heure inhabituelle",
    "spike": "pic de consommation",
    "dip": "creux de consommation",
    "dropout": "compteur muet",
    "stuck_meter": "compteur bloqué",
    "dark_at_night": "éteint de nuit",
    "off_schedule": "consommation hors horaires",
    "drift": "dérive de consommation",
    "unusual": "consommation inhabituelle",
    "stuck": "capteur bloqué",
    "silent": "nœud muet",
    "counter_reset": "compteur remis à zéro",
}


def kind_words(kind: str) -> str:
    """A kind of event in French words (its code when it has none yet)."""
    return KIND_WORDS.get(kind, kind.replace("_", " "))


_RANGE = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)")


class TariffError(ValueError):
    """A tariff key of ``[site]`` is wrong; ``key`` names it."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class Tariff:
    """The price of a kWh at each local time: ``price`` (€/kWh), or ``off_peak_price`` within
    the ``off_peak`` ranges (minutes of the local day, ``(start, end)``, end may be before
    start: across midnight)."""

    price: float
    timezone: str = "UTC"
    off_peak_price: float | None = None
    off_peak: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_site(cls, site: Mapping) -> "Tariff | None":
        """The tariff of a ``[site]`` table (its ``timezone`` too); None without
        ``price_kwh``. Raises :class:`TariffError` naming the key."""
        if "price_kwh" not in site:
            for key in ("off_peak_price_kwh", "off_peak_hours"):
                if key in site:
                    raise TariffError(key, "needs price_kwh (the price of the other hours)")
            return None
        price = _price(site, "price_kwh")
        has_price, has_hours = "off_peak_price_kwh" in site, "off_peak_hours" in site
        if has_price != has_hours:
            key = "off_peak_hours" if has_hours else "off_peak_price_kwh"  # the one given
            raise TariffError(key, "off-peak hours need both off_peak_price_kwh and off_peak_hours")
        ranges: list[tuple[int, int]] = []
        if has_hours:
            hours = site["off_peak_hours"]
            if not isinstance(hours, list) or not hours:
                raise TariffError("off_peak_hours", 'expected a list such as ["22:00-06:00"]')
            for text in hours:
                m = _RANGE.fullmatch(str(text))
                if m is None:
                    raise TariffError("off_peak_hours", f"{text!r} is not HH:MM-HH:MM")
                a, b = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
                if a == b or b > 1440:
                    raise TariffError("off_peak_hours", f"{text!r} is an empty range")
                ranges.append((a, b % 1440))
        return cls(
            price,
            str(site.get("timezone", "UTC")),
            _price(site, "off_peak_price_kwh") if has_price else None,
            tuple(ranges),
        )

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def off_peak_at(self, t: float) -> bool:
        """Whether Unix time ``t`` falls in the off-peak hours (local time)."""
        local = dt.datetime.fromtimestamp(t, self.tz)
        m = local.hour * 60 + local.minute + local.second / 60
        return any((a <= m < b) if a < b else (m >= a or m < b) for a, b in self.off_peak)

    def price_at(self, t: float) -> float:
        """€ per kWh at Unix time ``t``."""
        if self.off_peak_price is not None and self.off_peak_at(t):
            return self.off_peak_price
        return self.price

    def cost(self, start: float, end: float, kwh: float) -> float:
        """The euros of ``kwh`` drawn evenly from ``start`` to ``end`` (Unix seconds), split
        at every off-peak edge in between."""
        if not self.off_peak or end <= start:
            return kwh * self.price_at(start)
        euros, t = 0.0, start
        while t < end:
            edge = min(end, self._next_edge(t))
            euros += kwh * (edge - t) / (end - start) * self.price_at(t)
            t = edge
        return euros

    def _next_edge(self, t: float) -> float:
        """The first off-peak edge (local wall time) after ``t``."""
        tz = self.tz
        local = dt.datetime.fromtimestamp(t, tz)
        best = t + 86400.0
        for day in (local.date(), local.date() + dt.timedelta(days=1)):
            for edge in {m for r in self.off_peak for m in r}:
                wall = dt.datetime.combine(day, dt.time(edge // 60, edge % 60), tz)
                at = wall.timestamp()
                if t < at < best:
                    best = at
        return best


def _price(site: Mapping, key: str) -> float:
    value = site[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TariffError(key, f"expected a number of euros per kWh, got {value!r}")
    if not 0 <= value <= MAX_PRICE:
        raise TariffError(key, f"{value} is out of range (0 to {MAX_PRICE:g} € per kWh)")
    return float(value)


# -- groups of nodes -------------------------------------------------------------------------


def prefix_group(node: str) -> str:
    """A node's group when no lighting group names it: its id without the trailing number
    (``lamp-012`` -> ``lamp``, ``mairie-e1`` -> ``mairie``)."""
    head = re.sub(r"[-_.]?[a-z]?\d+$", "", node)
    return head or node


def group_function(groups: Mapping[str, Sequence[str]] | None) -> Callable[[str], str]:
    """``node -> group``: the first lighting group (``[detect]``, name -> node id patterns)
    whose pattern matches the node, else :func:`prefix_group`."""
    items = list((groups or {}).items())

    def group_of(node: str) -> str:
        for name, patterns in items:
            if any(fnmatch.fnmatchcase(node, p) for p in patterns):
                return name
        return prefix_group(node)

    return group_of


def lighting_groups(detect_config: object) -> dict[str, list[str]] | None:
    """The lighting groups ``[[detect.lighting]]`` defines (name -> node id patterns), if any;
    None otherwise (groups are then the id prefixes: :func:`prefix_group`)."""
    groups = getattr(detect_config, "lighting", None) or getattr(
        detect_config, "lighting_groups", None
    )
    if not groups:
        return None
    if isinstance(groups, Mapping):
        return {str(k): _patterns(v) for k, v in groups.items()}
    out: dict[str, list[str]] = {}
    for g in groups:  # objects with a name and nodes (patterns)
        name = getattr(g, "name", None)
        if name is not None:
            out[str(name)] = _patterns(getattr(g, "nodes", getattr(g, "patterns", ())))
    return out or None


def _patterns(v: object) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, Sequence):
        return [str(p) for p in v]
    return [str(p) for p in getattr(v, "nodes", getattr(v, "patterns", ()))]


# -- sums ------------------------------------------------------------------------------------


def events(
    db: sqlite_utils.Database, since: float | None = None, until: float | None = None
) -> list[dict]:
    """The events of a kind of waste (``waste_kwh`` not NULL) still open, or that ended at or
    after ``since``, and started before ``until``; oldest first."""
    sql = "SELECT * FROM anomalies WHERE waste_kwh IS NOT NULL"
    args: list = []
    if since is not None:
        sql += " AND (end IS NULL OR end >= ?)"
        args.append(since)
    if until is not None:
        sql += " AND start < ?"
        args.append(until)
    return list(db.query(sql + " ORDER BY start, id", args))


def waste(
    db: sqlite_utils.Database,
    by: str = "node",
    since: float | None = None,
    until: float | None = None,
    *,
    group_of: Callable[[str], str] = prefix_group,
    timezone: str = "UTC",
) -> list[dict]:
    """The waste of the events :func:`events` selects, summed per ``by`` (node, group, kind,
    or month: the local month, ``2026-11``, an event counts in the month it started): rows of
    ``by``, ``events``, ``open`` (still ongoing), ``kwh``, ``eur`` (None without a tariff),
    the costliest first, then a ``total`` row."""
    if by not in WASTE_BY:
        raise ValueError(f"unknown grouping {by!r} (one of {', '.join(WASTE_BY)})")
    tz = ZoneInfo(timezone)
    sums: dict[str, dict] = {}
    total = {by: "total", "events": 0, "open": 0, "kwh": 0.0, "eur": None}
    for ev in events(db, since, until):
        if by == "node":
            key = ev["node"]
        elif by == "group":
            key = group_of(ev["node"])
        elif by == "kind":
            key = ev["kind"]
        else:
            key = dt.datetime.fromtimestamp(ev["start"], tz).strftime("%Y-%m")
        for row in (sums.setdefault(key, {by: key, "events": 0, "open": 0, "kwh": 0.0}), total):
            row["events"] += 1
            row["open"] += ev["end"] is None
            row["kwh"] += ev["waste_kwh"] or 0.0
            if ev["waste_eur"] is not None:
                row["eur"] = (row.get("eur") or 0.0) + ev["waste_eur"]
    rows = sorted(
        sums.values(),
        key=lambda r: (r[by] if by == "month" else "", -(r.get("eur") or 0.0), -r["kwh"], r[by]),
    )
    for r in [*rows, total]:
        r["kwh"] = round(r["kwh"], 3)
        r["eur"] = None if r.get("eur") is None else round(r["eur"], 2)
    return [*rows, total] if rows else []
