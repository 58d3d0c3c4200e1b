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
from protocols.errors import DecodeError

# Payload keys.
M_NODE = 1
M_CLASS = 2
M_VERSION = 3
M_ABI = 4
M_FILES = 5

# The 2.04 answer to a reading carries "u": the version waiting for this node, when one is
# (docs/protocol.md, "The answer"); a node asks for the manifest only then.
RESP_UPDATE = "u"
# The resource the node fetches updates from (block-wise, RFC 7959 Block2): manifest
# ``/u/<node id>/m`` and files ``/u/f/<SHA-256 hex>``.
UPDATE_PATH = "u"

MAX_FILES = 64
MAX_NAME = 64  # bytes of a file name in the slot


class Manifest:
    """A decoded manifest; ``mac0`` is kept to verify, ``seq`` is its counter."""

    def __init__(self, mac0, node, cls, version, abi, files):
        self.mac0 = mac0
        self.seq = mac0.seq
        self.node = node
        self.cls = cls
        self.version = version
        self.abi = abi  # (major, sub)
        self.files = files  # [(name, size, sha256 bytes, deflated size or 0)]

    def verify(self, key):
        return self.mac0.verify(key)


def encode(node, cls, version, abi, files):
    """The payload's bytes; ``files`` as in ``Manifest.files``."""
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


def _uint(v, what):
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise DecodeError("manifest: %s must be an unsigned integer" % what)
    return v


def _text(v, what, most):
    if not isinstance(v, str) or not 0 < len(v) <= most:
        raise DecodeError("manifest: %s must be a text of 1 to %d characters" % (what, most))
    return v


def _name(v):
    # A path inside the slot: no way out of it, nothing hidden, no empty part.
    _text(v, "a file name", MAX_NAME)
    for part in v.split("/"):
        if not part or part[0] == ".":
            raise DecodeError("manifest: bad file name %r" % v)
    return v


def decode(data):
    """Decode (not verify) a signed manifest; raise ``DecodeError`` for anything malformed."""
    mac0 = cose.decode(data, cose.ALG_HMAC_256_256)
    m = cbor.loads(mac0.payload)
    if not isinstance(m, dict):
        raise DecodeError("manifest: the payload must be a map")
    node = _text(m.get(M_NODE), "the node id", 32)
    if node.encode() != mac0.kid:
        raise DecodeError("manifest: the node id and the kid differ")
    abi = m.get(M_ABI)
    if not isinstance(abi, list) or len(abi) != 2:
        raise DecodeError("manifest: the ABI must be [major, sub]")
    files = m.get(M_FILES)
    if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES:
        raise DecodeError("manifest: 1 to %d files" % MAX_FILES)
    out = []
    seen = set()
    for f in files:
        if not isinstance(f, list) or len(f) != 4:
            raise DecodeError("manifest: a file is [name, size, sha256, deflated size]")
        name = _name(f[0])
        if name in seen:
            raise DecodeError("manifest: %s listed twice" % name)
        seen.add(name)
        if not isinstance(f[2], bytes) or len(f[2]) != 32:
            raise DecodeError("manifest: the SHA-256 of %s must be 32 bytes" % name)
        out.append((name, _uint(f[1], "a size"), f[2], _uint(f[3], "a deflated size")))
    return Manifest(
        mac0,
        node,
        _text(m.get(M_CLASS), "the node class", 32),
        _uint(m.get(M_VERSION), "the version"),
        (_uint(abi[0], "the ABI"), _uint(abi[1], "the ABI")),
        out,
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
