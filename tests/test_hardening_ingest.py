"""Issue 13, item 15: what /r says and takes, against a real gateway on loopback.

Each case is one thing a node (or someone posing as one) could send that the gateway answered
wrongly: a 4.01 text that told node ids apart, node ids with a final newline, two readings of
one channel at one time, values no sensor can measure."""

import asyncio
import logging

import pytest
from click.testing import CliRunner

from gateway.cli.main import cli
from gateway.ingest import registry
from gateway.store.db import open_db
from protocols import cose, senml
from protocols.const import (
    BAD_REQUEST,
    CHANGED,
    CHANNEL_LIMITS,
    CHANNEL_NAMES,
    UNAUTHORIZED,
)
from tests.gateway_helpers import (
    add_node,
    con_post,
    count_readings,
    exchange,
    running_gateway,
)


def run(coro):
    return asyncio.run(coro)


def test_every_4_01_says_the_same_and_only_the_log_tells_why(tmp_path, clock, caplog):
    # An unknown id answered "unknown node 'x'" and a known one "bad MAC": anyone could list
    # the fleet's ids by trying names with any key.
    async def go():
        async with running_gateway(tmp_path, clock=clock) as gw:
            add_node(gw, "lamp-001")
            good = senml.encode([("p", int(clock.now), 61)])
            forged = cose.sign(b"\x01" * 32, b"lamp-001", 1, good)
            stranger = cose.sign(b"\x01" * 32, b"lamp-999", 1, good)
            (a,) = await exchange(gw.coap_port, con_post(forged, 1))
            (b,) = await exchange(gw.coap_port, con_post(stranger, 2))
            return a, b

    with caplog.at_level(logging.WARNING, logger="reverbere.ingest"):
        a, b = run(go())
    assert a.code == b.code == UNAUTHORIZED
    assert a.payload == b.payload == b"unauthorized"
    reasons = {r.fields["reason"] for r in caplog.records if r.getMessage() == "pack rejected"}
    assert reasons == {"bad_mac", "unknown_node"}


@pytest.mark.parametrize("bad", ["lamp-9\n", "lamp-9\r\n", "\nlamp-9", "", "x" * 65, "lamp 9"])
def test_node_ids_are_checked_whole(tmp_path, bad):
    # The pattern ended in "$", which matches before a final newline: "lamp-9\n" was taken.
    db = open_db(tmp_path / "g.db")
    with pytest.raises(registry.BadNodeId):
        registry.add_node(db, bad)
    assert registry.list_nodes(db) == []


def test_node_add_refuses_an_id_with_a_final_newline(tmp_path):
    r = CliRunner().invoke(cli, ["gateway", "init", str(tmp_path / "gw")])
    assert r.exit_code == 0, r.output
    conf = str(tmp_path / "gw" / "gateway.toml")
    r = CliRunner().invoke(cli, ["node", "add", "lamp-9\n", "--config", conf])
    assert r.exit_code != 0
    assert "not a valid node id" in r.output
    r = CliRunner().invoke(cli, ["node", "add", "lamp-9", "--config", conf])
    assert r.exit_code == 0, r.output


def test_two_readings_of_one_channel_at_one_time_refuse_the_pack(tmp_path, clock):
    # The store kept the first and dropped the second without a word: which one is right is
    # unknowable, so the node is told (4.00, a reason) and nothing is stored.
    async def go():
        async with running_gateway(tmp_path, clock=clock) as gw:
            key = add_node(gw)
            t = int(clock.now) - 60
            pack = senml.encode([("p", t, 61), ("t", t, 4), ("p", t, 62)])
            (msg,) = await exchange(gw.coap_port, con_post(cose.sign(key, b"lamp-001", 1, pack), 1))
            # the same time on two channels is fine
            ok = senml.encode([("p", t, 61), ("t", t, 4)])
            (ok_msg,) = await exchange(
                gw.coap_port, con_post(cose.sign(key, b"lamp-001", 2, ok), 2)
            )
            return msg, ok_msg, count_readings(gw.cfg)

    msg, ok_msg, stored = run(go())
    assert msg.code == BAD_REQUEST
    assert b"two readings of p at time" in msg.payload
    assert ok_msg.code == CHANGED and stored == 2


def test_a_value_outside_its_channel_range_is_refused_naming_the_range(tmp_path, clock):
    async def go():
        async with running_gateway(tmp_path, clock=clock) as gw:
            key = add_node(gw)
            t = int(clock.now) - 60
            answers = {}
            seq = 0
            for channel, value in [("bat", 1e15), ("bat", 101), ("e", -1), ("t", -300)]:
                seq += 1
                body = cose.sign(key, b"lamp-001", seq, senml.encode([(channel, t, value)]))
                (answers[channel, value],) = await exchange(gw.coap_port, con_post(body, seq))
            # each channel's own bounds are taken
            edges = [(ch, t + i, CHANNEL_LIMITS[ch][i % 2]) for i, ch in enumerate(CHANNEL_NAMES)]
            seq += 1
            body = cose.sign(key, b"lamp-001", seq, senml.encode(edges))
            (edge_msg,) = await exchange(gw.coap_port, con_post(body, seq))
            return answers, edge_msg, count_readings(gw.cfg)

    answers, edge_msg, stored = run(go())
    for msg in answers.values():
        assert msg.code == BAD_REQUEST
    assert answers["bat", 1e15].payload == b"bat = 1e+15 is outside its range [0, 100] %EL"
    assert answers["t", -300].payload == b"t = -300 is outside its range [-100, 200] Cel"
    assert edge_msg.code == CHANGED, edge_msg.payload
    assert stored == len(CHANNEL_NAMES)


def test_every_channel_has_a_range_and_the_protocol_page_lists_it():
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text()
    assert set(CHANNEL_LIMITS) == set(CHANNEL_NAMES)
    for name, (low, high) in CHANNEL_LIMITS.items():
        assert low < high
        row = next(line for line in page.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"{low:g}" in row and f"{high:g}" in row, row
