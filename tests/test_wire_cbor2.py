"""protocols.cbor against cbor2: what both must accept, read the same; what both must refuse.

The strict decoder accepts a subset of what cbor2 accepts (the intended differences are
listed in ``ONLY_CBOR2_TAKES``), and wherever it accepts, cbor2 reads the very same value:
so no message can mean one thing to the node and another to a tool built on cbor2.
"""

import math
import struct

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz_decoders import mutated, wire_values

from protocols import cbor
from protocols.errors import DecodeError

SETTINGS = settings(max_examples=200, deadline=None)


def same(a, b) -> bool:
    """Equal and of the same types all the way down (1 is not True, 0.0 is not -0.0)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or struct.pack(">d", a) == struct.pack(">d", b)
    if type(a) is not type(b):
        if isinstance(a, cbor.Tag) and isinstance(b, cbor2.CBORTag):
            return a.tag == b.tag and same(a.value, b.value)
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@SETTINGS
@given(wire_values)
def test_both_read_what_each_writes(value):
    ours = cbor.dumps(value)
    assert same(cbor.loads(ours), value)
    assert same(cbor2.loads(ours), value)
    theirs = cbor2.dumps(value)
    assert same(cbor.loads(theirs), value)


@SETTINGS
@given(mutated(wire_values.map(cbor.dumps)) | st.binary(max_size=60))
def test_whatever_the_strict_decoder_accepts_cbor2_reads_the_same(data):
    try:
        ours = cbor.loads(data)
    except DecodeError:
        return
    assert same(ours, cbor2.loads(data)), data.hex()


BOTH_REFUSE = {
    "truncated integer": "19e8",
    "string longer than the input": "5a7fffffff00",
    "array longer than the input": "9bffffffffffffffff",
    "reserved additional info": "1c",
    "invalid UTF-8": "62c328",
    "truncated float": "fa3f80",
}
ONLY_CBOR2_TAKES = {
    "tag 35 (compiled as a regex by cbor2)": "d82363612a62",
    "tag 4 (a decimal)": "c4822003",
    "tag 5 (a bigfloat)": "c5822003",
    "tag 2 (a bignum)": "c249010000000000000000",
    "tag 0 (a date)": "c074323031332d30332d32315432303a30343a30305a",
    "undefined": "f7",
    "simple value 32": "f820",
    "indefinite-length array": "9f0102ff",
    "indefinite-length byte string": "5f4101ff",
    "repeated map key": "a201020103",
    "true as a map key": "a1f500",
    "nested deeper than 16": "81" * 17 + "00",
    "trailing bytes (cbor2.loads ignores them)": "0001",
    "a break with no indefinite item (cbor2 returns a marker object)": "ff",
}


@pytest.mark.parametrize("name", BOTH_REFUSE)
def test_both_refuse(name):
    data = bytes.fromhex(BOTH_REFUSE[name])
    with pytest.raises(DecodeError):
        cbor.loads(data)
    with pytest.raises(cbor2.CBORDecodeError):
        cbor2.loads(data)


@pytest.mark.parametrize("name", ONLY_CBOR2_TAKES)
def test_the_strict_decoder_refuses_what_cbor2_takes(name):
    data = bytes.fromhex(ONLY_CBOR2_TAKES[name])
    cbor2.loads(data)  # cbor2 takes it (and, for some tags, acts on it)
    with pytest.raises(DecodeError):
        cbor.loads(data)
