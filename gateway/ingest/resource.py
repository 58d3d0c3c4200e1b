"""The CoAP resource ``/r``: check, verify, decode and validate a node's pack, then store it.

Order of checks (the first failing one answers; nothing is stored on any failure):

1. Content-Format must be 17 (COSE_Mac0)                                    else 4.15
2. the payload must be at most ``max_payload`` bytes                        else 4.13
3. it must decode as a COSE_Mac0 (``protocols.cose.decode``, the strict     else 4.00
   decoder of the wire contract: nothing else is decoded from an unauthenticated sender),
   with a counter below 2^63 (the store's INTEGER)
4. its kid must name an active node, and the MAC verify with that node's key else 4.01
5. its counter must be above the node's last accepted one                   else 4.01
   (equal to it: a retransmission of what is already stored, answered 2.04 again)
6. the payload must be a SenML pack of known channels, with the channel's unit if a unit is
   given, finite numbers within the channel's physical range (``protocols.const``), one
   reading per channel and time, and times within [now - max_past, now + max_future] else 4.00
   (a time too far ahead while the gateway's clock is not trusted: 5.03, see below)
7. the committer stores it (gateway.store.committer); 5.03 with Max-Age if it cannot.

Then 2.04 with the CBOR map ``{"t": gateway time, "c": the node's config}``, and ``"u": version``
when a firmware update waits for the node (``gateway.ota``, docs/ota.md); without ``"t"``
while the gateway does not trust its clock (``gateway.clock``): "now" is then the clock plus
the offset several nodes agree on, and a reading too far ahead of it gets 5.03 (the node keeps
it and tries again) rather than a 4.00 that would make the node drop a good reading. Every
rejection is counted in ``reverbere_packs_rejected_total{reason}`` and logged at most once
per node (or source address) per minute. Every 4.01 says the same ("unauthorized"): which of
unknown node, bad MAC or replay it was is for the log, not for whoever asks.
"""

import asyncio
import hmac
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2
import sqlite_utils
from aiocoap import Message, resource
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber

from gateway.clock import ClockState, ClockWatch
from gateway.config import Config
from gateway.ingest import registry
from gateway.ingest.coap import SourceBudget
from gateway.logs import RateLimiter, event
from gateway.metrics import Registry
from gateway.store.commit import MAX_COUNTER, Outcome
from gateway.store.committer import Committer
from gateway.store.group import Overloaded, Pack, Stopped
from gateway.store.records import Reading
from protocols import cose, manifest, senml
from protocols.const import (
    CF_CBOR,
    CF_COSE_MAC0,
    CHANNEL_LIMITS,
    CHANNELS,
    MAC_LEN,
    READINGS_PATH,
    RESP_CONFIG,
    RESP_TIME,
    SENML_RELATIVE_LIMIT,
)
from protocols.errors import DecodeError

log = logging.getLogger("reverbere.ingest")

MAX_REJECTION_LINES = 100  # per minute, whatever the number of sources
# Critical options (RFC 7252 Section 5.4.1) /r acts on; any other critical one gets 4.02.
_UNDERSTOOD = frozenset(
    (
        OptionNumber.URI_HOST,
        OptionNumber.URI_PORT,
        OptionNumber.URI_PATH,
        OptionNumber.URI_QUERY,
        OptionNumber.ACCEPT,
        OptionNumber.BLOCK1,
        OptionNumber.PROXY_URI,
        OptionNumber.PROXY_SCHEME,
    )
)
_NOT_CHARGED = frozenset(("source_over_budget",))  # dropped already: no second charge
# Every ``reason`` of a Rejected (the metric's label), declared at 0 when the gateway starts
# so that an alert on any of them works before the first (tests/test_metrics.py checks that
# the ingest code uses no other, and docs/gateway.md lists them).
REJECTION_REASONS = (
    "coap_format", "bad_option", "proxy", "not_found", "method", "blockwise", "bert",
    "accept", "content_format", "too_large", "bad_cose", "unknown_node", "bad_mac", "replay",
    "bad_senml", "unknown_channel", "foreign_name", "bad_unit", "bad_value", "out_of_range",
    "duplicate_reading", "bad_time", "clock_unsynchronized", "overload", "store_full",
    "source_over_budget", "unexpected",
)  # fmt: skip
_MAP1 = b"\xa1"  # the CBOR head of a map of one pair
_MAP2 = b"\xa2"  # and of two
_MAP3 = b"\xa3"  # and of three
_UNAUTHORIZED = b"unauthorized"  # the one 4.01 text: tells nobody which ids exist
_CONFIG_KEY = cbor2.dumps(RESP_CONFIG)
_UPDATE_KEY = cbor2.dumps(manifest.RESP_UPDATE)


class Rejected(Exception):
    """A pack refused with a CoAP ``code`` (None: no answer); ``reason`` is the metric label."""

    def __init__(self, code: Code | None, reason: str, detail: str = "", node: str | None = None):
        super().__init__(detail or reason)
        self.code = code
        self.reason = reason
        self.node = node


@dataclass
class Answer:
    """What to send back."""

    code: Code
    payload: bytes = b""
    max_age: int | None = None
    content_format: int | None = None
    stored: bool = False  # new verified readings: the source's budget earns a token back


def verify_mac(mac0: cose.Mac0, key: bytes) -> bool:
    """``mac0.verify(key)`` with the C HMAC of the standard library (same result, faster)."""
    to_be_maced = cbor2.dumps(["MAC0", mac0.protected, b"", mac0.payload])
    return hmac.compare_digest(hmac.digest(key, to_be_maced, "sha256")[:MAC_LEN], mac0.tag)


def validate(
    records: list[tuple], node_id: str, now: float, cfg: Config, trusted: bool = True
) -> list[Reading]:
    """Turn resolved SenML records into ``Reading``s, or raise ``Rejected`` (4.00).

    ``now`` is the gateway's best time; with ``trusted`` False (its clock is not synchronised)
    a time beyond ``now + max_future`` is the gateway's doubt, not the node's fault: 5.03, so
    the node keeps the reading and sends it again once the clock is known."""
    out = []
    seen = set()
    for name, unit, t, value in records:
        channel = name
        if ":" in name:
            prefix, _, channel = name.partition(":")
            if prefix != node_id:
                raise _bad("foreign_name", f"record name {name!r} is not this node's")
        if channel not in CHANNELS:
            raise _bad("unknown_channel", f"unknown channel {channel!r}")
        if unit is not None and unit != CHANNELS[channel]:
            raise _bad("bad_unit", f"channel {channel} is in {CHANNELS[channel]}, not {unit}")
        try:
            value = float(value) if not isinstance(value, int) else value
            ok = math.isfinite(value)
        except OverflowError:
            ok = False
        if not ok:
            raise _bad("bad_value", f"value of {channel} is not a finite number")
        low, high = CHANNEL_LIMITS[channel]
        if not low <= value <= high:
            unit = CHANNELS[channel]
            raise _bad(
                "out_of_range",
                f"{channel} = {value:g} is outside its range [{low:g}, {high:g}] {unit}",
            )
        if not (isinstance(t, int | float) and math.isfinite(t)):
            raise _bad("bad_time", f"time of {channel} is not a finite number")
        if t > now + cfg.max_future and not trusted:
            raise Rejected(
                Code.SERVICE_UNAVAILABLE,
                "clock_unsynchronized",
                f"time {t} of {channel} is ahead of a gateway clock not yet synchronised",
            )
        if t > now + cfg.max_future or t < now - cfg.max_past:
            raise _bad("bad_time", f"time {t} of {channel} is out of range")
        if isinstance(t, float) and t.is_integer():
            t = int(t)
        if (channel, t) in seen:  # which one to keep? neither: the node has a fault
            raise _bad("duplicate_reading", f"two readings of {channel} at time {t}")
        seen.add((channel, t))
        out.append(Reading(node_id, channel, t, value))
    return out


def _bad(reason: str, detail: str) -> Rejected:
    return Rejected(Code.BAD_REQUEST, reason, detail)


def _absolute(t: Any) -> bool:
    """A SenML time that is a Unix time, not relative to the moment of reception (RFC 8428
    Section 4.5.3); a non-finite one is neither, and ``validate`` refuses it."""
    return isinstance(t, int | float) and SENML_RELATIVE_LIMIT <= t < math.inf


class Ingest:
    """Everything between a POST on ``/r`` and its answer; ``handle`` is the whole path."""

    def __init__(
        self,
        cfg: Config,
        db: sqlite_utils.Database,
        committer: Committer,
        metrics: Registry,
        clock: Callable[[], float] = time.time,
        clock_watch: ClockWatch | None = None,
    ):
        self.cfg = cfg
        self.clock = clock  # Unix seconds: "now" for relative times, max_past and the answer
        # Whether to trust it (gateway.clock); by default watching self.clock, even replaced
        self.clock_watch = clock_watch or ClockWatch(lambda: self.clock())
        self.nodes = registry.NodeCache(db)  # db: a reading connection (the committer writes)
        self.committer = committer
        self.metrics = metrics
        self.limiter = RateLimiter(60.0)  # one line per node (or source) per minute
        self.log_budget = RateLimiter(60.0, burst=MAX_REJECTION_LINES)  # and 100 in all
        self.sources = SourceBudget()  # what sources that fail authentication may still send
        self._configs: dict[str, bytes] = {}  # node id -> its settings, CBOR-encoded
        # node id -> the firmware version waiting for it, or None (gateway.ota.updates.Pending)
        self.updates: Callable[[str], int | None] | None = None
        self._busy = 0
        self._idle = asyncio.Event()
        self._rejected = metrics.counter(
            "reverbere_packs_rejected_total", "Packs refused, by reason."
        )
        self._accepted = metrics.counter("reverbere_packs_accepted_total", "Packs answered 2.04.")
        self._received = metrics.counter(
            "reverbere_readings_received_total", "Readings in packs that passed validation."
        )

    async def handle(self, payload: bytes, content_format: int | None, source: Any) -> Answer:
        """The answer to a POST of ``payload``; ``source`` (str()-able) names the sender in logs."""
        self._busy += 1
        try:
            answer = await self._handle(payload, content_format)
            if answer.stored:
                self.sources.credit(getattr(source, "sockaddr", (source,))[0], time.monotonic())
            return answer
        except Rejected as r:
            self._reject(r, source)
            if r.code == Code.SERVICE_UNAVAILABLE:
                return Answer(r.code, str(r).encode(), max_age=self.cfg.retry_after)
            if r.code == Code.UNAUTHORIZED:
                return Answer(r.code, _UNAUTHORIZED)
            return Answer(r.code, str(r).encode())
        except Exception as e:  # no datagram may turn into 5.00 and a traceback
            # A fault the checks did not foresee: the same bytes would fail again, so a 4.00
            # (the node drops the pack) rather than a 5.xx it would retry for ever.
            detail = f"{type(e).__name__}: {e}"[:200]
            self._reject(Rejected(Code.BAD_REQUEST, "unexpected", detail), source)
            return Answer(Code.BAD_REQUEST, b"unexpected")
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    async def idle(self) -> None:
        """Wait until no request is being handled (for a graceful stop)."""
        while self._busy:
            self._idle.clear()
            await self._idle.wait()

    async def _handle(self, payload: bytes, content_format: int | None) -> Answer:
        if content_format != CF_COSE_MAC0:
            raise Rejected(
                Code.UNSUPPORTED_CONTENT_FORMAT, "content_format", "use Content-Format 17"
            )
        if len(payload) > self.cfg.max_payload:
            raise Rejected(
                Code.REQUEST_ENTITY_TOO_LARGE,
                "too_large",
                f"at most {self.cfg.max_payload} bytes",
            )
        try:
            mac0 = cose.decode(payload)
        except DecodeError as e:
            raise _bad("bad_cose", f"not a COSE_Mac0: {e}") from None
        if mac0.seq > MAX_COUNTER:  # 8 bytes of Partial IV hold more than SQLite's INTEGER
            raise _bad("bad_cose", "counter above 2^63 - 1")
        try:
            node_id = mac0.kid.decode()
        except UnicodeDecodeError:
            raise Rejected(Code.UNAUTHORIZED, "unknown_node", "unknown node") from None
        entry = self.nodes.get(node_id)
        if entry is None:
            # not node=: a claimed id is not a node, so these are limited per source address
            raise Rejected(Code.UNAUTHORIZED, "unknown_node", f"unknown node {node_id[:64]!r}")
        ref, key, last_seq = entry
        verified = verify_mac(mac0, key)
        if not verified or mac0.seq < last_seq:
            # The cache may be a moment behind a rotate-key: read the node again, once.
            ref, fresh_key, last_seq = self.nodes.recheck(node_id) or entry
            if fresh_key != key:
                key, verified = fresh_key, verify_mac(mac0, fresh_key)
        if not verified:
            raise Rejected(Code.UNAUTHORIZED, "bad_mac", "bad MAC", node_id)
        if mac0.seq < last_seq:
            raise Rejected(Code.UNAUTHORIZED, "replay", "counter already used", node_id)
        if mac0.seq == last_seq:
            return self._ok(node_id, Outcome.REPEATED)
        try:
            records = senml.decode(mac0.payload, 0)  # relative times stay below 2**28
        except DecodeError as e:
            raise _bad("bad_senml", f"not a SenML pack: {e}") from None
        # An authenticated pack: its absolute times say where the node thinks "now" is.
        stamped = [r[2] for r in records if _absolute(r[2])]
        if stamped:
            self.clock_watch.observe(node_id, max(stamped))
        state = self.clock_watch.state()
        now = self.clock_watch.reference(state)
        records = [
            (n, u, t if _absolute(t) or not isinstance(t, int | float) else now + t, v)
            for n, u, t, v in records
        ]
        try:
            readings = validate(records, node_id, now, self.cfg, state.synchronized)
        except Rejected as r:
            r.node = node_id
            raise
        try:
            future = self.committer.submit(Pack(ref, node_id, key, mac0.seq, readings, now))
        except (Overloaded, Stopped):
            raise Rejected(Code.SERVICE_UNAVAILABLE, "overload", "busy", node_id) from None
        outcome = await future
        if outcome is Outcome.FULL:
            raise Rejected(Code.SERVICE_UNAVAILABLE, "store_full", "cannot store now", node_id)
        if outcome is Outcome.REPLAY:
            raise Rejected(Code.UNAUTHORIZED, "replay", "counter already used", node_id)
        if outcome is Outcome.UNKNOWN_NODE:
            raise Rejected(Code.UNAUTHORIZED, "unknown_node", "unknown node", node_id)
        self.nodes.accepted(node_id, key, mac0.seq, readings)
        self._received.inc(len(readings))
        return self._ok(node_id, outcome, self.clock_watch.state())

    def _ok(self, node_id: str, outcome: Outcome, state: ClockState | None = None) -> Answer:
        self._accepted.inc(outcome=outcome.value)
        config = self._configs.get(node_id)
        if config is None:  # the settings are fixed for the run: encoded once per node
            config = self._configs[node_id] = cbor2.dumps(self.cfg.node_config(node_id))
        state = self.clock_watch.state() if state is None else state
        waiting = self.updates(node_id) if self.updates is not None else None
        if waiting is not None:  # "u": the node asks for its manifest (docs/ota.md)
            config += _UPDATE_KEY + cbor2.dumps(waiting)
        if not state.synchronized:  # no time the gateway does not trust: the node keeps its own
            head = _MAP1 if waiting is None else _MAP2
            return Answer(
                Code.CHANGED,
                head + _CONFIG_KEY + config,
                content_format=CF_CBOR,
                stored=outcome is Outcome.STORED,
            )
        # {RESP_TIME: now, RESP_CONFIG: config}, the config spliced in already encoded
        body = b"".join(
            (
                _MAP2 if waiting is None else _MAP3,
                cbor2.dumps(RESP_TIME),
                cbor2.dumps(int(self.clock())),
                _CONFIG_KEY,
                config,
            )
        )
        return Answer(Code.CHANGED, body, content_format=CF_CBOR, stored=outcome is Outcome.STORED)

    def _reject(self, r: Rejected, source: Any) -> None:
        """Count ``r``, charge its source's budget if it authenticated nothing, log within
        the limits. ``r.code`` is None for a datagram refused without an answer."""
        self._rejected.inc(reason=r.reason)
        host = getattr(source, "sockaddr", (source,))[0]
        if (r.node is None or r.code == Code.UNAUTHORIZED) and r.reason not in _NOT_CHARGED:
            self.sources.charge(host, time.monotonic())
        # per node, or per source host for what names no node; cheap even under a flood
        suppressed = self.limiter.allow(r.node or host)
        if suppressed is not None and self.log_budget.allow("all") is not None:
            source = getattr(source, "hostinfo", source)  # costly in aiocoap: only to log
            event(
                log,
                logging.WARNING,
                "pack rejected",
                node=r.node,
                source=source,
                code=r.code.dotted if r.code is not None else "none",
                reason=r.reason,
                detail=str(r),
                suppressed=suppressed,
            )


class ReadingsResource(resource.Resource):
    """``POST /r``: a thin aiocoap wrapper around ``Ingest.handle``.

    It is the server's root resource and checks the path itself (4.04 for any other): the
    gateway serves one path, and aiocoap's ``Site`` would deep-copy every request to strip
    its path, which costs more than verifying the MAC. Being the root, it sees every request
    the server gets, and ``check_request`` refuses what /r does not do before any work.

    It is also the ``GuardedSite`` of ``gateway.ingest.coap``: the transport's refusals are
    counted and logged through ``Ingest``, with the same per-source budget and log limiter.
    """

    def __init__(self, ingest: Ingest, updates: Any = None):
        super().__init__()
        self.ingest = ingest
        self.updates = updates  # gateway.ota.resource.UpdateResource: GET /u/...
        self.budget = ingest.sources
        self.log_budget = ingest.log_budget

    async def needs_blockwise_assembly(self, request: Any) -> bool:
        """False: aiocoap would otherwise reassemble Block1 uploads on any path, unbounded,
        for 93 s each, before /r could refuse them. A pack fits in one datagram, and
        ``check_request`` refuses Block1 on its first block (4.13 with Size1)."""
        return False

    def refuse(self, reason: str, detail: str, source: Any, count: int = 1) -> None:
        """A datagram the transport refused (``GuardedUDP6``): counted, charged, logged;
        ``count`` of them from one source at once (what a ban found queued: one line)."""
        if count > 1:
            self.ingest._rejected.inc(count - 1, reason=reason)
        self.ingest._reject(Rejected(None, reason, detail or reason), source)

    async def render(self, request: Any) -> Message:
        if self.updates is not None and request.opt.uri_path[:1] == (manifest.UPDATE_PATH,):
            return await self.updates.render(request)  # firmware blocks: its own checks
        try:
            check_request(request)
        except Rejected as r:
            self.ingest._reject(r, request.remote)
            msg = Message(code=r.code, payload=str(r).encode())
            if r.code == Code.REQUEST_ENTITY_TOO_LARGE:
                msg.opt.size1 = self.ingest.cfg.max_payload  # RFC 7959 Section 4
            return msg
        return await super().render(request)

    async def render_post(self, request: Any) -> Message:
        cf = request.opt.content_format
        answer = await self.ingest.handle(
            request.payload, None if cf is None else int(cf), request.remote
        )
        msg = Message(code=answer.code, payload=answer.payload)
        if answer.content_format is not None:
            msg.opt.content_format = answer.content_format
        if answer.max_age is not None:
            msg.opt.max_age = answer.max_age
        if answer.code == Code.REQUEST_ENTITY_TOO_LARGE:
            msg.opt.size1 = self.ingest.cfg.max_payload  # RFC 7959 Section 4
        return msg


def check_request(request: Any) -> None:
    """Raise ``Rejected`` for a request /r does not take, whatever its payload.

    An unknown critical option gets 4.02 (RFC 7252 Section 5.4.1), Proxy-Uri 5.05 (5.7.2);
    Block1 gets 4.13 (a pack fits in one datagram; the answer carries Size1, RFC 7959
    Section 2.9.3), except SZX 7, BERT, which is for reliable transports only: 4.00 (RFC 7959
    Section 2.2, RFC 8323 Section 6); Block2 is not understood (4.02) since /r's answers are
    small; an Accept other than CBOR gets 4.06."""
    for option in request.opt.option_list():
        if option.number.is_critical() and option.number not in _UNDERSTOOD:
            number = int(option.number)
            raise Rejected(Code.BAD_OPTION, "bad_option", f"critical option {number} not supported")
    if request.opt.proxy_uri is not None or request.opt.proxy_scheme is not None:
        raise Rejected(Code.PROXYING_NOT_SUPPORTED, "proxy", "not a proxy")
    if request.opt.uri_path != (READINGS_PATH,) or request.opt.uri_query:
        raise Rejected(Code.NOT_FOUND, "not_found", f"only /{READINGS_PATH}")
    if request.code != Code.POST:
        raise Rejected(Code.METHOD_NOT_ALLOWED, "method", "POST only")
    block1 = request.opt.block1
    if block1 is not None:
        if block1.size_exponent == 7:
            raise _bad("bert", "block size exponent 7 (BERT) is not for UDP")
        raise Rejected(Code.REQUEST_ENTITY_TOO_LARGE, "blockwise", "send the pack in one datagram")
    accept = request.opt.accept
    if accept is not None and int(accept) != CF_CBOR:
        raise Rejected(Code.NOT_ACCEPTABLE, "accept", "answers are CBOR (60)")
