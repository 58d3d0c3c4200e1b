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

import asyncio
import socket
from collections import OrderedDict
from typing import Any

from aiocoap import Context
from aiocoap.messagemanager import MessageManager
from aiocoap.numbers.types import CON
from aiocoap.pipe import error_to_message, run_driving_pipe
from aiocoap.tokenmanager import TokenManager
from aiocoap.transports.udp6 import MessageInterfaceUDP6

RECEIVE_BUFFER = 4 << 20  # bytes asked for the UDP socket's receive buffer


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
    site: Any, host: str, port: int, *, lifetime: float = 60.0, max_entries: int = 20000
) -> tuple[Context, BoundedMessageManager]:
    """A server ``Context`` on UDP ``host``:``port`` (0: any free port) with a bounded
    deduplication cache. Returns the context and its message manager."""
    loop = asyncio.get_running_loop()
    # aiocoap logs every exchange at INFO: keep its logger outside "reverbere" (WARNING).
    ctx = ServerContext(loop=loop, serversite=site, loggername="coap-server")
    tman = TokenManager(ctx)
    mman = BoundedMessageManager(tman, lifetime, max_entries)
    transport = await MessageInterfaceUDP6.create_server_transport_endpoint(
        mman, log=ctx.log, loop=loop, bind=(host, port), multicast=[]
    )
    mman.message_interface = transport
    tman.token_interface = mman
    ctx.request_interfaces.append(tman)
    # Room for bursts while a commit or a collection holds the loop (the kernel caps this at
    # net.core.rmem_max; see docs/gateway.md).
    sock = transport.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    return ctx, mman


def bound_port(ctx: Context) -> int:
    """The UDP port the context listens on."""
    return ctx.request_interfaces[0].token_interface.message_interface._local_port()
