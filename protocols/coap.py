"""The CoAP message codec the node needs (RFC 7252 Section 3).

``encode`` builds a message (header, token, options with delta encoding, payload marker);
``decode`` parses one, for the ACK, RST or piggybacked response the node receives.
Options are ``(number, value bytes)`` pairs; ``uint_option`` makes a uint option value.
"""

from protocols.errors import DecodeError

VERSION = 1
PAYLOAD_MARKER = 0xFF


class Message:
    """A parsed CoAP message."""

    def __init__(self, mtype, code, mid, token=b"", options=(), payload=b""):
        self.mtype = mtype
        self.code = code
        self.mid = mid
        self.token = token
        self.options = list(options)
        self.payload = payload

    def option(self, number, default=None):
        """The value (bytes) of the first option ``number``, or ``default``."""
        for num, value in self.options:
            if num == number:
                return value
        return default

    def __repr__(self):
        return "Message(type=%d, code=%d.%02d, mid=%d, token=%r, options=%r, payload=%d bytes)" % (
            self.mtype,
            self.code >> 5,
            self.code & 31,
            self.mid,
            self.token,
            self.options,
            len(self.payload),
        )


def uint_option(n):
    """The shortest big-endian encoding of a uint option value (0 is empty), Section 3.2."""
    if n == 0:
        return b""
    size = 1
    while n >> (8 * size):
        size += 1
    return n.to_bytes(size, "big")


def option_uint(value):
    """Read back a uint option value."""
    return int.from_bytes(value, "big") if value else 0


def _ext(n):
    """Nibble and extended bytes for an option delta or length (Section 3.1)."""
    if n < 13:
        return n, b""
    if n < 269:
        return 13, bytes((n - 13,))
    return 14, (n - 269).to_bytes(2, "big")


def encode(mtype, code, mid, token=b"", options=(), payload=b""):
    """Build a CoAP message (bytes). ``options`` need not be sorted."""
    if len(token) > 8:
        raise ValueError("CoAP: a token is at most 8 bytes")
    out = bytearray(4)
    out[0] = (VERSION << 6) | (mtype << 4) | len(token)
    out[1] = code
    out[2] = (mid >> 8) & 0xFF
    out[3] = mid & 0xFF
    out.extend(token)
    last = 0
    for number, value in sorted(options, key=lambda o: o[0]):
        d, dext = _ext(number - last)
        ln, lext = _ext(len(value))
        out.append((d << 4) | ln)
        out.extend(dext)
        out.extend(lext)
        out.extend(value)
        last = number
    if payload:
        out.append(PAYLOAD_MARKER)
        out.extend(payload)
    return bytes(out)


def _read_ext(data, pos, nibble):
    if nibble < 13:
        return nibble, pos
    if nibble == 13:
        if pos + 1 > len(data):
            raise DecodeError("CoAP: truncated option")
        return data[pos] + 13, pos + 1
    if nibble == 14:
        if pos + 2 > len(data):
            raise DecodeError("CoAP: truncated option")
        return ((data[pos] << 8) | data[pos + 1]) + 269, pos + 2
    raise DecodeError("CoAP: reserved option nibble 15")


def decode(data):
    """Parse a CoAP message; raise ``DecodeError`` if it is malformed."""
    if len(data) < 4:
        raise DecodeError("CoAP: shorter than the 4-byte header")
    ver = data[0] >> 6
    if ver != VERSION:
        raise DecodeError("CoAP: unknown version %d" % ver)
    tkl = data[0] & 0x0F
    if tkl > 8:
        raise DecodeError("CoAP: token length %d is reserved" % tkl)
    pos = 4 + tkl
    if pos > len(data):
        raise DecodeError("CoAP: truncated token")
    msg = Message((data[0] >> 4) & 3, data[1], (data[2] << 8) | data[3], bytes(data[4:pos]))
    number = 0
    while pos < len(data):
        b = data[pos]
        pos += 1
        if b == PAYLOAD_MARKER:
            if pos == len(data):
                raise DecodeError("CoAP: payload marker without payload")
            msg.payload = bytes(data[pos:])
            break
        delta, pos = _read_ext(data, pos, b >> 4)
        length, pos = _read_ext(data, pos, b & 0x0F)
        if pos + length > len(data):
            raise DecodeError("CoAP: option longer than the message")
        number += delta
        msg.options.append((number, bytes(data[pos : pos + length])))
        pos += length
    return msg
