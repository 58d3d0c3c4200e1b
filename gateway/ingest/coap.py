"""The aiocoap server context, with a bounded deduplication cache.

aiocoap's ``MessageManager`` remembers every request it received, keyed by (remote, message
ID), with the response it sent, for EXCHANGE_LIFETIME (247 s, RFC 7252 Section 4.8.2), so that
a CoAP retransmission gets the same response again (Section 4.5). Each entry holds a whole
response ``Message`` and a timer handle: about 2.2 KB (tracemalloc). At 2,000 messages/s
that is over a gigabyte, on a Pi with 1 GB.

``BoundedMessageManager`` keeps the same behaviour with a shorter lifetime (default 60 s:
a node's retransmissions end MAX_TRANSMIT_SPAN = 45 s after its first try) and a hard cap
on the number of entries (default 20,000), oldest dropped first. One ordered dict replaces
the per-message timers, and a response is kept as its encoded bytes: about 0.5 KB an entry in
all (10 MB at the cap) instead of 2.2 KB, and a few objects instead of dozens for the garbage
collector to walk. Forgetting an entry early is safe here because ingest is
idempotent: a retransmission that misses the cache is verified again, its counter equals the
node's last accepted one, and it is answered 2.04 without storing anything
(gateway.ingest.resource).
This overrides aiocoap's private ``_deduplicate_message`` and ``_store_response_for_duplicates``
and sends through the udp6 transport's socket: aiocoap is pinned to the version checked
(pyproject.toml), and tests/test_aiocoap_pin.py fails if what this module overrides changes.
"""

# Hostile datagrams (see docs/gateway.md, "Under attack"): ``GuardedUDP6`` checks each datagram
# before aiocoap decodes it. A message format error (RFC 7252 Section 3: token length 9-15,
# option nibble 15, payload marker without payload...) is answered with RST if it is a CON and
# otherwise ignored (Sections 4.2, 4.3); whatever aiocoap's decoder lets escape (a non-UTF-8
# Uri-Path raises UnicodeDecodeError) is treated the same way instead of reaching asyncio's
# exception handler with a traceback. A source that keeps failing authentication is dropped
# here, before anything is decoded (``SourceBudget``). Every refusal is counted and logged by
# the site's ``refuse``, and aiocoap's own log lines go through the same limiter.

import asyncio
import logging
import socket
from collections import OrderedDict
from typing import Any, Protocol

from aiocoap import Context
from aiocoap.messagemanager import MessageManager
from aiocoap.numbers.types import CON
from aiocoap.pipe import error_to_message, run_driving_pipe
from aiocoap.tokenmanager import TokenManager
from aiocoap.transports.udp6 import MessageInterfaceUDP6, UDP6EndpointAddress

from gateway.logs import LimitFilter, RateLimiter
from protocols import coap as wire
from protocols.errors import DecodeError

RECEIVE_BUFFER = 4 << 20  # bytes asked for the UDP socket's receive buffer
# Packs that fail authentication (or that authenticate nothing: malformed) a source may send:
# FAILED_RATE a second on average, FAILED_BURST in a row; past that its datagrams are dropped.
FAILED_RATE = 20.0
FAILED_BURST = 100.0
MAX_SOURCES = 4096  # sources the budget remembers (the least recently charged go first)
_RST = 3  # RFC 7252 Section 3: message type Reset


class SourceBudget:
    """A token bucket per source address for datagrams that authenticate nothing.

    ``charge`` takes a token when a source's pack fails (bad MAC, unknown kid, replay,
    malformed); ``allows`` says whether the source still has one. Sources that never failed
    are not in the table, so checking them costs one dict lookup. At most ``max_sources`` are
    kept: a forgotten source starts again with a full bucket, which bounds memory without
    letting one source outspend the rate for long.
    """

    def __init__(
        self, rate: float = FAILED_RATE, burst: float = FAILED_BURST, max_sources: int = MAX_SOURCES
    ):
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: OrderedDict[Any, list[float]] = OrderedDict()  # host -> [tokens, time]

    def _tokens(self, bucket: list[float], now: float) -> float:
        bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        return bucket[0]

    def allows(self, host: Any, now: float) -> bool:
        """True if ``host`` may be heard: it never failed, or has tokens left."""
        bucket = self._buckets.get(host)
        return bucket is None or self._tokens(bucket, now) >= 1.0

    def charge(self, host: Any, now: float) -> None:
        """One failed pack from ``host``."""
        bucket = self._buckets.get(host)
        if bucket is None:
            bucket = self._buckets[host] = [self.burst, now]
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(host)
        self._tokens(bucket, now)
        bucket[0] -= 1.0

    def __len__(self) -> int:
        return len(self._buckets)


class GuardedSite(Protocol):
    """What ``create_server`` needs from its site besides rendering (``ReadingsResource``)."""

    budget: SourceBudget
    log_budget: RateLimiter

    def refuse(self, reason: str, detail: str, source: Any) -> None:
        """Count a datagram refused below the resource and log it within the limits."""


def format_error(data: bytes) -> str | None:
    """Why ``data`` is not a well-formed CoAP message (RFC 7252 Sections 3 and 4.1), or None.

    aiocoap's decoder takes a token length of 9-15 as a short token and keeps going; the
    node's own strict codec (``protocols.coap``) refuses it, as the RFC says."""
    try:
        msg = wire.decode(data)
    except DecodeError as e:
        return str(e)
    if msg.code == 0 and len(data) > 4:
        return "CoAP: an Empty message with a token, options or payload"
    if msg.code >> 5 in (1, 6, 7):
        return f"CoAP: reserved code class {msg.code >> 5}"
    return None


class GuardedUDP6(MessageInterfaceUDP6):
    """aiocoap's UDP transport with the checks that must come before decoding.

    Overrides ``datagram_msg_received``, the public callback of aiocoap's recvmsg datagram
    protocol, and calls it for what passes; it reads the private ``_ctx`` only through it.
    ``site`` is set by ``create_server`` right after the endpoint exists."""

    site: GuardedSite | None = None

    def datagram_msg_received(self, data: bytes, ancdata: Any, flags: int, address: Any) -> None:
        site = self.site
        if site is None:  # the moment between the socket's creation and create_server's end
            return super().datagram_msg_received(data, ancdata, flags, address)
        if not site.budget.allows(address[0], self.loop.time()):
            site.refuse("source_over_budget", "", UDP6EndpointAddress(address, self))
            return
        problem = "truncated" if flags & socket.MSG_TRUNC else format_error(data)
        if problem is None:
            try:
                super().datagram_msg_received(data, ancdata, flags, address)
                return
            except Exception as e:  # aiocoap's decoder on hostile bytes
                problem = f"{type(e).__name__}: {e}"[:200]
        site.refuse("coap_format", problem, UDP6EndpointAddress(address, self))
        if len(data) >= 4 and data[0] >> 4 == 0x4:  # version 1, CON: reject it (Section 4.2)
            self._reset(data[2:4], ancdata, address)

    def _reset(self, mid: bytes, ancdata: Any, address: Any) -> None:
        """Send an RST for message ID ``mid`` from the address the datagram came to."""
        pktinfo = [c for c in ancdata if c[:2] == (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO)]
        self.transport.sendmsg(bytes((0x40 | _RST << 4, 0)) + mid, pktinfo, 0, address)


class BoundedMessageManager(MessageManager):
    """A ``MessageManager`` whose deduplication cache expires after ``lifetime`` seconds and
    never holds more than ``max_entries`` entries."""

    def __init__(self, token_manager: TokenManager, lifetime: float, max_entries: int):
        super().__init__(token_manager)
        self.lifetime = lifetime
        self.max_entries = max_entries
        # (remote, mid) -> response or None; insertion order is arrival order.
        self._recent_messages: OrderedDict = OrderedDict()
        self._arrived: dict[Any, float] = {}
        self.evicted = 0  # dropped before their lifetime because of the cap

    def _expire(self, now: float) -> None:
        recent, arrived = self._recent_messages, self._arrived
        while recent:
            key = next(iter(recent))
            if now - arrived[key] < self.lifetime and len(recent) <= self.max_entries:
                break
            if now - arrived[key] < self.lifetime:
                self.evicted += 1
            recent.popitem(last=False)
            del arrived[key]

    def _deduplicate_message(self, message: Any) -> bool:
        """True if ``message`` is a duplicate (re-sending the stored response if any)."""
        key = _key(message)
        now = self.loop.time()
        self._expire(now)
        if key in self._recent_messages:
            raw = self._recent_messages[key]
            if message.mtype is CON and raw is not None:
                self._resend(raw, message.remote.as_response_address())
            return True
        if self.max_entries == 0:
            return False
        self._recent_messages[key] = None
        self._arrived[key] = now
        self._expire(now)
        return False

    def _resend(self, raw: bytes, remote: Any) -> None:
        """Put a stored response on the wire again, as ``MessageInterfaceUDP6.send`` does."""
        ancdata = []
        if remote.pktinfo is not None:
            ancdata.append((socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, remote.pktinfo))
        self.message_interface.transport.sendmsg(raw, ancdata, 0, remote.sockaddr)

    def _store_response_for_duplicates(self, message: Any) -> None:
        """Keep the response as its encoded bytes: about 100 bytes and 3 objects instead of a
        whole ``Message`` (2.2 KB and dozens of objects for the garbage collector to walk)."""
        key = _key(message)
        if key in self._recent_messages:
            self._recent_messages[key] = message.encode()

    @property
    def cache_size(self) -> int:
        return len(self._recent_messages)


class ServerContext(Context):
    """aiocoap's ``Context`` without the eager ``repr()`` of every request it renders (it names
    each rendering task ``"Rendering for <request>"``; formatting the request costs a tenth of
    the gateway's CPU per message). Same behaviour otherwise (the pinned aiocoap's)."""

    def render_to_pipe(self, pipe: Any) -> None:
        run_driving_pipe(
            error_to_message(pipe, self.log), self._render_to_pipe(pipe), name="coap-render"
        )


def _key(message: Any) -> tuple:
    """(source address, message ID): the remote's socket address tuple rather than aiocoap's
    endpoint object, which the cache would otherwise keep alive."""
    remote = message.remote
    return (getattr(remote, "sockaddr", remote), message.mid)


async def create_server(
    site: GuardedSite, host: str, port: int, *, lifetime: float = 60.0, max_entries: int = 20000
) -> tuple[Context, BoundedMessageManager]:
    """A server ``Context`` on UDP ``host``:``port`` (0: any free port) with a bounded
    deduplication cache and the datagram checks of ``GuardedUDP6``. Returns the context and
    its message manager."""
    loop = asyncio.get_running_loop()
    # aiocoap logs every exchange at INFO: keep its logger outside "reverbere" (WARNING).
    ctx = ServerContext(loop=loop, serversite=site, loggername="coap-server")
    limit_log(ctx.log, site.log_budget)
    tman = TokenManager(ctx)
    mman = BoundedMessageManager(tman, lifetime, max_entries)
    transport = await GuardedUDP6.create_server_transport_endpoint(
        mman, log=ctx.log, loop=loop, bind=(host, port), multicast=[]
    )
    transport.site = site
    mman.message_interface = transport
    tman.token_interface = mman
    ctx.request_interfaces.append(tman)
    # Room for bursts while a commit or a collection holds the loop (the kernel caps this at
    # net.core.rmem_max; see docs/gateway.md).
    sock = transport.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    return ctx, mman


def limit_log(logger: logging.Logger, limiter: RateLimiter) -> None:
    """Put ``logger`` (aiocoap's) behind ``limiter``, the one ingest logs through: a peer
    that makes aiocoap warn on every datagram cannot fill the disk with logs. Loggers are
    process-wide: a filter left by an earlier server in the same process is replaced."""
    for f in list(logger.filters):
        if isinstance(f, LimitFilter):
            logger.removeFilter(f)
    logger.addFilter(LimitFilter(limiter))


def bound_port(ctx: Context) -> int:
    """The UDP port the context listens on."""
    return ctx.request_interfaces[0].token_interface.message_interface._local_port()
