"""The gateway decodes only the structure the protocol allows, before and after the MAC check.

Each case is a datagram that ``cbor2.loads`` would take (and, for some tags, act on) but
``protocols.cbor`` refuses: over real UDP each must get 4.00 with the strict decoder's own
words in the answer, store nothing, and leave the node's counter where it was.
"""

import asyncio
import re
from decimal import Decimal

import cbor2
import pytest
from cbor2 import CBORTag
from gateway_helpers import (
    add_node,
    con_post,
    count_readings,
    exchange,
    http_get,
    metric,
    minute_readings,
    running_gateway,
)

from protocols import cbor, cose, senml
from protocols.const import BAD_REQUEST, CHANGED
from protocols.errors import DecodeError

KID = b"lamp-001"
TAG8 = b"12345678"
# A regular expression as long as a datagram allows: cbor2 compiles it for anyone (tag 35).
REGEX = "(?:" + "|".join(f"[a-z]{{{k},{k + 7}}}x" for k in range(1, 50)) + ")+"


def mac0_around(protected: object, unprotected: object = None) -> bytes:
    """A COSE_Mac0 shape whose protected header is ``protected`` (what an attacker chose)."""
    return cbor2.dumps(CBORTag(17, [protected, unprotected or {4: KID}, b"", TAG8]))


def test_cbor2_would_act_on_these_tags_which_is_why_it_no_longer_sees_them():
    # Pins the hazard the strict decoder removes: cbor2 builds objects from tags 35 and 4.
    assert isinstance(cbor2.loads(cbor2.dumps(CBORTag(35, REGEX))), re.Pattern)
    assert cbor2.loads(cbor2.dumps(CBORTag(4, [-1, 3]))) == Decimal("0.3")


HOSTILE = {
    "tag 35 (regex)": (mac0_around(CBORTag(35, REGEX)), "tag 35 is not part"),
    "tag 4 (decimal)": (mac0_around(CBORTag(4, [-1, 3])), "tag 4 is not part"),
    "tag 5 (bigfloat)": (mac0_around(CBORTag(5, [-1, 3])), "tag 5 is not part"),
    "tag 2 (bignum)": (mac0_around(CBORTag(2, b"\x01" * 400)), "tag 2 is not part"),
    "deep nesting": (b"\xd1\x84" + b"\x81" * 900 + b"\x00", "nested deeper"),
    "indefinite array": (b"\xd1\x9f" + mac0_around(b"")[2:] + b"\xff", "indefinite"),
    "undefined kid": (mac0_around(b"", {4: cbor2.undefined}), "simple value 23"),
    "repeated kid": (b"\xd1\x84\x40\xa2\x04\x41a\x04\x41b\x40\x48" + TAG8, "repeated map key"),
    "trailing bytes": (cose.sign(b"k" * 32, KID, 1, b"\x80") + b"\x00", "trailing"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_the_strict_decoder_raises_at_the_first_thing_outside_the_protocol(name):
    data, words = HOSTILE[name]
    assert len(data) <= 1024, "must fit the gateway's max_payload to reach the decoder"
    with pytest.raises(DecodeError, match=words):
        cose.decode(data)


def test_hostile_datagrams_get_4_00_store_nothing_and_leave_the_counter(tmp_path):
    async def go():
        async with running_gateway(tmp_path) as gw:
            key = add_node(gw)
            for mid, (name, (data, words)) in enumerate(HOSTILE.items()):
                (msg,) = await exchange(gw.coap_port, con_post(data, mid))
                assert msg.code == BAD_REQUEST, name
                assert words in msg.payload.decode(), (name, msg.payload)
            # Signed by the node, then refused after the MAC check: the pack carries tag 35,
            # a repeated label, a record nested too deep.
            bad_packs = [
                cbor2.dumps([{-2: "p", -3: CBORTag(35, "x+"), 2: 1}]),
                b"\x81\xa2\x02\x01\x02\x02",
                cbor2.dumps([{-2: "p", 2: 1, 0: [[[[[[[[[[[[[[[["t"]]]]]]]]]]]]]]]]}]),
            ]
            for seq, pack in enumerate(bad_packs, 1):
                wire = con_post(cose.sign(key, KID, seq, pack), 100 + seq)
                (msg,) = await exchange(gw.coap_port, wire)
                assert msg.code == BAD_REQUEST, pack
            assert count_readings(gw.cfg) == 0
            _, text = await http_get(gw.http_port, "/metrics")
            bad_cose = metric(text, 'reverbere_packs_rejected_total{reason="bad_cose"}')
            assert bad_cose == len(HOSTILE)
            assert metric(text, 'reverbere_packs_rejected_total{reason="bad_senml"}') == 3
            # A refused pack never moved the counter: a good pack with counter 1 is stored.
            good = cose.sign(key, KID, 1, senml.encode(minute_readings(3)))
            (msg,) = await exchange(gw.coap_port, con_post(good, 200))
            assert msg.code == CHANGED
            assert count_readings(gw.cfg) == 3

    asyncio.run(go())


def test_what_the_node_sends_still_decodes_exactly_as_before():
    # The strict decoder and cbor2 agree on every message the node's code makes.
    readings = [("p", 1764000000 + 60 * k, 60.5 + k) for k in range(10)] + [("e", 1764000000, 7)]
    msg = cose.sign(b"k" * 32, KID, 300, senml.encode(readings))
    strict = cose.decode(msg)
    loose = cose.parse(cbor2.loads(msg), cbor2.loads)
    assert (strict.kid, strict.seq, strict.payload, strict.tag) == (
        loose.kid,
        loose.seq,
        loose.payload,
        loose.tag,
    )
    assert cbor.loads(strict.payload) == cbor2.loads(strict.payload)
