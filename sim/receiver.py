"""A small CoAP receiver for tests and simulations: verifies packs with protocols/, keeps readings.

It does what the gateway's ingest does at the wire (aiocoap server, COSE_Mac0 check with the
node's key, replay protection by message counter, SenML resolve) and keeps readings in a dict
keyed by (node, channel, time), so that a pack delivered twice is stored once; ``duplicates``
counts the readings that arrived again. It answers 2.04 with {"t": time, "c": config}.
"""

import time
from collections.abc import Callable

import aiocoap
import aiocoap.resource
import cbor2

from protocols import cose, senml
from protocols.const import CF_COSE_MAC0, RESP_CONFIG, RESP_TIME
from protocols.errors import DecodeError


class _Readings(aiocoap.resource.Resource):
    def __init__(self, rx: "Receiver"):
        super().__init__()
        self.rx = rx

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return self.rx.handle(request)


class Receiver:
    def __init__(
        self,
        keys: dict[str, bytes],
        clock: Callable[[], float] = time.time,
        config: dict | None = None,
    ):
        self.keys = keys
        self.clock = clock
        self.config = config
        self.readings: dict[tuple[str, str, int], float] = {}
        self.last_seq: dict[str, int] = {}
        self.duplicates = 0
        self.conflicts: list[tuple] = []
        self.packs = 0
        self.rejected = 0
        self.ctx: aiocoap.Context | None = None

    def handle(self, request: aiocoap.Message) -> aiocoap.Message:
        if request.opt.content_format != CF_COSE_MAC0:
            return aiocoap.Message(code=aiocoap.UNSUPPORTED_CONTENT_FORMAT)
        try:
            mac0 = cose.parse(cbor2.loads(request.payload), cbor2.loads)
            node = mac0.kid.decode()
            key = self.keys.get(node)
            if key is None or not mac0.verify(key) or mac0.seq <= self.last_seq.get(node, 0):
                self.rejected += 1
                return aiocoap.Message(code=aiocoap.UNAUTHORIZED)
            now = int(self.clock())
            records = senml.resolve(cbor2.loads(mac0.payload), now)
        except (DecodeError, ValueError, cbor2.CBORDecodeError):
            self.rejected += 1
            return aiocoap.Message(code=aiocoap.BAD_REQUEST)
        self.last_seq[node] = mac0.seq
        self.packs += 1
        for name, _unit, t, value in records:
            channel = name.split(":", 1)[1] if ":" in name else name
            k = (node, channel, int(t))
            if k in self.readings:
                self.duplicates += 1
                if self.readings[k] != value and channel != "drop":
                    self.conflicts.append((k, self.readings[k], value))
            else:
                self.readings[k] = value
        resp = {RESP_TIME: now}
        if self.config:
            resp[RESP_CONFIG] = self.config
        return aiocoap.Message(code=aiocoap.CHANGED, payload=cbor2.dumps(resp))

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Serve on UDP ``host:port`` (0: a free port); return the address bound."""
        site = aiocoap.resource.Site()
        site.add_resource(["r"], _Readings(self))
        self.ctx = await aiocoap.Context.create_server_context(
            site, bind=(host, port), transports=["udp6"]
        )
        for ri in self.ctx.request_interfaces:
            return host, ri.token_interface.message_interface._local_port()
        raise RuntimeError("aiocoap bound no UDP interface")

    async def stop(self) -> None:
        if self.ctx is not None:
            await self.ctx.shutdown()
            self.ctx = None
