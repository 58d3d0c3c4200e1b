"""The daily byte budget of a metered link.

Every request the sync sends is measured before it leaves (request line, headers and body as
they go on the wire, compressed when the body is) and refused when it would take the day's
total over the budget, so the budget is never exceeded. Bytes received are recorded too and
shown, but the budget counts what is sent, as the issue of a metered uplink defines it.
Days are UTC dates; the figures live in the ``sync_budget`` table, so they survive restarts.
"""

import time
from dataclasses import dataclass

import sqlite_utils


class BudgetExhausted(Exception):
    """Sending this would exceed today's byte budget."""

    def __init__(self, needed: int, left: int) -> None:
        super().__init__(f"needs {needed} bytes, {left} left in today's budget")
        self.needed = needed
        self.left = left


@dataclass(frozen=True)
class BudgetUse:
    day: str
    limit: int | None  # None: no budget
    sent: int
    received: int
    requests: int

    @property
    def left(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.sent)


def today(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))


class Budget:
    """``limit`` bytes a day (None = unlimited), counted in the database ``db``."""

    def __init__(self, db: sqlite_utils.Database, limit: int | None, clock=time.time) -> None:
        self.db = db
        self.limit = limit
        self.clock = clock

    def use(self) -> BudgetUse:
        day = today(self.clock())
        row = self.db.execute(
            "SELECT sent, received, requests FROM sync_budget WHERE day = ?", [day]
        ).fetchone()
        sent, received, requests = row or (0, 0, 0)
        return BudgetUse(day, self.limit, sent, received, requests)

    def spend(self, nbytes: int) -> None:
        """Count ``nbytes`` about to be sent, or raise :class:`BudgetExhausted` if they do not
        fit. Counted (and committed) before the bytes leave, so a crash mid-request cannot
        hide them; :meth:`refund` gives them back when the connection never opened."""
        day = today(self.clock())
        with self.db.conn:
            row = self.db.execute("SELECT sent FROM sync_budget WHERE day = ?", [day]).fetchone()
            used = row[0] if row else 0
            if self.limit is not None and used + nbytes > self.limit:
                raise BudgetExhausted(nbytes, max(0, self.limit - used))
            self.db.execute(
                "INSERT INTO sync_budget (day, sent, requests) VALUES (?, ?, 1) "
                "ON CONFLICT (day) DO UPDATE SET sent = sent + excluded.sent, "
                "requests = requests + 1",
                [day, nbytes],
            )

    def refund(self, nbytes: int) -> None:
        """The connection failed before the request went out: those bytes were not sent."""
        self._add("sent = max(0, sent - ?), requests = requests - 1", nbytes)

    def add_received(self, nbytes: int) -> None:
        self._add("received = received + ?", nbytes)

    def _add(self, assignment: str, n: int) -> None:
        with self.db.conn:
            self.db.execute(
                f"UPDATE sync_budget SET {assignment} WHERE day = ?", [n, today(self.clock())]
            )
