"""The node's loop end to end, on a fake clock, a fake socket and a gateway made of protocols/."""

try:
    from fw_fakes import CutDev, FakeGateway, FakeHal, node_cfg, run
except ImportError:
    from tests.portable.fw_fakes import CutDev, FakeGateway, FakeHal, node_cfg, run

from firmware import config
from firmware.node import Node
from protocols import coap
from protocols.const import SERVICE_UNAVAILABLE

T0 = 1700000040  # Unix time at ms 0 for a node that knows the time


def test_pack_of_ten_power_readings_is_signed_sent_and_acknowledged():
    hal = FakeHal(unix0=T0)
    gw = FakeGateway(now=T0 + 700)
    node = Node(hal, node_cfg(sync_time=False))
    run(node, hal, gw, 600)
    # Sampling is aligned on the minute: 1700000040 is a minute boundary.
    assert gw.readings == [("p", T0 + 60 * i, 61) for i in range(10)]
    assert node.store.pending() == 1 and node.stats["acked"] == 1  # the 11th waits


def test_node_without_clock_sends_relative_times_then_takes_gateway_time():
    hal = FakeHal()  # no clock
    gw = FakeGateway(now=1800000000)
    node = Node(hal, node_cfg(channels={"p": 60, "t": 300}))
    run(node, hal, gw, 599)
    # The first pack resolved against the gateway's "now" (relative times), then the node
    # took the gateway's time from the 2.04 response.
    chans = sorted(set(r[0] for r in gw.readings))
    assert chans == ["p", "t"]
    first = [r for r in gw.readings if r[0] == "p"]
    assert first[-1][1] - first[0][1] == 60 * (len(first) - 1)
    assert first[-1][1] <= 1800000000 and first[0][1] > 1800000000 - 600
    t = [r for r in gw.readings if r[0] == "t"]
    assert t[0][1] == first[0][1] and abs(t[0][2] - 21.3) < 1e-5  # float32 on the wire
    assert hal.set_times == [1800000000]
    # The pack went at 420 s (eight "p" and two "t" readings) and the node's clock now follows
    # the gateway's.
    assert node.unix(hal.now) == 1800000000 + (hal.now // 1000 - 420)


def test_config_from_gateway_is_applied_and_saved_atomically():
    hal = FakeHal(unix0=T0)
    gw = FakeGateway(now=T0)
    gw.config = {"interval": 30, "pack": 5}
    node = Node(hal, node_cfg(sync_time=False))
    run(node, hal, gw, 600)
    assert node.cfg["channels"] == {"p": 30} and node.cfg["pack"] == 5
    saved = config.load(hal.fs.read("config.json"))
    assert saved["channels"] == {"p": 30} and saved["pack"] == 5
    assert hal.fs.read("config.json.tmp") is None
    n = len(gw.readings)
    run(node, hal, gw, 300)
    assert len(gw.readings) - n == 10  # now every 30 s, in packs of 5
    gw.config = {"pack": "lots"}  # a bad setting is ignored as a whole
    run(node, hal, gw, 300)
    assert node.cfg["pack"] == 5


def test_service_unavailable_waits_max_age():
    hal = FakeHal(unix0=T0)
    gw = FakeGateway(now=T0)
    gw.code = SERVICE_UNAVAILABLE
    node = Node(hal, node_cfg(sync_time=False))
    run(node, hal, gw, 541)  # the first pack goes at 540 s and is refused
    assert node.send_at - hal.now >= 60000
    gw.code = 0x44
    run(node, hal, gw, 59)
    assert gw.readings == []
    run(node, hal, gw, 30)
    assert len(gw.readings) == 10


def test_reset_mid_flight_resends_only_unacknowledged_with_a_fresh_counter():
    dev = CutDev(2048)
    hal = FakeHal(dev=dev, unix0=T0)
    gw = FakeGateway(now=T0)
    node = Node(hal, node_cfg(sync_time=False))
    run(node, hal, gw, 600)
    run(node, hal, gw, 600, up=False)  # the second pack is in flight when power goes
    assert coap.decode(hal.sent[-1] if hal.sent else b"\x40\x00\x00\x00") is not None
    reborn = Node(hal, node_cfg(sync_time=False))
    run(reborn, hal, gw, 60)
    # The first pack was acknowledged, the second never: it goes again, once, after the reset.
    assert [r[1] for r in gw.readings] == [T0 + 60 * i for i in range(20)]
    assert gw.seqs == sorted(gw.seqs) and len(set(gw.seqs)) == len(gw.seqs)


def test_watchdog_is_fed_every_poll():
    hal = FakeHal(unix0=T0)
    node = Node(hal, node_cfg())
    run(node, hal, FakeGateway(now=T0), 300)
    assert hal.feeds >= 5


def test_first_reading_goes_at_once_and_the_console_says_how_it_went():
    # Commissioning: a technician waits for one answer, not for a full pack.
    hal = FakeHal(unix0=T0)
    gw = FakeGateway(now=T0)
    node = Node(hal, node_cfg(sync_time=False, first=True))
    run(node, hal, gw, 1)
    assert gw.readings == [("p", T0, 61)]
    assert hal.lines == ["send seq=1 readings=1 code=2.04"]
    run(node, hal, gw, 600)
    assert len(gw.readings) == 11  # then full packs again
    run(node, hal, None, 800, up=False)  # the next pack goes at ~1200 s, gives up ~93 s later
    assert "send seq=3 readings=10 error=timeout" in hal.lines
