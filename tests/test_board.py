"""The virtual board on a real pty, driven by the real ``mpremote`` CLI (PyPI mpremote 1.29).

If mpremote can list, copy and run code on it, the board speaks MicroPython's raw REPL and
raw-paste protocols closely enough to test our flash tool against it.
"""

import hashlib
import subprocess
import sys

import pytest

from sim.board.serial import VirtualBoard

MPREMOTE = [sys.executable, "-m", "mpremote"]
CLI = [sys.executable, "-c", "from gateway.cli.main import cli; cli()"]


@pytest.fixture
def board(tmp_path):
    with VirtualBoard(tmp_path / "board") as b:
        yield b


def mpremote(port: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*MPREMOTE, "connect", port, *args], capture_output=True, text=True, timeout=60
    )


def test_mpremote_exec_runs_in_real_micropython(board):
    done = mpremote(board.device, "exec", "import sys; print(sys.implementation.name, 6 * 7)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "micropython 42"


def test_mpremote_fs_cp_ls_and_back(board, tmp_path):
    # Binary content with every byte value: survives both directions unchanged.
    data = bytes(range(256)) * 20
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    assert mpremote(board.device, "fs", "cp", str(src), ":blob.bin").returncode == 0
    # Written to the board's flash (a host directory), byte for byte.
    assert (board.flash_dir / "blob.bin").read_bytes() == data

    ls = mpremote(board.port, "fs", "ls")  # through the symlink that follows replugs
    assert ls.returncode == 0, ls.stderr
    assert f"{len(data)} blob.bin" in " ".join(ls.stdout.split())

    back = tmp_path / "back.bin"
    assert mpremote(board.device, "fs", "cp", ":blob.bin", str(back)).returncode == 0
    assert back.read_bytes() == data

    # sha256sum is computed on the board (hashlib in MicroPython).
    sums = mpremote(board.device, "fs", "sha256sum", "blob.bin")
    assert hashlib.sha256(data).hexdigest() in sums.stdout


def test_long_code_goes_through_raw_paste_windows(board):
    # 8 KB of source is many raw-paste windows: the host must wait for each \x01.
    lines = [f"x{i} = {i}" for i in range(800)]
    code = "\n".join([*lines, "print(sum(globals()[k] for k in globals() if k[0] == 'x'))"])
    assert len(code) > 60 * 128
    done = mpremote(board.device, "exec", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sum(range(800)))


def test_board_errors_come_back_as_micropython_tracebacks(board):
    done = mpremote(board.device, "exec", "import os; os.stat('/nope')")
    assert done.returncode == 1
    assert "OSError" in done.stdout + done.stderr
    assert "ENOENT" in done.stdout + done.stderr
    # mpremote maps it to a missing file, as on a real board.
    done = mpremote(board.device, "fs", "cat", "nope.txt")
    assert done.returncode != 0
    assert "No such file" in done.stdout + done.stderr or "ENOENT" in done.stdout + done.stderr


def test_state_survives_a_restart_of_the_simulator(tmp_path):
    with VirtualBoard(tmp_path / "b") as b:
        mpremote(b.device, "exec", "f = open('kept.txt', 'w'); f.write('still here'); f.close()")
    with VirtualBoard(tmp_path / "b") as b:
        done = mpremote(b.device, "fs", "cat", "kept.txt")
    assert done.stdout.strip().endswith("still here")


def test_sim_board_command_prints_the_device_path_first(tmp_path):
    proc = subprocess.Popen(
        [*CLI, "sim", "board", "--state", str(tmp_path / "s")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        device = proc.stdout.readline().strip()
        assert device.startswith("/dev/pts/")
        done = mpremote(device, "exec", "import os; print(os.uname().sysname)")
        assert done.stdout.strip() == "esp32"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_paced_line_still_carries_everything(tmp_path):
    # --baud paces both directions (10 bits a byte); the protocol must not depend on speed.
    with VirtualBoard(tmp_path / "slow", baud=460800) as b:
        src = tmp_path / "f.bin"
        src.write_bytes(bytes(range(256)) * 8)
        assert mpremote(b.device, "fs", "cp", str(src), ":f.bin").returncode == 0
        assert (b.flash_dir / "f.bin").read_bytes() == src.read_bytes()
        assert b.bytes_in > 2048 and b.bytes_out > 0
