"""The operator's summaries: pulled back from the platform, printed as a table, CSV or JSON,
and drawn as a chart of energy per hour per node with the anomalies marked.

``reverbere summaries --from URL`` uses :func:`pull`; ``--from gateway`` reads the same
:class:`~gateway.sync.outbox.Summary` and :class:`~gateway.sync.outbox.Event` records from
the gateway's own tables; both print through :func:`render` and :func:`write_chart`.
"""

import csv
import html
import io
import json
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from gateway.sync.outbox import ANOMALIES, Event, Summary
from gateway.sync.sensorthings import id_from_link, iso, parse_time, rebase
from protocols.const import SUM_CHANNELS

FORMATS = ("table", "csv", "json")


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
                    if prefix == node:
                        streams[str(ds["@iot.id"])] = (node, stream)
        params = {
            "$filter": f"phenomenonTime ge {iso(start)} and phenomenonTime lt {iso(end)}",
            "$select": "id,phenomenonTime,result,parameters",
            "$resultFormat": "dataArray",
            "$orderby": "id asc",
            "$top": "10000",
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
                    p = rec.get("parameters") or {}
                    if stream == ANOMALIES:
                        key = (node, stream, str(p.get("id", t)))
                        item = Event(
                            node,
                            str(p.get("channel", "")),
                            t,
                            float(p.get("end", t)),
                            str(p.get("kind", "")),
                            float(rec["result"]),
                            str(p.get("reason", "")),
                            str(p["id"]) if "id" in p else None,
                        )
                    else:
                        key = (node, stream, t)
                        item = Summary(
                            node,
                            stream,
                            t,
                            int(p.get("count", 0)),
                            p.get("min"),
                            p.get("max"),
                            rec["result"],
                            p.get("wh"),
                        )
                    if key in seen:
                        out.duplicates += 1
                        continue
                    seen.add(key)
                    (out.events if stream == ANOMALIES else out.summaries).append(item)
    out.summaries.sort(key=lambda s: (s.hour, s.node, s.channel))
    out.events.sort(key=lambda e: (e.start, e.node, e.channel))
    return out


# -- output ----------------------------------------------------------------------------------

SUMMARY_COLUMNS = ("node", "channel", "hour", "count", "min", "max", "mean", "wh")
EVENT_COLUMNS = ("node", "channel", "start", "end", "kind", "score", "reason")


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(t))


def _cell(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3f}".rstrip("0").rstrip(".")
    return str(v)


def _summary_dict(s: Summary) -> dict:
    d = asdict(s)
    d["hour"] = _when(s.hour)
    return d


def _event_dict(e: Event) -> dict:
    d = asdict(e)
    d.pop("key")
    d["start"], d["end"] = _when(e.start), _when(e.end)
    return d


def render(summaries: Sequence[Summary], events: Sequence[Event], fmt: str = "table") -> str:
    """The summaries and events as ``table`` (aligned text), ``csv`` or ``json``."""
    if fmt == "json":
        return json.dumps(
            {
                "summaries": [_summary_dict(s) for s in summaries],
                "events": [_event_dict(e) for e in events],
            },
            indent=1,
        )
    if fmt == "csv":
        buf = io.StringIO()
        cols = ("type", *SUMMARY_COLUMNS, "start", "end", "kind", "score", "reason")
        w = csv.DictWriter(buf, cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for s in summaries:
            w.writerow({"type": "summary", **{k: _cell(v) for k, v in _summary_dict(s).items()}})
        for e in events:
            w.writerow({"type": "event", **{k: _cell(v) for k, v in _event_dict(e).items()}})
        return buf.getvalue()
    if fmt != "table":
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    parts = [_table(SUMMARY_COLUMNS, [_summary_dict(s) for s in summaries])]
    if events:
        parts += ["", "anomalies:", _table(EVENT_COLUMNS, [_event_dict(e) for e in events])]
    return "\n".join(parts)


def _table(cols: Sequence[str], rows: list[dict]) -> str:
    cells = [[_cell(r[c]) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


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
            if s.channel in SUM_CHANNELS and s.channel == "e":
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
            *(html.escape(x) for x in (_when(e.start), e.node, e.channel, e.kind, e.reason))
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


def from_gateway(
    db, start: float, end: float, nodes: Sequence[str] | None = None
) -> tuple[list[Summary], list[Event]]:
    """The summaries and events the gateway holds for ``[start, end)``: its sync outbox,
    which keeps the latest version of each (synced or not)."""
    sql = (
        "SELECT kind, node, stream, key, time, result, parameters FROM sync_outbox "
        "WHERE time >= ? AND time < ? ORDER BY time, node, stream"
    )
    summaries, events = [], []
    for kind, node, stream, key, t, result, params in db.execute(sql, [int(start), int(end)]):
        if nodes and node not in nodes:
            continue
        p = json.loads(params)
        if kind == "event":
            events.append(
                Event(
                    node,
                    p.get("channel", ""),
                    t,
                    p.get("end", t),
                    p.get("kind", ""),
                    result,
                    p.get("reason", ""),
                    key,
                )
            )
        else:
            summaries.append(
                Summary(
                    node,
                    stream,
                    t,
                    p.get("count", 0),
                    p.get("min"),
                    p.get("max"),
                    result,
                    p.get("wh"),
                )
            )
    return summaries, events
