"""``reverbere gateway check``: check gateway.toml as the service would, and show a lighting
group's schedule for a night, so that a technician sees what the gateway expects of the lamps.

A thin shell over :mod:`gateway.pipeline.detect.lighting` (``night_plan``, ``tonight``). The
night prints as the other commands' lists do (gateway/cli/display.py): local times, the zone
named; a CSV French Excel opens with ``--excel`` or a decimal-comma locale; JSON in UTC.
"""

import datetime as dt
import time
from pathlib import Path

import click

from gateway import config, service
from gateway.cli import display
from gateway.cli.options import config_option, format_option, load_config
from gateway.pipeline.detect import lighting


def _level(level: float) -> str:
    return "off" if level == 0 else f"{level * 100:g} %"


@click.command("check")
@config_option
@click.option("--group", help="Print the schedule of this [[detect.lighting]] group (its name).")
@click.option("--node", help="Print the schedule of the lighting group this node belongs to.")
@click.option(
    "--night",
    type=click.DateTime(["%Y-%m-%d"]),
    help="The night's evening, local date (default: tonight, or the night in progress).",
)
@format_option
@display.excel_option
def gateway_check(
    config_path: Path,
    group: str | None,
    node: str | None,
    night: dt.datetime | None,
    fmt: str,
    excel: bool | None,
) -> None:
    """Check the config (every section, as `gateway run` does); with --group or --node, print
    the lighting schedule of a night: when the lamps should be lit, dimmed or switched off,
    in the town's local time (JSON: UTC)."""
    cfg = load_config(config_path)
    try:
        detect = service.pipeline_config(cfg).detect
    except config.ConfigError as e:
        raise click.ClickException(
            f"{e}\n  hint: the comments of the gateway.toml that `reverbere gateway init DIR`"
            " writes list every key of [site], [detect] and [sync]"
        ) from None
    if group is None and node is None:
        names = ", ".join(g.name for g in detect.lighting) or "none"
        click.echo(f"{cfg.path}: ok (lighting groups: {names})")
        return
    try:
        chosen = lighting.group_named(detect, group, node)
    except lighting.UnknownGroup as e:
        raise click.ClickException(f"{e}\n  hint: --group takes a group's name") from None
    if night is None:
        plan = lighting.tonight(chosen, detect, time.time())
    else:
        plan = lighting.night_plan(chosen, night.date(), detect)
    fmt, excel = display.output_format(fmt, excel)
    if fmt == "table":
        # The weekday and the zone's abbreviation (CET, CEST) in every time, so that the night
        # the clock changes reads without doubt on the Pi's screen.
        evening = plan[0].start.date() if plan else night
        click.echo(f"{chosen.name}: night of {evening:%A %Y-%m-%d}, times in {detect.timezone}")
        rows = [
            {
                "from": p.start.strftime("%a %d %H:%M %Z"),
                "to": p.end.strftime("%a %d %H:%M %Z"),
                "level": _level(p.level),
                "why": p.reason,
            }
            for p in plan
        ]
        click.echo(display.show(rows, ("from", "to", "level", "why"), fmt, None, excel, times=()))
        return
    # JSON for programs, as every command's: times ISO 8601 UTC, the level from 0 to 1. CSV for
    # a spreadsheet: local times, the zone in the header, the level in percent (37,5 in Excel).
    if fmt == "json":
        columns, scale = ("start", "end", "level", "reason"), 1
    else:
        columns, scale = ("from", "to", "level (%)", "why"), 100
    values = ((p.start.timestamp(), p.end.timestamp(), p.level * scale, p.reason) for p in plan)
    rows = [dict(zip(columns, v, strict=True)) for v in values]
    text = display.show(
        rows, columns, fmt, detect.timezone, excel, times=("start", "end", "from", "to")
    )
    click.echo(text, nl=not text.endswith("\n"))  # Excel's CSV ends its last line


def register(gateway_group: click.Group) -> None:
    """Add ``check`` to ``reverbere gateway``."""
    gateway_group.add_command(gateway_check)
