"""The administrator's commands for alerts: ``alerts test`` and ``alerts list``.

A thin shell over ``gateway.alerts`` (docs/alerts.md): each command makes one library call.
"""

from pathlib import Path
from typing import TYPE_CHECKING

import click

from gateway.cli.display import excel_option, show, utc_option
from gateway.cli.options import config_option, format_option, load_config, open_database

if TYPE_CHECKING:
    from gateway.alerts.config import AlertsConfig


def _alerts_config(config_path: Path) -> tuple[str, "AlertsConfig | None"]:
    """The town's time zone and the checked [alerts] (None without routes)."""
    from gateway.alerts.config import from_config
    from gateway.config import ConfigError
    from gateway.service import pipeline_config

    cfg = load_config(config_path)
    try:
        timezone = pipeline_config(cfg).detect.timezone
        return timezone, from_config(cfg, timezone)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


@click.group("alerts")
def alerts_group() -> None:
    """Alerts to the people who act: e-mail, webhook, ntfy (docs/alerts.md)."""


@alerts_group.command("test")
@config_option
@click.argument("routes", nargs=-1)
def test_cmd(config_path: Path, routes: tuple[str, ...]) -> None:
    """Send a test message by every route of [alerts] (or the ROUTES named) now."""
    from gateway.alerts.sender import send_test

    _, alerts = _alerts_config(config_path)
    if alerts is None:
        raise click.ClickException(
            f"{config_path}: no [[alerts.routes]]\n  hint: docs/alerts.md shows a route by e-mail"
        )
    unknown = [r for r in routes if r not in alerts.routes_by_name]
    if unknown:
        known = ", ".join(alerts.routes_by_name)
        raise click.ClickException(f"no route {unknown[0]!r} in {config_path} (routes: {known})")
    failed = 0
    for name, error in send_test(alerts, routes).items():
        route = alerts.routes_by_name[name]
        where = ", ".join(route.target)
        if error is None:
            click.echo(f"{name}: sent ({route.transport} {where})")
        else:
            failed += 1
            click.echo(f"{name}: NOT sent ({route.transport} {where}): {error}", err=True)
    if failed:
        raise click.ClickException(f"{failed} route(s) failed: check the server and the config")


@alerts_group.command("list")
@config_option
@click.option("--unsent", is_flag=True, help="Only the messages still waiting.")
@format_option
@utc_option
@excel_option
def list_cmd(config_path: Path, unsent: bool, fmt: str, utc: bool, excel: bool | None) -> None:
    """The alert messages made, with their state (sent, waiting, failing) and when each was
    made and sent; times in the town's time zone (--utc for UTC)."""
    from gateway.alerts.outbox import LIST_COLUMNS, LIST_TIMES, alert_rows

    timezone, _ = _alerts_config(config_path)  # the town's, even with no route left
    db = open_database(config_path)
    try:
        rows = alert_rows(db, unsent)
    finally:
        db.close()
    tz = None if utc else timezone
    text = show(rows, LIST_COLUMNS, fmt, tz, excel, times=LIST_TIMES)
    click.echo(text, nl=not text.endswith("\n"))  # Excel's CSV ends its last line
