"""Firmware updates over the air, the node's side (issue 17; docs/ota.md).

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

import hashlib
import json

from protocols import coap, manifest
from protocols.const import URI_PATH, URI_QUERY
from protocols.errors import DecodeError

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


def sha256(files, path, buf):
    h = hashlib.sha256()
    with files.open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(buf[:n] if n < len(buf) else buf)
    return h.digest()


def inflate(files, src, dst, buf):
    """Inflate the zlib stream in ``src`` into ``dst`` with MicroPython's ``deflate`` (its
    window as the stream's header says: the gateway compresses with 1 KB; a 32 KB one would
    not fit the heap); zlib on CPython. A full ``buf`` is written as it is: a slice per step
    was 5.7 KB of garbage for a 5 KB file (docs/ota.md, "Memory and size")."""
    with files.open(src, "rb") as fin, files.open(dst, "wb") as fout:
        try:
            import deflate

            d = deflate.DeflateIO(fin, deflate.ZLIB)
            while True:
                n = d.readinto(buf)
                if not n:
                    break
                fout.write(buf if n == len(buf) else buf[:n])
        except ImportError:
            import zlib

            z = zlib.decompressobj()
            while True:
                n = fin.readinto(buf)
                if not n:
                    break
                fout.write(z.decompress(buf[:n]))
            fout.write(z.flush())


def _walk(files, path, out, prefix=""):
    for name in files.listdir(path):
        if files.isdir(path + "/" + name):
            _walk(files, path + "/" + name, out, prefix + name + "/")
        else:
            out.append(prefix + name)
    return out


def slots(files):
    """(confirmed slot, trial slot or None): the pointer files as the boot shim reads them."""
    cur = (read(files, CURRENT) or b"").decode().strip()
    trial = (read(files, TRIAL) or b"").decode().split()
    t = trial[0] if trial and trial[0] in ("a", "b") and trial[0] != cur else None
    return cur, t


def slot_version(files, slot):
    """The application version a slot holds: its manifest's, 0 when flashed over USB."""
    raw = read(files, FW + slot + "/" + MANIFEST)
    if raw is None:
        return 0
    try:
        return manifest.decode(raw).version
    except DecodeError:
        return 0


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
        self.buf = bytearray(CHUNK)
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
        if self.signed is not None:  # not with the last block: what that held is garbage now
            self._take()
            if not self.active():  # refused (or every file was in place already)
                return None
        if self.m is None:
            num = 0 if self.mbuf is None else len(self.mbuf) // BLOCK
            self.req = ("m", num)
            opts = [
                (URI_PATH, manifest.UPDATE_PATH.encode()),
                (URI_PATH, self.node.encode()),
                (URI_PATH, b"m"),
                (URI_QUERY, ("v=%d" % self.version).encode()),
                (URI_QUERY, ("r=%d" % self.st["r"]).encode()),
            ]
        else:
            while True:  # a part that is whole already (a cut before its rename): check it
                _, size, _, zsize = self.m.file(self.file)
                have = self.files.size(self._part())
                if have < 0 or (have < (zsize or size) and have % BLOCK == 0):
                    break
                self._finish_file()
                if self.m is None:
                    return None
            num = max(0, have) // BLOCK
            self.req = ("f", num)
            opts = [
                (URI_PATH, manifest.UPDATE_PATH.encode()),
                (URI_PATH, b"f"),
                (URI_PATH, _hex(self.m.file(self.file)[2])),
            ]
        opts.append((BLOCK2, coap.uint_option((self.req[1] << 4) | SZX)))
        return opts

    def answer(self, m, now):
        """The response to ``request``'s GET: a ``coap.Message``, or an int (lost, refused)."""
        what, num = self.req
        self.req = None
        if isinstance(m, int):  # the link failed: resume later where it stopped
            self.due = now + RETRY_MS
            return
        if m.code == NOT_FOUND and what == "m":  # withdrawn at the gateway
            self.want = 0
            self.mbuf = None
            return
        b = m.option(BLOCK2)
        if m.code != CONTENT or b is None or coap.option_uint(b) >> 4 != num:
            self.due = now + RETRY_MS
            return
        more = coap.option_uint(b) & 8
        if what == "m":
            self._manifest_block(m, num, more)
        else:
            self._file_block(m.payload, more)

    # --- the manifest --------------------------------------------------------------------------

    def _manifest_block(self, m, num, more):
        etag = m.option(ETAG)
        if num == 0:
            self.mbuf = bytearray()
            self.etag = etag
        elif etag != self.etag:  # the manifest changed at the gateway: start again
            self.mbuf = None
            return
        self.mbuf.extend(m.payload)
        if len(self.mbuf) > MAX_MANIFEST:
            self._refuse("manifest too large")
        elif not more:  # decoded at the next request, not with the block still held
            self.signed = self.mbuf
            self.mbuf = None

    def _take(self):
        """Decode, verify and check the whole manifest, then make the slot ready for it.

        The update's heaviest step (docs/ota.md, "Memory and size"), so it runs at the next
        request rather than with the last block: the collector can run between the two. The
        manifest decodes in place (``protocols.manifest``): it keeps the received bytes,
        which go into the slot as they are."""
        raw = self.signed
        self.signed = None
        try:
            mf = manifest.decode(raw)
        except DecodeError as e:
            return self._refuse(str(e))
        if not mf.verify(self.key):
            return self._refuse("bad signature")
        why = manifest.check(mf, self.node, self.cls, self.version, self.abi, self.st["seq"])
        if why:
            return self._refuse(why, mf.version)
        self.want = 0
        self.m = mf
        self.st["seq"] = mf.seq
        self.slot = "b" if self.running == "a" else "a"
        self._prepare()

    def _prepare(self):
        """Clear the inactive slot of what the manifest does not list; skip what is there.

        Each folder is made once (a mkdir that finds it there raises, and an exception is
        heap: 10 KB for 17 files made so)."""
        base = FW + self.slot
        self.files.mkdir(FW[:-1])
        self.files.mkdir(base)
        listed = {}
        last = ""
        for i in range(len(self.m)):
            name = self.m.name(i)
            listed[name] = None
            d = name[: name.rfind("/") + 1]  # its folder: "firmware/", or "" at the top
            if d and d != last:
                last = d
                j = d.find("/")
                while j > 0:
                    self.files.mkdir(base + "/" + d[:j])
                    j = d.find("/", j + 1)
        for name in _walk(self.files, base, []):
            # A part of this version's file stays: its download resumes.
            if name not in listed and not (name[-5:] == ".part" and name[:-5] in listed):
                self.files.remove(base + "/" + name)
        self.file = 0
        self._skip_done()
        self._save("downloading")

    def _skip_done(self):
        files = self.files
        while self.file < len(self.m):
            name, size, digest, _ = self.m.file(self.file)
            path = FW + self.slot + "/" + name
            if files.size(path) != size or sha256(files, path, self.buf) != digest:
                files.remove(path)
                return
            self.file += 1
        self._install()

    # --- the files -----------------------------------------------------------------------------

    def _part(self):
        return FW + self.slot + "/" + self.m.name(self.file) + ".part"

    def _file_block(self, data, more):
        _, size, _, zsize = self.m.file(self.file)
        part = self._part()
        with self.files.open(part, "ab") as f:  # one block per close: whole blocks survive
            f.write(data)
        if more and self.files.size(part) < (zsize or size):
            return
        self._finish_file()

    def _finish_file(self):
        """The part is whole: inflate it if need be, check its SHA-256, give it its name."""
        name, size, digest, zsize = self.m.file(self.file)
        part = self._part()
        path = FW + self.slot + "/" + name
        if zsize:
            inflate(self.files, part, path + ".new", self.buf)
            check = path + ".new"
        else:
            check = part
        if self.files.size(check) == size and sha256(self.files, check, self.buf) == digest:
            self.files.rename(check, path)
            self.files.remove(part)
            self.file += 1
            self.bad = 0
            self._save("downloading")
            self._skip_done()
            return
        self.files.remove(part)
        self.files.remove(path + ".new")
        self.bad += 1
        if self.bad >= MAX_BAD:
            self._end("failed: %s does not match its SHA-256" % name, R_INTEGRITY, self.m.version)

    def _install(self):
        """Every file checked: the manifest into the slot, then the one pointer flip."""
        write(self.files, FW + self.slot + "/" + MANIFEST, self.m.raw)
        self._save("downloaded")
        write(self.files, TRIAL, ("%s 0" % self.slot).encode())  # the switch
        self._save("updating")
        self.m = None
        self.reset()

    # --- the record ----------------------------------------------------------------------------

    def _refuse(self, why, version=0):
        self.mbuf = None
        self.signed = None
        self.want = 0
        self._end("refused: " + why, R_REFUSED, version)

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


def _hex(b):
    return ("%02x" * len(b) % tuple(b)).encode()
