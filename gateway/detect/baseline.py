"""The statistical detector: how far is this reading from what this channel usually does?

Three bounded, O(1)-per-reading models of one channel, all robust to the outliers they look for:

* a short-term level: an exponentially weighted mean and mean absolute deviation, fed with the
  reading clipped to ``level ± CLIP · spread`` so that a spike barely moves it;
* a seasonal baseline by hour of day (24 slots) and hour of week (168 slots): per slot a
  streaming median (frugal stochastic approximation: the estimate steps towards each reading by a
  fraction of the slot's spread) and a mean absolute deviation around it. A slot speaks only once
  it has seen ``SLOT_READY`` readings; the hour-of-week slots take over from the hour-of-day ones
  once they are ready;
* a two-sided CUSUM of the standardised residual against the short-term level, for level shifts
  too small for any one reading to stand out.

The surprise of a reading is a robust z (residual over spread): against the seasonal slot once
it is ready (3 visits), else against the short-term level; a CUSUM past its decision interval
overrides it. It is calibrated per channel, divided by a streaming 99th percentile of the
channel's own z (so a spiky channel must spike harder), and mapped to a score in [0, 1] by
``z² / (z² + Z_HALF²)``. A reading beyond the channel's whole range so far by more than
``SPATIAL_TOL`` of that range scores 1. What is returned as the alarm score is the *novelty*:
how much the score exceeds the decaying peak of the recent scores. A condition that persists
therefore scores high once, when it begins, and again only if it worsens or after the peak has
decayed (``HOLD`` readings), which is how alarms are damped at the source. The detector is quiet
until the current hour of the day has been seen on 3 days (it learns first).

State: a handful of floats plus 192 slots of three float32 (count, median, spread), 2.4 KB packed
(:meth:`StatDetector.dumps`).
"""

import math
import struct
from array import array

ALPHA = 0.02  # weight of a reading in the short-term level (about 50 readings of memory)
CLIP = 4.0  # a reading moves the level by at most CLIP spreads
Z_HALF = 6.0  # robust z that scores 0.5
SLOT_READY = 3  # visits (days, weeks) a seasonal slot needs before it speaks
SLOT_STEP = 0.25  # the slot median moves by this many slot spreads per reading
SLOT_ALPHA = 0.1  # weight of a reading in a slot's spread
CUSUM_K = 3.0  # allowance, in spreads: a smooth trend the level lags behind does not add up
CUSUM_H = 20.0  # decision interval, in spreads: a CUSUM at H counts as z = Z_HALF
COMBINE = 1
CALIB = 1
QUIET = 1
Q_STEP = 0.05
Q_P = 0.99
Q_REF = 3.0
SPATIAL = 1
SPATIAL_TOL = 0.05
HOLD = 200  # readings for a score peak to decay to a third (damping of repeated alarms)
WARMUP = 30  # readings before the detector scores anything

DAY_SLOTS = 24
WEEK_SLOTS = 168
_SLOTS = DAY_SLOTS + WEEK_SLOTS
_HEAD = struct.Struct("<Iq9d")
_DECAY = math.exp(-1.0 / HOLD)


class Verdict:
    """What the statistical detector says about one reading."""

    __slots__ = ("expected", "novelty", "score", "spread", "z")

    def __init__(self, score: float, novelty: float, z: float, expected: float, spread: float):
        self.score = score  # the surprise of this reading, in [0, 1]
        self.novelty = novelty  # the part of it that is new (damped), in [0, 1]
        self.z = z
        self.expected = expected
        self.spread = spread


class StatDetector:
    """Seasonal baseline, short-term level and CUSUM of one channel. Feed readings in time order
    with :meth:`update`; persist with :meth:`dumps` / :meth:`loads`."""

    __slots__ = (
        "cusum_hi",
        "cusum_lo",
        "dev",
        "floor",
        "hi",
        "hour",
        "level",
        "lo",
        "n",
        "peak",
        "slots",
        "zq",
    )

    def __init__(self) -> None:
        self.n = 0
        self.level = 0.0
        self.dev = 0.0
        self.floor = 0.0  # smallest spread worth believing: a fraction of the level's scale
        self.cusum_hi = 0.0
        self.cusum_lo = 0.0
        self.peak = 0.0
        self.zq = 3.0
        self.hour = -1
        self.lo = self.hi = 0.0
        self.slots = array("f", bytes(4 * 3 * _SLOTS))  # per slot: count, median, spread

    # -- the model -------------------------------------------------------------------------------
    def update(self, time: float, x: float) -> Verdict:
        n = self.n
        self.n = n + 1
        if n == 0:
            self.level = x
            self.floor = max(abs(x) * 1e-3, 1e-9)
        level, dev = self.level, self.dev
        spread = max(dev, self.floor)
        resid = x - level
        z_short = abs(resid) / spread

        # Seasonal slots (hour of day, hour of week), from UTC-shifted local time.
        hour = int(time // 3600)
        day_i = 3 * (hour % 24)
        week_i = 3 * (DAY_SLOTS + (hour + 72) % 168)  # Unix epoch was a Thursday
        slots = self.slots
        expected = level
        z = z_short
        for i in (week_i, day_i):
            if slots[i] >= SLOT_READY:
                s_med = slots[i + 1]
                s_spread = max(slots[i + 2], self.floor, 0.25 * spread)
                z_season = abs(x - s_med) / s_spread
                if COMBINE == 0:
                    if z_season < z:
                        z, expected = z_season, s_med
                elif COMBINE == 1:
                    z, expected = z_season, s_med
                elif COMBINE == 2:
                    z, expected = math.sqrt(z_season * z), s_med
                break
        new_visit = hour != self.hour
        self.hour = hour
        for i in (week_i, day_i):
            visits = slots[i]
            if visits == 0:
                slots[i + 1] = x
                slots[i + 2] = spread
            else:
                med = slots[i + 1]
                s_dev = slots[i + 2]
                step = SLOT_STEP * max(s_dev, self.floor)
                if x > med:
                    slots[i + 1] = med + min(step, x - med)
                elif x < med:
                    slots[i + 1] = med - min(step, med - x)
                d = min(abs(x - med), CLIP * s_dev + self.floor)
                slots[i + 2] = s_dev + SLOT_ALPHA * (d - s_dev)
            if new_visit and visits < 65000:
                slots[i] = visits + 1

        # CUSUM of the standardised residual, for shifts of the level.
        r = resid / spread
        r = min(r, CLIP) if r > 0 else max(r, -CLIP)
        self.cusum_hi = max(0.0, self.cusum_hi + r - CUSUM_K)
        self.cusum_lo = max(0.0, self.cusum_lo - r - CUSUM_K)
        z_cusum = max(self.cusum_hi, self.cusum_lo) * (Z_HALF / CUSUM_H)
        if z_cusum > z and z_cusum > z_short * 0.5:
            z = z_cusum
        # Short-term level and spread, updated with the clipped reading.
        clipped = level + max(-CLIP * spread, min(CLIP * spread, resid))
        self.level = level + ALPHA * (clipped - level)
        if n == 0:
            self.dev = 0.0
        else:
            self.dev = dev + ALPHA * (min(abs(resid), CLIP * spread) - dev)
        # Calibration: how surprising is this z for this channel? Track a high quantile of z.
        # (Only once the model has learnt: the z of the first readings mean nothing.)
        q = self.zq
        quiet = n < WARMUP or (QUIET and slots[day_i] < SLOT_READY)
        if not quiet:
            if z > q:
                self.zq = q * (1.0 + Q_STEP * Q_P)
            else:
                self.zq = max(1.0, q * (1.0 - Q_STEP * (1.0 - Q_P)))
        if CALIB:
            z = z / max(q, 1.0) * Q_REF
        lo, hi = self.lo, self.hi
        tol = (hi - lo) * SPATIAL_TOL
        spatial = n >= WARMUP and hi > lo and (x > hi + tol or x < lo - tol)
        if x > hi or n == 0:
            self.hi = x
        if x < lo or n == 0:
            self.lo = x
        if quiet:
            return Verdict(0.0, 0.0, 0.0, expected, spread)
        if z > Z_HALF:
            # The alarm is raised: start the CUSUM afresh from the new level.
            self.cusum_hi = self.cusum_lo = 0.0
        score = z * z / (z * z + Z_HALF * Z_HALF)
        peak = self.peak * _DECAY
        novelty = score - peak if score > peak else 0.0
        self.peak = score if score > peak else peak
        if spatial and SPATIAL:
            novelty = 1.0
        return Verdict(score, novelty, z, expected, spread)

    # -- persistence -------------------------------------------------------------------------------
    def dumps(self) -> bytes:
        """The whole state, packed (about 2.4 KB)."""
        head = _HEAD.pack(
            self.n,
            self.hour,
            self.level,
            self.dev,
            self.floor,
            self.cusum_hi,
            self.cusum_lo,
            self.peak,
            self.zq,
            self.lo,
            self.hi,
        )
        return head + self.slots.tobytes()

    @classmethod
    def loads(cls, data: bytes) -> "StatDetector":
        self = cls()
        (
            self.n,
            self.hour,
            self.level,
            self.dev,
            self.floor,
            self.cusum_hi,
            self.cusum_lo,
            self.peak,
            self.zq,
            self.lo,
            self.hi,
        ) = _HEAD.unpack_from(data)
        self.slots = array("f")
        self.slots.frombytes(data[_HEAD.size :])
        return self
