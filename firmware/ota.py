"""Firmware updates over the air, the node's side (issue 17; docs/ota.md).

This module is the resident half: what every boot and cycle needs (the pointer files, the
state record, confirming a trial slot, taking an offer). The download (steps 2 to 4 below)
is firmware/fetch.py, which ``Updater.request`` imports only once a version is offered, so
that a node that is not updating does not hold its bytecode, nor the manifest's codec, in
RAM (docs/firmware.md, "Sizes and heap").

The way an update goes, and why each step is where it is:

1. A 2.04 answer to a reading says ``"u": 7``: version 7 waits for this node. Only then does
   the node ask for anything (no polling), and only for a version above its own that it has
   not refused or rolled back before.
2. It fetches its signed manifest, ``GET /u/<node>/m`` block by block (RFC 7959 Block2),
   verifies the HMAC 256/256 tag with its key and checks node, class, version, .mpy ABI and
   counter (``protocols.manifest.check``). The query says what it runs and how the last
   update ended (``v=6``, ``r=8``), so the gateway can show it.
3. It clears the inactive slot of every file the manifest does not list (a stale ``.py``
   would shadow the new ``.mpy``; a half-written file of another version must go), keeps the
   files that already have the right SHA-256 (a resumed update), and downloads each other one
   into ``<name>.part``, one block appended per open/write/close: on littlefs a closed file
   is whole, so after a power cut the part holds whole blocks and the download resumes at the
   next one, even after a reboot. A full part is checked (SHA-256 read back from the flash,
   inflated first when it was served deflated) and renamed to its name.
4. With every file in place and checked, the manifest is written into the slot and ONE
   pointer file, ``/fw/trial`` ("b 0"), is written under a temporary name and renamed: the
   one step that changes what boots. Then the node resets.
5. The boot shim (firmware/boot/fwboot.py) runs the trial slot, counting boots in
   ``/fw/trial``; after ``TRIES`` boots without confirmation it goes back to ``/fw/current``
   and leaves ``/fw/rolled``. The application confirms (``/fw/current`` renamed over, then
   ``/fw/trial`` removed) only once the gateway has acknowledged its first signed reading,
   and resets itself if that has not happened within ``TRIAL_MS``.

Nothing here ever writes into the slot that runs or that ``/fw/current`` names, so a power
cut, a lost link or a crash at any instant leaves a complete version to boot: the old one, or
the new one once the pointer flipped (tests/test_ota_powercut.py proves it on a littlefs
image). The state is in ``/fw/ota.json``, in the spirit of LwM2M object 5 (Firmware Update):
``state`` idle/downloading/downloaded/updating, ``done``/``files``, and ``result``
(``confirmed``, ``rolled back: <why>``, ``refused: <why>``, ``failed: <why>``).
"""

import json

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


GET = const(1)
CONTENT = const(0x45)  # 2.05
NOT_FOUND = const(0x84)  # 4.04
ETAG = const(4)  # RFC 7252 Section 5.10.6
BLOCK2 = const(23)  # RFC 7959 Section 2.1
SZX = const(5)  # blocks of 2^(4+5) = 512 bytes: one fits a datagram and the heap budget
BLOCK = const(512)
MAX_MANIFEST = const(4096)
TRIES = const(3)  # boots a trial slot gets (fwboot.py has the same number)
TRIAL_MS = const(900000)  # a trial slot not confirmed within 15 min resets (and is counted)
RETRY_MS = const(30000)  # after a lost exchange, the download waits this long
MAX_BAD = const(3)  # a file whose hash fails this many times ends the update
CHUNK = const(256)  # bytes read at a time to hash or inflate

FW = "/fw/"
CURRENT = "/fw/current"
TRIAL = "/fw/trial"
ROLLED = "/fw/rolled"
STATE = "/fw/ota.json"
MANIFEST = "manifest.cbor"  # in a slot: the signed manifest it was installed from

# Update results as a number for the report query (LwM2M object 5, resource 5 "Update Result").
R_NONE = const(0)
R_OK = const(1)
R_INTEGRITY = const(5)
R_FAILED = const(8)
R_REFUSED = const(6)


class OsFiles:
    """The board's filesystem (littlefs) through ``os`` and ``open``, under ``root``."""

    def __init__(self, root=""):
        import os

        self.os = os
        self.root = root

    def open(self, path, mode):
        return open(self.root + path, mode)

    def size(self, path):
        """Bytes in the file, or -1 when there is none."""
        try:
            return self.os.stat(self.root + path)[6]
        except OSError:
            return -1

    def remove(self, path):
        try:  # noqa: SIM105 (MicroPython has no contextlib)
            self.os.remove(self.root + path)
        except OSError:
            pass

    def rename(self, a, b):
        self.os.rename(self.root + a, self.root + b)

    def listdir(self, path):
        try:
            return self.os.listdir(self.root + path)
        except OSError:
            return []

    def isdir(self, path):
        try:
            return self.os.stat(self.root + path)[0] & 0x4000 != 0
        except OSError:
            return False

    def mkdir(self, path):
        try:  # noqa: SIM105
            self.os.mkdir(self.root + path)
        except OSError:
            pass


def read(files, path):
    if files.size(path) < 0:
        return None
    with files.open(path, "rb") as f:
        return f.read()


def write(files, path, data):
    """Replace ``path`` in one step: a temporary file, closed, then renamed (atomic on littlefs)."""
    with files.open(path + ".tmp", "wb") as f:
        f.write(data)
    files.rename(path + ".tmp", path)


def slots(files):
    """(confirmed slot, trial slot or None): the pointer files as the boot shim reads them."""
    cur = (read(files, CURRENT) or b"").decode().strip()
    trial = (read(files, TRIAL) or b"").decode().split()
    t = trial[0] if trial and trial[0] in ("a", "b") and trial[0] != cur else None
    return cur, t


def slot_version(files, slot):
    """The application version a slot holds: its manifest's, 0 when flashed over USB.

    Read at boot; the manifest's codec it imports is not left loaded on MicroPython (unless
    something had loaded it before): its bytecode would sit in RAM for this one read
    (docs/firmware.md, "Sizes and heap"). CPython keeps it: the simulator's nodes share
    their process with the gateway, which uses the module."""
    raw = read(files, FW + slot + "/" + MANIFEST)
    if raw is None:
        return 0
    import sys

    had = "protocols.manifest" in sys.modules
    from protocols import manifest  # only a node updated over the air has one to read
    from protocols.errors import DecodeError

    try:
        version = manifest.decode(raw).version
    except DecodeError:
        version = 0
    if not had and sys.implementation.name == "micropython":
        import protocols

        del sys.modules["protocols.manifest"]
        del protocols.manifest
    return version


class Updater:
    """One node's update, driven by the node's loop (firmware/node.py): ``offered`` and
    ``acked`` from 2.04 answers, ``request`` for the next exchange, ``answer`` for its
    response. ``files`` is ``OsFiles`` on a board; ``reset()`` restarts the board."""

    def __init__(self, files, key, node, cls, abi, reset):
        self.files = files
        self.key = key
        self.node = node
        self.cls = cls
        self.abi = abi  # (major, sub) of the .mpy this MicroPython loads
        self.reset = reset
        self.buf = None  # CHUNK bytes to hash and inflate, once an update is under way
        self.st = {"state": "idle", "result": None, "seq": 0, "skip": 0, "r": R_NONE}
        try:  # noqa: SIM105
            self.st.update(json.loads((read(files, STATE) or b"{}").decode()))
        except ValueError:
            pass
        self.cur, self.trial = slots(files)
        self.running = self.trial or self.cur
        self.version = slot_version(files, self.running) if self.running else 0
        self.m = None  # the verified manifest being installed
        self.mbuf = None  # manifest blocks while they come
        self.signed = None  # the whole manifest, to decode and check at the next request
        self.etag = None
        self.want = 0  # a version offered, not yet decided on
        self.file = 0  # index of the file downloading
        self.bad = 0
        self.due = 0  # ms: no exchange before
        self.req = None  # (what, num): the request in flight
        self.told = False  # the gateway has the version (and any given up) from a signed pack
        if read(files, ROLLED) is not None:  # the shim gave the trial slot up: say so, once
            failed = slot_version(files, "b" if self.cur == "a" else "a")
            self._end("rolled back: not confirmed after %d boots" % TRIES, R_FAILED, failed)
            files.remove(ROLLED)
        elif self.trial is None and self.st["state"] in ("downloaded", "updating"):
            # Cut short: after the confirmation (the version runs) or before the switch.
            if self.version >= self.st.get("version", 1 << 30):
                self._end("confirmed", R_OK)
            else:
                self._end("failed: interrupted, offered again", R_FAILED)

    # --- from the node's loop ------------------------------------------------------------------

    def offered(self, version, now):
        """A 2.04 said ``version`` waits for this node."""
        if (
            self.m is None
            and self.trial is None
            and version > self.version
            and version != self.st["skip"]
        ):
            self.want = version

    def acked(self, now):
        """The gateway acknowledged a signed reading: a trial slot has proved itself."""
        if self.trial is None:
            return
        write(self.files, CURRENT, self.trial.encode())
        self.files.remove(TRIAL)
        self.cur, self.trial = self.trial, None
        self._end("confirmed", R_OK, self.version)

    def active(self):
        return self.want != 0 or self.m is not None

    def poll(self, now):
        """Reset a trial slot that did not get its first acknowledgement in time."""
        if self.trial is not None and now >= TRIAL_MS:
            self.reset()

    def request(self, now):
        """The next GET as (options), or None when nothing is to be asked now."""
        if not self.active() or now < self.due:
            return None
        from firmware import fetch  # the download half: loaded once a version is offered

        return fetch.request(self, now)

    def answer(self, m, now):
        """The response to ``request``'s GET: a ``coap.Message``, or an int (lost, refused)."""
        from firmware import fetch

        fetch.answer(self, m, now)

    def _end(self, result, code, version=0):
        self.m = None
        self.told = False  # say it in the next pack
        self.st["result"] = result
        self.st["r"] = code
        if code != R_OK and version:
            self.st["skip"] = version  # never tried again: the gateway must offer a newer one
        self._save("idle")

    def _save(self, state):
        st = self.st
        st["state"] = state
        st["running"] = self.version
        if self.m is not None:
            st["version"] = self.m.version
            st["done"] = self.file
            st["files"] = len(self.m)
        else:
            for k in ("version", "done", "files"):
                st.pop(k, None)
        try:  # noqa: SIM105
            write(self.files, STATE, json.dumps(st).encode())
        except OSError:  # a full flash must not stop the node; the update itself fails later
            pass
