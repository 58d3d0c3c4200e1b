"""The ``reverbere`` command: a thin shell over the library. Each command calls one function."""

import json

import click

from gateway import __version__
from gateway.node_cli import node
from sim.cli import sim


@click.group()
@click.version_option(__version__, prog_name="reverbere")
def cli() -> None:
    """Réverbère: an edge gateway for the sensor networks of small towns."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="End with one JSON object of figures.")
def demo(as_json: bool) -> None:
    """Run the whole system on one machine, on the embedded defaults."""
    from sim.demo import run_demo

    report = run_demo(echo=click.echo)
    if as_json:
        click.echo(json.dumps(report))


cli.add_command(node)
cli.add_command(sim)
