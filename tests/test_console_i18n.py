"""The console's catalogues: every word of the templates and of the code marked with ``_``
or ``N_`` is translated in French and in English, with the same placeholders, and dates and
numbers come out in each language's format in the town's zone."""

import re
from pathlib import Path
from zoneinfo import ZoneInfo

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from gateway.console import i18n

CONSOLE = Path(i18n.__file__).parent
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def msgids() -> set[str]:
    """What Babel's extractors find, as a translator's tool (pybabel extract) would."""
    found = set()
    for directory, method in ((CONSOLE / "templates", "jinja2"), (CONSOLE, "python")):
        pattern = "**.html" if method == "jinja2" else "**.py"
        for _file, _line, msg, _comments, _context in extract_from_dir(
            directory,
            [(pattern, method)],
            keywords={"_": None, "N_": None, "gettext": None},
            options_map={pattern: {"extensions": "jinja2.ext.i18n"}},
        ):
            found.add(msg)
    return found


def test_every_message_is_translated_in_both_languages():
    wanted = msgids()
    assert len(wanted) > 40  # the extraction found the templates' words
    for lang in i18n.LANGUAGES:
        with open(CONSOLE / "locale" / lang / "LC_MESSAGES" / "console.po", "rb") as f:
            catalog = read_po(f, locale=lang)
        have = {m.id: m for m in catalog if m.id}
        assert wanted - have.keys() == set(), f"{lang}: untranslated"
        assert have.keys() - wanted == set(), f"{lang}: obsolete entries"
        for msgid, m in have.items():
            assert m.string and not m.fuzzy, (lang, msgid)
            assert set(PLACEHOLDER.findall(msgid)) == set(PLACEHOLDER.findall(m.string)), msgid


def test_the_browser_chooses_french_first():
    assert i18n.choose(None) == "fr"
    assert i18n.choose("en-GB,en;q=0.9") == "en"
    assert i18n.choose("de-DE,en;q=0.5,fr;q=0.8") == "fr"  # by q-value, not by order
    assert i18n.choose("es") == "fr"


def test_numbers_and_times_in_french_in_the_towns_zone():
    fr = i18n.Formatter("fr", ZoneInfo("Europe/Paris"))
    assert fr.number(12345.678) == "12\u202f345,7"  # Babel: a narrow no-break space
    assert fr.when(1_719_835_200) == "01/07/2024 14:00"  # 12:00 UTC, summer time
    assert fr.when(1_704_110_400) == "01/01/2024 13:00"  # 12:00 UTC, winter time
    en = i18n.Formatter("en", ZoneInfo("Europe/Paris"))
    assert en.number(12345.678) == "12,345.7"
