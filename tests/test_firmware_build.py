"""gateway/device_build.py: the device build that the flash tool copies to a board."""

from gateway.device_build import HOST_ONLY, build, sources
from sim import micropython


def test_build_compiles_every_device_file_and_writes_main(tmp_path):
    built = {f.path: f.size for f in build(tmp_path)}
    expected = {p.with_suffix(".mpy").as_posix() for p in sources()} | {"main.py"}
    assert set(built) == expected
    assert "firmware/node.mpy" in built and "protocols/cose.mpy" in built
    assert not any(p.endswith("hal.mpy") for p in built)  # host-only: RAM flash for tests
    assert HOST_ONLY == ("firmware/hal.py",)
    for path, size in built.items():
        assert (tmp_path / path).stat().st_size == size
        if path.endswith(".mpy"):
            assert (tmp_path / path).read_bytes()[:1] == b"M"
    assert not list(tmp_path.rglob("*.py"))[1:]  # main.py is the only source file


def test_compiled_build_loads_in_micropython(tmp_path):
    # The bytecode mpy-cross made is what MicroPython loads: the node's modules import from it.
    build(tmp_path)
    out = micropython.run(
        "from firmware import node, config, link, store\n"
        "print(node.__file__, hasattr(node, 'Node'), config.KEYS[0])\n",
        tmp_path,
    )
    assert out.split() == ["/input/firmware/node.mpy", "True", "node"]
