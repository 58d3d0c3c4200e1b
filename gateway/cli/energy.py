"""``reverbere waste`` and ``reverbere report``: the energy the anomalies wasted, and the monthly
and yearly reports for the council (docs/reports.md).

A thin shell: each command reads the town from the config (time zone, lamps, lighting groups),
opens the database and calls :func:`gateway.pipeline.waste.waste` or
:mod:`gateway.reports`.
"""

from pathlib import Path

import click

from gateway import render, reports
from gateway.cli import display
from gateway.cli.options import (
    WHEN,
    config_option,
    db_option,
    format_option,
    load_config,
    open_database,
)
from gateway.pipeline import waste as waste_lib

# ``report``'s: its files are for the town's Excel unless --no-excel, whatever the locale.
excel_option = click.option(
    "--excel/--no-excel",
    default=None,
    help="CSV for French Excel (';', decimal comma, local dates, UTF-8 with BOM), the default;"
    " --no-excel: plain CSV.",
)


def town(config_path: Path, db_path: Path | None) -> reports.Town:
    """The town of the config; with ``--db`` and no config file, UTC and id prefixes."""
    if db_path is not None and not config_path.exists():
        return reports.Town()
    from gateway.config import ConfigError
    from gateway.service import pipeline_config

    try:
        detect = pipeline_config(load_config(config_path)).detect
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    return reports.Town.from_detect(detect)


@click.command()
@config_option
@db_option
@click.option(
    "--since",
    type=WHEN,
    default="30d",
    show_default=True,
    help="Events ongoing or ended since: 30d, 1w, 2026-11-01, Unix.",
)
@click.option(
    "--by",
    type=click.Choice(waste_lib.WASTE_BY),
    default="node",
    show_default=True,
    help="Sum per node, lighting group (else id prefix), kind, or local month.",
)
@format_option
@display.excel_option
def waste(config_path, db_path, since, by, fmt, excel) -> None:
    """The energy wasted (kWh above what was expected) and its cost (€, [site] tariff), summed.

    Groups are the [[detect.lighting]] groups; a node in none is grouped by its id prefix
    (lamp-012 -> lamp). A month is the local month an event started in.
    """
    fmt, excel = display.output_format(fmt, excel)  # --excel is a CSV, as everywhere
    t = town(config_path, db_path)
    db = open_database(config_path, db_path)
    rows = waste_lib.waste(db, by, since, group_of=t.group_of, timezone=t.timezone)
    if fmt != "json" and by == "kind":
        for r in rows:
            r["kind"] = "total" if r["kind"] == "total" else waste_lib.kind_words(r["kind"])
    columns = (by, *waste_lib.WASTE_COLUMNS)
    text = render.render(rows, columns, fmt, excel=excel)
    click.echo(text, nl=not text.endswith("\n"))


@click.command()
@config_option
@db_option
@click.option("--month", help="A local month: 2026-11.")
@click.option("--year", type=click.IntRange(2000, 2200), help="A year: 2026 (adds the OPERAT CSV).")
@click.option(
    "--reference",
    type=click.IntRange(2000, 2200),
    help="The year to compare with (default: the year before).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="Where the HTML and CSV files go.",
)
@excel_option
def report(config_path, db_path, month, year, reference, out, excel) -> None:
    """Write the energy report of a month or a year: HTML with charts (opens offline) and CSV.

    Energy per building and group of lamps against the same period of the reference year,
    the waste found and its cost, the events still open; with --year, the OPERAT CSV too.
    """
    if (month is None) == (year is None):
        raise click.UsageError("give --month YYYY-MM or --year YYYY")
    t = town(config_path, db_path)
    try:
        period = (
            reports.Period.month(month, t.timezone)
            if month
            else reports.Period.year(year, t.timezone)
        )
    except reports.ReportError as e:
        raise click.BadParameter(str(e), param_hint="--month") from None
    db = open_database(config_path, db_path)
    rep = reports.build(db, period, t, reference)
    # A report is for the town's Excel unless told otherwise (--no-excel: plain CSV).
    for path in reports.write(rep, out, excel=True if excel is None else excel):
        click.echo(str(path))
