"""The operator's commands: ``gateway init|run``, ``node add|list|remove|rotate-key``, ``readings``.

A thin shell: each command makes one library call; library exceptions become a message with
a hint here, and nowhere else.
"""

import asyncio
import csv
import json
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from gateway import config, service
from gateway.cli.options import config_option
from gateway.ingest import registry
from gateway.store import readings as store
from gateway.store.db import open_db


def _load(path: Path, overrides: dict[str, Any] | None = None) -> config.Config:
    try:
        return config.load(path, overrides)
    except config.ConfigError as e:
        raise click.ClickException(
            f"{e}\n  hint: `reverbere gateway init DIR` writes a commented example"
        ) from None


@contextmanager
def _registry_errors() -> Iterator[None]:
    try:
        yield
    except registry.RegistryError as e:
        raise click.ClickException(f"{e} ({e.hint})") from None


def _hostport(value: str | None) -> tuple[str, int] | None:
    """``HOST:PORT``, ``[v6]:PORT`` or ``:PORT`` (host from the config)."""
    if value is None:
        return None
    m = re.match(r"^(?:\[([^\]]+)\]|([^:]*)):(\d+)$", value)
    if not m or int(m.group(3)) > 65535:
        raise click.BadParameter(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:5683, [::1]:0)")
    return (m.group(1) or m.group(2) or ""), int(m.group(3))


@click.group("gateway")
def gateway_group() -> None:
    """Set up and run the gateway service."""


@gateway_group.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def gateway_init(directory: Path) -> None:
    """Write a commented DIRECTORY/gateway.toml and create the database."""
    try:
        path = service.init_dir(directory)
    except FileExistsError as e:
        raise click.ClickException(f"{e} already exists (edit it, or choose another DIR)") from None
    click.echo(f"wrote {path}; next: reverbere node add ID --config {path}")


@gateway_group.command("run")
@config_option
@click.option("--coap", metavar="HOST:PORT", help="Override [coap] host and port.")
@click.option("--http", metavar="HOST:PORT", help="Override [http] host and port (/metrics).")
def gateway_run(config_path: Path, coap: str | None, http: str | None) -> None:
    """Run the gateway until SIGTERM (which commits what was acknowledged, then exits)."""
    overrides: dict[str, Any] = {}
    for name, value in (("coap", _hostport(coap)), ("http", _hostport(http))):
        if value is not None:
            if value[0]:
                overrides[f"{name}_host"] = value[0]
            overrides[f"{name}_port"] = value[1]
    cfg = _load(config_path, overrides)
    try:
        service.pipeline_config(cfg)  # [site], [detect], [sync]: errors before binding ports
    except config.ConfigError as e:
        raise click.ClickException(
            f"{e}\n  hint: see docs/anomalies.md ([detect]) and docs/sync.md ([sync])"
        ) from None
    try:
        asyncio.run(service.serve(cfg))
    except OSError as e:
        raise click.ClickException(
            f"cannot start: {e}\n  hint: is another gateway on that port? try --coap HOST:PORT"
        ) from None


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
        key = registry.add_node(open_db(_load(config_path).database), node_id)
    _print_key(node_id, key, as_json)


@node_group.command("rotate-key")
@click.argument("node_id")
@config_option
@click.option("--json", "as_json", is_flag=True, help='Print {"node_id": ..., "key": ...}.')
def node_rotate(node_id: str, config_path: Path, as_json: bool) -> None:
    """Give NODE_ID a new key; the old key stops working and its counter restarts."""
    with _registry_errors():
        key = registry.rotate_key(open_db(_load(config_path).database), node_id)
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
        registry.remove_node(open_db(_load(config_path).database), node_id)
    click.echo(f"removed {node_id}")


@node_group.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="A JSON list of objects.")
def node_list(config_path: Path, as_json: bool) -> None:
    """Nodes with last seen time, message counter, lost messages (gaps) and battery."""
    nodes = registry.list_nodes(open_db(_load(config_path).database))
    if as_json:
        click.echo(json.dumps([n.__dict__ for n in nodes]))
        return
    click.echo(
        f"{'node':<20} {'last seen (UTC)':<20} {'seq':>8} {'msgs':>8} {'gaps':>6} {'bat':>5}"
    )
    for n in nodes:
        seen = _iso(n.last_seen)[:19].replace("T", " ") if n.last_seen else "never"
        bat = "" if n.battery is None else f"{n.battery:g}"
        click.echo(f"{n.id:<20} {seen:<20} {n.last_seq:>8} {n.messages:>8} {n.gaps:>6} {bat:>5}")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def parse_since(value: str, now: float | None = None) -> float:
    """``2h``/``30m``/``7d``/``90s`` ago, an ISO 8601 date or time (UTC if no zone), or Unix."""
    now = time.time() if now is None else now
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value.strip())
    if m:
        return now - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: use 2h, 30m, 7d, an ISO 8601 time (2026-01-31T12:00Z) or Unix seconds"
        ) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


@click.command("readings")
@config_option
@click.option("--node", help="Only this node.")
@click.option("--since", help="From this time: 2h, 7d, 2026-01-31T12:00Z, Unix seconds.")
@click.option("--limit", type=int, help="At most this many readings.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
def readings(
    config_path: Path, node: str | None, since: str | None, limit: int | None, fmt: str
) -> None:
    """Show stored readings (JSON: a list of {node, channel, time (ISO 8601 UTC), value})."""
    start = parse_since(since) if since else None
    rows = store.query_readings(open_db(_load(config_path).database), node, start, limit=limit)
    if fmt == "json":
        out = [
            {"node": r.node, "channel": r.channel, "time": _iso(r.time), "value": r.value}
            for r in rows
        ]
        click.echo(json.dumps(out))
    elif fmt == "csv":
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["node", "channel", "time", "value"])
        for r in rows:
            w.writerow([r.node, r.channel, _iso(r.time), r.value])
    else:
        click.echo(f"{'node':<20} {'channel':<8} {'time (UTC)':<21} {'value':>12}")
        for r in rows:
            click.echo(f"{r.node:<20} {r.channel:<8} {_iso(r.time):<21} {r.value:>12g}")
