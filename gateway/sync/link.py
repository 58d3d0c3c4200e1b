"""The uplink as the sync worker has learnt it from its real requests (there are no pings):
failures in a row, when the next attempt may go, and how big a batch the link gets.

After a failure the worker waits ``base * 2**(failures-1)`` seconds, capped, with "equal
jitter", and restarts with a probe of ``probe_rows`` that doubles with each success (slow
start). The failure count only returns to zero after :data:`STABLE_SUCCESSES` successes in a
row, so a flapping link backs off further instead of storming. The state is kept in
``sync_state``: a gateway that restarts in a loop does not storm the platform either.
"""

import random
from collections.abc import Callable

import sqlite_utils

from gateway.sync.outbox import get_state, set_state

STABLE_SUCCESSES = 3  # successes in a row before the failure count is forgotten


def get_number(db: sqlite_utils.Database, name: str, default: float) -> float:
    """A number the sync worker keeps in ``sync_state`` (the link's, and the senders'
    ``attempt``, ``raw_last``, ``raw_limit``, ``bytes_per_row``)."""
    return float(get_state(db, name, str(default)))


def put_numbers(db: sqlite_utils.Database, **values: object) -> None:
    """Set these ``sync_state`` values in one transaction."""
    with db.atomic():
        for name, value in values.items():
            set_state(db, name, str(value))


class Link:
    """Backoff and slow start for the requests the senders make over ``db``'s uplink."""

    def __init__(
        self,
        db: sqlite_utils.Database,
        *,
        batch_rows: int,
        probe_rows: int,
        backoff_base: float,
        backoff_cap: float,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.db = db
        self.batch_rows = batch_rows
        self.probe_rows = probe_rows
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.clock = clock
        self.rng = rng
        self.last_error: str | None = None

    @property
    def failures(self) -> int:
        return int(get_number(self.db, "failures", 0))

    @property
    def next_attempt(self) -> float:
        return get_number(self.db, "next_attempt", 0.0)

    def wait(self) -> float:
        """Seconds until the next attempt may go (0 or less: now)."""
        return self.next_attempt - self.clock()

    def succeeded(self) -> None:
        streak = int(get_number(self.db, "streak", 0)) + 1
        failures = self.failures
        if failures and streak >= STABLE_SUCCESSES:
            failures = 0
        put_numbers(
            self.db, streak=streak, failures=failures, last_success=self.clock(), next_attempt=0
        )

    def failed(self, exc: Exception) -> float:
        """Count a failed request; return how long to wait before the next one."""
        failures = self.failures + 1
        delay = min(self.backoff_cap, self.backoff_base * 2 ** (failures - 1))
        delay = delay / 2 + self.rng.uniform(0, delay / 2)  # "equal jitter"
        self.last_error = f"{type(exc).__name__}: {exc}"
        put_numbers(
            self.db,
            failures=failures,
            streak=0,
            next_attempt=self.clock() + delay,
            last_error=self.last_error,
            last_failure=self.clock(),
        )
        return delay

    def batch_size(self) -> int:
        """Slow start after failures: a probe, doubling with each success in a row."""
        if not self.failures:
            return self.batch_rows
        streak = int(get_number(self.db, "streak", 0))
        return min(self.batch_rows, self.probe_rows * 2**streak)
