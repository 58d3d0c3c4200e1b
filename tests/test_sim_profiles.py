"""sim/profiles.py: the town's loads, by the sun and the calendar, and injected anomalies."""

from sim.profiles import Anomaly, Building, StreetLight, plan_anomalies, sun_times

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
