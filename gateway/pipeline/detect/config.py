"""The ``[detect]`` section of gateway.toml: where the site is and what its nodes are.

Only the site (latitude, longitude, timezone) needs setting; everything else has a default that
works without tuning. Keys (all optional)::

    [detect]
    latitude = 45.76            # degrees north, for sunrise and sunset
    longitude = 4.84            # degrees east
    timezone = "Europe/Paris"   # IANA name: schedules and reasons are in local time
    threshold = 0.5             # THE default threshold: a score at or above it raises an event
    lamps = ["lamp-*"]          # node ids (glob patterns) that are street lights
    lamp_on_watts = 5.0         # a lamp drawing more than this is lit
    twilight_minutes = 30       # grace around sunrise and sunset for the lamp rules
    lamps_off = ["01:00", "05:00"]  # optional: lamps are switched off at night in this window
    drift_percent = 10.0        # a lit lamp drawing this much more than it learnt is drifting
    silent_intervals = 5        # a node is silent after this many of its reading intervals...
    silent_minutes = 30         # ...and at least this long
    stuck_readings = 30         # identical readings in a row before a sensor counts as stuck

    [[detect.buildings]]        # one table per group of meters with a schedule
    nodes = ["school-*"]        # node ids (glob patterns)
    days = "mon-fri"            # "mon-fri", "mon,wed,fri", "daily"
    open = "07:30"              # local time
    close = "18:30"
    standby_watts = 400.0       # optional: drawing more than this outside hours is waste;
                                # when absent, learnt from the meter's own out-of-hours use
    school = true               # optional: closed through the school holidays of school_zone

    # The town's calendar (gateway/pipeline/calendar.py), for the building meters:
    country = "FR"              # public holidays ("" for none); subdivision = "57" for Moselle
    school_zone = "C"           # French school zone A, B or C (needed by school = true)
    closing_days = "/etc/reverbere/fermetures.txt"  # optional: the town's own closing days

    [[detect.lighting]]         # the town's lighting schedule per group of lamps: see
    name = "Rue de la Mairie"   # gateway/pipeline/detect/lighting.py for its keys
    nodes = ["lamp-00*"]

:func:`DetectConfig.from_mapping` takes the parsed ``[detect]`` table (a dict) and raises
:class:`DetectConfigError` naming the key, so the gateway's config loader can add file and line.
"""

import fnmatch
from dataclasses import dataclass, field
from datetime import date
from datetime import time as dtime
from functools import cached_property
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if TYPE_CHECKING:
    from gateway.pipeline.calendar import Calendar

DEFAULT_THRESHOLD = 0.5
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# The highest value of each number (the lowest is 0, or 1 for counts), so that a slip of the
# keyboard (``silent_minutes = 300000``) is an error rather than a rule that never fires.
_MAXIMUM = {
    "lamp_on_watts": 100_000.0,
    "twilight_minutes": 240.0,
    "drift_percent": 1000.0,
    "silent_minutes": 7 * 1440.0,  # a week
    "silent_intervals": 10_000,
    "stuck_readings": 1_000_000,
    "standby_watts": 1_000_000.0,
}


class DetectConfigError(ValueError):
    """A bad value in the ``[detect]`` section; ``key`` is the dotted key at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(f"detect.{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class Schedule:
    """Opening hours of a building's meters: local weekdays (0 = Monday) and a time range."""

    nodes: tuple[str, ...]
    days: frozenset[int]
    open: dtime
    close: dtime
    standby_watts: float | None = None
    school: bool = False  # closed through the school holidays of [detect] school_zone

    def is_open(self, weekday: int, at: dtime) -> bool:
        if weekday not in self.days:
            return False
        if self.open <= self.close:
            return self.open <= at < self.close
        return at >= self.open or at < self.close  # open across midnight

    def describe(self) -> str:
        return f"{_describe_days(self.days)} {_hhmm(self.open)}-{_hhmm(self.close)}"


@dataclass(frozen=True)
class DetectConfig:
    latitude: float = 48.8566
    longitude: float = 2.3522
    timezone: str = "UTC"
    threshold: float = DEFAULT_THRESHOLD
    lamps: tuple[str, ...] = ("lamp-*",)
    lamp_on_watts: float = 5.0
    twilight_minutes: float = 30.0
    lamps_off: tuple[dtime, dtime] | None = None
    drift_percent: float = 10.0
    silent_intervals: int = 5
    silent_minutes: float = 30.0
    stuck_readings: int = 30
    buildings: tuple[Schedule, ...] = field(default_factory=tuple)
    # [[detect.lighting]] groups (gateway.pipeline.detect.lighting.LightingGroup): their lamps
    # are judged by their schedule; other lamps by sunrise, sunset and ``lamps_off``.
    lighting: tuple[Any, ...] = field(default_factory=tuple)
    # The town's calendar (gateway.pipeline.calendar): public holidays of ``country`` ("" for
    # none) and ``subdivision``, school holidays of ``school_zone`` for buildings with
    # ``school = true``, the town's own ``closing_days`` (a file of dates).
    country: str = "FR"
    subdivision: str | None = None
    school_zone: str | None = None
    closing_days: str | None = None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @cached_property
    def calendar(self) -> "Calendar":
        """The town's calendar (its closing-days file read once)."""
        from gateway.pipeline.calendar import Calendar, read_closing_days

        days = read_closing_days(self.closing_days) if self.closing_days else frozenset()
        return Calendar(self.country, self.subdivision, days)

    def is_lamp(self, node: str) -> bool:
        return any(fnmatch.fnmatchcase(node, p) for p in self.lamps) or (
            self.lighting_for(node) is not None
        )

    def lighting_for(self, node: str) -> Any:
        """The first ``[[detect.lighting]]`` group whose patterns match ``node``, or None."""
        for g in self.lighting:
            if any(fnmatch.fnmatchcase(node, p) for p in g.nodes):
                return g
        return None

    def schedule_for(self, node: str) -> Schedule | None:
        for s in self.buildings:
            if any(fnmatch.fnmatchcase(node, p) for p in s.nodes):
                return s
        return None

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> "DetectConfig":
        """Build from the parsed ``[detect]`` table; unknown keys and bad values raise
        :class:`DetectConfigError`."""
        known = {f for f in cls.__dataclass_fields__}
        kw: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                names = ", ".join(sorted(known))
                raise DetectConfigError(key, f"unknown key (known: {names})")
            kw[key] = _convert(key, value)
        cfg = cls(**kw)
        try:
            cfg.tz  # noqa: B018 - validate the name now, not at the first reading
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise DetectConfigError("timezone", f"unknown time zone {cfg.timezone!r}") from e
        _check_calendar(cfg)
        return cfg


def _convert(key: str, value: Any) -> Any:
    if key in (
        "latitude",
        "longitude",
        "threshold",
        "lamp_on_watts",
        "twilight_minutes",
        "drift_percent",
        "silent_minutes",
    ):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DetectConfigError(key, f"expected a number, got {value!r}")
        value = float(value)
        if key == "latitude" and not -90 <= value <= 90:
            raise DetectConfigError(key, "must be between -90 and 90")
        if key == "longitude" and not -180 <= value <= 180:
            raise DetectConfigError(key, "must be between -180 and 180")
        if key == "threshold" and not 0 < value <= 1:
            raise DetectConfigError(key, "must be in (0, 1]")
        if value < 0:
            raise DetectConfigError(key, "must not be negative")
        return _at_most(key, value)
    if key in ("silent_intervals", "stuck_readings"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DetectConfigError(key, f"expected a positive integer, got {value!r}")
        return _at_most(key, value)
    if key in ("country", "subdivision", "school_zone", "closing_days"):
        if not isinstance(value, str):
            raise DetectConfigError(key, f"expected a string, got {value!r}")
        return value.upper() if key in ("country", "school_zone") else value
    if key == "timezone":
        if not isinstance(value, str):
            raise DetectConfigError(key, "expected an IANA time zone name")
        return value
    if key == "lamps":
        return _patterns(key, value)
    if key == "lamps_off":
        if not isinstance(value, list) or len(value) != 2:
            raise DetectConfigError(key, 'expected ["HH:MM", "HH:MM"]')
        return (_clock(key, value[0]), _clock(key, value[1]))
    if key == "lighting":
        from gateway.pipeline.detect.lighting import parse_groups  # it imports this module

        return parse_groups(key, value)
    if key == "buildings":
        if not isinstance(value, list):
            raise DetectConfigError(key, "expected an array of tables [[detect.buildings]]")
        return tuple(_schedule(f"buildings[{i}]", b) for i, b in enumerate(value))
    raise AssertionError(key)


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise DetectConfigError(key, f"expected true or false, got {value!r}")
    return value


def _check_calendar(cfg: "DetectConfig") -> None:
    """The calendar's keys, checked when the config is read rather than at the first reading:
    a known country and subdivision, a school zone for schools, a readable closing-days file."""
    from gateway.pipeline.calendar import SCHOOL_ZONES, CalendarError, is_public_holiday

    if cfg.school_zone is not None and cfg.school_zone not in SCHOOL_ZONES:
        raise DetectConfigError("school_zone", f"expected A, B or C, got {cfg.school_zone!r}")
    for i, b in enumerate(cfg.buildings):
        if b.school and cfg.school_zone is None:
            raise DetectConfigError(
                f"buildings[{i}].school", "a school needs [detect] school_zone (A, B or C)"
            )
    try:
        if cfg.country:
            is_public_holiday(date(2026, 1, 1), cfg.country, cfg.subdivision)
        cfg.calendar  # noqa: B018 - reads the closing days now
    except CalendarError as e:
        key = "closing_days" if cfg.closing_days and "closing" in str(e) else "country"
        raise DetectConfigError(key, str(e)) from e


def _at_most(key: str, value: float) -> float:
    """``value``, or ``DetectConfigError`` when above the key's ``_MAXIMUM``."""
    high = _MAXIMUM.get(key.rsplit(".", 1)[-1])
    if high is not None and value > high:
        raise DetectConfigError(key, f"must be at most {high:g}, got {value:g}")
    return value


def _patterns(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DetectConfigError(key, "expected a list of node id patterns")
    return tuple(value)


def _clock(key: str, value: Any) -> dtime:
    try:
        h, m = str(value).split(":")
        return dtime(int(h), int(m))
    except ValueError as e:
        raise DetectConfigError(key, f"expected a local time HH:MM, got {value!r}") from e


def _schedule(key: str, b: Any) -> Schedule:
    if not isinstance(b, dict):
        raise DetectConfigError(key, "expected a table")
    extra = set(b) - {"nodes", "days", "open", "close", "standby_watts", "school"}
    if extra:
        raise DetectConfigError(key + "." + sorted(extra)[0], "unknown key")
    for k in ("nodes", "open", "close"):
        if k not in b:
            raise DetectConfigError(key + "." + k, "missing")
    standby = b.get("standby_watts")
    if standby is not None and (isinstance(standby, bool) or not isinstance(standby, int | float)):
        raise DetectConfigError(key + ".standby_watts", "expected a number")
    if standby is not None:
        if standby < 0:
            raise DetectConfigError(key + ".standby_watts", "must not be negative")
        _at_most(key + ".standby_watts", standby)
    return Schedule(
        nodes=_patterns(key + ".nodes", b["nodes"]),
        days=_parse_days(key + ".days", b.get("days", "mon-fri")),
        open=_clock(key + ".open", b["open"]),
        close=_clock(key + ".close", b["close"]),
        standby_watts=None if standby is None else float(standby),
        school=_flag(key + ".school", b.get("school", False)),
    )


def _parse_days(key: str, text: Any) -> frozenset[int]:
    if not isinstance(text, str):
        raise DetectConfigError(key, 'expected e.g. "mon-fri" or "mon,wed,fri"')
    text = text.strip().lower()
    if text == "daily":
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        a, _, b = part.strip().partition("-")
        try:
            i = _DAYS.index(a[:3])
            j = _DAYS.index(b[:3]) if b else i
        except ValueError as e:
            raise DetectConfigError(key, f"unknown day in {text!r}") from e
        k = i
        while True:
            days.add(k)
            if k == j:
                break
            k = (k + 1) % 7
    return frozenset(days)


def _describe_days(days: frozenset[int]) -> str:
    if len(days) == 7:
        return "daily"
    ds = sorted(days)
    if ds == list(range(ds[0], ds[-1] + 1)) and len(ds) > 2:
        return f"{_DAYS[ds[0]]}-{_DAYS[ds[-1]]}"
    return ",".join(_DAYS[d] for d in ds)


def _hhmm(t: dtime) -> str:
    return f"{t.hour:02d}:{t.minute:02d}"
