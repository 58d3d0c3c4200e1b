"""The ``reverbere`` command: a thin shell over the library. Each command calls one function."""

import json

import click

from gateway import __version__
from gateway.cli import admin as cli_admin
from gateway.cli import alerts as cli_alerts
from gateway.cli import energy as cli_energy
from gateway.cli import fleet as cli_fleet
from gateway.cli import gateway as cli_gateway
from gateway.cli import lighting as cli_lighting
from gateway.cli import reports as cli_reports
from gateway.cli import sync as cli_sync
from gateway.cli import users as cli_users
from gateway.cli.node import doctor_cmd, flash_cmd, ports_cmd
from sim.cli import sim


@click.group()
@click.version_option(__version__, prog_name="reverbere")
def cli() -> None:
    """Réverbère: an edge gateway for the sensor networks of small towns."""


cli.add_command(cli_gateway.gateway_group)
cli.add_command(cli_gateway.node_group)
cli_gateway.node_group.add_command(flash_cmd)
cli_gateway.node_group.add_command(doctor_cmd)
cli_gateway.node_group.add_command(ports_cmd)
cli.add_command(cli_gateway.readings)
cli.add_command(cli_reports.anomalies)
cli.add_command(cli_energy.waste)
cli.add_command(cli_energy.report)
cli.add_command(cli_sync.sync_group)
cli.add_command(cli_fleet.fleet_group)
cli.add_command(cli_sync.summaries)
cli.add_command(cli_alerts.alerts_group)
cli.add_command(sim)
cli_admin.register(cli, cli_gateway.gateway_group)
cli_lighting.register(cli_gateway.gateway_group)
cli_users.register(cli)


@cli.command()
@click.option("--nodes", type=click.IntRange(1), default=20, show_default=True)
@click.option(
    "--hours", type=click.FloatRange(1), default=48, show_default=True, help="Simulated hours."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="demo-out",
    show_default=True,
    help="Where the run's gateway and platform databases, the chart and report.json stay.",
)
@click.option(
    "--history-days",
    type=click.IntRange(0, 60),
    default=16,
    show_default=True,
    help="Days before the run the detectors learn from (0: none, as a new gateway).",
)
@click.option("--json", "as_json", is_flag=True, help="End with one JSON object of figures.")
def demo(nodes: int, hours: float, out: str, history_days: int, as_json: bool) -> None:
    """Run the whole system on one machine: a platform, a gateway, a simulated fleet on the
    real firmware through a lossy network, outages, injected anomalies; then a report."""
    from sim.demo import run_demo

    report = run_demo(echo=click.echo, nodes=nodes, hours=hours, out=out, history_days=history_days)
    if as_json:
        click.echo(json.dumps(report))
