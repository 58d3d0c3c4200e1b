"""Anomaly events for people and programs: as a table, CSV or JSON.

:func:`anomalies` reads the gateway's database; :func:`render` formats any list of row dicts.
(Hourly summaries print through gateway/sync/report.py, which serves both sources.)
"""

import csv
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlite_utils

FORMATS = ("table", "csv", "json")
ANOMALY_COLUMNS = ("id", "node", "channel", "kind", "start", "end", "score", "reason")
TIME_COLUMNS = ("start", "end", "hour", "time", "timestamp")


def iso(t: float | None) -> str:
    """Unix seconds as ISO 8601 UTC (``2026-11-25T13:10:00Z``); empty for None."""
    if t is None:
        return ""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_when(text: str) -> float:
    """A time given by a person: Unix seconds, an ISO date or time (UTC unless it says), or
    a duration back from now such as ``90m``, ``6h``, ``7d``."""
    text = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return datetime.now(UTC).timestamp() - float(text[:-1]) * units[text[-1]]
    try:
        return float(text)
    except ValueError:
        pass
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def anomalies(
    db: sqlite_utils.Database, since: float | None = None, open_only: bool = False
) -> list[dict]:
    """Anomaly events, oldest first: those still open, or that ended at or after ``since``."""
    where, args = [], []
    if since is not None:
        where.append("(end IS NULL OR end >= ?)")
        args.append(since)
    if open_only:
        where.append("end IS NULL")
    sql = "SELECT * FROM anomalies"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return list(db.query(sql + " ORDER BY start, id", args))


def _cell(col: str, v) -> str:
    if v is None:
        return ""
    if col in TIME_COLUMNS and isinstance(v, int | float):
        return iso(v)
    if isinstance(v, float):
        # 4 significant digits, whole numbers from 1000 on (never "1.235e+04": a Wh counter)
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _json_cell(col: str, v):
    if col in TIME_COLUMNS and isinstance(v, int | float):
        return iso(v)
    return v


def render(rows: Sequence[dict], columns: Sequence[str], fmt: str = "table") -> str:
    """``rows`` as ``fmt``: an aligned text table, CSV with a header, or a JSON list (times as
    ISO strings in all three)."""
    if fmt == "json":
        out = []
        for r in rows:
            out.append({c: _json_cell(c, r.get(c)) for c in columns})
        return json.dumps(out, indent=1, ensure_ascii=False)
    cells = [[_cell(c, r.get(c)) for c in columns] for r in rows]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        w.writerows(cells)
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
