"""Errors in the town's lighting schedule (``[[detect.lighting]]``) name file, line and key,
like every other error of gateway.toml: a technician editing a schedule of several groups,
each with its switch-off windows and dimming steps, is sent to the very line at fault,
not to "lighting[1].switch_off[0].to" to count by hand."""

from pathlib import Path

import pytest

from gateway import config
from gateway.service import pipeline_config

GROUPS = """\
[site]
timezone = "Europe/Paris"

[[detect.lighting]]
name = "Rue de la Mairie"
nodes = ["lamp-00*"]

[[detect.lighting.switch_off]]
from = "01:00"
to = "05:00"

[[detect.lighting]]
name = "Place du Marché"
nodes = ["lamp-01*"]
{second}
"""
# The line where {second} begins, in the second group.
SECOND = 15


def _error(tmp_path: Path, second: str, text: str = GROUPS) -> config.ConfigError:
    path = tmp_path / "gateway.toml"
    path.write_text(text.format(second=second), encoding="utf-8")
    with pytest.raises(config.ConfigError) as e:
        pipeline_config(config.load(path))
    assert str(e.value).startswith(f"{path}:{e.value.line}: {e.value.key}: ")
    return e.value


@pytest.mark.parametrize(
    ("second", "offset", "key", "words"),
    [
        # The group's own keys.
        ("colour = 'red'", 0, "detect.lighting[1].colour", "unknown key"),
        (
            '[[detect.lighting]]\nname = "Rue Neuve"\nnodes = 3',
            2,
            "detect.lighting[2].nodes",
            "list of node id patterns",
        ),
        (
            '[[detect.lighting]]\nname = " "\nnodes = ["z"]',
            1,
            "detect.lighting[2].name",
            "the group's name",
        ),
        ("watts = 0", 0, "detect.lighting[1].watts", "between 0.1 and 100000"),
        ("watts = 'big'", 0, "detect.lighting[1].watts", "expected a number"),
        ("on_after_sunset_minutes = 600", 0, "detect.lighting[1].on_after_sunset_minutes", "180"),
        ("standby_watts = -1", 0, "detect.lighting[1].standby_watts", "between 0"),
        ("dim_tolerance_percent = 101", 0, "detect.lighting[1].dim_tolerance_percent", "100"),
        (
            '[[detect.lighting]]\nname = "Rue de la Mairie"\nnodes = ["x"]',
            1,
            "detect.lighting[2].name",
            "names two groups",
        ),
        ("switch_off = 3", 0, "detect.lighting[1].switch_off", "array of tables"),
        # A switch-off window: a table of its own below the group, the first one or a later.
        (
            '[[detect.lighting.switch_off]]\nfrom = "23:00"',
            0,
            "detect.lighting[1].switch_off[0].to",
            "missing",
        ),
        (
            "[[detect.lighting.switch_off]]\n[[detect.lighting.switch_off]]\n"
            'from = "05:00"\nto = "01:00"',
            3,
            "detect.lighting[1].switch_off[1].to",
            "not after 05:00",
        ),
        (
            '[[detect.lighting.switch_off]]\nfrom = "25:00"\nto = "05:00"',
            1,
            "detect.lighting[1].switch_off[0].from",
            "HH:MM",
        ),
        (
            '[[detect.lighting.switch_off]]\ndays = "someday"',
            1,
            "detect.lighting[1].switch_off[0].days",
            "unknown day",
        ),
        (
            '[[detect.lighting.switch_off]]\nseason = "summer"',
            1,
            "detect.lighting[1].switch_off[0].season",
            "summer time",
        ),
        (
            '[[detect.lighting.switch_off]]\nseason = ["06-31", "08-31"]',
            1,
            "detect.lighting[1].switch_off[0].season",
            "MM-DD",
        ),
        (
            '[[detect.lighting.switch_off]]\nuntil = "05:00"',
            1,
            "detect.lighting[1].switch_off[0].until",
            "unknown key",
        ),
        # A dimming step, as a table or inline: an inline one is found at its array's line.
        (
            '[[detect.lighting.dim]]\nfrom = "22:00"\npercent = 150',
            2,
            "detect.lighting[1].dim[0].percent",
            "between 0 and 100",
        ),
        (
            '[[detect.lighting.dim]]\nfrom = "22:00"',
            0,
            "detect.lighting[1].dim[0].percent",
            "missing",
        ),
        (
            'dim = [{from = "22:00", percent = 150}]',
            0,
            "detect.lighting[1].dim[0].percent",
            "between 0",
        ),
    ],
)
def test_each_lighting_error_names_file_line_and_key(tmp_path, second, offset, key, words):
    e = _error(tmp_path, second)
    assert (e.line, e.key) == (SECOND + offset, key)
    assert words in e.message


def test_a_missing_key_is_found_at_its_groups_header(tmp_path):
    # "nodes" is not in the file: the header of the group that lacks it is the line to open.
    text = (
        '[[detect.lighting]]\nname = "Rue Haute"\nnodes = ["a"]\n\n'
        '[[detect.lighting]]\nname = "Rue Basse"\n'
    )
    e = _error(tmp_path, "", text)
    assert (e.line, e.key) == (5, "detect.lighting[1].nodes") and e.message == "missing"


def test_a_lighting_key_that_is_not_an_array_of_tables(tmp_path):
    e = _error(tmp_path, "", '[detect]\nthreshold = 0.5\nlighting = "all night"\n')
    assert (e.line, e.key) == (3, "detect.lighting") and "array of tables" in e.message


def test_building_schedules_get_their_lines_too(tmp_path):
    text = (
        '[[detect.buildings]]\nnodes = ["school-*"]\nopen = "08:00"\nclose = "18:00"\n\n'
        '[[detect.buildings]]\nnodes = ["hall-*"]\nopen = "08:00"\nclose = "18:00"\n'
        "standby_watts = -1\n"
    )
    e = _error(tmp_path, "", text)
    assert (e.line, e.key) == (10, "detect.buildings[1].standby_watts")
