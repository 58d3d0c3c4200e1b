"""Errors in the alert routes (``[[alerts.routes]]``) name file, line and key as every other
error of gateway.toml does (gateway.config's locator, which reads arrays of tables as TOML
does): the technician who wrote three routes is sent to the line at fault in the right one,
and the key reads like the lighting groups' (``alerts.routes[1].email``)."""

from pathlib import Path

import pytest

from gateway import config
from gateway.alerts.config import from_config as alerts_config

# Three routes, the second below a table that is not a route: its keys must not be mistaken
# for the first route's, nor the third's for the second's.
ROUTES = """\
[site]
timezone = "Europe/Paris"

[[alerts.routes]]
name = "astreinte"
webhook = "http://127.0.0.1:9/hook"

[alerts.smtp]
host = "smtp.mairie.test"

[[alerts.routes]]
name = "services"
{second}

[[alerts.routes]]   # the energy manager's phone
name = "energie"
ntfy = "https://ntfy.sh/mairie-energie"
"""
SECOND = 13  # the line where {second} begins


def _error(tmp_path: Path, second: str) -> config.ConfigError:
    path = tmp_path / "gateway.toml"
    path.write_text(ROUTES.format(second=second), encoding="utf-8")
    with pytest.raises(config.ConfigError) as e:
        alerts_config(config.load(path), "Europe/Paris")
    assert str(e.value) == f"{path}:{e.value.line}: {e.value.key}: {e.value.message}"
    return e.value


@pytest.mark.parametrize(
    ("second", "offset", "key", "words"),
    [
        # A key of the second route, on its own line.
        (
            'email = ["services@mairie.test"]\ncolour = "red"',
            1,
            "alerts.routes[1].colour",
            "unknown key",
        ),
        (
            'email = ["services@mairie", "x"]',
            0,
            "alerts.routes[1].email",
            "not an e-mail address: 'x'",
        ),
        ('webhook = "ftp://x/"', 0, "alerts.routes[1].webhook", "expected an http(s) URL"),
        ('webhook = "http://x/"\ntoken = ""', 1, "alerts.routes[1].token", "non-empty string"),
        (
            'webhook = "http://x/"\n\nkinds = ["dark"]',
            2,
            "alerts.routes[1].kinds",
            "unknown kind 'dark'",
        ),
        (
            'webhook = "http://x/"\nseverity = "high"',
            1,
            "alerts.routes[1].severity",
            "must be one of",
        ),
        # A value spread over lines: its first line.
        ('webhook = "http://x/"\nnodes = [\n  3,\n]', 1, "alerts.routes[1].nodes", "node ids"),
        # The route as a whole (no way, or two): its header.
        ('nodes = ["lamp-*"]', -2, "alerts.routes[1]", "exactly one of email, webhook or ntfy"),
    ],
)
def test_a_route_error_names_its_line_and_element(tmp_path, second, offset, key, words):
    error = _error(tmp_path, second)
    assert (error.line, error.key) == (SECOND + offset, key)
    assert words in error.message


def test_a_name_two_routes_take_is_found_at_the_second(tmp_path):
    path = tmp_path / "gateway.toml"
    text = ROUTES.format(second='webhook = "http://x/"').replace('"services"', '"astreinte"')
    path.write_text(text, encoding="utf-8")
    with pytest.raises(config.ConfigError) as e:
        alerts_config(config.load(path), "Europe/Paris")
    assert (e.value.line, e.value.key) == (SECOND - 1, "alerts.routes[1].name")
    assert e.value.message == "'astreinte' names two routes"


def test_a_route_by_email_without_a_server_is_found_at_its_address(tmp_path):
    path = tmp_path / "gateway.toml"
    text = ROUTES.format(second='email = "services@mairie.test"')
    path.write_text(text.replace('[alerts.smtp]\nhost = "smtp.mairie.test"\n', ""))
    with pytest.raises(config.ConfigError) as e:
        alerts_config(config.load(path), "Europe/Paris")
    assert (e.value.line, e.value.key) == (SECOND - 2, "alerts.routes[1].email")
    assert "needs an [alerts.smtp] server" in e.value.message


def test_the_third_route_and_the_smtp_table_have_their_own_lines(tmp_path):
    # The third route's key is found below the third header, not the first's.
    path = tmp_path / "gateway.toml"
    text = ROUTES.format(second='email = "services@mairie.test"')
    path.write_text(text.replace("ntfy.sh/mairie-energie", "ntfy.sh/"), encoding="utf-8")
    with pytest.raises(config.ConfigError) as e:
        alerts_config(config.load(path), "Europe/Paris")
    assert (e.value.line, e.value.key) == (17, "alerts.routes[2].ntfy")
    # A key of [alerts.smtp], between two routes.
    path.write_text(text.replace('host = "smtp.mairie.test"', 'host = ""'), encoding="utf-8")
    with pytest.raises(config.ConfigError) as e:
        alerts_config(config.load(path), "Europe/Paris")
    assert (e.value.line, e.value.key) == (9, "alerts.smtp.host")
