"""The node when the gateway is away: back-off, backfill, a full buffer, spread sending.

(Apart from test_firmware_node.py so that each module stays within the 1 MB heap of the
MicroPython build the tests also run in.)
"""

try:
    from fw_fakes import CutDev, FakeGateway, FakeHal, node_cfg, run
except ImportError:
    from tests.portable.fw_fakes import CutDev, FakeGateway, FakeHal, node_cfg, run

from firmware.node import Node

T0 = 1700000040  # Unix time at ms 0 for a node that knows the time


def test_gateway_away_backs_off_capped_and_backfills_oldest_first():
    hal = FakeHal(unix0=T0)
    gw = FakeGateway(now=T0)
    node = Node(hal, node_cfg(sync_time=False, backoff=10, backoff_max=120))
    run(node, hal, gw, 1800, up=False)
    # One exchange gives up after ~93 s at most; attempts are then spaced by the back-off.
    attempts = node.stats["failed"]
    assert 1800 // (120 * 5 // 4 + 93) <= attempts <= 1800 // 100 + 1
    assert node.store.pending() == 31  # kept sampling (0 s to 1800 s)
    # The exchange in flight ends within 93 s, then the back-off within 120 s + 25 % jitter.
    run(node, hal, gw, 250)
    times = [r[1] for r in gw.readings]
    assert times == [T0 + 60 * i for i in range(len(times))] and len(times) >= 30
    assert node.store.pending() < 10


def test_full_buffer_drops_oldest_and_reports_drop_counter():
    dev = CutDev(16 * 20 + 16 * 20)  # 20 reading slots
    hal = FakeHal(dev=dev, unix0=T0)
    gw = FakeGateway(now=T0)
    node = Node(hal, node_cfg(sync_time=False, backoff_max=60))
    run(node, hal, gw, 30 * 60 - 1, up=False)  # 30 readings, room for 20
    assert node.store.drops == 10
    run(node, hal, gw, 76)  # the back-off ends within 60 s + 25 % jitter
    drops = [r for r in gw.readings if r[0] == "drop"]
    assert drops and drops[0][2] == node.store.drops == 11  # one more came while backing off
    p = [r[1] for r in gw.readings if r[0] == "p"]
    assert p[0] == T0 + 60 * 11  # the oldest went


def test_ready_packs_are_spread_so_nodes_on_the_same_clock_do_not_send_together():
    firsts = []
    for seed in range(6):
        hal = FakeHal(unix0=T0)
        hal._r = seed
        node = Node(hal, node_cfg(sync_time=False, spread=30, pack=2))
        run(node, hal, None, 100)
        firsts.append(hal.sent_at[0])  # when the pack of two first went, ms
    # Ready at 60 s; each sent within the next 30 s, not all at the same moment.
    assert all(60000 <= t < 90000 for t in firsts)
    assert len(set(firsts)) > 3
