"""In-memory stand-ins for a board, for the firmware tests (CPython and MicroPython alike).

A fake clock the test moves by hand, a socket that records what the node sends, flash that can
lose power after any number of bytes, and a gateway made of the protocols/ codecs.
"""

from firmware.hal import MemDev, MemFS
from protocols import cbor, coap, cose, senml
from protocols.const import ACK, CHANGED, CON, EMPTY, RESP_CONFIG, RESP_TIME

KEY = bytes(range(32))
CFG_TEXT = '{"node": "lamp-1", "key": "%s", "gateway": "gw"}' % KEY.hex()


class PowerLoss(Exception):
    pass


class CutDev(MemDev):
    """Flash that loses power after ``budget`` more bytes are written (None: never)."""

    def __init__(self, size):
        MemDev.__init__(self, size)
        self.budget = None
        self.writes = []  # (offset, length) of every write

    def write(self, off, data):
        self.writes.append((off, len(data)))
        if self.budget is not None:
            if len(data) > self.budget:
                n = self.budget
                self.buf[off : off + n] = data[:n]
                self.budget = 0
                raise PowerLoss()
            self.budget -= len(data)
        MemDev.write(self, off, data)


class FakeHal:
    def __init__(self, dev=None, unix0=None, fs=None):
        self.now = 0
        self.unix0 = unix0  # Unix time at ms 0, or None: the board does not know the time
        self.dev = dev if dev is not None else CutDev(4096)
        self.fs = fs if fs is not None else MemFS()
        self.sent = []
        self.sent_at = []  # ms of every send
        self.values = {"p": 61.4, "e": 1000, "t": 21.26}
        self.feeds = 0
        self._r = 7
        self.set_times = []
        self.lines = []  # console lines

    def ms(self):
        return self.now

    def unix(self):
        return None if self.unix0 is None else self.unix0 + self.now // 1000

    def set_unix(self, t):
        self.set_times.append(t)

    def read(self, ch):
        return self.values.get(ch)

    def send(self, data):
        self.sent.append(bytes(data))
        self.sent_at.append(self.now)

    def urandom(self, n):
        out = bytearray(n)
        for i in range(n):
            self._r = (self._r * 1103515245 + 12345) & 0x7FFFFFFF
            out[i] = (self._r >> 16) & 0xFF
        return bytes(out)

    def feed(self):
        self.feeds += 1

    def led(self, on):
        pass

    def log(self, line):
        self.lines.append(line)


def node_cfg(**kw):
    from firmware import config

    cfg = config.load(CFG_TEXT)
    cfg["spread"] = 0  # send a ready pack at once: the tests reason about exact times
    for k in kw:
        cfg[k] = kw[k]
    return cfg


class FakeGateway:
    """Verifies a node's requests with protocols/ and answers 2.04 with time and config."""

    def __init__(self, key=KEY, now=1700000000):
        self.key = key
        self.now = now  # the gateway's Unix time
        self.readings = []  # (channel, time, value)
        self.seqs = []
        self.config = None
        self.code = CHANGED

    def answer(self, data):
        """The response datagram to a request datagram."""
        req = coap.decode(data)
        assert req.mtype == CON
        mac0 = cose.decode(req.payload)
        assert mac0.verify(self.key)
        if self.code == CHANGED:
            self.seqs.append(mac0.seq)
            for name, _, t, v in senml.decode(mac0.payload, self.now):
                self.readings.append((name, t, v))
        resp = {RESP_TIME: self.now}
        if self.config is not None:
            resp[RESP_CONFIG] = self.config
        payload = cbor.dumps(resp) if self.code == CHANGED else b""
        return coap.encode(ACK, self.code, req.mid, req.token, (), payload)


def empty_ack(data):
    return coap.encode(ACK, EMPTY, coap.decode(data).mid)


def run(node, hal, gw, seconds, up=True):
    """Drive ``node`` for ``seconds`` of fake time; ``gw`` answers every request when ``up``."""
    end = hal.now + seconds * 1000
    while True:
        ms = node.poll()
        while hal.sent:
            data = hal.sent.pop(0)
            if up and gw is not None:
                m = coap.decode(data)
                if m.mtype == CON:
                    node.datagram(gw.answer(data))
                    ms = node.poll()
        if hal.now + ms > end:
            hal.now = end
            return
        hal.now += max(ms, 1)
