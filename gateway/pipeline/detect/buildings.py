"""Detectors for building meters: the faults and the waste a town's energy manager looks for.

A building's electricity is judged hour by hour against what *that building* draws at that hour
of a working day or of a closed day (weekend, public holiday, school holiday, the town's closing
days: :mod:`gateway.pipeline.calendar`). Readings are folded into hourly mean power whatever the
node's cadence (every minute, every 10 minutes, or one reading of hourly energy, judged at once);
a counter (``e``) by its increase. Five kinds:

=============  ===================================================================================
``dropout``    the hour reads near zero (under a fifth of the building's quietest learnt hour)
               for a building never at zero, or a placeholder: an exact whole number that the
               meter never reads (such as 1.0) far under the hour's learnt level, or a value
               held for three hours under 2/3 of the quietest learnt hour, stepped down to
               from an hour above that (not a building sliding into a quiet holiday)
``stuck_meter`` the same hourly value (the same increase of a counter) for more hours in a row
               than the building ever stayed flat, plus ``STUCK_MARGIN`` (at least ``STUCK_HOURS``);
               before the hour is learnt, a meter that never repeated an hour so far, flat for
               hours too unlikely for it (``STUCK_CHANCE``); stuck again after it moved: a new event
``spike``      far above the learnt level of that hour and above all the building draws
``dip``        far under the learnt level of that hour (but not a drop-out)
``wrong_time`` far above the learnt level of that hour but of a size the building draws at
               other hours: a raised night or weekend base load, a holiday run like a working
               day, a working day that starts hours early
=============  ===================================================================================

"Far" is a robust z of ``Z_ALARM`` (score ``z² / (z² + Z_ALARM²)``, 0.5 there). Learning must not
swallow a fault: the hour's slot learns only from hours that raised nothing (a stuck week is
never learnt), with steps clipped to two spreads (a new normal is learnt slowly, over weeks);
a day off is compared with the closed days and never taught to the working days.

State: 48 slots (24 hours of a working day, 24 of a closed day) of level, spread and count, and
seven weekday levels, packed in about 700 bytes of JSON.
"""

import base64
import datetime as dt
import struct
from array import array

from gateway.pipeline.calendar import Calendar
from gateway.pipeline.detect.config import DetectConfig, Schedule
from gateway.pipeline.detect.events import Finding
from gateway.pipeline.detect.rules import Clock, fmt_value

KINDS = ("dropout", "stuck_meter", "spike", "dip", "wrong_time")
Z_ALARM = 7.0  # robust z (in mean absolute deviations) of an alarm at the default threshold
Z_PLACEHOLDER = 5.0  # how far under its hour a whole-number placeholder reads
HELD_RATIO = 2 / 3  # a value held 3 hours under this share of the quietest hour: a placeholder
STUCK_HOURS = 4  # flat hours in a row before a meter can count as stuck
STUCK_MARGIN = 2  # hours flat beyond the longest flat run the building showed when healthy
STUCK_CHANCE = 1e-3  # a flat run this unlikely from how often the meter repeats an hour: stuck
DROP_RATIO = 0.2  # an hour under this share of the quietest learnt hour is a drop-out
LEARNT = 3  # observations of a slot before it is judged
HOURLY = 2700.0  # a reading this long after the previous one is an hour of its own
ALPHA_MIN = 0.15  # weight of a new day in a slot, once the slot has LEARNT days
CLOSED_RATIO = 0.75  # a weekday whose mean is under this share of the busiest is a closed day
WEEKDAY_ALPHA = 0.1
_WEEKDAY_ALPHA_HOUR = WEEKDAY_ALPHA / 24


# What a detector says of an hour it finds nothing in (shared: findings are never changed).
_QUIET = {kind: Finding(kind, 0.0, False, str) for kind in KINDS}
_QUIET_FAR = (_QUIET["spike"], _QUIET["dip"], _QUIET["wrong_time"])  # nothing far from the hour
_NOT_STUCK, _NO_DROPOUT = _QUIET["stuck_meter"], _QUIET["dropout"]


def _half(v: float) -> float:
    """``v`` in thousands, within what a half float holds."""
    return max(-65000.0, min(65000.0, v / 1000.0))


def _pair(x: float, level: float, spread: float, unit: str) -> tuple[str, str, str]:
    """The seen value, the learnt level and its spread in one scale (kW for all three when
    the largest is in kW), so that a person compares like with like."""
    if unit == "W" and max(abs(x), abs(level)) >= 10000:
        return tuple(f"{v / 1000:.1f} kW" for v in (x, level, spread))
    return fmt_value(x, unit), fmt_value(level, unit), fmt_value(spread, unit)


def _finding(kind: str, score: float, active: bool, reason, expected: float | None) -> Finding:
    """A finding with the expected power when events.Finding takes one (the waste's contract)."""
    f = Finding(kind, score, active, reason)
    if expected is not None and "expected" in Finding.__slots__:
        f.expected = expected
    return f


class BuildingMeter:
    """The building-meter detectors of one node's power or energy channel."""

    __slots__ = (
        "acc",
        "before_flat",
        "bounds",
        "calendar",
        "clock",
        "count",
        "days",
        "flat",
        "hour",
        "ints",
        "last_hour",
        "longest_flat",
        "n",
        "node",
        "prev",
        "repeats",
        "sched",
        "school_zone",
        "slots",
        "spreads",
        "stuck",
        "unit",
        "week",
    )

    def __init__(
        self,
        node: str,
        unit: str,
        clock: Clock,
        calendar: Calendar | None = None,
        sched: Schedule | None = None,
        school_zone: str | None = None,
    ):
        self.node, self.unit, self.clock = node, unit, clock
        self.calendar, self.sched, self.school_zone = calendar, sched, school_zone
        self.slots = array("f", bytes(4 * 48))  # level per hour: 0-23 working, 24-47 closed
        self.spreads = array("f", bytes(4 * 48))
        self.count = array("B", bytes(48))
        self.week = array("f", bytes(4 * 7))  # mean level per weekday (learnt), 0 = Monday
        self.hour: int | None = None  # the local hour being folded (hours since the epoch)
        self.acc = [0.0, 0]  # its sum and count
        self.prev: tuple[float, float] | None = None  # the last reading (time, value)
        self.last_hour: float | None = None  # the previous judged hour's value
        self.before_flat: float | None = None  # the hour's value before the flat run going on
        self.flat = 0  # hours in a row with the same value
        self.longest_flat = 0  # the longest flat run that raised nothing
        self.repeats = 0  # hours that repeated the previous one exactly, in healthy runs
        self.stuck = False  # the flat run going on raised a stuck meter
        self.ints = [0, 0]  # whole-number hours, all hours (is a whole number a placeholder?)
        self.n = 0  # hours judged
        # The quietest and busiest learnt hours and the busiest weekday, refreshed daily.
        self.bounds: tuple[float, float, float] | None = None
        # Per local day (days since the epoch): its weekday, why it is a day off (or None),
        # whether it counts as closed and whether its weekday was unknown, decided at its first
        # hour from the weekday means as they were (a few entries).
        self.days: dict[int, tuple[int, str | None, bool, bool]] = {}

    # -- readings -> hours ---------------------------------------------------------------------
    def step(self, t: float, x: float) -> list[Finding]:
        """One reading (W, or a Wh counter for ``unit == "Wh"``): the findings of the hour it
        completes (or of itself, when it comes an hour or more after the previous reading: hourly
        energy), none while an hour is being folded."""
        prev, self.prev = self.prev, (t, x)
        if prev is not None and t <= prev[0]:
            return []
        if self.unit == "Wh":
            if prev is None or x < prev[1]:
                return []  # a counter reset is the counter rule's business
            x = (x - prev[1]) * 3600.0 / (t - prev[0])
            at = t - (t - prev[0]) / 2  # the increase belongs to the interval before t
        else:
            at = t
        hour = int(self.clock.local(at) // 3600)
        out: list[Finding] = []
        if self.hour is not None and self.acc[1] and (hour != self.hour or prev is None):
            out = self._judge(self.hour, self.acc[0] / self.acc[1], t)
            self.hour, self.acc = None, [0.0, 0]
        if prev is not None and t - prev[0] >= HOURLY:  # an hour of its own: judged at once
            if out:
                out.extend(self._judge(hour, x, t))
                return out
            return self._judge(hour, x, t)
        self.hour = hour
        self.acc[0] += x
        self.acc[1] += 1
        return out

    # -- one hour --------------------------------------------------------------------------------
    def _day(self, hour: int) -> tuple[int, str | None, bool, bool]:
        """The local weekday of ``hour``, why its date is a day off (None on an ordinary day),
        whether it is judged as a closed day, and whether its weekday is still unknown (the
        first week: faults only are judged, the hours learnt for the weekday's mean only).
        Kept per local day (days since the epoch): asked at every hour, decided at the first."""
        day = hour // 24
        try:
            return self.days[day]
        except KeyError:
            pass
        date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
        wd = date.weekday()
        off = self.calendar.day_off(date, self.school_zone) if self.calendar else None
        closed = off is not None or self._closed_weekday(wd)
        first = self.week[wd] == 0  # a weekday never seen: it could be either
        if len(self.days) > 8:
            self.days.clear()
        entry = self.days[day] = wd, off, closed, first
        return entry

    def _closed_weekday(self, wd: int) -> bool:
        if self.sched is not None:
            return wd not in self.sched.days
        busiest = max(self.week)
        # A weekday not seen yet is taken for a working day.
        return self.week[wd] > 0 and self.week[wd] < CLOSED_RATIO * busiest

    def _judge(self, hour: int, x: float, t: float) -> list[Finding]:
        day = self.days.get(hour // 24)  # the same day as the last hour: most hours
        wd, off, closed, unknown = day if day is not None else self._day(hour)
        h = hour % 24
        slot = h + 24 if closed else h
        level, spread, n = self.slots[slot], self.spreads[slot], self.count[slot]
        if unknown or (off is not None and n < LEARNT):
            n = 0  # a day off before closed days are known: faults only, nothing learnt
        self.n += 1
        self.ints[1] += 1
        whole = x == int(x)
        if whole:
            self.ints[0] += 1
        # Flat runs: the same hourly value again (a frozen register, the same increase).
        flat_before = self.flat
        self.flat = self.flat + 1 if self.last_hour is not None and x == self.last_hour else 0
        if self.flat == 0:
            self.before_flat = self.last_hour
        self.last_hour = x
        if self.bounds is None or h == 0:  # once a day: levels move slowly
            learnt = [self.slots[i] for i in range(48) if self.count[i] >= LEARNT]
            self.bounds = (
                min(learnt) if learnt else 0.0,
                max(learnt) if learnt else 0.0,
                max(self.week),
            )
        floor, top, busiest = self.bounds
        learnt = top > 0
        # (No max()/min() calls on this path: the comparison they make, in the same order; a
        # call costs more than the rest of a line on a Pi.)
        ceiling = busiest if busiest > top else top
        out: list[Finding] = []
        faulty = False

        # stuck: longer flat than the building ever stayed (in hours: the run plus its first)
        needed = self.longest_flat + 1 + STUCK_MARGIN
        if not needed > STUCK_HOURS:
            needed = STUCK_HOURS
        if self.flat + 1 >= needed and (self.stuck or self._unlikely_flat(n)):
            self.stuck = True
            run = self.flat + 1
            since = t - 3600.0 * self.flat
            out.append(
                _finding(
                    "stuck_meter",
                    min(1.0, 0.5 * run / needed),
                    True,
                    lambda: (
                        f"{self.node} read exactly {fmt_value(x, self.unit)} an hour for {run}"
                        f" hours since {self.clock.hhmm(since)}; it never stayed flat more than"
                        f" {self.longest_flat + 1} h (stuck meter?)"
                    ),
                    None,
                )
            )
            faulty = True
        else:
            if self.flat == 0 and not self.stuck:  # a flat run that ended raising nothing
                if flat_before > self.longest_flat:
                    self.longest_flat = flat_before
                self.repeats += flat_before
            self.stuck = False
            out.append(_NOT_STUCK)

        # drop-out: near zero for a building never near zero, or a placeholder
        sd = spread
        v = 0.05 * abs(level)
        if v > sd:
            sd = v
        v = 0.01 * ceiling
        if v > sd:
            sd = v
        if sd < 1e-9:
            sd = 1e-9
        z = (x - level) / sd if n >= LEARNT else 0.0
        # A placeholder: a whole number in a meter that reads decimals, far under the hour's
        # level; or a constant (three hours the same) under 2/3 of the quietest learnt hour.
        placeholder = (
            whole and self.n > 24 * 7 and self.ints[0] < 0.05 * self.ints[1] and z <= -Z_PLACEHOLDER
        ) or (
            # held after a step down from a normal hour: a building sliding into a quieter
            # season (a holiday, a coarse meter at its new low) holds values too, but got there
            # by degrees
            self.flat >= 2
            and x < HELD_RATIO * floor
            and (self.before_flat or 0.0) >= HELD_RATIO * floor
        )
        if learnt and floor > 0 and (x <= DROP_RATIO * floor or placeholder):
            what = "a placeholder value" if placeholder and x > DROP_RATIO * floor else "near zero"
            out.append(
                _finding(
                    "dropout",
                    1.0 if x <= DROP_RATIO * floor else 0.6,
                    True,
                    lambda: (
                        f"{self.node} read {fmt_value(x, self.unit)} between"
                        f" {self._span(hour)} ({what}); its quietest hours draw"
                        f" {fmt_value(floor, self.unit)} (meter or supply cut?)"
                    ),
                    None,
                )
            )
            faulty = True
        else:
            out.append(_NO_DROPOUT)

        # spike, dip, wrong time: far from this hour's learnt level (one of them at most)
        score = 0.0
        if not faulty and n >= LEARNT:
            score = z * z / (z * z + Z_ALARM * Z_ALARM)
        if score < 0.25:  # most hours: nothing far (and no object made for it)
            out.extend(_QUIET_FAR)
        else:
            if z > 0:
                far = "spike" if x > 1.1 * ceiling or level >= 0.6 * top else "wrong_time"
            else:
                far = "dip"
            for kind in ("spike", "dip", "wrong_time"):
                if kind != far:
                    out.append(_QUIET[kind])
                elif score >= 0.5:
                    day = self._describe_day(wd, off, closed)
                    out.append(
                        _finding(
                            kind,
                            score,
                            True,
                            lambda kind=kind, day=day: self._says(
                                kind, x, hour, day, level, spread, slot >= 24
                            ),
                            level if kind == "wrong_time" else None,
                        )
                    )
                else:
                    out.append(Finding(kind, score, True, str))

        # learn: not from a fault, clipped steps, a day off never into the working days
        if faulty:
            return out
        if not unknown and not (off is not None and self.count[slot] < LEARNT):
            self._learn(slot, x, level, spread, self.count[slot])
        if off is None:  # a day off says nothing of its weekday
            w = self.week[wd]
            # A plain mean over the first weeks (about n / 7 hours of each weekday so far),
            # then a memory of about ten of that weekday.
            a = 7.0 / (self.n + 7)
            if not a > _WEEKDAY_ALPHA_HOUR:
                a = _WEEKDAY_ALPHA_HOUR
            self.week[wd] = x if w == 0 else w + a * (x - w)
        return out

    def _unlikely_flat(self, n: int) -> bool:
        """Whether a flat run is evidence enough before the hour's slot is learnt (``n`` 0: the
        first days, when the longest healthy flat run means little yet). Only for a meter that
        has never repeated an hour exactly so far: one that has (a meter reading 1.2 kWh to
        0.1 repeats itself at night, and more often the quieter the hour) waits until it is
        learnt. Then, with less known, more evidence: twice ``STUCK_HOURS`` flat, and the
        chance of ``flat`` repeats in a row, at the rate of one repeat in ``hours + 2`` of
        history (Laplace's rule), under ``STUCK_CHANCE``. Once learnt: always."""
        if n >= 1:
            return True
        before = self.n - 1 - self.flat  # hours judged before this run
        return (
            self.repeats == 0
            and self.flat + 1 >= 2 * STUCK_HOURS
            and (1 / (before + 2)) ** self.flat < STUCK_CHANCE
        )

    def _learn(self, slot: int, x: float, level: float, spread: float, n: int) -> None:
        if n == 0:
            self.slots[slot], self.spreads[slot] = x, 0.1 * abs(x)
        else:
            a = 1.0 / (n + 1)
            if a < ALPHA_MIN:
                a = ALPHA_MIN
            d = x - level
            lim = spread
            v = 0.02 * abs(level)
            if v > lim:
                lim = v
            if lim < 1e-9:
                lim = 1e-9
            lim *= 2.0
            if n >= LEARNT:  # max(-lim, min(lim, d))
                d = d if d < lim else lim
                d = d if d > -lim else -lim
            self.slots[slot] = level + a * d
            dev, cap = abs(x - level), 2 * lim
            self.spreads[slot] = spread + a * ((cap if cap < dev else dev) - spread)
        if n < 255:
            self.count[slot] = n + 1

    def _says(
        self, kind: str, x: float, hour: int, day: str, level: float, spread: float, closed: bool
    ) -> str:
        seen, usual, spread_ = _pair(x, level, spread, self.unit)
        return (
            f"{self.node} drew {seen} between {self._span(hour)} ({day}),"
            f" {_words[kind, closed]} {usual} ± {spread_}"
        )

    def _span(self, hour: int) -> str:
        h = hour % 24
        return f"{h:02d}:00 and {(h + 1) % 24:02d}:00"

    def _describe_day(self, wd: int, off: str | None, closed: bool) -> str:
        name = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")[wd]
        if off is not None:
            return f"{name}, {off}"
        return f"{name}, a closed day" if closed else f"{name}, a working day"

    # -- persistence -------------------------------------------------------------------------------
    def dump(self) -> list:
        # Half floats of thousands (kW for a W channel): 3 significant digits, up to 65 MW.
        levels = [_half(v) for v in (*self.slots, *self.spreads, *self.week)]
        blob = struct.pack("<103e", *levels) + self.count.tobytes()
        return [
            base64.b64encode(blob).decode(),
            self.hour,
            self.acc,
            self.prev,
            self.last_hour,
            self.flat,
            self.longest_flat,
            self.ints,
            self.n,
            self.repeats,
            self.stuck,
            self.before_flat,
        ]

    def load(self, d: list) -> None:
        blob = base64.b64decode(d[0])
        levels = [v * 1000.0 for v in struct.unpack_from("<103e", blob)]
        self.slots = array("f", levels[:48])
        self.spreads = array("f", levels[48:96])
        self.week = array("f", levels[96:103])
        self.count = array("B", blob[206:254])
        self.hour, self.acc, prev, self.last_hour, self.flat, self.longest_flat = d[1:7]
        self.prev = tuple(prev) if prev is not None else None
        self.ints, self.n = d[7], d[8]
        self.repeats, self.stuck = d[9:11] if len(d) > 9 else (0, False)  # states of before
        self.before_flat = d[11] if len(d) > 11 else None


_words = {
    ("spike", False): "on working days at that hour it draws",
    ("spike", True): "on closed days at that hour it draws",
    ("dip", False): "on working days at that hour it draws",
    ("dip", True): "on closed days at that hour it draws",
    ("wrong_time", False): "on working days at that hour it draws",
    ("wrong_time", True): "its closed days draw at that hour",
}


def building_meter(
    node: str, unit: str, config: DetectConfig, clock: Clock, sched: Schedule | None
) -> BuildingMeter:
    """The detectors of a building's ``p`` or ``e`` channel, with the town's calendar of
    ``config`` (school holidays when its schedule says the building is a school)."""
    zone = config.school_zone if sched is not None and sched.school else None
    return BuildingMeter(node, unit, clock, config.calendar, sched, zone)
