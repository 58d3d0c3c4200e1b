"""docs/protocol.md's annotated firmware manifest, read from the page itself: its bytes decode
to what the annotations say, the full-length tag verifies with the page's key, and the
gateway's code (``protocols.manifest``, as ``gateway.ota.updates.offer`` calls it) makes
exactly those bytes; a reading's signature (alg 4) is no manifest, and the other way round."""

import hashlib

from test_wire_examples import KEY, code_block_after, hex_column

from protocols import cose, manifest
from protocols.errors import DecodeError

FILE = b'print("v2")\n'


def test_the_annotated_manifest_is_what_the_gateway_signs():
    wire = hex_column(code_block_after("### One manifest, annotated"))
    assert len(wire) == 137  # "137 bytes in all"
    m = manifest.decode(wire)
    assert (m.node, m.cls, m.version, m.abi, m.seq) == ("lamp-042", "esp32", 2, (6, 3), 1)
    assert m.files == [("firmware/main.mpy", 12, hashlib.sha256(FILE).digest(), 0)]
    assert m.tag.hex() == "71b5c0b09b7e0fe7563f94fc81c32d59b2a4b53546e432830168a9d148b77231"
    assert m.verify(KEY) and not m.verify(bytes(32))
    payload = manifest.encode("lamp-042", "esp32", 2, (6, 3), m.files)
    assert manifest.sign(KEY, "lamp-042", 1, payload) == wire


def test_readings_and_manifests_cannot_stand_for_each_other():
    wire = hex_column(code_block_after("### One manifest, annotated"))
    for decode in (cose.decode, lambda data: manifest.decode(cose.sign(KEY, b"x", 1, b"\xa0"))):
        try:
            decode(wire)
            raise AssertionError("accepted")
        except DecodeError:
            pass
