"""The operator's summaries: pulled back from the platform, printed as a table, CSV or JSON,
and drawn as a chart of energy per hour per node with the anomalies marked.

``reverbere summaries --from URL`` uses :func:`pull`; ``--from gateway`` reads the same
:class:`~gateway.sync.outbox.Summary` and :class:`~gateway.sync.outbox.Event` records from
the gateway's own tables (:func:`from_tables`); both print through the one formatter,
:func:`gateway.render.render`, and draw through :func:`write_chart`.
"""

import html
import json
import ssl
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx

from gateway import render
from gateway.pipeline import waste
from gateway.reports import COLOURS
from gateway.sync.outbox import ANOMALIES, RAW_SUFFIX, Event, Summary
from gateway.sync.sensorthings import id_from_link, iso, parse_time, rebase
from protocols.const import SUM_CHANNELS


class PullError(Exception):
    """The platform could not be read."""


@dataclass
class Pulled:
    """What the platform holds for a time range (only the Datastreams the gateway names)."""

    summaries: list[Summary] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    duplicates: int = 0  # Observations beyond the first for the same summary or event
    requests: int = 0


def _client(token, basic, ca_file, timeout) -> httpx.Client:
    headers = {"Authorization": "Bearer " + token} if token else {}
    verify = ssl.create_default_context(cafile=ca_file) if ca_file else True
    return httpx.Client(
        headers=headers,
        auth=httpx.BasicAuth(*basic) if basic else None,
        verify=verify,
        timeout=timeout,
    )


def _pages(client: httpx.Client, root: str, path: str, params: dict, out: Pulled) -> Iterator[dict]:
    url: str | None = root + "/" + path
    first = True
    while url:
        try:
            resp = client.get(url, params=params if first else None)
        except httpx.HTTPError as exc:
            raise PullError(f"cannot reach {root}: {exc}") from exc
        out.requests += 1
        first = False
        if resp.status_code in (401, 403):
            raise PullError(f"{root} refused the credentials ({resp.status_code})")
        if resp.status_code != 200:
            raise PullError(f"{url} answered {resp.status_code}: {resp.text[:200]}")
        page = resp.json()
        yield page
        link = page.get("@iot.nextLink")
        url = rebase(root, link) if link else None


def pull(
    url: str,
    start: float,
    end: float,
    *,
    token: str | None = None,
    basic: tuple[str, str] | None = None,
    ca_file: str | None = None,
    timeout: float = 60.0,
    nodes: Sequence[str] | None = None,
    page_size: int = 10000,
) -> Pulled:
    """Summaries and events with phenomenonTime in ``[start, end)`` from the SensorThings
    service at ``url``, following ``@iot.nextLink`` through every page."""
    root = url.rstrip("/")
    out = Pulled()
    streams: dict[str, tuple[str, str]] = {}
    with _client(token, basic, ca_file, timeout) as client:
        params = {
            "$select": "id,name",
            "$expand": "Datastreams($select=id,name)",
            "$top": "1000",
        }
        for page in _pages(client, root, "Things", params, out):
            for thing in page.get("value", []):
                node = thing.get("name", "")
                if nodes and node not in nodes:
                    continue
                for ds in thing.get("Datastreams", []):
                    prefix, _, stream = ds["name"].rpartition("/")
                    if prefix == node and not stream.endswith(RAW_SUFFIX):  # not raw readings
                        streams[str(ds["@iot.id"])] = (node, stream)
        params = {
            "$filter": f"phenomenonTime ge {iso(start)} and phenomenonTime lt {iso(end)}",
            "$select": "id,phenomenonTime,result,parameters",
            "$resultFormat": "dataArray",
            "$orderby": "id asc",
            "$top": str(page_size),
        }
        seen: set[tuple] = set()
        for page in _pages(client, root, "Observations", params, out):
            for group in page.get("value", []):
                ds = id_from_link(group["Datastream@iot.navigationLink"])
                if ds not in streams:
                    continue
                node, stream = streams[ds]
                cols = group["components"]
                for values in group["dataArray"]:
                    rec = dict(zip(cols, values, strict=True))
                    t = parse_time(rec["phenomenonTime"])
                    key, item = as_record(
                        node, stream, t, rec["result"], rec.get("parameters") or {}
                    )
                    if key in seen:
                        out.duplicates += 1
                        continue
                    seen.add(key)
                    (out.events if stream == ANOMALIES else out.summaries).append(item)
    # The gateway's order (gateway.render): by node, channel and hour; events by start, id.
    out.summaries.sort(key=lambda s: (s.node, s.channel, s.hour))
    out.events.sort(key=lambda e: (e.start, _event_number(e)))
    return out


def _event_number(e: Event) -> int:
    tail = (e.key or "").rpartition(":")[2]
    return int(tail) if tail.isdigit() else 0


def as_record(
    node: str, stream: str, t: int, result: float, p: dict
) -> tuple[tuple, Summary | Event]:
    """An Observation of the gateway's Datastream ``<node>/<stream>`` as the gateway's record,
    with its identity (what the platform must hold once)."""
    if stream == ANOMALIES:
        end = p.get("end")
        event = Event(
            node,
            str(p.get("channel", "")),
            t,
            # An open event goes out with end = start (gateway.pipeline.handoff): show it open.
            float(end) if end is not None and end != t else None,
            str(p.get("kind", "")),
            float(result),
            str(p.get("reason", "")),
            str(p["id"]) if "id" in p else None,
            waste_kwh=None if p.get("waste_kwh") is None else float(p["waste_kwh"]),
            waste_eur=None if p.get("waste_eur") is None else float(p["waste_eur"]),
        )
        return (node, stream, str(p.get("id", t))), event

    def num(v: object) -> float | None:
        return None if v is None else float(v)  # the wire drops ".0"; the tables do not

    summary = Summary(
        node,
        stream,
        t,
        int(p.get("count", 0)),
        num(p.get("min")),
        num(p.get("max")),
        # The result is the mean, except for a counter (Wh for the energy counter).
        shown_mean(stream, num(p.get("mean", result))),
        num(p.get("wh")),
    )
    return (node, stream, t), summary


SUMMARY_COLUMNS = ("node", "channel", "hour", "count", "min", "max", "mean", "wh")


def shown_mean(channel: str, mean: float | None) -> float | None:
    """The mean a summary shows: none for a counter (``e``, ``drop``), whose values only add
    up (its energy is in ``wh``); the same rule for both sources of ``summaries``."""
    return None if channel in SUM_CHANNELS else mean


# -- chart -----------------------------------------------------------------------------------

# Okabe-Ito (gateway.reports.COLOURS), told apart with a colour vision deficiency too; its
# vermillion is kept for the anomalies on every panel, so no node's line wears their colour.
ANOMALY_COLOUR = "#D55E00"
LINE_COLOURS = tuple(c for c in COLOURS if c != ANOMALY_COLOUR)
# Past the colours, a panel's lines take them again dashed, then dotted.
DASHES = (None, "9,4", "2,3")
MAX_LEGEND = 36  # a legend of more nodes than this hides the chart: the lines stay unnamed
PANEL_WIDTH, PANEL_HEIGHT = 1200, 460


class ChartError(Exception):
    """The chart cannot be written in that format here."""


@dataclass
class Panel:
    """One panel of the summaries chart: one kind of asset, one quantity, one scale and unit,
    so that lamps of 60 W are not flattened by buildings of 20 kWh (issue 15, item 6)."""

    title: str  # in French, for the town
    quantity: str  # the y axis: what is measured
    unit: str
    from_zero: bool  # energy and power start at 0; a temperature does not
    series: dict[str, dict[int, float]] = field(default_factory=dict)  # node -> hour -> value
    marks: list[tuple[int, float, str]] = field(default_factory=list)  # hour, value, label


def energy_per_hour(summaries: Sequence[Summary]) -> dict[str, dict[int, float]]:
    """Wh per hour per node: the energy counter's Wh when the node has one, else its power
    channel's Wh (or mean W over the hour)."""
    out: dict[str, dict[int, float]] = {}
    has_counter = {s.node for s in summaries if s.channel == "e" and s.wh is not None}
    for s in summaries:
        if s.node in has_counter:
            if s.channel == "e" and s.wh is not None:  # not the open hour's first reading
                out.setdefault(s.node, {})[s.hour] = float(s.wh)
        elif s.channel == "p":
            out.setdefault(s.node, {})[s.hour] = float(s.wh if s.wh is not None else s.mean)
    return out


def chart_panels(
    summaries: Sequence[Summary],
    events: Sequence[Event],
    is_lamp: Callable[[str], bool] | None = None,
) -> list[Panel]:
    """The panels of the summaries chart, those with data, in this order: street lights (mean
    power per hour, W), buildings (energy per hour, kWh: the meter's counter, else its power
    channel's), temperatures (mean per hour, °C). ``is_lamp``: the config's
    (:meth:`gateway.pipeline.detect.DetectConfig.is_lamp`), else the reports' default
    (:class:`gateway.reports.Town`: an id starting with ``lamp``).

    Each event is marked at its start hour on its node's line, labelled with its kind in
    French (:func:`gateway.pipeline.waste.kind_words`), the kinds of one node's events in the
    same hour on one marker; at 0 when the node has no value that hour (a dark lamp's missing
    reading), and left out of a panel the chart has not.
    """
    if is_lamp is None:
        from gateway.reports import Town

        is_lamp = Town().is_lamp
    lamps = Panel("Éclairage public : puissance moyenne par heure", "Puissance", "W", True)
    buildings = Panel("Bâtiments : énergie consommée par heure", "Énergie", "kWh", True)
    temperatures = Panel("Températures : moyenne par heure", "Température", "°C", False)
    for s in summaries:
        if s.channel == "p" and is_lamp(s.node):
            mean = s.mean if s.mean is not None else s.wh  # Wh over an hour: its mean W
            if mean is not None:
                lamps.series.setdefault(s.node, {})[s.hour] = float(mean)
        elif s.channel == "t" and s.mean is not None:
            temperatures.series.setdefault(s.node, {})[s.hour] = float(s.mean)
    metered = [s for s in summaries if not is_lamp(s.node)]
    for node, hours in energy_per_hour(metered).items():
        buildings.series[node] = {h: wh / 1000 for h, wh in hours.items()}
    # One marker per node and hour, naming every kind found there: labels drawn one over
    # another could not be read.
    kinds: dict[tuple[int, str, int], list[str]] = {}
    for e in events:
        at = 2 if e.channel == "t" else 0 if is_lamp(e.node) else 1
        words = kinds.setdefault((at, e.node, int(e.start) // 3600 * 3600), [])
        if waste.kind_words(e.kind) not in words:
            words.append(waste.kind_words(e.kind))
    panels = (lamps, buildings, temperatures)
    for (at, node, hour), words in kinds.items():
        value = panels[at].series.get(node, {}).get(hour, 0.0)
        panels[at].marks.append((hour, value, f"{node} : {', '.join(words)}"))
    return [p for p in panels if p.series]


def _number(v: float) -> str:
    """A figure as the town writes it: 4 significant digits, a decimal comma."""
    return f"{v:.4g}".replace(".", ",")


def _hour_ticks(hours: Iterable[int], zone: ZoneInfo) -> list[datetime]:
    """About a dozen x labels on round local hours (midnight, 06:00, 12:00...), whatever the
    zone's offset that day: pygal would place them on round UTC hours."""
    hours = list(hours)
    first, last = min(hours), max(hours)
    span = (last - first) / 3600
    step = next((s for s in (1, 2, 3, 6, 12, 24, 48) if span / s <= 12), 24 * 7)
    start = datetime.fromtimestamp(first, zone).replace(hour=0, minute=0, second=0)
    ticks = []
    for k in range(int(span) + 48):
        t = start + timedelta(hours=k)  # wall-clock hours: a tick stays at 06:00 across DST
        if t.hour % step or (step > 24 and (t.toordinal() - start.toordinal()) % (step // 24)):
            continue
        ts = t.timestamp()
        if first <= ts <= last:
            ticks.append(datetime.fromtimestamp(ts, UTC))
        elif ts > last:
            break
    return ticks


def _offline(root):  # a pygal xml_filter: the tree before it is written
    """Make the chart whole offline. Drop what it has no use for there: pygal's comments
    naming its web site, and the config script of its tooltips, whose code comes from that
    site. Give each marker the browser's own tooltip instead: an SVG ``<title>`` with its label
    and value (``lamp-003 : allumé de jour, 29/03 12h: 63 W``), shown on hover, no script."""
    for parent in list(root.iter()):
        for child in list(parent):
            tag = child.tag
            if not isinstance(tag, str) or tag.rpartition("}")[2] == "script":  # a comment
                parent.remove(child)
    for dots in [g for g in root.iter() if g.get("class") == "dots"]:
        words = {d.get("class"): d.text for d in dots if d.tag.rpartition("}")[2] == "desc"}
        if words.get("label"):
            title = dots.makeelement("title", {})
            title.text = f"{words['label']}, {words.get('value', '')}"
            dots.insert(0, title)
    return root


def _panel_svg(panel: Panel, zone: str) -> str:
    """One panel as pygal's SVG: its own y scale and unit, the nodes in the legend, the
    anomalies as labelled markers, local hours on the x axis; no script (pygal's tooltips
    are loaded from its web site: offline, nothing showed)."""
    import pygal
    from pygal.style import Style

    tz = ZoneInfo(zone)
    names = sorted(panel.series)
    colours = [LINE_COLOURS[i % len(LINE_COLOURS)] for i in range(len(names))]
    chart = pygal.DateTimeLine(
        title=panel.title,
        x_title=f"Heure locale ({zone})" if zone != "UTC" else "Heure (UTC)",
        y_title=f"{panel.quantity} ({panel.unit})",
        style=Style(
            colors=(*colours, ANOMALY_COLOUR),
            font_family="sans-serif",
            background="white",
            plot_background="white",
            value_label_font_size=11,
        ),
        # pygal hands the formatter a naive UTC datetime
        x_value_formatter=lambda d: d.replace(tzinfo=UTC).astimezone(tz).strftime("%d/%m %Hh"),
        value_formatter=lambda v: f"{_number(v)} {panel.unit}",
        x_labels=_hour_ticks(
            [h for hours in panel.series.values() for h in hours] + [m[0] for m in panel.marks],
            tz,
        ),
        x_label_rotation=30,
        include_x_axis=panel.from_zero,
        show_legend=len(names) <= MAX_LEGEND,
        truncate_legend=-1,
        print_labels=True,
        show_dots=False,
        js=[],
        width=PANEL_WIDTH,
        height=PANEL_HEIGHT,
    )
    chart.add_xml_filter(_offline)
    for i, node in enumerate(names):
        dash = DASHES[i // len(LINE_COLOURS) % len(DASHES)]
        points = [
            (datetime.fromtimestamp(h, UTC), v) for h, v in sorted(panel.series[node].items())
        ]
        chart.add(node, points, stroke_style={"width": 1.5, "dasharray": dash} if dash else None)
    chart.add(
        "Anomalies",
        [
            {"value": (datetime.fromtimestamp(h, UTC), v), "label": label}
            for h, v, label in panel.marks
        ],
        stroke=False,
        show_dots=True,
        dots_size=6,
    )
    return chart.render(is_unicode=True, disable_xml_declaration=True)


# The chart of a period without a summary: a sentence rather than an empty file.
_NOTHING = (
    f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {PANEL_WIDTH} {PANEL_HEIGHT}">'
    '<text x="40" y="60" font-family="sans-serif" font-size="20">'
    "Aucune mesure sur cette période.</text></svg>"
)


def write_chart(
    path: str | Path,
    summaries: Sequence[Summary],
    events: Sequence[Event],
    *,
    tz: str = "UTC",
    is_lamp: Callable[[str], bool] | None = None,
) -> Path:
    """Draw the summaries chart to ``.svg``, ``.html`` or ``.png``: one panel per kind of
    asset (:func:`chart_panels`), each on its own scale, anomalies marked and labelled, in
    French, hours in the town's zone ``tz`` (named under the x axis). The SVG and the page
    load nothing from the internet: they open offline, on the Pi or the town hall's PC."""
    path = Path(path)
    kind = path.suffix.lower()
    if kind not in (".svg", ".html", ".png"):
        raise ChartError(f"unknown chart format {kind or path.name!r}: use .svg, .html or .png")
    panels = chart_panels(summaries, events, is_lamp)
    if kind == ".png":
        _png(path, panels, tz)
        return path
    svgs = [_panel_svg(p, tz) for p in panels] or [_NOTHING]
    if kind == ".svg":
        # One file: the panels one under the other, each a nested <svg> of its own size.
        height = PANEL_HEIGHT * len(svgs)
        body = "".join(
            f'<svg y="{i * PANEL_HEIGHT}" width="{PANEL_WIDTH}" height="{PANEL_HEIGHT}">{s}</svg>'
            for i, s in enumerate(svgs)
        )
        path.write_text(
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{PANEL_WIDTH}" height="{height}" '
            f'viewBox="0 0 {PANEL_WIDTH} {height}">{body}</svg>',
            encoding="utf-8",
        )
        return path
    path.write_text(_chart_page(svgs, events, tz), encoding="utf-8")
    return path


def _chart_page(svgs: Sequence[str], events: Sequence[Event], tz: str) -> str:
    """The panels and a table of the anomalies, as one French page with nothing to fetch."""
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in cells) + "</tr>"
        for cells in (
            (
                render.local_iso(e.start, tz),
                render.local_iso(e.end, tz) if e.end is not None else "en cours",
                e.node,
                render.CHANNEL_LABELS.get(e.channel, e.channel),
                waste.kind_words(e.kind),
                e.reason,
            )
            for e in events
        )
    )
    head = (
        f"<th>début ({html.escape(tz)})</th><th>fin</th><th>nœud</th><th>grandeur</th>"
        "<th>anomalie</th><th>raison</th>"
    )
    return (
        "<!doctype html><html lang='fr'><meta charset='utf-8'>"
        "<title>Réverbère : résumés horaires</title>"
        "<body style='font-family:sans-serif'><h1>Résumés horaires</h1>"
        f"<p>Heures locales ({html.escape(tz)}).</p>"
        + "".join(f"<figure>{s}</figure>" for s in svgs)
        + "<h2>Anomalies</h2><table border=1><tr>"
        + head
        + "</tr>"
        + rows
        + "</table></body></html>"
    )


def _png(path: Path, panels: Sequence[Panel], tz: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ChartError(
            "PNG charts need matplotlib (pip install 'reverbere[png]'); .svg and .html do not"
        ) from exc
    zone = ZoneInfo(tz)
    fig, axes = plt.subplots(
        max(len(panels), 1), 1, figsize=(12, 4 * max(len(panels), 1)), squeeze=False
    )
    for ax, panel in zip(axes[:, 0], panels, strict=False):
        for i, node in enumerate(sorted(panel.series)):
            series = panel.series[node]
            xs = [datetime.fromtimestamp(h, zone) for h in sorted(series)]
            dash = DASHES[i // len(LINE_COLOURS) % len(DASHES)]
            ax.plot(
                xs,
                [series[h] for h in sorted(series)],
                linewidth=0.8,
                label=node,
                color=LINE_COLOURS[i % len(LINE_COLOURS)],
                linestyle=(0, tuple(int(x) for x in dash.split(","))) if dash else "-",
            )
        if panel.from_zero:
            ax.set_ylim(bottom=0)
        for h, v, label in panel.marks:
            ax.plot([datetime.fromtimestamp(h, zone)], [v], "v", color=ANOMALY_COLOUR)
            ax.annotate(label, (datetime.fromtimestamp(h, zone), v), fontsize=6)
        ax.set_title(panel.title)
        ax.set_ylabel(f"{panel.quantity} ({panel.unit})")
        ax.set_xlabel(f"Heure locale ({tz})")
        ax.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%d/%m %Hh", tz=zone))
        if len(panel.series) <= 20:
            ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def from_outbox(
    db, start: float, end: float, nodes: Sequence[str] | None = None
) -> tuple[list[Summary], list[Event]]:
    """What the gateway owes the platform for ``[start, end)``, as the platform will hold it:
    the sync outbox keeps the latest version of each summary and event (synced or not)."""
    sql = (
        "SELECT node, stream, time, result, parameters FROM sync_outbox "
        "WHERE time >= ? AND time < ? ORDER BY time, node, stream"
    )
    summaries, events = [], []
    for node, stream, t, result, params in db.execute(sql, [int(start), int(end)]):
        if nodes and node not in nodes:
            continue
        _, record = as_record(node, stream, t, result, json.loads(params))
        (events if stream == ANOMALIES else summaries).append(record)
    return summaries, events


def summary_rows(summaries: Iterable[Summary]) -> list[dict]:
    """Row dicts for :func:`gateway.render.render` (``SUMMARY_COLUMNS``)."""
    return [asdict(x) for x in summaries]


def event_rows(events: Iterable[Event]) -> list[dict]:
    """Row dicts for :func:`gateway.render.render` (``ANOMALY_COLUMNS``)."""
    out = []
    for e in events:
        d = asdict(e)
        key = (d.pop("key") or "").rpartition(":")[2]  # "<channel>:<kind>:<id>" or "<id>"
        d["id"] = int(key) if key.isdigit() else key
        out.append(d)
    return out


def from_tables(
    db, start: float, end: float, nodes: Sequence[str] | None = None
) -> tuple[list[Summary], list[Event]]:
    """The gateway's own summaries and anomaly events (tables ``summaries``, ``anomalies``)."""
    from gateway import render as report

    summaries = [
        Summary(
            r["node"],
            r["channel"],
            r["hour"],
            r["count"],
            r["min"],
            r["max"],
            shown_mean(r["channel"], r["mean"]),
            r["wh"],
        )
        for r in db.query(
            "SELECT * FROM summaries WHERE hour >= ? ORDER BY node, channel, hour",
            [int(start // 3600) * 3600],
        )
        # count 0 (only a counter segment's energy): not sent (gateway.pipeline.handoff), not shown
        if r["count"] and r["hour"] < end and (not nodes or r["node"] in nodes)
    ]
    events = [
        Event(
            r["node"],
            r["channel"],
            r["start"],
            r["end"],
            r["kind"],
            r["score"],
            r["reason"],
            str(r["id"]),
            waste_kwh=r.get("waste_kwh"),
            waste_eur=r.get("waste_eur"),
        )
        for r in report.anomalies(db, since=start)
        if r["start"] < end and (not nodes or r["node"] in nodes)
    ]
    return summaries, events
