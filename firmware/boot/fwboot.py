# /fwboot.py on a flashed node (`reverbere node flash`): boots the firmware slot that the one
# pointer file /fw/current names ("a" or "b"; gateway/provision/flash.py keeps these names).
import sys

POINTER = "/fw/current"
SLOTS = ("a", "b")
ENTRY = "firmware.main"  # the module whose run() starts the node


def select(root=""):
    # Put the slot named by the pointer first on sys.path; its name, or None (no firmware).
    # ``root`` is where the board's filesystem is ("" on a board; a mount point in tests).
    try:
        with open(root + POINTER) as f:
            slot = f.read().strip()
    except OSError:
        return None
    if slot not in SLOTS:
        return None
    path = root + "/fw/" + slot
    if path not in sys.path:
        sys.path.insert(0, path)
    return slot


def run(root=""):
    if select(root) is None:
        print("reverbere: boot error=no-firmware")
        return
    __import__(ENTRY, None, None, ["run"]).run()
