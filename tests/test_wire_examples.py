"""docs/protocol.md's annotated message, read from the page itself: its bytes decode to what
the annotations say, the MAC verifies with the key the page gives, and the node's code makes
exactly those bytes. A change to the wire (or to the page) that breaks one breaks this."""

import re
from pathlib import Path

from protocols import cbor, coap, cose, senml
from protocols.const import CF_COSE_MAC0, CON, CONTENT_FORMAT, POST, URI_PATH

PAGE = Path(__file__).parent.parent / "docs" / "protocol.md"
KEY = bytes(range(32))  # "key 000102…1f (bytes 0 to 31)"
READINGS = [("p", 1764000000, 61), ("p", 1764000060, 62), ("e", 1764000060, 123456)]
HEX = re.compile(r"[0-9a-f]{2}(?:[0-9a-f]{2})*(?: [0-9a-f]{2}(?:[0-9a-f]{2})*)*")


def code_block_after(heading: str, nth: int = 0) -> str:
    """The ``nth`` fenced block after ``heading`` in docs/protocol.md."""
    text = PAGE.read_text()
    section = text[text.index(heading) :]
    return section.split("```")[2 * nth + 1]


def hex_column(block: str) -> bytes:
    """The bytes of an annotated dump: on each line, the hex before the comment."""
    out = b""
    for line in block.strip("\n").splitlines():
        match = HEX.match(line.strip())
        assert match, line
        out += bytes.fromhex(match.group().replace(" ", ""))
    return out


def test_the_annotated_message_is_what_the_node_sends():
    wire = hex_column(code_block_after("## One message, annotated"))
    assert len(wire) == 77  # "77 bytes in all"
    msg = coap.decode(wire)
    assert (msg.mtype, msg.code, msg.mid, msg.token) == (CON, POST, 0x1234, b"")
    assert msg.options == [(URI_PATH, b"r"), (CONTENT_FORMAT, b"\x11")]
    mac0 = cose.decode(msg.payload)
    assert (mac0.kid, mac0.seq, mac0.tag.hex()) == (b"lamp-042", 1, "26a6bcd7182ef2b5")
    assert mac0.verify(KEY)
    assert senml.decode(mac0.payload, 1764000120) == [
        ("p", None, 1764000000, 61),
        ("p", None, 1764000060, 62),
        ("e", None, 1764000060, 123456),
    ]
    # and the node's code makes these very bytes
    body = cose.sign(KEY, b"lamp-042", 1, senml.encode(READINGS))
    options = [(URI_PATH, b"r"), (CONTENT_FORMAT, coap.uint_option(CF_COSE_MAC0))]
    assert coap.encode(CON, POST, 0x1234, b"", options, body) == wire


def test_the_mac_structure_shown_is_the_one_maced():
    block = code_block_after("## One message, annotated", nth=1)
    lines = block.strip("\n").splitlines()
    head = hex_column("\n".join(lines[:4]))  # up to the payload, shown elided ("83a3…813c")
    wire = hex_column(code_block_after("## One message, annotated"))
    mac0 = cose.decode(coap.decode(wire).payload)
    structure = cbor.dumps(["MAC0", mac0.protected, b"", mac0.payload])
    assert structure.startswith(head + bytes.fromhex("5825"))
    assert cose.hmac_sha256(KEY, structure)[:8] == mac0.tag


def test_the_answer_example_decodes_as_the_page_says():
    text = PAGE.read_text()
    shown = re.search(r"`(a2 61 63 [0-9a-f ]+)`", text).group(1)
    assert cbor.loads(bytes.fromhex(shown.replace(" ", ""))) == {
        "c": {"interval": 60},
        "t": 1764000120,
    }
