"""Bytes on the wire per reading: signed SenML CBOR over CoAP, against SenML JSON and unsigned CBOR.

Usage: python benchmarks/wire_size.py

For packs of 1, 10 and 50 one-minute power readings from one node, prints the size of the CoAP
message the node sends (header, token, options, payload) with each payload encoding:
- signed:   COSE_Mac0 (HMAC 256/64) around the compact SenML CBOR pack (what Réverbère sends);
- cbor:     the same SenML CBOR pack, unsigned (Content-Format 112);
- json:     SenML JSON (RFC 8428 Section 5) as most SenML libraries write it, unsigned (110).
Targets: a signed pack of 10 in at most 128 bytes; under 10 bytes per reading for a pack of 50.
"""

import json
import os
import random

from protocols import coap, cose, senml
from protocols.const import CF_COSE_MAC0, CF_SENML_CBOR, CON, CONTENT_FORMAT, POST, URI_PATH

CF_SENML_JSON = 110
NODE = "lamp-042"
T0 = 1764000000


def message(cf: int, payload: bytes) -> bytes:
    opts = [(URI_PATH, b"r"), (CONTENT_FORMAT, coap.uint_option(cf))]
    return coap.encode(CON, POST, 0x1234, options=opts, payload=payload)


def senml_json(readings) -> bytes:
    # The usual writer: base name = node, one record per reading with n, v and relative t.
    recs = []
    for i, (ch, t, v) in enumerate(readings):
        rec = {"n": ch, "v": v, "t": t - T0}
        if i == 0:
            rec.update(bn=NODE + ":", bt=T0, t=0)
        recs.append(rec)
    return json.dumps(recs, separators=(",", ":")).encode()


def main() -> None:
    rng = random.Random(1)
    key = os.urandom(32)
    rows = []
    for n in (1, 10, 50):
        readings = [("p", T0 + 60 * k, 58 + rng.randint(0, 6)) for k in range(n)]
        pack = senml.encode(readings)
        signed = len(message(CF_COSE_MAC0, cose.sign(key, NODE.encode(), 70000, pack)))
        unsigned = len(message(CF_SENML_CBOR, pack))
        js = len(message(CF_SENML_JSON, senml_json(readings)))
        rows.append((n, signed, unsigned, js))
    print("readings  signed CoAP bytes  per reading  unsigned CBOR  SenML JSON  JSON/signed")
    for n, signed, unsigned, js in rows:
        print(
            f"{n:8d}  {signed:17d}  {signed / n:11.1f}  {unsigned:13d}  {js:10d}"
            f"  {js / signed:10.2f}x"
        )
    ten = rows[1][1]
    fifty = rows[2][1] / 50
    print(f"target: pack of 10 <= 128 bytes: {ten} ({'met' if ten <= 128 else 'MISSED'})")
    verdict = "met" if fifty < 10 else "MISSED"
    print(f"target: pack of 50 < 10 bytes/reading: {fifty:.1f} ({verdict})")


if __name__ == "__main__":
    main()
