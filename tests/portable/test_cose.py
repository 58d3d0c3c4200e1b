"""protocols.cose: COSE_Mac0 with HMAC 256/64, and the HMAC written out over sha256.

Portable: runs on CPython (pytest) and inside MicroPython (tests/test_micropython.py).
The cross-checks against an independent COSE implementation (cwt) are in
tests/test_interop.py, which needs CPython.
"""

from protocols import cbor, cose
from protocols.errors import DecodeError

KEY = bytes(range(32))
KID = b"lamp-042"


def test_hmac_sha256_matches_rfc4231_test_cases():
    # RFC 4231 Section 4.2 (test case 1) and 4.7 (test case 6: key longer than a block).
    assert cose.hmac_sha256(b"\x0b" * 20, b"Hi There").hex() == (
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    )
    long_key_msg = b"Test Using Larger Than Block-Size Key - Hash Key First"
    assert cose.hmac_sha256(b"\xaa" * 131, long_key_msg).hex() == (
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    )


def test_partial_iv_is_minimal_big_endian():
    assert cose.partial_iv(0) == b"\x00"
    assert cose.partial_iv(255) == b"\xff"
    assert cose.partial_iv(256) == b"\x01\x00"
    assert cose.partial_iv(0x010203) == b"\x01\x02\x03"


def test_sign_then_verify():
    msg = cose.decode(cose.sign(KEY, KID, 7, b"pack"))
    assert (msg.kid, msg.seq, msg.payload) == (KID, 7, b"pack")
    assert msg.verify(KEY)
    assert not msg.verify(bytes(32))


def test_layout_is_tag17_protected_unprotected_payload_tag():
    data = cose.sign(KEY, KID, 1, b"pack")
    item = cbor.loads(data)
    assert item.tag == 17
    protected, unprotected, payload, tag = item.value
    assert protected.hex() == "a201040641" + "01"  # {1: 4, 6: h'01'}
    assert unprotected == {4: KID}
    assert payload == b"pack"
    assert len(tag) == 8
    mac_structure = cbor.dumps(["MAC0", protected, b"", payload])
    assert cose.hmac_sha256(KEY, mac_structure)[:8] == tag


def test_any_changed_byte_breaks_the_mac():
    data = bytearray(cose.sign(KEY, KID, 300, b"pack of readings"))
    for i in range(len(data)):
        changed = bytearray(data)
        changed[i] ^= 0x01
        try:
            msg = cose.decode(bytes(changed))
        except DecodeError:
            continue
        # The kid is not covered by the MAC: a changed kid names another node, whose key fails.
        assert msg.kid != KID or not msg.verify(KEY), i


def _rejects(data):
    try:
        cose.decode(data)
    except DecodeError:
        return True
    return False


def test_malformed_messages_raise_decode_error():
    good = cbor.loads(cose.sign(KEY, KID, 1, b"p"))
    protected, unprotected, payload, tag = good.value
    assert _rejects(cbor.dumps(good.value))  # untagged
    assert _rejects(cbor.dumps(cbor.Tag(18, good.value)))  # COSE_Sign1, not Mac0
    assert _rejects(cbor.dumps(cbor.Tag(17, [protected, unprotected, payload])))
    assert _rejects(cbor.dumps(cbor.Tag(17, [protected, unprotected, payload, tag[:4]])))
    assert _rejects(cbor.dumps(cbor.Tag(17, [protected, {}, payload, tag])))  # no kid
    wrong_alg = cbor.dumps({1: 5, 6: b"\x01"})
    assert _rejects(cbor.dumps(cbor.Tag(17, [wrong_alg, unprotected, payload, tag])))
    assert _rejects(cbor.dumps(cbor.Tag(17, [cbor.dumps({1: 4}), unprotected, payload, tag])))
    assert _rejects(cbor.dumps(cbor.Tag(17, [protected, unprotected, "text", tag])))
    assert _rejects(cose.sign(KEY, KID, 1, b"p")[:-3])
