"""The statistical detector: how far is this reading from what this channel usually does?

Bounded, O(1)-per-reading models of one channel, all robust to the outliers they look for:

* a short-term level: an exponentially weighted mean and mean absolute deviation, fed with the
  reading clipped to ``level ± CLIP · spread`` so that a spike barely moves it;
* a seasonal baseline by hour of day (24 slots, and 24 more for the closed days of a building
  with a schedule) and hour of week (168 slots): per slot a
  streaming median (frugal stochastic approximation: the estimate steps towards each reading by a
  fraction of the slot's spread) and a mean absolute deviation around it. The hour-of-day slot is
  the reference once it has been visited on ``SLOT_READY`` days; the hour-of-week slot becomes a
  second reference after ``WEEK_READY`` weeks, and a reading is then unusual only if it is
  unusual for both (a Saturday morning is judged against Saturdays too);
* a two-sided CUSUM of the standardised residual against that reference, for level shifts too
  small for any one reading to stand out;
* the channel's range so far, for the reading and for its short average: a value beyond it by
  more than ``RANGE_TOL`` of its width is a record, the plainest surprise there is. On a
  measured channel of the town (``record_spreads``, see :class:`StatDetector`) it must also be
  beyond it by more than the channel's own noise.

No spread is believed below half the channel's resolution (the smallest step seen between two
consecutive readings): a count that is mostly 0 has a spread near 0, and a reading of 1 is not
then a thousand spreads away. Without that floor such a channel's calibration (below) grows
without bound and the detector goes deaf to it.

The surprise of a reading is a robust z (residual over spread, or the CUSUM past its decision
interval), calibrated per channel: divided by a streaming 99th percentile of the channel's own z
(so a spiky channel must spike harder), raised to the calibrated short average of z when a run of
readings is more unusual than any one of them, and mapped to [0, 1] by ``z² / (z² + Z_HALF²)``.
What is returned as the alarm score is the *novelty* of that score: how much it exceeds the
decaying peak of the recent scores (a record scores 1). A condition that persists therefore
scores high once, when it begins, and again only if it worsens or after the peak has decayed
(``HOLD`` readings): alarms are damped at the source.

The detector learns before it speaks: it is quiet until the current hour of the day has been seen
on ``SLOT_READY`` days.

Readings known to be wrong (a rule's event is open on the channel) are scored without being
learnt (``learn=False``), so an anomaly does not teach the baseline that it is normal.

State: 19 numbers plus 216 slots of three float32 (visits, median, spread), 2.7 KB packed
(:meth:`StatDetector.dumps`); a state saved before ``last`` and ``quantum`` were added still loads
(it learns the resolution afresh).

The slots are the town's hours: the detect stage gives :meth:`StatDetector.update` local
wall-clock time, so a building that opens at 08:00 all year keeps one slot for it across the
changes to and from summer time. A state saved when the slots were UTC hours loads with
``utc_slots`` set and is moved by the town's offset (:meth:`StatDetector.shift_slots`).
"""

import math
import struct
from array import array

ALPHA = 0.02  # weight of a reading in the short-term level (about 50 readings of memory)
CLIP = 4.0  # a reading moves the level by at most CLIP spreads
Z_HALF = 6.0  # calibrated z that scores 0.5
SLOT_READY = 3  # days an hour-of-day slot must have been visited before the detector speaks
WEEK_READY = 2  # weeks an hour-of-week slot must have been visited to be a second reference
SLOT_STEP = 0.25  # the slot median moves by at most this many slot spreads per reading
SLOT_ALPHA = 0.1  # weight of a reading in a slot's spread
CUSUM_K = 3.0  # allowance, in spreads: a smooth trend the level lags behind does not add up
CUSUM_H = 20.0  # decision interval, in spreads: a CUSUM at H counts as z = Z_HALF
Q_P = 0.99  # the quantile of z that calibrates it...
Q_STEP = 0.05  # ...tracked by multiplicative steps of this size
Q_REF = 3.0  # a z at the channel's own 99th percentile counts as this
SMOOTH_ALPHA = 0.1  # weight of a reading in the short average of z (about 10 readings)
RANGE_TOL = 0.02  # a reading beyond the range so far by this fraction of it is a record
RANGE_SMOOTH_TOL = 0.01  # the same for the short average of the readings
RANGE_ALPHA = 0.1  # weight of a reading in that short average
RECORD_SPREADS = 3.0  # on a measured channel, a record is beyond the range by this many spreads too
HOLD = 300  # readings for a score peak to decay to a third (damping of repeated alarms)
WARMUP = 30  # readings before the detector scores anything
QUANTUM_FLOOR = 0.5  # no spread below this fraction of the resolution (smallest step seen)

DAY_SLOTS = 48  # hours of an ordinary day, then hours of a closed day (a building's weekend)
WEEK_SLOTS = 168
_SLOTS = DAY_SLOTS + WEEK_SLOTS
_HEAD = struct.Struct("<Iq17d")  # the _STATE fields in order, then one spare double
_STATE = (
    "n",
    "hour",
    "level",
    "dev",
    "floor",
    "cusum_hi",
    "cusum_lo",
    "peak",
    "zq",
    "zs",
    "zsq",
    "lo",
    "hi",
    "sm",
    "sm_lo",
    "sm_hi",
    "last",
    "quantum",
)
# The layout before "last" and "quantum": a saved state of that size still loads.
_HEAD_V1 = struct.Struct("<Iq15d")
_STATE_V1 = _STATE[:-2]
# The spare double of the head: 0 in a state whose slots were learnt by UTC hours (before the
# slots followed the town's hours), LOCAL_SLOTS since.
LOCAL_SLOTS = 1.0
_DECAY = math.exp(-1.0 / HOLD)
_CUSUM_Z = Z_HALF / CUSUM_H  # a CUSUM in spreads, as a z
_Q_UP = 1.0 + Q_STEP * Q_P  # the quantile's steps up and down
_Q_DOWN = 1.0 - Q_STEP * (1.0 - Q_P)
_Z_HALF2 = Z_HALF * Z_HALF


class Verdict:
    """What the statistical detector says about one reading."""

    __slots__ = ("expected", "novelty", "record", "score", "spread", "z")

    def __init__(
        self,
        score: float,
        novelty: float,
        z: float,
        expected: float,
        spread: float,
        record: tuple[float, float] | None = None,
    ):
        self.score = score  # the surprise of this reading, in [0, 1]
        self.novelty = novelty  # the part of it that is new (damped): the alarm score, in [0, 1]
        self.z = z
        self.expected = expected
        self.spread = spread
        self.record = record  # the range (low, high) it broke, if it did


class StatDetector:
    """Seasonal baseline, short-term level, CUSUM and range of one channel. Feed readings in time
    order with :meth:`update`; persist with :meth:`dumps` / :meth:`loads`.

    ``record_spreads``: how far beyond the range so far, in spreads of the reference the reading
    is judged against, a reading must also be to be a record (0: only ``RANGE_TOL`` of the
    range's width). The range's edges are the extremes of noisy readings, so a reading just
    past one is most often the noise tail of the same level, not a new behaviour: a street
    light dimmed to 35 W with a watt of noise reads 33 W on some nights and, one night in
    weeks, 32 W, "outside all it had read before (33 W to 72 W)" by 2.5 % of that range. What
    tells a new behaviour from that tail is the distance in the channel's own noise (its
    robust spread, the one its z is measured in), not in the width of its range, which only
    says how far apart its levels are (a lamp's dimming steps). The gateway gives its measured
    channels ``RECORD_SPREADS`` (engine.py); the generic channel of ``replay`` (NAB) keeps 0, the
    plain range the check was tuned with, where an unknown series' first record pays."""

    __slots__ = (
        "cusum_hi",
        "cusum_lo",
        "dev",
        "floor",
        "hi",
        "hour",
        "last",
        "level",
        "lo",
        "n",
        "peak",
        "quantum",
        "record_spreads",
        "slots",
        "sm",
        "sm_hi",
        "sm_lo",
        "utc_slots",
        "zq",
        "zs",
        "zsq",
    )

    def __init__(self, record_spreads: float = 0.0) -> None:
        self.record_spreads = record_spreads  # not saved: the channel's kind sets it
        self.n = 0
        self.hour = -1  # the hour (since the epoch) of the last reading: a new one is a visit
        self.level = 0.0
        self.dev = 0.0
        self.floor = 0.0  # smallest spread worth believing: a fraction of the first value
        self.cusum_hi = 0.0
        self.cusum_lo = 0.0
        self.peak = 0.0
        self.zq = Q_REF  # streaming 99th percentile of z
        self.zs = 0.0  # short average of calibrated z
        self.zsq = 1.0  # streaming 99th percentile of that average
        self.lo = self.hi = 0.0  # range of the readings
        self.sm = self.sm_lo = self.sm_hi = 0.0  # short average of the readings, and its range
        self.slots = array("f", bytes(4 * 3 * _SLOTS))  # per slot: visits, median, spread
        self.last = math.nan  # the previous reading (NaN: not known)
        self.quantum = 0.0  # the channel's resolution: smallest step seen (0: none yet)
        self.utc_slots = False  # loaded from a state learnt by UTC hours: see shift_slots

    def update(
        self, time: float, x: float, closed_day: bool = False, learn: bool = True
    ) -> Verdict:
        """Score reading ``x`` at ``time``, the town's wall-clock time in seconds since the epoch
        (``Clock.local``: the slots are its hours); ``closed_day`` picks the hour-of-day slots
        of closed days; ``learn=False`` scores without learning (the reading is known to be
        wrong).

        The per-reading path of every channel: written for CPython's cost per operation (locals,
        no call to ``max``/``min`` but the comparison they make, in the same order, so NaN and
        ties go the same way), not for looks."""
        n = self.n
        self.n = n + 1
        if n == 0:
            self.level = self.lo = self.hi = self.sm = self.sm_lo = self.sm_hi = x
            f = abs(x) * 1e-3
            self.floor = 1e-9 if f < 1e-9 else f
        step_x = abs(x - self.last)  # NaN (so no step) when the previous reading is unknown
        quantum = self.quantum
        if step_x > 0.0 and (step_x < quantum or quantum == 0.0):
            self.quantum = quantum = step_x
        self.last = x
        floor = self.floor
        f = QUANTUM_FLOOR * quantum
        if f > floor:
            floor = f
        level, dev = self.level, self.dev
        spread = floor if floor > dev else dev
        resid = x - level
        z_short = abs(resid) / spread

        # The reference: the hour-of-day slot once known (and the hour-of-week one with it).
        hour = int(time // 3600)
        day_i = 3 * (hour % 24 + (24 if closed_day else 0))
        week_i = 3 * (DAY_SLOTS + (hour + 72) % 168)  # the Unix epoch was a Thursday
        slots = self.slots
        ready = slots[day_i] >= SLOT_READY
        z, expected, used_spread = z_short, level, spread
        if ready:
            quarter = 0.25 * spread
            d_spread = slots[day_i + 2]
            if floor > d_spread:
                d_spread = floor
            if quarter > d_spread:
                d_spread = quarter
            expected = slots[day_i + 1]
            z = abs(x - expected) / d_spread
            used_spread = d_spread
            if slots[week_i] >= WEEK_READY:
                w_spread = slots[week_i + 2]
                if floor > w_spread:
                    w_spread = floor
                if quarter > w_spread:
                    w_spread = quarter
                w_med = slots[week_i + 1]
                z_week = abs(x - w_med) / w_spread
                if z_week < z:
                    z, expected, used_spread = z_week, w_med, w_spread
        if learn:
            # Each slot's streaming median steps towards x, its spread follows |x - median|.
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
                    step = SLOT_STEP * (floor if floor > s_dev else s_dev)
                    if x > med:
                        d = x - med
                        slots[i + 1] = med + (d if d < step else step)
                    elif x < med:
                        d = med - x
                        slots[i + 1] = med - (d if d < step else step)
                    d = abs(x - med)
                    c = CLIP * s_dev + floor
                    slots[i + 2] = s_dev + SLOT_ALPHA * ((c if c < d else d) - s_dev)
                if new_visit and visits < 65000:
                    slots[i] = visits + 1

        # CUSUM of the residual against the reference (a lamp switching on at dusk, which the
        # seasonal slots know, is no shift), standardised and clipped.
        r = (x - expected) / used_spread
        if r > 0:
            if r > CLIP:
                r = CLIP
        elif r < -CLIP:
            r = -CLIP
        c_hi = self.cusum_hi + r - CUSUM_K
        c_lo = self.cusum_lo - r - CUSUM_K
        c_hi = c_hi if c_hi > 0.0 else 0.0
        c_lo = c_lo if c_lo > 0.0 else 0.0
        self.cusum_hi, self.cusum_lo = c_hi, c_lo
        z_cusum = (c_lo if c_lo > c_hi else c_hi) * _CUSUM_Z
        if z_cusum > z and z_cusum > z_short * 0.5:
            z = z_cusum

        # The short-term level and spread learn from the clipped reading.
        record = None
        if learn:
            c = CLIP * spread
            v = resid if resid < c else c
            self.level = level + ALPHA * (v if v > -c else -c)
            if n:
                a = abs(resid)
                self.dev = dev + ALPHA * ((c if c < a else a) - dev)
            # The ranges (of the reading and of its short average); a record is the one the
            # reading broke. (Written out here: a method call per reading costs.)
            lo, hi = self.lo, self.hi
            noise = self.record_spreads * used_spread  # 0 on the generic channel
            if n >= WARMUP and hi > lo:
                tol = (hi - lo) * RANGE_TOL
                if noise > tol:
                    tol = noise
                if x > hi + tol or x < lo - tol:
                    record = (lo, hi)
            if x > hi:
                self.hi = x
            elif x < lo:
                self.lo = x
            sm = self.sm + RANGE_ALPHA * (x - self.sm)
            self.sm = sm
            s_lo, s_hi = self.sm_lo, self.sm_hi
            if record is None and n >= WARMUP and s_hi > s_lo:
                tol = (s_hi - s_lo) * RANGE_SMOOTH_TOL
                if noise > tol:
                    tol = noise
                if sm > s_hi + tol or sm < s_lo - tol:
                    record = (s_lo, s_hi)
            if sm > s_hi:
                self.sm_hi = sm
            elif sm < s_lo:
                self.sm_lo = sm
        quiet = n < WARMUP or not ready
        # Calibration by the channel's own high quantile of z, once it has learnt.
        q = self.zq
        if not quiet and learn:
            if z > q:
                self.zq = q * _Q_UP
            else:
                v = q * _Q_DOWN
                self.zq = v if v > 1.0 else 1.0
        z = z / (1.0 if q < 1.0 else q) * Q_REF
        if quiet:
            return Verdict(0.0, 0.0, 0.0, expected, spread)
        if z > Z_HALF:
            self.cusum_hi = self.cusum_lo = 0.0  # the alarm is raised: start afresh
        # A run of moderately unusual readings: the short average of z, calibrated likewise.
        zs = self.zs + SMOOTH_ALPHA * (z - self.zs)
        self.zs = zs
        qs = self.zsq
        if zs > qs:
            self.zsq = qs * _Q_UP
        else:
            v = qs * _Q_DOWN
            self.zsq = v if v > 0.5 else 0.5
        v = zs / (0.5 if qs < 0.5 else qs) * Q_REF
        if v > z:
            z = v

        z2 = z * z
        score = z2 / (z2 + _Z_HALF2)
        peak = self.peak * _DECAY
        if score > peak:
            novelty = score - peak
            self.peak = score
        else:
            novelty = 0.0
            self.peak = peak
        if record is not None:
            novelty = 1.0
        return Verdict(score, novelty, z, expected, spread, record)

    # -- persistence -------------------------------------------------------------------------------
    def dumps(self) -> bytes:
        """The whole state, packed (2.7 KB)."""
        head = _HEAD.pack(*(getattr(self, name) for name in _STATE), LOCAL_SLOTS)
        return head + self.slots.tobytes()

    @classmethod
    def loads(cls, data: bytes, record_spreads: float = 0.0) -> "StatDetector":
        """A state saved by :meth:`dumps`, for a channel given ``record_spreads``."""
        self = cls(record_spreads)
        head, names = _HEAD, _STATE
        if len(data) == _HEAD_V1.size + 4 * 3 * _SLOTS:
            head, names = _HEAD_V1, _STATE_V1  # saved before "last" and "quantum"
        values = head.unpack_from(data)
        for name, value in zip(names, values, strict=False):
            setattr(self, name, value)
        self.utc_slots = head is _HEAD_V1 or values[-1] != LOCAL_SLOTS
        self.slots = array("f")
        self.slots.frombytes(data[head.size :])
        return self

    def shift_slots(self, hours: int) -> None:
        """Move what each seasonal slot learnt ``hours`` later: a state learnt by UTC hours
        (``utc_slots``, saved before the slots followed the town's hours) keeps its baseline
        when ``hours`` is the town's UTC offset (+1 in a Paris winter: what UTC 07:00 learnt is
        local 08:00's)."""
        old = self.slots.tolist()
        slots = self.slots
        for first, size in ((0, 24), (24, 24), (DAY_SLOTS, WEEK_SLOTS)):
            for k in range(size):
                i, j = 3 * (first + k), 3 * (first + (k + hours) % size)
                slots[j : j + 3] = array("f", old[i : i + 3])
        if self.hour >= 0:
            self.hour += hours
        self.utc_slots = False
