"""Anomaly events: what an operator sees, deduplicated, closed when the condition clears.

Every detector says, for each reading, a :class:`Finding` per kind it watches: a score in [0, 1]
(already damped by the detector: a rule scores once its condition is confirmed, the statistical
detector scores the *new* part of its surprise) and whether the condition still holds (active).
A :class:`Tracker` per channel and kind turns findings into events:

* an event opens at the first reading scoring at or above the threshold;
* while it is open, further findings of the same kind only raise its score (in steps of 0.1 at
  least, to keep changes few); the reason stays the words of the reading that opened it (one
  event per node, channel and kind: deduplication);
* it closes when the condition has been clear for ``CLOSE_AFTER`` readings in a row; its end is
  the time of the first of those clear readings;
* it re-opens (the same event, same id) instead of starting a new one if the condition comes back
  within ``REARM`` readings of closing: hysteresis against flapping. Not for ``FRESH_KINDS``:
  their condition is a fact, not a score hovering at the threshold (a stuck meter reads the same
  value again, a meter drops to zero or to a placeholder; once it has read normal values for
  ``CLOSE_AFTER`` readings it was working), so a recurrence is a new fault with its own start,
  as a meter stuck again each night or a supply cut again the next day.

Waste: a detector that knows what the channel should draw says so in ``Finding.expected`` (W).
The event then carries ``waste_kwh``, the energy drawn above that over its span, and ``waste_eur``
its cost (``cost``: :meth:`gateway.pipeline.waste.Tariff.cost`): each reading of an active finding
adds its excess power ``max(0, power - expected)`` times the time since the channel's previous
reading (a counter's rate is the mean over that very interval). An open event's waste grows with
every reading and is stored at each quarter hour of reading time (``WASTE_EVERY``: a new
version, so the platform and ``reverbere waste`` see it as it goes, without a write per
reading). Kinds whose findings carry no ``expected`` (a stuck sensor, a silent node) have
``waste_kwh`` None.
"""

from collections.abc import Callable
from dataclasses import dataclass

CLOSE_AFTER = 3  # clear readings in a row that close an event
REARM = 30  # readings after closing during which a recurrence re-opens the same event
FRESH_KINDS = frozenset({"stuck_meter", "dropout"})  # kinds whose every recurrence is new
WASTE_EVERY = 900.0  # an open event's growing waste is stored (a new version) once a quarter hour


@dataclass
class Event:
    """One anomaly: ``end`` is None while it is ongoing. ``version`` grows with every change
    (the sync stage sends rows whose ``version`` is above their ``synced_version``)."""

    node: str
    channel: str
    kind: str
    start: float
    end: float | None
    score: float
    reason: str
    id: int | None = None
    version: int = 1
    waste_kwh: float | None = None  # energy above the expected one, for kinds of waste
    waste_eur: float | None = None  # its cost, with a tariff in [site]

    def as_row(self) -> dict:
        row = {
            "node": self.node,
            "channel": self.channel,
            "kind": self.kind,
            "start": self.start,
            "end": self.end,
            "score": round(self.score, 4),
            "reason": self.reason,
            "version": self.version,
            "waste_kwh": None if self.waste_kwh is None else round(self.waste_kwh, 4),
            "waste_eur": None if self.waste_eur is None else round(self.waste_eur, 4),
        }
        if self.id is not None:
            row["id"] = self.id
        return row


class Finding:
    """One detector's verdict on one reading. ``reason`` is a callable so that the words are
    only composed when an event needs them. ``expected``: the power (W) the channel should draw
    now, for a kind of waste (lit by day: the lamp's standby; out of hours: the building's closed
    load); ``power``: the power it draws, when the reading's value is not it (a rate a rule
    computed itself); the channel detector gives the reading's power otherwise."""

    __slots__ = ("active", "expected", "kind", "power", "reason", "score")

    def __init__(
        self,
        kind: str,
        score: float,
        active: bool,
        reason,
        expected: float | None = None,
        power: float | None = None,
    ):
        self.kind = kind
        self.score = score
        self.active = active
        self.reason = reason
        self.expected = expected
        self.power = power


# The cost of ``kwh`` drawn evenly between two Unix times, in euros.
Cost = Callable[[float, float, float], float]


class Tracker:
    """The event life cycle of one kind on one channel. State: the open event (if any), the run
    of clear readings, and how long ago the last event closed; a few dozen bytes."""

    __slots__ = ("_first_clear", "clear", "event", "since_close")

    def __init__(self) -> None:
        self.event: Event | None = None  # the open event, or the last closed one (for re-arming)
        self.clear = 0
        self.since_close = REARM + 1
        self._first_clear = 0.0

    @property
    def open(self) -> bool:
        return self.event is not None and self.event.end is None

    def step(
        self,
        node: str,
        channel: str,
        time: float,
        finding: Finding | None,
        threshold: float,
        power: float | None = None,
        since: float | None = None,
        cost: Cost | None = None,
    ) -> Event | None:
        """Account for one reading; return the event if it opened, changed or closed (or its
        waste grew). ``power``: the channel's power at this reading (W), ``since``: the time of
        the channel's previous reading, ``cost``: the tariff; they count the waste."""
        ev = self.event
        if ev is not None and ev.end is None:
            if finding is not None and finding.active:
                self.clear = 0
                grew = self._waste(ev, time, finding, power, since, cost)
                if finding.score >= ev.score + 0.1 or (finding.score == 1.0 > ev.score):
                    ev.score = finding.score  # the reason stays the one that opened it
                    ev.version += 1
                    return ev
                if grew and since is not None and time // WASTE_EVERY != since // WASTE_EVERY:
                    ev.version += 1  # the waste so far, at most every WASTE_EVERY of readings
                    return ev
                return None
            self.clear += 1
            if self.clear == 1:
                self._first_clear = time
            if self.clear >= CLOSE_AFTER:
                ev.end = self._first_clear
                ev.version += 1
                self.since_close = 0
                return ev
            return None
        self.since_close += 1
        if finding is None or finding.score < threshold:
            return None
        self.clear = 0
        if ev is not None and self.since_close <= REARM and finding.kind not in FRESH_KINDS:
            ev.end = None  # the same condition again, soon: re-open rather than flap
            ev.score = max(ev.score, finding.score)
            self._waste(ev, time, finding, power, since, cost)
            ev.version += 1
            return ev
        ev = Event(node, channel, finding.kind, time, None, finding.score, finding.reason())
        if finding.expected is not None:
            ev.waste_kwh = 0.0  # a kind of waste; its span starts now
            ev.waste_eur = 0.0 if cost is not None else None
        self.event = ev
        return ev

    @staticmethod
    def _waste(
        ev: Event,
        time: float,
        finding: Finding,
        power: float | None,
        since: float | None,
        cost: Cost | None,
    ) -> bool:
        """Add the reading's excess over ``finding.expected`` since the previous reading to
        the event's waste; True if it grew."""
        if finding.expected is None or since is None or time <= since:
            return False
        drawn = finding.power if finding.power is not None else power
        if drawn is None:
            return False
        kwh = max(0.0, drawn - finding.expected) * (time - since) / 3.6e6
        ev.waste_kwh = (ev.waste_kwh or 0.0) + kwh
        if cost is not None:
            ev.waste_eur = (ev.waste_eur or 0.0) + cost(since, time, kwh)
        return kwh > 0.0

    # -- persistence: the event itself lives in the anomalies table; keep its id and counters.
    def dump(self) -> list:
        ev = self.event
        if ev is None:
            return [None, self.clear, self.since_close, self._first_clear]
        return [
            [
                ev.id,
                ev.kind,
                ev.start,
                ev.end,
                ev.score,
                ev.reason,
                ev.version,
                ev.waste_kwh,
                ev.waste_eur,
            ],
            self.clear,
            self.since_close,
            self._first_clear,
        ]

    @classmethod
    def load(cls, node: str, channel: str, data: list) -> "Tracker":
        self = cls()
        ev, self.clear, self.since_close, self._first_clear = data
        if ev is not None:
            # States saved before the waste was counted have 7 fields.
            eid, kind, start, end, score, reason, version, *waste = ev
            self.event = Event(node, channel, kind, start, end, score, reason, eid, version, *waste)
        return self
