"""The signed firmware manifest: what a node may install, for that node only (issue 17).

A manifest is a COSE_Mac0 (RFC 9052 Section 6.2) with HMAC 256/256 (RFC 9053 Section 3.1,
alg 5: the full 32-byte tag, not the readings' 8 bytes) under the node's own key, with the
node id as ``kid`` and the gateway's manifest counter for that node as Partial IV (its own
counter, not the node's reading counter). Its payload is a CBOR map with integer keys::

    {1: "lamp-042",                  ; the node it is for (the kid says it again)
     2: "esp32",                     ; node class: MicroPython's sys.platform of the board
     3: 7,                           ; application version: a node refuses one not above its own
     4: [6, 3],                      ; .mpy ABI: major, sub-version the files were compiled for
     5: [["firmware/node.mpy", 4123, h'<SHA-256>', 2811], ...]}
                                     ; every file: name in the slot, size, SHA-256 of the
                                     ; file as installed, and its size deflated (zlib) as
                                     ; served, or 0 when it is served as it is

docs/protocol.md ("Firmware manifest") shows one byte by byte. ``check`` is what a node
decides about a verified manifest: every reason to refuse it, as a short text.
"""

from protocols import cbor, cose
from protocols.const import COSE_MAC0_TAG, HDR_ALG, HDR_KID, HDR_PARTIAL_IV
from protocols.const import RESP_UPDATE as RESP_UPDATE
from protocols.errors import DecodeError

# Payload keys.
M_NODE = 1
M_CLASS = 2
M_VERSION = 3
M_ABI = 4
M_FILES = 5

# The 2.04 answer to a reading carries "u" (const.RESP_UPDATE, which the node's loop reads
# without loading this module): the version waiting for this node, when one is
# (docs/protocol.md, "The answer"); a node asks for the manifest only then.
# The resource the node fetches updates from (block-wise, RFC 7959 Block2): manifest
# ``/u/<node id>/m`` and files ``/u/f/<SHA-256 hex>``.
UPDATE_PATH = "u"

MAX_FILES = 64
MAX_NAME = 64  # bytes of a file name in the slot


class Manifest:
    """A decoded, not yet verified, manifest, kept as the signed bytes it came in.

    A node holds it for a whole update, on a 16 KB heap budget (docs/ota.md, "Memory and
    size"): so it keeps ``raw`` and, per file, two integers (where its name starts and ends), not a
    structure of strings and lists; ``file(i)`` reads one entry back when the download needs
    it, and ``verify`` hashes the MAC structure straight from ``raw``.
    """

    def __init__(self, raw, seq, node, cls, version, abi, at, spans):
        self.raw = raw  # the signed manifest (bytes or bytearray), as received and installed
        self.seq = seq  # the manifest counter (Partial IV)
        self.node = node
        self.cls = cls
        self.version = version
        self.abi = abi  # (major, sub)
        self.at = at  # per file: where its name starts and ends in ``raw`` (two integers)
        self.spans = spans  # (protected, payload, tag): (start, end) of each one's bytes

    def __len__(self):
        return len(self.at) // 2

    def name(self, i):
        """File ``i``'s name alone (what clearing a slot needs, for less heap than ``file``)."""
        return str(self.raw[self.at[2 * i] : self.at[2 * i + 1]], "utf-8")

    def file(self, i):
        """File ``i`` as (name, size, sha256 bytes, deflated size or 0), read from ``raw``."""
        raw = self.raw
        a, b = self.at[2 * i], self.at[2 * i + 1]
        w = _Walk(raw, b)
        size = w.arg(_UINT)
        d = w.string(_BYTES)
        digest = bytes(raw[d : w.pos])
        return str(raw[a:b], "utf-8"), size, digest, w.arg(_UINT)

    @property
    def files(self):
        """Every file, as ``file`` reads them (for the gateway and the tests: a list)."""
        return [self.file(i) for i in range(len(self))]

    @property
    def tag(self):
        a, b = self.spans[2]
        return bytes(self.raw[a:b])

    def verify(self, key):
        """True when the HMAC 256/256 tag is right for ``key``; compares in constant time.

        The MAC structure, ``["MAC0", protected, h'', payload]`` (RFC 9052 Section 6.3), is
        hashed in parts from ``raw``: no copy of the payload is made."""
        raw = memoryview(self.raw)
        (p0, p1), (q0, q1), (t0, t1) = self.spans
        head = bytearray(b"\x84\x64MAC0")
        cbor.head(head, _BYTES, p1 - p0)
        mid = bytearray(b"\x40")
        cbor.head(mid, _BYTES, q1 - q0)
        mac = cose.hmac_sha256(key, head, raw[p0:p1], mid, raw[q0:q1])
        diff = len(mac) ^ (t1 - t0)
        for i in range(min(len(mac), t1 - t0)):
            diff |= mac[i] ^ raw[t0 + i]
        return diff == 0


def encode(node, cls, version, abi, files):
    """The payload's bytes; ``files`` as ``Manifest.file`` gives them."""
    return cbor.dumps(
        {
            M_NODE: node,
            M_CLASS: cls,
            M_VERSION: version,
            M_ABI: [abi[0], abi[1]],
            M_FILES: [[f[0], f[1], f[2], f[3]] for f in files],
        }
    )


def sign(key, node, seq, payload):
    """The signed manifest (bytes): ``payload`` from ``encode``, ``seq`` the manifest counter."""
    return cose.sign(key, node.encode(), seq, payload, cose.ALG_HMAC_256_256)


# --- decoding ------------------------------------------------------------------------------------
# The manifest is walked in place rather than decoded into Python objects: on a node, the
# structure protocols.cbor builds (a list, a str and a bytes per file, the payload copied out
# of the message) was 13 KB of heap for 17 files in the update's heaviest step. The walk
# returns plain integers (no tuple per item read) and compares names byte by byte.

_UINT = 0
_BYTES = 2
_TEXT = 3
_ARRAY = 4
_MAP = 5
_TAG = 6


class _Walk:
    """A position in ``data``, read item by item (RFC 8949 Section 3)."""

    def __init__(self, data, pos):
        self.data = data
        self.pos = pos

    def arg(self, major):
        """The argument of the next item, which must be of ``major`` type; past its head."""
        data = self.data
        pos = self.pos
        if pos >= len(data):
            raise DecodeError("manifest: truncated")
        info = data[pos] & 31
        if data[pos] >> 5 != major or info > 27:
            raise DecodeError("manifest: CBOR major type %d expected at %d" % (major, pos))
        pos += 1
        n = info
        if info >= 24:
            end = pos + (1 << (info - 24))
            if end > len(data):
                raise DecodeError("manifest: truncated")
            n = 0
            while pos < end:
                n = (n << 8) | data[pos]
                pos += 1
        self.pos = pos
        return n

    def string(self, major):
        """Where the next byte or text string's bytes start; past them (``pos``: their end)."""
        n = self.arg(major)
        a = self.pos
        if a + n > len(self.data):
            raise DecodeError("manifest: a string longer than the manifest")
        self.pos = a + n
        return a

    def item(self):
        """The next item, decoded by protocols.cbor (the few small ones)."""
        v, self.pos = cbor._item(self.data, self.pos, 2)
        return v


def _uint(v, what):
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise DecodeError("manifest: %s must be an unsigned integer" % what)
    return v


def _text(v, what, most):
    if not isinstance(v, str) or not 0 < len(v) <= most:
        raise DecodeError("manifest: %s must be a text of 1 to %d characters" % (what, most))
    return v


def _name(data, a, b, at):
    """Check the name in ``data[a:b]``: a path inside the slot (no way out of it, nothing
    hidden, no empty part), UTF-8, not one of the names that ``at`` locates already."""
    n = b - a
    if not 0 < n <= MAX_NAME:
        raise DecodeError("manifest: a file name must be 1 to %d bytes" % MAX_NAME)
    prev = 0x2F
    for i in range(a, b):
        c = data[i]
        if prev == 0x2F and (c == 0x2F or c == 0x2E):
            prev = -1
            break
        prev = c
    if prev == -1 or prev == 0x2F:
        raise DecodeError("manifest: bad file name %r" % bytes(data[a:b]))
    for j in range(0, len(at), 2):
        c = at[j]
        if at[j + 1] - c == n:
            k = 0
            while k < n and data[c + k] == data[a + k]:
                k += 1
            if k == n:
                raise DecodeError("manifest: %s listed twice" % bytes(data[a:b]))
    try:
        str(data[a:b], "utf-8")
    except UnicodeError:
        raise DecodeError("manifest: a file name is not UTF-8") from None


def decode(data):
    """Decode (not verify) a signed manifest; raise ``DecodeError`` for anything malformed.

    ``data`` (bytes or bytearray) is kept, not copied: it must not change afterwards."""
    w = _Walk(data, 0)
    if w.arg(_TAG) != COSE_MAC0_TAG:
        raise DecodeError("COSE: not a tagged COSE_Mac0 (tag 17)")
    if w.arg(_ARRAY) != 4:
        raise DecodeError("COSE: a COSE_Mac0 is an array of 4 items")
    p0 = w.string(_BYTES)
    p1 = w.pos
    hdr = cbor.loads(data[p0:p1])
    if not isinstance(hdr, dict) or hdr.get(HDR_ALG) != cose.ALG_HMAC_256_256:
        raise DecodeError("COSE: alg must be HMAC 256/256 (5) in the protected header")
    piv = hdr.get(HDR_PARTIAL_IV)
    if not isinstance(piv, bytes) or not 0 < len(piv) <= 8:
        raise DecodeError("COSE: the Partial IV (manifest counter) must be 1 to 8 bytes")
    unprotected = w.item()  # a map of one kid: small
    if not isinstance(unprotected, dict):
        raise DecodeError("COSE: the unprotected header must be a map")
    kid = unprotected.get(HDR_KID, hdr.get(HDR_KID))
    q0 = w.string(_BYTES)
    q1 = w.pos
    t0 = w.string(_BYTES)
    t1 = w.pos
    if t1 - t0 != 32:
        raise DecodeError("COSE: the tag must be 32 bytes")
    if w.pos != len(data):
        raise DecodeError("manifest: %d trailing bytes" % (len(data) - w.pos))
    w.pos = q0
    node = cls = version = abi = at = None
    seen = 0
    for _ in range(w.arg(_MAP)):
        k = w.arg(_UINT)
        if k <= M_FILES:
            if seen >> k & 1:
                raise DecodeError("manifest: key %d repeated" % k)
            seen |= 1 << k
        if k != M_FILES:
            v = w.item()  # a key of no use to the node is skipped
            if k == M_NODE:
                node = v
            elif k == M_CLASS:
                cls = v
            elif k == M_VERSION:
                version = v
            elif k == M_ABI:
                abi = v
            continue
        count = w.arg(_ARRAY)
        if not 0 < count <= MAX_FILES:
            raise DecodeError("manifest: 1 to %d files" % MAX_FILES)
        at = []
        for _ in range(count):
            if w.arg(_ARRAY) != 4:
                raise DecodeError("manifest: a file is [name, size, sha256, deflated size]")
            a = w.string(_TEXT)
            _name(data, a, w.pos, at)
            at.append(a)
            at.append(w.pos)
            w.arg(_UINT)  # the size
            d = w.string(_BYTES)
            if w.pos - d != 32:
                raise DecodeError("manifest: a SHA-256 must be 32 bytes")
            w.arg(_UINT)  # the deflated size
    if w.pos != q1:
        raise DecodeError("manifest: the payload is not one map")
    node = _text(node, "the node id", 32)
    if kid != node.encode():
        raise DecodeError("manifest: the node id and the kid differ")
    if not isinstance(abi, list) or len(abi) != 2:
        raise DecodeError("manifest: the ABI must be [major, sub]")
    if at is None:
        raise DecodeError("manifest: 1 to %d files" % MAX_FILES)
    return Manifest(
        data,
        int.from_bytes(piv, "big"),
        node,
        _text(cls, "the node class", 32),
        _uint(version, "the version"),
        (_uint(abi[0], "the ABI"), _uint(abi[1], "the ABI")),
        at,
        ((p0, p1), (q0, q1), (t0, t1)),
    )


def check(m, node, cls, version, abi, last_seq):
    """Why this node refuses the verified manifest ``m``, or None to install it.

    ``version`` is the node's running application version, ``abi`` the (major, sub) .mpy
    version its MicroPython loads (it loads a sub-version up to its own), ``last_seq`` the
    highest manifest counter it accepted (the same manifest again is fine: a resumed update).
    """
    if m.node != node:
        return "another node's"
    if m.cls != cls:
        return "for class %s" % m.cls
    if m.seq < last_seq:
        return "replayed manifest"
    if m.version <= version:
        return "version %d not above %d" % (m.version, version)
    if m.abi[0] != abi[0] or m.abi[1] > abi[1]:
        return "needs .mpy %d.%d" % m.abi
    return None
