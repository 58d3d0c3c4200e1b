"""Login attempts slowed and capped per address, in memory.

After each failed login from an address, the next attempt from it is not even checked until
a delay has passed (1 s, then doubling, at most ``MAX_DELAY``); after ``MAX_FAILURES`` within
``WINDOW`` the address is locked out for ``LOCKOUT``. A guesser thus gets a handful of tries
a minute and ``MAX_FAILURES`` in a quarter of an hour, while a person who mistypes waits a
second. Memory is bounded: entries older than the window go, and at most ``MAX_ADDRESSES``
are kept (the oldest go first: a flood of addresses cannot grow the table).
"""

from collections import OrderedDict
from collections.abc import Callable

MAX_DELAY = 60.0  # seconds
MAX_FAILURES = 10
WINDOW = 15 * 60.0
LOCKOUT = 15 * 60.0
MAX_ADDRESSES = 10_000


class LoginThrottle:
    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self._failures: OrderedDict[str, tuple[int, float, float]] = OrderedDict()
        # address -> (failures in the window, first failure's time, not before)

    def wait(self, address: str) -> float:
        """Seconds ``address`` must still wait before an attempt is checked (0: go ahead)."""
        entry = self._failures.get(address)
        if entry is None:
            return 0.0
        _, first, not_before = entry
        now = self.clock()
        if now - first > WINDOW and now >= not_before:
            del self._failures[address]
            return 0.0
        return max(0.0, not_before - now)

    def failed(self, address: str) -> None:
        now = self.clock()
        count, first, _ = self._failures.pop(address, (0, now, now))
        if now - first > WINDOW:
            count, first = 0, now
        count += 1
        delay = LOCKOUT if count >= MAX_FAILURES else min(2.0 ** (count - 1), MAX_DELAY)
        self._failures[address] = (count, first, now + delay)
        while len(self._failures) > MAX_ADDRESSES:
            self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
