"""The operator's commands: ``gateway init|run``, ``node add|list|remove|rotate-key|replace``,
``readings``.

A thin shell: each command makes one library call; library exceptions become a message with
a hint here, and nowhere else.
"""

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import click

from gateway import config, daemon, install, service
from gateway.cli.display import excel_option, show, town_timezone, utc_option
from gateway.cli.options import (
    WHEN,
    HostPort,
    config_option,
    db_option,
    format_option,
    load_config,
    open_database,
)
from gateway.ingest import registry
from gateway.store import readings as store
from gateway.store.db import DatabaseOpenError


@contextmanager
def _registry_errors() -> Iterator[None]:
    try:
        yield
    except registry.RegistryError as e:
        raise click.ClickException(f"{e} ({e.hint})") from None


@click.group("gateway")
def gateway_group() -> None:
    """Set up and run the gateway service."""


@gateway_group.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def gateway_init(directory: Path) -> None:
    """Write a commented DIRECTORY/gateway.toml (with a random [sync] gateway_id) and
    create the database."""
    try:
        path = service.init_dir(directory)
    except FileExistsError as e:
        raise click.ClickException(f"{e} already exists (edit it, or choose another DIR)") from None
    # A distinct [sync] gateway_id: several towns' gateways may share one platform.
    path.write_text(config.with_gateway_id(path.read_text(encoding="utf-8")), encoding="utf-8")
    click.echo(f"wrote {path}; next: reverbere node add ID --config {path}")


@gateway_group.command("run")
@config_option
@click.option(
    "--coap",
    type=HostPort(empty_host=True),
    help="Override [coap] host and port (:PORT keeps the host).",
)
@click.option(
    "--http",
    type=HostPort(empty_host=True),
    help="Override [http] host and port (/metrics).",
)
def gateway_run(
    config_path: Path, coap: tuple[str, int] | None, http: tuple[str, int] | None
) -> None:
    """Run the gateway until SIGTERM (which commits what was acknowledged, then exits)."""
    overrides: dict[str, Any] = {}
    for name, value in (("coap", coap), ("http", http)):
        if value is not None:
            if value[0]:
                overrides[f"{name}_host"] = value[0]
            overrides[f"{name}_port"] = value[1]
    cfg = load_config(config_path, overrides)
    try:
        service.pipeline_config(cfg)  # [site], [detect], [sync]: errors before binding ports
    except config.ConfigError as e:
        raise click.ClickException(
            f"{e}\n  hint: the comments of the gateway.toml that `reverbere gateway init DIR`"
            " writes list every key of [site], [detect] and [sync]"
        ) from None
    try:
        asyncio.run(service.serve(cfg))
    except (daemon.AlreadyRunning, daemon.LockFileError, DatabaseOpenError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(
            f"cannot start: {e}\n  hint: is another gateway on that port? try --coap HOST:PORT"
        ) from None


@gateway_group.command("install-service")
@config_option
@click.option(
    "--user",
    default="reverbere",
    show_default=True,
    help="The account the service runs as (it must own the database's directory).",
)
@click.option(
    "--unit",
    "unit_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=str(install.UNIT_PATH),
    show_default=True,
    help="Where to write the unit.",
)
@click.option("--dry-run", is_flag=True, help="Print the unit instead of writing it.")
def gateway_install_service(config_path: Path, user: str, unit_path: Path, dry_run: bool) -> None:
    """Install the systemd unit that runs this installation's `reverbere gateway run
    --config FILE` (ExecStart names the reverbere beside the running Python, e.g. a venv's
    /opt/reverbere/bin/reverbere), Type=notify with a watchdog, as --user, in a sandbox that
    writes only the database's directory. Then: systemctl enable --now reverbere."""
    cfg = load_config(config_path)  # its errors, with the usual hint, before the unit's
    try:
        made = install.unit(cfg.path, user)
        for warning in made.warnings:
            click.echo(f"warning: {warning}", err=True)
        if dry_run:
            click.echo(made.text, nl=False)
            return
        path = install.write_unit(made.text, user, unit_path)
    except install.InstallError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {path}; next: systemctl enable --now {path.stem}")


@click.group("node")
def node_group() -> None:
    """Register nodes and manage their keys."""


@node_group.command("add")
@click.argument("node_id")
@config_option
@click.option("--json", "as_json", is_flag=True, help='Print {"node_id": ..., "key": ...}.')
def node_add(node_id: str, config_path: Path, as_json: bool) -> None:
    """Register NODE_ID with a new 32-byte key, printed once (flash it into the node)."""
    with _registry_errors():
        key = registry.add_node(open_database(config_path, create=True), node_id)
    _print_key(node_id, key, as_json)


@node_group.command("rotate-key")
@click.argument("node_id")
@config_option
@click.option("--json", "as_json", is_flag=True, help='Print {"node_id": ..., "key": ...}.')
def node_rotate(node_id: str, config_path: Path, as_json: bool) -> None:
    """Give NODE_ID a new key; the old key stops working and its counter restarts."""
    with _registry_errors():
        key = registry.rotate_key(open_database(config_path), node_id)
    _print_key(node_id, key, as_json)


@node_group.command("replace")
@click.argument("node_id")
@config_option
@click.option("--json", "as_json", is_flag=True, help='Print {"node_id": ..., "key": ...}.')
def node_replace(node_id: str, config_path: Path, as_json: bool) -> None:
    """A new board takes NODE_ID's place: new key, counter restarted, history kept.

    Flash the new board with this key (or run `reverbere node flash --replace --config FILE`
    where the gateway's database is, which does both).
    """
    with _registry_errors():
        key = registry.replace_node(open_database(config_path), node_id)
    _print_key(node_id, key, as_json)


def _print_key(node_id: str, key: bytes, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"node_id": node_id, "key": key.hex()}))
    else:
        click.echo(f"node {node_id}\nkey  {key.hex()}\n(shown once: store it in the node now)")


@node_group.command("remove")
@click.argument("node_id")
@config_option
def node_remove(node_id: str, config_path: Path) -> None:
    """Revoke NODE_ID: its key is deleted (it gets 4.01), its readings are kept."""
    with _registry_errors():
        registry.remove_node(open_database(config_path), node_id)
    click.echo(f"removed {node_id}")


# What the node list's table and CSV show; JSON has every field of registry.Node.
# "lost" is readings the nodes dropped (their "drop" sums); counter gaps are not losses (a
# node skips up to 32 counters at each boot), so they are only in JSON, as "gaps".
NODE_COLUMNS = ("id", "last_seen", "last_seq", "messages", "lost", "battery")


@node_group.command("list")
@config_option
@db_option
@format_option
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@utc_option
@excel_option
def node_list(
    config_path: Path,
    db_path: Path | None,
    fmt: str,
    as_json: bool,
    utc: bool,
    excel: bool | None,
) -> None:
    """Nodes with last seen time (the town's time zone; --utc for UTC), message counter, lost
    readings and battery.

    "lost" counts the readings a node had to drop (it reports them); JSON also has "gaps",
    counter values skipped, which boots and retries make without losing anything.
    """
    nodes = registry.list_nodes(open_database(config_path, db_path))
    fmt = "json" if as_json else fmt
    columns = [f.name for f in fields(registry.Node)] if fmt == "json" else NODE_COLUMNS
    rows = [asdict(n) for n in nodes]
    tz = town_timezone(config_path, db_path, utc)
    times = ("added", "last_seen")
    blank = {"last_seen": "never", "last_seq": "none"}
    click.echo(show(rows, columns, fmt, tz, excel, times=times, blank=blank))


@click.command("readings")
@config_option
@db_option
@click.option("--node", help="Only this node.")
@click.option("--since", type=WHEN, help="From this time: 2h, 1w, 2026-01-31T12:00Z, Unix.")
@click.option("--until", type=WHEN, help="Before this time (same forms).")
@click.option("--limit", type=click.IntRange(0), help="At most this many readings.")
@format_option
@utc_option
@excel_option
def readings(
    config_path: Path,
    db_path: Path | None,
    node: str | None,
    since: float | None,
    until: float | None,
    limit: int | None,
    fmt: str,
    utc: bool,
    excel: bool | None,
) -> None:
    """Show stored readings: node, channel (spelled out, with its unit), time (the town's time
    zone; --utc for UTC), value."""
    db = open_database(config_path, db_path)
    tz = town_timezone(config_path, db_path, utc)
    rows = [r._asdict() for r in store.query_readings(db, node, since, until, limit=limit)]
    columns = ("node", "channel", "time", "value")
    click.echo(show(rows, columns, fmt, tz, excel, exact=("value",)))
