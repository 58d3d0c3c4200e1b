"""The seed corpus of the ingest target (fuzz/ingest.py), made by code rather than kept as
binary files: each seed says what it is and the outcome it must have.

One of each thing a datagram can be, so that the fuzzer starts from every branch instead of
having to find them: packs the target signs (mode bit ``SIGN``) that are stored, repeated,
refused at validation, or put off while the clock is not synchronised; forged, unknown and
malformed COSE; each refusal of ``check_request``; datagrams the guarded transport or
aiocoap drop. ``python -m fuzz.seeds DIR`` writes them as files ``DIR/NN-name`` (libFuzzer's
corpus format: one input a file).
"""

import sys
from pathlib import Path
from typing import NamedTuple

from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber

from fuzz.ingest import AGAIN, NODE_ID, NOT_A_REQUEST, REFUSED, SIGN, UNSYNCED
from protocols import cbor, coap, cose, senml
from protocols.const import (
    ACK,
    CF_CBOR,
    CF_COSE_MAC0,
    CON,
    CONTENT_FORMAT,
    EMPTY,
    POST,
    READINGS_PATH,
    URI_PATH,
)

GET = 0x01  # RFC 7252 Section 12.1.1
APPLICATION_JSON = 50  # IANA CoAP Content-Formats
UNASSIGNED_CRITICAL = 9  # odd, so critical (RFC 7252 Section 5.4.1); no RFC defines it
BLOCK1_FIRST_OF_MORE = b"\x0e"  # RFC 7959 Section 2.2: NUM 0, M 1, SZX 6 (1024 bytes)


class Seed(NamedTuple):
    name: str
    data: bytes  # mode byte + datagram
    expected: object  # the outcome ``Target.run`` must return, in this order from a fresh Target


def datagram(
    payload: bytes = b"",
    cf: int | None = CF_COSE_MAC0,
    path: str = READINGS_PATH,
    code: int = POST,
    mtype: int = CON,
    extra: tuple = (),
    mid: int = 0x1234,
) -> bytes:
    """A CoAP request as a node would send it (``protocols.coap``), with ``extra`` options."""
    options = [(URI_PATH, path.encode()), *extra]
    if cf is not None:
        options.append((CONTENT_FORMAT, coap.uint_option(cf)))
    return coap.encode(mtype, code, mid, b"tk", options=options, payload=payload)


def seeds() -> list[Seed]:
    """Every seed, in an order whose outcomes are fixed (the retransmission follows a pack)."""
    pack = senml.encode([("p", -120, 42), ("p", -60, 43.5), ("e", -60, 1234)])
    forged = cose.sign(bytes(32), NODE_ID.encode(), 99, pack)
    future = senml.encode([("t", 4 * 10**9, 20)])  # 2096: beyond max_future
    ghost = cose.sign(bytes(32), b"ghost", 1, pack)
    bad, unauthorized = Code.BAD_REQUEST, Code.UNAUTHORIZED
    wrong_cf = Code.UNSUPPORTED_CONTENT_FORMAT
    signed, plain = bytes((SIGN,)), b"\x00"
    return [
        Seed("signed-readings", signed + datagram(pack), Code.CHANGED),
        Seed("signed-retransmission", bytes((SIGN | AGAIN,)) + datagram(pack), Code.CHANGED),
        Seed("signed-unknown-channel", signed + datagram(senml.encode([("zz", -60, 1)])), bad),
        Seed("signed-far-future", signed + datagram(future), bad),
        Seed(
            "signed-far-future-clock-unsynchronised",
            bytes((SIGN | UNSYNCED,)) + datagram(future),
            Code.SERVICE_UNAVAILABLE,
        ),
        Seed("signed-not-senml", signed + datagram(cbor.dumps({"p": 1})), bad),
        Seed("signed-empty", signed + datagram(), bad),
        Seed("forged-mac", plain + datagram(forged), unauthorized),
        Seed("unknown-node", plain + datagram(ghost), unauthorized),
        Seed("not-cose", plain + datagram(cbor.dumps(17)), bad),
        Seed("content-format-cbor", plain + datagram(forged, cf=CF_CBOR), wrong_cf),
        Seed("no-content-format", plain + datagram(forged, cf=None), wrong_cf),
        Seed("too-large", plain + datagram(bytes(1100)), Code.REQUEST_ENTITY_TOO_LARGE),
        Seed("get", plain + datagram(code=GET, cf=None), Code.METHOD_NOT_ALLOWED),
        Seed("other-path", plain + datagram(forged, path="x"), Code.NOT_FOUND),
        Seed(
            "block1",
            plain + datagram(forged, extra=((OptionNumber.BLOCK1, BLOCK1_FIRST_OF_MORE),)),
            Code.REQUEST_ENTITY_TOO_LARGE,
        ),
        Seed(
            "accept-json",
            plain + datagram(forged, extra=((OptionNumber.ACCEPT, bytes((APPLICATION_JSON,))),)),
            Code.NOT_ACCEPTABLE,
        ),
        Seed(
            "critical-option",
            plain + datagram(forged, extra=((UNASSIGNED_CRITICAL, b"x"),)),
            Code.BAD_OPTION,
        ),
        Seed("token-length-9", plain + b"\x49\x02\x12\x34" + bytes(9), REFUSED),
        Seed("marker-without-payload", plain + datagram() + b"\xff", REFUSED),
        Seed("non-utf8-path", plain + _bad_path(), REFUSED),
        Seed("ping", plain + coap.encode(CON, EMPTY, 7), NOT_A_REQUEST),
        Seed("ack", plain + coap.encode(ACK, EMPTY, 7), NOT_A_REQUEST),
        Seed("short", plain + b"\x40\x02\x00", REFUSED),
        Seed("empty", b"", REFUSED),
    ]


def _bad_path() -> bytes:
    """A POST whose Uri-Path is not UTF-8: well-formed CoAP, which aiocoap fails to decode."""
    return coap.encode(CON, POST, 1, b"", options=[(URI_PATH, b"\xff")], payload=b"x")


def write(directory: Path) -> list[Path]:
    """Write every seed as a file in ``directory`` (made if missing); return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, seed in enumerate(seeds()):
        path = directory / f"{i:02d}-{seed.name}"
        path.write_bytes(seed.data)
        paths.append(path)
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m fuzz.seeds DIRECTORY")
    for p in write(Path(sys.argv[1])):
        print(p)
