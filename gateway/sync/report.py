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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from gateway import render
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


class ChartError(Exception):
    """The chart cannot be written in that format here."""


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


def write_chart(path: str | Path, summaries: Sequence[Summary], events: Sequence[Event]) -> Path:
    """Draw energy per hour per node, anomalies marked, to ``.svg``, ``.html`` or ``.png``."""
    path = Path(path)
    kind = path.suffix.lower()
    energy = energy_per_hour(summaries)
    if kind == ".png":
        _png(path, energy, events)
        return path
    if kind not in (".svg", ".html"):
        raise ChartError(f"unknown chart format {kind or path.name!r}: use .svg, .html or .png")
    import pygal

    chart = pygal.DateTimeLine(
        title="Energy per hour per node (Wh); anomalies marked",
        x_label_rotation=30,
        show_legend=len(energy) <= 30,
        show_dots=False,
        truncate_legend=20,
        x_value_formatter=lambda d: d.strftime("%m-%d %H:00"),
        width=1200,
        height=500,
        js=[],  # pygal's tooltips script comes from its web site: offline, nothing showed
    )
    for node, series in sorted(energy.items()):
        chart.add(node, [(datetime.fromtimestamp(h, UTC), v) for h, v in sorted(series.items())])
    marks = []
    for e in events:
        hour = int(e.start) // 3600 * 3600
        value = energy.get(e.node, {}).get(hour, 0.0)
        label = f"{e.node} {e.kind}: {e.reason}"
        marks.append({"value": (datetime.fromtimestamp(hour, UTC), value), "label": label})
    chart.add("anomalies", marks, stroke=False, show_dots=True, dots_size=6)
    svg = chart.render(is_unicode=True)
    if kind == ".svg":
        path.write_text(svg, encoding="utf-8")
        return path
    rows = "".join(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>".format(
            *(html.escape(x) for x in (render.iso(e.start), e.node, e.channel, e.kind, e.reason))
        )
        for e in events
    )
    path.write_text(
        "<!doctype html><meta charset='utf-8'><title>Réverbère summaries</title>"
        "<body style='font-family:sans-serif'>" + svg + "<h2>Anomalies</h2><table border=1>"
        "<tr><th>start</th><th>node</th><th>channel</th><th>kind</th><th>reason</th></tr>"
        + rows
        + "</table></body>",
        encoding="utf-8",
    )
    return path


def _png(path: Path, energy: dict, events: Sequence[Event]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ChartError(
            "PNG charts need matplotlib (pip install 'reverbere[png]'); .svg and .html do not"
        ) from exc
    fig, ax = plt.subplots(figsize=(12, 5))
    for node, series in sorted(energy.items()):
        xs = [datetime.fromtimestamp(h, UTC) for h in sorted(series)]
        ax.plot(xs, [series[h] for h in sorted(series)], linewidth=0.8, label=node)
    for e in events:
        hour = int(e.start) // 3600 * 3600
        ax.plot(
            [datetime.fromtimestamp(hour, UTC)],
            [energy.get(e.node, {}).get(hour, 0.0)],
            "rv",
            markersize=8,
        )
    ax.set_title("Energy per hour per node (Wh); anomalies marked")
    ax.set_ylabel("Wh")
    if len(energy) <= 20:
        ax.legend(fontsize=6, ncol=2)
    fig.autofmt_xdate()
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
