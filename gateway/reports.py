"""Energy reports for the town's council: ``reverbere report --month 2026-11`` / ``--year 2026``.

A report covers one local month or year (``[site] timezone``) and says, from the gateway's
hourly summaries and anomaly events:

* the energy of each building and of each group of lamps, against the same period of a
  reference year (the year before, unless told) when the gateway has summaries of it;
* the share of hours measured (an hour with no summary is a gap: the figure is then a floor);
* the waste the detectors found and what it cost (:mod:`gateway.pipeline.waste`), and the
  events still open.

It is written as HTML with charts (SVG made by pygal, inline, no script or style loaded from the
internet: the file opens offline) and as CSV (:func:`gateway.render.write_excel_csv` for
French Excel, the default). A yearly report also writes the OPERAT CSV: per building, its final
energy per energy type in kWh and the share of hours measured, what the décret tertiaire's yearly
declaration asks for buildings of 1,000 m² or more (the gateway does not know the floor areas:
the energy manager keeps the buildings concerned).

A node is a lamp when ``[detect]`` says so (``lamps``, ``[[detect.lighting]]``), else a building
meter. Groups of lamps are the ``[[detect.lighting]]`` groups when there are some, else the
node ids' prefix (``lamp-012`` -> ``lamp``); a building is its meters' id prefix
(``mairie-e1`` and ``mairie-e2`` -> ``mairie``).
"""

import datetime as dt
import html
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlite_utils

from gateway import render
from gateway.pipeline import waste

LIGHTING, BUILDING = "éclairage", "bâtiment"
ENERGY_TYPE = "Électricité"  # what the meters measure (OPERAT's name for it)
# Distinct colours (Okabe-Ito: told apart with a colour vision deficiency too).
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")


class ReportError(ValueError):
    """The period asked for cannot be reported (a malformed month or year)."""


@dataclass(frozen=True)
class Period:
    """A local month or year: ``[start, end)`` in Unix seconds, and its name."""

    name: str  # "2026-11" or "2026"
    start: float
    end: float
    timezone: str

    @classmethod
    def month(cls, text: str, timezone: str) -> "Period":
        try:
            first = dt.datetime.strptime(text, "%Y-%m")
        except ValueError:
            raise ReportError(f"{text!r} is not a month: use YYYY-MM (2026-11)") from None
        nxt = first.replace(year=first.year + first.month // 12, month=first.month % 12 + 1)
        return cls._of(text, first, nxt, timezone)

    @classmethod
    def year(cls, year: int, timezone: str) -> "Period":
        if not 2000 <= year <= 2200:
            raise ReportError(f"{year} is not a year the gateway can have measured")
        return cls._of(str(year), dt.datetime(year, 1, 1), dt.datetime(year + 1, 1, 1), timezone)

    @classmethod
    def _of(cls, name: str, first: dt.datetime, nxt: dt.datetime, timezone: str) -> "Period":
        tz = ZoneInfo(timezone)
        return cls(
            name, first.replace(tzinfo=tz).timestamp(), nxt.replace(tzinfo=tz).timestamp(), timezone
        )

    @property
    def is_year(self) -> bool:
        return len(self.name) == 4

    def in_year(self, year: int) -> "Period":
        """The same period of another year."""
        if self.is_year:
            return Period.year(year, self.timezone)
        return Period.month(f"{year}-{self.name[5:]}", self.timezone)

    @property
    def first_year(self) -> int:
        return int(self.name[:4])

    @property
    def hours(self) -> int:
        return round((self.end - self.start) / 3600)


@dataclass
class AssetEnergy:
    """One building or group of lamps over a period: kWh and the share of hours measured."""

    asset: str
    kind: str  # LIGHTING or BUILDING
    nodes: list[str]
    kwh: float
    measured: float  # share of the period's hours with a summary, 0 to 1 (mean of its nodes)
    reference_kwh: float | None = None  # the same period of the reference year, if measured

    @property
    def change(self) -> float | None:
        """The change against the reference, as a fraction (+0.12 = 12 % more)."""
        if not self.reference_kwh:
            return None
        return self.kwh / self.reference_kwh - 1


@dataclass
class Report:
    """What :func:`build` gathers; :func:`write_html` and :func:`write_csv` lay it out."""

    period: Period
    reference: Period | None  # None when the gateway has nothing of the reference year
    assets: list[AssetEnergy]
    waste_by_kind: list[dict]
    waste_by_asset: list[dict]
    open_events: list[dict]
    daily: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> day -> kWh


@dataclass(frozen=True)
class Town:
    """What a report needs of the config: the time zone, which nodes are lamps, the groups."""

    timezone: str = "UTC"
    is_lamp: Callable[[str], bool] = lambda node: node.startswith("lamp")
    group_of: Callable[[str], str] = waste.prefix_group

    @classmethod
    def from_detect(cls, detect: object) -> "Town":
        """From a :class:`gateway.pipeline.detect.DetectConfig`."""
        groups = waste.group_function(waste.lighting_groups(detect))
        return cls(detect.timezone, detect.is_lamp, groups)  # type: ignore[attr-defined]

    def asset(self, node: str) -> tuple[str, str]:
        """A node's asset and its kind: its lighting group, or its building."""
        if self.is_lamp(node):
            return self.group_of(node), LIGHTING
        return waste.prefix_group(node), BUILDING


# An hour's Wh as the summariser leaves it: its ``wh``, else a power channel's mean (W over
# the hour); none for an hour without a reading. gateway/console/daily.py counts the same.
_HOURS = """
    SELECT node, channel, hour AS at, 1 AS hours,
           CASE WHEN count > 0 THEN coalesce(wh, CASE WHEN channel = 'p' THEN mean END) END AS wh
    FROM summaries WHERE channel IN ('e', 'p') AND hour >= :start AND hour < :end
"""
# The same Wh summed per local day, kept by the database (gateway/console/daily.py).
_DAYS = """
    SELECT node, channel, day AS at, hours, wh FROM console_energy_days
    WHERE day >= :start AND day < :end AND hours > 0
"""


def _energy_rows(db: sqlite_utils.Database, period: Period) -> str:
    """Where a period's energy is read from: the per-day sums when the database keeps them in
    the period's zone (its local midnights are then days of the sums), else the hours."""
    if "console_energy_zone" in db.table_names():
        zone = db.execute("SELECT zone FROM console_energy_zone").fetchone()
        if zone is not None and zone[0] == period.timezone:
            return _DAYS
    return _HOURS


def node_energy(db: sqlite_utils.Database, period: Period) -> dict[str, tuple[float, int, str]]:
    """Per node: Wh over the period, the hours measured and the channel they come from,
    summed by SQLite over an index range (the per-day sums, else the energy channels' hours).
    A node's energy counter (``e``) when it has one, else its power channel's energy (``p``)."""
    rows = db.execute(
        f"SELECT node, channel, sum(wh), sum(hours) FROM ({_energy_rows(db, period)})"
        " WHERE wh IS NOT NULL GROUP BY node, channel",
        {"start": int(period.start), "end": int(period.end)},
    ).fetchall()
    counters = {r[0] for r in rows if r[1] == "e"}
    return {r[0]: (r[2], r[3], r[1]) for r in rows if (r[1] == "e") == (r[0] in counters)}


def _daily(
    db: sqlite_utils.Database,
    period: Period,
    energy: dict[str, tuple[float, int, str]],
    town: Town,
) -> dict[str, dict[str, float]]:
    """kWh per kind of asset and local day of the period (month of a year), for the charts:
    SQLite sums the nodes' energy per day or hour and kind, a few hundred rows for Python."""
    lamps = [n for n in energy if town.is_lamp(n)]
    counters = [n for n, (_, _, channel) in energy.items() if channel == "e"]
    rows = db.execute(
        "SELECT at, node IN (SELECT value FROM json_each(:lamps)), sum(wh)"
        f" FROM ({_energy_rows(db, period)}) WHERE wh IS NOT NULL"
        " AND (channel = 'e') = (node IN (SELECT value FROM json_each(:counters)))"
        " GROUP BY 1, 2",
        {
            "start": int(period.start),
            "end": int(period.end),
            "lamps": json.dumps(lamps),
            "counters": json.dumps(counters),
        },
    ).fetchall()
    tz = ZoneInfo(period.timezone)
    fmt = "%m" if period.is_year else "%d"
    out: dict[str, dict[str, float]] = {}
    for at, lamp, wh in rows:
        series = out.setdefault(LIGHTING if lamp else BUILDING, {})
        day = dt.datetime.fromtimestamp(at, tz).strftime(fmt)
        series[day] = series.get(day, 0.0) + wh / 1000
    return out


def _assets(
    energy: dict[str, tuple[float, int, str]], town: Town, period: Period
) -> dict[tuple[str, str], AssetEnergy]:
    out: dict[tuple[str, str], AssetEnergy] = {}
    for node in sorted(energy):
        wh, hours, _ = energy[node]
        key = town.asset(node)
        a = out.setdefault(key, AssetEnergy(key[0], key[1], [], 0.0, 0.0))
        a.nodes.append(node)
        a.kwh += wh / 1000
        a.measured += min(1.0, hours / period.hours)
    for a in out.values():
        a.measured /= len(a.nodes)
        a.kwh = round(a.kwh, 3)
    return out


def build(
    db: sqlite_utils.Database,
    period: Period,
    town: Town,
    reference_year: int | None = None,
) -> Report:
    """Gather the report of ``period``; the reference is the same period of
    ``reference_year`` (default: the year before), left out when it has no summary."""
    energy = node_energy(db, period)
    assets = _assets(energy, town, period)
    ref = period.in_year(reference_year or period.first_year - 1)
    ref_energy = node_energy(db, ref)
    if ref_energy:
        for key, a in _assets(ref_energy, town, ref).items():
            if key in assets:
                assets[key].reference_kwh = a.kwh
            else:
                assets[key] = AssetEnergy(a.asset, a.kind, a.nodes, 0.0, 0.0, a.kwh)
    daily = _daily(db, period, energy, town)
    args = dict(since=period.start, until=period.end, timezone=period.timezone)
    by_kind = waste.waste(db, "kind", **args)
    by_asset = waste.waste(db, "node", **args)
    for row in by_asset:  # nodes -> their asset
        if row["node"] != "total":
            row["asset"] = town.asset(row["node"])[0]
    opened = [e for e in render.anomalies(db, open_only=True) if e["start"] < period.end]
    return Report(
        period,
        ref if ref_energy else None,
        sorted(assets.values(), key=lambda a: (a.kind != BUILDING, a.asset)),
        by_kind,
        by_asset,
        opened,
        daily,
    )


# -- CSV -------------------------------------------------------------------------------------

ENERGY_HEADER = (
    "actif",
    "type",
    "nœuds",
    "énergie (kWh)",
    "référence (kWh)",
    "évolution (%)",
    "heures mesurées (%)",
)
OPERAT_HEADER = (
    "année",
    "bâtiment",
    "compteurs",
    "type d'énergie",
    "énergie finale (kWh)",
    "heures mesurées (%)",
)


def _num(v: float | None, digits: int, excel: bool) -> str:
    if v is None:
        return ""
    text = f"{v:.{digits}f}"
    return render.excel_number(text) if excel else text


def _csv(rows: Sequence[Sequence[str]], excel: bool) -> str:
    if excel:
        return render.write_excel_csv(rows)
    import csv
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def energy_csv(report: Report, excel: bool = True) -> str:
    """One row per building and group of lamps: kWh, reference kWh, change, hours measured."""
    rows = [ENERGY_HEADER]
    for a in report.assets:
        change = None if a.change is None else 100 * a.change
        rows.append(
            (
                a.asset,
                a.kind,
                " ".join(a.nodes),
                _num(a.kwh, 1, excel),
                _num(a.reference_kwh, 1, excel),
                _num(change, 1, excel),
                _num(100 * a.measured, 1, excel),
            )
        )
    return _csv(rows, excel)


def operat_csv(report: Report, excel: bool = True) -> str:
    """The décret tertiaire's yearly figures: per building, final energy per energy type (kWh)
    and the share of hours measured. Buildings only (street lighting is not declared)."""
    rows = [OPERAT_HEADER]
    for a in report.assets:
        if a.kind != BUILDING or not a.nodes:
            continue
        rows.append(
            (
                report.period.name,
                a.asset,
                " ".join(a.nodes),
                ENERGY_TYPE,
                _num(a.kwh, 0, excel),
                _num(100 * a.measured, 1, excel),
            )
        )
    return _csv(rows, excel)


# -- HTML ------------------------------------------------------------------------------------


def _chart_style():
    from pygal.style import Style

    return Style(colors=COLOURS, font_family="sans-serif", background="white")


def energy_chart(report: Report, kind: str) -> str:
    """Bars of each asset of one kind (its own scale: lamps are not flattened by buildings),
    this period beside the reference, values printed on the bars. Inline SVG, no script."""
    import pygal

    assets = [a for a in report.assets if a.kind == kind]
    chart = pygal.Bar(
        title=f"Énergie par {'groupe' if kind == LIGHTING else 'bâtiment'} ({kind}), kWh",
        style=_chart_style(),
        js=[],  # pygal's tooltips script comes from its web site: nothing loads offline
        disable_xml_declaration=True,
        print_values=True,
        value_formatter=lambda v: f"{v:,.0f}".replace(",", "\u202f"),
        x_label_rotation=20,
        width=800,
        height=360,
    )
    chart.x_labels = [a.asset for a in assets]
    chart.add(report.period.name, [a.kwh for a in assets])
    if report.reference is not None:
        chart.add(report.reference.name, [a.reference_kwh for a in assets])
    return chart.render(is_unicode=True)


def daily_chart(report: Report, kind: str) -> str:
    """Energy per day (per month in a yearly report) of one kind of asset."""
    import pygal

    series = report.daily.get(kind, {})
    unit = "mois" if report.period.is_year else "jour"
    chart = pygal.Line(
        title=f"Énergie par {unit} ({kind}), kWh",
        style=_chart_style(),
        js=[],
        disable_xml_declaration=True,
        show_legend=False,
        dots_size=3,
        width=800,
        height=300,
    )
    chart.x_labels = sorted(series)
    chart.add(kind, [round(series[d], 1) for d in sorted(series)])
    return chart.render(is_unicode=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fr(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "—"
    return f"{v:,.{digits}f}".replace(",", "\u202f").replace(".", ",")


def to_html(report: Report) -> str:
    """The report as one HTML page (French), charts inline."""
    p, tz = report.period, report.period.timezone
    title = f"Rapport énergie {'année' if p.is_year else 'mois'} {p.name}"
    ref = (
        f"comparé à {report.reference.name}"
        if report.reference
        else "sans année de référence mesurée"
    )
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Du {render.local_iso(p.start, tz)[:10]} au {render.local_iso(p.end - 1, tz)[:10]}"
        f" inclus, heures locales ({html.escape(tz)}), {html.escape(ref)}.</p>",
        "<h2>Énergie</h2>",
    ]
    rows = [
        (
            a.asset,
            a.kind,
            _fr(a.kwh),
            _fr(a.reference_kwh),
            "—" if a.change is None else _fr(100 * a.change) + " %",
            _fr(100 * a.measured) + " %",
        )
        for a in report.assets
    ]
    parts.append(
        _table(
            ("actif", "type", "kWh", "référence kWh", "évolution", "heures mesurées"),
            rows,
        )
    )
    for kind in (BUILDING, LIGHTING):
        if any(a.kind == kind for a in report.assets):
            parts.append(energy_chart(report, kind))
            parts.append(daily_chart(report, kind))
    parts.append("<h2>Gaspillage détecté</h2>")
    if report.waste_by_kind:
        parts.append(
            _table(
                ("nature", "événements", "en cours", "kWh", "coût (€)"),
                [
                    (
                        "total" if r["kind"] == "total" else waste.kind_words(r["kind"]),
                        r["events"],
                        r["open"],
                        _fr(r["kwh"], 2),
                        _fr(r["eur"], 2),
                    )
                    for r in report.waste_by_kind
                ],
            )
        )
        parts.append(
            _table(
                ("nœud", "actif", "événements", "kWh", "coût (€)"),
                [
                    (r["node"], r.get("asset", ""), r["events"], _fr(r["kwh"], 2), _fr(r["eur"], 2))
                    for r in report.waste_by_asset
                ],
            )
        )
    else:
        parts.append("<p>Aucun gaspillage détecté sur la période.</p>")
    parts.append(f"<h2>Anomalies en cours</h2><p>Heures locales ({html.escape(tz)}).</p>")
    if report.open_events:
        parts.append(
            _table(
                ("depuis", "nœud", "nature", "kWh gaspillés", "raison"),
                [
                    (
                        render.local_iso(e["start"], tz)[:16],
                        e["node"],
                        waste.kind_words(e["kind"]),
                        _fr(e.get("waste_kwh"), 2),
                        e["reason"],
                    )
                    for e in report.open_events
                ],
            )
        )
    else:
        parts.append("<p>Aucune.</p>")
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:auto}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #999;padding:.2em .5em}td{text-align:right}"
        "td:first-child,td:nth-child(2){text-align:left}"
    )
    return (
        "<!doctype html><html lang='fr'><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{style}</style><body>"
        + "".join(parts)
        + "</body></html>"
    )


def write(
    report: Report, out_dir: str | Path, excel: bool = True, stem: str = "rapport"
) -> list[Path]:
    """Write ``<stem>-<period>.html`` and ``.csv`` (and ``operat-<year>.csv`` for a year)
    into ``out_dir``; returns the paths. The CSV files are UTF-8 (with a BOM for Excel)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = report.period.name
    paths = [out / f"{stem}-{name}.html", out / f"{stem}-{name}.csv"]
    paths[0].write_text(to_html(report), encoding="utf-8")
    paths[1].write_bytes(energy_csv(report, excel).encode("utf-8"))
    if report.period.is_year:
        paths.append(out / f"operat-{name}.csv")
        paths[2].write_bytes(operat_csv(report, excel).encode("utf-8"))
    return paths
