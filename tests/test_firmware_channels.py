"""The node's channels are the gateway's: one table, protocols/const.py's CHANNEL_UNITS.

A channel that the node's config.json accepts but the gateway refuses costs the node whole
packs (a 4.00 answer, and the node drops the pack); one the gateway accepts but the node
refuses cannot be sampled. Both sides read the same table; these tests hold them to it.
"""

import time
from pathlib import Path

import cbor2
import pytest

from firmware import config, store
from gateway.config import Config
from gateway.ingest import resource
from protocols import const, senml

GW = Config(path=Path("gateway.toml"), database=Path("unused.db"))  # its defaults; no file read


def test_node_and_gateway_read_the_same_table():
    assert resource.CHANNELS is const.CHANNELS
    assert store.CHANNELS is const.CHANNEL_NAMES  # flash index: the table's fixed order
    assert tuple(const.CHANNELS) == const.CHANNEL_NAMES
    assert (*config.CHANNELS, "drop", "fw", "fwt", "fwx") == const.CHANNEL_NAMES


@pytest.mark.parametrize("channel", config.CHANNELS)
def test_every_channel_the_node_accepts_the_gateway_stores(channel):
    now = time.time()
    pack = senml.encode([(channel, int(now), 42)])
    records = senml.resolve(cbor2.loads(pack), now)
    got = resource.validate(records, "lamp-1", now, GW)
    assert [(r.channel, r.value) for r in got] == [(channel, 42)]


@pytest.mark.parametrize("channel", ["i", "u"])
def test_a_channel_the_gateway_refuses_is_refused_by_the_node_config(channel):
    with pytest.raises(resource.Rejected, match="unknown channel"):
        now = time.time()
        records = senml.resolve(cbor2.loads(senml.encode([(channel, int(now), 1)])), now)
        resource.validate(records, "lamp-1", now, GW)
    text = '{"node": "n", "key": "%s", "gateway": "gw", "channels": {"%s": 60}}'
    with pytest.raises(config.ConfigError, match="must be channels among"):
        config.load(text % ("00" * 32, channel))
