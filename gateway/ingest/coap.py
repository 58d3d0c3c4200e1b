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
# here, before anything is decoded (``SourceBudget``), and on Linux it is then banned for a few
# seconds in the kernel (``KernelBans``), so that its datagrams are not even queued. Every
# refusal Python sees is counted by the site's ``refuse``, and aiocoap's own log lines go
# through the same limiter.

import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import socket
import struct
import sys
from collections import OrderedDict
from collections.abc import Callable
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
# Each of the burst is decoded, verified and answered before the source is banned, while the
# socket's queue fills behind it: 20 rather than 100 keeps that queue under 1 MB at a flood's
# start instead of 2-7 MB (benchmarks/flood.py, docs/gateway.md).
FAILED_RATE = 20.0
FAILED_BURST = 20.0
MAX_SOURCES = 4096  # sources the budget remembers (the least recently charged go first)
BAN_SECONDS = 5.0  # how long the kernel drops a source over budget
MAX_BANNED = 64  # sources banned at once (the filter's length); more stay dropped in Python
MAX_DRAIN = 16384  # datagrams read at once after a ban (a 4 MB queue holds about 6,000)
_MAX_DATAGRAM = 4096  # what aiocoap's transport reads at most (RecvmsgSelectorDatagramTransport)
_RST = 3  # RFC 7252 Section 3: message type Reset

log = logging.getLogger("reverbere.ingest")

# Classic BPF (linux/filter.h, linux/bpf_common.h). On a UDP socket the filter sees the packet
# from the UDP header on; loads at SKF_NET_OFF + n read the network (IP) header instead.
SO_ATTACH_FILTER, SO_DETACH_FILTER = 26, 27  # asm-generic/socket.h: x86, ARM and arm64 alike
_SKF_NET_OFF = -0x100000
_LD_B_ABS, _LD_W_ABS = 0x30, 0x20  # BPF_LD | BPF_B or BPF_W | BPF_ABS
_RSH_K = 0x74  # BPF_ALU | BPF_RSH | BPF_K
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K: the bytes of the packet to keep, 0 drops it
_KEEP = 0xFFFFFFFF
_IP4_SRC, _IP6_SRC = 12, 8  # the source address's offset in the IPv4 and IPv6 headers


class SourceBudget:
    """A token bucket per source address for datagrams that authenticate nothing.

    ``charge`` takes a token when a source's pack fails (bad MAC, unknown kid, replay,
    malformed), ``credit`` gives one back for each new pack it delivers; ``allows`` says
    whether the source still has one. Sources that never failed
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

    def credit(self, host: Any, now: float) -> None:
        """One new pack stored from ``host``: it earns a token back. A relay that carries many
        nodes (the fleet's lossy proxy, a border router, a NAT) sees some of their packs
        overtaken and refused as replays; the packs it delivers keep its bucket full, where a
        flooder of replays or forgeries, which stores nothing, runs dry."""
        bucket = self._buckets.get(host)
        if bucket is not None:
            self._tokens(bucket, now)
            bucket[0] = min(self.burst, bucket[0] + 1.0)

    def empty(self, host: Any, now: float) -> None:
        """Leave ``host`` no token at ``now``: a source coming out of a kernel ban has not
        earned the refill of the ban's seconds (a flooder would otherwise be heard again
        with a full bucket and fill the queue until the next ban)."""
        self.charge(host, now)
        self._buckets[host][:] = [0.0, now]

    def __len__(self) -> int:
        return len(self._buckets)


def _net(offset: int) -> int:
    """A load offset ``offset`` bytes into the IP header (as the kernel's u32)."""
    return (_SKF_NET_OFF + offset) & 0xFFFFFFFF


def ban_filter(sources: list[bytes]) -> bytes:
    """A classic BPF socket filter dropping datagrams from ``sources`` (4-byte IPv4 or 16-byte
    IPv6 addresses, as on the wire) and keeping every other one.

    The program reads the IP version, then compares the source address word by word with
    each banned one; every jump is local (at most 7 instructions ahead), so the list's length
    is bounded by the kernel only (4,096 instructions, and the socket's option memory,
    ``net.core.optmem_max``: ``KernelBans`` copes with a refusal). A socket bound to an IPv6
    address receives IPv4 datagrams as v4-mapped addresses, but the kernel still sees an IPv4
    header: v4-mapped sources are given here as their 4 bytes."""
    v4 = [a for a in sources if len(a) == 4]
    v6 = [a for a in sources if len(a) == 16]
    if not v4 and not v6:
        return struct.pack("=HBBI", _RET_K, 0, 0, _KEEP)
    ins: list[tuple[int, int, int, int]] = [(_LD_B_ABS, 0, 0, _net(0)), (_RSH_K, 0, 0, 4)]
    ins.append((_JEQ_K, 0, 2 + 2 * len(v4), 4))  # not version 4: on to the IPv6 part
    ins.append((_LD_W_ABS, 0, 0, _net(_IP4_SRC)))
    for a in v4:
        ins += [(_JEQ_K, 0, 1, int.from_bytes(a, "big")), (_RET_K, 0, 0, 0)]
    ins.append((_RET_K, 0, 0, _KEEP))
    ins += [(_JEQ_K, 1, 0, 6), (_RET_K, 0, 0, _KEEP)]  # neither 4 nor 6: keep it
    for a in v6:
        for i in range(4):  # a mismatch jumps past this address's remaining words and drop
            word = int.from_bytes(a[4 * i : 4 * i + 4], "big")
            ins += [(_LD_W_ABS, 0, 0, _net(_IP6_SRC + 4 * i)), (_JEQ_K, 0, 7 - 2 * i, word)]
        ins.append((_RET_K, 0, 0, 0))
    ins.append((_RET_K, 0, 0, _KEEP))
    return b"".join(struct.pack("=HBBI", *i) for i in ins)


def wire_address(host: str) -> bytes | None:
    """The source address as the kernel sees it in the IP header: 4 bytes for IPv4 (also when
    the socket shows it v4-mapped), 16 for IPv6; None if ``host`` is not an address."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.packed


class KernelBans:
    """Sources over budget that the kernel drops before queuing them on the CoAP socket.

    Dropping a flooder's datagram in Python still costs a ``recvmsg`` and some bookkeeping
    (about 10 us), and one Python flooder sends faster than that: the socket's receive queue
    stayed full and a node's pack waited behind it (docs/gateway.md, "Under attack"). A
    banned source's datagrams cost nothing here: a classic BPF filter (``SO_ATTACH_FILTER``,
    replaced atomically at each change) lists at most ``max_banned`` sources, each for
    ``seconds``; then the source is heard again and its budget decides anew.

    Linux only. Where the filter cannot be attached, ``available`` is False, one line says so,
    and over-budget datagrams are dropped in Python as before."""

    def __init__(
        self,
        sock: Any,
        loop: asyncio.AbstractEventLoop,
        seconds: float = BAN_SECONDS,
        max_banned: int = MAX_BANNED,
    ):
        self.sock = sock
        self.loop = loop
        self.seconds = seconds
        self.max_banned = max_banned
        self._banned: dict[str, bytes] = {}  # host as the socket shows it -> wire address
        self.bans = 0  # bans made since the start
        self.lifted: Callable[[str], None] | None = None  # told of each host unbanned
        self.available = sys.platform == "linux"
        if not self.available:
            log.warning("no kernel bans on %s: over-budget sources dropped in Python", sys.platform)
        elif (error := self._attach()) is not None:  # the empty list: every datagram kept
            self._stop(error)

    def __contains__(self, host: str) -> bool:
        return host in self._banned

    def __len__(self) -> int:
        return len(self._banned)

    def ban(self, host: str) -> bool:
        """Drop ``host``'s datagrams in the kernel for ``seconds``. False if it cannot be
        (filter unavailable, list full, not an address) or is banned already."""
        if not self.available or host in self._banned or len(self._banned) >= self.max_banned:
            return False
        wire = wire_address(host)
        if wire is None:
            return False
        self._banned[host] = wire
        error = self._attach()
        if error is not None and len(self._banned) > 1 and self.sock.fileno() != -1:
            # the socket's option memory (net.core.optmem_max, 20 KB on older kernels) holds
            # no longer a list: the one attached stays, and the list stops growing here
            del self._banned[host]
            self.max_banned = len(self._banned)
            log.warning("at most %d kernel bans (%s)", self.max_banned, error)
            return False
        if error is not None:
            self._stop(error)
            return False
        self.bans += 1
        self.loop.call_later(self.seconds, self.unban, host)
        return True

    def unban(self, host: str) -> None:
        """Let ``host``'s datagrams through again (its budget decides)."""
        if self._banned.pop(host, None) is not None and self.available:
            error = self._attach()
            if error is not None:
                self._stop(error)
            if self.lifted is not None:
                self.lifted(host)

    def _attach(self) -> OSError | None:
        """Put the filter for the current list on the socket; the kernel's refusal if not."""
        program = ban_filter(list(self._banned.values()))
        code = ctypes.create_string_buffer(program, len(program))  # kept alive for the call
        fprog = struct.pack("HP", len(program) // 8, ctypes.addressof(code))  # sock_fprog
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        except OSError as e:
            return e
        return None

    def _stop(self, error: OSError) -> None:
        """No more bans: over-budget datagrams are dropped in Python, as without a filter."""
        self.available = False
        if self.sock.fileno() == -1:  # closed: the server stopped, nothing to say
            return
        log.warning("no kernel bans (%s): over-budget sources dropped in Python", error)
        if self._banned:  # a list left attached would never be lifted
            self._banned.clear()
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)


class GuardedSite(Protocol):
    """What ``create_server`` needs from its site besides rendering (``ReadingsResource``)."""

    budget: SourceBudget
    log_budget: RateLimiter

    def refuse(self, reason: str, detail: str, source: Any, count: int = 1) -> None:
        """Count ``count`` datagrams of ``source`` refused below the resource and log them
        within the limits (one line at most)."""


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
    bans: KernelBans | None = None
    _draining = False

    def datagram_msg_received(self, data: bytes, ancdata: Any, flags: int, address: Any) -> None:
        site = self.site
        if site is None:  # the moment between the socket's creation and create_server's end
            return super().datagram_msg_received(data, ancdata, flags, address)
        if not site.budget.allows(address[0], self.loop.time()):
            site.refuse("source_over_budget", "", UDP6EndpointAddress(address, self))
            if self.bans is not None and self.bans.ban(address[0]) and not self._draining:
                self._drain(site)
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

    def _drain(self, site: GuardedSite) -> None:
        """Read at once what the socket queued before a ban took effect (at most
        ``MAX_DRAIN`` datagrams): a banned source's are dropped after one ``recvmsg`` and
        counted together, per source; the others go the usual way. Read one a turn, the
        backlog would keep a node's pack queued behind it for as many loop turns."""
        bans, sock = self.bans, self.transport.get_extra_info("socket")
        dropped: dict[Any, int] = {}
        self._draining = True  # a source banned meanwhile is dropped by this loop too
        try:
            for _ in range(MAX_DRAIN):
                try:
                    data, ancdata, flags, address = sock.recvmsg(_MAX_DATAGRAM, 1024)
                except OSError:  # empty (or an ICMP error, which the usual read reports)
                    break
                if address[0] in bans:
                    dropped[address] = dropped.get(address, 0) + 1
                else:
                    self.datagram_msg_received(data, ancdata, flags, address)
        finally:
            self._draining = False
        for address, n in dropped.items():
            site.refuse("source_over_budget", "", UDP6EndpointAddress(address, self), n)

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
    transport.bans = bans = KernelBans(sock, loop)
    bans.lifted = lambda host: site.budget.empty(host, loop.time())
    return ctx, mman


def limit_log(logger: logging.Logger, limiter: RateLimiter) -> None:
    """Put ``logger`` (aiocoap's) behind ``limiter``, the one ingest logs through: a peer
    that makes aiocoap warn on every datagram cannot fill the disk with logs. Loggers are
    process-wide: a filter left by an earlier server in the same process is replaced."""
    for f in list(logger.filters):
        if isinstance(f, LimitFilter):
            logger.removeFilter(f)
    logger.addFilter(LimitFilter(limiter))


def guarded_transport(ctx: Context) -> GuardedUDP6:
    """The server's transport (its ``bans`` and socket)."""
    return ctx.request_interfaces[0].token_interface.message_interface


def bound_port(ctx: Context) -> int:
    """The UDP port the context listens on."""
    return guarded_transport(ctx)._local_port()
