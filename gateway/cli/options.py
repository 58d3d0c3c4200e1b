"""Options that several ``reverbere`` commands share, defined once."""

from pathlib import Path

import click

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="gateway.toml",
    show_default=True,
    envvar="REVERBERE_CONFIG",
    help="The gateway's TOML config (env REVERBERE_CONFIG).",
)
db_option = click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The gateway's database file, instead of the one the config names.",
)
