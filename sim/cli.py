"""``reverbere sim ...``: the simulated world around the gateway."""

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
