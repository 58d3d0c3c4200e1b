"""The town's lighting schedule ([[detect.lighting]]): each form of it night by night in local
time (Europe/Paris, across midnight and across both changes of clock), the lighting rules
through the real detect stage and a real database, and `reverbere gateway check`."""

import datetime as dt
import json
import random

import pytest
from click.testing import CliRunner
from detect_helpers import make_db

from gateway.cli.main import cli
from gateway.pipeline.detect import DetectConfig, Detector
from gateway.pipeline.detect.config import DetectConfigError
from gateway.pipeline.detect.engine import ChannelDetector
from gateway.pipeline.detect.lighting import LightingRule, night_plan, tonight
from gateway.pipeline.detect.rules import Clock, LampRule
from gateway.store.records import Reading

SITE = {"latitude": 48.8566, "longitude": 2.3522, "timezone": "Europe/Paris"}
SPRING = dt.date(2026, 3, 28)  # Saturday evening; 02:00 CET -> 03:00 CEST that night
AUTUMN = dt.date(2026, 10, 24)  # Saturday evening; 03:00 CEST -> 02:00 CET that night


def config(**group):
    """A site with one lighting group, "Rue de la Mairie", of lamp-0* nodes."""
    return DetectConfig.from_mapping(
        {**SITE, "lighting": [{"name": "Rue de la Mairie", "nodes": ["lamp-0*"], **group}]}
    )


def periods(cfg, evening):
    """The night as (from, to, level, reason) with local times "HH:MM TZ"."""
    return [
        (p.start.strftime("%H:%M %Z"), p.end.strftime("%H:%M %Z"), p.level, p.reason)
        for p in night_plan(cfg.lighting[0], evening, cfg)
    ]


def switched_off(cfg, evening):
    return [(a, b) for a, b, level, why in periods(cfg, evening) if why.startswith("switch-off")]


# -- the schedule, night by night ---------------------------------------------------------------


def test_on_at_sunset_plus_offset_off_at_sunrise_minus_offset():
    cfg = config(on_after_sunset_minutes=15, off_before_sunrise_minutes=20)
    day, lit, morning = periods(cfg, dt.date(2026, 1, 14))
    # Paris, 14 January: sunset 17:19, sunrise 08:39 (NOAA, as astral computes them).
    assert day[1] == lit[0] == "17:34 CET" and day[2] == 0
    assert lit[1] == morning[0] == "08:19 CET" and lit[2] == 1
    assert "sunset 17:19 CET + 15 min" in lit[3] and "sunrise 08:39 CET - 20 min" in lit[3]
    assert morning[1] == "12:00 CET"  # a night runs from noon to noon


def test_a_switch_off_window_across_midnight():
    cfg = config(switch_off=[{"from": "23:00", "to": "05:00"}])
    assert switched_off(cfg, dt.date(2026, 1, 14)) == [("23:00 CET", "05:00 CET")]
    levels = [level for _, _, level, _ in periods(cfg, dt.date(2026, 1, 14))]
    assert levels == [0, 1, 0, 1, 0]  # day, lit, off, lit, day


def test_weeknights_only_go_by_the_evening():
    # "01:00-05:00 from Sunday to Thursday night": Friday's and Saturday's nights stay lit
    # although their 01:00 falls on a Saturday and a Sunday.
    cfg = config(switch_off=[{"from": "01:00", "to": "05:00", "days": "sun-thu"}])
    week = {dt.date(2026, 1, 11) + dt.timedelta(days=k): k for k in range(7)}  # Sun..Sat
    off = {d.strftime("%a") for d in week if switched_off(cfg, d)}
    assert off == {"Sun", "Mon", "Tue", "Wed", "Thu"}
    assert "switch-off 01:00-05:00 (sun-thu)" in periods(cfg, dt.date(2026, 1, 11))[2][3]


def test_all_night_in_summer_by_dates_and_by_summer_time():
    cfg = config(switch_off=[{"season": ["06-01", "08-31"]}])  # no from/to: all night
    july = periods(cfg, dt.date(2026, 7, 1))
    assert [level for *_, level, _ in july] == [0, 0, 0]  # day, switched off, day
    assert july[1][3] == "switch-off all night (06-01 to 08-31)"
    assert not switched_off(cfg, dt.date(2026, 9, 1))
    # "summer time": the evening's clock decides, so the night of the change is still winter's.
    cfg = config(switch_off=[{"from": "00:00", "to": "05:00", "season": "summer time"}])
    assert not switched_off(cfg, SPRING)
    assert switched_off(cfg, SPRING + dt.timedelta(days=1)) == [("00:00 CEST", "05:00 CEST")]
    assert switched_off(cfg, AUTUMN) and not switched_off(cfg, AUTUMN + dt.timedelta(days=1))


def test_dimming_steps():
    cfg = config(
        dim=[{"from": "22:00", "percent": 50}, {"from": "05:30", "percent": 100}],
        switch_off=[{"from": "01:00", "to": "05:00"}],
    )
    night = periods(cfg, dt.date(2026, 1, 14))
    assert [(a, level) for a, _, level, _ in night[1:-1]] == [
        ("17:19 CET", 1.0),
        ("22:00 CET", 0.5),
        ("01:00 CET", 0.0),
        ("05:00 CET", 0.5),  # back on, still dimmed: the 22:00 step holds until the next
        ("05:30 CET", 1.0),
    ]
    assert night[2][3] == "dimmed to 50 % from 22:00"


def test_the_night_clocks_go_forward():
    # 01:00 CET to 05:00 CEST is three hours, not four; the times are the town's.
    cfg = config(switch_off=[{"from": "01:00", "to": "05:00"}])
    (window,) = [p for p in night_plan(cfg.lighting[0], SPRING, cfg) if p.level == 0][1:-1]
    assert window.start.strftime("%H:%M %Z") == "01:00 CET"
    assert window.end.strftime("%H:%M %Z") == "05:00 CEST"
    assert window.end.timestamp() - window.start.timestamp() == 3 * 3600
    plan = night_plan(cfg.lighting[0], SPRING, cfg)
    assert plan[-1].end.timestamp() - plan[0].start.timestamp() == 23 * 3600  # noon to noon


def test_the_night_clocks_go_back():
    cfg = config(switch_off=[{"from": "01:00", "to": "05:00"}])
    (window,) = [p for p in night_plan(cfg.lighting[0], AUTUMN, cfg) if p.level == 0][1:-1]
    assert window.start.strftime("%H:%M %Z") == "01:00 CEST"
    assert window.end.strftime("%H:%M %Z") == "05:00 CET"
    assert window.end.timestamp() - window.start.timestamp() == 5 * 3600
    plan = night_plan(cfg.lighting[0], AUTUMN, cfg)
    assert plan[-1].end.timestamp() - plan[0].start.timestamp() == 25 * 3600


def test_tonight_is_the_night_in_progress_until_morning():
    cfg = config()
    g = cfg.lighting[0]
    at = lambda d, h: dt.datetime.combine(d, dt.time(h), cfg.tz).timestamp()  # noqa: E731
    jan14 = dt.date(2026, 1, 14)
    assert tonight(g, cfg, at(jan14, 3))[0].start.date() == jan14 - dt.timedelta(days=1)
    assert tonight(g, cfg, at(jan14, 10))[0].start.date() == jan14  # after sunrise: this evening
    assert tonight(g, cfg, at(jan14, 20))[0].start.date() == jan14


# -- the rules, through the detect stage ---------------------------------------------------------


def lamp(cfg, first, nights, fault=None, node="lamp-042", watts=70.0, every=60):
    """A lamp that does what its group's schedule says, from noon of ``first`` for ``nights``;
    ``fault(local_datetime, p) -> p`` changes it."""
    rng = random.Random(1)
    plan = [
        p for k in range(nights) for p in night_plan(cfg.lighting[0], first + dt.timedelta(k), cfg)
    ]
    out = []
    for p in plan:
        t = p.start.timestamp()
        while t < p.end.timestamp():
            x = p.level * watts + rng.gauss(0, 0.3) if p.level else 0.0
            if fault is not None:
                x = fault(dt.datetime.fromtimestamp(t, cfg.tz), x)
            out.append(Reading(node, "p", t, round(max(x, 0.0), 2)))
            t += every
    return out


def full(t):
    """A lamp at full power: 70 or 71 W (a frozen 70.0 would look like a stuck sensor)."""
    return 70.0 + t.minute % 2


def run(db, cfg, readings, batch=30):
    detect = Detector(cfg)
    for k in range(0, len(readings), batch):
        detect(db, readings[k : k + batch])
    return list(db.query("SELECT * FROM anomalies ORDER BY start"))


def lighting_events(db, cfg, readings):
    """The events of the lighting rules (the statistical detector, barely three days old
    here, has its own tests)."""
    kinds = ("dark_at_night", "lit_in_switch_off", "not_dimmed", "lit_by_day", "drift")
    return [e for e in run(db, cfg, readings) if e["kind"] in kinds]


def local(row, col="start"):
    return (
        dt.datetime.fromtimestamp(row[col], dt.UTC)
        .astimezone(DetectConfig(**SITE).tz)
        .strftime("%d %H:%M %Z")
    )


TOWN = {
    "watts": 70,
    "on_after_sunset_minutes": 10,
    "switch_off": [{"from": "01:00", "to": "05:00"}],
    "dim": [{"from": "22:00", "percent": 50}, {"from": "05:00", "percent": 100}],
}


@pytest.mark.parametrize("change", [SPRING, AUTUMN])
def test_a_lamp_that_follows_the_schedule_raises_nothing_across_the_change_of_clock(
    tmp_path, change
):
    # Nothing at all, the statistical detector's "unusual" included: a grouped lamp's baseline
    # learns by the town's hours (by UTC hours, the 05:00 switch moved an hour in its slots and
    # 04:00 CET read 0 W where it "usually" drew 70 W).
    cfg = config(**TOWN)
    events = run(make_db(tmp_path / "g.db"), cfg, lamp(cfg, change - dt.timedelta(days=6), 8))
    assert events == []


def test_the_statistical_detector_still_judges_a_grouped_lamps_lit_level(tmp_path):
    # It learns only what the lamp draws while lit (34 to 71 W here, never the 0 W of the
    # day and the switch-off), so a short surge at full power is its to tell.
    cfg = config(**TOWN)

    def fault(t, x):
        return (
            400.0 + t.minute
            if t.date() == dt.date(2026, 1, 19) and t.hour == 20 and t.minute < 5
            else x
        )

    (e,) = run(make_db(tmp_path / "g.db"), cfg, lamp(cfg, dt.date(2026, 1, 14), 6, fault))
    assert e["kind"] == "unusual" and local(e) == "19 20:00 CET"
    assert "outside all it had read before (34.1 W to 71.0 W)" in e["reason"]


def test_lit_during_the_switch_off_window_in_local_time(tmp_path):
    # On the night clocks go back, the lamp stays lit through the switch-off: the event starts
    # at 01:00 CEST (+ the cabinet clock's grace), and its waste counts against 0 W expected.
    cfg = config(**TOWN)

    def fault(t, x):
        return full(t) if t.date() == AUTUMN + dt.timedelta(days=1) and 1 <= t.hour < 5 else x

    events = run(
        make_db(tmp_path / "g.db"), cfg, lamp(cfg, AUTUMN - dt.timedelta(days=1), 3, fault)
    )
    (e,) = events
    assert e["kind"] == "lit_in_switch_off"
    assert local(e) == "25 01:13 CEST"  # 10 min of grace, then 3 readings to confirm
    # The five-hour window, to its end and the 10 min of grace of the cabinet's clock.
    assert local(e, "end") == "25 05:11 CET"
    assert e["reason"] == (
        "lamp-042 drew 71 W at 01:13 CEST, during the switch-off 01:00-05:00 of lighting"
        " group 'Rue de la Mairie'"
    )
    # 70.5 W above the 0 W the schedule expects, for most of the 4 h 47 min it was lit.
    assert 0.0705 * 4.5 < e["waste_kwh"] < 0.0705 * (4 + 47 / 60)


def test_dark_when_it_should_be_lit_goes_first(tmp_path):
    cfg = config(**TOWN)

    def fault(t, x):  # dead from 19:00 to 21:00 on the night clocks go forward
        return 0.0 if t.date() == SPRING and 19 <= t.hour < 21 else x

    (e,) = lighting_events(
        make_db(tmp_path / "g.db"), cfg, lamp(cfg, SPRING - dt.timedelta(days=1), 3, fault)
    )
    assert (
        e["kind"] == "dark_at_night" and local(e) == "28 19:57 CET"
    )  # lit at 19:25, then 30 min of twilight grace
    assert e["score"] >= 0.75  # a safety matter scores above any waste (0.5 at confirmation)
    assert e["reason"].startswith("lamp-042 drew 0 W at 19:57 CET, lighting group 'Rue de la")
    assert "is lit from 19:2" in e["reason"] and "(sunset 19:1" in e["reason"]


def test_drawing_more_than_the_dimming_step_allows(tmp_path):
    cfg = config(**TOWN)

    def fault(t, x):  # the dimmer fails on the second night: full power after 22:00
        return full(t) if t.date() == dt.date(2026, 1, 15) and t.hour >= 22 else x

    events = lighting_events(
        make_db(tmp_path / "g.db"), cfg, lamp(cfg, dt.date(2026, 1, 14), 3, fault)
    )
    (e,) = events
    assert e["kind"] == "not_dimmed" and local(e) == "15 22:13 CET"
    assert local(e, "end") == "16 00:00 CET"
    assert e["reason"] == (
        "lamp-042 drew 71 W at 22:13 CET, lighting group 'Rue de la Mairie' is dimmed to"
        " 50 % from 22:00 (about 35 W)"
    )
    assert e["waste_kwh"] == pytest.approx(0.0355 * (1 + 47 / 60), abs=0.005)


def test_the_full_power_is_learnt_when_the_group_does_not_give_it(tmp_path):
    cfg = config(**{k: v for k, v in TOWN.items() if k != "watts"})

    def fault(t, x):
        return full(t) if t.date() == dt.date(2026, 1, 15) and t.hour >= 22 else x

    (e,) = lighting_events(
        make_db(tmp_path / "g.db"), cfg, lamp(cfg, dt.date(2026, 1, 14), 3, fault)
    )
    assert e["kind"] == "not_dimmed" and "(about 35 W)" in e["reason"]


def test_lit_by_day_names_the_schedule(tmp_path):
    cfg = config(**TOWN)

    def fault(t, x):
        return full(t) if t.date() == dt.date(2026, 1, 15) and 13 <= t.hour < 14 else x

    (e,) = lighting_events(
        make_db(tmp_path / "g.db"), cfg, lamp(cfg, dt.date(2026, 1, 14), 2, fault)
    )
    assert e["kind"] == "lit_by_day" and local(e) == "15 13:02 CET"
    assert e["reason"].startswith("lamp-042 drew 70 W at 13:02 CET, by day: lighting group")
    assert "'Rue de la Mairie' is dark until 17:31 CET (sunset 17:21 CET + 10 min)" in e["reason"]


def test_without_lighting_groups_lamps_keep_the_sun_rules():
    plain = DetectConfig.from_mapping({**SITE, "lamps_off": ["01:00", "05:00"]})
    cd = ChannelDetector("lamp-042", "p", plain, Clock(plain))
    assert [type(r) for r in cd.rules] == [type(cd.rules[0]), LampRule]
    grouped = config()
    cd = ChannelDetector("lamp-042", "p", grouped, Clock(grouped))
    assert isinstance(cd.rules[-1], LightingRule)
    # a node outside every group, and outside `lamps`, is no lamp at all
    assert not grouped.is_lamp("school-1") and grouped.is_lamp("lamp-042")


def test_a_restart_keeps_an_open_event_and_a_lamp_may_change_group(tmp_path):
    cfg = config(**TOWN)

    def fault(t, x):  # lit through the switch-off of the second night
        return full(t) if t.date() == dt.date(2026, 1, 16) and 1 <= t.hour < 5 else x

    rs = lamp(cfg, dt.date(2026, 1, 14), 3, fault)
    cut = next(
        i
        for i, r in enumerate(rs)
        if r.time >= dt.datetime(2026, 1, 16, 3, tzinfo=cfg.tz).timestamp()
    )
    db = make_db(tmp_path / "g.db")
    lighting_events(db, cfg, rs[:cut])
    (e,) = lighting_events(db, cfg, rs[cut:])  # a new Detector: the gateway restarted at 03:00
    assert e["kind"] == "lit_in_switch_off" and local(e) == "16 01:13 CET"
    # A lamp moved into a group (or out of it) by a new config: the old rule's state is left
    # behind, and the channel goes on (it used to stop the detect stage at every reading).
    plain = DetectConfig.from_mapping(SITE)
    for before, after in ((plain, cfg), (cfg, plain)):
        db = make_db(tmp_path / f"{len(before.lighting)}.db")
        Detector(before)(db, rs[:cut])
        Detector(after)(db, rs[cut:])


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("group", "key", "words"),
    [
        ({"colour": "red"}, "lighting[0].colour", "unknown key"),
        (
            {"switch_off": [{"from": "05:00", "to": "01:00"}]},
            "lighting[0].switch_off[0].to",
            "not after",
        ),
        ({"switch_off": [{"from": "23:00"}]}, "lighting[0].switch_off[0].to", "missing"),
        ({"switch_off": [{"season": "summer"}]}, "lighting[0].switch_off[0].season", "summer time"),
        ({"dim": [{"from": "22:00", "percent": 150}]}, "lighting[0].dim[0].percent", "between 0"),
        ({"on_after_sunset_minutes": 600}, "lighting[0].on_after_sunset_minutes", "between"),
    ],
)
def test_config_errors_name_the_key(group, key, words):
    with pytest.raises(DetectConfigError) as e:
        config(**group)
    assert e.value.key == key and words in str(e.value)


# -- the command ---------------------------------------------------------------------------------


def test_gateway_check_prints_a_night_in_local_time(tmp_path):
    toml = tmp_path / "gateway.toml"
    toml.write_text(
        '[gateway]\ndatabase = "r.db"\n'
        '[site]\nlatitude = 48.8566\nlongitude = 2.3522\ntimezone = "Europe/Paris"\n'
        '[[detect.lighting]]\nname = "Rue de la Mairie"\nnodes = ["lamp-0*"]\n'
        '[[detect.lighting.switch_off]]\nfrom = "01:00"\nto = "05:00"\ndays = "sun-thu"\n'
        '[[detect.lighting.dim]]\nfrom = "22:00"\npercent = 50\n'
    )
    runner = CliRunner()
    ok = runner.invoke(cli, ["gateway", "check", "--config", str(toml)])
    assert ok.exit_code == 0 and "ok (lighting groups: Rue de la Mairie)" in ok.output
    r = runner.invoke(
        cli,
        ["gateway", "check", "--config", str(toml), "--node", "lamp-007", "--night", "2026-10-25"],
    )
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == "Rue de la Mairie: night of Sunday 2026-10-25, times in Europe/Paris"
    assert "Mon 26 01:00 CET  Mon 26 05:00 CET  off    switch-off 01:00-05:00 (sun-thu)" in r.output
    assert "Sun 25 22:00 CET  Mon 26 01:00 CET  50 %" in r.output
    bad = runner.invoke(cli, ["gateway", "check", "--config", str(toml), "--group", "Rue Haute"])
    assert bad.exit_code == 1 and "groups: 'Rue de la Mairie'" in bad.output
    # JSON for a script: ISO 8601 UTC, as every command's JSON (the town's offset changes in
    # the night of October: noon is 10:00Z on Saturday, 11:00Z on Sunday).
    r = runner.invoke(
        cli,
        [
            "gateway",
            "check",
            "--config",
            str(toml),
            "--group",
            "Rue de la Mairie",
            "--night",
            "2026-10-24",
            "--format",
            "json",
        ],
    )
    night = json.loads(r.output)
    assert night[0]["start"] == "2026-10-24T10:00:00Z"
    assert night[-1]["end"] == "2026-10-25T11:00:00Z"
    assert [p["level"] for p in night] == [0.0, 1.0, 0.5, 0.0]  # a Saturday: no switch-off
