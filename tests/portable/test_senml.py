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


# RFC 8428 Section 6: the CBOR representation of the pack of Section 5.1.2 (a voltage and six
# currents), byte for byte as the RFC prints it (its maps keep the JSON's key order, and every
# float but 1.5 is written in 8 bytes).
RFC8428_CBOR = (
    "87a721781b75726e3a6465763a6f773a3130653230373361303130383030363a"
    "22fb41d303a15b00106223614120050067766f6c74616765016156"
    "02fb405e066666666666a3006763757272656e74062402fb3ff3333333333333"
    "a3006763757272656e74062302fb3ff4cccccccccccd"
    "a3006763757272656e74062202fb3ff6666666666666"
    "a3006763757272656e74062102f93e00"
    "a3006763757272656e74062002fb3ff999999999999a"
    "a3006763757272656e74060002fb3ffb333333333333"
)


CURRENTS = [(-5, 1.2), (-4, 1.3), (-3, 1.4), (-2, 1.5), (-1, 1.6), (0, 1.7)]


def _rfc8428_pack():
    first = {BN: "urn:dev:ow:10e2073a0108006:", BT: 1276020076.001, BU: "A", BVER: 5}
    first[N] = "voltage"
    first[U] = "V"
    first[V] = 120.1
    return [first] + [{N: "current", T: t, V: v} for t, v in CURRENTS]


def _encode_in_order(pack, orders):
    """The pack encoded with each map's keys in the order given (the RFC's), item by item
    through ``cbor.encode_into``: the bytes of every key and value are protocols.cbor's."""
    out = bytearray()
    cbor.head(out, 4, len(pack))
    for rec, order in zip(pack, orders):
        cbor.head(out, 5, len(rec))
        for k in order:
            cbor.encode_into(out, k)
            cbor.encode_into(out, rec[k])
    return bytes(out)


def test_rfc8428_section6_cbor_example_byte_for_byte():
    data = bytes.fromhex(RFC8428_CBOR)
    assert len(data) == 0xC3  # as the RFC's dump ends
    pack = _rfc8428_pack()
    assert cbor.loads(data) == pack
    orders = [[BN, BT, BU, BVER, N, U, V]] + [[N, T, V]] * 6
    assert _encode_in_order(pack, orders) == data
    # protocols.cbor's own deterministic order (RFC 8949 Section 4.2.1) moves keys, not bytes
    assert len(cbor.dumps(pack)) == len(data)
    assert cbor.loads(cbor.dumps(pack)) == pack


def test_rfc8428_section6_cbor_example_resolves_as_section_5_1_2_says():
    records = senml.decode(bytes.fromhex(RFC8428_CBOR), NOW)
    bn = "urn:dev:ow:10e2073a0108006:"
    bt = 1276020076.001
    assert records[0] == (bn + "voltage", "V", bt, 120.1)
    assert records[1:] == [(bn + "current", "A", bt + t, v) for t, v in CURRENTS]
