"""COSE_Mac0 with HMAC 256/64 (RFC 9052 Section 6.2, RFC 9053 Section 3.1).

The node's message, exactly::

    17([                                  ; CBOR tag 17: COSE_Mac0
        << {1: 4, 6: h'<seq>'} >>,        ; protected: alg HMAC 256/64, Partial IV = counter
        {4: h'<node id>'},                ; unprotected: kid
        h'<SenML pack>',                  ; payload
        h'<8-byte tag>'                   ; first 8 bytes of HMAC-SHA256(key, MAC_structure)
    ])

    MAC_structure = ["MAC0", protected, h'', payload]   (RFC 9052 Section 6.3)

HMAC (RFC 2104) is written out over ``hashlib.sha256`` because MicroPython has no ``hmac``.

Firmware manifests (protocols/manifest.py) are COSE_Mac0 too, with the full-length tag:
HMAC 256/256 (alg 5, 32-byte tag). ``sign`` and ``parse`` take the algorithm; a parser
accepts only the one it is given, so a reading's tag can never pass for a manifest's (the
alg is in the MACed protected header as well).
"""

import hashlib

from protocols import cbor
from protocols.const import (
    ALG_HMAC_256_64,
    COSE_MAC0_TAG,
    HDR_ALG,
    HDR_KID,
    HDR_PARTIAL_IV,
    MAC_LEN,
)
from protocols.errors import DecodeError

_BLOCK = 64  # SHA-256 block size
ALG_HMAC_256_256 = 5  # RFC 9053 Section 3.1, HMAC w/ SHA-256, full 32-byte tag (manifests)
_TAG_LEN = {ALG_HMAC_256_64: MAC_LEN, ALG_HMAC_256_256: 32}


def hmac_sha256(key, *msg):
    """HMAC-SHA256 (RFC 2104) of the concatenation of ``msg`` (buffers hashed in turn, so a
    manifest's MAC structure is never copied together: protocols/manifest.py)."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    k = bytearray(_BLOCK)
    k[: len(key)] = key
    for i in range(_BLOCK):
        k[i] ^= 0x36
    inner = hashlib.sha256(k)
    for part in msg:
        inner.update(part)
    for i in range(_BLOCK):
        k[i] ^= 0x36 ^ 0x5C
    outer = hashlib.sha256(k)
    outer.update(inner.digest())
    return outer.digest()


def partial_iv(seq):
    """The message counter as a minimal big-endian byte string (0 is one zero byte)."""
    n = 1
    while seq >> (8 * n):
        n += 1
    return seq.to_bytes(n, "big")


def _mac(key, protected, payload, n=MAC_LEN):
    out = bytearray()
    cbor.encode_into(out, ["MAC0", protected, b"", payload])
    return hmac_sha256(key, out)[:n]


def sign(key, kid, seq, payload, alg=ALG_HMAC_256_64):
    """Return the tagged COSE_Mac0 (bytes) over ``payload`` from node ``kid`` (bytes)."""
    protected = cbor.dumps({HDR_ALG: alg, HDR_PARTIAL_IV: partial_iv(seq)})
    tag = _mac(key, protected, payload, _TAG_LEN[alg])
    return cbor.dumps(cbor.Tag(COSE_MAC0_TAG, [protected, {HDR_KID: kid}, payload, tag]))


class Mac0:
    """A parsed, not yet verified, COSE_Mac0."""

    def __init__(self, protected, kid, seq, payload, tag):
        self.protected = protected  # the serialized protected header (bytes)
        self.kid = kid  # bytes
        self.seq = seq  # int, from the Partial IV
        self.payload = payload  # bytes
        self.tag = tag  # bytes

    def verify(self, key):
        """True when the tag is right for ``key``; compares in constant time."""
        expected = _mac(key, self.protected, self.payload, len(self.tag))
        diff = len(expected) ^ len(self.tag)
        for a, b in zip(expected, self.tag):
            diff |= a ^ b
        return diff == 0


def parse(obj, loads=cbor.loads, alg=ALG_HMAC_256_64):
    """Check the structure of a decoded COSE_Mac0 and return a ``Mac0``.

    ``obj`` is what a CBOR decoder made of the message: a tag-17 item (``cbor.Tag`` or any
    object with ``tag`` and ``value``, such as ``cbor2.CBORTag``); ``loads`` is the same
    decoder, for the serialized protected header; ``alg`` the one algorithm accepted (4 for
    readings, 5 for manifests). Raises ``DecodeError``.
    """
    n = _TAG_LEN[alg]
    if getattr(obj, "tag", None) != COSE_MAC0_TAG:
        raise DecodeError("COSE: not a tagged COSE_Mac0 (tag 17)")
    msg = obj.value
    if not isinstance(msg, list) or len(msg) != 4:
        raise DecodeError("COSE: a COSE_Mac0 is an array of 4 items")
    protected, unprotected, payload, tag = msg
    if not isinstance(protected, bytes) or not isinstance(payload, bytes):
        raise DecodeError("COSE: protected header and payload must be byte strings")
    if not isinstance(tag, bytes) or len(tag) != n:
        raise DecodeError("COSE: the tag must be %d bytes" % n)
    if not isinstance(unprotected, dict):
        raise DecodeError("COSE: the unprotected header must be a map")
    hdr = loads(protected) if protected else {}
    if not isinstance(hdr, dict) or hdr.get(HDR_ALG) != alg:
        what = "COSE: alg must be HMAC 256/%d (%d) in the protected header"
        raise DecodeError(what % (8 * n, alg))
    piv = hdr.get(HDR_PARTIAL_IV)
    if not isinstance(piv, bytes) or not 0 < len(piv) <= 8:
        raise DecodeError("COSE: the Partial IV (message counter) must be 1 to 8 bytes")
    kid = unprotected.get(HDR_KID, hdr.get(HDR_KID))
    if not isinstance(kid, bytes) or not kid:
        raise DecodeError("COSE: kid (the node id) is missing")
    return Mac0(protected, kid, int.from_bytes(piv, "big"), payload, tag)


def decode(data, alg=ALG_HMAC_256_64):
    """Decode a COSE_Mac0 from bytes with ``protocols.cbor``; raise ``DecodeError``."""
    return parse(cbor.loads(data), alg=alg)
