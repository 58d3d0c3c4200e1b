"""The node's status record (status.json, firmware/status.py): what it says, and how rarely it
is written (the flash wears), on a fake clock and RAM files."""

import json

try:
    from fw_fakes import FakeGateway, FakeHal, node_cfg, run
except ImportError:
    from tests.portable.fw_fakes import FakeGateway, FakeHal, node_cfg, run

from firmware.hal import MemFS
from firmware.node import Node
from firmware.status import FILE, Status

DAY = 86400 * 1000


class CountFS(MemFS):
    """RAM files that count the status record's writes."""

    def __init__(self, files=None):
        MemFS.__init__(self, files)
        self.writes = 0

    def write(self, name, text):
        self.writes += 1
        MemFS.write(self, name, text)


class BrokenFS(MemFS):
    def write(self, name, text):
        raise OSError(28)  # ENOSPC


def record(fs):
    return json.loads(fs.read(FILE))


def test_boot_record_is_written_at_the_first_poll_and_atomically():
    hal = FakeHal()
    node = Node(hal, node_cfg())
    assert hal.fs.read(FILE) is None  # nothing written before the node runs
    node.poll()
    r = record(hal.fs)
    assert r["boot"] == node.store.boot
    assert r["uptime_s"] == 0 and r["acks"] == 0 and r["ack_s"] is None
    assert r["last_error"] is None
    assert hal.fs.read(FILE + ".tmp") is None  # written as .tmp, then renamed


def test_gateway_away_is_recorded_then_its_return_and_the_error_stays():
    hal = FakeHal(fs=CountFS())
    gw = FakeGateway()
    node = Node(hal, node_cfg(first=True))
    run(node, hal, gw, 400, up=False)
    # The first reading went at once, was retransmitted for 93 s, then timed out; the change
    # waited for the 300 s gap after the boot record.
    r = record(hal.fs)
    assert r["last_error"] == "gateway: timeout"
    assert r["error_boot"] == node.store.boot and 60 < r["error_s"] < 100
    assert r["uptime_s"] >= 300 and r["acks"] == 0
    assert hal.fs.writes == 2  # the boot record, the error
    run(node, hal, gw, 1200)
    r = record(hal.fs)
    assert r["acks"] >= 1 and r["ack_s"] > r["error_s"]  # it came back...
    assert r["last_error"] == "gateway: timeout"  # ...and says what went wrong before
    assert hal.fs.writes == 3


def test_last_error_survives_a_reset():
    fs = MemFS()
    st = Status(fs, 4)
    st.note("crash: MemoryError()", 7000)
    st.write(7000)
    after = Status(fs, 5)  # the next boot
    after.poll(0)
    r = record(fs)
    assert r["boot"] == 5 and r["uptime_s"] == 0
    assert r["last_error"] == "crash: MemoryError()"
    assert r["error_boot"] == 4 and r["error_s"] == 7
    after.note("gateway: 4.01", 12000)  # a new error replaces it
    after.write(13000)
    assert record(fs)["last_error"] == "gateway: 4.01" and record(fs)["error_boot"] == 5


def test_a_healthy_node_writes_once_an_hour():
    fs = CountFS()
    st = Status(fs, 1)
    for now in range(0, DAY, 10000):
        if now % 600000 == 0:
            st.note(None, now)  # a pack acknowledged every 10 minutes
        st.poll(now)
    assert fs.writes == 24
    assert record(fs)["uptime_s"] == 23 * 3600  # the last hourly record...
    assert record(fs)["acks"] == 23 * 6 + 1  # ...and the packs acknowledged until then


def test_a_flapping_gateway_is_written_at_most_every_five_minutes():
    fs = CountFS()
    st = Status(fs, 1)
    for now in range(0, DAY, 10000):
        if now % 60000 == 0:  # every minute, alternately refused and acknowledged
            st.note("gateway: 5.03" if now % 120000 else None, now)
        st.poll(now)
    assert fs.writes <= DAY // 300000 + 1
    assert record(fs)["last_error"] == "gateway: 5.03"


def test_the_same_error_again_is_not_written_again():
    fs = CountFS()
    st = Status(fs, 1)
    st.poll(0)
    for now in range(60000, 3000000, 60000):
        st.note("gateway: timeout", now)
        st.poll(now)
    assert fs.writes == 2  # the boot record, then the error once
    assert record(fs)["error_s"] == 60  # failing since then


def test_a_broken_flash_does_not_stop_the_node():
    hal = FakeHal(fs=BrokenFS())
    gw = FakeGateway()
    node = Node(hal, node_cfg(first=True))
    run(node, hal, gw, 120)
    assert node.stats["acked"] == 1 and hal.fs.read(FILE) is None


def test_a_garbled_record_is_ignored():
    for text in ("{not json", "[1, 2]", ""):
        fs = MemFS({FILE: text})
        st = Status(fs, 2)
        st.poll(0)
        assert record(fs)["last_error"] is None
