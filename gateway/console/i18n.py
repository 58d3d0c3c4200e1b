"""The console's languages: French first, English second, the browser's Accept-Language
chooses. Numbers and dates in that language's format (Babel), dates in the town's zone.

The words are in ``locale/<lang>/LC_MESSAGES/console.po`` (msgids in English, in the
templates and in ``MESSAGES`` here). They are compiled in memory when this module is
imported (Babel's ``read_po``/``write_mo``): no ``.mo`` file to build or forget, and a
catalogue that does not parse fails at start, not on a page. ``tests/test_console_i18n.py``
extracts every msgid from the templates and checks both catalogues translate each one.
"""

import datetime as dt
import gettext
import io
from pathlib import Path
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_datetime, format_timedelta
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal, format_percent


def N_(msgid: str) -> str:
    """Mark ``msgid`` for the catalogues; it is translated where it is shown."""
    return msgid


LOCALE_DIR = Path(__file__).parent / "locale"
LANGUAGES = ("fr", "en")  # the first is the default
DOMAIN = "console"


def _compile(lang: str) -> gettext.GNUTranslations:
    with open(LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po", "rb") as f:
        catalog = read_po(f, locale=lang)
    buf = io.BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return gettext.GNUTranslations(buf)


CATALOGUES: dict[str, gettext.GNUTranslations] = {lang: _compile(lang) for lang in LANGUAGES}


def choose(accept_language: str | None) -> str:
    """The first of ``LANGUAGES`` the browser asks for (by its q-values), else French."""
    wanted = []
    for i, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        wanted.append((-q, i, tag.strip().lower().split("-")[0]))
    for _, _, lang in sorted(wanted):
        if lang in LANGUAGES:
            return lang
    return LANGUAGES[0]


class Formatter:
    """Numbers and times for one language and the town's zone (the Jinja filters)."""

    def __init__(self, lang: str, tz: ZoneInfo):
        self.lang = lang
        self.locale = Locale.parse({"fr": "fr_FR", "en": "en_GB"}[lang])
        self.tz = tz

    def number(self, value: float | None, digits: int = 1) -> str:
        if value is None:
            return "—"
        return format_decimal(
            value, format=f"#,##0.{'0' * digits}" if digits else "#,##0", locale=self.locale
        )

    def when(self, ts: float | None) -> str:
        """A Unix time as the town's local date and time, with the zone's abbreviation."""
        if ts is None:
            return "—"
        at = dt.datetime.fromtimestamp(ts, dt.UTC)
        return format_datetime(at, "dd/MM/yyyy HH:mm", tzinfo=self.tz, locale=self.locale)

    def local(self, ts: float, pattern: str) -> str:
        """A Unix time in the town's zone with a Babel pattern (``HH:mm``, ``dd/MM``)."""
        return format_datetime(dt.datetime.fromtimestamp(ts, dt.UTC), pattern, self.tz, self.locale)

    def size(self, n: float | None) -> str:
        """Bytes in the language's units (``1,2 Go``, ``1.2 GB``)."""
        if n is None:
            return "—"
        units = (
            ("o", "ko", "Mo", "Go", "To") if self.lang == "fr" else ("B", "kB", "MB", "GB", "TB")
        )
        i = 0
        while n >= 1000 and i < len(units) - 1:
            n, i = n / 1000, i + 1
        return f"{self.number(n, 0 if i == 0 else 1)} {units[i]}"

    def percent(self, fraction: float | None) -> str:
        """A change as a signed percentage (``+12 %``), ``—`` without a reference."""
        if fraction is None:
            return "—"
        return format_percent(fraction, "+#,##0 %;-#,##0 %", locale=self.locale)

    def duration(self, seconds: float) -> str:
        """A duration in words (``3 jours``), to the largest unit."""
        return format_timedelta(dt.timedelta(seconds=seconds), threshold=1.5, locale=self.locale)

    def zone(self) -> str:
        return str(self.tz)
