"""One CoAP confirmable exchange at a time, driven by a clock (RFC 7252 Section 4.2).

``start`` sends a CON request; ``poll(now)`` retransmits it after ACK_TIMEOUT (times a random
factor up to ACK_RANDOM_FACTOR), doubling the timeout each time, at most MAX_RETRANSMIT times;
``datagram(data, now)`` takes what came back: a piggybacked response in the ACK, or an empty
ACK then a separate response (acknowledged if confirmable, Section 5.2.2), or a RST. When the
exchange ends, ``result`` is the response ``Message``, ``FAILED`` or ``REFUSED``. No sleeping,
no I/O but ``send``: the node's loop and the simulator drive it the same way.
"""

from protocols import coap
from protocols.const import ACK, ACK_TIMEOUT, CON, EMPTY, MAX_RETRANSMIT, NON, RST
from protocols.errors import DecodeError

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


FAILED = const(-1)  # no answer after MAX_RETRANSMIT retransmissions
REFUSED = const(-2)  # a RST: nobody there takes the request
_SEPARATE_WAIT_MS = const(60000)  # how long to wait for a separate response after an empty ACK


class Link:
    def __init__(self, send, urandom):
        self.send = send  # send(bytes)
        self.urandom = urandom  # urandom(n) -> bytes
        r = urandom(2)
        self.mid = (r[0] << 8) | r[1]
        self.msg = None  # the request in flight (bytes), or None
        self.token = b""
        self.result = None
        self.due = 0  # when poll() has something to do (ms)
        self.tries = 0
        self.timeout = 0
        self.sent = 0  # datagrams sent, for statistics

    def busy(self):
        return self.msg is not None

    def start(self, code, options, payload, now):
        """Send a CON request; the previous result is forgotten."""
        self.mid = (self.mid + 1) & 0xFFFF
        self.token = self.urandom(4)
        self.msg = coap.encode(CON, code, self.mid, self.token, options, payload)
        self.result = None
        self.tries = 0
        # Initial timeout: ACK_TIMEOUT * random(1, ACK_RANDOM_FACTOR), Section 4.8.
        self.timeout = ACK_TIMEOUT * 1000 + (ACK_TIMEOUT * 500 * self.urandom(1)[0]) // 255
        self.due = now + self.timeout
        self._send()

    def _send(self):
        self.sent += 1
        self.send(self.msg)

    def _end(self, result):
        self.msg = None
        self.result = result

    def poll(self, now):
        """Retransmit or give up when the timer is due."""
        if self.msg is None or now < self.due:
            return
        if self.tries < 0:  # waiting for a separate response, and it did not come
            self._end(FAILED)
        elif self.tries < MAX_RETRANSMIT:
            self.tries += 1
            self.timeout *= 2
            self.due = now + self.timeout
            self._send()
        else:
            self._end(FAILED)

    def datagram(self, data, now):
        """Take one received datagram; ignore what does not belong to this exchange."""
        try:
            m = coap.decode(data)
        except DecodeError:
            return
        if self.msg is None:
            if m.mtype == CON:  # a late duplicate of a separate response: ACK it again
                self.send(coap.encode(ACK, EMPTY, m.mid))
            return
        if m.mtype in (ACK, RST) and m.mid == self.mid:
            if m.mtype == RST:
                self._end(REFUSED)
            elif m.code == EMPTY:
                self.tries = -1
                self.due = now + _SEPARATE_WAIT_MS
            elif m.token == self.token:
                self._end(m)
        elif m.mtype in (CON, NON) and m.token == self.token and m.code != EMPTY:
            if m.mtype == CON:
                self.send(coap.encode(ACK, EMPTY, m.mid))
            self._end(m)
