"""The ingest path as a fuzz target: one CoAP datagram's bytes in, an allowed outcome out.

A datagram meets what it meets in the gateway, in the same order (gateway/ingest/coap.py,
then gateway/ingest/resource.py):

1. the guarded transport's check (``format_error``, the strict ``protocols.coap``): ``REFUSED``;
2. aiocoap's decoder: ``IGNORED`` for what it calls unparsable, ``REFUSED`` for what else it
   raises (the guarded transport catches it); a message that is no CON or NON request goes
   to aiocoap's exchange matching, not to ``/r``: ``NOT_A_REQUEST``;
3. ``check_request`` (path, method, options): its code;
4. ``Ingest.handle`` of a real gateway: a SQLite store in a temporary directory, its writer
   process and stages, and one registered node whose key the target knows: the answer code.

The first byte of an input is its mode, the rest the datagram. With ``mode & 1`` the
datagram's payload is taken as a SenML pack that the target signs as the registered node
(COSE_Mac0 with its kid and key, the next message counter, or the last one again with
``mode & 2``: a retransmission) and puts in the payload's place. So about half of what a
fuzzer makes gets past the MAC into SenML validation and the store, and the other half
exercises everything before it; the first byte costs a mutator little to flip. With
``mode & 4`` the gateway's clock counts as not synchronised (gateway/clock.py: a reading
ahead of it gets 5.03, the 2.04 carries no time); otherwise as synchronised, whatever the
machine's time service says, so that an input's outcome is the same on every machine.

A crash is any exception out of ``Target.run``, and also: an answer code not in ``ALLOWED``;
Ingest's catch-all 4.00 "unexpected" (the gateway hides the fault from the node: the target
raises it again, with its traceback); a refused pack that moved the node's counter, or a
fresh signed pack acknowledged without it (DESIGN: nothing is stored on a refusal, and the
2.04 goes out after the commit).

Importable without atheris: tests/test_fuzz_atheris.py runs ``Target`` over the seeds
(fuzz/seeds.py) in plain Python; fuzz/atheris_ingest.py drives it coverage-guided.
"""

import asyncio
import time
from collections import Counter
from pathlib import Path

from aiocoap import Message
from aiocoap.error import UnparsableMessage
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import CON, NON

from gateway import config
from gateway.clock import ClockWatch
from gateway.ingest import registry
from gateway.ingest.coap import format_error
from gateway.ingest.resource import Ingest, Rejected, check_request
from gateway.service import Gateway
from gateway.store.db import open_db
from protocols import coap as wire
from protocols import cose
from protocols.errors import DecodeError

NODE_ID = "lamp-001"
SOURCE = "fuzz"  # the sender's name in Ingest's logs and per-source budget
SIGN = 1  # mode bits (the input's first byte)
AGAIN = 2
UNSYNCED = 4

REFUSED = "refused"  # by the guarded transport: an RST to a CON, nothing otherwise
IGNORED = "ignored"  # by aiocoap's decoder (UnparsableMessage)
NOT_A_REQUEST = "not a request"  # ACK, RST, responses, pings: never rendered by /r

# The answers the docs promise (docs/protocol.md, docs/gateway.md "Under attack"), by giver.
ALLOWED = {
    # check_request
    Code.BAD_OPTION: "an unknown critical option",
    Code.PROXYING_NOT_SUPPORTED: "Proxy-Uri or Proxy-Scheme",
    Code.NOT_FOUND: "a path other than /r, or a query",
    Code.METHOD_NOT_ALLOWED: "a method other than POST",
    Code.NOT_ACCEPTABLE: "an Accept other than CBOR",
    # check_request (Block1) and Ingest.handle
    Code.REQUEST_ENTITY_TOO_LARGE: "Block1, or a payload over max_payload",
    Code.BAD_REQUEST: "BERT, bad COSE, bad SenML, a reading out of range",
    # Ingest.handle
    Code.UNSUPPORTED_CONTENT_FORMAT: "a Content-Format other than 17",
    Code.UNAUTHORIZED: "unknown node, bad MAC, replay",
    Code.SERVICE_UNAVAILABLE: "the store cannot take it now",
    Code.CHANGED: "stored, or a retransmission of what is",
}


class Target:
    """A started gateway on a fresh database in ``directory`` with ``NODE_ID`` registered;
    ``run`` takes one fuzz input. Ingest's clock stands still at the start of the minute it
    was made, so that an input's outcome does not depend on when it runs."""

    def __init__(self, directory: Path):
        self.loop = asyncio.new_event_loop()
        loopback = {"coap_host": "127.0.0.1", "coap_port": 0}
        loopback |= {"http_host": "127.0.0.1", "http_port": 0}
        self.cfg = config.loads("", Path(directory) / "gateway.toml", loopback)
        self.gateway = Gateway(self.cfg)
        self.loop.run_until_complete(self.gateway.start())
        db = open_db(self.cfg.database)
        try:
            self.key = registry.add_node(db, NODE_ID)
        finally:
            db.close()
        self.now = float(int(time.time()) // 60 * 60)
        # Its own Ingest on the gateway's store, for the fixed clock; the same wiring otherwise.
        self.ingest = Ingest(
            self.cfg, self.gateway.db, self.gateway.committer, self.gateway.metrics, self.clock
        )
        # The fixed clock's witnesses, by mode (ClockWatch asks them every 10 s at most)
        self.watches = {
            synced: ClockWatch(self.clock, lambda s=synced: {"kernel": s, "timesyncd": s})
            for synced in (True, False)
        }
        self.seq = 0  # the counter of the last pack the target signed
        self.outcomes: Counter = Counter()  # outcome -> inputs, for the runner's summary

    def clock(self) -> float:
        return self.now

    def close(self) -> None:
        self.loop.run_until_complete(self.gateway.stop())
        self.loop.close()

    def run(self, data: bytes) -> str | Code:
        """The outcome of one fuzz input (mode byte + datagram); raise on a crash."""
        mode = data[0] if data else 0
        datagram, seq = data[1:], None
        self.ingest.clock_watch = self.watches[not mode & UNSYNCED]
        if mode & SIGN:
            datagram, seq = self.sign(datagram, again=bool(mode & AGAIN))
        outcome = self.send(datagram, seq)
        self.outcomes[outcome] += 1
        return outcome

    def sign(self, raw: bytes, again: bool) -> tuple[bytes, int | None]:
        """``raw`` with its payload replaced by a COSE_Mac0 of it from the registered node,
        and the counter used; ``raw`` as it is if it is not CoAP (the guard refuses it)."""
        try:
            msg = wire.decode(raw)
        except DecodeError:
            return raw, None
        if not again:
            self.seq += 1
        body = cose.sign(self.key, NODE_ID.encode(), self.seq, msg.payload)
        head = raw[: len(raw) - len(msg.payload)] if msg.payload else raw + b"\xff"
        return head + body, self.seq

    def send(self, datagram: bytes, seq: int | None = None) -> str | Code:
        """What the gateway makes of ``datagram``; ``seq``: the counter the target signed with."""
        if format_error(datagram) is not None:
            return REFUSED
        try:
            request = Message.decode(datagram)
        except UnparsableMessage:
            return IGNORED
        except Exception:  # caught by GuardedUDP6: counted, RST to a CON
            return REFUSED
        if request.mtype not in (CON, NON) or not request.code.is_request():
            return NOT_A_REQUEST
        try:
            check_request(request)
        except Rejected as r:
            return self._allowed(r.code)
        cf = request.opt.content_format
        cf = None if cf is None else int(cf)
        before = self.last_seq()
        answer = self.loop.run_until_complete(self.ingest.handle(request.payload, cf, SOURCE))
        if answer.payload == b"unexpected":
            # Ingest turned a fault into a 4.00: raise it again (a refusal changed nothing)
            self.loop.run_until_complete(self.ingest._handle(request.payload, cf))
            raise AssertionError("4.00 'unexpected', and the same pack passed the second time")
        after = self.last_seq()
        if answer.code != Code.CHANGED and after != before:
            raise AssertionError(f"{answer.code} moved the counter from {before} to {after}")
        if answer.code == Code.CHANGED and seq is not None and seq > before and after != seq:
            raise AssertionError(f"pack {seq} acknowledged, but the stored counter is {after}")
        return self._allowed(answer.code)

    def last_seq(self) -> int:
        """The registered node's counter as stored (moved by the commit, with the readings)."""
        row = self.gateway.db.execute("SELECT last_seq FROM nodes WHERE id = ?", [NODE_ID])
        return row.fetchone()[0]

    @staticmethod
    def _allowed(code: Code) -> Code:
        if code not in ALLOWED:
            raise AssertionError(f"answer {code} is not one the docs promise")
        return code
