"""protocols.senml: the node's compact packs, and RFC 8428 resolution of any pack.

Portable: runs on CPython (pytest) and inside MicroPython (tests/test_micropython.py).
"""

from protocols import cbor, senml
from protocols.const import BN, BS, BT, BU, BV, BVER, N, S, T, U, V
from protocols.errors import DecodeError

T0 = 1764000000
NOW = 1764003600


def test_ten_power_readings_round_trip():
    readings = [("p", T0 + 60 * k, 60 + k % 3) for k in range(10)]
    records = senml.decode(senml.encode(readings), NOW)
    assert records == [("p", None, t, v) for _, t, v in readings]


def test_a_follow_on_record_costs_about_seven_bytes():
    one = len(senml.encode([("p", T0, 61)]))
    two = len(senml.encode([("p", T0, 61), ("p", T0 + 60, 62)]))
    assert two - one <= 7


def test_channels_are_grouped_and_counters_travel_as_sums():
    readings = [("p", T0, 61), ("e", T0, 123456), ("p", T0 + 60, 62), ("e", T0 + 60, 123457)]
    pack = cbor.loads(senml.encode(readings))
    assert [r.get(BN) for r in pack] == ["p", None, "e", None]
    assert S in pack[2] and V not in pack[2]
    records = senml.resolve(pack, NOW)
    assert sorted(records) == sorted((c, None, t, v) for c, t, v in readings)


def test_floats_are_kept_at_sensor_precision():
    readings = [("t", T0, 21.5), ("t", T0 + 60, 21.3), ("t", T0 + 120, 22.0)]
    pack = cbor.loads(senml.encode(readings))
    assert pack[0][V] == 21.5  # float16 on the wire
    assert abs(pack[1][V] - 21.3) < 1e-5  # float32 on the wire
    assert pack[2][V] == 22 and isinstance(pack[2][V], int)


def test_relative_times_resolve_against_now():
    # A node that does not know the time yet sends negative offsets from the moment of sending.
    records = senml.decode(senml.encode([("p", -120, 60), ("p", -60, 61)]), NOW)
    assert [r[2] for r in records] == [NOW - 120, NOW - 60]


def test_rfc8428_multiple_datapoints_example():
    # RFC 8428 Section 5.1.3, with CBOR labels (Section 6).
    pack = [
        {
            BN: "urn:dev:ow:10e2073a01080063:",
            BT: 1276020076.001,
            BU: "A",
            BVER: 5,
            N: "voltage",
            U: "V",
            V: 120.1,
        },
        {N: "current", T: -5, V: 1.2},
        {N: "current", T: -4, V: 1.3},
        {N: "current", T: -3, V: 1.4},
        {N: "current", T: -2, V: 1.5},
        {N: "current", T: -1, V: 1.6},
        {N: "current", V: 1.7},
    ]
    records = senml.decode(cbor.dumps(pack), NOW)
    assert records[0] == ("urn:dev:ow:10e2073a01080063:voltage", "V", 1276020076.001, 120.1)
    assert records[1][0] == "urn:dev:ow:10e2073a01080063:current"
    assert records[1][1] == "A"
    assert abs(records[1][2] - 1276020071.001) < 1e-3
    assert [r[3] for r in records[1:]] == [1.2, 1.3, 1.4, 1.5, 1.6, 1.7]


def test_base_value_and_base_sum_are_added():
    pack = [{BN: "e", BT: T0, BS: 1000, S: 5}, {T: 60, S: 7}, {BN: "p", BV: 60, V: 1}]
    records = senml.resolve(pack, NOW)
    assert [r[3] for r in records] == [1005, 1007, 61]


def _rejects(pack):
    try:
        senml.resolve(pack, NOW)
    except DecodeError:
        return True
    return False


def test_malformed_packs_raise_decode_error():
    assert _rejects({})  # not an array
    assert _rejects([])  # empty
    assert _rejects([1])  # record not a map
    assert _rejects([{V: 1}])  # no name
    assert _rejects([{BN: "p"}])  # no value
    assert _rejects([{BN: 7, V: 1}])  # name not text
    assert _rejects([{BN: "p", V: "61"}])  # value not a number
    assert _rejects([{BN: "p", V: True}])  # booleans are not numbers
    assert _rejects([{BN: "p", BT: "now", V: 1}])
    assert _rejects([{BN: "p", V: 1, "x_": 1}])  # must-understand label
