"""The administrator's commands for the database: ``gateway upgrade``, ``backup``, ``restore``.

A thin shell over ``gateway.store.db.upgrade`` and ``gateway.store.backup``: each command
makes one call and turns the library's exceptions into a sentence with what to do.
"""

from pathlib import Path

import click

from gateway import daemon
from gateway.cli.options import config_option, load_config
from gateway.store import backup as store_backup
from gateway.store import db as store_db

_KEYS = "it holds the node keys: keep it 0600, off the Pi on an encrypted medium"


def _fail(e: Exception) -> click.ClickException:
    return click.ClickException(str(e))


@click.command("upgrade")
@config_option
def gateway_upgrade(config_path: Path) -> None:
    """Apply the new version's migrations to the database, after a backup beside it (named
    with the old schema version and the date). Refuses while a gateway runs on it, and a
    database a newer version upgraded. `gateway run` does the same when it starts."""
    cfg = load_config(config_path)
    try:
        with daemon.instance_lock(cfg.database):
            done = store_db.upgrade(cfg.database)
    except (daemon.AlreadyRunning, daemon.LockFileError, store_db.DatabaseOpenError) as e:
        raise _fail(e) from None
    if done.backup is None:
        click.echo(f"{cfg.database}: schema version {done.after}, nothing to upgrade")
        return
    applied = ", ".join(f"{s} {n}" for s, n in done.applied)
    click.echo(
        f"{cfg.database}: upgraded from schema version {done.before} to {done.after} ({applied})"
    )
    click.echo(f"backup of the database as it was: {done.backup} ({_KEYS})")


@click.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@config_option
def backup(file: Path, config_path: Path) -> None:
    """Copy the gateway's database into FILE (new, mode 0600), consistent even while the
    gateway runs (SQLite's online backup API)."""
    cfg = load_config(config_path)
    try:
        store_backup.backup(cfg.database, file)
    except (store_backup.BackupError, store_db.DatabaseOpenError) as e:
        raise _fail(e) from None
    click.echo(f"wrote {file} ({_KEYS})")


@click.command("restore")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@config_option
def restore(file: Path, config_path: Path) -> None:
    """Put the backup FILE in place of the gateway's database (the gateway must be stopped;
    the database as it was is kept beside it first)."""
    cfg = load_config(config_path)
    try:
        status, kept = store_backup.restore(file, cfg.database)
    except daemon.AlreadyRunning as e:
        raise click.ClickException(f"{e}; then restore") from None
    except (daemon.LockFileError, store_backup.BackupError, store_db.DatabaseOpenError) as e:
        raise _fail(e) from None
    if kept is not None:
        click.echo(f"kept the database as it was in {kept} ({_KEYS})")
    click.echo(f"restored {file} into {cfg.database} (schema version {status.version})")
    if status.pending:
        click.echo(
            f"its schema is older than this reverbere's: run `reverbere gateway upgrade"
            f" --config {config_path}` (or start the gateway, which upgrades it)"
        )


def register(cli: click.Group, gateway_group: click.Group) -> None:
    """Add ``backup`` and ``restore`` to ``reverbere``, ``upgrade`` to ``reverbere gateway``."""
    cli.add_command(backup)
    cli.add_command(restore)
    gateway_group.add_command(gateway_upgrade)
