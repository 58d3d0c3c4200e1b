"""The gateway's one SQLite database: opening it safely and bringing its schema up to date.

Every module that owns tables declares its own named migration set
(``migrations = Migrations("reverbere.<module>")`` from ``sqlite_utils.migrations``);
``MIGRATION_SETS`` lists them in the order they apply, so a new stage adds one line here.

Migrations run in two places only: when a database is created (an empty file gets the whole
schema at once), and by :func:`upgrade` (``reverbere gateway upgrade``, and the service at
start), which backs the database up first (``gateway.store.backup``). Every other opening
(:func:`open_db`) refuses a database whose schema is not this code's: an older one with
:class:`NeedsUpgrade` (an administrator decides when, with a backup, rather than the first
``node list`` after installing a new version), a newer one with :class:`SchemaTooNew`
(an older version must not write tables it does not understand). The schema's version is
the number of migrations applied, which only grows; an upgrade records it, with the newest
migration of each set and the version of reverbere, in ``_reverbere_schema``, so that a
version that does not know them can name who wrote them.
"""

import contextlib
import datetime
import functools
import importlib
import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils
from sqlite_utils.migrations import Migrations

from gateway import __version__

log = logging.getLogger("reverbere.store")

# "module:attribute" of each migration set, applied in this order.
MIGRATION_SETS: tuple[str, ...] = (
    "gateway.ingest.registry:migrations",
    "gateway.store.readings:migrations",
    "gateway.pipeline.detect:migrations",
    "gateway.pipeline.summarise:migrations",
    "gateway.sync.outbox:migrations",
    "gateway.sync.raw:migrations",
    "gateway.ota.updates:migrations",
    "gateway.console.accounts:migrations",  # accounts, sessions, tokens; acks of anomalies
    "gateway.alerts.outbox:migrations",
)


class Database(sqlite_utils.Database):
    """``sqlite_utils.Database`` whose ``atomic()`` takes the write lock when it begins.

    With a plain ``BEGIN`` a block that reads, then writes, can fail at once with "database
    is locked" (SQLITE_BUSY_SNAPSHOT, which no busy timeout waits out) when another
    connection (the committer, the sync thread) committed in between. ``BEGIN IMMEDIATE``
    waits for the lock instead, up to the connection's busy timeout.
    """

    @contextlib.contextmanager
    def atomic(self) -> Iterator["Database"]:
        if self.conn.in_transaction:  # nested: a savepoint, as sqlite-utils does
            with super().atomic():
                yield self
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.rollback()
            raise
        else:
            try:
                self.conn.execute("COMMIT")
            except BaseException:
                self.rollback()
                raise


def open_db(path: str | Path) -> Database:
    """Open (creating if needed) the database at ``path``, in WAL mode, its schema this code's.

    A new (empty) file gets the whole schema; an existing one is only checked:
    :class:`NeedsUpgrade` if it needs migrations (:func:`upgrade` applies them, after a
    backup), :class:`SchemaTooNew` if a newer version of reverbere upgraded it.

    ``synchronous=FULL`` makes every commit durable across power loss, so a reading the
    gateway acknowledged after its commit survives a power cut. The database holds the node
    keys: it is created readable by its owner only (``create_private``), and a warning is
    logged when an existing one is readable by every user. A file that cannot be opened or
    written raises :class:`DatabaseOpenError` (:class:`NotADatabase` for one that is not
    SQLite), whose message names the path and what is wrong, not SQLite's bare sentence.
    """
    path = Path(path)
    create_private(path)
    _warn_if_exposed(path)
    try:
        db = Database(path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        if not _create_schema(db):
            schema_status(db).check(path)
    except sqlite3.DatabaseError as e:
        error = _explain(path, e)
        if error is None:  # not about the file (a lock held too long): as SQLite says
            raise
        raise error from e
    return db


def create_private(path: Path) -> None:
    """Create an empty database file readable by its owner only (it holds the node keys),
    before SQLite would create it with the umask's mode (0644); SQLite gives its -wal and
    -shm files the same mode. Nothing if it exists; :class:`DatabaseOpenError` if it can be
    neither found nor created."""
    if path.is_dir():
        raise NotADatabase(path, "a directory, not a database file")
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise DatabaseOpenError(
            path, f"cannot create it: the directory {path.parent} does not exist"
        ) from None
    except OSError as e:
        raise DatabaseOpenError(
            path, f"cannot create it in {path.parent}: {e.strerror.lower()}"
        ) from None


# Warned once per file and process: several connections open the same database.
_warned: set[Path] = set()


def _warn_if_exposed(path: Path) -> None:
    """Log a warning when the database or its -wal/-shm is readable by every user (made
    before the gateway created it 0600, or copied): they hold the node keys."""
    exposed = []
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(OSError):
            if p.stat().st_mode & stat.S_IROTH:
                exposed.append(p.name)
    if exposed and path not in _warned:
        _warned.add(path)
        log.warning(
            "%s holds the node keys and every user of this machine can read %s: chmod 600 %s*",
            path,
            " and ".join(exposed),
            path,
        )


def _explain(path: Path, error: sqlite3.DatabaseError) -> "DatabaseOpenError | None":
    """The :class:`DatabaseOpenError` for an SQLite error about the file itself, else None."""
    message = str(error)
    if message == "file is not a database":
        return NotADatabase(path, "not an SQLite database (is it the right file?)")
    if message == "database disk image is malformed":
        return DatabaseOpenError(path, "damaged (database disk image is malformed)")
    if message in ("attempt to write a readonly database", "unable to open database file"):
        return DatabaseOpenError(
            path,
            f"cannot open it for writing ({message}): this user must be able to write the"
            f" file and its directory {path.parent}, where SQLite keeps its -wal and -shm",
        )
    if message == "disk I/O error":
        return DatabaseOpenError(path, "cannot read or write it: disk I/O error")
    return None


class DatabaseOpenError(Exception):
    """A command named a database file it cannot use; ``path`` is that file. The CLI turns
    it into a message with a hint (gateway/cli/options.py)."""

    def __init__(self, path: str | Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = Path(path)


class NoDatabase(DatabaseOpenError):
    """There is no file at that path."""


class NotADatabase(DatabaseOpenError):
    """The file is not SQLite, or is SQLite without the gateway's tables."""


def open_checked(path: str | Path, create: bool = False) -> Database:
    """Open the gateway's database at ``path`` as :func:`open_db` does, but only if it is one.

    Unlike :func:`open_db` (the service's start), a command must not leave a new empty
    database where a mistyped ``--db`` pointed (unless it may ``create`` one, as registering a
    node may), nor add the gateway's tables to someone else's SQLite file: an existing file
    is first looked at read-only. Raises :class:`NoDatabase` or :class:`NotADatabase`.
    """
    path = Path(path)
    if not path.exists():
        if create:
            return open_db(path)
        raise NoDatabase(path, "no such file")
    if path.is_dir():
        raise NotADatabase(path, "a directory, not a database file")
    try:
        con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
        finally:
            con.close()
    except sqlite3.Error as e:
        raise NotADatabase(path, f"not an SQLite database ({e})") from None
    if MIGRATIONS_TABLE not in tables or "readings" not in tables:
        raise NotADatabase(path, _NOT_OURS)
    return open_db(path)


def migrate(db: sqlite_utils.Database) -> None:
    """Apply every pending migration of every set in ``MIGRATION_SETS`` and record the schema
    version (``_reverbere_schema``). Only for a new database or inside :func:`upgrade`."""
    for migrations in migration_sets():
        migrations.apply(db)
    with db.atomic():
        _record_version(db)


def migration_sets() -> list[Migrations]:
    """The ``Migrations`` of ``MIGRATION_SETS``, in order."""
    sets = []
    for spec in MIGRATION_SETS:
        module, _, attr = spec.partition(":")
        sets.append(getattr(importlib.import_module(module), attr or "migrations"))
    return sets


@functools.cache
def code_migrations() -> dict[str, tuple[str, ...]]:
    """Each set's migration names as this code declares them, in order (what ``pending``
    says of an empty database: sqlite-utils keeps the declared list private)."""
    empty = sqlite_utils.Database(memory=True)
    return {m.name: tuple(p.name for p in m.pending(empty)) for m in migration_sets()}


def code_schema_version() -> int:
    """This code's schema version: the number of migrations it declares."""
    return sum(len(names) for names in code_migrations().values())


SCHEMA_TABLE = "_reverbere_schema"
MIGRATIONS_TABLE = Migrations.migrations_table


@dataclass(frozen=True)
class SchemaStatus:
    """Where a database's schema stands against this code's: ``pending`` migrations (set,
    name) this code would apply, ``unknown`` ones the database has and this code does not
    know (a newer reverbere applied them), ``recorded`` what the last upgrade wrote in
    ``_reverbere_schema`` (``schema_version``, ``reverbere_version``, ``upgraded_at``)."""

    version: int
    pending: tuple[tuple[str, str], ...]
    unknown: tuple[tuple[str, str], ...]
    recorded: dict[str, str]

    @property
    def code_version(self) -> int:
        return code_schema_version()

    def check(self, path: str | Path) -> None:
        """Raise :class:`SchemaTooNew` or :class:`NeedsUpgrade` unless the schema is this
        code's."""
        if self.unknown:
            raise SchemaTooNew(path, self)
        if self.pending:
            raise NeedsUpgrade(path, self)


def schema_status(db: sqlite_utils.Database) -> SchemaStatus:
    """Read (only) where ``db``'s schema stands; :class:`NotADatabase` without the
    migrations table (not the gateway's database)."""
    if not db[MIGRATIONS_TABLE].exists():
        raise NotADatabase(db.conn.execute("PRAGMA database_list").fetchone()[2], _NOT_OURS)
    applied = db.execute(f"SELECT migration_set, name FROM {MIGRATIONS_TABLE}").fetchall()
    code = code_migrations()
    done = {(s, n) for s, n in applied}
    recorded: dict[str, str] = {}
    if db[SCHEMA_TABLE].exists():
        recorded = dict(db.execute(f"SELECT key, value FROM {SCHEMA_TABLE}").fetchall())
    return SchemaStatus(
        version=len(applied),
        pending=tuple((s, n) for s, names in code.items() for n in names if (s, n) not in done),
        unknown=tuple((s, n) for s, n in applied if n not in code.get(s, ())),
        recorded=recorded,
    )


_NOT_OURS = "an SQLite file without the gateway's tables"


def _create_schema(db: Database) -> bool:
    """Give an empty database the whole schema, in one transaction (``BEGIN IMMEDIATE``: two
    connections opening a new file at once do not both migrate); False if it is not empty."""
    if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        return False
    with db.atomic():
        if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            return False  # another connection made it meanwhile
        migrate(db)
    return True


def _record_version(db: sqlite_utils.Database) -> None:
    """Write this code's schema version in ``_reverbere_schema``: the number of migrations,
    the newest of each set, and which reverbere wrote them (for a version that does not know
    them: :class:`SchemaTooNew`)."""
    db.execute(f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (key TEXT PRIMARY KEY, value TEXT)")
    rows = {
        "schema_version": str(code_schema_version()),
        "reverbere_version": __version__,
        "upgraded_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    rows.update({f"newest {s}": names[-1] for s, names in code_migrations().items() if names})
    db.execute(
        f"INSERT OR REPLACE INTO {SCHEMA_TABLE} (key, value) VALUES "
        + ", ".join("(?, ?)" for _ in rows),
        [x for kv in rows.items() for x in kv],
    )


@dataclass(frozen=True)
class Upgraded:
    """What :func:`upgrade` did: the schema version ``before`` and ``after``, the migrations
    ``applied`` (set, name), and the ``backup`` it made first (None when nothing was to do,
    or the database was new)."""

    before: int
    after: int
    applied: tuple[tuple[str, str], ...]
    backup: Path | None


def upgrade(path: str | Path) -> Upgraded:
    """Bring the database at ``path`` to this code's schema, after a backup.

    The backup (``gateway.store.backup.backup_beside``: SQLite's online backup API, so it is
    consistent, into a file beside the database named with the old schema version and the
    date, mode 0600) is made before the first migration; a migration that fails leaves the
    database as its transaction found it, and the backup as it was. Refuses a database a
    newer reverbere upgraded (:class:`SchemaTooNew`). A new database gets its schema without
    a backup. The caller holds the instance lock (``gateway.daemon``): no gateway may write
    while the schema changes.
    """
    from gateway.store.backup import backup_beside  # backup imports this module

    path = Path(path)
    create_private(path)
    try:
        db = Database(path)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            if _create_schema(db):
                return Upgraded(0, code_schema_version(), (), None)
            status = schema_status(db)
            if status.unknown:
                raise SchemaTooNew(path, status)
            if not status.pending:
                if status.recorded.get("schema_version") != str(status.version):
                    with db.atomic():  # a database of 0.1.0, which recorded nothing
                        _record_version(db)
                return Upgraded(status.version, status.version, (), None)
            backup = backup_beside(path, f"schema{status.version}")
            log.info(
                "upgrading %s from schema version %d to %d; backup in %s",
                path,
                status.version,
                code_schema_version(),
                backup,
            )
            db.execute("PRAGMA foreign_keys=ON")
            migrate(db)
            return Upgraded(status.version, code_schema_version(), status.pending, backup)
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        error = _explain(path, e)
        if error is None:
            raise
        raise error from e


class NeedsUpgrade(DatabaseOpenError):
    """The database's schema is older than this code's: ``reverbere gateway upgrade``."""

    def __init__(self, path: str | Path, status: SchemaStatus) -> None:
        n = len(status.pending)
        super().__init__(
            path,
            f"its schema (version {status.version}) is older than this reverbere's"
            f" (version {status.code_version}, {n} migration{'s' * (n != 1)} to apply):"
            " run `reverbere gateway upgrade --config FILE`, which backs it up first"
            " (starting the gateway does the same)",
        )
        self.status = status


class SchemaTooNew(DatabaseOpenError):
    """A newer reverbere upgraded the database: this one must not use it."""

    def __init__(self, path: str | Path, status: SchemaStatus) -> None:
        by = status.recorded.get("reverbere_version")
        version = max(int(status.recorded.get("schema_version", 0)), status.version)
        s, name = status.unknown[0]
        super().__init__(
            path,
            f"its schema (version {version}"
            + (f", written by reverbere {by}" if by else "")
            + f") is newer than this reverbere {__version__}'s (version"
            f" {status.code_version}; it does not know {s} {name}): run the newer reverbere,"
            " or restore the backup made before that upgrade (`reverbere restore FILE`)",
        )
        self.status = status
