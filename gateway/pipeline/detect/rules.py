"""Energy rules an operator understands at a glance.

Each rule watches one channel of one node, keeps a few numbers of state, and says for each
reading a :class:`~gateway.pipeline.detect.events.Finding` (or None when it has nothing to say):

========================  ==========================================================  ========
kind                      condition                                                   channels
========================  ==========================================================  ========
``lit_by_day``            a street light draws power between sunrise and sunset       p (lamps)
``dark_at_night``         a street light draws nothing between sunset and sunrise     p (lamps)
``drift``                 a lit lamp draws ``drift_percent`` more than it learnt,     p (lamps)
                          at the same hour of the night (so at equal dimming)
``off_schedule``          a building's meter draws, outside its opening hours,        p, e
                          closer to its opening-hours use than to its standby
``counter_reset``         a counter goes backwards (reset, replaced meter)            e, drop
``stuck``                 the same value ``stuck_readings`` times in a row            p, t, lux
========================  ==========================================================  ========

"Node silent" is not a rule on readings (it is about their absence): see
:func:`gateway.pipeline.detect.engine.check_silent`.

Sunrise and sunset come from the ``astral`` package (NOAA's solar equations) for the site's
latitude and longitude; the lamp rules leave ``twilight_minutes`` of grace around both.
A rule's condition must hold for ``CONFIRM`` readings in a row before it scores, and then scores
0.5 to 1 growing with how long (or how far) it holds.
"""

import datetime as dt
from array import array
from collections.abc import Sequence

from astral import Observer
from astral.sun import sunrise, sunset

from gateway.pipeline.detect.config import DetectConfig, Schedule
from gateway.pipeline.detect.events import Finding

CONFIRM = 3  # readings in a row before a rule's condition counts
DRIFT_LEARN = 30  # lit readings per hour of night that make the drift rule's reference
DRIFT_ALPHA = 1 / 300  # weight of a lit reading in the drift average (about 5 h at 1/min)
LEARN_TAU = 3000.0  # seconds of memory of a building's learnt levels (open, closed)
BUSY_RATIO = 1.5  # learnt opening-hours use must be this many times the out-of-hours use


class Clock:
    """Local time and sun times of the site, cheap per reading: the UTC offset is cached per
    UTC day (per hour on the day it changes) and sunrise/sunset per local date."""

    def __init__(self, config: DetectConfig):
        self.tz = config.tz
        self.observer = Observer(config.latitude, config.longitude)
        self._since = self._until = 0.0  # the UTC span over which the cached offset holds
        self._offset = 0.0
        self._sun: dict[dt.date, tuple[float, float] | None] = {}
        self._sun_day: int | None = None  # the local day of the last answer, and it
        self._sun_last: tuple[float, float] | None = None

    def local(self, t: float) -> float:
        """Seconds since the epoch, shifted to local wall-clock time. An hourly reading would
        ask the zone every time with a cache per hour: the offset is kept for the whole UTC day
        when it is the same at both its ends (a zone changes it at most once a day), else for
        the part of the day before or after the change, found to the second."""
        if self._since <= t < self._until:
            return t + self._offset
        off = self._utcoffset(t)
        day = t - t % 86400
        first, last = self._utcoffset(day), self._utcoffset(day + 86399)
        since, until, held = day, day + 86400, first
        if first != last:  # the day of a change: when, to the second (Lord Howe's is at :30)
            lo, hi = day, day + 86399
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if self._utcoffset(mid) == first:
                    lo = mid
                else:
                    hi = mid
            since, until, held = (day, hi, first) if t < hi else (hi, until, last)
        if off != held:  # not a zone that changes at most once a day: no cache
            since = until = 0.0
        self._since, self._until, self._offset = since, until, off
        return t + off

    def _utcoffset(self, t: float) -> float:
        off = dt.datetime.fromtimestamp(t, self.tz).utcoffset()
        return off.total_seconds() if off else 0.0

    def hhmm(self, t: float) -> str:
        loc = self.local(t)
        return f"{int(loc // 3600) % 24:02d}:{int(loc // 60) % 60:02d}"

    def weekday_time(self, t: float) -> tuple[int, dt.time]:
        loc = self.local(t)
        day = int(loc // 86400)
        sec = int(loc - day * 86400)
        return (day + 3) % 7, dt.time(sec // 3600, sec // 60 % 60)  # 1970-01-01 was a Thursday

    def sun(self, t: float) -> tuple[float, float] | None:
        """(sunrise, sunset) as Unix times on the local date of ``t``; None on polar days."""
        day = int(self.local(t) // 86400)
        if day == self._sun_day:  # the same day as the last question: most readings
            return self._sun_last
        date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
        v = self._sun.get(date, False)
        if v is not False:
            self._sun_day, self._sun_last = day, v
            return v
        try:
            v = (
                sunrise(self.observer, date, self.tz).timestamp(),
                sunset(self.observer, date, self.tz).timestamp(),
            )
        except ValueError:  # the sun never rises or never sets that day
            v = None
        if len(self._sun) > 8:
            self._sun.clear()
        self._sun[date] = v
        self._sun_day, self._sun_last = day, v
        return v


def lamp_switching(clock: Clock, cfg: DetectConfig, t: float) -> bool:
    """Within the twilight grace around sunrise or sunset, when a street light switches: the
    lamp rules judge that, the statistical detector does not alarm."""
    sun = clock.sun(t)
    if sun is None:
        return False
    grace = cfg.twilight_minutes * 60
    return abs(t - sun[0]) <= grace or abs(t - sun[1]) <= grace


def schedule_switching(clock: Clock, sched: Schedule, t: float) -> bool:
    """Within an hour of a building's opening or closing time (on any day: the load ramps up or
    down then, or does not on a closed day): the statistical detector does not alarm."""
    _, now = clock.weekday_time(t)
    minutes = now.hour * 60 + now.minute
    for edge in (sched.open, sched.close):
        d = abs(minutes - (edge.hour * 60 + edge.minute))
        if min(d, 1440 - d) <= 60:
            return True
    return False


def fmt_value(x: float, unit: str) -> str:
    unit = {"Cel": "°C", "%EL": "%", "1": ""}.get(unit, unit)
    if unit == "W" and abs(x) >= 10000:
        return f"{x / 1000:.1f} kW"
    text = f"{round(x)}" if abs(x) >= 100 or x == int(x) else f"{x:.1f}"
    return text + (" " + unit if unit else "")


# What a rule says of a reading it finds nothing in, one object each (a tracker only reads a
# finding, never changes it): made once, not per reading. "Active" ones: the condition holds,
# not yet confirmed (no score, but the rule explains the reading).
def _quiet(kind: str, active: bool = False) -> tuple[Finding]:
    return (Finding(kind, 0.0, active, str),)


_NOT_LIT = _quiet("lit_by_day")
_LIT_UNCONFIRMED = _quiet("lit_by_day", True)
_NOT_DARK = _quiet("dark_at_night")
_DARK_UNCONFIRMED = _quiet("dark_at_night", True)
_NOT_DRIFTING = _quiet("drift")[0]
_IN_HOURS = _quiet("off_schedule")
_OUT_UNCONFIRMED = _quiet("off_schedule", True)
_NO_RESET = _quiet("counter_reset")
_NOT_STUCK = _quiet("stuck")


def _confirm_score(run: int) -> float:
    return min(1.0, 0.5 + 0.05 * (run - CONFIRM))


class LampRule:
    """Lit by day, dark at night, and drift, for the power channel of a street light."""

    __slots__ = ("cfg", "clock", "counts", "dark_run", "drift", "lit_run", "node", "refs", "unit")

    def __init__(self, node: str, unit: str, cfg: DetectConfig, clock: Clock):
        self.node, self.unit, self.cfg, self.clock = node, unit, cfg, clock
        self.lit_run = 0
        self.dark_run = 0
        self.drift = 1.0
        self.refs = array("f", bytes(4 * 24))
        self.counts = array("H", bytes(2 * 24))

    def step(self, t: float, x: float) -> Sequence[Finding]:
        cfg, clock = self.cfg, self.clock
        sun = clock.sun(t)
        if sun is None:
            return []
        rise, set_ = sun
        grace = cfg.twilight_minutes * 60
        lit = x > cfg.lamp_on_watts
        out = []
        if rise + grace <= t <= set_ - grace:
            self.dark_run = 0
            out.extend(_NOT_DARK)
            self.lit_run = self.lit_run + 1 if lit else 0
            if self.lit_run >= CONFIRM:
                out.append(
                    Finding(
                        "lit_by_day",
                        _confirm_score(self.lit_run),
                        True,
                        lambda: (
                            f"{self.node} drew {fmt_value(x, self.unit)} at"
                            f" {clock.hhmm(t)}, lamps are off between sunrise"
                            f" {clock.hhmm(rise)} and sunset {clock.hhmm(set_)}"
                        ),
                    )
                )
            else:  # lit, not yet confirmed: no score, but the rule explains the reading
                out.extend(_LIT_UNCONFIRMED if self.lit_run > 0 else _NOT_LIT)
        elif t < rise - grace or t > set_ + grace:
            self.lit_run = 0
            out.extend(_NOT_LIT)
            if not lit and not self._planned_off(t):
                self.dark_run += 1
            else:
                self.dark_run = 0
            if self.dark_run >= CONFIRM:
                out.append(
                    Finding(
                        "dark_at_night",
                        _confirm_score(self.dark_run),
                        True,
                        lambda: (
                            f"{self.node} drew {fmt_value(x, self.unit)} at"
                            f" {clock.hhmm(t)}, lamps are on between sunset"
                            f" {clock.hhmm(set_)} and sunrise {clock.hhmm(rise)}"
                        ),
                    )
                )
            else:
                out.extend(_DARK_UNCONFIRMED if self.dark_run > 0 else _NOT_DARK)
            if lit:
                out.append(self._drift(t, x))
        return out

    def _planned_off(self, t: float) -> bool:
        off = self.cfg.lamps_off
        if off is None:
            return False
        _, now = self.clock.weekday_time(t)
        a, b = off
        return a <= now < b if a <= b else (now >= a or now < b)

    def _drift(self, t: float, x: float) -> Finding:
        h = int(self.clock.local(t) // 3600) % 24
        c = self.counts[h]
        if c < DRIFT_LEARN:
            self.refs[h] += (x - self.refs[h]) / (c + 1)  # running mean while learning
            self.counts[h] = c + 1
            return _NOT_DRIFTING
        ref = self.refs[h]
        self.drift += DRIFT_ALPHA * (x / ref - self.drift)
        limit = self.cfg.drift_percent / 100.0
        excess = self.drift - 1.0
        active = excess >= limit / 2
        score = 0.0 if excess < limit else min(1.0, 0.5 + 0.5 * (excess - limit) / limit)
        if score == 0.0 and not active:  # most lit readings: the lamp draws what it learnt
            return _NOT_DRIFTING
        drift = self.drift
        return Finding(
            "drift",
            score,
            active,
            lambda: (
                f"{self.node} draws {round(100 * (drift - 1))} % more than it"
                f" learnt at equal dimming ({fmt_value(x, self.unit)} at"
                f" {self.clock.hhmm(t)}, {fmt_value(ref, self.unit)} then when new)"
            ),
        )

    def dump(self) -> list:
        return [
            self.lit_run,
            self.dark_run,
            round(self.drift, 6),
            [round(v, 3) for v in self.refs],
            list(self.counts),
        ]

    def load(self, d: list) -> None:
        self.lit_run, self.dark_run, self.drift, refs, counts = d
        self.refs = array("f", refs)
        self.counts = array("H", counts)


def _seconds(at: dt.time) -> float:
    """A time of day in seconds since midnight (ordered as the times are)."""
    return at.hour * 3600 + at.minute * 60 + at.second + at.microsecond / 1e6


class ScheduleRule:
    """Consumption outside a building's opening hours, on power or on an energy counter (as the
    mean power between two counter readings)."""

    __slots__ = (
        "busy",
        "clock",
        "counter",
        "days",
        "hours",
        "idle",
        "n_busy",
        "n_idle",
        "node",
        "prev",
        "run",
        "sched",
    )

    def __init__(self, node: str, sched: Schedule, clock: Clock, counter: bool):
        self.node, self.sched, self.clock, self.counter = node, sched, clock, counter
        self.days = sched.days
        self.hours = (_seconds(sched.open), _seconds(sched.close))
        self.busy = self.idle = 0.0
        self.n_busy = self.n_idle = 0
        self.prev: tuple[float, float] | None = None
        self.run = 0

    def step(self, t: float, x: float) -> Sequence[Finding]:
        prev, self.prev = self.prev, (t, x)
        if prev is not None and t <= prev[0]:
            return []
        if self.counter:
            if prev is None or x < prev[1]:
                return []
            x = (x - prev[1]) * 3600.0 / (t - prev[0])  # Wh over seconds -> W
        # Learnt levels have a memory in time (not in readings), whatever the interval.
        # (no max()/min() calls per reading: the comparison they make, in the same order)
        weight = 0.0
        if prev is not None:
            weight = (t - prev[0]) / LEARN_TAU
            weight = weight if weight < 1.0 else 1.0
        # Schedule.is_open at the local minute of t (Clock.weekday_time), in seconds of the day
        # rather than a datetime.time made per reading.
        loc = self.clock.local(t)
        day = int(loc // 86400)
        opened = False
        if (day + 3) % 7 in self.days:  # 1970-01-01 was a Thursday
            sec = int(loc - day * 86400)
            now = sec - sec % 60
            opens, closes = self.hours
            # (open across midnight when it closes before it opens)
            opened = (opens <= now < closes) if opens <= closes else (now >= opens or now < closes)
        if opened:
            self.run = 0
            self.n_busy += 1
            a = 1.0 / self.n_busy
            self.busy += (a if a > weight else weight) * (x - self.busy)
            return _IN_HOURS
        limit = self._limit()
        if limit is None or x <= limit:
            self.run = 0
            self.n_idle += 1
            a = 1.0 / self.n_idle
            self.idle += (a if a > weight else weight) * (x - self.idle)
            return _IN_HOURS
        self.run += 1
        if self.run < CONFIRM:  # not yet confirmed, but the rule explains the reading
            return _OUT_UNCONFIRMED
        sched, clock = self.sched, self.clock
        return [
            Finding(
                "off_schedule",
                _confirm_score(self.run),
                True,
                lambda: (
                    f"{self.node} drew {fmt_value(x, 'W')} at {clock.hhmm(t)},"
                    f" outside its hours ({sched.describe()}) it draws about"
                    f" {fmt_value(limit if sched.standby_watts else self.idle, 'W')}"
                ),
            )
        ]

    def _limit(self) -> float | None:
        if self.sched.standby_watts is not None:
            return self.sched.standby_watts
        if self.n_idle < 30 or self.n_busy < 30:
            return None  # still learning what "open" and "closed" look like
        if self.busy < BUSY_RATIO * self.idle:
            return None  # opening hours barely change its use (heating at night): no judgement
        return self.idle + 0.5 * (self.busy - self.idle)

    def dump(self) -> list:
        return [self.busy, self.idle, self.n_busy, self.n_idle, self.prev, self.run]

    def load(self, d: list) -> None:
        self.busy, self.idle, self.n_busy, self.n_idle, prev, self.run = d
        self.prev = tuple(prev) if prev else None


class CounterRule:
    """A counter (energy in Wh, drops) must never go backwards."""

    __slots__ = ("clock", "node", "prev", "unit")

    def __init__(self, node: str, unit: str, clock: Clock):
        self.node, self.unit, self.clock = node, unit, clock
        self.prev: float | None = None

    def step(self, t: float, x: float) -> Sequence[Finding]:
        prev, self.prev = self.prev, x
        if prev is None or x >= prev:
            return _NO_RESET
        return [
            Finding(
                "counter_reset",
                0.9,
                True,
                lambda: (
                    f"{self.node} counter went back from"
                    f" {fmt_value(prev, self.unit)} to {fmt_value(x, self.unit)} at"
                    f" {self.clock.hhmm(t)} (meter reset or replaced?)"
                ),
            )
        ]

    def dump(self) -> list:
        return [self.prev]

    def load(self, d: list) -> None:
        (self.prev,) = d


class StuckRule:
    """The same value too many times in a row: a frozen sensor or a stale register.

    "Too many" is ``stuck_readings``, or twice the longest run this channel has shown when
    healthy (of zeros, for a zero; of any other value, otherwise), whichever is more: a meter that
    reads exactly 0 W all day long (a lamp switched off) is not stuck, one whose zeros always came
    with noise is. Runs of zeros are not
    judged during the first ``LEARN_DAYS`` days, while the channel shows what its zeros are like,
    and never with ``zeros=False``: a street light's 0 W is the lamp rules' (expected by day or
    while switched off, their ``dark_at_night`` at night), not a stuck sensor's.
    """

    __slots__ = (
        "clock",
        "first",
        "limit",
        "longest",
        "longest_zero",
        "node",
        "raised",
        "run",
        "since",
        "unit",
        "value",
        "zeros",
    )

    LEARN_DAYS = 1

    def __init__(self, node: str, unit: str, limit: int, clock: Clock, zeros: bool = True):
        self.node, self.unit, self.limit, self.clock = node, unit, limit, clock
        self.zeros = zeros  # whether a run of zeros is this rule's to judge
        self.value: float | None = None
        self.run = 0
        self.since = 0.0
        self.longest = 0  # the longest run of a non-zero value that ended without an alarm
        self.longest_zero = 0  # the same for zeros (a lamp off all day reads 0 W for hours)
        self.raised = False  # whether the current run raised it
        self.first: float | None = None

    def step(self, t: float, x: float) -> Sequence[Finding]:
        if self.first is None:
            self.first = t
        if x != self.value:
            if not self.raised and self.value == 0:
                self.longest_zero = max(self.longest_zero, self.run)
            elif not self.raised:
                self.longest = max(self.longest, self.run)
            self.value, self.run, self.since, self.raised = x, 1, t, False
            return _NOT_STUCK
        self.run += 1
        needed = 2 * (self.longest_zero if x == 0 else self.longest)  # max(limit, that)
        if not needed > self.limit:
            needed = self.limit
        if self.run < needed or (
            x == 0 and (not self.zeros or t - self.first < self.LEARN_DAYS * 86400)
        ):
            return _NOT_STUCK
        self.raised = True
        run, since = self.run, self.since
        return [
            Finding(
                "stuck",
                min(1.0, 0.5 * run / needed),
                True,
                lambda: (
                    f"{self.node} read exactly {fmt_value(x, self.unit)} {run} times"
                    f" in a row since {self.clock.hhmm(since)} (stuck sensor?)"
                ),
            )
        ]

    def dump(self) -> list:
        return [
            self.value,
            self.run,
            self.since,
            self.longest,
            self.longest_zero,
            self.first,
            self.raised,
        ]

    def load(self, d: list) -> None:
        (
            self.value,
            self.run,
            self.since,
            self.longest,
            self.longest_zero,
            self.first,
            self.raised,
        ) = d
