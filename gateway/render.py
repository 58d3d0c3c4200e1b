"""What the operator's commands print, and the times they are given, in one place.

:func:`render` formats any list of row dicts as a table, CSV or JSON (readings, anomalies,
summaries, node list, sync status all print through it); :func:`iso` writes a time and
:func:`parse_when` / :func:`parse_duration` read one, so ``--since 1w`` means the same to every
command. :func:`anomalies` reads the gateway's anomaly events.

Times shown to people are in the town's time zone when the command knows it (``tz``: the
``[site]`` timezone): the cell is the local time with its UTC offset and the column's header
names the zone (``start (Europe/Paris)``), so a row never mixes a UTC time with a reason in
local time. ``excel=True`` writes the CSV French Excel opens as it is (:data:`EXCEL`): UTF-8
with a byte order mark, ``;`` between cells, a decimal comma, local dates ``25/11/2026 14:10``,
CRLF line ends. Without ``--excel`` or ``--no-excel``, a CSV is Excel's when the user's locale
writes numbers with a decimal comma (:func:`locale_decimal_comma`: ``LANG=fr_FR.UTF-8``).
"""

import csv
import io
import json
import math
import os
import re
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import sqlite_utils

FORMATS = ("table", "csv", "json")
ANOMALY_COLUMNS = (
    "id",
    "node",
    "channel",
    "kind",
    "start",
    "end",
    "score",
    "waste_kwh",
    "waste_eur",
    "reason",
)
TIME_COLUMNS = ("start", "end", "hour", "time", "timestamp")

# What each channel of protocols/const.py's CHANNEL_UNITS measures, in French with its unit, for
# the people who read the tables and CSVs (the energy manager, the technical services): the
# column LABEL_COLUMN beside the raw channel name. ``e`` is energy in Wh: a reading's value is
# the meter's index, a summary's ``wh`` the energy of the hour.
CHANNEL_LABELS = {
    "p": "puissance, W",
    "e": "énergie, Wh",
    "t": "température, °C",
    "lux": "éclairement, lx",
    "bat": "batterie, %",
    "rssi": "niveau radio, dBm",
    "drop": "mesures perdues",
    "fw": "version du logiciel",
    "fwt": "version à l'essai",
    "fwx": "version abandonnée",
}
LABEL_COLUMN = "grandeur"

# Units of a duration, as people write them: 90s, 30m, 6h, 7d, 1w.
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
# What parse_when takes, in the sentence its errors end with.
WHEN_FORMS = (
    "a duration ago (90m, 6h, 7d, 1w), an ISO date or time (2026-01-31T12:00Z; UTC if no "
    "zone) or Unix seconds"
)


def iso(t: float | None) -> str:
    """Unix seconds as ISO 8601 UTC (``2026-11-25T13:10:00Z``); empty for None. A time with a
    fraction of a second keeps its milliseconds (a reading's time is data, not a label)."""
    if t is None:
        return ""
    when = datetime.fromtimestamp(t, UTC)
    if t == int(t):
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def local_iso(t: float | None, tz: str) -> str:
    """Unix seconds as the local time of ``tz`` with its UTC offset (``2026-11-25
    14:10:00+01:00``); empty for None. Like :func:`iso`, a fraction of a second keeps its
    milliseconds."""
    if t is None:
        return ""
    if t == int(t):
        return datetime.fromtimestamp(t, ZoneInfo(tz)).isoformat(sep=" ")
    return datetime.fromtimestamp(t, ZoneInfo(tz)).isoformat(sep=" ", timespec="milliseconds")


def excel_time(t: float | None, tz: str) -> str:
    """Unix seconds as French Excel reads a date and time (``25/11/2026 14:10``), local time
    of ``tz``; empty for None."""
    if t is None:
        return ""
    return datetime.fromtimestamp(round(t), ZoneInfo(tz)).strftime("%d/%m/%Y %H:%M")


def excel_number(v: float) -> str:
    """A number as French Excel reads it: a decimal comma, no thousands separator."""
    return str(v).replace(".", ",")


# Where a person's locale is read from, first set first: POSIX's order for numbers.
LOCALE_VARIABLES = ("LC_ALL", "LC_NUMERIC", "LANG")


def locale_decimal_comma(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the user's locale (``LC_ALL``, else ``LC_NUMERIC``, else ``LANG``) writes a
    decimal comma, as French, German or Brazilian Portuguese do: then that user's spreadsheet
    reads a CSV as French Excel's (:func:`write_excel_csv`), and a plain one lands as text
    in a single column. Babel's CLDR data says which locales use a comma; ``C``, ``POSIX``,
    an unknown or unset locale does not."""
    from babel import Locale, UnknownLocaleError
    from babel.numbers import get_decimal_symbol

    env = os.environ if environ is None else environ
    name = next((env[v] for v in LOCALE_VARIABLES if env.get(v)), "")
    if not name:
        return False
    try:
        return get_decimal_symbol(Locale.parse(name)) == ","
    except (ValueError, UnknownLocaleError):
        return False


def write_excel_csv(rows: Sequence[Sequence[str]]) -> str:
    """Rows of cells (already written as text) as French Excel's CSV: the byte order mark
    (as a character: encode the text as UTF-8), ``;`` between cells, CRLF line ends."""
    buf = io.StringIO()
    csv.writer(buf, delimiter=";", lineterminator="\r\n").writerows(rows)
    return "\ufeff" + buf.getvalue()


def parse_duration(text: str, default_unit: str | None = None) -> float:
    """``90s``, ``30m``, ``6h``, ``7d``, ``1w`` in seconds; a bare number takes
    ``default_unit`` (none: a unit is required). Raises ``ValueError`` with a sentence."""
    text = text.strip()
    if default_unit is not None and re.fullmatch(r"\d+(?:\.\d+)?", text):
        text += default_unit
    m = _DURATION.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration (e.g. 90s, 30m, 6h, 7d, 1w)")
    return float(m.group(1)) * DURATION_UNITS[m.group(2)]


def parse_when(text: str, now: float | None = None) -> float:
    """A time given by a person, as Unix seconds: a duration back from ``now`` (default: the
    clock) such as ``90m``, ``6h``, ``7d``, ``1w``; an ISO 8601 date or time (UTC unless it
    names a zone); or Unix seconds. Raises ``ValueError`` with a sentence saying the forms.

    Every ``--since``/``--until`` and a replayed CSV's timestamps go through here, so one
    command never takes a form another refuses.
    """
    text = text.strip()
    if _DURATION.fullmatch(text):
        return (datetime.now(UTC).timestamp() if now is None else now) - parse_duration(text)
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds):
            return seconds
        raise ValueError(f"{text!r} is not a time: use {WHEN_FORMS}")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use {WHEN_FORMS}") from None
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


def with_channel_labels(
    rows: Sequence[Mapping], columns: Sequence[str]
) -> tuple[list[dict], tuple[str, ...]]:
    """``rows`` and ``columns`` with :data:`LABEL_COLUMN` after ``channel``: what the channel
    measures, in French with its unit (:data:`CHANNEL_LABELS`; an unknown channel as it is).
    For the table and CSV; JSON is for programs, which read ``channel``."""
    if "channel" not in columns:
        return [dict(r) for r in rows], tuple(columns)
    at = list(columns).index("channel") + 1
    out = (*columns[:at], LABEL_COLUMN, *columns[at:])
    labelled = []
    for r in rows:
        channel = r.get("channel")
        labelled.append({**r, LABEL_COLUMN: CHANNEL_LABELS.get(channel, channel)})
    return labelled, out


def _cell(
    col: str,
    v,
    times: Collection[str],
    exact: Collection[str],
    tz: str | None = None,
    excel: bool = False,
) -> str:
    if v is None:
        return ""
    if col in times and isinstance(v, int | float):
        if excel:
            return excel_time(v, tz or "UTC")
        return iso(v) if tz is None else local_iso(v, tz)
    if isinstance(v, float) and col not in exact:
        # 4 significant digits, whole numbers from 1000 on (never "1.235e+04": a Wh counter)
        text = f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
        return excel_number(text) if excel else text
    if excel and isinstance(v, float):
        return excel_number(repr(v))
    return str(v)


def _json_cell(col: str, v, times: Collection[str], tz: str | None = None):
    if col in times and isinstance(v, int | float):
        return iso(v) if tz is None else local_iso(v, tz).replace(" ", "T")
    return v


def _header(col: str, times: Collection[str], tz: str | None) -> str:
    return f"{col} ({tz})" if tz is not None and col in times else col


def _json(obj: object) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False)


def render(
    rows: Sequence[Mapping],
    columns: Sequence[str],
    fmt: str = "table",
    *,
    times: Collection[str] = TIME_COLUMNS,
    exact: Collection[str] = (),
    blank: Mapping[str, str] | None = None,
    tz: str | None = None,
    excel: bool = False,
) -> str:
    """``rows`` as ``fmt``: an aligned text table, CSV with a header, or a JSON list of
    objects, with the ``columns`` in that order.

    The columns named in ``times`` (Unix seconds) print as ISO 8601 UTC in all three formats,
    or, given ``tz``, as local time with its offset (the header naming the zone). Floats print
    with 4 significant digits in the table and CSV (figures for reading), except in the
    ``exact`` columns (data, such as a reading's value, printed as Python writes it); JSON
    keeps every number as it is. ``blank`` gives the table's text for an empty cell of a
    column (``never`` for a node not heard yet); CSV leaves it empty. ``excel``: the CSV is
    French Excel's (:func:`write_excel_csv`; local times of ``tz``, UTC without it).
    """
    if fmt == "json":
        return _json([{c: _json_cell(c, r.get(c), times, tz) for c in columns} for r in rows])
    cells = [[_cell(c, r.get(c), times, exact, tz, excel) for c in columns] for r in rows]
    header = [_header(c, times, tz or ("UTC" if excel else None)) for c in columns]
    if fmt == "csv":
        if excel:
            return write_excel_csv([header, *cells])
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(cells)
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    for i, c in enumerate(columns):
        if blank and c in blank:
            for row, r in zip(cells, rows, strict=True):
                if r.get(c) is None:
                    row[i] = blank[c]
    columns = header
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def render_record(record: Mapping, *, times: Collection[str] = TIME_COLUMNS) -> str:
    """One record (``sync status``) as one JSON object, written as :func:`render` writes each
    row: every key, the ``times`` columns as ISO 8601 UTC."""
    return _json({k: _json_cell(k, v, times) for k, v in record.items()})
