"""SenML packs in CBOR (RFC 8428), written to be small on the wire.

A node's readings are ``(channel, time, value)`` tuples. ``encode`` groups them by channel; the
first record of a group carries the channel as base name (``bn``) and its time as base time
(``bt``), and every follow-on record only a time offset (``t``) and a value (``v``, or ``s`` for
counters), so that a one-minute power reading costs about 7 bytes. The node's identity is not
repeated in the pack: it travels once, as the COSE ``kid`` (see docs/protocol.md).

``resolve`` turns any SenML pack (as decoded CBOR: a list of maps with integer labels) into
resolved records, applying the base fields as RFC 8428 Section 4.6 says. The node and the
gateway both run it on what ``protocols.cbor`` decoded (``decode``); tests also run it on what
``cbor2`` decoded, to check the two read a pack the same way.
"""

import struct

from protocols import cbor
from protocols.const import BN, BS, BT, BU, BV, SENML_RELATIVE_LIMIT, SUM_CHANNELS, N, S, T, U, V
from protocols.errors import DecodeError


def _compact(v):
    """A number in the fewest CBOR bytes that keep what a sensor measured.

    Integral floats become ints; other floats are rounded to float32 (7 significant digits,
    more than any sensor the node carries), which ``cbor`` then writes as float16 or float32.
    """
    if isinstance(v, float):
        if v == v and -9007199254740992.0 < v < 9007199254740992.0 and v == int(v):
            return int(v)
        return struct.unpack(">f", struct.pack(">f", v))[0]
    return v


def encode(readings):
    """Encode ``(channel, time, value)`` readings as a SenML CBOR pack (bytes).

    ``time`` is integer Unix seconds, or, before the node knows the time, a negative offset in
    seconds from the moment of sending (RFC 8428 Section 4.5.3, relative time).
    """
    out = bytearray()
    groups = {}
    order = []
    for r in readings:
        ch = r[0]
        if ch not in groups:
            groups[ch] = []
            order.append(ch)
        groups[ch].append(r)
    cbor.head(out, 4, len(readings))  # array of records
    for ch in order:
        base = None
        vlabel = S if ch in SUM_CHANNELS else V
        for r in groups[ch]:
            t = r[1]
            if base is None:
                base = t
                rec = {BN: ch, BT: t, vlabel: _compact(r[2])}
            elif t == base:
                rec = {vlabel: _compact(r[2])}
            else:
                rec = {T: t - base, vlabel: _compact(r[2])}
            cbor.encode_into(out, rec)
    return bytes(out)


def _num(x, what):
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise DecodeError("SenML: %s is not a number" % what)
    return x


def _text(x, what):
    if not isinstance(x, str):
        raise DecodeError("SenML: %s is not a text string" % what)
    return x


def resolve(pack, now):
    """Resolve a decoded SenML pack into a list of ``(name, unit, time, value)`` tuples.

    ``now`` (Unix seconds) anchors relative times. ``unit`` is None where the pack gives none.
    Raises ``DecodeError`` when the pack is not a list of SenML records with numeric values.
    """
    if not isinstance(pack, list) or not pack:
        raise DecodeError("SenML: a pack is a non-empty array of records")
    bn = ""
    bt = 0
    bu = None
    bv = 0
    bs = 0
    out = []
    for rec in pack:
        if not isinstance(rec, dict):
            raise DecodeError("SenML: a record is a map")
        for label in rec:
            # Labels ending in "_" must be understood (RFC 8428 Section 4.4); we understand none.
            if isinstance(label, str) and label.endswith("_"):
                raise DecodeError("SenML: unsupported must-understand label %r" % label)
        if BN in rec:
            bn = _text(rec[BN], "bn")
        if BT in rec:
            bt = _num(rec[BT], "bt")
        if BU in rec:
            bu = _text(rec[BU], "bu")
        if BV in rec:
            bv = _num(rec[BV], "bv")
        if BS in rec:
            bs = _num(rec[BS], "bs")
        name = bn + _text(rec.get(N, ""), "n")
        if not name:
            raise DecodeError("SenML: record without a name")
        unit = _text(rec[U], "u") if U in rec else bu
        t = bt + _num(rec.get(T, 0), "t")
        if t < SENML_RELATIVE_LIMIT:
            t = now + t
        if V in rec:
            value = bv + _num(rec[V], "v")
        elif S in rec:
            value = bs + _num(rec[S], "s")
        else:
            raise DecodeError("SenML: record %r has no numeric value" % name)
        out.append((name, unit, t, value))
    return out


def decode(data, now):
    """Decode and resolve a SenML CBOR pack (bytes) with ``protocols.cbor``; only
    ``DecodeError`` comes out of any input."""
    return resolve(cbor.loads(data), now)
