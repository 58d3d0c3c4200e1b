"""The node's flash store: the ring of readings, the meta log, and power loss at any byte."""

try:
    from fw_fakes import CutDev, PowerLoss
except ImportError:
    from tests.portable.fw_fakes import CutDev, PowerLoss

from firmware.store import RESERVE, Store


def _fill(st, n, t0=1000):
    for i in range(n):
        st.append("p", t0 + 60 * i, 60 + i)


def test_append_peek_ack_keeps_values_and_order():
    st = Store(CutDev(1024))
    st.append("p", 1700000000, 61)
    st.append("t", 1700000060, 21.5)
    st.append("e", 12, 123456, True)
    recs, end = st.peek(10)
    assert end == 3
    assert [r[1:4] for r in recs] == [
        ("p", 1700000000, 61),
        ("t", 1700000060, 21.5),
        ("e", 12, 123456),
    ]
    assert recs[0][4] is None and recs[2][4] == st.boot & 0xFF
    st.ack(2)
    assert st.pending() == 1
    assert st.peek(10)[0][0][1] == "e"


def test_reset_recovers_pending_readings_and_boot_count():
    dev = CutDev(1024)
    st = Store(dev)
    _fill(st, 7)
    st.ack(3)
    again = Store(dev)
    assert again.boot == st.boot + 1
    assert again.pending() == 4
    assert [r[3] for r in again.peek(10)[0]] == [63, 64, 65, 66]


def test_full_ring_drops_oldest_and_counts_them():
    st = Store(CutDev(16 * 20 + 16 * 10))  # 10 reading slots
    assert st.n == 10
    _fill(st, 13)
    assert st.pending() == 10 and st.drops == 3
    recs, _ = st.peek(20)
    assert [r[3] for r in recs] == list(range(63, 73))  # the oldest three went
    st.ack(st.head)
    assert Store(st.dev).drops == 3  # persisted with the ack


def test_counter_never_repeats_across_resets_and_rarely_writes():
    dev = CutDev(1024)
    used = []
    for _ in range(3):
        st = Store(dev)
        before = len(dev.writes)
        for _ in range(100):
            used.append(st.next_counter())
        # One meta write per RESERVE counters, not one per message.
        assert len(dev.writes) - before <= 100 // RESERVE + 1
    assert used == sorted(set(used)) and used[0] == 1  # the gateway takes seq > 0


def _state(dev):
    st = Store(dev)
    return st, [r[3] for r in st.peek(1000)[0]]


def test_power_loss_at_every_byte_of_a_reading_write():
    for cut in range(17):
        dev = CutDev(512)  # 12 reading slots: less to scan
        st = Store(dev)
        _fill(st, 5)
        st.ack(2)
        dev.budget = cut
        try:
            st.append("p", 5000, 99)
            assert cut >= 16
        except PowerLoss:
            assert cut < 16
        dev.budget = None
        st2, values = _state(dev)
        # The committed readings are all there, in order; the torn one is there only if whole.
        assert values in ([62, 63, 64], [62, 63, 64, 99]), (cut, values)
        assert (values[-1] == 99) == (cut >= 16)
        st2.append("p", 6000, 100)
        assert _state(dev)[1][-1] == 100


def test_power_loss_at_every_byte_of_a_meta_write():
    for op in ("ack", "counter"):
        for cut in range(21):
            dev = CutDev(512)  # 12 reading slots: less to scan
            st = Store(dev)
            _fill(st, 5)
            used = [st.next_counter() for _ in range(RESERVE)]  # the next one writes meta
            dev.budget = cut
            try:
                if op == "ack":
                    st.ack(3)
                else:
                    used.append(st.next_counter())
            except PowerLoss:
                assert cut < 20
            dev.budget = None
            st2, values = _state(dev)
            # Either the ack happened or not; nothing else changed.
            assert values in ([60, 61, 62, 63, 64], [63, 64]), (op, cut, values)
            assert st2.next_counter() > max(used)


def test_torn_slot_inside_pending_range_is_skipped_and_counted():
    dev = CutDev(512)  # 12 reading slots: less to scan
    st = Store(dev)
    _fill(st, 4)
    off = st.m * 20 + 1 * 16  # slot of seq 1
    dev.buf[off + 5] ^= 0xFF
    st2 = Store(dev)
    recs, end = st2.peek(10)
    assert [r[3] for r in recs] == [60, 62, 63] and end == 4


def test_a_channel_index_past_the_list_reads_as_a_torn_slot():
    # An older firmware stored channels "i" and "u" (indexes 7 and 8) that the gateway never
    # accepted: such a slot left on flash is skipped (dropped when acknowledged), not a crash.
    import struct
    from binascii import crc32

    from firmware.hal import MemDev
    from firmware.store import CHANNELS

    meta, rec_len = 20, 16  # store.py's _META and _REC (const: not module names on MicroPython)
    dev = MemDev(4096)
    st = Store(dev)
    st.append("p", 1700000000, 60)
    st.append("t", 1700000060, 21)
    rec = bytearray(rec_len)
    struct.pack_into(">IBBi4s", rec, 0, 1, st.boot & 0xFF, len(CHANNELS), 1700000060, b"\0" * 4)
    struct.pack_into(">H", rec, rec_len - 2, crc32(memoryview(rec)[: rec_len - 2]) & 0xFFFF)
    dev.write(st.m * meta + 1 * rec_len, rec)
    got, upto = Store(dev).peek(10)
    assert [r[1] for r in got] == ["p"] and upto == 2
