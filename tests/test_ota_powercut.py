"""A power cut at every write and erase of an update leaves a node that boots a whole version.

The node's filesystem is a littlefs image (PyPI ``littlefs-python``, the C littlefs that
MicroPython uses) on an emulated flash that counts its program and erase operations. For each
N, a fresh copy of the flashed image runs the update (firmware/ota.py: download, checks,
the pointer flip, then the trial boot of the real shim firmware/boot/fwboot.py and the
confirmation) and the flash freezes at operation N: that operation is torn (half of it
programmed) and nothing after it reaches the flash. The image is then mounted again, as after
the power came back, and:

- the boot shim picks a slot whose files are exactly the old version or exactly the new one,
  never a mix and never a missing file;
- the update, offered again, ends (resumed where it was) and the new version boots.

The sweep covers every operation (110 for this three-file version: the files, the parts'
renames, the state record, the manifest, the pointer, the trial boot count, the
confirmation), so it runs whole in CI too. A shim or updater that wrote the pointer before the
last file was checked, or any file of the running slot, fails it.
"""

import contextlib
import importlib.util
import types

import littlefs
import pytest

from firmware import ota
from gateway.provision.build import ROOT
from tests.portable.test_firmware_ota import CLS, KEY, NODE, Server, app, signed

BLOCK_SIZE = 4096  # an ESP32's flash sector
BLOCKS = 64  # 256 KB
OLD, NEW = 1, 2
LFS_ERR_IO = -5  # what a block device callback returns when the flash fails


class PowerCut(Exception):
    pass


class Flash(littlefs.UserContext):
    """Emulated flash; the ``cut_at``-th program or erase is torn and the flash freezes."""

    def __init__(self, buffer, cut_at=None):
        super().__init__(buffer=buffer)
        self.ops = 0
        self.cut_at = cut_at
        self.frozen = False

    def _op(self):
        if self.frozen:
            return False
        if self.cut_at is not None and self.ops >= self.cut_at:
            self.frozen = True
            return None
        self.ops += 1
        return True

    def prog(self, cfg, block, off, data):
        go = self._op()
        if go is None:  # torn: the first half reaches the flash
            super().prog(cfg, block, off, data[: len(data) // 2])
        if not go:
            return LFS_ERR_IO  # littlefs stops where it is, as the board does
        return super().prog(cfg, block, off, data)

    def erase(self, cfg, block):
        go = self._op()
        if go is None:  # torn: an erase that stopped half-way
            half = cfg.block_size // 2
            self.buffer[block * cfg.block_size : block * cfg.block_size + half] = b"\xff" * half
        if not go:
            return LFS_ERR_IO
        return super().erase(cfg, block)


class Handle:
    """A littlefs file, unbuffered; after a cut it is dropped, never closed (littlefs must
    not be called again once the flash failed: its asserts abort the process)."""

    def __init__(self, files, raw, text=False):
        self.files = files
        self.raw = raw
        self.text = text

    def read(self):
        self.files._alive()
        data = self.raw.readall()
        return data.decode() if self.text else data

    def readinto(self, b):
        self.files._alive()
        return self.raw.readinto(b)

    def write(self, data):
        self.files._alive()
        try:
            return self.raw.write(data.encode() if self.text else data)
        except Exception:
            self._drop()
            raise

    def _drop(self):
        setattr(self.raw, "__IOBase_closed", True)

    def close(self):
        if self.files.flash.frozen:
            self._drop()
            raise PowerCut()
        try:
            self.raw.close()
        except Exception:
            self._drop()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is not None and self.files.flash.frozen:
            self._drop()
            return False
        self.close()
        return False


class LfsFiles:
    """``firmware.ota.OsFiles``'s methods over a littlefs image; raises ``PowerCut`` once the
    flash froze (the code after a cut never runs on the board)."""

    def __init__(self, flash):
        self.flash = flash
        self.fs = littlefs.LittleFS(flash, block_size=BLOCK_SIZE, block_count=BLOCKS)

    def _alive(self):
        if self.flash.frozen:
            raise PowerCut()

    def open(self, path, mode="r"):
        self._alive()
        text = "b" not in mode
        mode = mode if not text else mode + "b"
        if mode == "ab" and self.size(path) < 0:
            mode = "wb"  # littlefs-python's "a" does not create; MicroPython's does
        return Handle(self, self.fs.open(path, mode, buffering=0), text)

    def size(self, path):
        self._alive()
        try:
            return self.fs.stat(path).size
        except (OSError, littlefs.LittleFSError):
            return -1

    def remove(self, path):
        self._alive()
        with contextlib.suppress(FileNotFoundError):
            self.fs.remove(path)
        self._alive()

    def rename(self, a, b):
        self._alive()
        self.fs.rename(a, b)
        self._alive()

    def listdir(self, path):
        self._alive()
        try:
            return self.fs.listdir(path)
        except (OSError, littlefs.LittleFSError):
            return []

    def isdir(self, path):
        try:
            return self.fs.stat(path).type == 2
        except (OSError, littlefs.LittleFSError):
            return False

    def mkdir(self, path):
        self._alive()
        with contextlib.suppress(FileExistsError):
            self.fs.mkdir(path)


def shim(files):
    """The real firmware/boot/fwboot.py with its ``open`` and ``os`` on the littlefs image."""
    spec = importlib.util.spec_from_file_location("fwboot_lfs", ROOT / "firmware/boot/fwboot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def lfs_remove(path):
        files._alive()
        files.fs.remove(path)  # FileNotFoundError is an OSError, as on the board

    mod.open = files.open
    mod.os = types.SimpleNamespace(rename=files.rename, remove=lfs_remove)
    return mod


def flashed_image():
    """The image the flash tool leaves: version OLD in slot a, /fw/current = a."""
    flash = Flash(bytearray(b"\xff" * BLOCK_SIZE * BLOCKS))
    files = LfsFiles(flash)
    files.fs.format()
    files.fs.mount()
    for d in ("/fw", "/fw/a", "/fw/a/firmware"):
        files.mkdir(d)
    for path, data in app(OLD):
        with files.open("/fw/a/" + path, "wb") as f:
            f.write(data)
    with files.open("/fw/a/manifest.cbor", "wb") as f:
        f.write(signed(OLD, app(OLD)))
    with files.open("/fw/current", "wb") as f:
        f.write(b"a")
    return bytes(flash.buffer)


SERVER = Server(signed(NEW, app(NEW)), app(NEW))


def update(files):
    """The whole way of an update on the node: download and flip, reset, trial boot, the
    first acknowledged reading. Returns the slot booted."""
    resets = []
    up = ota.Updater(files, KEY, NODE, CLS, (6, 3), lambda: resets.append(1))
    up.offered(NEW, 0)
    while (opts := up.request(0)) is not None:
        up.answer(SERVER(opts), 0)
    slot = shim(files).choose()  # the reset: the shim boots the trial slot
    up = ota.Updater(files, KEY, NODE, CLS, (6, 3), lambda: None)
    up.acked(0)  # its first reading acknowledged
    return slot


def slot_content(files, slot):
    out = {}
    stack = ["/fw/" + slot]
    while stack:
        d = stack.pop()
        for name in files.fs.listdir(d):
            p = d + "/" + name
            if files.isdir(p):
                stack.append(p)
            elif name != "manifest.cbor":
                with files.open(p, "rb") as f:
                    out[p[len("/fw/" + slot) + 1 :]] = f.read()
    return out


def read(files, path):
    with files.open(path, "rb") as f:
        return f.read()


def after_power_returns(buffer):
    files = LfsFiles(Flash(bytearray(buffer)))
    return files


def test_an_uninterrupted_update_boots_the_new_version_and_counts_its_flash_operations():
    image = flashed_image()
    flash = Flash(bytearray(image))
    files = LfsFiles(flash)
    assert update(files) == "b"
    assert slot_content(files, shim(files).choose()) == dict(app(NEW))
    assert read(files, "/fw/current") == b"b"
    assert 50 < flash.ops < 2000, flash.ops  # what the sweep below goes through


def test_a_power_cut_at_any_flash_operation_boots_old_or_new_never_a_mix():
    image = flashed_image()
    total = Flash(bytearray(image))
    update(LfsFiles(total))
    every = range(total.ops + 1)
    old, new = dict(app(OLD)), dict(app(NEW))
    booted = {"a": 0, "b": 0}
    for n in every:
        flash = Flash(bytearray(image), cut_at=n)
        try:
            update(LfsFiles(flash))
        except PowerCut:
            pass
        except (OSError, littlefs.LittleFSError):  # littlefs saw its writes vanish: the cut
            assert flash.frozen
        files = after_power_returns(flash.buffer)
        slot = shim(files).choose()
        content = slot_content(files, slot)
        assert content in (old, new), f"cut at operation {n}: slot {slot} holds a mix"
        booted[slot] += 1
        # and the update, offered again, ends with the new version confirmed
        update(files)
        assert slot_content(files, shim(files).choose()) == new, f"cut at {n}: not resumed"
        assert read(files, "/fw/current") == b"b"
    assert booted["a"] and booted["b"]  # the sweep saw both sides of the switch


@pytest.mark.parametrize("boots", [1, 2, 3])
def test_a_trial_version_that_never_confirms_is_rolled_back_by_the_shim(boots):
    files = LfsFiles(Flash(bytearray(flashed_image())))
    up = ota.Updater(files, KEY, NODE, CLS, (6, 3), lambda: None)
    up.offered(NEW, 0)
    while (opts := up.request(0)) is not None:
        up.answer(SERVER(opts), 0)
    fwboot = shim(files)
    slots = [fwboot.choose() for _ in range(boots)]  # it crashes before any reading
    assert slots == ["b"] * boots
    assert fwboot.choose() == ("a" if boots == fwboot.TRIES else "b")
    if boots == fwboot.TRIES:
        up = ota.Updater(files, KEY, NODE, CLS, (6, 3), lambda: None)
        assert up.st["result"] == "rolled back: not confirmed after 3 boots"
        assert slot_content(files, "a") == dict(app(OLD))
