"""``reverbere fleet update`` and ``reverbere fleet status``: staged firmware rollouts.

A thin shell over :mod:`gateway.ota.rollout` (docs/ota.md, "Staged rollouts"): ``update``
starts a rollout and steps it while it shows the progress; ``status`` steps it once and
prints every node's version and update state.
"""

import time
from pathlib import Path

import click

from gateway.cli.display import excel_option, output_format, show
from gateway.cli.options import (
    config_option,
    db_option,
    format_option,
    number_option,
    open_database,
)
from gateway.ota import rollout, updates

STATUS_COLUMNS = ("node", "running", "trial", "target", "state")


@click.group("fleet")
def fleet_group() -> None:
    """Firmware updates over the air, node by node or for the whole fleet."""


def _files(firmware: Path | None) -> list[tuple[str, bytes]]:
    if firmware is None:
        from gateway.provision import build

        try:
            return [(f.path, f.data) for f in build.compile_firmware()]
        except build.BuildError as e:
            raise click.ClickException(f"{e}\n  hint: or give --firmware DIR") from None
    files = [
        (p.relative_to(firmware).as_posix(), p.read_bytes())
        for p in sorted(firmware.rglob("*"))
        if p.is_file()
    ]
    if not files:
        raise click.ClickException(f"{firmware}: no file in it")
    return files


def _line(p: rollout.Progress) -> str:
    c = p.counts
    done = c.get("confirmed", 0)
    failed = sum(c.get(s, 0) for s in rollout.FAILURES)
    waiting = c.get("waiting", 0) + c.get("offered", 0)
    phase = {"canary": "canaries first", "rest": "all the others", "done": "done"}.get(
        p.phase, "STOPPED: too many failures"
    )
    extra = f", {c['cancelled']} cancelled" if c.get("cancelled") else ""
    return (
        f"version {p.version}: {done} updated, {failed} failed, {waiting} waiting{extra} ({phase})"
    )


@fleet_group.command("update")
@number_option(
    "--version",
    "version",
    within=(1, 2**32 - 1),
    required=True,
    help="The version number the nodes will run (above what they run).",
)
@click.option(
    "--firmware",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The files of a slot (default: this gateway's own firmware, compiled).",
)
@config_option
@db_option
@click.option(
    "--nodes",
    "patterns",
    multiple=True,
    help="A node id or a pattern (lamp-*); repeat it. Default: every node.",
)
@number_option(
    "--canary",
    within=(0, 10000),
    default=2,
    help="Nodes updated first; the others only once these all confirmed.",
)
@number_option(
    "--max-failures",
    within=(0, 10000),
    default=0,
    help="Stop the rollout when more nodes than this failed or rolled back.",
)
@click.option(
    "--class",
    "node_class",
    default="esp32",
    show_default=True,
    help="The boards' MicroPython sys.platform (esp32, rp2).",
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Follow the rollout until it ends (Ctrl-C leaves it running).",
)
@number_option(
    "--every", within=(1.0, 3600.0), default=30, help="Seconds between two steps while waiting."
)
def fleet_update(
    version: int,
    firmware: Path | None,
    config_path: Path,
    db_path: Path | None,
    patterns: tuple[str, ...],
    canary: int,
    max_failures: int,
    node_class: str,
    wait: bool,
    every: float,
) -> None:
    """Roll a firmware version out: the canary nodes first, then the rest; stop on failures.

    A node counts as updated once a signed reading says it runs the version; as failed when
    it rolled back (or refused it), or said nothing within 6 hours."""
    db = open_database(config_path, db_path)
    try:
        nodes = rollout.select_nodes(db, patterns)
        progress = rollout.start(
            db, version, _files(firmware), nodes, node_class, canary, max_failures
        )
    except (rollout.RolloutError, updates.UpdateError) as e:
        raise click.ClickException(
            f"{e}\n  hint: `reverbere node list` shows the registered nodes"
        ) from None
    click.echo(f"{len(nodes)} nodes, {min(canary, len(nodes))} canaries")
    shown = _line(progress)
    click.echo(shown)
    while wait and not progress.done:
        time.sleep(every)
        progress = rollout.advance(db)
        if _line(progress) != shown:
            shown = _line(progress)
            click.echo(shown)
    if progress.phase == "stopped":
        raise click.ClickException(
            "the rollout stopped\n  hint: `reverbere fleet status` shows which nodes failed"
        )


@fleet_group.command("status")
@config_option
@db_option
@format_option
@excel_option
def fleet_status(config_path: Path, db_path: Path | None, fmt: str, excel: bool | None) -> None:
    """Each node's firmware version (confirmed, from its signed readings), a version on
    trial, and its state in the rollout (idle outside one). Steps the rollout once."""
    db = open_database(config_path, db_path)
    try:
        progress = rollout.advance(db)
    except rollout.RolloutError:
        progress = None
    rows = [
        {
            "node": u.node,
            "running": u.running,
            "trial": u.trial,
            "target": u.target,
            "state": u.state,
        }
        for u in rollout.node_states(db)
    ]
    text = show(rows, STATUS_COLUMNS, fmt, None, excel, times=())
    click.echo(text, nl=not text.endswith("\n"))  # Excel's CSV ends its last line
    if progress is not None and output_format(fmt, excel)[0] == "table":
        click.echo(_line(progress))
