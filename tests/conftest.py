"""Fixtures shared by the test files. Helpers that are plain functions stay in the
``*_helpers.py`` modules; what needs pytest's setup and teardown is here."""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _point_decimal_locale(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite runs in CI's locale (C.UTF-8, a decimal point) whatever the developer's own:
    a CSV follows the locale (gateway.render.locale_decimal_comma), so under fr_FR every plain
    ``--format csv`` a test reads would be French Excel's."""
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_NUMERIC", raising=False)
    monkeypatch.setenv("LANG", "C.UTF-8")


@pytest.fixture
def platform(tmp_path: Path) -> Iterator:
    """A real SensorThings server (django-ogc-sensorthings, sim/platform) on loopback, on
    a fresh database in ``tmp_path``; stopped after the test."""
    from sim.platform import start_platform  # starts a process: only for the tests that ask

    with start_platform(tmp_path / "platform.sqlite3") as p:
        yield p


@pytest.fixture
def clock() -> "FixedClock":
    """A clock for ``Ingest`` (``running_gateway(..., clock=clock)``) stopped at the start
    of the current minute: times a test derives from it are exact, not "within 2 s". (Not a
    date in the past: the gateway's retention and the stages still read the wall clock.)"""
    return FixedClock(int(time.time()) // 60 * 60)


class FixedClock:
    """Callable like ``time.time``; ``now`` is set by the test, never by the wall clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
