"""`reverbere sync status` and `sync push` read [sync] as the gateway does
(``gateway.service.pipeline_config``): a mistake is shown with its file, line and key, the
same words `gateway run` would refuse to start with, not a bare key to look for."""

import pytest
from click.testing import CliRunner

from gateway.cli.main import cli
from gateway.store.db import open_db

CONFIG = """\
[gateway]
database = "reverbere.db"

[site]
timezone = "Europe/Paris"
latitude = 45.76
longitude = 4.84

[sync]
url = "http://127.0.0.1:9/v1.1"
{bad}
"""
BAD_LINE = 11


@pytest.mark.parametrize("command", ["status", "push"])
@pytest.mark.parametrize(
    ("bad", "key", "words"),
    [
        ("batch_rows = 0", "sync.batch_rows", "must be at least 1, got 0"),
        ('daily_budget = "lots"', "sync.daily_budget", "lots"),
        ('[sync.mqtt]\npreset = "aws"', "sync.mqtt.preset", "the only preset"),
    ],
)
def test_a_sync_error_names_file_line_and_key(tmp_path, command, bad, key, words):
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG.format(bad=bad), encoding="utf-8")
    open_db(tmp_path / "reverbere.db").close()
    result = CliRunner().invoke(cli, ["sync", command, "--config", str(path)])
    assert result.exit_code == 1
    line = BAD_LINE + bad.count("\n")
    assert f"Error: {path}:{line}: {key}: " in result.output
    assert words in result.output
    assert "hint: `reverbere gateway init DIR`" in result.output


def test_a_link_switched_off_is_still_checked_and_shown_as_not_configured(tmp_path):
    path = tmp_path / "gateway.toml"
    text = CONFIG.format(bad='target = "none"')
    open_db(tmp_path / "reverbere.db").close()
    path.write_text(text + "retries = 3\n", encoding="utf-8")  # a key [sync] does not have
    result = CliRunner().invoke(cli, ["sync", "status", "--config", str(path)])
    assert result.exit_code == 1 and f"{path}:12: sync.retries: unknown key" in result.output
    path.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(cli, ["sync", "status", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "target:        (not configured)" in result.output
    result = CliRunner().invoke(cli, ["sync", "push", "--config", str(path)])
    assert result.exit_code == 1 and "no [sync] target configured" in result.output
