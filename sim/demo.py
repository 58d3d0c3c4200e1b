"""``reverbere demo``: the whole system on one machine.

First version (foundation): one node's readings go through the wire contract and back: SenML
pack, COSE_Mac0 signature, CoAP message, then the gateway-side decoders (aiocoap, cbor2) and
the MAC check. The gateway, fleet and platform join the demo as they land.
"""

import os
import time
from collections.abc import Callable

import cbor2
from aiocoap import Message

from protocols import coap, cose, senml
from protocols.const import CF_COSE_MAC0, CON, CONTENT_FORMAT, POST, READINGS_PATH, URI_PATH


def run_demo(echo: Callable[[str], None] = print, nodes: int = 3) -> dict:
    """Sign, send and check one pack of ten one-minute power readings per node."""
    t0 = int(time.time()) // 60 * 60
    sent = verified = 0
    sizes = []
    for i in range(nodes):
        node_id = f"lamp-{i + 1:03d}"
        key = os.urandom(32)
        readings = [("p", t0 + 60 * k, 60 + (k % 3)) for k in range(10)]
        body = cose.sign(key, node_id.encode(), 1, senml.encode(readings))
        wire = coap.encode(
            CON,
            POST,
            i + 1,
            options=[(URI_PATH, READINGS_PATH.encode()), (CONTENT_FORMAT, bytes([CF_COSE_MAC0]))],
            payload=body,
        )
        sent += len(readings)
        # The gateway's side, with independent decoders.
        msg = Message.decode(wire)
        mac0 = cose.parse(cbor2.loads(msg.payload), cbor2.loads)
        ok = mac0.verify(key)
        records = senml.resolve(cbor2.loads(mac0.payload), now=time.time())
        verified += len(records) if ok else 0
        sizes.append(len(wire))
        echo(
            f"{node_id}: {len(records)} readings, {len(wire)} bytes of CoAP, "
            f"MAC {'ok' if ok else 'BAD'}, seq {mac0.seq}"
        )
    echo(f"{sent} readings signed and sent, {verified} verified and decoded")
    return {"readings_sent": sent, "readings_verified": verified, "message_bytes": sizes}
