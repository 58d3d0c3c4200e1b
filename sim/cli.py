"""``reverbere sim ...``: the simulated world, started by hand (tests start it in-process)."""

import tempfile
import threading

import click


@click.group()
def sim() -> None:
    """Simulated parts of the world: boards, nodes, networks, the platform."""


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
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        vb.stop()
