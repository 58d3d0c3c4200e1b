"""Issue 18, the technician's items: flashing as it happens in the field.

Ports that are missing, busy, forbidden, silent or not MicroPython; progress a person (or a log)
can follow; a dead board replaced by a new one under the same id; `node doctor` saying what is
wrong with its exit status; `node list` counting lost readings; optional parts naming their
extra. Real parts: pyserial's loop://, real ptys, the virtual board, the real gateway.
"""

import io
import json
import os
import subprocess
import sys
import time
import tty

import pytest
import serial
from click.testing import CliRunner
from serial.tools.list_ports_common import ListPortInfo
from test_flash import NODE, RealGateway, node_config

from gateway.cli.main import cli
from gateway.cli.node import _Bar
from gateway.ingest import registry
from gateway.provision import ports
from gateway.provision.device import Device, DeviceError, NoAnswer
from gateway.provision.extras import MissingExtra, need
from gateway.provision.flash import GatewayWatch, build_firmware, doctor, flash
from gateway.store.db import open_db
from sim.board.serial import VirtualBoard


@pytest.fixture
def gateway(tmp_path):
    gw = RealGateway(tmp_path)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def firmware():
    return build_firmware((6, 3))


@pytest.fixture
def silent_pty():
    """A pty whose other end is held open and never read nor written: a board that is dead."""
    master, slave = os.openpty()
    tty.setraw(slave)
    name = os.ttyname(slave)
    os.close(slave)
    yield name
    os.close(master)


# --- 6. ports ------------------------------------------------------------------------------


def test_a_silent_port_fails_within_seconds_with_a_sentence(silent_pty):
    # Before: mpremote read this pty with no timeout and `node flash` hung for 10 minutes.
    t0 = time.monotonic()
    with pytest.raises(NoAnswer) as e, Device(silent_pty) as dev:
        dev.enter_raw()
    assert time.monotonic() - t0 < 6
    assert str(e.value).startswith(f"nothing answers on {silent_pty}: is it a MicroPython board?")
    assert "press its reset button" in str(e.value)


def test_a_loopback_is_not_taken_for_a_board():
    # loop:// echoes every byte: something answers, but only with what was sent.
    t0 = time.monotonic()
    with (
        pytest.raises(NoAnswer, match=r"nothing answers on loop:// \(only an echo"),
        Device("loop://") as dev,
    ):
        dev.enter_raw()
    assert time.monotonic() - t0 < 6


def test_missing_busy_and_forbidden_ports_are_told_apart(silent_pty, tmp_path):
    with pytest.raises(DeviceError, match=r"^no such port /dev/ttyUSB97: is the node plugged in"):
        Device("/dev/ttyUSB97")
    holder = serial.Serial(silent_pty, exclusive=True)  # another program holds the port
    try:
        with pytest.raises(DeviceError) as e:
            Device(silent_pty)
        assert str(e.value).startswith(f"port {silent_pty} is busy: another program holds it (")
        assert f"(pid {os.getpid()})" in str(e.value)  # names who holds it
    finally:
        holder.close()
    # No permission: a user who is not in the port's group, for real (a process as nobody).
    os.chmod(silent_pty, 0o660)
    probe = (
        "import os\n"
        "from gateway.provision.ports import check_open, PortError\n"
        "os.setgid(65534); os.setuid(65534)\n"
        f"try:\n    check_open({silent_pty!r})\nexcept PortError as e:\n    print(e)\n"
    )
    if os.getuid() != 0:
        pytest.skip("needs root to run the probe as another user")
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, cwd=os.getcwd()
    )
    assert done.stdout.startswith(f"no permission to open {silent_pty}: add yourself to the ")
    assert "usermod -aG" in done.stdout, done.stderr


def usb(device: str, vid: int | None, pid: int | None, description: str) -> ListPortInfo:
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.pid, info.description = vid, pid, description
    return info


def test_ports_lists_boards_first_and_auto_takes_the_only_one():
    found = [
        usb("/dev/ttyS0", None, None, "n/a"),
        usb("/dev/ttyUSB0", 0x10C4, 0xEA60, "CP2102 USB to UART Bridge Controller"),
    ]
    listed = ports.ports(found)
    assert [p.device for p in listed] == ["/dev/ttyUSB0", "/dev/ttyS0"]
    assert listed[0].usb_id == "10c4:ea60" and listed[0].chip == "Silicon Labs CP210x"
    assert ports.auto(found) == "/dev/ttyUSB0"
    with pytest.raises(ports.NoSuchPort, match="no port that looks like a board"):
        ports.auto(found[:1])
    two = [*found, usb("/dev/ttyACM0", 0x2E8A, 0x0005, "Board in FS mode")]
    with pytest.raises(ports.PortError, match=r"found 2 boards.*pass --port"):
        ports.auto(two)


def test_cli_ports_and_a_wrong_port_say_it_in_one_sentence():
    listed = CliRunner().invoke(cli, ["node", "ports", "--all"])
    assert listed.exit_code == 0, listed.output
    done = CliRunner().invoke(cli, ["node", "doctor", "--port", "/dev/ttyUSB97"])
    assert done.exit_code == 1
    assert "Traceback" not in done.output
    assert "Error: no such port /dev/ttyUSB97" in done.output


# --- 7. progress ---------------------------------------------------------------------------


def test_progress_on_a_pipe_is_one_line_per_step_and_file(board_and_gateway, firmware):
    board, gw = board_and_gateway
    out = io.StringIO()  # not a terminal
    bar = _Bar(out)
    flash(
        board.port,
        node_config(gw),
        gw.register(NODE),
        files=firmware,
        progress=bar,
        commission_timeout=None,
    )
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == f"Identifying the board on {board.port}..."
    n = len(firmware)
    assert f"Writing {n} files (" in out.getvalue()
    files = [x for x in lines if x.startswith("  ")]
    assert len(files) == n and files[-1].startswith(f"  {n}/{n} ")  # ends at N/N
    steps = [x for x in lines if x.endswith("...")]
    assert [s.split()[0] for s in steps] == ["Identifying", "Comparing", "Verifying", "Writing"]
    assert "\r" not in out.getvalue()


def test_progress_on_a_terminal_ends_at_n_of_n():
    master, slave = os.openpty()
    tty.setraw(slave)  # what is written is what is read: no newline translation
    with os.fdopen(slave, "w") as term:
        bar = _Bar(term)
        assert bar.tty
        bar.step("Comparing with what the board holds")
        bar.start(300, 3)
        for i in range(3):
            bar.advance(100)
            bar.file_done(f"f{i}.mpy")
        bar.step("Verifying")
    shown = b""
    while True:  # everything written, up to the end of the line (EIO once the slave closed)
        try:
            got = os.read(master, 4096)
        except OSError:
            break
        if not got:
            break
        shown += got
    os.close(master)
    shown = shown.decode()
    last_bar = shown.split("\r")[-1]
    assert "[########################] 3/3 files" in last_bar
    assert last_bar.rstrip().endswith("Verifying...")


@pytest.fixture
def board_and_gateway(tmp_path, gateway):
    with VirtualBoard(tmp_path / "board", wifi=("mairie", "s3cret")) as b:
        yield b, gateway


# --- 8. replacing a node -------------------------------------------------------------------


def test_a_replacement_board_is_told_apart_then_replaced(tmp_path, gateway, firmware):
    key = gateway.register(NODE)
    db = open_db(gateway.gw.cfg.database)
    # The dead board had sent 500 packs and said it dropped 3 readings.
    db.execute("UPDATE nodes SET last_seq = 500 WHERE id = ?", [NODE])
    ref = db.execute("SELECT ref FROM nodes WHERE id = ?", [NODE]).fetchone()[0]
    db.execute("INSERT INTO readings VALUES (?, 'drop', 1764000000, 3)", [ref])
    db.conn.commit()
    db.close()
    with VirtualBoard(tmp_path / "new", wifi=("mairie", "s3cret")) as b:
        # Flashed with the right key, as before the fix: refused as a replay, and said so.
        watch = GatewayWatch(gateway.config_path, NODE)
        got = flash(
            b.port, node_config(gateway), key, files=firmware, commission_timeout=20, watch=watch
        )
        assert not got.commission.ok
        assert "the key is right but the message counter starts again" in got.commission.sentence
        assert "up to 500" in got.commission.sentence and "--replace" in got.commission.sentence
        # A wrong key is told from it.
        got = flash(
            b.port,
            node_config(gateway),
            os.urandom(32),
            files=firmware,
            commission_timeout=20,
            watch=GatewayWatch(gateway.config_path, NODE),
        )
        assert "key mismatch: the gateway holds another key" in got.commission.sentence
        # The documented way: node flash --replace (new key, counter reset, history kept).
        args = ["node", "flash", "--port", b.port, "--node-id", NODE, "--replace"]
        args += ["--gateway", f"127.0.0.1:{gateway.port}", "--config", str(gateway.config_path)]
        args += ["--wifi-ssid", "mairie", "--wifi-password", "s3cret", "--timeout", "20"]
        done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output
    assert f"{NODE} is sending to" in done.output
    db = open_db(gateway.gw.cfg.database)
    try:
        node = registry.list_nodes(db)[0]
        assert bytes(registry.lookup(db, NODE)[1]) != key  # a new key
        assert node.last_seq < 500  # the new board's counter
        # The old board's 3 are kept; the new board adds what it dropped itself (readings of
        # its refused boots, timed from a boot it no longer knows).
        assert node.lost >= 3
    finally:
        db.close()


def test_node_replace_needs_an_existing_node(gateway):
    done = CliRunner().invoke(cli, ["node", "replace", "nope", "--config", gateway.config_path])
    assert done.exit_code == 1
    assert "no node nope to replace" in done.output


# --- 9. doctor and node list ----------------------------------------------------------------


def test_doctor_shows_the_build_and_fails_on_a_problem(board_and_gateway, firmware):
    board, gw = board_and_gateway
    blank = CliRunner().invoke(cli, ["node", "doctor", "--port", board.port])
    assert blank.exit_code == 2, blank.output  # was 0 with "Key: MISSING"
    assert "Problem: no firmware installed" in blank.output
    result = flash(
        board.port, node_config(gw), gw.register(NODE), files=firmware, commission_timeout=20
    )
    assert result.commission.ok, result.commission.sentence
    d = doctor(board.port)
    assert d.firmware["version"] and len(d.firmware["build"]) == 12
    shown = CliRunner().invoke(cli, ["node", "doctor", "--port", board.port])
    assert shown.exit_code == 0, shown.output
    assert f"Firmware: version {d.firmware['version']}, build {d.firmware['build']}" in (
        shown.output
    )
    assert "  wifi       password ***, ssid mairie\n" in shown.output
    # The same firmware flashed elsewhere has the same build id; another build another one.
    (board.flash_dir / "config.json").unlink()
    gone = CliRunner().invoke(cli, ["node", "doctor", "--port", board.port, "--json"])
    assert gone.exit_code == 2
    assert json.loads(gone.output)["problems"] == [
        "no readable config.json: flash it (reverbere node flash)"
    ]


def test_node_list_counts_lost_readings_not_counter_jumps(gateway):
    gateway.register(NODE)
    db = open_db(gateway.gw.cfg.database)
    ref = db.execute("SELECT ref FROM nodes WHERE id = ?", [NODE]).fetchone()[0]
    # Three boots skipped 3 x 32 counters (gaps) and lost nothing; then the node dropped 2
    # readings, then 5 in all; a new board started its own count: 1.
    db.execute("UPDATE nodes SET gaps = 96 WHERE ref = ?", [ref])
    for t, v in ((100, 2), (200, 5), (300, 1)):
        db.execute("INSERT INTO readings VALUES (?, 'drop', ?, ?)", [ref, t, v])
    db.conn.commit()
    db.close()
    table = CliRunner().invoke(cli, ["node", "list", "--config", gateway.config_path])
    assert table.output.splitlines()[0].split() == [
        "id",
        "last_seen",
        "(UTC)",  # the town's zone: this gateway's config names none
        "last_seq",
        "messages",
        "lost",
        "battery",
    ]
    assert table.output.splitlines()[-1].split()[4] == "6"
    as_json = json.loads(
        CliRunner().invoke(cli, ["node", "list", "--config", gateway.config_path, "--json"]).output
    )
    assert as_json[0]["lost"] == 6 and as_json[0]["gaps"] == 96


# --- 10. extras -----------------------------------------------------------------------------


def test_a_missing_optional_part_names_its_extra():
    with pytest.raises(MissingExtra) as e:
        need("wasmtime_not_here", "the virtual board")
    assert isinstance(e.value, ImportError)  # code that catches ImportError still does
    e = MissingExtra("wasmtime", "the virtual board (reverbere sim board)")
    assert e.format_message() == (
        "the virtual board (reverbere sim board) needs wasmtime, which is not installed: "
        "pip install 'reverbere[board]'"
    )
    assert "reverbere[flash]" in MissingExtra("mpremote.transport", "node flash").format_message()


def test_node_flash_without_the_flash_extra_is_one_sentence(tmp_path):
    # A Python where mpremote cannot be imported (a path entry that shadows it with nothing).
    shadow = tmp_path / "shadow" / "mpremote"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(name='mpremote')\n")
    env = {**os.environ, "PYTHONPATH": f"{shadow.parent}{os.pathsep}{os.getcwd()}"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from gateway.cli.main import cli; cli()",
            "node",
            "doctor",
            "--port",
            "/dev/ttyUSB97",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "pip install 'reverbere[flash]'" in done.stderr
