"""The town's calendar: public holidays, school holidays and its own closing days.

A public building runs on a calendar, not only on a weekly schedule: a school is closed through
the school holidays, the town hall on public holidays and on the days the town decides (a
"pont", the day after Christmas). The detectors ask this module what kind of day a date is, so
that a holiday is judged against a closed day and does not teach a building that its Mondays
are quiet (docs/anomalies.md, "Building meters").

Data come from maintained packages, not from tables kept here:

* public holidays: PyPI ``holidays`` (every country and its subdivisions; France by default,
  ``subdiv`` e.g. ``"57"`` for the Moselle's extra days);
* French school holidays by zone A, B or C: PyPI ``vacances-scolaires-france``, whose data
  (the Ministry's calendar) covers 1990 to 2028 in version 0.12; a date outside its years is
  *not known* (:func:`is_school_holiday` returns None), not silently "school day";
* the town's own closing days: a text file (``[detect] closing_days``), one ``YYYY-MM-DD`` or
  ``YYYY-MM-DD..YYYY-MM-DD`` per line, ``#`` starts a comment.
"""

import datetime as dt
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import holidays
from vacances_scolaires_france import SchoolHolidayDates, UnsupportedYearException

DEFAULT_COUNTRY = "FR"
SCHOOL_ZONES = ("A", "B", "C")


class CalendarError(ValueError):
    """A bad country, zone or closing-days file; the message names what is wrong and where."""


@cache
def _public(country: str, subdiv: str | None) -> holidays.HolidayBase:
    try:
        return holidays.country_holidays(country, subdiv=subdiv, language="fr")
    except NotImplementedError as e:  # holidays' own error for an unknown country or subdiv
        raise CalendarError(f"no public holidays known for {country!r} {subdiv or ''}") from e


@cache
def _school() -> SchoolHolidayDates:
    return SchoolHolidayDates()  # reads its CSV once (about 14,000 rows)


def is_public_holiday(
    date: dt.date, country: str = DEFAULT_COUNTRY, subdiv: str | None = None
) -> bool:
    """Whether ``date`` is a public holiday in ``country`` (ISO 3166 code, e.g. ``"FR"``) and,
    if given, its subdivision (``holidays``' codes)."""
    return date in _public(country, subdiv)


def public_holiday_name(
    date: dt.date, country: str = DEFAULT_COUNTRY, subdiv: str | None = None
) -> str | None:
    """The holiday's name in the package's default language (French for France), or None."""
    return _public(country, subdiv).get(date)


def is_school_holiday(date: dt.date, zone: str) -> bool | None:
    """Whether French schools of ``zone`` (A, B or C) are on holiday on ``date``; None when the
    package has no data for that year (it covers 1990 to 2028 in version 0.12)."""
    zone = zone.upper()
    if zone not in SCHOOL_ZONES:
        raise CalendarError(f"unknown school zone {zone!r} (one of A, B, C)")
    try:
        return _school().is_holiday_for_zone(date, zone)
    except UnsupportedYearException:
        return None


def read_closing_days(path: str | Path) -> frozenset[dt.date]:
    """The town's own closing days from ``path``; :class:`CalendarError` names the line at
    fault."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CalendarError(f"{path}: cannot read the closing days ({e.strerror})") from e
    days: set[dt.date] = set()
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        first, _, last = line.partition("..")
        try:
            a = dt.date.fromisoformat(first.strip())
            b = dt.date.fromisoformat(last.strip()) if last else a
        except ValueError:
            raise CalendarError(
                f"{path}:{n}: expected YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD, got {line!r}"
            ) from None
        if b < a:
            raise CalendarError(f"{path}:{n}: the range ends before it starts")
        if (b - a).days > 366:
            raise CalendarError(f"{path}:{n}: a range of more than a year")
        while a <= b:
            days.add(a)
            a += dt.timedelta(days=1)
    return frozenset(days)


@dataclass(frozen=True)
class Calendar:
    """What the detectors need: is a local date a day off for this building?

    ``country`` empty means no public holidays (a site whose country is unknown);
    ``school_zone`` set means school holidays count too (for schools only)."""

    country: str = DEFAULT_COUNTRY
    subdiv: str | None = None
    closing_days: frozenset[dt.date] = field(default_factory=frozenset)

    def day_off(self, date: dt.date, school_zone: str | None = None) -> str | None:
        """Why ``date`` is a day off (a few words in French, for reasons shown to people), or
        None on an ordinary day."""
        if date in self.closing_days:
            return "fermeture municipale"
        if self.country:
            name = public_holiday_name(date, self.country, self.subdiv)
            if name is not None:
                return f"jour férié ({name})"
        if school_zone and is_school_holiday(date, school_zone):
            return f"vacances scolaires (zone {school_zone.upper()})"
        return None
