"""A small CBOR codec (RFC 8949) for the node, where MicroPython has no usable one.

Plain functions over one ``bytearray``; no classes but ``Tag``. Covers what the wire needs:
unsigned and negative integers (up to 64 bits), byte and text strings, arrays, maps, tags,
false/true/null, and floats in their preferred serialization (RFC 8949 Section 4.2.2:
the shortest of float16, float32, float64 that keeps the value exactly).

Decoding is strict, and the same on the node and the gateway (which decodes what unknown
senders post with it, before any MAC is checked): only tag 17 (``TAGS``), no ``undefined``
or other simple values, map keys that are integers or strings and appear once. It is
bounded: a length larger than what is left of the input, nesting deeper than ``MAX_DEPTH``,
indefinite lengths and trailing bytes all raise ``DecodeError`` before any large allocation;
nothing else is ever raised.
"""

import struct

from protocols.const import COSE_MAC0_TAG
from protocols.errors import DecodeError

MAX_DEPTH = 16
# The only tag the decoder accepts: the wire's one tagged item is the COSE_Mac0.
TAGS = (COSE_MAC0_TAG,)

# Major types, RFC 8949 Section 3.1.
_UINT = 0
_NINT = 1
_BYTES = 2
_TEXT = 3
_ARRAY = 4
_MAP = 5
_TAG = 6
_SIMPLE = 7


class Tag:
    """A tagged data item (RFC 8949 Section 3.4)."""

    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and self.tag == other.tag and self.value == other.value

    def __repr__(self):
        return "Tag(%d, %r)" % (self.tag, self.value)


# --- encoding ------------------------------------------------------------------------------------


def head(out, major, n):
    """Append the initial byte(s) of a data item of ``major`` type with argument ``n``."""
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out.append(mt | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(mt | 25)
        out.extend(struct.pack(">H", n))
    elif n < 0x100000000:
        out.append(mt | 26)
        out.extend(struct.pack(">I", n))
    elif n < 0x10000000000000000:
        out.append(mt | 27)
        out.extend(struct.pack(">Q", n))
    else:
        raise ValueError("integer too large for CBOR without bignums")


def _half_bits(x):
    """The float16 bits of ``x`` if float16 holds it exactly, else None."""
    if x != x:
        return 0x7E00
    if x in (float("inf"), float("-inf")):
        return 0x7C00 if x > 0 else 0xFC00
    sign = 0x8000 if (x < 0 or (x == 0 and str(x)[0] == "-")) else 0
    a = -x if x < 0 else x
    if a == 0:
        return sign
    if a >= 65520.0:  # rounds past the largest float16
        return None
    # a = m * 2**e with m an integer of at most 11 bits, e in the float16 range.
    e = 0
    m = a
    while m != int(m):
        m *= 2
        e -= 1
        if e < -24:
            return None
    m = int(m)
    while m >= 0x800:
        if m & 1:
            return None
        m >>= 1
        e += 1
    while m < 0x400 and e > -24:
        m <<= 1
        e -= 1
    if m >= 0x400:  # normal: value = (m / 2**10) * 2**(e+10)
        exp = e + 10 + 15
        if exp >= 31:
            return None
        if exp <= 0:  # fell into the subnormal range: shift back
            shift = 1 - exp
            if m & ((1 << shift) - 1):
                return None
            return sign | (m >> shift)
        return sign | (exp << 10) | (m & 0x3FF)
    return sign | m  # subnormal with e == -24


def _float(out, x):
    h = _half_bits(x)
    if h is not None:
        out.append(0xF9)
        out.extend(struct.pack(">H", h))
        return
    f = struct.pack(">f", x) if -3.5e38 < x < 3.5e38 else b""
    if f and struct.unpack(">f", f)[0] == x:
        out.append(0xFA)
        out.extend(f)
    else:
        out.append(0xFB)
        out.extend(struct.pack(">d", x))


def encode_into(out, obj):
    """Append the CBOR encoding of ``obj`` to the bytearray ``out``."""
    if obj is False:
        out.append(0xF4)
    elif obj is True:
        out.append(0xF5)
    elif obj is None:
        out.append(0xF6)
    elif isinstance(obj, int):
        if obj >= 0:
            head(out, _UINT, obj)
        else:
            head(out, _NINT, -1 - obj)
    elif isinstance(obj, float):
        _float(out, obj)
    elif isinstance(obj, str):
        b = obj.encode()
        head(out, _TEXT, len(b))
        out.extend(b)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        head(out, _BYTES, len(obj))
        out.extend(obj)
    elif isinstance(obj, (list, tuple)):
        head(out, _ARRAY, len(obj))
        for item in obj:
            encode_into(out, item)
    elif isinstance(obj, dict):
        # Keys in the deterministic order of RFC 8949 Section 4.2.1 (bytewise order of their
        # encodings), so that a map encodes the same on CPython and on MicroPython, whose
        # dicts keep no insertion order.
        head(out, _MAP, len(obj))
        for kb, k in sorted((dumps(k), k) for k in obj):
            out.extend(kb)
            encode_into(out, obj[k])
    elif isinstance(obj, Tag):
        head(out, _TAG, obj.tag)
        encode_into(out, obj.value)
    else:
        raise TypeError("cannot encode %s as CBOR" % type(obj).__name__)


def dumps(obj):
    """Encode ``obj`` as CBOR bytes."""
    out = bytearray()
    encode_into(out, obj)
    return bytes(out)


# --- decoding ------------------------------------------------------------------------------------
# The decoder is the wire contract: it reads only what the protocol sends (integers, floats,
# byte and text strings, arrays, maps, false/true/null, and tag 17 around a COSE_Mac0) and
# refuses the rest with ``DecodeError``. The gateway runs it on what unauthenticated senders
# post, so it must never do more work than the length of its input allows: no other tag is
# ever interpreted (cbor2 compiles a regular expression for tag 35 and builds decimals for
# tags 4 and 5), no length is trusted beyond the bytes that are there, nesting is bounded.


def _half(h):
    exp = (h >> 10) & 0x1F
    frac = h & 0x3FF
    if exp == 0:
        v = frac * 2.0**-24
    elif exp == 31:
        v = float("nan") if frac else float("inf")
    else:
        v = (1024 + frac) * 2.0 ** (exp - 25)
    return -v if h & 0x8000 else v


def _simple(data, pos, info, end):
    """The value of a major type 7 item whose argument bytes are ``data[pos:end]``."""
    if info == 25:
        return _half((data[pos] << 8) | data[pos + 1])
    if info == 26:
        return struct.unpack(">f", data[pos:end])[0]
    if info == 27:
        return struct.unpack(">d", data[pos:end])[0]
    if info == 20:
        return False
    if info == 21:
        return True
    if info == 22:
        return None
    # 23 (undefined), 24 (one-byte simple values) and the unassigned ones: not on the wire.
    raise DecodeError("CBOR: unsupported simple value %d" % info)


def _item(data, pos, depth):
    """Decode the item at ``pos``; return (value, position after it)."""
    if depth > MAX_DEPTH:
        raise DecodeError("CBOR: nested deeper than %d" % MAX_DEPTH)
    size = len(data)
    if pos >= size:
        raise DecodeError("CBOR: truncated")
    ib = data[pos]
    major = ib >> 5
    info = ib & 0x1F
    pos += 1
    if info < 24:
        n = info
        end = pos
    elif info < 28:
        end = pos + (1 << (info - 24))  # 1, 2, 4 or 8 bytes of argument
        if end > size:
            raise DecodeError("CBOR: truncated")
        if major == _SIMPLE:
            return _simple(data, pos, info, end), end
        n = int.from_bytes(data[pos:end], "big")
    else:
        raise DecodeError("CBOR: reserved or indefinite length (additional info %d)" % info)
    pos = end
    if major == _UINT:
        return n, pos
    if major == _NINT:
        return -1 - n, pos
    if major in (_BYTES, _TEXT):
        end = pos + n
        if end > size:
            raise DecodeError("CBOR: string longer than the input")
        raw = data[pos:end]
        if major == _BYTES:
            return raw, end
        try:
            return raw.decode(), end
        except UnicodeError:
            raise DecodeError("CBOR: text string is not UTF-8") from None
    if major == _ARRAY:
        if n > size - pos:  # every item takes at least one byte
            raise DecodeError("CBOR: array longer than the input")
        items = [None] * n
        for i in range(n):
            items[i], pos = _item(data, pos, depth + 1)
        return items, pos
    if major == _MAP:
        if 2 * n > size - pos:
            raise DecodeError("CBOR: map longer than the input")
        m = {}
        for _ in range(n):
            k, pos = _item(data, pos, depth + 1)
            # Integers and strings only (bool is an int to Python: True would equal 1), each
            # once: COSE (RFC 9052 Section 3) requires refusing a map with a repeated label.
            if isinstance(k, bool) or not isinstance(k, (int, str, bytes)):
                raise DecodeError("CBOR: unsupported map key type")
            if k in m:
                raise DecodeError("CBOR: repeated map key")
            m[k], pos = _item(data, pos, depth + 1)
        return m, pos
    if major == _TAG:
        if n not in TAGS:
            raise DecodeError("CBOR: tag %d is not part of the protocol" % n)
        v, pos = _item(data, pos, depth + 1)
        return Tag(n, v), pos
    return _simple(data, pos, info, pos), pos  # major 7, info < 24: false, true, null


def loads(data):
    """Decode one CBOR item that fills ``data`` exactly; raise ``DecodeError`` otherwise.

    Nothing but ``DecodeError`` comes out of malformed or unexpected input, and the work done
    is bounded by ``len(data)`` (the gateway bounds that with ``coap.max_payload``).
    """
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    elif not isinstance(data, bytes):
        raise DecodeError("CBOR: expected bytes, got %s" % type(data).__name__)
    obj, pos = _item(data, 0, 0)
    if pos != len(data):
        raise DecodeError("CBOR: %d trailing bytes" % (len(data) - pos))
    return obj
