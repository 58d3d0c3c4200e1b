"""The sync worker: sends what is owed whenever the platform is reachable.

One loop, in its own thread with its own database connection (the CoAP side never waits on
the uplink). Each :meth:`SyncWorker.step` does one unit of work: the outbox sender's
(gateway/sync/outbox_sender.py: reconcile, else the next batch of summaries and events) and,
with ``raw`` on and the outbox empty, the raw sender's (gateway/sync/raw_sender.py): raw
readings come last under a tight budget too. Both send through one helper
(gateway/sync/sending.py) to a :class:`~gateway.sync.target.Target`.

Reachability is learnt from these real requests only (no pings): the :class:`Link`
(gateway/sync/link.py) counts failures, says when the next attempt may go and how big a batch
the link gets (a backoff with jitter, then slow start), and keeps that in the database, so a
restarting gateway does not storm either.
"""

import logging
import random
import threading
import time
from collections.abc import Callable

import sqlite_utils

from gateway.sync.budget import Budget, BudgetExhausted
from gateway.sync.link import Link
from gateway.sync.outbox_sender import OutboxSender
from gateway.sync.raw_sender import RawSender
from gateway.sync.sending import SyncStats
from gateway.sync.target import AuthFailed, SyncError, Target

log = logging.getLogger("reverbere.sync")


class SyncWorker:
    """Drain the outbox of ``db`` (and the raw readings owed, with ``raw``) to ``target``
    within ``budget``."""

    def __init__(
        self,
        db: sqlite_utils.Database,
        target: Target,
        budget: Budget,
        *,
        batch_rows: int = 2000,
        probe_rows: int = 20,
        backoff_base: float = 2.0,
        backoff_cap: float = 600.0,
        recent_hours: int = 24,
        raw: bool = False,
        raw_interval: float = 0.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.target = target
        self.budget = budget
        self.clock = clock
        self.stats = SyncStats()
        self.link = Link(
            db,
            batch_rows=batch_rows,
            probe_rows=probe_rows,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            clock=clock,
            rng=rng or random.Random(),
        )
        self.outbox_sender = OutboxSender(
            db, target, budget, self.link, self.stats, recent_hours=recent_hours, clock=clock
        )
        self.raw_sender: RawSender | None = None  # raw readings owed, last of all
        if raw:
            self.raw_sender = RawSender(
                db, target, self.link, self.stats, interval=raw_interval, clock=clock
            )
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_idle: Callable[[], None] | None = None  # called each time the outbox is drained

    @property
    def last_error(self) -> str | None:
        return self.link.last_error

    def step(self) -> str:
        """Do one unit of work. Returns ``idle``, ``sent``, ``reconciled``, ``budget``
        (today's budget is spent), ``failed`` (backoff scheduled) or ``auth`` (refused)."""
        self.stats.steps += 1
        try:
            outcome = self.outbox_sender.step()
            if outcome == "idle" and self.raw_sender is not None:
                outcome = self.raw_sender.step()
        except BudgetExhausted:
            outcome = "budget"
        except AuthFailed as exc:
            self._failed(exc)
            outcome = "auth"
        except SyncError as exc:  # Unreachable, Uncertain, Rejected...
            self._failed(exc)
            outcome = "failed"
        else:
            if outcome != "idle":
                self.link.succeeded()
        self.stats.outcomes.append(outcome)
        return outcome

    def _failed(self, exc: Exception) -> None:
        self.stats.requests_failed += 1
        self.link.failed(exc)

    # -- driving it ---------------------------------------------------------------------------

    def sync_until_idle(self, max_steps: int | None = None, wait: bool = True) -> str:
        """Step until nothing is left (``idle``), the budget is spent (``budget``), auth is
        refused (``auth``), ``max_steps`` ran out or :meth:`stop` was called (``stopped``:
        a backlog of a month is not sent before a stop); waits out backoffs when ``wait``."""
        n = 0
        while max_steps is None or n < max_steps:
            if self._stop.is_set():  # between two requests: a stop waits for one at most
                return "stopped"
            n += 1
            delay = self.link.wait()
            if delay > 0:
                if not wait:
                    return "failed"
                if self._stop.wait(delay):
                    return "stopped"
            outcome = self.step()
            if outcome in ("idle", "budget", "auth"):
                return outcome
        return "steps"

    def notify(self) -> None:
        """New rows are in the outbox: try now (unless backing off)."""
        self._wake.set()

    def run(self, idle_wait: float = 60.0) -> None:
        """Loop until :meth:`stop`: sync, then sleep until notified, due or a new day."""
        while not self._stop.is_set():
            self._wake.clear()
            try:
                outcome = self.sync_until_idle()
            except Exception as exc:  # a bug must not end the uplink for good: log, back off
                log.exception("sync step failed")
                self._failed(exc)
                outcome = "failed"
            if outcome == "stopped":
                return
            if outcome == "idle" and self.on_idle is not None:
                self.on_idle()
            wait = idle_wait
            if outcome == "budget":
                wait = 86400 - self.clock() % 86400 + 1  # next UTC day
            if outcome in ("auth", "failed"):
                wait = max(idle_wait, self.link.wait())
            self._wake.wait(wait)

    def start(self) -> "SyncWorker":
        self._thread = threading.Thread(target=self.run, name="reverbere-sync", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
