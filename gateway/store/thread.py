"""The store's writer thread: one thread, one connection, for every write of the gateway's
process (the stages, retention, ``Committer.run``); the commits themselves run in the writer
process (gateway/store/commit.py).

The two take turns at the database (``turn``), so that neither waits on the other's lock:
a commit holds the turn while the writer process runs it, ``run`` holds it around its call,
and so does the checkpoint that restarts the WAL (gateway/store/checkpoint.py). The stages
call the thread without the turn (``call``): the committer's loop runs them between commits,
never beside one (gateway/store/stages.py).
"""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sqlite_utils

from gateway.store.commit import prepare_writer
from gateway.store.db import open_db


class WriterThread:
    """``await open()``, then ``await run(func)`` or ``await call(func)``: ``func(db, *args)``
    in the writer thread with its connection; ``await close()`` at the end."""

    def __init__(self, path: Path, disk_budget: int):
        self.path = path
        self.disk_budget = disk_budget
        self.db: sqlite_utils.Database | None = None  # the thread's; use only through it
        # The writer process and the writer thread (stages, ``run``) take turns at the database.
        self.turn = asyncio.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="reverbere-writer")

    async def open(self) -> None:
        """Open the connection (migrating the schema), with the writer's disk budget."""
        self.db = await asyncio.get_running_loop().run_in_executor(self._executor, self._open)

    def _open(self) -> sqlite_utils.Database:
        db = open_db(self.path)
        prepare_writer(db.conn, self.disk_budget)
        # sqlite-utils finds out whether SQLite has upserts by creating a table, the first
        # time a stage upserts, inside the stage's transaction. At the disk budget that
        # CREATE fails with SQLITE_FULL, which rolls the whole transaction back, and
        # sqlite-utils takes the error for "no upserts" and goes on: the summaries were lost
        # and their cursor moved on (hours never summarised); its fallback (INSERT OR IGNORE,
        # then UPDATE) lost them too. The answer is SQLite's version (upserts since 3.24).
        db._supports_on_conflict = db.sqlite_version >= (3, 24, 0)
        return db

    async def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """``func(db, *args)`` in the thread, without taking the turn (the caller has it, or
        runs only between commits)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: func(self.db, *args))

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        """``func(db, *args)`` in the thread, between commits (it takes the turn)."""
        async with self.turn:
            return await self.call(func, *args)

    async def close(self) -> None:
        """Close the connection, with a last checkpoint (the WAL is emptied); end the thread."""
        if self.db is not None:
            await self.run(_close)
        self._executor.shutdown(wait=True)


def _close(db: sqlite_utils.Database) -> None:
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
