"""The operator's commands for the uplink: ``sync status|push`` and ``summaries``.

A thin shell: each command makes one library call (``gateway.sync``); library exceptions
become a message with a hint here.
"""

import json
import time
from pathlib import Path

import click

from gateway import config as gwconfig
from gateway import render as report
from gateway.cli.options import config_option, db_option
from gateway.store.db import open_db
from gateway.sync.config import SyncConfig, SyncConfigError
from gateway.sync.report import (
    SUMMARY_COLUMNS,
    ChartError,
    PullError,
    event_rows,
    from_tables,
    pull,
    summary_rows,
)
from gateway.sync.report import write_chart as _write_chart
from gateway.sync.service import build_worker, sync_status


def _load(config_path: Path, db_path: Path | None) -> tuple[Path, SyncConfig | None]:
    """The database path and the checked ``[sync]`` section."""
    section: dict = {}
    database = db_path
    if config_path.exists():
        try:
            cfg = gwconfig.load(config_path)
            section = cfg.section("sync")
            database = database or Path(cfg.database)
        except ValueError as e:
            raise click.ClickException(f"{e}\n  hint: check {config_path}") from None
    if database is None:
        raise click.ClickException(
            f"no database: {config_path} does not exist and --db is not given\n"
            "  hint: reverbere gateway init DIR, or pass --db PATH"
        )
    if not Path(database).exists():
        raise click.ClickException(
            f"no database at {database}\n  hint: has the gateway run yet (`reverbere gateway run`)?"
        )
    try:
        sync = SyncConfig.from_dict(section) if section else None
    except SyncConfigError as e:
        raise click.ClickException(f"{config_path}: {e}") from None
    return database, sync


@click.group("sync")
def sync_group() -> None:
    """The uplink to the municipal platform."""


def _ago(t: float | None) -> str:
    if not t:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(t)) + f" ({time.time() - t:.0f} s ago)"


@sync_group.command("status")
@config_option
@db_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def status(config_path: Path, db_path: Path | None, as_json: bool) -> None:
    """Budget use, cursor, backlog and last success of the sync."""
    database, sync = _load(config_path, db_path)
    st = sync_status(open_db(database), sync)
    if as_json:
        click.echo(json.dumps(st))
        return
    limit = st["budget_limit"]
    use = f"{st['budget_sent']} B sent"
    if limit:
        use += f" of {limit} B ({100 * st['budget_sent'] / limit:.1f} %)"
    click.echo(f"target:        {st['target'] or '(not configured)'}")
    click.echo(
        f"budget {st['budget_day']}: {use}, {st['budget_received']} B received, "
        f"{st['budget_requests']} requests"
    )
    click.echo(f"cursor:        {st['cursor']}")
    click.echo(
        f"backlog:       {st['pending_events']} events, {st['pending_summaries']} "
        f"summaries ({st['inflight']} awaiting reconciliation, {st['rejected']} rejected)"
    )
    click.echo(f"synced:        {st['synced']}")
    if st["raw"] or st["pending_raw"] or st["raw_rejected"]:
        which = "every channel" if st["raw"] is True else ", ".join(st["raw"] or ["off"])
        oldest = st["raw_oldest_pending"]
        since = f", oldest {_ago(oldest).split(' (')[0]}" if oldest else ""
        click.echo(
            f"raw backlog:   {st['pending_raw']} readings owed ({which}{since}; "
            f"{st['raw_inflight']} batches awaiting reconciliation, "
            f"{st['raw_rejected']} rejected)"
        )
    click.echo(f"last success:  {_ago(st['last_success'])}")
    if st["failures"]:
        click.echo(
            f"failing:       {st['failures']} in a row, last: {st['last_error']}; "
            f"next try {_ago(st['next_attempt'])}"
        )


@sync_group.command("push")
@config_option
@db_option
def push(config_path: Path, db_path: Path | None) -> None:
    """Send what the outbox owes now (as the service would), then print the status."""
    database, sync = _load(config_path, db_path)
    if sync is None or sync.target == "none":
        raise click.ClickException("no [sync] target configured\n  hint: see docs/sync.md")
    db = open_db(database)
    worker = build_worker(db, sync, raw_interval=0)  # raw readings owed go now too
    try:
        outcome = worker.sync_until_idle(wait=False)
    finally:
        worker.target.close()
    raw = f", {worker.stats.raw_sent} raw readings" if sync.raw else ""
    click.echo(
        f"{outcome}: {worker.stats.created} created, {worker.stats.updated} updated, "
        f"{worker.stats.adopted} found after an uncertain outcome{raw}"
    )
    if outcome in ("failed", "auth"):
        raise click.ClickException(f"{worker.last_error}\n  hint: reverbere sync status")


def parse_time(value: str) -> float:
    try:
        return report.parse_when(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: use 7d, 12h, 2026-01-31T12:00Z or Unix seconds"
        ) from None


@click.command("summaries")
@config_option
@db_option
@click.option(
    "--from",
    "source",
    default="gateway",
    show_default=True,
    help="'gateway', or the SensorThings service root (URL ending in /v1.1).",
)
@click.option("--since", default=None, help="Start: 7d, 12h, ISO, Unix (default: all).")
@click.option("--until", default=None, help="End (exclusive); default now.")
@click.option("--node", "nodes", multiple=True, help="Only this node (repeatable).")
@click.option(
    "--format", "fmt", type=click.Choice(report.FORMATS), default="table", show_default=True
)
@click.option(
    "--anomalies",
    "events_only",
    is_flag=True,
    help="Print the anomaly events instead of the summaries (CSV, JSON).",
)
@click.option(
    "--chart",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also draw energy per hour per node, anomalies marked (.svg, .html, .png).",
)
@click.option("--token", envvar="REVERBERE_SYNC_TOKEN", help="Bearer token for --from URL.")
@click.option("--user", envvar="REVERBERE_SYNC_USER", help="Basic auth user for --from URL.")
@click.option("--password", envvar="REVERBERE_SYNC_PASSWORD", help="Basic auth password.")
@click.option("--ca-file", type=click.Path(exists=True, dir_okay=False), help="CA bundle (TLS).")
def summaries(
    config_path,
    db_path,
    source,
    since,
    until,
    nodes,
    fmt,
    events_only,
    chart,
    token,
    user,
    password,
    ca_file,
) -> None:
    """Hourly summaries and anomaly events, from the gateway or pulled from the platform."""
    start = parse_time(since) if since else 0.0
    end = parse_time(until) if until else 2.0**31
    if source == "gateway":
        database, _ = _load(config_path, db_path)
        sums, events = from_tables(open_db(database), start, end, nodes)
    elif source.startswith(("http://", "https://")):
        try:
            got = pull(
                source,
                start,
                end,
                token=token,
                ca_file=ca_file,
                nodes=nodes,
                basic=(user, password) if user else None,
            )
        except PullError as e:
            raise click.ClickException(
                f"{e}\n  hint: check the URL (it ends in /v1.1) and --token/--user"
            ) from None
        sums, events = got.summaries, got.events
    else:
        raise click.BadParameter("use 'gateway' or an http(s) URL", param_hint="--from")
    if events_only:
        click.echo(report.render(event_rows(events), report.ANOMALY_COLUMNS, fmt))
    else:
        click.echo(report.render(summary_rows(sums), SUMMARY_COLUMNS, fmt))
        if fmt == "table" and events:
            click.echo("\nanomalies:")
            click.echo(report.render(event_rows(events), report.ANOMALY_COLUMNS, fmt))
    if chart:
        try:
            _write_chart(chart, sums, events)
        except ChartError as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"chart written to {chart}", err=True)
