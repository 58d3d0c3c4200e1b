"""What the whole fleet (or a group of it) does at once, and what the rules already explain.

The statistical detector of one channel knows only that channel's past. Two things it cannot
know, and that turned into false events once it had learnt (issue 14):

* a change that every lamp of a schedule makes at the same minute (leaving the night's dimming,
  a holiday's switch-off) is the schedule, not a fault of seven lamps;
* a change a rule explains (a lamp lit by day, dark at night, a building used out of hours) is
  the rule's to tell, with its sentence: "lamp-001 drew 70 W at 12:00, lamps are off between
  sunrise ... and sunset ...", not "lamp-001 p read 70 W at 12:00, usually 0 W".

So the engine holds back the statistical detector's alarm for ``DEFER`` seconds of the fleet's
time (the time of the newest reading: every node's readings of that minute have come by then,
packs span at most a few minutes) and opens it only if, around its time,

* no energy rule's condition held on the node (on any channel: a lamp lit by day also makes
  its energy counter run fast), and
* fewer than ``max(MIN_NODES, SHARE x the group)`` nodes of its group (the street lights; the
  buildings of one schedule; every other node) saw their same channel move at once.

The check is cheap: per (group, channel) the recent times at which a node's statistical score
was high, per node the spans of time during which a rule's condition held; both forget what is
older than ``MEMORY`` seconds. Nothing is stored: after a restart a held-back alarm is decided
again from what comes next (the channel's state keeps the alarm itself).
"""

import math
from collections import deque

DEFER = 1200.0  # seconds of fleet time an alarm of the statistical detector is held back
WINDOW = 600.0  # moves of other nodes within this many seconds count as "at once"
MIN_NODES = 3  # nodes (this one included) that make a group-wide move
SHARE = 0.25  # ... and at least this share of the group's nodes
MEMORY = 7200.0  # seconds of moves and explanations kept
JOIN = 900.0  # a rule's condition holding again within this many seconds extends its span


class FleetWatch:
    """The fleet's moves, per group and channel, and the spans a rule explains, per node."""

    __slots__ = ("_explained", "_members", "_moves")

    def __init__(self) -> None:
        self._members: dict[tuple[str, str], set[str]] = {}
        self._moves: dict[tuple[str, str], deque[tuple[float, str]]] = {}
        self._explained: dict[str, list[list[float]]] = {}

    def member(self, group: str, channel: str, node: str) -> None:
        """``node``'s ``channel`` belongs to ``group`` (its size is the share's base)."""
        self._members.setdefault((group, channel), set()).add(node)

    def moved(self, group: str, channel: str, node: str, t: float) -> None:
        """The statistical detector found ``node``'s ``channel`` unusual at ``t``."""
        q = self._moves.setdefault((group, channel), deque())
        q.append((t, node))
        while q and q[0][0] < t - MEMORY:
            q.popleft()

    def explain(self, node: str, t: float) -> None:
        """A rule's condition (lit by day, dark at night, out of hours) held on ``node`` at
        ``t``, confirmed or not yet."""
        spans = self._explained.setdefault(node, [])
        if spans and spans[-1][0] - JOIN <= t <= spans[-1][1] + JOIN:
            spans[-1][0] = min(spans[-1][0], t)
            spans[-1][1] = max(spans[-1][1], t)
        else:
            spans.append([t, t])
        while spans and spans[0][1] < t - MEMORY:
            spans.pop(0)

    def explained(self, node: str, start: float, end: float) -> bool:
        """Whether a rule's condition held on ``node`` at some time between ``start`` and
        ``end``."""
        return any(s <= end and e >= start for s, e in self._explained.get(node, ()))

    def together(self, group: str, channel: str, node: str, t: float) -> bool:
        """Whether enough nodes of ``group`` moved on ``channel`` within ``WINDOW`` of ``t``
        for it to be the group's schedule rather than ``node``'s fault."""
        size = len(self._members.get((group, channel), ()))
        needed = max(MIN_NODES, math.ceil(SHARE * size))
        if size < needed:
            return False
        nodes = {n for when, n in self._moves.get((group, channel), ()) if abs(when - t) <= WINDOW}
        nodes.add(node)
        return len(nodes) >= needed
