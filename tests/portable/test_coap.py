"""protocols.coap: the node's CoAP codec, byte-exact (RFC 7252 Section 3).

Portable: runs on CPython (pytest) and inside MicroPython (tests/test_micropython.py).
aiocoap parses what this codec builds in tests/test_interop.py.
"""

from protocols import coap
from protocols.const import (
    ACK,
    CF_COSE_MAC0,
    CHANGED,
    CON,
    CONTENT_FORMAT,
    MAX_AGE,
    POST,
    SERVICE_UNAVAILABLE,
    URI_PATH,
)
from protocols.errors import DecodeError


def test_con_post_to_r_is_byte_exact():
    data = coap.encode(
        CON,
        POST,
        0x1234,
        token=b"\xab",
        options=[(CONTENT_FORMAT, coap.uint_option(CF_COSE_MAC0)), (URI_PATH, b"r")],
        payload=b"\x01\x02",
    )
    # ver 1, CON, TKL 1 | POST | MID | token | Uri-Path(11) "r" | Content-Format(12) 17 | ff payload
    assert data.hex() == "4102" + "1234" + "ab" + "b172" + "1111" + "ff0102"


def test_decode_inverts_encode():
    opts = [(URI_PATH, b"r"), (CONTENT_FORMAT, b"\x11"), (300, b"x" * 20), (2000, b"")]
    data = coap.encode(CON, POST, 7, b"tok", opts, b"payload")
    msg = coap.decode(data)
    assert (msg.mtype, msg.code, msg.mid, msg.token) == (CON, POST, 7, b"tok")
    assert msg.options == opts
    assert msg.payload == b"payload"
    assert msg.option(CONTENT_FORMAT) == b"\x11"
    assert msg.option(99) is None


def test_long_option_lengths_use_extended_nibbles():
    for n in (12, 13, 268, 269, 1000):
        msg = coap.decode(coap.encode(CON, POST, 1, options=[(URI_PATH, b"a" * n)]))
        assert msg.options == [(URI_PATH, b"a" * n)]


def test_piggybacked_503_with_max_age():
    data = coap.encode(ACK, SERVICE_UNAVAILABLE, 9, options=[(MAX_AGE, coap.uint_option(30))])
    msg = coap.decode(data)
    assert msg.code == SERVICE_UNAVAILABLE and msg.mtype == ACK
    assert coap.option_uint(msg.option(MAX_AGE)) == 30


def test_uint_options_are_minimal():
    assert coap.uint_option(0) == b""
    assert coap.uint_option(17) == b"\x11"
    assert coap.uint_option(300) == b"\x01\x2c"
    assert coap.option_uint(b"") == 0
    assert coap.option_uint(b"\x01\x2c") == 300


def test_empty_ack_has_no_payload_marker():
    data = coap.encode(ACK, 0, 5)
    assert data.hex() == "60000005"
    assert coap.decode(data).payload == b""
    assert coap.decode(coap.encode(ACK, CHANGED, 5, payload=b"x")).payload == b"x"


def _rejects(hexed):
    try:
        coap.decode(bytes.fromhex(hexed))
    except DecodeError:
        return True
    return False


def test_malformed_messages_raise_decode_error():
    assert _rejects("")
    assert _rejects("4102")  # short header
    assert _rejects("81020001")  # version 2
    assert _rejects("49020001")  # token length 9
    assert _rejects("42020001ab")  # truncated token
    assert _rejects("40020001ff")  # marker without payload
    assert _rejects("40020001b5")  # option longer than message
    assert _rejects("40020001d1")  # truncated extended delta
    assert _rejects("40020001f0")  # reserved nibble 15
