"""The gateway's one SQLite database: opening it safely and bringing its schema up to date.

Every module that owns tables declares its own named migration set
(``migrations = Migrations("reverbere.<module>")`` from ``sqlite_utils.migrations``);
``MIGRATION_SETS`` lists them in the order they apply, so a new stage adds one line here.
"""

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils

# "module:attribute" of each migration set, applied in this order.
MIGRATION_SETS: tuple[str, ...] = (
    "gateway.ingest.registry:migrations",
    "gateway.store.committer:migrations",
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
    gateway acknowledged after its commit survives a power cut.
    """
    db = Database(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    migrate(db)
    return db


def migrate(db: sqlite_utils.Database) -> None:
    """Apply every pending migration of every set in ``MIGRATION_SETS``."""
    for spec in MIGRATION_SETS:
        module, _, attr = spec.partition(":")
        getattr(importlib.import_module(module), attr or "migrations").apply(db)
