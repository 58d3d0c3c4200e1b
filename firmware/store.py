"""The node's persistent state on flash: a ring of readings and a log of counters.

The device (``dev``, see firmware/hal.py) is a byte array with ``size``, ``readinto(off, buf)``
and ``write(off, data)``. Its layout::

    [meta slot 0][meta slot 1]...[meta slot M-1][reading slot 0]...[reading slot N-1]

A meta slot (20 bytes, ``>IIIIHH``): gen, counter reserved up to, acked reading seq, dropped
readings, boot count, CRC. Meta writes go round the M slots (wear is spread); the valid slot
with the highest gen wins. A reading slot (16 bytes, ``>IBBi4sH``): seq, boot, channel|flags,
time, value (int32 or float32), CRC. Reading seq s lives in slot s % N, so recovery needs no
index: the valid slot with the highest seq is the head. Every write is one slot; a write cut
at any byte leaves a slot whose CRC fails (or the old slot), and the rest stays consistent.
"""

import struct
from binascii import crc32

from protocols.const import CHANNEL_NAMES

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_META = const(20)
_REC = const(16)
_FLOAT = const(0x80)  # channel flag: the value is a float32
_REL = const(0x40)  # channel flag: the time is seconds since boot (the clock was unknown)
RESERVE = const(32)  # message counters reserved per meta write

# Channel index on flash <-> name on the wire: the wire's own list, in its fixed order.
CHANNELS = CHANNEL_NAMES


def _crc(mv):
    return crc32(mv) & 0xFFFF


class Store:
    def __init__(self, dev, meta_slots=16):
        self.dev = dev
        self.m = meta_slots
        self.n = (dev.size - meta_slots * _META) // _REC
        if self.n < 4:
            raise ValueError("store too small")
        self._mb = bytearray(_META)  # one buffer for meta slots, one for reading slots
        self._mv = memoryview(self._mb)[: _META - 2]
        self._rb = bytearray(_REC)
        self._rv = memoryview(self._rb)[: _REC - 2]
        self.gen = 0
        self.ctr = 0  # next message counter to use
        self.limit = 0  # counters below this are reserved on flash
        self.acked = -1  # highest reading seq the gateway acknowledged (or dropped)
        self.drops = 0
        self.boot = 0
        self.head = 0  # seq of the next reading
        self.tail = 0  # seq of the oldest reading not acknowledged
        self.recover()

    # --- meta log ------------------------------------------------------------------------------

    def _load_meta(self):
        best = None
        b = self._mb
        for i in range(self.m):
            self.dev.readinto(i * _META, b)
            if _crc(self._mv) != struct.unpack_from(">H", b, _META - 2)[0]:
                continue
            f = struct.unpack_from(">IIIIH", b, 0)
            if best is None or f[0] > best[0]:
                best = f
        return best

    def _save_meta(self):
        self.gen += 1
        b = self._mb
        struct.pack_into(
            ">IIIIH", b, 0, self.gen, self.limit, self.acked + 1, self.drops, self.boot & 0xFFFF
        )
        struct.pack_into(">H", b, _META - 2, _crc(self._mv))
        self.dev.write((self.gen % self.m) * _META, b)

    # --- recovery ------------------------------------------------------------------------------

    def recover(self):
        """Rebuild the state from flash, after a reset or a power loss at any instant."""
        meta = self._load_meta()
        if meta:
            self.gen, self.limit, acked1, self.drops, boot = meta
            self.acked = acked1 - 1
            self.boot = boot + 1
        else:
            self.gen = self.drops = self.boot = 0
            # Message counters start at 1: the gateway takes a counter only if it is greater
            # than the last it accepted, and it starts from 0 (docs/protocol.md example).
            self.limit = 1
            self.acked = -1
        head = self.acked + 1
        for i in range(self.n):
            r = self._slot(i)
            if r and r[0] >= head:
                head = r[0] + 1
        self.head = head
        self.tail = max(self.acked + 1, head - self.n)
        # Counters used before the reset may go up to the reserved limit: start there.
        self.ctr = self.limit
        self.limit = self.ctr + RESERVE
        self._save_meta()

    def _slot(self, i):
        """The reading in slot i as (seq, boot, chflags, time, raw4), or None if torn/empty."""
        b = self._rb
        self.dev.readinto(self.m * _META + i * _REC, b)
        if _crc(self._rv) != struct.unpack_from(">H", b, _REC - 2)[0]:
            return None
        r = struct.unpack_from(">IBBi4s", b, 0)
        if r[0] % self.n != i:
            return None
        return r

    # --- readings ------------------------------------------------------------------------------

    def append(self, ch, t, value, rel=False):
        """Append one reading; when the ring is full the oldest is dropped and counted."""
        if self.head - self.tail >= self.n:
            self.tail += 1
            self.drops += 1
        flags = CHANNELS.index(ch)
        if isinstance(value, float):
            flags |= _FLOAT
            raw = struct.pack(">f", value)
        else:
            raw = struct.pack(">i", value)
        if rel:
            flags |= _REL
        b = self._rb
        struct.pack_into(">IBBi4s", b, 0, self.head, self.boot & 0xFF, flags, t, raw)
        struct.pack_into(">H", b, _REC - 2, _crc(self._rv))
        self.dev.write(self.m * _META + (self.head % self.n) * _REC, b)
        self.head += 1

    def pending(self):
        return self.head - self.tail

    def peek(self, count):
        """Up to ``count`` oldest unacknowledged readings: [(seq, ch, time, value, rel_boot)].

        ``rel_boot`` is None for a Unix time, else the boot count (low byte) of a time in seconds
        since that boot. Torn slots are skipped (they count as dropped when acknowledged).
        """
        out = []
        seq = self.tail
        while seq < self.head and len(out) < count:
            r = self._slot(seq % self.n)
            # (a channel index past the list, from an older firmware, reads as a torn slot)
            if r and r[0] == seq and (r[2] & 0x3F) < len(CHANNELS):
                f = r[2]
                v = struct.unpack(">f" if f & _FLOAT else ">i", r[4])[0]
                out.append((seq, CHANNELS[f & 0x3F], r[3], v, r[1] if f & _REL else None))
            seq += 1
        return out, seq

    def ack(self, upto, lost=0):
        """The readings before seq ``upto`` are done with; ``lost`` of them were dropped."""
        if upto > self.tail:
            self.tail = upto
        self.acked = self.tail - 1
        self.drops += lost
        self._save_meta()

    # --- message counter -----------------------------------------------------------------------

    def next_counter(self):
        """A message counter never used before, even across resets (COSE Partial IV)."""
        if self.ctr >= self.limit:
            self.limit = self.ctr + RESERVE
            self._save_meta()
        c = self.ctr
        self.ctr += 1
        return c
