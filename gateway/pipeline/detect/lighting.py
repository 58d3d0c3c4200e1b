"""The town's lighting schedule, per group of lamps, and the lighting rules that judge by it.

Most French communes switch their street lights off for part of the night (*extinction
nocturne*) and dim them in the late evening, to save most of a lighting budget. A
``[[detect.lighting]]`` group of gateway.toml says, for some lamps (a street, a district, a
control cabinet: node ids or glob patterns), what their cabinet does::

    [[detect.lighting]]
    name = "Rue de la Mairie"        # named in every reason and in `reverbere gateway check`
    nodes = ["lamp-00*"]
    on_after_sunset_minutes = 15     # lit at sunset + 15 min (negative: before sunset)
    off_before_sunrise_minutes = 15  # dark at sunrise - 15 min
    watts = 70.0                     # optional: a lamp's full power; learnt when absent
    standby_watts = 1.5              # optional: what a lamp draws when off (default 0)
    dim_tolerance_percent = 15       # a dimmed lamp may draw this much over its step

    [[detect.lighting.switch_off]]   # extinction nocturne: any number of windows
    from = "01:00"                   # local times; no from/to: the whole night
    to = "05:00"
    days = "sun-thu"                 # the weekday of the EVENING the night starts
    season = "all"                   # "summer time", "winter time" or ["06-01", "08-31"]

    [[detect.lighting.dim]]          # dimming steps, every lit night
    from = "22:00"
    percent = 50                     # until the next step or the end of the night

A night belongs to the local date of its evening: the night of Friday to Saturday is
Friday's, whatever the clock says after midnight. :func:`night_plan` turns a group and a night
into periods of local time with the level the lamps should have; :class:`LightingRule` compares
each reading of a lamp's power with the period it falls in. Local times come from the site's
time zone, so the switch to summer time (the last Sunday of March, 02:00 -> 03:00) makes the
night one hour shorter and a 01:00-05:00 window three hours long; the last Sunday of October
makes it five. A time that does not exist that night (02:30 in March) is read with the offset
before the change; one that happens twice (02:30 in October) is the first one.
"""

import datetime as dt
import itertools
from dataclasses import dataclass
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from astral import Observer
from astral.sun import sunrise, sunset

from gateway.pipeline.detect.config import (
    DetectConfig,
    DetectConfigError,
    _at_most,
    _clock,
    _describe_days,
    _hhmm,
    _parse_days,
    _patterns,
)
from gateway.pipeline.detect.events import Finding
from gateway.pipeline.detect.rules import CONFIRM, Clock, LampRule, fmt_value

CLOCK_GRACE = 10 * 60  # seconds around a clock-set switch (a cabinet's clock drifts a little)
DIM_LEARN = 30  # lit readings at full power that make a group's full power when not given
MAX_OFFSET_MINUTES = 180  # on/off offsets from sunset/sunrise, either way
_NOON = dt.time(12, 0)
_GROUP_KEYS = {
    "name",
    "nodes",
    "on_after_sunset_minutes",
    "off_before_sunrise_minutes",
    "watts",
    "standby_watts",
    "dim_tolerance_percent",
    "switch_off",
    "dim",
}

# What a lamp should be doing in a period: the kinds of the lighting rules follow from it.
DAY, LIT, OFF = "day", "lit", "off"
_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Season:
    """When in the year a switch-off window applies, judged on the evening's date: every night,
    while the town's clock is on summer (or winter) time, or between two dates (MM-DD, both
    included; a range may run across the new year)."""

    kind: str = "all"  # "all", "summer time", "winter time", "dates"
    first: tuple[int, int] = (1, 1)
    last: tuple[int, int] = (12, 31)

    def includes(self, evening: dt.date, tz: ZoneInfo) -> bool:
        if self.kind == "all":
            return True
        if self.kind in ("summer time", "winter time"):
            noon = dt.datetime.combine(evening, _NOON, tz)
            summer = bool(noon.dst())
            return summer if self.kind == "summer time" else not summer
        md = (evening.month, evening.day)
        if self.first <= self.last:
            return self.first <= md <= self.last
        return md >= self.first or md <= self.last

    def describe(self) -> str:
        if self.kind == "dates":
            return "{:02d}-{:02d} to {:02d}-{:02d}".format(*self.first, *self.last)
        return "every season" if self.kind == "all" else self.kind


@dataclass(frozen=True)
class SwitchOff:
    """A switch-off window: lamps dark from ``start`` to ``end`` (local times; None for both:
    the whole night) on the nights whose evening is one of ``days`` (0 = Monday) in ``season``."""

    start: dt.time | None
    end: dt.time | None
    days: frozenset[int]
    season: Season

    def applies(self, evening: dt.date, tz: ZoneInfo) -> bool:
        return evening.weekday() in self.days and self.season.includes(evening, tz)

    def describe(self) -> str:
        hours = "all night" if self.start is None else f"{_hhmm(self.start)}-{_hhmm(self.end)}"
        extra = [_days_text(self.days)] if len(self.days) < 7 else []
        if self.season.kind != "all":
            extra.append(self.season.describe())
        return hours + (f" ({', '.join(extra)})" if extra else "")


def _days_text(days: frozenset[int]) -> str:
    """``sun-thu`` for a run of days across the week's end, as a town writes weeknights."""
    for first in range(7):
        run = [(first + k) % 7 for k in range(len(days))]
        if len(days) > 2 and set(run) == days:
            return f"{_DAY_NAMES[run[0]]}-{_DAY_NAMES[run[-1]]}"
    return _describe_days(days)


@dataclass(frozen=True)
class DimStep:
    """From ``start`` (local time) lamps draw ``percent`` of their full power, until the next
    step or the end of the night."""

    start: dt.time
    percent: float


@dataclass(frozen=True)
class LightingGroup:
    """One group of lamps and its cabinet's schedule (see the module's docstring)."""

    name: str
    nodes: tuple[str, ...]
    on_after_sunset: float = 0.0  # minutes
    off_before_sunrise: float = 0.0  # minutes
    switch_off: tuple[SwitchOff, ...] = ()
    dim: tuple[DimStep, ...] = ()
    watts: float | None = None
    standby_watts: float = 0.0
    dim_tolerance_percent: float = 15.0


class Period(NamedTuple):
    """A stretch of one night with what the schedule expects: ``level`` 0 (dark), 1 (full
    power) or the dimmed fraction; ``start`` and ``end`` are aware local datetimes (for a
    duration, subtract their ``timestamp()``: Python subtracts two datetimes of one zone as
    wall-clock times, an hour off across a change of clock)."""

    start: dt.datetime
    end: dt.datetime
    level: float
    reason: str


@dataclass(frozen=True)
class _Span:
    """A period in Unix seconds, with what it is (DAY, LIT, OFF) and the grace of its edges."""

    start: float
    end: float
    level: float
    state: str
    reason: str
    start_grace: float
    end_grace: float


def _at(evening: dt.date, t: dt.time, tz: ZoneInfo) -> dt.datetime:
    """``t`` on the night of ``evening``: afternoon and evening times on that date, morning
    times on the next."""
    day = evening if t >= _NOON else evening + dt.timedelta(days=1)
    return dt.datetime.combine(day, t, tz)


def _local(t: dt.datetime) -> str:
    return t.strftime("%H:%M %Z")


def _spans(group: LightingGroup, evening: dt.date, cfg: DetectConfig) -> list[_Span]:
    """The night of ``evening`` from noon to noon, in periods; [] when the sun does not set or
    rise (no judgement)."""
    tz = cfg.tz
    observer = Observer(cfg.latitude, cfg.longitude)
    try:
        sun_set = sunset(observer, evening, tz)
        sun_rise = sunrise(observer, evening + dt.timedelta(days=1), tz)
    except ValueError:
        return []
    on = sun_set + dt.timedelta(minutes=group.on_after_sunset)
    off = sun_rise - dt.timedelta(minutes=group.off_before_sunrise)
    noon0 = dt.datetime.combine(evening, _NOON, tz)
    noon1 = dt.datetime.combine(evening + dt.timedelta(days=1), _NOON, tz)
    sun_grace = cfg.twilight_minutes * 60
    ts_on, ts_off = on.timestamp(), off.timestamp()
    if ts_on >= ts_off:  # offsets longer than a short summer night: dark all night
        return [_Span(noon0.timestamp(), noon1.timestamp(), 0.0, DAY, "day: never lit", 0, 0)]
    windows = []
    for w in group.switch_off:
        if not w.applies(evening, tz):
            continue
        if w.start is None:
            windows.append((ts_on, ts_off, w))
        else:
            a = max(ts_on, _at(evening, w.start, tz).timestamp())
            b = min(ts_off, _at(evening, w.end, tz).timestamp())
            if a < b:
                windows.append((a, b, w))
    windows.sort(key=lambda w: w[0] - w[1])  # overlapping: the longest names the period
    steps = sorted(
        ((_at(evening, s.start, tz).timestamp(), s) for s in group.dim), key=lambda p: p[0]
    )
    edges = {ts_on, ts_off}
    edges.update(x for a, b, _ in windows for x in (a, b))
    edges.update(ts for ts, _ in steps if ts_on < ts < ts_off)
    edges = sorted(edges)

    def offset(minutes: float, sign: str) -> str:
        return f" {sign} {minutes:g} min" if minutes else ""

    lit_from = f"{_local(on)} (sunset {_local(sun_set)}{offset(group.on_after_sunset, '+')})"
    lit_to = f"{_local(off)} (sunrise {_local(sun_rise)}{offset(group.off_before_sunrise, '-')})"
    out = [_Span(noon0.timestamp(), ts_on, 0.0, DAY, f"day: dark until {lit_from}", 0, sun_grace)]
    for a, b in itertools.pairwise(edges):
        mid = (a + b) / 2
        win = next((w for x, y, w in windows if x <= mid < y), None)
        if win is not None:
            level, state, reason = 0.0, OFF, f"switch-off {win.describe()}"
        else:
            step = None
            for ts, s in steps:
                if ts <= mid:
                    step = s
            if step is None or step.percent >= 100:
                level, state, reason = 1.0, LIT, f"lit from {lit_from} to {lit_to}"
            else:
                level, state = step.percent / 100, LIT
                reason = f"dimmed to {step.percent:g} % from {_hhmm(step.start)}"
        prev = out[-1]
        if prev.state == state and prev.level == level and prev.reason == reason:
            out[-1] = _Span(prev.start, b, level, state, reason, prev.start_grace, 0)
            continue
        grace = sun_grace if a in (ts_on, ts_off) else CLOCK_GRACE
        out.append(_Span(a, b, level, state, reason, grace, 0))
    lit_end = f"day: dark from {lit_to}"
    out.append(_Span(ts_off, noon1.timestamp(), 0.0, DAY, lit_end, sun_grace, 0))
    # Each span's end grace is its successor's start grace: the same switch.
    return [
        _Span(s.start, s.end, s.level, s.state, s.reason, s.start_grace, n.start_grace)
        for s, n in zip(out, [*out[1:], out[-1]], strict=True)
    ]


def evening_of(t: float, tz: ZoneInfo) -> dt.date:
    """The night a Unix time belongs to: the local date of its evening (noon to noon)."""
    local = dt.datetime.fromtimestamp(t, tz)
    return local.date() if local.time() >= _NOON else local.date() - dt.timedelta(days=1)


def night_plan(group: LightingGroup, evening: dt.date, cfg: DetectConfig) -> list[Period]:
    """What ``group``'s schedule expects on the night of ``evening`` (noon to noon, local
    time): day, lit, dimmed and switched-off periods in order, each with its level (0 to 1)
    and the words that say why. The CLI's ``gateway check`` prints it; the console may too.
    Empty when the sun neither sets nor rises that day."""
    tz = cfg.tz
    return [
        Period(
            dt.datetime.fromtimestamp(round(s.start), tz),  # to the second: sun times are not
            dt.datetime.fromtimestamp(round(s.end), tz),  # known better than a minute
            s.level,
            s.reason,
        )
        for s in _spans(group, evening, cfg)
    ]


def tonight(group: LightingGroup, cfg: DetectConfig, now: float) -> list[Period]:
    """What ``group``'s schedule expects tonight as of ``now`` (Unix seconds): the night in
    progress until its morning switch-off, then the coming one (asked at 10:00, it is this
    evening's; at 03:00, the night that began yesterday evening)."""
    plan = night_plan(group, evening_of(now, cfg.tz), cfg)
    if plan and now < plan[-1].start.timestamp():
        return plan
    return night_plan(group, dt.datetime.fromtimestamp(now, cfg.tz).date(), cfg)


class UnknownGroup(LookupError):
    """No ``[[detect.lighting]]`` group has that name, or none holds that node."""


def group_named(
    cfg: DetectConfig, name: str | None = None, node: str | None = None
) -> LightingGroup:
    """The lighting group called ``name`` (or the one ``node`` belongs to); raises
    :class:`UnknownGroup` saying which groups there are."""
    group = cfg.lighting_for(node) if node is not None else None
    if name is not None:
        group = next((g for g in cfg.lighting if g.name == name), None)
    if group is None:
        known = ", ".join(repr(g.name) for g in cfg.lighting) or "none"
        what = f"lighting group {name!r}" if name is not None else f"lighting group for {node!r}"
        raise UnknownGroup(f"no {what} in [[detect.lighting]] (groups: {known})")
    return group


def _score(run: int, base: float = 0.5) -> float:
    return min(1.0, base + 0.05 * (run - CONFIRM))


class LightingRule:
    """The lamp rules of a lamp in a lighting group, judged by its group's schedule:

    * ``dark_at_night``: drawing nothing when the schedule says lit (a safety matter: listed
      first, and scored from 0.75 where the waste kinds start at 0.5);
    * ``lit_in_switch_off``: lit during a switch-off window;
    * ``not_dimmed``: drawing more than its dimming step allows (full power learnt from the
      lamp's own readings at full power unless the group gives ``watts``);
    * ``lit_by_day``: lit between the morning's switch-off and the evening's switch-on;
    * ``drift``: as for any lamp (:class:`~gateway.pipeline.detect.rules.LampRule`), but not
      from readings that are ``not_dimmed``.

    No opinion within the grace of a switch (``twilight_minutes`` around the sun's, ten
    minutes around the cabinet clock's).
    """

    __slots__ = ("cfg", "clock", "full", "group", "lamp", "n_full", "node", "runs", "span", "unit")

    def __init__(self, node: str, unit: str, group: LightingGroup, cfg: DetectConfig, clock: Clock):
        self.node, self.unit, self.group, self.cfg, self.clock = node, unit, group, cfg, clock
        self.lamp = LampRule(node, unit, cfg, clock)  # for its drift rule
        self.runs = {"dark_at_night": 0, "lit_in_switch_off": 0, "not_dimmed": 0, "lit_by_day": 0}
        self.full = 0.0
        self.n_full = 0
        self.span: _Span | None = None

    def _span(self, t: float) -> _Span | None:
        s = self.span
        if s is not None and s.start <= t < s.end:
            return s
        for s in _spans(self.group, evening_of(t, self.cfg.tz), self.cfg):
            if s.start <= t < s.end:
                self.span = s
                return s
        return None

    def switching(self, t: float) -> bool:
        """Within the grace of a switch the schedule makes (dusk, dawn, a switch-off, a dimming
        step): the statistical detector leaves it to these rules."""
        s = self._span(t)
        return s is not None and (t - s.start <= s.start_grace or s.end - t <= s.end_grace)

    def lit_steady(self, t: float) -> bool:
        """Whether the schedule says lit (full or dimmed) at ``t``, away from any switch: the
        statistical detector judges a grouped lamp's level then only. Its switching is the
        schedule's and these rules judge it: the sun's switches move by an hour in local time
        on the nights the clock changes, and a baseline by hour would take that for news."""
        s = self._span(t)
        return s is not None and s.state == LIT and not self.switching(t)

    def full_watts(self) -> float | None:
        if self.group.watts is not None:
            return self.group.watts
        return self.full if self.n_full >= DIM_LEARN else None

    def expected_watts(self, level: float) -> float | None:
        """What a lamp of the group should draw at ``level``: its standby when dark."""
        if level == 0:
            return self.group.standby_watts
        full = self.full_watts()
        return None if full is None else level * full

    def step(self, t: float, x: float) -> list[Finding]:
        s = self._span(t)
        if s is None or self.switching(t):
            return []
        lit = x > max(self.cfg.lamp_on_watts, self.group.standby_watts)
        if s.state == LIT:
            bad = {"dark_at_night": not lit}
            if lit and s.level >= 1:
                self.n_full += 1
                self.full += (x - self.full) / min(self.n_full, 300)
            elif lit:
                full = self.full_watts()
                tol = 1 + self.group.dim_tolerance_percent / 100
                bad["not_dimmed"] = full is not None and x > s.level * full * tol
        elif s.state == OFF:
            bad = {"lit_in_switch_off": lit}
        else:
            bad = {"lit_by_day": lit}
        out = []
        for kind in ("dark_at_night", "lit_in_switch_off", "not_dimmed", "lit_by_day"):
            if not bad.get(kind, False):
                self.runs[kind] = 0
                out.append(Finding(kind, 0.0, False, str))
                continue
            run = self.runs[kind] = self.runs[kind] + 1
            if run < CONFIRM:  # not confirmed yet, no score; but the rule explains the reading
                out.append(Finding(kind, 0.0, True, str))
                continue
            score = _score(run, 0.75 if kind == "dark_at_night" else 0.5)
            # Waste (every kind but the dark lamp) is what it draws above the schedule's level.
            expected = None if kind == "dark_at_night" else self.expected_watts(s.level)
            out.append(Finding(kind, score, True, self._reason(kind, t, x, s), expected))
        if s.state == LIT and lit and not bad.get("not_dimmed"):
            # Not while the dimmer fails: drift compares with the same hour's (dimmed) level.
            out.append(self.lamp._drift(t, x))
        return out

    def _reason(self, kind: str, t: float, x: float, s: _Span):
        def words() -> str:
            at = _local(dt.datetime.fromtimestamp(t, self.cfg.tz))
            head = f"{self.node} drew {fmt_value(x, self.unit)} at {at}"
            where = f"lighting group {self.group.name!r}"
            if kind == "dark_at_night":
                return f"{head}, {where} is {s.reason}"
            if kind == "lit_in_switch_off":
                return f"{head}, during the {s.reason} of {where}"
            if kind == "not_dimmed":
                allowed = fmt_value(round(s.level * (self.full_watts() or 0.0)), self.unit)
                return f"{head}, {where} is {s.reason} (about {allowed})"
            return f"{head}, by day: {where} is {s.reason.removeprefix('day: ')}"

        return words

    def dump(self) -> list:
        return [self.lamp.dump(), self.runs, round(self.full, 3), self.n_full]

    def load(self, d: list) -> None:
        if len(d) == 5:  # saved by a LampRule, before the lamp joined a group: keep its drift
            self.lamp.load(d)
            return
        lamp, runs, self.full, self.n_full = d
        self.lamp.load(lamp)
        self.runs.update(runs)


# -- configuration: the [[detect.lighting]] tables ---------------------------------------------


def parse_groups(key: str, value: Any) -> tuple[LightingGroup, ...]:
    """The ``[[detect.lighting]]`` array of tables; raises ``DetectConfigError`` naming the key."""
    if not isinstance(value, list):
        raise DetectConfigError(key, "expected an array of tables [[detect.lighting]]")
    groups = tuple(_group(f"{key}[{i}]", g) for i, g in enumerate(value))
    names = [g.name for g in groups]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise DetectConfigError(f"{key}[{i}].name", f"{name!r} names two groups")
    return groups


def _number(key: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DetectConfigError(key, f"expected a number, got {value!r}")
    if not low <= value <= high:
        raise DetectConfigError(key, f"must be between {low:g} and {high:g}, got {value:g}")
    return float(value)


def _only(key: str, table: Any, known: set[str]) -> dict:
    if not isinstance(table, dict):
        raise DetectConfigError(key, "expected a table")
    extra = sorted(set(table) - known)
    if extra:
        raise DetectConfigError(
            f"{key}.{extra[0]}", f"unknown key (known: {', '.join(sorted(known))})"
        )
    return table


def _group(key: str, g: Any) -> LightingGroup:
    g = _only(key, g, _GROUP_KEYS)
    for k in ("name", "nodes"):
        if k not in g:
            raise DetectConfigError(f"{key}.{k}", "missing")
    if not isinstance(g["name"], str) or not g["name"].strip():
        raise DetectConfigError(f"{key}.name", "expected the group's name")
    watts = g.get("watts")
    if watts is not None:
        watts = _at_most(f"{key}.watts", _number(f"{key}.watts", watts, 0.1, 100_000))
    switch_off = g.get("switch_off", [])
    dim = g.get("dim", [])
    for k, v in (("switch_off", switch_off), ("dim", dim)):
        if not isinstance(v, list):
            raise DetectConfigError(
                f"{key}.{k}", f"expected an array of tables [[detect.lighting.{k}]]"
            )
    return LightingGroup(
        name=g["name"].strip(),
        nodes=_patterns(f"{key}.nodes", g["nodes"]),
        on_after_sunset=_number(
            f"{key}.on_after_sunset_minutes",
            g.get("on_after_sunset_minutes", 0),
            -MAX_OFFSET_MINUTES,
            MAX_OFFSET_MINUTES,
        ),
        off_before_sunrise=_number(
            f"{key}.off_before_sunrise_minutes",
            g.get("off_before_sunrise_minutes", 0),
            -MAX_OFFSET_MINUTES,
            MAX_OFFSET_MINUTES,
        ),
        switch_off=tuple(
            _switch_off(f"{key}.switch_off[{i}]", w) for i, w in enumerate(switch_off)
        ),
        dim=_dim_steps(f"{key}.dim", dim),
        watts=watts,
        standby_watts=_number(f"{key}.standby_watts", g.get("standby_watts", 0), 0, 10_000),
        dim_tolerance_percent=_number(
            f"{key}.dim_tolerance_percent", g.get("dim_tolerance_percent", 15), 0, 100
        ),
    )


def _night_order(t: dt.time) -> tuple[int, dt.time]:
    """Sorts times as a night runs: afternoon and evening first, then the morning."""
    return (0 if t >= _NOON else 1, t)


def _switch_off(key: str, w: Any) -> SwitchOff:
    w = _only(key, w, {"from", "to", "days", "season"})
    if ("from" in w) != ("to" in w):
        raise DetectConfigError(
            f"{key}.{'to' if 'from' in w else 'from'}", "missing (or give neither: all night)"
        )
    start = end = None
    if "from" in w:
        start, end = _clock(f"{key}.from", w["from"]), _clock(f"{key}.to", w["to"])
        if _night_order(start) >= _night_order(end):
            raise DetectConfigError(
                f"{key}.to",
                f"{_hhmm(end)} is not after {_hhmm(start)} in the night (a night runs from noon"
                " to noon)",
            )
    return SwitchOff(
        start,
        end,
        _parse_days(f"{key}.days", w.get("days", "daily")),
        _season(f"{key}.season", w.get("season", "all")),
    )


def _season(key: str, v: Any) -> Season:
    if isinstance(v, str) and v.strip().lower() in ("all", "summer time", "winter time"):
        return Season(v.strip().lower())
    if isinstance(v, list) and len(v) == 2:
        try:
            first, last = (tuple(int(p) for p in str(d).split("-")) for d in v)
            for m, d in (first, last):
                dt.date(2024, m, d)  # a leap year: 02-29 is a date
        except (ValueError, TypeError) as e:
            raise DetectConfigError(key, f'expected ["MM-DD", "MM-DD"], got {v!r}') from e
        return Season("dates", first, last)
    raise DetectConfigError(
        key, f'expected "all", "summer time", "winter time" or ["MM-DD", "MM-DD"], got {v!r}'
    )


def _dim_steps(key: str, steps: list) -> tuple[DimStep, ...]:
    out = []
    for i, s in enumerate(steps):
        s = _only(f"{key}[{i}]", s, {"from", "percent"})
        for k in ("from", "percent"):
            if k not in s:
                raise DetectConfigError(f"{key}[{i}].{k}", "missing")
        out.append(
            DimStep(
                _clock(f"{key}[{i}].from", s["from"]),
                _number(f"{key}[{i}].percent", s["percent"], 0, 100),
            )
        )
    return tuple(sorted(out, key=lambda s: _night_order(s.start)))
