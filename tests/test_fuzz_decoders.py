"""Every decoder answers any bytes with a value or its own error, never another exception.

Property-based (hypothesis). The inputs are random bytes, and valid messages with a few bytes
changed, so that the decoders get past their first checks. Example counts stay modest: the
suite runs on 2 cores in CI.
"""

import asyncio
import contextlib

import pytest
from aiocoap.numbers.codes import Code
from gateway_helpers import add_node, running_gateway
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import cbor, coap, cose, senml
from protocols.const import CF_COSE_MAC0
from protocols.errors import DecodeError

FAST = settings(max_examples=200, deadline=None)
KEY = bytes(range(32))
KID = b"lamp-001"
NOW = 1764000000

# What the wire carries (and so what protocols.cbor encodes and decodes).
scalars = (
    st.integers(-(2**64), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.binary(max_size=12)
    | st.booleans()
    | st.none()
)
keys = st.integers(-(2**64), 2**64 - 1) | st.text(max_size=6)
wire_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=20,
)


@st.composite
def mutated(draw, encoded):
    """``encoded`` (bytes) with up to three bytes replaced, inserted or deleted."""
    data = bytearray(draw(encoded))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(("replace", "insert", "delete")))
        pos = draw(st.integers(0, len(data)))
        if op == "insert":
            data.insert(pos, draw(st.integers(0, 255)))
        elif data and pos < len(data):
            if op == "replace":
                data[pos] = draw(st.integers(0, 255))
            else:
                del data[pos]
    return bytes(data)


readings = st.lists(
    st.tuples(
        st.sampled_from(("p", "e", "t", "lux")),
        st.integers(NOW - 86400, NOW + 60),
        st.integers(-1000, 10**6) | st.floats(-1e6, 1e6),
    ),
    min_size=1,
    max_size=12,
)
packs = readings.map(senml.encode)
signed = st.builds(lambda seq, pack: cose.sign(KEY, KID, seq, pack), st.integers(1, 2**40), packs)
hostile = st.binary(max_size=120) | mutated(wire_values.map(cbor.dumps)) | mutated(signed)


def decodes_or_refuses(decode, data):
    """Run ``decode``; DecodeError is an answer, any other exception fails the test."""
    with contextlib.suppress(DecodeError):
        decode(data)


@FAST
@given(hostile)
def test_cbor_loads(data):
    decodes_or_refuses(cbor.loads, data)


@FAST
@given(hostile)
def test_cose_decode(data):
    decodes_or_refuses(cose.decode, data)


@FAST
@given(mutated(packs) | st.binary(max_size=80) | wire_values.map(cbor.dumps))
def test_senml_decode(data):
    decodes_or_refuses(lambda d: senml.decode(d, NOW), data)


labels = st.sampled_from((-6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7, "x_", "x")) | keys


@FAST
@given(st.lists(st.dictionaries(labels, wire_values, max_size=6), max_size=4) | wire_values)
def test_senml_resolve_of_any_decoded_structure(pack):
    decodes_or_refuses(lambda p: senml.resolve(p, NOW), pack)


@FAST
@given(
    mutated(
        st.builds(
            lambda mid, token, payload: coap.encode(0, 0x45, mid, token, [(12, b"<")], payload),
            st.integers(0, 0xFFFF),
            st.binary(max_size=8),
            st.binary(max_size=20),
        )
    )
    | st.binary(max_size=40)
)
def test_coap_decode(data):
    decodes_or_refuses(coap.decode, data)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """A real gateway (its Ingest, store and writer process) driven one request at a time."""
    loop = asyncio.new_event_loop()
    context = running_gateway(tmp_path_factory.mktemp("fuzz"))
    gw = loop.run_until_complete(context.__aenter__())
    add_node(gw)
    yield loop, gw
    loop.run_until_complete(context.__aexit__(None, None, None))
    loop.close()


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(hostile)
def test_ingest_answers_4_xx_or_2_04_never_an_unexpected_error(gateway, data):
    loop, gw = gateway
    answer = loop.run_until_complete(gw._ingest.handle(data, CF_COSE_MAC0, "fuzz"))
    assert answer.code in (Code.BAD_REQUEST, Code.UNAUTHORIZED, Code.CHANGED), answer
    # the gateway's catch-all (4.00 "unexpected") would hide a decoder fault: never used
    assert answer.payload != b"unexpected"
