"""The detect stage: every detector of every channel, their state in SQLite, and the events.

``Detector(config)(db, readings)`` runs on each commit's new readings (see
``gateway/service.py``). Per (node, channel) a :class:`ChannelDetector` holds the statistical
detector, the rules that apply to that channel and one event tracker per kind; its state is packed
into at most ``MAX_STATE`` bytes and saved in ``detect_state`` in the same transaction as the
events it produced (and otherwise every ``SAVE_EVERY`` seconds of readings, which bounds the
writes), so a restart keeps the learnt baseline (less at most 10 minutes) and the open events.

Readings must reach a channel's detectors in time order: a reading not newer than the last one
seen on its channel (a reordered or replayed pack) is left to the summaries and skipped here.
"""

import contextlib
import json
import math
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import sqlite_utils
from sqlite_utils.migrations import Migrations

from gateway.pipeline.detect.baseline import RECORD_SPREADS, StatDetector
from gateway.pipeline.detect.buildings import building_meter
from gateway.pipeline.detect.config import DetectConfig
from gateway.pipeline.detect.events import CLOSE_AFTER, REARM, Cost, Event, Finding, Tracker
from gateway.pipeline.detect.fleetwide import DEFER, STEP, WINDOW, FleetWatch, step_ratio
from gateway.pipeline.detect.lighting import LightingRule
from gateway.pipeline.detect.rules import (
    Clock,
    CounterRule,
    LampRule,
    ScheduleRule,
    StuckRule,
    fmt_value,
    lamp_switching,
    schedule_switching,
)
from gateway.store.records import Reading
from protocols.const import CHANNELS, SUM_CHANNELS

MAX_STATE = 4096  # bytes of packed state per channel, at most
STUCK_CHANNELS = ("p", "t", "lux", "x")  # channels that always vary a little when healthy
SILENT_CHANNEL = "*"  # the channel of a "silent" event: the whole node
INTERVAL_ALPHA = 0.1  # weight of one gap in a channel's usual reading interval
SAVE_EVERY = 600.0  # seconds (of reading time) between saves of a quiet channel's state
SILENT_CHECK_EVERY = 60.0  # seconds (of reading time) between looks for silent nodes
# Kinds whose open event pauses the statistical baseline's learning on the channel: the readings
# are then known to be wrong (a lamp lit by day is not a new normal). Not "stuck": a flat
# stretch can be what a channel does, and not "unusual": the baseline must follow a real change.
PAUSE_KINDS = frozenset(
    {"lit_by_day", "dark_at_night", "drift", "off_schedule", "lit_in_switch_off", "not_dimmed"}
)
# Kinds whose condition, when it holds on a node (confirmed or not yet), explains what the
# statistical detector sees there: the rule's event and sentence win (issue 14). Not "drift": a
# spike on a drifting lamp is a fault of its own. A building meter's kinds (buildings.py) too.
EXPLAIN_KINDS = frozenset(
    {
        *("lit_by_day", "dark_at_night", "off_schedule", "lit_in_switch_off", "not_dimmed"),
        *("dropout", "stuck_meter", "spike", "dip", "wrong_time"),
    }
)

migrations = Migrations("reverbere.detect")


@migrations()
def m001_detect_tables(db: sqlite_utils.Database) -> None:
    db["detect_state"].create(
        {"node": str, "channel": str, "last_time": float, "interval": float, "state": bytes},
        pk=("node", "channel"),
    )
    db["anomalies"].create(
        {
            "id": int,
            "node": str,
            "channel": str,
            "kind": str,
            "start": float,
            "end": float,
            "score": float,
            "reason": str,
            "version": int,
            "synced_version": int,
        },
        pk="id",
        not_null={"node", "channel", "kind", "start", "score", "reason", "version"},
        defaults={"version": 1, "synced_version": 0},
    )
    db["anomalies"].create_index(["start"])
    db["anomalies"].create_index(["node", "channel", "kind", "end"])


@migrations()
def m002_anomaly_waste(db: sqlite_utils.Database) -> None:
    """The energy an event of a kind of waste drew above the expected one, and its cost."""
    db["anomalies"].add_column("waste_kwh", float)
    db["anomalies"].add_column("waste_eur", float)


# Whether the statistical detector (``unusual``) also runs on a building's meter channels (its
# ``p`` and ``e``). It does not: buildings.py judges them hour by hour against the building's
# own working and closed days; on the 7 LEAD buildings the statistical detector added 34 of
# 130 false alarms there and 1 labelled run of 126 that buildings.py missed (docs/anomalies.md).
UNUSUAL_ON_BUILDINGS = False
# Channels a node reports about itself, not a measurement: no statistical detector.
NOT_MEASURED = frozenset(("drop", "fw", "fwt", "fwx"))
# The statistical detector's finding on most readings: nothing unusual (one object for all of
# them, never changed: a tracker only reads a finding).
_NOTHING_UNUSUAL = Finding("unusual", 0.0, False, str)
_UNKNOWN = object()  # a value not computed yet


class ChannelDetector:
    """All detectors of one node's channel, and their events."""

    __slots__ = (
        "channel",
        "clock",
        "config",
        "cost",
        "counter",
        "group",
        "interval",
        "lamp",
        "last_power",
        "last_time",
        "lighting",
        "node",
        "pending",
        "prev",
        "rules",
        "sched",
        "stat",
        "step_floor",
        "trackers",
        "unit",
        "watch",
    )

    def __init__(
        self,
        node: str,
        channel: str,
        config: DetectConfig,
        clock: Clock,
        cost: Cost | None = None,
        watch: FleetWatch | None = None,
    ):
        """``watch``: the fleet's moves and what the rules explain (the stage's); without it
        (``replay``, one channel alone) the statistical detector's alarms open at once."""
        self.node, self.channel, self.config, self.clock = node, channel, config, clock
        self.cost = cost  # the tariff, for the waste's euros
        self.unit = CHANNELS.get(channel, "")
        self.rules: list = []
        counter = self.counter = channel in SUM_CHANNELS
        if counter:
            self.rules.append(CounterRule(node, self.unit, clock))
        if channel in STUCK_CHANNELS:
            # A lamp's zeros are the lamp rules' (off by day or switched off as planned: expected;
            # dark at night: their event), never a stuck sensor's.
            zeros = not (channel == "p" and config.is_lamp(node))
            self.rules.append(StuckRule(node, self.unit, config.stuck_readings, clock, zeros=zeros))
        group = config.lighting_for(node) if channel == "p" else None
        self.lighting = None
        if group is not None:  # a lamp of a [[detect.lighting]] group: judged by its schedule
            self.lighting = LightingRule(node, self.unit, group, config, clock)
            self.rules.append(self.lighting)
        elif channel == "p" and config.is_lamp(node):
            self.rules.append(LampRule(node, self.unit, config, clock))
        sched = self.sched = config.schedule_for(node)
        building = channel in ("p", "e") and group is None and not config.is_lamp(node)
        if building:
            # A building's meter: drop-out, stuck meter, spike, dip, wrong time, hour by hour.
            self.rules.append(building_meter(node, self.unit, config, clock, sched))
        # The group whose simultaneous moves are a schedule: the street lights, the buildings
        # of one schedule, every other node.
        self.lamp = config.is_lamp(node)  # a street light (asked once: glob patterns)
        self.group = "lamps" if self.lamp else "*"
        if sched is not None:
            self.group = "schedule:" + ",".join(sched.nodes)
        self.watch = watch
        if watch is not None:
            watch.member(self.group, channel, node)
        # The statistical detector's alarm held back (time, score, reason) until the fleet's
        # time says whether its group moved with it or a rule explains it (``release``).
        self.pending: list | None = None
        if sched is not None and channel in ("p", "e"):
            self.rules.append(ScheduleRule(node, sched, clock, counter=counter))
        # Counters are judged by their rate of increase, not their ever-growing value. The
        # node's own bookkeeping (dropped readings, firmware versions: docs/ota.md) is not a
        # measurement: a new version after an update is no anomaly.
        # A building's meter is judged by buildings.py against the building's own week, not by
        # the statistical detector too (``UNUSUAL_ON_BUILDINGS``: docs/anomalies.md says why).
        measured = channel not in NOT_MEASURED and not (building and not UNUSUAL_ON_BUILDINGS)
        # A record on a measured channel must also clear the channel's noise (baseline.py says
        # why); the generic channel of ``replay`` keeps the plain range (NAB).
        spreads = 0.0 if channel == "x" else RECORD_SPREADS
        self.stat = StatDetector(spreads) if measured else None
        # A power channel the statistical detector judges tells the fleet its steps (its
        # previous reading, ``last_power``): what the group does at once is its schedule, learnt
        # or not (fleetwide.py). A step smaller than a lit lamp's least power is no switch
        # (a lamp off by day reads 0 W or 1 W). ``step_floor`` None: steps not watched.
        self.step_floor = (
            config.lamp_on_watts
            if watch is not None and channel == "p" and self.stat is not None
            else None
        )
        self.last_power: float | None = None
        self.trackers: dict[str, Tracker] = {}
        self.last_time: float | None = None
        self.interval = 0.0
        self.prev: float | None = None  # last counter value, for its rate

    def step(self, t: float, x: float) -> tuple[float, list[Event]]:
        """One reading: its anomaly score in [0, 1] (the highest score of a kind with no event
        open) and the events it opened, changed or closed. Readings not newer than the last one
        are skipped (score 0)."""
        last = self.last_time
        if last is not None:
            if t <= last:
                return 0.0, []
            gap = t - last
            self.interval = (
                gap
                if self.interval == 0
                else (self.interval + INTERVAL_ALPHA * (gap - self.interval))
            )
        self.last_time = t
        floor = self.step_floor
        if floor is not None:
            before = self.last_power
            self.last_power = x
            if before is not None:
                d = x - before if x > before else before - x
                if d > floor and d > STEP * (x if x > before else before):
                    self.watch.stepped(  # type: ignore[union-attr]
                        self.group, self.channel, self.node, t, step_ratio(before, x)
                    )
        prev = self.prev
        findings: list[Finding] = []
        for rule in self.rules:
            findings.extend(rule.step(t, x))
        explained = False
        for f in findings:
            if f.active and f.kind in EXPLAIN_KINDS:
                explained = True
                break
        if explained and self.watch is not None:
            self.watch.explain(self.node, t)
        if self.stat is not None:
            f = self._stat(t, x, last)
            if f is _NOTHING_UNUSUAL and self.pending is None:
                findings.append(f)  # what _hold would say of it: nothing to hold or to clear
            elif f is not None:
                findings.append(self._hold(t, f, explained))
        else:
            if self.unit == "Wh":
                self.prev = x  # the counter's last value, for its rate (``_stat`` keeps it else)
            if "unusual" in self.trackers:  # saved while the detector ran here: let it close
                findings.append(_NOTHING_UNUSUAL)
        score = 0.0
        threshold = self.config.threshold
        trackers = self.trackers
        if not trackers:  # most readings: no event to follow, none to open
            for f in findings:
                s = f.score
                if s > score:
                    score = s
                if not s < threshold:
                    break
            else:
                return score, []
            score = 0.0  # one opens: the whole account below
        power = _UNKNOWN  # asked of _power once a tracker needs it (few readings do)
        changed = []
        for f in findings:
            tr = trackers.get(f.kind)
            # The reading's score is new evidence only: a kind whose event is already open
            # (the same condition going on) adds nothing to it.
            if tr is None:
                s = f.score
                if s > score:
                    score = s
                if s < threshold:
                    continue
                tr = trackers[f.kind] = Tracker()
            elif tr.event is None or tr.event.end is not None:  # no event open
                if f.score > score:
                    score = f.score
                if f.score < threshold and tr.since_close >= REARM:
                    # Its last event closed REARM readings ago: nothing left to re-open, the
                    # tracker is as good as a new one (and costs a step per reading, and its
                    # event's reason, ~250 bytes, in the saved state).
                    del trackers[f.kind]
                    continue
            if power is _UNKNOWN:
                power = self._power(t, x, last, prev)
            ev = tr.step(self.node, self.channel, t, f, threshold, power, last, self.cost)
            if ev is not None:
                changed.append(ev)
        # A kind with no finding for this reading (a rule with no opinion, e.g. the drift rule
        # by day) keeps its event as it is.
        return score, changed

    def _hold(self, t: float, f: Finding, explained: bool) -> Finding:
        """The statistical detector's finding as the trackers see it: nothing when a rule's
        condition holds on this reading (the rule tells it, and an open ``unusual`` event
        closes), held back (``pending``) when it would open an event and the fleet is watched."""
        if explained:
            self.pending = None
            return _NOTHING_UNUSUAL
        watch = self.watch
        if watch is None:
            return f
        if f.active:
            watch.moved(self.group, self.channel, self.node, t)
        held = self.pending
        if held is not None:  # while held back: how long the condition has been clear
            if f.active:
                held[3] = 0
            else:
                held[3] += 1
                if held[3] == 1:
                    held[4] = t
            return _NOTHING_UNUSUAL
        tr = self.trackers.get("unusual")
        if f.score < self.config.threshold or (tr is not None and tr.open):
            return f
        # [time, score, reason, clear readings since, first of them]
        self.pending = [t, f.score, f.reason(), 0, t]
        return _NOTHING_UNUSUAL

    def release(self, now: float) -> Event | None:
        """Open the held-back alarm once the fleet's time ``now`` is ``DEFER`` past it, unless
        a rule's condition held on the node around it or its group moved with it then; returns
        the event it opened (closed already if the condition cleared meanwhile). The event
        starts at the reading that raised the alarm."""
        if self.pending is None or now < self.pending[0] + DEFER:
            return None
        t, score, reason, clear, first_clear = self.pending
        self.pending = None
        watch = self.watch
        if watch is not None and (
            watch.explained(self.node, t - max(self.interval, 60.0) - 60.0, t + WINDOW)
            or watch.together(
                self.group,
                self.channel,
                self.node,
                t,
                "p" if self.unit in ("W", "Wh") else None,  # the power a step of p explains
                self.interval,
            )
        ):
            return None
        tr = self.trackers.setdefault("unusual", Tracker())
        if tr.open:
            return None
        alarm = Finding("unusual", score, True, lambda: reason)
        ev = tr.step(self.node, self.channel, t, alarm, self.config.threshold)
        for _ in range(min(clear, CLOSE_AFTER)):  # the clear readings it missed, as they came
            ev = tr.step(self.node, self.channel, first_clear, None, self.config.threshold) or ev
        return ev

    def _power(self, t: float, x: float, last: float | None, prev: float | None) -> float | None:
        """The channel's power at this reading, in W, for the waste: a power channel's value,
        an energy counter's mean rate since its previous reading (``prev``, ``self.prev`` as it
        was before ``_stat`` moved it on)."""
        if self.unit == "W":
            return x
        if self.unit == "Wh" and prev is not None and last is not None:
            return (x - prev) * 3600.0 / (t - last) if x >= prev else None
        return None

    def _stat(self, t: float, x: float, last: float | None) -> Finding | None:
        at = t  # the time the value belongs to, for the seasonal slots
        if self.counter:
            prev, self.prev = self.prev, x
            if prev is None or last is None or x < prev:
                return None
            x = (x - prev) * 3600.0 / (t - last)  # counter units per hour
            # The rate of the interval belongs to its middle: a counter read at 05:00 tells of
            # 04:55-05:00 (dimmed), not of the 05:00 hour's slot (full power).
            at = (t + last) / 2
            # Described as what it counts (Wh, and Wh per hour), never as watts read off it.
            unit = self.unit + "/h"
        else:
            unit = self.unit
        sched, clock, cfg = self.sched, self.clock, self.config
        if self.lighting is not None and not self.lighting.lit_steady(t):
            # A grouped lamp's switches are its schedule's, judged by its rules; the baseline
            # learns and judges its lit level only (its dimming steps).
            return _NOTHING_UNUSUAL
        # The seasonal slots are the town's hours (a building opens at 08:00 local all year,
        # not at 07:00 UTC in winter and 06:00 in summer): local wall-clock time.
        at = clock.local(at)
        # A building learns its closed days apart from its open ones; the baseline learns from
        # normal readings only, so it pauses while an energy rule's event is open here.
        closed = sched is not None and (int(at // 86400) + 3) % 7 not in sched.days  # 0: Thursday
        learn = True
        for k, tr in self.trackers.items():
            if tr.open and k in PAUSE_KINDS:
                learn = False
                break
        v = self.stat.update(at, x, closed, learn)
        active = v.score >= 0.5 * cfg.threshold
        if not active and v.novelty == 0.0:  # most readings: no need to look at the switches
            return _NOTHING_UNUSUAL
        if self.lighting is not None:
            switching = self.lighting.switching(t)  # the schedule's switches, not just the sun's
        else:
            switching = self.lamp and lamp_switching(clock, cfg, t)
        if switching or (sched is not None and schedule_switching(clock, sched, t)):
            # A switch the rules expect (dusk, dawn, opening hours): they judge it, not this.
            return _NOTHING_UNUSUAL
        return Finding("unusual", v.novelty, active, lambda: self._reason(t, x, unit, v, last))

    def _reason(self, t: float, x: float, unit: str, v, last: float | None = None) -> str:
        what = "" if self.channel in ("x", "") else " " + self.channel
        head = f"{self.node}{what} read {fmt_value(x, unit)} at {self.clock.hhmm(t)}"
        if self.counter and last is not None:
            # A counter: what it counted since its previous reading, and at what rate.
            counted = fmt_value(x * (t - last) / 3600.0, self.unit)
            head = (
                f"{self.node}{what} counted {counted} in {_duration(t - last)} up to"
                f" {self.clock.hhmm(t)} ({fmt_value(x, unit)})"
            )
        if v.record is not None:
            lo, hi = v.record
            return (
                f"{head}, outside all it had read before"
                f" ({fmt_value(lo, unit)} to {fmt_value(hi, unit)})"
            )
        return f"{head}, usually {fmt_value(v.expected, unit)} (± {fmt_value(v.spread, unit)}) then"

    # -- persistence ---------------------------------------------------------------------------
    def dumps(self) -> bytes:
        stat = self.stat.dumps() if self.stat is not None else b""
        meta = json.dumps(
            [
                self.last_time,
                self.interval,
                self.prev,
                [r.dump() for r in self.rules],
                {
                    k: tr.dump()
                    for k, tr in self.trackers.items()
                    if tr.event is not None and (tr.open or tr.since_close <= REARM)
                },
                self.pending,
            ],
            separators=(",", ":"),
        ).encode()
        return struct.pack("<H", len(stat)) + stat + meta

    def loads(self, data: bytes) -> None:
        (n,) = struct.unpack_from("<H", data)
        if self.stat is not None and n:
            self.stat = StatDetector.loads(data[2 : 2 + n], self.stat.record_spreads)
        # A state saved before the held-back alarm was kept has five items.
        last, self.interval, self.prev, rules, trackers, *pending = json.loads(data[2 + n :])
        self.pending = pending[0] if pending else None
        self.last_time = last
        stat = self.stat
        if stat is not None and stat.utc_slots:
            # Learnt by UTC hours (saved before the slots were the town's): moved by the town's
            # UTC offset when the channel last read. A grouped lamp's were local already.
            if self.lighting is None and stat.hour >= 0:
                at = stat.hour * 3600.0
                stat.shift_slots(round((self.clock.local(at) - at) / 3600))
            stat.utc_slots = False
        for rule, d in zip(self.rules, rules, strict=True):
            # The config may have changed what judges this channel (a lamp moved into or out of
            # a [[detect.lighting]] group): a state that does not fit the rule is left behind.
            with contextlib.suppress(ValueError, TypeError):
                rule.load(d)
        self.trackers = {k: Tracker.load(self.node, self.channel, d) for k, d in trackers.items()}


class Detector:
    """The detect stage. Call it with the open database and the readings just committed."""

    def __init__(
        self,
        config: DetectConfig | None = None,
        pack_seconds: Callable[[str], float] | None = None,
        cost: Cost | None = None,
    ):
        """``pack_seconds(node)``: how much time a node's pack spans (its ``pack`` times its
        ``interval``); a node is not silent before two of them went by. ``cost``: the tariff
        of ``[site]`` (:meth:`gateway.pipeline.waste.Tariff.cost`), the euros of the waste."""
        self.config = config or DetectConfig()
        self.cost = cost
        self.watch = FleetWatch()
        self._pending: set[tuple[str, str]] = set()  # channels holding an alarm back
        self._due = math.inf  # the fleet's time when the first of them is due
        self._fleet_time = -math.inf  # the newest reading time seen
        self.pack_seconds = pack_seconds
        self.clock = Clock(self.config)
        self._channels: dict[tuple[str, str], ChannelDetector] = {}
        self._saved: dict[tuple[str, str], float] = {}  # reading time of each channel's last save
        # The fleet's clock, for ``quiet``: the newest reading time seen, and when (monotonic).
        self._newest: float | None = None
        self._newest_at = self._heard_at = time.monotonic()
        # Silent nodes: looked for once a minute (a scan of every node's state), and at once
        # when one of those with an open ``silent`` event speaks (loaded at the first look).
        self._silent_checked = -math.inf
        self._silent_open: set[str] | None = None

    def channel(self, db: sqlite_utils.Database, node: str, channel: str) -> ChannelDetector:
        key = (node, channel)
        cd = self._channels.get(key)
        if cd is None:
            cd = ChannelDetector(node, channel, self.config, self.clock, self.cost, self.watch)
            row = db.execute(
                "SELECT state FROM detect_state WHERE node = ? AND channel = ?", key
            ).fetchone()
            if row is not None:
                cd.loads(row[0])
                if cd.pending is not None:
                    self._pending.add(key)
                    self._due = min(self._due, cd.pending[0] + DEFER)
            self._channels[key] = cd
        return cd

    def __call__(self, db: sqlite_utils.Database, readings: Sequence[Reading]) -> list[Event]:
        """Run every detector on ``readings`` (in commit order); store their state and the
        events they opened, changed or closed; then look for silent nodes. Returns the events."""
        if not readings:
            return []
        changed: dict[int, Event] = {}
        touched: dict[tuple[str, str], ChannelDetector] = {}
        for r in readings:
            key = (r.node, r.channel)
            cd = self.channel(db, r.node, r.channel)
            if r.time > self._fleet_time:
                self._fleet_time = r.time
                if self._fleet_time >= self._due:
                    self._release(changed, touched)
            events = cd.step(r.time, r.value)[1]
            if cd.pending is not None:
                self._pending.add(key)
                self._due = min(self._due, cd.pending[0] + DEFER)
            if events:
                touched[key] = cd  # its trackers changed: save it with the events
            elif key not in touched and r.time - self._saved.get(key, 0.0) >= SAVE_EVERY:
                touched[key] = cd
            for ev in events:
                changed[id(ev)] = ev
        now = max(r.time for r in readings)
        self._heard_at = time.monotonic()
        if self._newest is None or now >= self._newest:
            self._newest, self._newest_at = now, self._heard_at
        for key, cd in touched.items():
            self._saved[key] = cd.last_time or now
        with db.atomic():  # one transaction: sqlite-utils commits on its own inside `with db.conn`
            for ev in changed.values():
                save_event(db, ev)
            db["detect_state"].upsert_all(
                (
                    {
                        "node": cd.node,
                        "channel": cd.channel,
                        "last_time": cd.last_time,
                        "interval": cd.interval,
                        "state": cd.dumps(),
                    }
                    for cd in touched.values()
                ),
                pk=("node", "channel"),
            )
            heard = {r.node for r in readings}
            silent = []
            if self._silent_due(db, now, heard):
                silent = self._look_for_silent(db, now, heard)
        return [*changed.values(), *silent]

    def _release(
        self, changed: dict[int, Event], touched: dict[tuple[str, str], ChannelDetector]
    ) -> None:
        """Open (or drop) the held-back alarms due by the fleet's time (the newest reading
        time seen). Called per reading, so the outcome does not depend on how readings were
        batched into commits."""
        now = self._fleet_time
        self._due = math.inf
        for key in list(self._pending):
            cd = self._channels[key]
            ev = cd.release(now)
            if cd.pending is None:
                self._pending.discard(key)
                touched[key] = cd
            else:
                self._due = min(self._due, cd.pending[0] + DEFER)
            if ev is not None:
                changed[id(ev)] = ev

    def _silent_due(self, db: sqlite_utils.Database, now: float, heard: set[str]) -> bool:
        if self._silent_open is None:
            self._silent_open = {
                row[0]
                for row in db.execute(
                    "SELECT node FROM anomalies WHERE kind = 'silent' AND end IS NULL"
                )
            }
        return bool(heard & self._silent_open) or now - self._silent_checked >= SILENT_CHECK_EVERY

    def _silent_seen(self, events: list[Event], now: float) -> list[Event]:
        self._silent_checked = max(self._silent_checked, now)
        if self._silent_open is not None:
            for ev in events:
                if ev.end is None:
                    self._silent_open.add(ev.node)
                else:
                    self._silent_open.discard(ev.node)
        return events

    @property
    def last_reading_at(self) -> float:
        """When (``time.monotonic()``) readings last came, or the detector was made."""
        return self._heard_at

    def now(self, db: sqlite_utils.Database, at: float | None = None) -> float | None:
        """The fleet's time: the newest reading's plus the time elapsed since it came (``at``:
        ``time.monotonic()`` by default); None before any reading. Not the gateway's clock:
        readings may be old (a backfill, a simulated fleet), and only their clock says who
        fell silent."""
        at = time.monotonic() if at is None else at
        if self._newest is None:  # nothing yet since the start: from the saved states
            self._newest = db.execute("SELECT max(last_time) FROM detect_state").fetchone()[0]
            self._newest_at = at
            if self._newest is None:
                return None
        return self._newest + (at - self._newest_at)

    def quiet(self, db: sqlite_utils.Database, at: float | None = None) -> list[Event]:
        """Look for silent nodes when nothing comes at all (the gateway's link to the nodes
        is down, say), as of the fleet's time (``now``). Call it on a timer; returns the
        events it opened."""
        now = self.now(db, at)
        if now is None:
            return []
        with db.atomic():
            self._silent_due(db, now, set())  # knows the open ones before it counts them
            return self._look_for_silent(db, now, set())

    def _look_for_silent(
        self, db: sqlite_utils.Database, now: float, heard: set[str]
    ) -> list[Event]:
        """``check_silent`` on every channel's newest reading: the column ``last_time`` is
        brought up to date first (the state is saved only now and then, ``SAVE_EVERY``, and
        a node up to 10 minutes behind its own readings would look silent too early)."""
        db.conn.executemany(
            "UPDATE detect_state SET last_time = ? WHERE node = ? AND channel = ?"
            " AND last_time < ?",
            [
                (cd.last_time, cd.node, cd.channel, cd.last_time)
                for cd in self._channels.values()
                if cd.last_time is not None
            ],
        )
        found = check_silent(db, now, self.config, heard, self.pack_seconds)
        return self._silent_seen(found, now)


def save_event(db: sqlite_utils.Database, ev: Event) -> None:
    row = ev.as_row()
    if ev.id is None:
        ev.id = db["anomalies"].insert(row).last_pk
    else:
        db["anomalies"].update(ev.id, row)


def check_silent(
    db: sqlite_utils.Database,
    now: float,
    config: DetectConfig,
    heard: Iterable[str] = (),
    pack_seconds: Callable[[str], float] | None = None,
) -> list[Event]:
    """Open a ``silent`` event for each node that has sent nothing for ``silent_intervals`` of
    its usual reading interval (and at least ``silent_minutes``, and two of its packs when
    ``pack_seconds`` is given) before ``now``; close the open one of every node in ``heard``
    (and open none for it: a node sending old readings, a backfill after an outage, is not
    silent). ``Detector`` calls it once a minute of reading time, and on the gateway's timer
    when nothing comes. The caller owns the transaction."""
    out = []
    heard = set(heard)
    open_rows = {
        row[1]: row
        for row in db.execute(
            "SELECT id, node, start, score, reason, version FROM anomalies"
            " WHERE kind = 'silent' AND end IS NULL"
        ).fetchall()
    }
    clock = Clock(config)
    for node, last, interval in db.execute(
        "SELECT node, MAX(last_time), MIN(NULLIF(interval, 0)) FROM detect_state GROUP BY node"
    ).fetchall():
        row = open_rows.get(node)
        if row is not None:
            if node in heard:
                # It ends with the newest reading heard, or at once if that one is older than
                # the silence (a backfill of what the node buffered while it was cut off).
                end = max(last, row[2])
                ev = Event(
                    node, SILENT_CHANNEL, "silent", row[2], end, row[3], row[4], row[0], row[5] + 1
                )
                save_event(db, ev)
                out.append(ev)
            continue
        if node in heard:  # it speaks, if only of the past (a backfill after an outage)
            continue
        limit = max(config.silent_intervals * (interval or 0.0), config.silent_minutes * 60)
        if pack_seconds is not None:  # a node sends a pack at a time: two of them at least
            limit = max(limit, 2 * pack_seconds(node))
        if last is None or now - last <= limit:
            continue
        every = (f"every {_duration(interval)}") if interval else "regularly"
        ev = Event(
            node,
            SILENT_CHANNEL,
            "silent",
            last + limit,
            None,
            0.7,
            f"{node} has sent nothing since {clock.hhmm(last)} (it reads {every})",
        )
        save_event(db, ev)
        out.append(ev)
    return out


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{round(seconds)} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


REPLAY_KINDS = {"power": "p", "energy": "e", "temperature": "t", "generic": "x"}


def replay(
    rows: Iterable[tuple[float, float]], kind: str = "generic", config: DetectConfig | None = None
) -> Iterator[tuple[float, float, bool]]:
    """Run the very detectors of the stage over ``(unix_time, value)`` rows of one channel,
    offline: yield ``(time, score, alarm)`` per row, ``alarm`` when an event opens at that row at
    the configured threshold (by default
    :data:`~gateway.pipeline.detect.config.DEFAULT_THRESHOLD`)."""
    if kind not in REPLAY_KINDS:
        raise ValueError("unknown kind {!r} (one of {})".format(kind, ", ".join(REPLAY_KINDS)))
    config = config or DetectConfig()
    cd = ChannelDetector("replay", REPLAY_KINDS[kind], config, Clock(config))
    for t, x in rows:
        score, events = cd.step(t, x)
        alarm = any(ev.end is None and ev.start == t for ev in events)
        yield t, score, alarm
