"""The statistical detector's seasonal slots are the town's hours: a building that opens at
08:00 local all year keeps one slot for its opening across the changes to and from summer time
(issue 14). With slots in UTC hours, 08:00 moved from the 07:00 UTC slot to the 06:00 one on the
last Sunday of March, and every working morning of the next weeks was "unusual"."""

import random
import struct
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from gateway.pipeline.detect import DetectConfig, replay
from gateway.pipeline.detect.baseline import _HEAD, StatDetector
from gateway.pipeline.detect.engine import ChannelDetector
from gateway.pipeline.detect.rules import Clock

PARIS = ZoneInfo("Europe/Paris")
EVERY = 600  # a reading every 10 minutes
# The building's country is left out: no public holiday closes it in these weeks.
TOWN = {"timezone": "Europe/Paris", "country": ""}


def day(y: int, m: int, d: int) -> float:
    return datetime(y, m, d, tzinfo=UTC).timestamp()


def town_hall(start: float, end: float, seed: int = 1) -> list[tuple[float, float]]:
    """Power of a building open 08:00-18:00 local time on weekdays (3.8 kW), 0.8 kW otherwise."""
    rng = random.Random(seed)
    rows = []
    t = start
    while t < end:
        local = datetime.fromtimestamp(t, PARIS)
        open_ = local.weekday() < 5 and 8 <= local.hour < 18
        rows.append((t, (3800.0 if open_ else 800.0) + rng.gauss(0, 30)))
        t += EVERY
    return rows


# Eight weeks to learn, then the change of time (Sunday 02:00 or 03:00 local), then three weeks.
SPRING = (day(2026, 2, 2), day(2026, 3, 29), day(2026, 4, 19))
AUTUMN = (day(2026, 8, 31), day(2026, 10, 25), day(2026, 11, 15))


def alarms_near_the_change(start: float, change: float, end: float) -> list[str]:
    cfg = DetectConfig.from_mapping(TOWN)
    rows = town_hall(start, end)
    return [
        datetime.fromtimestamp(t, PARIS).isoformat()
        for t, _, alarm in replay(rows, "power", cfg)
        if alarm and t >= change - 7 * 86400
    ]


def test_no_alarm_across_the_change_to_summer_time():
    assert alarms_near_the_change(*SPRING) == []


def test_no_alarm_across_the_change_to_winter_time():
    assert alarms_near_the_change(*AUTUMN) == []


def test_slots_in_utc_hours_took_the_summer_mornings_for_anomalies():
    # What the detector did before: fed UTC times, its 06:00 UTC slot (07:00 local all winter,
    # 0.8 kW) saw the 08:00 opening after the change and called it unusual.
    start, change, end = SPRING
    d = StatDetector()
    surprised = []
    for t, x in town_hall(start, end):
        v = d.update(t, x)
        if t >= change and v.score >= 0.5:
            surprised.append(datetime.fromtimestamp(t, PARIS).strftime("%a %H:%M"))
    assert "Mon 08:00" in surprised
    # The same readings in the town's hours: nothing.
    d, clock = StatDetector(), Clock(DetectConfig.from_mapping(TOWN))
    scores = [(t, d.update(clock.local(t), x).score) for t, x in town_hall(start, end)]
    assert max(s for t, s in scores if t >= change - 7 * 86400) < 0.5


def utc_state(rows: list[tuple[float, float]]) -> bytes:
    """A channel's state as the detector saved it when its slots were UTC hours (a channel the
    statistical detector judges: a building's ``p`` and ``e`` are buildings.py's alone)."""
    cd = ChannelDetector("mairie", "x", *(lambda c: (c, Clock(c)))(DetectConfig(timezone="UTC")))
    for t, x in rows:
        cd.step(t, x)
    data = bytearray(cd.dumps())
    spare = 2 + _HEAD.size - 8  # after the length prefix: the head's last (spare) double
    struct.pack_into("<d", data, spare, 0.0)
    return bytes(data)


def test_a_state_learnt_in_utc_hours_loads_in_the_towns_hours():
    # Learnt in January (UTC+1): what UTC 07:00 learnt is local 08:00's, slot for slot.
    winter = town_hall(day(2026, 1, 5), day(2026, 2, 2))
    cfg = DetectConfig.from_mapping(TOWN)
    migrated = ChannelDetector("mairie", "x", cfg, Clock(cfg))
    migrated.loads(utc_state(winter))
    local = ChannelDetector("mairie", "x", cfg, Clock(cfg))
    for t, x in winter:
        local.step(t, x)
    assert migrated.stat.slots == local.stat.slots
    assert migrated.stat.hour == local.stat.hour
    # Saved again, it is in the town's hours and is not moved a second time.
    again = ChannelDetector("mairie", "x", cfg, Clock(cfg))
    again.loads(migrated.dumps())
    assert again.stat.slots == local.stat.slots


def test_the_clock_caches_the_offset_and_still_follows_every_change():
    # Clock.local keeps the zone's offset for a whole UTC day (an hourly reading no longer asks
    # the zone each time), and on the day of a change finds it to the second: Lord Howe's
    # clocks move by 30 minutes at 02:00 local, not on a whole UTC hour.
    for zone in ("Europe/Paris", "Australia/Lord_Howe", "America/New_York"):
        clock = Clock(DetectConfig(timezone=zone))
        tz = ZoneInfo(zone)
        times = [day(2026, 1, 1) + k * 1357.0 for k in range(23300)]  # a year, odd steps
        times += [day(2026, 10, 25) - k * 600.0 for k in range(300)]  # and back in time
        for t in times:
            off = datetime.fromtimestamp(t, tz).utcoffset().total_seconds()
            assert clock.local(t) == t + off, (zone, datetime.fromtimestamp(t, UTC))
