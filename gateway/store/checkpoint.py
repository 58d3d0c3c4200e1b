"""The WAL checkpoint policy: copy the write-ahead log into the database, in a thread and a
connection of their own, beside the commits.

SQLite's automatic checkpoint is off (``prepare_writer``, gateway/store/commit.py): it would
run inside the commit that fills the WAL past 1000 pages, and every pack of that batch would
wait for it. Instead the committer calls
``Checkpointer.maybe`` after each commit and each slice of the stages (at most once every
``CHECKPOINT_PERIOD``), and once more when it goes idle (``maybe(idle=True)``), so that what
the stages wrote without an fsync of their own is synced in the quiet, not by the next
commit's fsync. Past ``WAL_RESTART_FRAMES`` pages the WAL starts over (``_checkpoints`` says
why), between two commits: that checkpoint takes the writer's turn (gateway/store/thread.py).
"""

import asyncio
import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.logs import event

log = logging.getLogger("reverbere.store")

CHECKPOINT_PERIOD = 1.0  # seconds between WAL checkpoints, at most
WAL_RESTART_FRAMES = 4096  # pages (16 MB): a WAL this long starts over between two commits
CHECKPOINT_WAIT = 0.05  # seconds a RESTART checkpoint waits for readers, at most


class Checkpointer:
    """Checkpoints the WAL of the database at ``path``; takes ``turn`` (the writer's) to
    restart it. ``maybe()`` as often as wanted, ``await stop()`` at the end."""

    def __init__(self, path: Path, turn: asyncio.Lock):
        self.path = path
        self._turn = turn
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="reverbere-checkpoint")
        self._db: sqlite3.Connection | None = None
        self._task: asyncio.Future | None = None
        self._at = 0.0

    def maybe(self, idle: bool = False) -> None:
        """Checkpoint the WAL (``_checkpoints``) at most once every CHECKPOINT_PERIOD, and when
        the committer goes ``idle``: what the stages wrote since the last one (without an fsync,
        gateway/store/stages.py) is then synced in the quiet, not by the next commit's fsync
        (which took 16-19 ms instead of 2-3 after the stages caught up with a burst)."""
        now = time.monotonic()
        running = self._task is not None and not self._task.done()
        if not idle and (running or now - self._at < CHECKPOINT_PERIOD):
            return
        self._at = now
        self._task = asyncio.ensure_future(self._checkpoints(self._task if running else None))

    async def _checkpoints(self, after: asyncio.Future | None = None) -> None:
        """Copy the WAL into the database (PASSIVE: never waits for the writers), in the
        checkpoint thread, beside the commits.

        SQLite writes the WAL from its start again only when a checkpoint has caught up with
        the last commit, which never happens while commits follow each other without a pause:
        under a sustained load the WAL grew by gigabytes. So once it holds more than
        ``WAL_RESTART_FRAMES`` pages, a RESTART checkpoint runs between two commits, which wait
        for it: 1 to 6 ms, since the PASSIVE one just before copied nearly everything (TRUNCATE,
        which also gives the file's blocks back, took 31 to 38 ms). The file keeps its size
        and is written from its start again."""
        if after is not None:  # the one still running
            await asyncio.wait([after])
        loop = asyncio.get_running_loop()
        try:
            frames = await loop.run_in_executor(self._executor, self._checkpoint, "PASSIVE")
            if frames > WAL_RESTART_FRAMES:
                async with self._turn:
                    await loop.run_in_executor(self._executor, self._checkpoint, "RESTART")
        except sqlite3.Error as e:  # the next one tries again
            event(log, logging.WARNING, "WAL checkpoint failed", reason=str(e))

    def _checkpoint(self, mode: str) -> int:
        """Checkpoint the WAL; return how many pages it held."""
        if self._db is None:
            # A short busy timeout: RESTART waits for readers, and the commits wait for it.
            self._db = sqlite3.connect(self.path, timeout=CHECKPOINT_WAIT)
        _busy, frames, _copied = self._db.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return frames

    async def idle(self) -> None:
        """Wait for the checkpoint in hand, if any: a commit that may have to truncate the
        WAL itself (a store at its budget, gateway/store/commit.py) must not run beside it."""
        if self._task is not None:
            await asyncio.wait([self._task])

    async def stop(self) -> None:
        """Wait for the checkpoint in hand, then close the connection and the thread."""
        if self._task is not None:
            await asyncio.wait([self._task])
        self._executor.submit(lambda: self._db and self._db.close())
        self._executor.shutdown(wait=True)


def wal_bytes(path: Path) -> int:
    """Size of the write-ahead log next to the database at ``path``."""
    try:
        return os.stat(str(path) + "-wal").st_size
    except FileNotFoundError:
        return 0
