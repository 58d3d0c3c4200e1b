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
  within ``REARM`` readings of closing: hysteresis against flapping.
"""

from dataclasses import dataclass

CLOSE_AFTER = 3  # clear readings in a row that close an event
REARM = 30  # readings after closing during which a recurrence re-opens the same event


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
        }
        if self.id is not None:
            row["id"] = self.id
        return row


class Finding:
    """One detector's verdict on one reading. ``reason`` is a callable so that the words are
    only composed when an event needs them."""

    __slots__ = ("active", "kind", "reason", "score")

    def __init__(self, kind: str, score: float, active: bool, reason):
        self.kind = kind
        self.score = score
        self.active = active
        self.reason = reason


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
        self, node: str, channel: str, time: float, finding: Finding | None, threshold: float
    ) -> Event | None:
        """Account for one reading; return the event if it opened, changed or closed."""
        ev = self.event
        if ev is not None and ev.end is None:
            if finding is not None and finding.active:
                self.clear = 0
                if finding.score >= ev.score + 0.1 or (finding.score == 1.0 > ev.score):
                    ev.score = finding.score  # the reason stays the one that opened it
                    ev.version += 1
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
        if ev is not None and self.since_close <= REARM:
            ev.end = None  # the same condition again, soon: re-open rather than flap
            ev.score = max(ev.score, finding.score)
            ev.version += 1
            return ev
        self.event = Event(node, channel, finding.kind, time, None, finding.score, finding.reason())
        return self.event

    # -- persistence: the event itself lives in the anomalies table; keep its id and counters.
    def dump(self) -> list:
        ev = self.event
        if ev is None:
            return [None, self.clear, self.since_close, self._first_clear]
        return [
            [ev.id, ev.kind, ev.start, ev.end, ev.score, ev.reason, ev.version],
            self.clear,
            self.since_close,
            self._first_clear,
        ]

    @classmethod
    def load(cls, node: str, channel: str, data: list) -> "Tracker":
        self = cls()
        ev, self.clear, self.since_close, self._first_clear = data
        if ev is not None:
            eid, kind, start, end, score, reason, version = ev
            self.event = Event(node, channel, kind, start, end, score, reason, eid, version)
        return self
