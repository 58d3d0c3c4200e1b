"""Firmware updates over the air, the download half (issue 17; firmware/ota.py says the way an
update goes, docs/ota.md why).

``Updater.request`` and ``Updater.answer`` (firmware/ota.py) import this module only when a
version is offered: a node that is not updating never loads it, nor ``protocols.manifest``,
so their bytecode does not sit in its RAM (docs/firmware.md, "Sizes and heap"). Plain
functions over the ``Updater``: the manifest's blocks, its decoding and check, the slot
cleared, each file downloaded, checked and renamed, then the pointer flipped.
"""

import hashlib

from firmware.ota import (
    BLOCK,
    BLOCK2,
    CHUNK,
    CONTENT,
    ETAG,
    FW,
    MANIFEST,
    MAX_BAD,
    MAX_MANIFEST,
    NOT_FOUND,
    R_INTEGRITY,
    R_REFUSED,
    RETRY_MS,
    SZX,
    TRIAL,
    write,
)
from protocols import coap, manifest
from protocols.const import URI_PATH, URI_QUERY
from protocols.errors import DecodeError


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


def request(up, now):
    """``Updater.request`` once an update is under way."""
    if up.buf is None:
        up.buf = bytearray(CHUNK)
    if up.signed is not None:  # not with the last block: what that held is garbage now
        _take(up)
        if not up.active():  # refused (or every file was in place already)
            return None
    if up.m is None:
        num = 0 if up.mbuf is None else len(up.mbuf) // BLOCK
        up.req = ("m", num)
        opts = [
            (URI_PATH, manifest.UPDATE_PATH.encode()),
            (URI_PATH, up.node.encode()),
            (URI_PATH, b"m"),
            (URI_QUERY, ("v=%d" % up.version).encode()),
            (URI_QUERY, ("r=%d" % up.st["r"]).encode()),
        ]
    else:
        while True:  # a part that is whole already (a cut before its rename): check it
            _, size, _, zsize = up.m.file(up.file)
            have = up.files.size(_part(up))
            if have < 0 or (have < (zsize or size) and have % BLOCK == 0):
                break
            _finish_file(up)
            if up.m is None:
                return None
        num = max(0, have) // BLOCK
        up.req = ("f", num)
        opts = [
            (URI_PATH, manifest.UPDATE_PATH.encode()),
            (URI_PATH, b"f"),
            (URI_PATH, _hex(up.m.file(up.file)[2])),
        ]
    opts.append((BLOCK2, coap.uint_option((up.req[1] << 4) | SZX)))
    return opts


def answer(up, m, now):
    """``Updater.answer``: what the node does with the response to its GET."""
    what, num = up.req
    up.req = None
    if isinstance(m, int):  # the link failed: resume later where it stopped
        up.due = now + RETRY_MS
        return
    if m.code == NOT_FOUND and what == "m":  # withdrawn at the gateway
        up.want = 0
        up.mbuf = None
        return
    b = m.option(BLOCK2)
    if m.code != CONTENT or b is None or coap.option_uint(b) >> 4 != num:
        up.due = now + RETRY_MS
        return
    more = coap.option_uint(b) & 8
    if what == "m":
        _manifest_block(up, m, num, more)
    else:
        _file_block(up, m.payload, more)


# --- the manifest --------------------------------------------------------------------------


def _manifest_block(up, m, num, more):
    etag = m.option(ETAG)
    if num == 0:
        up.mbuf = bytearray()
        up.etag = etag
    elif etag != up.etag:  # the manifest changed at the gateway: start again
        up.mbuf = None
        return
    up.mbuf.extend(m.payload)
    if len(up.mbuf) > MAX_MANIFEST:
        _refuse(up, "manifest too large")
    elif not more:  # decoded at the next request, not with the block still held
        up.signed = up.mbuf
        up.mbuf = None


def _take(up):
    """Decode, verify and check the whole manifest, then make the slot ready for it.

    The update's heaviest step (docs/ota.md, "Memory and size"), so it runs at the next
    request rather than with the last block: the collector can run between the two. The
    manifest decodes in place (``protocols.manifest``): it keeps the received bytes,
    which go into the slot as they are."""
    raw = up.signed
    up.signed = None
    try:
        mf = manifest.decode(raw)
    except DecodeError as e:
        return _refuse(up, str(e))
    if not mf.verify(up.key):
        return _refuse(up, "bad signature")
    why = manifest.check(mf, up.node, up.cls, up.version, up.abi, up.st["seq"])
    if why:
        return _refuse(up, why, mf.version)
    up.want = 0
    up.m = mf
    up.st["seq"] = mf.seq
    up.slot = "b" if up.running == "a" else "a"
    _prepare(up)


def _prepare(up):
    """Clear the inactive slot of what the manifest does not list; skip what is there.

    Each folder is made once (a mkdir that finds it there raises, and an exception is
    heap: 10 KB for 17 files made so)."""
    base = FW + up.slot
    up.files.mkdir(FW[:-1])
    up.files.mkdir(base)
    listed = {}
    last = ""
    for i in range(len(up.m)):
        name = up.m.name(i)
        listed[name] = None
        d = name[: name.rfind("/") + 1]  # its folder: "firmware/", or "" at the top
        if d and d != last:
            last = d
            j = d.find("/")
            while j > 0:
                up.files.mkdir(base + "/" + d[:j])
                j = d.find("/", j + 1)
    for name in _walk(up.files, base, []):
        # A part of this version's file stays: its download resumes.
        if name not in listed and not (name[-5:] == ".part" and name[:-5] in listed):
            up.files.remove(base + "/" + name)
    up.file = 0
    _skip_done(up)
    up._save("downloading")


def _skip_done(up):
    files = up.files
    while up.file < len(up.m):
        name, size, digest, _ = up.m.file(up.file)
        path = FW + up.slot + "/" + name
        if files.size(path) != size or sha256(files, path, up.buf) != digest:
            files.remove(path)
            return
        up.file += 1
    _install(up)


# --- the files -----------------------------------------------------------------------------


def _part(up):
    return FW + up.slot + "/" + up.m.name(up.file) + ".part"


def _file_block(up, data, more):
    _, size, _, zsize = up.m.file(up.file)
    part = _part(up)
    with up.files.open(part, "ab") as f:  # one block per close: whole blocks survive
        f.write(data)
    if more and up.files.size(part) < (zsize or size):
        return
    _finish_file(up)


def _finish_file(up):
    """The part is whole: inflate it if need be, check its SHA-256, give it its name."""
    name, size, digest, zsize = up.m.file(up.file)
    part = _part(up)
    path = FW + up.slot + "/" + name
    if zsize:
        inflate(up.files, part, path + ".new", up.buf)
        check = path + ".new"
    else:
        check = part
    if up.files.size(check) == size and sha256(up.files, check, up.buf) == digest:
        up.files.rename(check, path)
        up.files.remove(part)
        up.file += 1
        up.bad = 0
        up._save("downloading")
        _skip_done(up)
        return
    up.files.remove(part)
    up.files.remove(path + ".new")
    up.bad += 1
    if up.bad >= MAX_BAD:
        up._end("failed: %s does not match its SHA-256" % name, R_INTEGRITY, up.m.version)


def _install(up):
    """Every file checked: the manifest into the slot, then the one pointer flip."""
    write(up.files, FW + up.slot + "/" + MANIFEST, up.m.raw)
    up._save("downloaded")
    write(up.files, TRIAL, ("%s 0" % up.slot).encode())  # the switch
    up._save("updating")
    up.m = None
    up.reset()


# --- the record ----------------------------------------------------------------------------


def _refuse(up, why, version=0):
    up.mbuf = None
    up.signed = None
    up.want = 0
    up._end("refused: " + why, R_REFUSED, version)


def _hex(b):
    return ("%02x" * len(b) % tuple(b)).encode()
