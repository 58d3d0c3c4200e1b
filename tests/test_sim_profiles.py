"""sim/profiles.py: the town's loads, by the sun and the calendar, and injected anomalies."""

from sim.profiles import Anomaly, Building, StreetLight, closing_days, plan_anomalies, sun_times

JUNE21 = 1718928000  # 2024-06-21 00:00 UTC
DEC21 = 1734739200  # 2024-12-21 00:00 UTC
H = 3600


def test_day_length_follows_the_season_at_the_towns_latitude():
    rise, set_ = sun_times(JUNE21 + 12 * H)
    assert 15.2 < (set_ - rise) / H < 15.8  # ~15.5 h at 44 degrees north
    rise, set_ = sun_times(DEC21 + 12 * H)
    assert 8.8 < (set_ - rise) / H < 9.3
    assert 6.5 * H < rise - DEC21 < 7.5 * H  # ~07:05 UTC+1 local sunrise in December


def test_street_light_is_off_by_day_full_in_the_evening_dimmed_at_night():
    lamp = StreetLight("lamp-1", 0)
    assert lamp.power(DEC21 + 12 * H) == 0  # noon
    assert lamp.power(DEC21 + 19 * H) == 70  # 20:00 local
    assert lamp.power(DEC21 + 2 * H) == 35  # 03:00 local, dimmed
    assert lamp.power(JUNE21 + 19 * H) == 0  # sunset is ~19:35 UTC in June: still daylight
    assert lamp.read("lux", DEC21 + 12 * H) > 1000 > lamp.read("lux", DEC21 + 22 * H)


def test_building_uses_more_on_weekdays_when_occupied_and_in_winter():
    b = Building("bldg-1", 0)
    monday = DEC21 + 2 * 86400  # 2024-12-23 was a Monday
    saturday = DEC21
    assert b.occupied_at(monday + 10 * H) and not b.occupied_at(saturday + 10 * H)
    assert b.power(monday + 10 * H) > b.power(saturday + 10 * H)
    assert b.power(DEC21 + 2 * 86400 + 10 * H) > b.power(JUNE21 + 3 * 86400 + 10 * H)
    assert 15 < b.read("t", monday + 10 * H) < 22


def test_energy_counter_integrates_power():
    lamp = StreetLight("lamp-1", 0)
    t0 = DEC21 + 19 * H  # 70 W for the next hours
    lamp.read("e", t0)
    e0 = lamp.read("e", t0)
    lamp.read("p", t0 + H)
    assert abs(lamp.read("e", t0 + H) - e0 - 70) < 0.5


def test_anomalies_change_what_sensors_read_inside_their_window_only():
    noon = DEC21 + 12 * H
    lamp = StreetLight("l", 0, (Anomaly("l", "p", "lit_by_day", noon, noon + H),))
    assert lamp.read("p", noon - 60) < 5 and lamp.read("p", noon + 60) > 60
    assert lamp.read("p", noon + H + 60) < 5
    night = DEC21 + 19 * H
    dead = StreetLight("d", 0, (Anomaly("d", "p", "out_at_night", night, night + H),))
    assert dead.read("p", night + 60) < 5
    spiky = StreetLight("s", 0, (Anomaly("s", "p", "spike", night, night + H),))
    assert spiky.read("p", night + 60) > 250
    stuck = Building("b", 0, (Anomaly("b", "t", "stuck", noon, noon + H),))
    assert stuck.read("t", noon) == stuck.read("t", noon + 600) == stuck.read("t", noon + 1200)
    drift = StreetLight("x", 0, (Anomaly("x", "p", "drift", night, night + 2 * H),))
    assert drift.read("p", night + 2 * H - 60) > 95
    reset = StreetLight("r", 0, (Anomaly("r", "e", "counter_reset", night + H, night + 2 * H),))
    before = [reset.read("e", night + i * 600) for i in range(7)]
    assert before[5] > 50 and before[6] < before[5]  # fell back to ~0 at night + 1 h
    silent = Building("q", 0, (Anomaly("q", "*", "silent", noon, noon + H),))
    assert silent.silent(noon + 1) is not None and silent.silent(noon + H) is None


def test_planned_anomalies_are_seeded_one_per_node_and_fit_the_node():
    nodes = {f"lamp-{i}": "lamp" for i in range(20)} | {f"bldg-{i}": "building" for i in range(5)}
    a = plan_anomalies(nodes, DEC21, 7 * 86400, 12, seed=5)
    assert a == plan_anomalies(nodes, DEC21, 7 * 86400, 12, seed=5)
    assert a != plan_anomalies(nodes, DEC21, 7 * 86400, 12, seed=6)
    assert len({x.node for x in a}) == len(a) == 12
    for x in a:
        if nodes[x.node] == "building":
            assert x.kind not in ("lit_by_day", "out_at_night")


def test_building_meter_faults_are_in_the_data():
    # Issue 14: a meter that drops out (0 W, a counter standing still, the node still speaking),
    # one whose registers freeze, a base load left on at night, a closing day run as a weekday.
    monday = DEC21 + 2 * 86400  # 2024-12-23
    day = (monday + H) // 86400  # its local date (UTC+1), as a closing day

    def at(kind, channel, a, b, **kw):
        return Building("b", 0, (Anomaly("b", channel, kind, a, b),), **kw)

    drop = at("dropout", "p", monday + 10 * H, monday + 14 * H)
    e0 = drop.read("e", monday + 11 * H)
    assert drop.read("p", monday + 12 * H) == 0.0
    assert drop.read("e", monday + 13 * H) == e0 and drop.read("t", monday + 13 * H) > 15
    assert drop.read("p", monday + 15 * H) > 3000
    frozen = at("stuck_meter", "e", monday + 10 * H, monday + 20 * H)
    p = [frozen.read("p", monday + 10 * H + i * 600) for i in range(6)]
    e = [frozen.read("e", monday + 10 * H + i * 600) for i in range(6)]
    assert len(set(p)) == 1 and len(set(e)) == 1
    night = at("night_base_load", "p", monday + 21 * H, monday + 29 * H)
    normal = Building("n", 0)
    # The daytime load left on (3 kW): 1.5 kW hid under a winter night's heating.
    assert abs(night.read("p", monday + 25 * H) - normal.read("p", monday + 25 * H) - 3000) < 200
    assert abs(night.read("p", monday + 30 * H) - normal.read("p", monday + 30 * H)) < 200
    closed = Building("c", 0, closing_days=[day])
    assert not closed.occupied_at(monday + 10 * H) and closed.occupied_at(monday + 86400 + 10 * H)
    open_anyway = at("holiday_as_workday", "p", monday + 7 * H, monday + 17 * H, closing_days=[day])
    assert open_anyway.occupied_at(monday + 10 * H)


def test_closing_days_and_building_faults_are_planned_once_there_is_something_to_compare():
    nodes = {f"lamp-{i}": "lamp" for i in range(8)} | {f"bldg-{i}": "building" for i in range(4)}
    monday = DEC21 + 2 * 86400 - H  # 2024-12-23 00:00 local
    # The building detectors judge a closed day from three closed days, none of the first
    # week's (its weekdays are not known yet): two weeks are not enough, three are.
    assert closing_days(monday, 7 * 86400) == closing_days(monday, 14 * 86400) == []
    (friday,) = closing_days(monday, 21 * 86400)
    assert (friday + 3) % 7 == 4 and friday * 86400 > monday + 15 * 86400
    plan = plan_anomalies(nodes, monday, 21 * 86400, 12, seed=1)
    kinds = {a.kind for a in plan if nodes[a.node] == "building"}
    assert kinds == {"dropout", "night_base_load", "stuck_meter", "holiday_as_workday"}
    for a in plan:
        if a.kind in ("dropout", "stuck_meter", "night_base_load"):
            assert a.start >= monday + 3 * 86400 - 86400  # after the meters were learnt
        if a.kind == "holiday_as_workday":
            assert a.start == friday * 86400 + 7 * H  # 08:00 local
    # A week has no closing day: the holiday is not planned, and says so by its kind.
    short = plan_anomalies(nodes, monday, 7 * 86400, 12, seed=1)
    assert "holiday_as_workday" not in {a.kind for a in short}


def test_a_light_sensor_never_reads_below_zero():
    # Its noise at dawn and dusk once went below 0 lx, and the gateway refuses a pack with a
    # value outside the channel's physical range: the node lost that pack's readings.
    lamp = StreetLight("lamp-1", 3)
    rise, set_ = sun_times(DEC21)
    dawn_and_dusk = [edge + s for edge in (rise, set_) for s in range(-600, 600, 5)]
    assert min(lamp.read("lux", t) for t in dawn_and_dusk) >= 0
