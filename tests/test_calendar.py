"""The town's calendar (gateway/pipeline/calendar.py): public holidays, school zones, its own
closing days, and the [detect] keys that choose them."""

import datetime as dt

import pytest

from gateway.pipeline.calendar import (
    Calendar,
    CalendarError,
    is_public_holiday,
    is_school_holiday,
    read_closing_days,
)
from gateway.pipeline.detect import DetectConfig, DetectConfigError


def test_french_public_holidays_by_default_with_local_ones():
    assert is_public_holiday(dt.date(2026, 7, 14))
    assert is_public_holiday(dt.date(2026, 5, 14))  # Ascension: moves with Easter
    assert not is_public_holiday(dt.date(2026, 7, 15))
    # Saint-Étienne is a holiday in Moselle (57), not in the rest of France.
    assert not is_public_holiday(dt.date(2026, 12, 26))
    assert is_public_holiday(dt.date(2026, 12, 26), "FR", "57")


def test_school_holidays_by_zone_and_unknown_years():
    # February holidays are staggered: zone A and zone C are not off in the same weeks.
    feb = [dt.date(2026, 2, 7) + dt.timedelta(days=d) for d in range(35)]
    a = {d for d in feb if is_school_holiday(d, "A")}
    c = {d for d in feb if is_school_holiday(d, "C")}
    assert a and c and a != c
    assert is_school_holiday(dt.date(2026, 8, 1), "b")
    # The package's data end with 2028: a later year is unknown, not a school day.
    assert is_school_holiday(dt.date(2031, 8, 1), "A") is None
    with pytest.raises(CalendarError, match="zone"):
        is_school_holiday(dt.date(2026, 8, 1), "D")


def test_closing_days_file_and_its_mistakes(tmp_path):
    f = tmp_path / "fermetures.txt"
    f.write_text("# pont de l'Ascension\n2026-05-15\n2026-12-24..2026-12-26  # Noël\n\n")
    days = read_closing_days(f)
    assert days == {dt.date(2026, 5, 15), *(dt.date(2026, 12, d) for d in (24, 25, 26))}
    cal = Calendar(closing_days=days)
    assert cal.day_off(dt.date(2026, 5, 15)) == "fermeture municipale"
    assert cal.day_off(dt.date(2026, 7, 14)).startswith("jour férié")
    assert cal.day_off(dt.date(2026, 7, 15)) is None
    assert cal.day_off(dt.date(2026, 7, 15), "A").startswith("vacances scolaires")
    assert Calendar(country="").day_off(dt.date(2026, 7, 14)) is None
    f.write_text("2026-05-15\n15/05/2026\n")
    with pytest.raises(CalendarError, match=r"fermetures.txt:2: expected YYYY-MM-DD"):
        read_closing_days(f)


def test_detect_config_checks_the_calendar_keys(tmp_path):
    cfg = DetectConfig.from_mapping({"country": "fr", "school_zone": "c"})
    assert (cfg.country, cfg.school_zone) == ("FR", "C")
    school = {"nodes": ["ecole-*"], "open": "08:00", "close": "17:00", "school": True}
    with pytest.raises(DetectConfigError, match=r"buildings\[0\].school.*school_zone"):
        DetectConfig.from_mapping({"buildings": [school]})
    assert (
        DetectConfig.from_mapping({"buildings": [school], "school_zone": "A"}).buildings[0].school
    )
    with pytest.raises(DetectConfigError, match=r"detect\.school_zone"):
        DetectConfig.from_mapping({"school_zone": "Z"})
    with pytest.raises(DetectConfigError, match=r"detect\.country"):
        DetectConfig.from_mapping({"country": "XX"})
    with pytest.raises(DetectConfigError, match=r"detect\.closing_days.*cannot read"):
        DetectConfig.from_mapping({"closing_days": str(tmp_path / "absent.txt")})
