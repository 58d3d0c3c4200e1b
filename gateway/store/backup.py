"""Backups of the gateway's database, and putting one back.

The database holds the node keys: whoever has a copy can sign packs as any node. So every
copy made here is created readable by its owner only (0600) before a byte is written, and
the docs (docs/gateway.md, "Backups and upgrades") say how to keep it.

A backup is made with SQLite's online backup API (``sqlite3.Connection.backup``) in one
step, under one read transaction: it is the database as of one commit, even while the
gateway writes (WAL readers do not block the writer), which copying the file (and its
``-wal``) is not. The copy is left in rollback-journal mode, one self-contained file, and
checked (``PRAGMA quick_check``) before it is reported made.
"""

import datetime
import os
import sqlite3
from pathlib import Path

from gateway.store.db import (
    MIGRATIONS_TABLE,
    DatabaseOpenError,
    NoDatabase,
    NotADatabase,
    SchemaStatus,
    SchemaTooNew,
    create_private,
    schema_status,
)


class BackupError(Exception):
    """A backup or a restore that cannot be done; ``str()`` says why and what to do."""


def backup(database: str | Path, dest: str | Path) -> Path:
    """Copy the database at ``database`` into the new file ``dest`` (mode 0600); return it.

    Raises :class:`BackupError` if ``dest`` exists (a backup is never overwritten) or the
    copy fails its check, :class:`~gateway.store.db.NoDatabase` if there is no database.
    """
    database, dest = Path(database), Path(dest)
    if not database.is_file():
        raise NoDatabase(database, "no such file")
    try:
        os.close(os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        raise BackupError(f"{dest} exists: a backup is never overwritten, name another") from None
    except OSError as e:
        raise BackupError(f"cannot create {dest}: {e.strerror}") from None
    try:
        _copy(_connect(database), sqlite3.connect(dest))
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest


def backup_beside(database: str | Path, label: str) -> Path:
    """A backup of ``database`` beside it, named ``<name>.<label>.<UTC date and time>.bak``
    (``reverbere.db.schema8.20260131T120000Z.bak``): where an upgrade keeps the database as
    it was, in the one directory the service may write."""
    database = Path(database)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(100):
        suffix = f"-{n}" if n else ""
        dest = database.with_name(f"{database.name}.{label}.{stamp}{suffix}.bak")
        if not dest.exists():
            try:
                return backup(database, dest)
            except BackupError:
                if not dest.exists():  # not a race for the name: a real failure
                    raise
    raise BackupError(f"cannot find a free backup name beside {database}")


def check_backup(path: str | Path) -> SchemaStatus:
    """Where the backup at ``path`` stands (read-only): a gateway database, whole
    (``PRAGMA integrity_check``), not newer than this code; :class:`BackupError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise BackupError(f"{path}: no such file")
    import sqlite_utils

    try:
        con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            problems = [r[0] for r in con.execute("PRAGMA integrity_check")]
            if problems != ["ok"]:
                raise BackupError(f"{path} is damaged: {'; '.join(problems[:3])}")
            status = schema_status(sqlite_utils.Database(con))
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise BackupError(f"{path} is not an SQLite database ({e})") from None
    except NotADatabase:
        raise BackupError(
            f"{path} is SQLite but not a gateway database (no {MIGRATIONS_TABLE})"
        ) from None
    if status.unknown:
        raise BackupError(str(SchemaTooNew(path, status)))
    return status


def restore(backup_file: str | Path, database: str | Path) -> tuple[SchemaStatus, Path | None]:
    """Put the backup ``backup_file`` in place of the database at ``database``; return the
    backup's schema status and where the database as it was is kept (None if there was none).

    Refuses while a gateway runs on ``database`` (``gateway.daemon.AlreadyRunning``: the lock
    is held for the whole restore, so none starts meanwhile), and a backup that
    :func:`check_backup` refuses. The current database is first backed up beside itself
    (``<name>.before-restore.<date>.bak``), then the backup is written into it with the online
    backup API, through SQLite (its ``-wal`` and ``-shm`` stay consistent, which copying the
    file over would not). A backup of an older schema must then be upgraded
    (``reverbere gateway upgrade``).
    """
    from gateway import daemon

    backup_file, database = Path(backup_file), Path(database)
    status = check_backup(backup_file)
    with daemon.instance_lock(database):
        kept = None
        if database.is_file() and database.stat().st_size:
            try:
                kept = backup_beside(database, "before-restore")
            except (sqlite3.DatabaseError, DatabaseOpenError) as e:
                raise BackupError(
                    f"cannot keep a copy of {database} before restoring ({e}): move it away"
                    " yourself first"
                ) from None
        create_private(database)
        src = sqlite3.connect(backup_file.resolve().as_uri() + "?mode=ro", uri=True)
        dst = sqlite3.connect(database)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=WAL")  # as the gateway keeps it
        finally:
            src.close()
            dst.close()
    return status, kept


def _connect(database: Path) -> sqlite3.Connection:
    """A connection to an existing database, never creating one (``mode=rw``); it waits up
    to 30 s for a commit in progress."""
    return sqlite3.connect(database.resolve().as_uri() + "?mode=rw", uri=True, timeout=30)


def _copy(src: sqlite3.Connection, dst: sqlite3.Connection) -> None:
    """The whole of ``src`` into ``dst`` in one step (one read transaction: a consistent
    snapshot), left as one file (rollback journal) and checked."""
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
        problem = dst.execute("PRAGMA quick_check").fetchone()[0]
        if problem != "ok":
            raise BackupError(f"the copy failed its check: {problem}")
    finally:
        src.close()
        dst.close()
