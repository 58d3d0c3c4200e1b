"""Energy profiles of a small town's loads, and the anomalies injected into them.

- ``StreetLight``: on from sunset to sunrise at the town's latitude and longitude (NOAA's
  approximate solar equations), full power in the evening and morning, dimmed in the middle of
  the night; or, given a cabinet's schedule (``switch_off``), dark in that window of the night
  (the town's *extinction nocturne*, as ``[[detect.lighting]]`` says); an ambient light sensor.
- ``Building``: a public building (school, town hall): base load, weekday occupancy from 8 to 18
  (but on the town's closing days), electric heating that follows the outdoor temperature and
  the season; indoor temperature.

Both add seeded noise and keep an energy counter (Wh) that integrates their power. Anomalies
(``Anomaly``: node, channel, kind, start, end) change what the profile reads inside their
window; the list is the ground truth the detectors are scored against.
"""

import math
import random
from dataclasses import dataclass
from typing import ClassVar

# Vaison-la-Romaine, a small town in Provence.
LATITUDE = 44.24
LONGITUDE = 5.07

KINDS = (
    "lit_by_day",  # a street light on in daylight (a stuck photocell or relay)
    "out_at_night",  # a street light off when it should be on (a dead lamp)
    "spike",  # consumption several times the normal for a while
    "drift",  # consumption creeping up over days (a failing driver)
    "stuck",  # the sensor repeats one value
    "counter_reset",  # the energy counter falls back to zero (meter swapped, reset)
    "silent",  # the node sends nothing (power cut, radio down); it reboots at the end
    # A building's meter (issue 14):
    "dropout",  # the meter reads 0 W and its counter stands still, the node still speaks
    "stuck_meter",  # the meter's registers freeze: the same power, a counter that stands still
    "night_base_load",  # something left on at night: the base load raised from 22:00 to 06:00
    "holiday_as_workday",  # a closing day of the town on which the building runs as on a weekday
    # A lighting schedule (issue 15): only with a switch-off window, so not in LAMP_KINDS.
    "lit_in_switch_off",  # a street light left on at full power in the switch-off window
)
LAMP_KINDS = ("lit_by_day", "out_at_night", "spike", "drift", "stuck", "counter_reset", "silent")
BUILDING_KINDS = (
    "dropout",
    "night_base_load",
    "stuck_meter",
    "holiday_as_workday",
    "spike",
    "drift",
    "stuck",
    "counter_reset",
    "silent",
)
# W a building draws at night with its daytime equipment left on (lights, ventilation: its
# occupied load). 1.5 kW hid under a winter night's heating (7 kW: the building detector
# allows 5 % of an hour's level, and found nothing in the demo's December run).
NIGHT_EXTRA = 3000.0


@dataclass(frozen=True)
class Anomaly:
    node: str
    channel: str
    kind: str
    start: int  # Unix seconds
    end: int

    def as_json(self) -> dict:
        return {
            "node": self.node,
            "channel": self.channel,
            "kind": self.kind,
            "start": self.start,
            "end": self.end,
        }


def sun_times(t: float, lat: float = LATITUDE, lon: float = LONGITUDE) -> tuple[float, float]:
    """Sunrise and sunset (Unix seconds, UTC) of the day that contains ``t``."""
    day0 = t - t % 86400
    n = int(day0 // 86400) % 365 + 1  # rough day of year, good to a day
    year_days = 2 * math.pi / 365 * (n - 1)
    eqtime = 229.18 * (
        0.000075
        + 0.001868 * math.cos(year_days)
        - 0.032077 * math.sin(year_days)
        - 0.014615 * math.cos(2 * year_days)
        - 0.040849 * math.sin(2 * year_days)
    )
    decl = (
        0.006918
        - 0.399912 * math.cos(year_days)
        + 0.070257 * math.sin(year_days)
        - 0.006758 * math.cos(2 * year_days)
        + 0.000907 * math.sin(2 * year_days)
    )
    phi = math.radians(lat)
    cos_ha = math.cos(math.radians(90.833)) / (math.cos(phi) * math.cos(decl)) - math.tan(
        phi
    ) * math.tan(decl)
    ha = math.degrees(math.acos(max(-1.0, min(1.0, cos_ha))))
    noon = 720 - 4 * lon - eqtime  # minutes after UTC midnight
    return day0 + (noon - 4 * ha) * 60, day0 + (noon + 4 * ha) * 60


def _local_hour(t: float, utc_offset: float) -> float:
    return ((t + utc_offset * 3600) % 86400) / 3600


class Profile:
    """What a node's sensors read at time ``t``; time only moves forward."""

    channels: ClassVar[dict[str, int]] = {}  # channel -> sampling interval (s)

    def __init__(self, node: str, seed: int, anomalies: tuple[Anomaly, ...] = ()):
        self.node = node
        self.rng = random.Random(f"{seed}:{node}")
        self.anomalies = anomalies
        self.energy = 0.0  # Wh
        self.e_offset = 0.0  # subtracted after a counter reset
        self.last_t: float | None = None
        self.last_p = 0.0
        self.stuck: dict[str, float] = {}

    def power(self, t: float) -> float:
        raise NotImplementedError

    def other(self, ch: str, t: float) -> float | None:
        return None

    def _active(self, ch: str, t: float) -> list[Anomaly]:
        return [a for a in self.anomalies if a.channel == ch and a.start <= t < a.end]

    def silent(self, t: float) -> Anomaly | None:
        for a in self.anomalies:
            if a.kind == "silent" and a.start <= t < a.end:
                return a
        return None

    def _p(self, t: float) -> float:
        p = self.power(t)
        for a in self._active("e", t):
            if a.kind == "stuck_meter":  # the registers froze: power as it was then
                p = self.stuck.setdefault("_p", p)
        for a in self._active("p", t):
            if a.kind in ("lit_by_day", "lit_in_switch_off"):
                p = max(p, self.rated)
            elif a.kind == "out_at_night":
                p = 0.0
            elif a.kind == "spike":
                p = p * 4 + 50
            elif a.kind == "drift":
                p = p * (1 + 0.5 * (t - a.start) / (a.end - a.start))
            elif a.kind == "dropout":
                p = 0.0
            elif a.kind == "night_base_load" and not 6 <= _local_hour(t, self.utc) < 22:
                p += NIGHT_EXTRA
        return p

    def _advance(self, t: float) -> None:
        if self.last_t is None or t > self.last_t:
            if self.last_t is not None:
                self.energy += self.last_p * (t - self.last_t) / 3600
            self.last_p = self._p(t)
            self.last_t = t

    def read(self, ch: str, t: float) -> float | None:
        """The sensor value of channel ``ch`` at ``t`` (with noise and anomalies)."""
        self._advance(t)
        meter = [a for a in self._active("p", t) + self._active("e", t) if a.kind in METER_KINDS]
        if ch == "p":
            v = max(0.0, self.last_p + self.rng.gauss(0, 0.01 * self.rated))
            if meter:  # a meter that dropped out reads 0 W; a frozen one, what it read then
                v = 0.0 if meter[0].kind == "dropout" else self.stuck.setdefault("p", v)
        elif ch == "e":
            for a in self._active("e", t):
                if a.kind == "counter_reset" and self.e_offset == 0:
                    self.e_offset = self.energy
            v = self.energy - self.e_offset
            if any(a.kind == "stuck_meter" for a in meter):
                v = self.stuck.setdefault("e", v)
        else:
            v = self.other(ch, t)
        if v is None:
            return None
        for a in self._active(ch, t):
            if a.kind == "stuck":
                v = self.stuck.setdefault(ch, v)
        return v


METER_KINDS = ("dropout", "stuck_meter")


class StreetLight(Profile):
    """A street light: ``rated`` W from sunset to sunrise, dimmed between ``dim`` hours (local;
    an end past sunrise: until the morning), dark between ``switch_off`` hours if given (its
    cabinet's switch-off window, e.g. ``(1, 5)``: what the gateway's lighting rules expect
    then, or they would take every lamp for one left on)."""

    channels: ClassVar[dict[str, int]] = {"p": 60, "e": 300, "lux": 300}

    def __init__(
        self,
        node,
        seed,
        anomalies=(),
        rated=70.0,
        dim=(23, 5),
        dim_level=0.5,
        utc=1,
        switch_off: tuple[float, float] | None = None,
    ):
        super().__init__(node, seed, anomalies)
        self.rated = rated
        self.dim = dim
        self.dim_level = dim_level
        self.utc = utc
        self.switch_off = switch_off

    def daylight(self, t: float) -> bool:
        rise, set_ = sun_times(t)
        return rise <= t < set_

    def power(self, t):
        if self.daylight(t):
            return 0.0
        h = _local_hour(t, self.utc)
        if self.switch_off is not None and self.switch_off[0] <= h < self.switch_off[1]:
            return 0.0
        start, end = self.dim
        dimmed = h >= start or h < end
        return self.rated * (self.dim_level if dimmed else 1.0)

    def other(self, ch, t):
        if ch == "lux":
            if not self.daylight(t):
                return max(0.0, self.rng.gauss(5, 1))
            rise, set_ = sun_times(t)
            # A light sensor reads no less than nothing: noise at dawn and dusk stops at 0 (the
            # gateway refuses a pack with a value outside the channel's physical range).
            lux = 20000 * math.sin(math.pi * (t - rise) / (set_ - rise)) + self.rng.gauss(0, 200)
            return max(0.0, lux)
        return None


class Building(Profile):
    """A public building: base load, weekday occupancy 8-18, heating in the cold season."""

    channels: ClassVar[dict[str, int]] = {"p": 60, "e": 300, "t": 300}

    def __init__(
        self,
        node,
        seed,
        anomalies=(),
        base=800.0,
        occupied=3000.0,
        heating=6000.0,
        utc=1,
        closing_days=(),
    ):
        """``closing_days``: local dates (days since 1970-01-01) the town closes its buildings;
        a ``holiday_as_workday`` anomaly runs one of them as a working day."""
        super().__init__(node, seed, anomalies)
        self.closing_days = frozenset(closing_days)
        self.base = base
        self.occupied = occupied
        self.heating = heating
        self.rated = base + occupied
        self.utc = utc

    def outdoor(self, t: float) -> float:
        """Outdoor temperature: a yearly wave (coldest mid-January) and a daily one."""
        day = (t / 86400) % 365.25
        season = 12 - 9 * math.cos(2 * math.pi * (day - 15) / 365.25)
        h = _local_hour(t, self.utc)
        return season + 5 * math.sin(2 * math.pi * (h - 9) / 24)

    def occupied_at(self, t: float) -> bool:
        day = int((t + self.utc * 3600) // 86400)
        wd = (day + 3) % 7  # 1970-01-01 was a Thursday: 0 = Monday
        if day in self.closing_days and not any(
            a.kind == "holiday_as_workday" for a in self._active("p", t)
        ):
            return False  # the town closed it that day (the anomaly: it runs as on a weekday)
        return wd < 5 and 8 <= _local_hour(t, self.utc) < 18

    def power(self, t):
        p = self.base
        occupied = self.occupied_at(t)
        if occupied:
            p += self.occupied
        setpoint = 20.0 if occupied else 16.0
        need = max(0.0, setpoint - self.outdoor(t)) / 15
        return p + self.heating * min(1.0, need)

    def other(self, ch, t):
        if ch == "t":
            setpoint = 20.0 if self.occupied_at(t) else 16.0
            return setpoint + 0.5 * math.sin(t / 1800) + self.rng.gauss(0, 0.1)
        return None


def closing_days(start: float, duration: float, utc: float = 1) -> list[int]:
    """The town's closing days in a run (local dates, days since 1970-01-01): the last Friday
    at least a day before the end, once the buildings' meters have been read for three
    weekends (the building detectors learn a closed day's hours from three closed days, and
    not in the first week, whose weekdays they do not know yet); none in a shorter run."""
    first = int((start + utc * 3600) // 86400)
    last = int((start + duration + utc * 3600) // 86400) - 2
    fridays = [d for d in range(first + 15, last + 1) if (d + 3) % 7 == 4]
    return fridays[-1:]


def plan_anomalies(
    nodes: dict[str, str],
    start: float,
    duration: float,
    count: int,
    seed: int = 0,
    closed: list[int] | None = None,
    learnt: bool = False,
) -> list[Anomaly]:
    """``count`` anomalies spread over the nodes (id -> "lamp"/"building"), seeded.

    Windows are chosen so that each kind is visible: a lamp lit by day starts at noon, a lamp
    out at night at 22:00, stuck on its lit value at night, a spike lasts 30 minutes, a drift
    most of the run, a silent node 2 hours; a building's meter faults come after three days
    (what a building does at each hour is learnt from three of them), a night's raised base
    load from 22:00 to 06:00 local, a closing day (``closed``, by default
    :func:`closing_days`) run as a weekday from 08:00 to 18:00. Lamps and buildings take their
    kinds in turn. At most one anomaly per node. ``learnt``: the detectors learnt from a past
    before ``start`` (sim/history.py), so a meter fault may come on any day of the run.
    """
    rng = random.Random(f"anomalies:{seed}")
    ids = sorted(nodes)
    rng.shuffle(ids)
    closed = closing_days(start, duration) if closed is None else closed
    days = max(1, int(duration // 86400))
    turn = {"lamp": 0, "building": 0}
    out = []
    for node in ids[:count]:
        kinds = LAMP_KINDS if nodes[node] == "lamp" else BUILDING_KINDS
        kind = kinds[turn[nodes[node]] % len(kinds)]
        turn[nodes[node]] += 1
        day = start - start % 86400 + 86400 * rng.randrange(days)
        if kind in (*METER_KINDS, "night_base_load") and not learnt:
            day = start - start % 86400 + 86400 * rng.randrange(min(3, days - 1), days)
        day = max(day, start - start % 86400)
        ch = "p"
        if kind == "holiday_as_workday" and not closed:
            kind = "spike"  # no closing day in so short a run
        if kind == "holiday_as_workday":
            a, b = closed[0] * 86400 + 7 * 3600, closed[0] * 86400 + 17 * 3600  # 08-18 local
        elif kind == "night_base_load":
            a, b = day + 21 * 3600, day + 29 * 3600  # 22:00 to 06:00 local
        elif kind == "dropout":
            a = day + rng.randrange(1, 18) * 3600
            b = a + 4 * 3600
        elif kind == "stuck_meter":
            a = day + rng.randrange(1, 12) * 3600
            b = a + 10 * 3600
            ch = "e"
        elif kind == "lit_by_day":
            a, b = day + 11 * 3600, day + 14 * 3600
        elif kind == "out_at_night":
            a, b = day + 21 * 3600, day + 24 * 3600
        elif kind == "drift":
            a, b = start + duration * 0.2, start + duration
        elif kind == "silent":
            a = day + rng.randrange(2, 20) * 3600
            b = a + 2 * 3600
            ch = "*"
        elif kind == "counter_reset":
            a = day + rng.randrange(1, 23) * 3600
            b = a + 3600
            ch = "e"
        elif kind == "stuck" and nodes[node] == "lamp":
            a = day + rng.randrange(21, 24) * 3600  # at night: a lamp off by day reads 0 W anyway
            b = a + 3 * 3600
        elif kind == "stuck":
            a = day + rng.randrange(1, 20) * 3600
            b = a + 3 * 3600
        else:  # spike
            a = day + rng.randrange(1, 23) * 3600
            b = a + 1800
        a, b = max(a, start), min(b, start + duration)
        if b - a < 600:  # a short run missed the window: put one inside the run instead
            a = start + duration * rng.uniform(0.2, 0.5)
            b = a + duration * 0.25
            if kind in ("lit_by_day", "out_at_night"):  # may be night (or day): not visible
                kind = "spike"
        out.append(Anomaly(node, ch, kind, int(a), int(b)))
    return out
