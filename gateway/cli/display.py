"""How ``anomalies``, ``summaries`` and ``readings`` show times and numbers to the town.

Their times print in the town's time zone (``[site]``/``[detect]`` timezone of the config), the
header naming it, unless ``--utc``; ``--excel`` writes the CSV French Excel opens as it is
(:func:`gateway.render.write_excel_csv`), and so does ``--format csv`` when the user's locale
writes a decimal comma (:func:`gateway.render.locale_decimal_comma`; ``--no-excel``: plain CSV).
Without a config file the zone is unknown and times stay UTC, which the ``Z`` of each time says.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from gateway import render
from gateway.cli.options import load_config

utc_option = click.option(
    "--utc", is_flag=True, help="Times in UTC instead of the town's time zone ([site] timezone)."
)
excel_option = click.option(
    "--excel/--no-excel",
    default=None,
    help="CSV for French Excel: ';', decimal comma, local dates, UTF-8 with BOM (--excel implies"
    " CSV). Default: Excel's CSV when the locale writes a decimal comma (LANG=fr_FR.UTF-8).",
)


def town_timezone(config_path: Path, db_path: Path | None, utc: bool) -> str | None:
    """The IANA zone times are shown in: the config's ``[site]``/``[detect]`` timezone; None
    (UTC) with ``--utc``, or with no config file to read the town from (``--db`` alone, or
    ``summaries --from URL`` on another machine)."""
    if utc or not config_path.exists():
        return None
    from gateway.config import ConfigError
    from gateway.service import pipeline_config

    try:
        return pipeline_config(load_config(config_path)).detect.timezone
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def output_format(fmt: str, excel: bool | None) -> tuple[str, bool]:
    """The format to write and whether its CSV is French Excel's. ``--excel`` is a CSV: it
    overrides a table; with ``--format json`` it is a mistake. ``--no-excel`` is plain CSV.
    Neither: a CSV follows the locale (:func:`gateway.render.locale_decimal_comma`), so that a
    French user's ``--format csv`` opens in their spreadsheet as it is."""
    if excel and fmt == "json":
        raise click.BadParameter("--excel writes CSV; drop --format json", param_hint="--excel")
    if excel:
        return "csv", True
    return fmt, fmt == "csv" and excel is None and render.locale_decimal_comma()


def show(
    rows: Sequence[Mapping],
    columns: Sequence[str],
    fmt: str,
    tz: str | None,
    excel: bool | None,
    **kwargs: Any,
) -> str:
    """``rows`` as :func:`gateway.render.render` writes them for a person: times in ``tz``,
    each channel spelled out beside its name in the table and CSV. JSON is for programs and
    stays as it was: the columns given, times ISO 8601 UTC (``Z``) to the millisecond.
    ``excel``: ``--excel``/``--no-excel``, None for neither (:func:`output_format`)."""
    fmt, excel = output_format(fmt, excel)
    if fmt == "json":
        return render.render(rows, columns, fmt, **kwargs)
    rows, columns = render.with_channel_labels(rows, columns)
    return render.render(rows, columns, fmt, tz=tz, excel=excel, **kwargs)
