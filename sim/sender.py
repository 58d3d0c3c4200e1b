"""A minimal, fast node-side sender built on protocols/: sign, CoAP CON POST over UDP, retransmit.

For tests, the demo and benchmarks; the real node is firmware/. One ``Sender`` (one UDP
socket) serves any number of ``SimNode``s concurrently::

    async with Sender("127.0.0.1", port) as s:
        node = SimNode("lamp-001", key)
        result = await s.send(node, [("p", t, 61.5), ...])   # signs with the next counter
        result.acked, result.code, result.time, result.config

Retransmission follows RFC 7252 Section 4.2: the same bytes again after a random timeout in
[ACK_TIMEOUT, ACK_TIMEOUT * ACK_RANDOM_FACTOR], doubling, at most MAX_RETRANSMIT times.
``send`` then tries again ``attempts`` times, each a new message with a new counter, as a node
does with a pack that was not acknowledged (also after 5.03). ``loss`` drops that fraction of
datagrams in each direction, to exercise retransmissions and duplicates.
"""

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import cbor2

from protocols import coap, cose, senml
from protocols.const import (
    ACK,
    ACK_RANDOM_FACTOR,
    ACK_TIMEOUT,
    CF_COSE_MAC0,
    CHANGED,
    CON,
    CONTENT_FORMAT,
    EMPTY,
    MAX_AGE,
    MAX_RETRANSMIT,
    POST,
    READINGS_PATH,
    RESP_CONFIG,
    RESP_TIME,
    RST,
    SERVICE_UNAVAILABLE,
    URI_PATH,
)
from protocols.errors import DecodeError


@dataclass
class SimNode:
    """A node's identity and message counter."""

    node_id: str
    key: bytes
    seq: int = 0

    def sign(self, readings: list[tuple]) -> bytes:
        """A COSE_Mac0 over the SenML pack of ``(channel, time, value)``, next counter."""
        self.seq += 1
        return cose.sign(self.key, self.node_id.encode(), self.seq, senml.encode(readings))


@dataclass
class Result:
    """The outcome of one exchange (or of the last attempt of ``send``)."""

    code: int | None  # CoAP response code, None when no answer came
    payload: bytes = b""
    attempts: int = 1
    max_age: int | None = None
    body: dict = field(default_factory=dict)

    @property
    def acked(self) -> bool:
        return self.code == CHANGED

    @property
    def time(self) -> int | None:
        return self.body.get(RESP_TIME)

    @property
    def config(self) -> dict | None:
        return self.body.get(RESP_CONFIG)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, sender: "Sender"):
        self.sender = sender

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.sender._received(data)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while the gateway is down: retransmission covers it


class Sender:
    """CoAP client for ``/r`` on ``host``:``port``, many exchanges in flight."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ack_timeout: float = ACK_TIMEOUT,
        random_factor: float = ACK_RANDOM_FACTOR,
        max_retransmit: int = MAX_RETRANSMIT,
        loss: float = 0.0,
        seed: int | None = None,
    ):
        self.addr = (host, port)
        self.ack_timeout = ack_timeout
        self.random_factor = random_factor
        self.max_retransmit = max_retransmit
        self.loss = loss
        self._rng = random.Random(seed)
        self._mid = self._rng.randrange(1 << 16)
        self._token = self._rng.randrange(1 << 32)
        self._by_mid: dict[int, asyncio.Future] = {}
        self._by_token: dict[bytes, asyncio.Future] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self.datagrams_sent = 0

    async def open(self) -> "Sender":
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), remote_addr=self.addr
        )
        return self

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def __aenter__(self) -> "Sender":
        return await self.open()

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    def _send(self, data: bytes) -> None:
        self.datagrams_sent += 1
        if self.loss and self._rng.random() < self.loss:
            return
        self._transport.sendto(data)

    def _received(self, data: bytes) -> None:
        if self.loss and self._rng.random() < self.loss:
            return
        try:
            msg = coap.decode(data)
        except DecodeError:
            return
        if msg.mtype in (ACK, RST):
            fut = self._by_mid.get(msg.mid)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        if msg.code != EMPTY:
            if msg.mtype == CON:  # a separate response: acknowledge it
                self._send(coap.encode(ACK, EMPTY, msg.mid))
            fut = self._by_token.get(msg.token)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    async def post(self, body: bytes, content_format: int = CF_COSE_MAC0) -> Result:
        """One CON POST of ``body`` to ``/r`` with retransmissions; its result."""
        loop = asyncio.get_running_loop()
        self._mid = (self._mid + 1) & 0xFFFF
        self._token = (self._token + 1) & 0xFFFFFFFF
        mid, token = self._mid, self._token.to_bytes(4, "big")
        wire = coap.encode(
            CON,
            POST,
            mid,
            token,
            options=[
                (URI_PATH, READINGS_PATH.encode()),
                (CONTENT_FORMAT, coap.uint_option(content_format)),
            ],
            payload=body,
        )
        ack = self._by_mid[mid] = loop.create_future()
        response = self._by_token[token] = loop.create_future()
        timeout = self._rng.uniform(self.ack_timeout, self.ack_timeout * self.random_factor)
        total = 0.0
        try:
            for _ in range(self.max_retransmit + 1):
                self._send(wire)
                total += timeout
                done, _ = await asyncio.wait([ack], timeout=timeout)
                if done:
                    break
                timeout *= 2
            else:
                return Result(None)
            msg = ack.result()
            if msg.mtype == RST:
                return Result(None)
            if msg.code == EMPTY:  # separate response follows
                try:
                    msg = await asyncio.wait_for(response, max(total, 1.0) * 4)
                except TimeoutError:
                    return Result(None)
            return _result(msg)
        finally:
            del self._by_mid[mid], self._by_token[token]

    async def send(self, node: SimNode, readings: list[tuple], attempts: int = 1) -> Result:
        """Sign ``readings`` as ``node`` and post them; up to ``attempts`` messages, each
        with a new counter, until one is acknowledged."""
        result = Result(None)
        for i in range(1, attempts + 1):
            result = await self.post(node.sign(readings))
            result.attempts = i
            if result.acked or (result.code is not None and result.code != SERVICE_UNAVAILABLE):
                return result
        return result


def _result(msg: coap.Message) -> Result:
    body: dict = {}
    if msg.code == CHANGED and msg.payload:
        try:
            body = cbor2.loads(msg.payload)
        except (ValueError, EOFError):
            body = {}
    max_age = msg.option(MAX_AGE)
    return Result(
        msg.code,
        msg.payload,
        max_age=None if max_age is None else coap.option_uint(max_age),
        body=body,
    )
