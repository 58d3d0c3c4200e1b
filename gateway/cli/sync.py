"""The operator's commands for the uplink: ``sync status|push`` and ``summaries``.

A thin shell: each command makes one library call (``gateway.sync``); library exceptions
become a message with a hint here.
"""

import time
from collections.abc import Callable
from pathlib import Path

import click

from gateway import render as report
from gateway.cli.display import excel_option, show, town_timezone, utc_option
from gateway.cli.options import (
    WHEN,
    config_option,
    db_option,
    format_option,
    load_config,
    open_database,
)
from gateway.store.db import Database
from gateway.sync.config import SyncConfig
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


def _load(config_path: Path, db_path: Path | None) -> tuple[Database, SyncConfig | None]:
    """The database and the checked ``[sync]`` section (none when only ``--db`` names a
    database and there is no config, or ``target = "none"``), checked as the gateway checks
    it (``gateway.service.pipeline_config``): an error names file, line and key, and the
    nodes are placed where ``[site]`` says, as the service places them."""
    from gateway.config import ConfigError
    from gateway.service import pipeline_config

    sync = None
    if config_path.exists() or db_path is None:
        cfg = load_config(config_path)
        try:
            sync = pipeline_config(cfg).sync
        except ConfigError as e:
            raise click.ClickException(
                f"{e}\n  hint: `reverbere gateway init DIR` writes a commented example"
            ) from None
        db_path = db_path or cfg.database
    return open_database(config_path, db_path), sync


@click.group("sync")
def sync_group() -> None:
    """The uplink to the municipal platform."""


def _ago(t: float | None, tz: str | None) -> str:
    if not t:
        return "never"
    ago = time.time() - t
    return _when(t, tz) + (f" ({ago:.0f} s ago)" if ago >= 0 else f" (in {-ago:.0f} s)")


def _when(t: float, tz: str | None) -> str:
    """A sentence's time: the town's local time with its offset (``2026-03-29 03:30:00+02:00``),
    or ISO 8601 UTC with a space without a zone (render.iso is for tables and JSON)."""
    if tz is None:
        return report.iso(int(t)).replace("T", " ")
    return report.local_iso(int(t), tz)


def _lamps(config_path: Path) -> Callable[[str], bool] | None:
    """Which nodes are lamps, as ``[detect]`` says (``lamps``, ``[[detect.lighting]]``): the
    chart draws them on their own panel. None without a config file (the chart's default)."""
    if not config_path.exists():
        return None
    from gateway.service import pipeline_config

    return pipeline_config(load_config(config_path)).detect.is_lamp


@sync_group.command("status")
@config_option
@db_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object (times: Unix seconds).")
@utc_option
def status(config_path: Path, db_path: Path | None, as_json: bool, utc: bool) -> None:
    """Budget use, cursor, backlog and last success of the sync; times in the town's time
    zone (named on the first line; --utc for UTC)."""
    db, sync = _load(config_path, db_path)
    st = sync_status(db, sync)
    if as_json:
        # Times stay Unix seconds here: scripts compare them with the clock.
        click.echo(report.render_record(st, times=()))
        return
    tz = town_timezone(config_path, db_path, utc)
    click.echo(f"times:         {tz or 'UTC'}")
    limit = st["budget_limit"]
    use = f"{st['budget_sent']} B sent"
    if limit:
        use += f" of {limit} B ({100 * st['budget_sent'] / limit:.1f} %)"
    click.echo(f"target:        {st['target'] or '(not configured)'}")
    click.echo(
        # The budget's day is a UTC date (gateway.sync.budget), whatever the town's zone.
        f"budget {st['budget_day']} (UTC day): {use}, {st['budget_received']} B received, "
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
        since = f", oldest {_when(oldest, tz)}" if oldest else ""
        click.echo(
            f"raw backlog:   {st['pending_raw']} readings owed ({which}{since}; "
            f"{st['raw_inflight']} batches awaiting reconciliation, "
            f"{st['raw_rejected']} rejected)"
        )
    click.echo(f"last success:  {_ago(st['last_success'], tz)}")
    if st["failures"]:
        click.echo(
            f"failing:       {st['failures']} in a row, last: {st['last_error']}; "
            f"next try {_ago(st['next_attempt'], tz)}"
        )


@sync_group.command("push")
@config_option
@db_option
def push(config_path: Path, db_path: Path | None) -> None:
    """Send what the outbox owes now (as the service would), then print the status."""
    db, sync = _load(config_path, db_path)
    if sync is None or sync.target == "none":
        raise click.ClickException(
            "no [sync] target configured\n  hint: set [sync] target and url in the config"
            " (`reverbere gateway init DIR` writes a gateway.toml whose comments list them)"
        )
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
@click.option("--since", type=WHEN, help="Start: 7d, 1w, 2026-01-31T12:00Z, Unix [all].")
@click.option("--until", type=WHEN, help="End (exclusive), same forms [now].")
@click.option("--node", "nodes", multiple=True, help="Only this node (repeatable).")
@format_option
@utc_option
@excel_option
@click.option(
    "--anomalies",
    "events_only",
    is_flag=True,
    help="Print the anomaly events instead of the summaries (CSV, JSON).",
)
@click.option(
    "--chart",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also draw the chart: a panel per kind of asset (lamps W, buildings kWh, °C), anomalies"
    " marked, local hours (.svg, .html, .png).",
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
    utc,
    excel,
    events_only,
    chart,
    token,
    user,
    password,
    ca_file,
) -> None:
    """Hourly summaries and anomaly events, from the gateway or pulled from the platform;
    times in the town's time zone."""
    tz = town_timezone(config_path, db_path, utc)
    start = 0.0 if since is None else since
    end = 2.0**31 if until is None else until
    if source == "gateway":
        db, _ = _load(config_path, db_path)
        sums, events = from_tables(db, start, end, nodes)
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
        click.echo(show(event_rows(events), report.ANOMALY_COLUMNS, fmt, tz, excel))
    else:
        click.echo(show(summary_rows(sums), SUMMARY_COLUMNS, fmt, tz, excel))
        if fmt == "table" and not excel and events:
            click.echo("\nanomalies:")
            click.echo(show(event_rows(events), report.ANOMALY_COLUMNS, fmt, tz, excel))
    if chart:
        try:
            _write_chart(chart, sums, events, tz=tz or "UTC", is_lamp=_lamps(config_path))
        except ChartError as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"chart written to {chart}", err=True)
