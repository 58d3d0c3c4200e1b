"""``reverbere anomalies`` (and ``anomalies replay``): what the gateway's detectors found.

A thin shell: each command opens the database named by the config (or ``--db``), calls one
function of :mod:`gateway.render` or :mod:`gateway.pipeline.detect`, and prints with
:func:`gateway.render.render`. (``reverbere summaries`` lives in gateway/cli/sync.py, which reads
both the gateway and the platform.)
"""

import csv

import click

from gateway import render as report
from gateway.cli.display import excel_option, show, town_timezone, utc_option
from gateway.cli.options import WHEN, config_option, db_option, format_option, open_database


@click.group(invoke_without_command=True)
@config_option
@db_option
@click.option("--since", type=WHEN, help="Ended at or after: 6h, 1w, 2026-01-31T12:00Z, Unix.")
@click.option("--open", "open_only", is_flag=True, help="Only the events still ongoing.")
@format_option
@utc_option
@excel_option
@click.pass_context
def anomalies(ctx, config_path, db_path, since, open_only, fmt, utc, excel) -> None:
    """Anomaly events: node, channel (spelled out), kind, start, end (empty while open), score,
    reason; times in the town's time zone."""
    if ctx.invoked_subcommand is not None:
        return
    db = open_database(config_path, db_path)
    tz = town_timezone(config_path, db_path, utc)
    rows = report.anomalies(db, since=since, open_only=open_only)
    click.echo(show(rows, report.ANOMALY_COLUMNS, fmt, tz, excel))


@anomalies.command("replay")
@click.argument("csv_file", type=click.File("r", encoding="utf-8"))
@click.option(
    "--kind",
    type=click.Choice(["power", "energy", "temperature", "generic"]),
    default="generic",
    show_default=True,
    help="What the values are: power W, energy counter Wh, temperature °C, anything.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1, min_open=True),
    help="Alarm threshold (default: the documented default, 0.5).",
)
@config_option
@utc_option
@excel_option
def anomalies_replay(csv_file, kind, fmt, threshold, config_path, utc, excel) -> None:
    """Run a CSV of ``timestamp,value`` rows through the gateway's detectors, offline.

    Prints, per row: timestamp (the town's time zone when a config names it; --utc for UTC),
    score in [0, 1], alarm (1 when an event opens there at the threshold). Timestamps are
    Unix seconds or ISO 8601 (UTC unless they say); a header row is skipped.
    """
    from gateway.pipeline.detect import DetectConfig, replay

    rows = []
    for i, rec in enumerate(csv.reader(csv_file), 1):
        if not rec or not rec[0].strip():
            continue
        try:
            rows.append((report.parse_when(rec[0]), float(rec[1])))
        except (ValueError, IndexError):
            if i == 1:
                continue  # a header
            raise click.ClickException(
                f"{csv_file.name}:{i}: expected timestamp,value, got {','.join(rec)!r}"
            ) from None
    config = DetectConfig() if threshold is None else DetectConfig(threshold=threshold)
    results = replay(rows, kind=kind, config=config)
    out = [
        {"timestamp": t, "score": round(score, 4), "alarm": int(alarm)}
        for (t, _), (_, score, alarm) in zip(rows, results, strict=True)
    ]
    # The same times as every command's: a CSV's "2014-04-10 00:00:00" (UTC) and Unix seconds
    # alike print as the town's local time, the header naming the zone.
    tz = town_timezone(config_path, None, utc)
    text = show(out, ("timestamp", "score", "alarm"), fmt, tz, excel)
    click.echo(text, nl=not text.endswith("\n"))  # Excel's CSV ends its last line
