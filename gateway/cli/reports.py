"""``reverbere anomalies`` (and ``anomalies replay``): what the gateway's detectors found.

A thin shell: each command opens the database named by the config (or ``--db``), calls one
function of :mod:`gateway.render` or :mod:`gateway.pipeline.detect`, and prints with
:func:`gateway.render.render`. (``reverbere summaries`` lives in gateway/cli/sync.py, which reads
both the gateway and the platform.)
"""

import csv
import sys
from pathlib import Path

import click

from gateway import render as report
from gateway.cli.options import config_option, db_option

format_option = click.option(
    "--format", "fmt", type=click.Choice(report.FORMATS), default="table", show_default=True
)
since_option = click.option(
    "--since", metavar="WHEN", help="Unix time, ISO date/time (UTC), or a duration ago: 6h, 7d."
)


def _open(config_path: Path, db_path: Path | None):
    from gateway.store.db import open_db

    if db_path is None:
        from gateway import config

        try:
            db_path = config.load(config_path).database
        except (OSError, ValueError) as e:
            raise click.ClickException(
                f"{e}\n  hint: pass --config FILE, or --db FILE for the database itself"
            ) from None
    if not Path(db_path).exists():
        raise click.ClickException(
            f"no database at {db_path}\n  hint: has the gateway run yet (`reverbere gateway run`)?"
        )
    return open_db(db_path)


def _since(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return report.parse_when(text)
    except ValueError:
        raise click.BadParameter(
            "expected Unix seconds, an ISO date or time, or 90m / 6h / 7d", param_hint="--since"
        ) from None


@click.group(invoke_without_command=True)
@config_option
@db_option
@since_option
@click.option("--open", "open_only", is_flag=True, help="Only the events still ongoing.")
@format_option
@click.pass_context
def anomalies(ctx, config_path, db_path, since, open_only, fmt) -> None:
    """Anomaly events: node, channel, kind, start, end (empty while open), score, reason."""
    if ctx.invoked_subcommand is not None:
        return
    db = _open(config_path, db_path)
    rows = report.anomalies(db, since=_since(since), open_only=open_only)
    click.echo(report.render(rows, report.ANOMALY_COLUMNS, fmt))


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
def anomalies_replay(csv_file, kind, fmt, threshold) -> None:
    """Run a CSV of ``timestamp,value`` rows through the gateway's detectors, offline.

    Prints, per row: timestamp, score in [0, 1], alarm (1 when an event opens there at the
    threshold). Timestamps are Unix seconds or ISO 8601 (UTC unless they say); a header row
    is skipped.
    """
    from gateway.pipeline.detect import DetectConfig, replay

    rows = []
    for i, rec in enumerate(csv.reader(csv_file), 1):
        if not rec or not rec[0].strip():
            continue
        try:
            rows.append((rec[0], report.parse_when(rec[0]), float(rec[1])))
        except (ValueError, IndexError):
            if i == 1:
                continue  # a header
            raise click.ClickException(
                f"{csv_file.name}:{i}: expected timestamp,value, got {','.join(rec)!r}"
            ) from None
    config = DetectConfig() if threshold is None else DetectConfig(threshold=threshold)
    results = replay(((t, v) for _, t, v in rows), kind=kind, config=config)
    out = [
        {"timestamp": text, "score": round(score, 4), "alarm": int(alarm)}
        for (text, _, _), (_, score, alarm) in zip(rows, results, strict=True)
    ]
    if fmt == "json":
        click.echo(report.render(out, ("timestamp", "score", "alarm"), "json"))
    else:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(("timestamp", "score", "alarm"))
        for r in out:
            w.writerow((r["timestamp"], r["score"], r["alarm"]))
