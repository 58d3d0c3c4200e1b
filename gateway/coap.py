"""The aiocoap server context, with a bounded deduplication cache.

aiocoap's ``MessageManager`` remembers every request it received, keyed by (remote, message
ID), with the response it sent, for EXCHANGE_LIFETIME (247 s, RFC 7252 Section 4.8.2), so that
a CoAP retransmission gets the same response again (Section 4.5). Each entry holds a whole
response ``Message`` and a timer handle: about 2.3 KB. At 2,000 messages/s that is over a
gigabyte, on a Pi with 1 GB.

``BoundedMessageManager`` keeps the same behaviour with a shorter lifetime (default 60 s:
a node's retransmissions end MAX_TRANSMIT_SPAN = 45 s after its first try) and a hard cap
on the number of entries (default 20,000, about 46 MB), oldest dropped first; one ordered dict
replaces the per-message timers. Forgetting an entry early is safe here because ingest is
idempotent: a retransmission that misses the cache is verified again, its counter equals the
node's last accepted one, and it is answered 2.04 without storing anything (gateway.ingest).
This overrides aiocoap's private ``_deduplicate_message`` (aiocoap 0.4.x, pinned < 0.5).
"""

import asyncio
from collections import OrderedDict
from typing import Any

from aiocoap import Context
from aiocoap.messagemanager import MessageManager
from aiocoap.numbers.types import CON
from aiocoap.tokenmanager import TokenManager
from aiocoap.transports.udp6 import MessageInterfaceUDP6


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
        key = (message.remote, message.mid)
        now = self.loop.time()
        self._expire(now)
        if key in self._recent_messages:
            response = self._recent_messages[key]
            if message.mtype is CON and response is not None:
                self._send_initially(response)
            return True
        if self.max_entries == 0:
            return False
        self._recent_messages[key] = None
        self._arrived[key] = now
        self._expire(now)
        return False

    @property
    def cache_size(self) -> int:
        return len(self._recent_messages)


async def create_server(
    site: Any, host: str, port: int, *, lifetime: float = 60.0, max_entries: int = 20000
) -> tuple[Context, BoundedMessageManager]:
    """A server ``Context`` on UDP ``host``:``port`` (0: any free port) with a bounded
    deduplication cache. Returns the context and its message manager."""
    loop = asyncio.get_running_loop()
    ctx = Context(loop=loop, serversite=site, loggername="reverbere.coap")
    tman = TokenManager(ctx)
    mman = BoundedMessageManager(tman, lifetime, max_entries)
    transport = await MessageInterfaceUDP6.create_server_transport_endpoint(
        mman, log=ctx.log, loop=loop, bind=(host, port), multicast=[]
    )
    mman.message_interface = transport
    tman.token_interface = mman
    ctx.request_interfaces.append(tman)
    return ctx, mman


def bound_port(ctx: Context) -> int:
    """The UDP port the context listens on."""
    return ctx.request_interfaces[0].token_interface.message_interface._local_port()
