"""gateway/provision/build.py: the device build that the flash tool copies to a board."""

from gateway.provision.build import BUILD_SLOT, HOST_ONLY, boot_files, build, sources
from gateway.provision.flash import build_firmware
from sim import micropython


def test_build_is_a_flashed_board_filesystem(tmp_path):
    built = {f.path: f.size for f in build(tmp_path)}
    slot = {f"fw/{BUILD_SLOT}/" + p.with_suffix(".mpy").as_posix() for p in sources()}
    assert set(built) == slot | {"main.py", "fwboot.py", "fw/current"}
    assert f"fw/{BUILD_SLOT}/firmware/node.mpy" in built
    assert not any(p.endswith("hal.mpy") for p in built)  # host-only: RAM flash for tests
    assert HOST_ONLY == ("firmware/hal.py",)
    for path, size in built.items():
        assert (tmp_path / path).stat().st_size == size
        if path.endswith(".mpy"):
            assert (tmp_path / path).read_bytes()[:1] == b"M"
    # The boot shim is the flash tool's, byte for byte; the slot, what it would send.
    for path, data in boot_files().items():
        assert (tmp_path / path.lstrip("/")).read_bytes() == data
    assert {f"fw/{BUILD_SLOT}/{f.path}": f.data for f in build_firmware((6, 3))} == {
        p: (tmp_path / p).read_bytes() for p in slot
    }


def test_compiled_build_boots_in_micropython(tmp_path):
    # The bytecode mpy-cross made is what MicroPython loads: the boot shim puts the slot the
    # pointer names on sys.path, and the node's modules import from it.
    build(tmp_path)
    out = micropython.run(
        "import fwboot\n"
        "print(fwboot.select('/input'))\n"
        "from firmware import node, config, link, store\n"
        "print(node.__file__, hasattr(node, 'Node'), config.KEYS[0])\n",
        tmp_path,
    )
    assert out.split() == ["a", "/input/fw/a/firmware/node.mpy", "True", "node"]


def test_footprint_benchmark_runs_a_whole_cycle_on_the_compiled_build():
    # The benchmark's figures are for people; here only that its cycle still completes
    # (sample, pack, sign, send, 2.04) on the .mpy build inside MicroPython.
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "firmware_footprint.py"
    spec = importlib.util.spec_from_file_location("firmware_footprint", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.measure()
    assert r["acked"] == 1 and r["request_bytes"] > 100
    assert r["mpy_bytes"] == sum(s for p, s in r["files"].items() if p.endswith(".mpy"))
    # The booted node has its updater, yet the download half of an update and the manifest
    # codec are not loaded until a version is offered: their bytecode is not in its RAM.
    assert r["updater"]
    assert r["on_update"] == ["fw/a/firmware/fetch.mpy", "fw/a/protocols/manifest.mpy"]


def test_an_updated_node_reads_its_version_at_boot_without_keeping_the_manifest_codec(tmp_path):
    # A node updated over the air has its slot's signed manifest; its updater reads the
    # version from it at boot, and the codec (protocols/manifest.py, 4 KB of bytecode in
    # RAM) is not left loaded: only an offered update loads it again (docs/firmware.md).
    from gateway.provision.build import compile_firmware
    from protocols import manifest

    build(tmp_path)
    entries = [(f.path, len(f.data), bytes(32), 0) for f in compile_firmware()]
    payload = manifest.encode("lamp-001", "esp32", 7, (6, 3), entries)
    signed = manifest.sign(bytes(32), "lamp-001", 1, payload)
    (tmp_path / "fw" / BUILD_SLOT / "manifest.cbor").write_bytes(signed)
    out = micropython.run(
        "import sys, fwboot\n"
        "fwboot.select('/input')\n"
        "from firmware import ota\n"
        "up = ota.Updater(ota.OsFiles('/input'), bytes(32), 'lamp-001', 'esp32', (6, 3), None)\n"
        "print(up.version, 'protocols.manifest' in sys.modules)\n"
        "from firmware import fetch\n"
        "print('protocols.manifest' in sys.modules)\n",
        tmp_path,
    )
    assert out.split() == ["7", "False", "True"]
