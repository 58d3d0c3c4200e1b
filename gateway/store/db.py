"""The gateway's one SQLite database: opening it safely and bringing its schema up to date.

Every module that owns tables declares its own named migration set
(``migrations = Migrations("reverbere.<module>")`` from ``sqlite_utils.migrations``);
``MIGRATION_SETS`` lists them in the order they apply, so a new stage adds one line here.
"""

import contextlib
import importlib
import logging
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils

log = logging.getLogger("reverbere.store")

# "module:attribute" of each migration set, applied in this order.
MIGRATION_SETS: tuple[str, ...] = (
    "gateway.ingest.registry:migrations",
    "gateway.store.readings:migrations",
    "gateway.pipeline.detect:migrations",
    "gateway.pipeline.summarise:migrations",
    "gateway.sync.outbox:migrations",
    "gateway.sync.raw:migrations",
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
    """Open (creating if needed) the database at ``path``, in WAL mode, schema up to date.

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
        migrate(db)
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
    if "_sqlite_migrations" not in tables or "readings" not in tables:
        raise NotADatabase(path, "an SQLite file without the gateway's tables")
    return open_db(path)


def migrate(db: sqlite_utils.Database) -> None:
    """Apply every pending migration of every set in ``MIGRATION_SETS``."""
    for spec in MIGRATION_SETS:
        module, _, attr = spec.partition(":")
        getattr(importlib.import_module(module), attr or "migrations").apply(db)
