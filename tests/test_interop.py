"""protocols/ against independent implementations: cbor2, cwt (COSE) and aiocoap (CoAP).

Whatever the node builds, the gateway's libraries must read the same way, and whatever an
independent COSE stack signs, the node's code must verify.
"""

import math
import os
import time

import cbor2
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from cwt import COSE, COSEKey

from protocols import cbor, coap, cose, senml
from protocols.const import CF_COSE_MAC0, CON, CONTENT_FORMAT, POST, URI_PATH
from tests.portable.test_cbor import VECTORS

KEY = os.urandom(32)
KID = b"lamp-042"
T0 = 1764000000


def cwt_key(key=KEY, kid=KID):
    return COSEKey.from_symmetric_key(key, alg="HMAC 256/64", kid=kid)


@pytest.mark.parametrize("value,hexed", VECTORS)
def test_cbor2_decodes_what_protocols_encodes(value, hexed):
    assert cbor2.loads(cbor.dumps(value)) == value


@pytest.mark.parametrize(
    "value",
    [2**63, -(2**63), 0.1, 1e-310, -1e38, "é" * 30, b"\x00" * 300, list(range(300)), {"a": [1.5]}],
)
def test_protocols_decodes_what_cbor2_encodes(value):
    assert cbor.loads(cbor2.dumps(value)) == value


def test_nan_agrees_with_cbor2():
    assert math.isnan(cbor2.loads(cbor.dumps(float("nan"))))
    assert math.isnan(cbor.loads(cbor2.dumps(float("nan"))))


def test_senml_pack_reads_the_same_through_cbor2():
    readings = [("p", T0 + 60 * k, 60.5 + k) for k in range(50)] + [("e", T0, 123456)]
    data = senml.encode(readings)
    assert senml.resolve(cbor2.loads(data), T0) == senml.decode(data, T0)


def test_cwt_verifies_a_mac0_made_by_protocols():
    payload = senml.encode([("p", T0, 61)])
    msg = cose.sign(KEY, KID, 42, payload)
    assert COSE.new().decode(msg, cwt_key()) == payload


def test_cwt_rejects_a_mac0_made_with_another_key():
    msg = cose.sign(os.urandom(32), KID, 42, b"x")
    with pytest.raises(Exception, match=r"(?i)mac|verif|fail"):
        COSE.new().decode(msg, cwt_key())


def test_protocols_verifies_a_mac0_made_by_cwt():
    payload = senml.encode([("p", T0, 61)])
    msg = COSE.new().encode(
        payload,
        cwt_key(),
        protected={"alg": "HMAC 256/64", 6: cose.partial_iv(1000)},
        unprotected={"kid": KID},
    )
    parsed = cose.parse(cbor2.loads(msg), cbor2.loads)
    assert (parsed.kid, parsed.seq, parsed.payload) == (KID, 1000, payload)
    assert parsed.verify(KEY)
    assert not parsed.verify(os.urandom(32))
    assert cose.decode(msg).verify(KEY)  # and through protocols' own CBOR decoder


def test_aiocoap_parses_the_node_request():
    body = cose.sign(KEY, KID, 1, senml.encode([("p", T0, 61)]))
    data = coap.encode(
        CON,
        POST,
        0xBEEF,
        token=b"\x01\x02",
        options=[(URI_PATH, b"r"), (CONTENT_FORMAT, coap.uint_option(CF_COSE_MAC0))],
        payload=body,
    )
    msg = Message.decode(data)
    assert msg.code == Code.POST
    assert msg.mid == 0xBEEF and msg.token == b"\x01\x02"
    assert msg.opt.uri_path == ("r",)
    assert int(msg.opt.content_format) == CF_COSE_MAC0
    assert msg.payload == body


def _ack(code, mid, **kwargs):
    # Message IDs, tokens and types are normally the library's business; set them by hand
    # only to get the bytes of a piggybacked response.
    from aiocoap.numbers.types import Type

    msg = Message(code=code, **kwargs)
    msg.mtype, msg.mid, msg.token = Type.ACK, mid, b"t"
    return msg.encode()


def test_protocols_parses_an_aiocoap_response():
    parsed = coap.decode(_ack(Code.SERVICE_UNAVAILABLE, 77, max_age=30))
    assert (parsed.code, parsed.mid, parsed.token) == (0xA3, 77, b"t")
    assert coap.option_uint(parsed.option(14)) == 30
    ok = coap.decode(_ack(Code.CHANGED, 78, payload=cbor2.dumps({"t": int(time.time())})))
    assert "t" in cbor.loads(ok.payload)
