"""A small CBOR codec (RFC 8949) for the node, where MicroPython has no usable one.

Plain functions over one ``bytearray``; no classes but ``Tag``. Covers what the wire needs:
unsigned and negative integers (up to 64 bits), byte and text strings, arrays, maps, tags,
false/true/null, and floats in their preferred serialization (RFC 8949 Section 4.2.2:
the shortest of float16, float32, float64 that keeps the value exactly).

Decoding is bounded: a length larger than what is left of the input, nesting deeper than
``MAX_DEPTH``, indefinite lengths, and trailing bytes all raise ``DecodeError`` before any
large allocation.
"""

import struct

from protocols.errors import DecodeError

MAX_DEPTH = 16

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


def _arg(data, pos, info):
    """Read the argument of an initial byte; return (value, new position)."""
    if info < 24:
        return info, pos
    if info == 24:
        size = 1
    elif info == 25:
        size = 2
    elif info == 26:
        size = 4
    elif info == 27:
        size = 8
    else:
        raise DecodeError("CBOR: reserved or indefinite length (additional info %d)" % info)
    end = pos + size
    if end > len(data):
        raise DecodeError("CBOR: truncated")
    return int.from_bytes(data[pos:end], "big"), end


def _item(data, pos, depth):
    if depth > MAX_DEPTH:
        raise DecodeError("CBOR: nested deeper than %d" % MAX_DEPTH)
    if pos >= len(data):
        raise DecodeError("CBOR: truncated")
    ib = data[pos]
    major = ib >> 5
    info = ib & 0x1F
    pos += 1
    if major == _SIMPLE:
        if info == 20:
            return False, pos
        if info == 21:
            return True, pos
        if info == 22 or info == 23:
            return None, pos
        if info == 25:
            if pos + 2 > len(data):
                raise DecodeError("CBOR: truncated")
            return _half(int.from_bytes(data[pos : pos + 2], "big")), pos + 2
        if info == 26:
            if pos + 4 > len(data):
                raise DecodeError("CBOR: truncated")
            return struct.unpack(">f", bytes(data[pos : pos + 4]))[0], pos + 4
        if info == 27:
            if pos + 8 > len(data):
                raise DecodeError("CBOR: truncated")
            return struct.unpack(">d", bytes(data[pos : pos + 8]))[0], pos + 8
        raise DecodeError("CBOR: unsupported simple value %d" % info)
    n, pos = _arg(data, pos, info)
    if major == _UINT:
        return n, pos
    if major == _NINT:
        return -1 - n, pos
    if major in (_BYTES, _TEXT):
        end = pos + n
        if end > len(data):
            raise DecodeError("CBOR: string longer than the input")
        raw = bytes(data[pos:end])
        if major == _BYTES:
            return raw, end
        try:
            return raw.decode(), end
        except UnicodeError:
            raise DecodeError("CBOR: text string is not UTF-8") from None
    if major == _ARRAY:
        if n > len(data) - pos:  # every item takes at least one byte
            raise DecodeError("CBOR: array longer than the input")
        items = []
        for _ in range(n):
            v, pos = _item(data, pos, depth + 1)
            items.append(v)
        return items, pos
    if major == _MAP:
        if 2 * n > len(data) - pos:
            raise DecodeError("CBOR: map longer than the input")
        m = {}
        for _ in range(n):
            k, pos = _item(data, pos, depth + 1)
            v, pos = _item(data, pos, depth + 1)
            if not isinstance(k, (int, str, bytes)):
                raise DecodeError("CBOR: unsupported map key type")
            m[k] = v
        return m, pos
    # _TAG
    v, pos = _item(data, pos, depth + 1)
    return Tag(n, v), pos


def loads(data):
    """Decode one CBOR item that fills ``data`` exactly; raise ``DecodeError`` otherwise."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("CBOR: expected bytes, got %s" % type(data).__name__)
    obj, pos = _item(data, 0, 0)
    if pos != len(data):
        raise DecodeError("CBOR: %d trailing bytes" % (len(data) - pos))
    return obj
