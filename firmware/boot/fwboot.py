# /fwboot.py on a flashed node (`reverbere node flash`): boots the firmware slot that the one
# pointer file /fw/current names ("a" or "b"; gateway/provision/flash.py keeps these names),
# or, after an update over the air (firmware/ota.py, docs/ota.md), the slot /fw/trial names
# ("b 0": slot and boots so far) on trial: each trial boot is counted first (a temporary file
# renamed over, atomic on littlefs), and after TRIES boots the application did not confirm
# (it crashed, hung, or never got a reading acknowledged) the shim writes /fw/rolled and goes
# back to /fw/current by itself. The application confirms by renaming /fw/current over.
import os
import sys

POINTER = "/fw/current"
TRIAL = "/fw/trial"
ROLLED = "/fw/rolled"
SLOTS = ("a", "b")
TRIES = 3  # boots a trial slot gets (firmware/ota.py has the same number)
ENTRY = "firmware.main"  # the module whose run() starts the node


def _read(path):
    try:
        with open(path) as f:
            return f.read().split()
    except OSError:
        return []


def _write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def choose(root=""):
    # The slot to boot: the trial one while it has boots left, else the confirmed one.
    cur = _read(root + POINTER)
    cur = cur[0] if cur and cur[0] in SLOTS else None
    trial = _read(root + TRIAL)
    if not trial:
        return cur
    slot = trial[0]
    try:
        boots = int(trial[1])
    except (IndexError, ValueError):
        boots = TRIES
    if slot in SLOTS and slot != cur and boots < TRIES:
        _write(root + TRIAL, "%s %d" % (slot, boots + 1))
        return slot
    if slot != cur and cur is not None:  # given up: say so (before the trial goes) for the app
        _write(root + ROLLED, slot)
    try:  # noqa: SIM105 (MicroPython has no contextlib)
        os.remove(root + TRIAL)
    except OSError:
        pass
    return cur


def select(root="", slot=None):
    # Put the slot to boot first on sys.path; its name, or None (no firmware).
    # ``root`` is where the board's filesystem is ("" on a board; a mount point in tests).
    if slot is None:
        cur = _read(root + POINTER)
        slot = cur[0] if cur else None
    if slot not in SLOTS:
        return None
    path = root + "/fw/" + slot
    if path not in sys.path:
        sys.path.insert(0, path)
    return slot


def run(root=""):
    if select(root, choose(root)) is None:
        print("reverbere: boot error=no-firmware")
        return
    __import__(ENTRY, None, None, ["run"]).run()
