"""``reverbere sim ...``: the simulated world around the gateway, started by hand.

Tests and the demo start the same parts in-process through the library.
"""

import contextlib
import tempfile
import threading
from pathlib import Path

import click


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
@click.option(
    "--fault-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Put the fault proxy in front, breaking this share of requests.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the faults.")
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
