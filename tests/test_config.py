"""The TOML config: defaults, the commented template, and errors naming file, line and key."""

import pytest

from gateway import config


def test_the_template_says_exactly_the_defaults(tmp_path):
    from_template = config.loads(config.TEMPLATE, tmp_path / "gateway.toml")
    from_nothing = config.loads("", tmp_path / "gateway.toml")
    assert from_template == from_nothing
    assert from_nothing.database == tmp_path / "reverbere.db"
    assert from_nothing.coap_port == 5683 and from_nothing.commit_delay == 0.001


def test_syntax_errors_name_file_and_line(tmp_path):
    p = tmp_path / "g.toml"
    p.write_text('[coap]\nport = 5683\nhost = "::\n')
    with pytest.raises(config.ConfigError) as e:
        config.load(p)
    assert e.value.line == 3 and str(e.value).startswith(f"{p}:3: ")


@pytest.mark.parametrize(
    "text, line, key, words",
    [
        ('[coap]\nhost = "::"\nport = "x"\n', 3, "coap.port", "expected an integer"),
        ("[store]\n\ndisk_budget_mb = 0\n", 3, "store.disk_budget_mb", "at least 1"),
        ("[http]\nport = 70000\n", 2, "http.port", "at most 65535"),
        ('[log]\nlevel = "loud"\n', 2, "log.level", "one of"),
        ("[coap]\nprt = 1\n", 2, "coap.prt", "unknown key"),
        ("[node_defaults]\ninterval = 0\n", 2, "node_defaults.interval", "positive"),
        ('[nodes."lamp-1"]\n\npack = true\n', 3, "nodes.lamp-1.pack", "positive"),
        ("coap = 3\n", 1, "coap", "expected a table"),
    ],
)
def test_bad_values_name_file_line_and_key(tmp_path, text, line, key, words):
    with pytest.raises(config.ConfigError) as e:
        config.loads(text, tmp_path / "g.toml")
    assert (e.value.line, e.value.key) == (line, key)
    assert words in str(e.value) and str(tmp_path / "g.toml") in str(e.value)


def test_values_units_overrides_and_other_sections(tmp_path):
    cfg = config.loads(
        '[gateway]\ndatabase = "/var/lib/x.db"\n[store]\ndisk_budget_mb = 2\ncommit_delay_ms = 5\n'
        '[node_defaults]\ninterval = 120\n[nodes."lamp-7"]\npack = 5\n'
        '[sync]\nurl = "http://platform"\n',
        tmp_path / "g.toml",
        {"coap_port": 0},
    )
    assert str(cfg.database) == "/var/lib/x.db"
    assert cfg.disk_budget == 2 << 20 and cfg.commit_delay == pytest.approx(0.005)
    assert cfg.coap_port == 0
    assert cfg.node_config("lamp-7") == {"interval": 120, "pack": 5}
    assert cfg.node_config("lamp-8") == {"interval": 120, "pack": 10}
    assert cfg.section("sync") == {"url": "http://platform"}  # kept for the stage that owns it


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(tmp_path / "nope.toml")
