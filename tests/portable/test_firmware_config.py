"""firmware/config.json: schema, defaults, console errors, remote settings, atomic save."""

import json

try:
    from fw_fakes import CFG_TEXT
except ImportError:
    from tests.portable.fw_fakes import CFG_TEXT

from firmware import config
from firmware.hal import MemFS


def _error(text):
    try:
        config.load(text)
    except config.ConfigError as e:
        return str(e)
    raise AssertionError("no ConfigError for %s" % text)


def _with(**kw):
    cfg = json.loads(CFG_TEXT)
    for k in kw:
        cfg[k] = kw[k]
    return json.dumps(cfg)


def test_defaults_fill_what_is_not_given():
    cfg = config.load(CFG_TEXT)
    assert cfg["port"] == 5683 and cfg["pack"] == 10 and cfg["channels"] == {"p": 60}
    assert cfg["sync_time"] is True and set(cfg) == set(config.KEYS)


def test_errors_name_the_key_and_what_is_expected():
    assert _error("{") == "config.json: not valid JSON"
    assert _error("[]") == "config.json: expected a JSON object"
    assert _error('{"node": "a"}') == "config.json: 'key' is required"
    assert "'key' must be 64 hex digits" in _error(_with(key="abc"))
    assert "'pack' must be an integer from 1 to 64 (got 'ten')" in _error(_with(pack="ten"))
    assert "'pack' must be an integer" in _error(_with(pack=True))
    assert "unknown key 'intervall'" in _error(_with(intervall=5))
    assert "'channels.p' must be an integer" in _error(_with(channels={"p": 0}))
    assert "'channels' must be channels among" in _error(_with(channels={"x": 60}))
    assert "'sync_time' must be true or false" in _error(_with(sync_time=1))


def test_shipped_config_json_is_complete_but_unprovisioned():
    # firmware/config.json lists every key at its default and leaves node, key and gateway
    # empty: a node flashed without provisioning says so on its console.
    import firmware

    path = getattr(firmware, "__file__", "/input/firmware/__init__.py")
    with open(path.rsplit("/", 1)[0] + "/config.json") as f:
        text = f.read()
    shipped = json.loads(text)
    assert set(shipped) == set(config.KEYS)
    for k, default, _, _, _ in config.SCHEMA:
        if default is not None and k != "wifi":
            assert shipped[k] == default, k
    assert "'node' must be a text" in _error(text)


def test_remote_settings_apply_interval_to_every_channel_and_ignore_bad_ones():
    cfg = config.load(_with(channels={"p": 60, "t": 300}))
    assert config.apply(cfg, {"interval": 30, "pack": 5, "node": "other"})
    assert cfg["channels"] == {"p": 30, "t": 30} and cfg["pack"] == 5 and cfg["node"] == "lamp-1"
    assert not config.apply(cfg, {"pack": 5})  # nothing changed
    assert not config.apply(cfg, {"pack": 0, "deadline": 60})  # one bad value: none applied
    assert cfg["deadline"] == 600
    assert not config.apply(cfg, "nonsense")


def test_save_replaces_the_file_in_one_rename():
    fs = MemFS({"config.json": CFG_TEXT})
    cfg = config.load(CFG_TEXT)
    cfg["pack"] = 7
    config.save(fs, cfg)
    assert sorted(fs.files) == ["config.json"]
    assert config.load(fs.read("config.json"))["pack"] == 7


def test_channels_are_the_wire_list_but_drop():
    # The gateway refuses a pack with a channel outside protocols.const.CHANNELS (4.00, and
    # the node then drops the whole pack): config.json must refuse such a channel at boot.
    from protocols.const import CHANNELS

    # but those the node makes itself: "drop", and its firmware version's (docs/ota.md)
    assert set(config.CHANNELS) == set(CHANNELS) - {"drop", "fw", "fwt", "fwx"}
    for ch in config.CHANNELS:
        assert config.load(_with(channels={ch: 60}))["channels"] == {ch: 60}
    for ch in ("i", "u", "drop", "x"):
        assert "'channels' must be channels among p, e, t, lux" in _error(_with(channels={ch: 60}))
