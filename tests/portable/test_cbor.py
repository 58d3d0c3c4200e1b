"""protocols.cbor against RFC 8949 Appendix A, and against malformed input.

Portable: runs on CPython (pytest) and inside MicroPython (tests/test_micropython.py).
"""

from protocols import cbor
from protocols.errors import DecodeError

# (value, preferred encoding in hex) from RFC 8949 Appendix A.
VECTORS = [
    (0, "00"),
    (1, "01"),
    (10, "0a"),
    (23, "17"),
    (24, "1818"),
    (25, "1819"),
    (100, "1864"),
    (1000, "1903e8"),
    (1000000, "1a000f4240"),
    (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"),
    (-1, "20"),
    (-10, "29"),
    (-100, "3863"),
    (-1000, "3903e7"),
    (0.0, "f90000"),
    (-0.0, "f98000"),
    (1.0, "f93c00"),
    (1.1, "fb3ff199999999999a"),
    (1.5, "f93e00"),
    (65504.0, "f97bff"),
    (100000.0, "fa47c35000"),
    (3.4028234663852886e38, "fa7f7fffff"),
    (1.0e300, "fb7e37e43c8800759c"),
    (5.960464477539063e-8, "f90001"),
    (0.00006103515625, "f90400"),
    (-4.0, "f9c400"),
    (-4.1, "fbc010666666666666"),
    (False, "f4"),
    (True, "f5"),
    (None, "f6"),
    (b"", "40"),
    (b"\x01\x02\x03\x04", "4401020304"),
    ("", "60"),
    ("a", "6161"),
    ("IETF", "6449455446"),
    ('"\\', "62225c"),
    ("\u00fc", "62c3bc"),
    ("\u6c34", "63e6b0b4"),
    ([], "80"),
    ([1, 2, 3], "83010203"),
    ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
    ({}, "a0"),
    ({1: 2, 3: 4}, "a201020304"),
    ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
]


def test_encodes_rfc8949_vectors_in_preferred_serialization():
    for value, expected in VECTORS:
        assert cbor.dumps(value).hex() == expected, (value, expected)


def test_decodes_rfc8949_vectors():
    for value, hexed in VECTORS:
        got = cbor.loads(bytes.fromhex(hexed))
        assert got == value, (hexed, got)
        if isinstance(value, float):
            assert type(got) is float


def test_decodes_the_other_float_specials():
    assert cbor.loads(bytes.fromhex("f97c00")) == float("inf")
    assert cbor.loads(bytes.fromhex("f9fc00")) == float("-inf")
    nan = cbor.loads(bytes.fromhex("f97e00"))
    assert nan != nan
    assert cbor.dumps(float("inf")).hex() == "f97c00"
    assert cbor.dumps(float("nan")).hex() == "f97e00"


def test_tags_round_trip():
    tagged = cbor.Tag(17, [b"\xa1\x01\x04", {}, b"payload", b"12345678"])
    data = cbor.dumps(tagged)
    assert data[0] == 0xD1  # tag 17 in one byte
    assert cbor.loads(data) == tagged
    # Any tag encodes; only the wire's tag 17 decodes (RFC 8949 Appendix A: a date, tag 0).
    assert cbor.dumps(cbor.Tag(0, "2013-03-21T20:04:00Z")).hex() == (
        "c074323031332d30332d32315432303a30343a30305a"
    )
    assert _rejects("c074323031332d30332d32315432303a30343a30305a")


def test_refuses_every_tag_but_17():
    # What cbor2 would interpret for any sender: 35 compiles a regular expression, 4 and 5
    # build a decimal or a bigfloat, 2 and 3 bignums, 55799 is "self-described CBOR".
    for hexed in ("d82363612a62", "c4822003", "c5822003", "c249010000000000000000", "d9d9f700"):
        assert _rejects(hexed), hexed
    assert _rejects("81d82363612a62")  # nested as deep as you like: refused at the tag
    assert cbor.loads(bytes.fromhex("d18100")) == cbor.Tag(17, [0])


def test_refuses_what_the_wire_never_sends():
    assert _rejects("f7")  # undefined
    assert _rejects("f820")  # a one-byte simple value
    assert _rejects("a201020103")  # a repeated key: {1: 2, 1: 3}
    assert _rejects("a1f500")  # true as a map key (it would be the key 1 in Python)
    assert _rejects("a1f93c0000")  # a float as a map key
    assert cbor.loads(bytes.fromhex("a201020203")) == {1: 2, 2: 3}


def test_tuples_and_bytearrays_encode_like_lists_and_bytes():
    assert cbor.dumps((1, 2)) == cbor.dumps([1, 2])
    assert cbor.dumps(bytearray(b"ab")) == cbor.dumps(b"ab")


def test_refuses_what_it_cannot_encode():
    for bad in (object(), 2**64, -(2**64) - 1):
        try:
            cbor.dumps(bad)
        except (TypeError, ValueError):
            continue
        raise AssertionError("encoded %r" % (bad,))


def _rejects(hexed):
    try:
        cbor.loads(bytes.fromhex(hexed))
    except DecodeError:
        return True
    return False


def test_truncated_input_raises_decode_error():
    truncated = ("", "18", "19e8", "1a000f42", "44010203", "6449", "8301", "a201", "f93c", "d1")
    for hexed in truncated:
        assert _rejects(hexed), hexed


def test_huge_lengths_fail_before_allocating():
    # A byte string, an array and a map claiming 2**64 - 1 items, with nothing behind them.
    for hexed in ("5bffffffffffffffff", "9bffffffffffffffff", "bbffffffffffffffff", "5a7fffffff00"):
        assert _rejects(hexed), hexed


def test_deep_nesting_is_refused():
    assert _rejects("81" * 1000 + "00")
    assert _rejects("d1" * 1000 + "00")
    ok = "81" * cbor.MAX_DEPTH + "00"
    assert cbor.loads(bytes.fromhex(ok)) is not None


def test_other_malformations():
    assert _rejects("0001")  # trailing bytes
    assert _rejects("5f4101ff")  # indefinite length
    assert _rejects("1c")  # reserved additional info
    assert _rejects("62c328")  # invalid UTF-8
    assert _rejects("a18000")  # array as map key
    assert _rejects("f0")  # unassigned simple value
    try:
        cbor.loads("not bytes")
    except DecodeError:
        pass
    else:
        raise AssertionError("decoded a str")


def test_decode_error_is_a_value_error():
    assert issubclass(DecodeError, ValueError)
