"""``reverbere sim ...``: the simulated world around the gateway, started by hand.

Tests and the demo start the same parts in-process through the library.
"""

import asyncio
import contextlib
import json
import tempfile
import threading
import time
from pathlib import Path

import click

# The gateway's own parameter types: `--duration 1w` and HOST:PORT read as in every command.
from gateway.cli.options import DURATION, WHEN, HostPort, number_option

# The same seed, the same run: every random choice of a sim command comes from it.
seed_option = click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the random choices."
)


@click.group("sim")
def sim() -> None:
    """Simulated nodes, networks and platform, for tests and demos."""


@sim.command("platform")
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    help="SQLite file of the platform (default: a new temporary one).",
)
@click.option("--port", type=int, default=0, show_default=True, help="0: any free port.")
@click.option("--token", help="Require this bearer token.")
@number_option(
    "--fault-rate",
    within=(0.0, 1.0),
    default=0.0,
    help="Put the fault proxy in front, breaking this share of requests.",
)
@seed_option
def platform(db: Path | None, port: int, token: str | None, fault_rate: float, seed: int) -> None:
    """Run a SensorThings server on loopback; print its base URL first, then serve."""
    from sim.platform import FaultProxy, start_platform

    if db is None:
        db = Path(tempfile.mkdtemp(prefix="reverbere-platform-")) / "platform.sqlite3"
    with start_platform(db, token=token, port=port if not fault_rate else 0) as server:
        if fault_rate:
            with FaultProxy(server.address, seed=seed, rate=fault_rate) as proxy:
                click.echo(proxy.url + "/v1.1")
                click.echo(
                    f"(fault proxy, rate {fault_rate}, seed {seed}, in front of "
                    f"{server.url}; database {db})",
                    err=True,
                )
                _serve_until_interrupted()
        else:
            click.echo(server.url)
            click.echo(f"(database {db}; Ctrl-C stops)", err=True)
            _serve_until_interrupted()


def _serve_until_interrupted() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()


def _version(text: str) -> tuple[int, int, int]:
    try:
        parts = [int(x) for x in text.split(".")]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a version like 1.22.2") from None
    return tuple([*parts, 0, 0, 0][:3])  # type: ignore[return-value]


@sim.command("board")
@click.option(
    "--state",
    type=click.Path(file_okay=False),
    help="Directory holding the board's flash (kept between runs). Default: a temporary one.",
)
@click.option("--baud", type=int, help="Slow the line to this baud rate (e.g. 115200).")
@click.option(
    "--disconnect-after",
    type=int,
    help="Pull the cable after this many bytes received (once); the board comes back on a "
    "new pty, which the STATE/port symlink follows.",
)
@click.option("--board", type=click.Choice(["esp32", "rp2"]), default="esp32", show_default=True)
@click.option("--micropython", "version", help="MicroPython version to report, e.g. 1.19.1.")
@click.option(
    "--wifi",
    help="SSID:PASSWORD of the site's Wi-Fi; a node flashed with other values fails to join.",
)
def board(state, baud, disconnect_after, board, version, wifi) -> None:
    """A virtual MicroPython board on a pseudo-terminal.

    Prints the device path on its first line, then serves until interrupted (Ctrl-C).
    """
    from sim.board.serial import VirtualBoard
    from sim.board.vm import Identity, identity_for

    identity = identity_for(board, _version(version)) if version else Identity(board)
    wifi_pair = tuple(wifi.split(":", 1)) if wifi else None
    if wifi_pair is not None and len(wifi_pair) != 2:
        raise click.BadParameter("expected SSID:PASSWORD", param_hint="--wifi")
    state = state or tempfile.mkdtemp(prefix="reverbere-board-")
    vb = VirtualBoard(
        state,
        baud=baud,
        disconnect_after=disconnect_after,
        identity=identity,
        wifi=wifi_pair,
        on_replug=lambda dev: click.echo(f"replugged: {dev}"),
    )
    device = vb.start()
    click.echo(device)
    click.echo(f"state: {state} (symlink {vb.port} follows the board across replugs)")
    try:
        _serve_until_interrupted()
    finally:
        vb.stop()


@sim.command("fleet")
@click.option(
    "--gateway",
    "gateway",
    type=HostPort(),
    default="127.0.0.1:5683",
    show_default=True,
    help="Where the nodes send (a gateway, or `sim net`).",
)
@number_option(
    "--nodes",
    within=(1, 5000),
    default=100,
    help="Fleet size: 4 street lights for each public building.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A gateway's TOML config: register the nodes there and use its keys.",
)
@click.option(
    "--keys",
    "keys_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON node id -> hex key; written with new keys if missing.",
)
@click.option(
    "--duration", type=DURATION, default="1d", show_default=True, help="Simulated time: 6h, 1d, 1w."
)
@click.option(
    "--start", type=WHEN, help="Simulated start: Unix, ISO, or 2d (ago) [now - duration]."
)
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True),
    help="At most this many simulated seconds per second [as fast as it goes].",
)
@seed_option
@number_option(
    "--anomalies",
    within=(0, None),
    default=0,
    help="How many anomalies to inject (one per node at most).",
)
@click.option(
    "--truth",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the injected anomalies here (JSON lines).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
def fleet_cmd(
    gateway, nodes, config_path, keys_path, duration, start, speed, seed, anomalies, truth, as_json
):
    """Run NODES virtual nodes (the real firmware) against a gateway, on a simulated clock."""
    from gateway.config import ConfigError
    from gateway.ingest.registry import RegistryError
    from sim.fleet import KeysError, gateway_keys, load_keys, make_keys, run_fleet, save_keys

    try:
        if config_path is not None:
            keys = gateway_keys(config_path, list(make_keys(nodes, seed)))
        elif keys_path is not None and keys_path.exists():
            keys = load_keys(keys_path)
        else:
            keys = make_keys(nodes, seed)
        if keys_path is not None and not keys_path.exists():
            save_keys(keys_path, keys)
    except (KeysError, RegistryError) as e:
        raise click.ClickException(f"{e} (hint: {e.hint})") from None
    except ConfigError as e:
        raise click.ClickException(
            f"{e}\n  hint: `reverbere gateway init DIR` writes a commented example"
        ) from None
    stats = asyncio.run(
        run_fleet(
            keys,
            gateway,
            start=start,
            duration=duration,
            speed=speed,
            seed=seed,
            anomalies=anomalies,
            truth=truth,
        )
    )
    if as_json:
        click.echo(json.dumps(stats.as_dict()))
    else:
        click.echo(
            f"{stats.nodes} nodes, {stats.sim_seconds / 3600:.1f} simulated hours in "
            f"{stats.wall_seconds:.1f} s ({stats.speedup:.0f}x): {stats.readings} readings, "
            f"{stats.packs} packs, {stats.acked} acknowledged, {stats.datagrams} datagrams, "
            f"{stats.failed} failed exchanges, {stats.pending} readings left unsent"
        )


@sim.command("net")
@click.option("--listen", type=HostPort(), default="127.0.0.1:5684", show_default=True)
@click.option("--upstream", type=HostPort(), default="127.0.0.1:5683", show_default=True)
@number_option("--loss", within=(0.0, 1.0), default=0.0, help="Share of datagrams lost.")
@number_option("--duplicate", within=(0.0, 1.0), default=0.0, help="Share sent twice.")
@number_option("--reorder", within=(0.0, 1.0), default=0.0, help="Share held back a datagram.")
@click.option(
    "--delay",
    default="0:0",
    show_default=True,
    metavar="MIN:MAX",
    help="Extra delay per datagram, milliseconds.",
)
@click.option(
    "--outage",
    "outages",
    multiple=True,
    metavar="START:END",
    help="Drop everything from START to END seconds after start (repeatable).",
)
@seed_option
def net_cmd(listen, upstream, loss, duplicate, reorder, delay, outages, seed):
    """A UDP proxy that loses, duplicates, reorders and delays datagrams (Ctrl-C stops)."""
    from sim.net import Impairments, serve

    try:
        lo, hi = (float(x) / 1000 for x in delay.split(":"))
        t0 = time.time()
        windows = [tuple(t0 + float(x) for x in o.split(":")) for o in outages]
        assert all(len(w) == 2 for w in windows)
    except (ValueError, AssertionError):
        raise click.BadParameter("use MIN:MAX for --delay and START:END for --outage") from None
    imp = Impairments(loss, duplicate, reorder, (lo, hi), windows)

    def report(s):
        click.echo(
            f"forwarded {s.forwarded}, lost {s.dropped}, duplicated {s.duplicated}, "
            f"reordered {s.reordered}, lost in outages {s.outage_dropped}"
        )

    click.echo(f"proxy {_address(listen)} -> {_address(upstream)}")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(listen, upstream, imp, seed, report))


def _address(hostport: tuple[str, int]) -> str:
    host, port = hostport
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
