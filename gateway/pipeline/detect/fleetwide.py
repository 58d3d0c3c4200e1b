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
  buildings of one schedule; every other node) saw their same channel move at once, and
* the node's power did not step, within ``WINDOW`` of the alarm (of its power, or of the energy
  counter that counts it), the way that many nodes of its group stepped at once (down or up
  by about the same ratio, within ``SAME_STEP``).

The second and third ask the same question two ways. A move is an alarm of the statistical
detector; but a lamp whose baseline had learnt its midnight dimming says nothing, so when one lamp
of twenty has not learnt it (a new or repaired lamp, a slot a fault taught otherwise) it alarms
alone, though all twenty dimmed at the same minute ("lamp-010 p read 37.7 W at 00:00, usually
63.0 W (± 0.6 W) then", the benchmark's last false events). A step is what the readings did,
learnt or not: a power reading ``STEP`` or more away from the node's previous one (and by more
than a lit lamp's least power). The node must have stepped itself, with the group: a lamp
that stays at full power when the others dim, or drops to a tenth when they drop to six
tenths, is still its own fault.

The check is cheap: per (group, channel) the recent times at which a node's statistical score
was high and at which a node's power stepped (a few a day per lamp), per node the spans of
time during which a rule's condition held; all forget what is older than ``MEMORY`` seconds.
Nothing is stored: after a restart a held-back alarm is decided again from what comes next
(the channel's state keeps the alarm itself).
"""

import math
from collections import deque

DEFER = 1200.0  # seconds of fleet time an alarm of the statistical detector is held back
WINDOW = 600.0  # moves of other nodes within this many seconds count as "at once"
MIN_NODES = 3  # nodes (this one included) that make a group-wide move
SHARE = 0.25  # ... and at least this share of the group's nodes
MEMORY = 7200.0  # seconds of moves and explanations kept
JOIN = 900.0  # a rule's condition holding again within this many seconds extends its span
STEP = 0.2  # a power reading this share of the larger of it and the one before away is a step
SAME_STEP = 0.25  # two steps are the same when their ratios differ by less than this (natural log)
SWITCH = 10.0  # the log ratio that stands for a switch from or to nothing (0 W)


def step_ratio(before: float, after: float) -> float:
    """The natural log of ``after / before``: -0.51 for a lamp dimmed to 60 %, the same at
    70 W or 120 W; ``±SWITCH`` for a switch on or off."""
    if before > 0 and after > 0:
        return math.log(after / before)
    return SWITCH if after > before else -SWITCH


class FleetWatch:
    """The fleet's moves, per group and channel, and the spans a rule explains, per node."""

    __slots__ = ("_explained", "_members", "_moves", "_steps")

    def __init__(self) -> None:
        self._members: dict[tuple[str, str], set[str]] = {}
        self._moves: dict[tuple[str, str], deque[tuple[float, str]]] = {}
        self._steps: dict[tuple[str, str], deque[tuple[float, str, float]]] = {}
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

    def stepped(self, group: str, channel: str, node: str, t: float, ratio: float) -> None:
        """``node``'s ``channel`` stepped at ``t`` by ``ratio`` (:func:`step_ratio`), whatever
        its statistical detector made of it."""
        q = self._steps.setdefault((group, channel), deque())
        q.append((t, node, ratio))
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

    def together(
        self,
        group: str,
        channel: str,
        node: str,
        t: float,
        power: str | None = None,
        before: float = 0.0,
    ) -> bool:
        """Whether enough nodes of ``group`` moved on ``channel`` within ``WINDOW`` of ``t``
        for it to be the group's schedule rather than ``node``'s fault: alarmed at once, or
        made the step that ``node``'s ``power`` channel made then (``power``: the channel
        whose steps explain this one's alarm, itself or the power an energy counter counts;
        None: steps explain nothing). ``before``: how long before its reading the alarm's
        value began (a counter's rate is that of its last interval), to look for the step."""
        size = len(self._members.get((group, channel), ()))
        needed = max(MIN_NODES, math.ceil(SHARE * size))
        if size < needed:
            return False
        nodes = {n for when, n in self._moves.get((group, channel), ()) if abs(when - t) <= WINDOW}
        nodes.add(node)
        if len(nodes) >= needed or power is None:
            return len(nodes) >= needed
        steps = self._steps.get((group, power), ())
        for when, n, ratio in steps:
            if n != node or not t - before - WINDOW <= when <= t + WINDOW:
                continue
            # The node's own step near its alarm: did enough of the group make the same one?
            same = {
                m for at, m, r in steps if abs(at - when) <= WINDOW and abs(r - ratio) < SAME_STEP
            }
            if len(same) >= needed:
                return True
        return False
