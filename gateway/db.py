"""The gateway's one SQLite database: opening it safely and bringing its schema up to date.

Every module that owns tables declares its own named migration set
(``migrations = Migrations("reverbere.<module>")`` from ``sqlite_utils.migrations``);
``MIGRATION_SETS`` lists them in the order they apply, so a new stage adds one line here.
"""

import importlib
from pathlib import Path

import sqlite_utils

# "module:attribute" of each migration set, applied in this order.
MIGRATION_SETS: tuple[str, ...] = (
    "gateway.registry:migrations",
    "gateway.store:migrations",
    "gateway.detect:migrations",
    "gateway.summarise:migrations",
    "gateway.sync.outbox:migrations",
)


def open_db(path: str | Path) -> sqlite_utils.Database:
    """Open (creating if needed) the database at ``path``, in WAL mode, schema up to date.

    ``synchronous=FULL`` makes every commit durable across power loss, so a reading the
    gateway acknowledged after its commit survives a power cut.
    """
    db = sqlite_utils.Database(path)
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
