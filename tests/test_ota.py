"""Firmware updates end to end: the real gateway offers, the node's own code (firmware/node.py,
firmware/ota.py, on CPython over a real UDP socket and a real directory) fetches and installs,
the real boot shim boots the trial slot, and the first acknowledged reading confirms it.

Also: libcoap's own client (``coap-client-notls -b``, Debian's libcoap3-bin) fetches a file
and a manifest block-wise from the gateway, byte-exact; any block can be asked alone; the
2.04 carries ``"u"`` only for the node an update waits for; and the deflated files inflate in
a real MicroPython (``deflate``), where a whole update runs too.
"""

import asyncio
import hashlib
import json
import runpy
import shutil
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cbor2
import pytest
from gateway_helpers import add_node, running_gateway

from firmware import config, ota
from firmware.hal import MemDev, MemFS
from firmware.node import Node
from gateway.ota import updates
from gateway.provision.build import ROOT, compile_firmware
from gateway.store.db import open_db
from protocols import coap, manifest
from sim import micropython

OLD_FILES = [("firmware/main.py", b"print('v1')\n"), ("firmware/stale.py", b"# gone in v2\n")]


@pytest.fixture(scope="module")
def firmware():
    """The real node firmware, compiled as the flash tool does: the files version 2 ships."""
    return [(f.path, f.data) for f in compile_firmware()]


class UdpHal:
    """A node's HAL on CPython: a UDP socket to the gateway, the node's filesystem in a
    directory (``files``), wall-clock milliseconds; ``reset`` ends the node's run."""

    def __init__(self, port, root):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(("127.0.0.1", port))
        self.t0 = time.monotonic()
        self.dev = MemDev(4096)
        self.fs = MemFS()
        self.files = ota.OsFiles(str(root))
        self.resets = 0
        self.n = 0

    def ms(self):
        return int((time.monotonic() - self.t0) * 1000)

    def unix(self):
        return None

    def set_unix(self, t):
        pass

    def read(self, ch):
        self.n += 1
        return 40.0 + self.n

    def send(self, data):
        self.sock.send(data)

    def wait(self, ms):
        self.sock.settimeout(max(ms, 1) / 1000)
        try:
            return self.sock.recv(2048)
        except TimeoutError:
            return None

    def urandom(self, n):
        return bytes(n)

    def feed(self):
        pass

    def led(self, on):
        pass

    def reset(self):
        self.resets += 1


def run_node(hal, key, node_id, until, seconds=60):
    """The node's loop (as firmware/main.py runs it) until ``until(node)`` or the deadline."""
    cfg = config.load(
        json.dumps(
            {"node": node_id, "key": key.hex(), "gateway": "127.0.0.1", "pack": 1,
             "first": True, "spread": 0, "channels": {"p": 1}}
        )
    )  # fmt: skip
    node = Node(hal, cfg)
    deadline = time.monotonic() + seconds
    while not until(node) and time.monotonic() < deadline:
        data = hal.wait(min(node.poll(), 200))
        if data:
            node.datagram(data)
    return node


def flashed(root: Path) -> None:
    (root / "fw" / "a" / "firmware").mkdir(parents=True)
    (root / "fw" / "current").write_text("a")
    for path, data in OLD_FILES:
        (root / "fw" / "a" / path).write_bytes(data)


def slot(root: Path, name: str) -> dict[str, bytes]:
    base = root / "fw" / name
    return {
        p.relative_to(base).as_posix(): p.read_bytes()
        for p in base.rglob("*")
        if p.is_file() and p.name != "manifest.cbor"
    }


def test_a_node_fetches_its_update_boots_it_on_trial_and_confirms_it(tmp_path, firmware):
    asyncio.run(_a_node_fetches_its_update_boots_it_on_trial_and_confirms_it(tmp_path, firmware))


async def _a_node_fetches_its_update_boots_it_on_trial_and_confirms_it(tmp_path, firmware):
    root = tmp_path / "node"
    flashed(root)
    async with running_gateway(tmp_path) as gw:
        key = add_node(gw, "lamp-7")
        db = open_db(gw.cfg.database)
        offer = updates.offer(db, "lamp-7", 2, firmware, node_class=sys.platform)
        assert offer.files == len(firmware) and offer.seq == 1
        # deflated, what goes over the air is smaller than the files
        assert offer.bytes_served < 0.8 * sum(len(d) for _, d in firmware)

        hal = UdpHal(gw.coap_port, root)
        started = time.monotonic()
        node = await asyncio.to_thread(run_node, hal, key, "lamp-7", lambda n: hal.resets)
        took = time.monotonic() - started
        assert hal.resets == 1, node.ota.st
        assert slot(root, "b") == dict(firmware)  # byte-exact, and no stale file
        assert (root / "fw" / "trial").read_text() == "b 0"
        assert (root / "fw" / "current").read_text() == "a"
        assert slot(root, "a") == dict(OLD_FILES)  # the running slot untouched
        state = json.loads((root / "fw" / "ota.json").read_text())
        assert (state["state"], state["version"], state["done"]) == ("updating", 2, offer.files)
        report = updates.status(db)[0]
        assert (report["node"], report["version"], report["running"], report["result"]) == (
            "lamp-7",
            2,
            0,  # flashed over USB: version 0
            0,
        )

        # The reset: the real boot shim boots slot b on trial, counting the boot.
        shim = runpy.run_path(str(ROOT / "firmware" / "boot" / "fwboot.py"))
        assert shim["choose"](str(root)) == "b"
        assert (root / "fw" / "trial").read_text() == "b 1"
        hal = UdpHal(gw.coap_port, root)
        node = await asyncio.to_thread(
            run_node, hal, key, "lamp-7", lambda n: n.stats["acked"] >= 1
        )
        assert node.ota.version == 2 and node.stats["acked"] == 1
        assert (root / "fw" / "current").read_text() == "b"
        assert not (root / "fw" / "trial").exists()
        state = json.loads((root / "fw" / "ota.json").read_text())
        assert (state["state"], state["result"], state["running"]) == ("idle", "confirmed", 2)
        assert shim["choose"](str(root)) == "b"
        db.close()
    print(f"update of {offer.files} files, {offer.bytes_served} B served: {took:.1f} s")


def test_the_2_04_says_u_only_to_the_node_an_update_waits_for(tmp_path):
    asyncio.run(_the_2_04_says_u_only_to_the_node_an_update_waits_for(tmp_path))


async def _the_2_04_says_u_only_to_the_node_an_update_waits_for(tmp_path):
    from protocols import cose, senml
    from tests.gateway_helpers import con_post, exchange

    async with running_gateway(tmp_path) as gw:
        keys = {n: add_node(gw, n) for n in ("lamp-1", "lamp-2")}
        db = open_db(gw.cfg.database)
        updates.offer(db, "lamp-1", 5, OLD_FILES, node_class="esp32")
        answers = {}
        for i, (n, key) in enumerate(keys.items()):
            body = cose.sign(key, n.encode(), 1, senml.encode([("p", -10, 40)]))
            (msg,) = await exchange(gw.coap_port, con_post(body, 100 + i))
            answers[n] = cbor2.loads(msg.payload)
        assert answers["lamp-1"][manifest.RESP_UPDATE] == 5
        assert manifest.RESP_UPDATE not in answers["lamp-2"]
        assert updates.withdraw(db, "lamp-1")
        gw._ingest.updates.reload()
        body = cose.sign(keys["lamp-1"], b"lamp-1", 2, senml.encode([("p", -5, 41)]))
        (msg,) = await exchange(gw.coap_port, con_post(body, 200))
        assert manifest.RESP_UPDATE not in cbor2.loads(msg.payload)
        # a new offer signs with the node's next manifest counter
        assert updates.offer(db, "lamp-1", 6, OLD_FILES, node_class="esp32").seq == 2
        db.close()


@pytest.mark.skipif(not shutil.which("coap-client-notls"), reason="libcoap3-bin (.ci/run)")
def test_libcoap_fetches_a_file_and_a_manifest_block_wise_byte_exact(tmp_path, firmware):
    asyncio.run(_libcoap_fetches_a_file_and_a_manifest_block_wise_byte_exact(tmp_path, firmware))


async def _libcoap_fetches_a_file_and_a_manifest_block_wise_byte_exact(tmp_path, firmware):
    async with running_gateway(tmp_path) as gw:
        key = add_node(gw, "lamp-3")
        db = open_db(gw.cfg.database)
        signed = updates.offer(db, "lamp-3", 2, firmware, node_class="esp32").manifest
        m = manifest.decode(signed)
        assert m.verify(key) and len(signed) > 512  # more than one block itself
        name, _, digest, zsize = max(m.files, key=lambda f: f[1])
        served = updates.file_data(db, digest.hex())
        assert len(served) == zsize and zsize > 1024
        assert zlib.decompress(served) == dict(firmware)[name]
        base = f"coap://127.0.0.1:{gw.coap_port}/u"
        for url, want in ((f"{base}/f/{digest.hex()}", served), (f"{base}/lamp-3/m", signed)):
            for block in (64, 512, 1024):
                out = tmp_path / "got"
                await asyncio.to_thread(
                    subprocess.run,
                    ["coap-client-notls", "-m", "get", "-b", str(block), "-o", str(out), url],
                    check=True,
                    timeout=30,
                    capture_output=True,
                )
                assert out.read_bytes() == want, (url, block)
                out.unlink()
        db.close()


def test_any_block_alone_at_any_time_and_4_04_or_4_02_past_the_end(tmp_path):
    asyncio.run(_any_block_alone_at_any_time_and_4_04_or_4_02_past_the_end(tmp_path))


async def _any_block_alone_at_any_time_and_4_04_or_4_02_past_the_end(tmp_path):
    from tests.gateway_helpers import exchange

    # 2,304 bytes that deflating does not shrink: served as they are
    data = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(72))
    async with running_gateway(tmp_path) as gw:
        add_node(gw, "lamp-4")
        db = open_db(gw.cfg.database)
        updates.offer(db, "lamp-4", 3, [("firmware/x.bin", data)], node_class="esp32")
        digest = hashlib.sha256(data).hexdigest()
        served = updates.file_data(db, digest)
        assert served == data
        db.close()
        opts = [(11, b"u"), (11, b"f"), (11, digest.encode())]

        async def get(num, szx=5, path=opts):
            wire = coap.encode(
                0, 1, 300 + num, b"t", [*path, (23, coap.uint_option(num << 4 | szx))]
            )
            (msg,) = await exchange(gw.coap_port, wire)
            return msg

        third = await get(2)  # block 2 first, with nothing asked before: stateless
        assert third.code == 0x45 and third.payload == served[1024:1536]
        first = await get(0)
        assert first.payload == served[:512]
        assert coap.option_uint(first.option(28)) == len(served)  # Size2 in block 0
        assert first.option(4) == third.option(4)  # one ETag for the whole representation
        last = (len(served) - 1) // 512
        tail = await get(last)
        assert not coap.option_uint(tail.option(23)) & 8  # no more after the last
        assert (await get(last + 1)).code == 0x82  # 4.02 Bad Option: past the end
        missing = [(11, b"u"), (11, b"f"), (11, b"0" * 64)]
        assert (await get(0, path=missing)).code == 0x84
        assert (await get(0, path=[(11, b"u"), (11, b"lamp-9"), (11, b"m")])).code == 0x84


def test_served_files_inflate_in_micropython_and_an_update_runs_there(tmp_path):
    data = b"".join(b"value %d of the module\n" % i for i in range(400))
    z = zlib.compressobj(9, zlib.DEFLATED, updates.WBITS)  # as gateway.ota.updates serves
    (tmp_path / "x.z").write_bytes(z.compress(data) + z.flush())
    micropython.stage(tmp_path, extra=(Path(__file__).parent / "portable",))
    out = micropython.run(
        "import sys\n"
        "sys.path.insert(0, '/input/portable')\n"
        "from firmware import fetch, ota\n"
        "import test_firmware_ota as t\n"
        # In functions, and no explicit gc.collect(): in this WASI build a collection while
        # a large frame runs frees it (sim/ota_heap.py; the heap: tests/test_ota_heap.py).
        "def inflate():\n"
        "    fs = t.MemFiles()\n"
        "    fs.d['/x.z'] = open('/input/x.z', 'rb').read()\n"
        "    fetch.inflate(fs, '/x.z', '/x', bytearray(256))\n"
        "    import hashlib\n"
        "    print(hashlib.sha256(fs.d['/x']).digest().hex())\n"
        "def update():\n"
        "    node = t.flashed(1)\n"
        "    up = t.updater(node)\n"
        "    up.offered(2, 0)\n"
        "    t.drive(up, t.Server(t.signed(2, t.app(2)), t.app(2)))\n"
        "    print(node.d['/fw/trial'])\n"
        "inflate()\n"
        "update()\n",
        tmp_path,
    )
    assert out.split("\n")[:2] == [hashlib.sha256(data).hexdigest(), "b'b 0'"]
