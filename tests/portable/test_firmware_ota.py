"""firmware/ota.py and protocols/manifest.py: the node's side of an update, on CPython and,
through tests/test_micropython.py, inside a real MicroPython.

The files are in memory (``MemFiles``: a file written is whole only once closed, as on
littlefs) and the gateway is made of the protocols/ codecs (``Server``: the blocks cut from
the bytes on each request, as gateway/ota/resource.py does). tests/test_ota.py runs the same
code against the real gateway, tests/test_ota_powercut.py on a littlefs image.
"""

import hashlib
import io

from firmware import fetch, ota
from protocols import coap, manifest
from protocols.errors import DecodeError

KEY = bytes(range(32))
NODE = "lamp-1"
CLS = "esp32"
ABI = (6, 3)


class _File:
    """A file open for writing: its bytes reach the dict when it is closed."""

    def __init__(self, files, path, mode):
        self.files = files
        self.path = path
        self.buf = bytearray(files.d.get(path, b"")) if "a" in mode else bytearray()

    def write(self, b):
        self.buf.extend(b)
        return len(b)

    def close(self):  # whole on close, like littlefs
        self.files.d[self.path] = bytes(self.buf)
        self.files.writes += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class MemFiles:
    """A filesystem in a dict, with ``firmware.ota.OsFiles``'s methods."""

    def __init__(self):
        self.d = {}
        self.dirs = set()
        self.writes = 0

    def open(self, path, mode):
        if "r" in mode:
            if path not in self.d:
                raise OSError(2)
            # a native stream, as a board's file is: MicroPython's deflate reads only those
            return io.BytesIO(self.d[path])
        return _File(self, path, mode)

    def size(self, path):
        return len(self.d[path]) if path in self.d else -1

    def remove(self, path):
        self.d.pop(path, None)

    def rename(self, a, b):
        self.d[b] = self.d.pop(a)

    def listdir(self, path):
        out = set()
        for p in list(self.d) + list(self.dirs):
            if p.startswith(path + "/"):
                out.add(p[len(path) + 1 :].split("/")[0])
        return sorted(out)

    def isdir(self, path):
        return path in self.dirs or any(p.startswith(path + "/") for p in self.d)

    def mkdir(self, path):
        self.dirs.add(path)


def app(version, n=3):
    """A version's files: ``n`` modules, one larger than a few blocks."""
    files = []
    for i in range(n):
        body = ("# v%d module %d\n" % (version, i)).encode() * (1 + 60 * i)
        files.append(("firmware/m%d.mpy" % i, body))
    return files


def signed(version, files, seq=1, key=KEY, node=NODE, cls=CLS, abi=ABI):
    entries = [(p, len(d), hashlib.sha256(d).digest(), 0) for p, d in files]
    return manifest.sign(key, node, seq, manifest.encode(node, cls, version, abi, entries))


class Server:
    """GET /u/<node>/m and /u/f/<hex>, Block2, from ``protocols`` only; counts requests."""

    def __init__(self, raw, files):
        self.raw = raw
        self.blobs = {}
        for _, data in files:
            self.blobs[fetch._hex(hashlib.sha256(data).digest()).decode()] = data
        self.asked = []
        self.queries = []

    def __call__(self, opts):
        path = [v.decode() for n, v in opts if n == 11]
        self.queries += [v.decode() for n, v in opts if n == 15]
        b2 = coap.option_uint(next(v for n, v in opts if n == ota.BLOCK2))
        num, size = b2 >> 4, 1 << ((b2 & 7) + 4)
        data = self.raw if path[-1] == "m" else self.blobs.get(path[-1])
        self.asked.append((path[-1][:8], num))
        if data is None:
            return coap.Message(2, ota.NOT_FOUND, 1)
        more = 8 if (num + 1) * size < len(data) else 0
        m = coap.Message(2, ota.CONTENT, 1, b"", [], data[num * size : (num + 1) * size])
        m.options.append((ota.ETAG, hashlib.sha256(data).digest()[:8]))
        m.options.append((ota.BLOCK2, coap.uint_option((num << 4) | more | (b2 & 7))))
        return m


def flashed(version=1):
    """A node's files as the flash tool leaves them, with ``version`` in slot a."""
    fs = MemFiles()
    fs.d["/fw/current"] = b"a"
    for p, d in app(version):
        fs.d["/fw/a/" + p] = d
    if version:
        fs.d["/fw/a/manifest.cbor"] = signed(version, app(version))
    return fs


def updater(fs, resets=None):
    """The node's updater; each reset it asks for is appended to ``resets``."""
    resets = resets if resets is not None else []
    return ota.Updater(fs, KEY, NODE, CLS, ABI, lambda: resets.append(1))


def drive(up, server, now=0, lose=()):
    """Run the exchanges until the updater asks nothing; ``lose``: request numbers that get
    no answer (the link lost them)."""
    for i in range(2000):
        opts = up.request(now)
        if opts is None:
            return i
        up.answer(-1 if i in lose else server(opts), now)  # -1: the link's FAILED
        now += ota.RETRY_MS if i in lose else 0
    raise AssertionError("the update does not end")


def test_a_manifest_says_what_was_signed_and_verifies_with_the_node_key_only():
    m = manifest.decode(signed(7, app(7), seq=4))
    assert (m.node, m.cls, m.version, m.abi, m.seq) == (NODE, CLS, 7, ABI, 4)
    assert [f[0] for f in m.files] == ["firmware/m0.mpy", "firmware/m1.mpy", "firmware/m2.mpy"]
    assert len(m.tag) == 32  # HMAC 256/256: the full tag
    assert m.verify(KEY)
    assert not m.verify(bytes(32))


def test_a_reading_signature_is_no_manifest_and_a_path_out_of_the_slot_is_refused():
    from protocols import cose

    try:
        manifest.decode(cose.sign(KEY, b"lamp-1", 1, b"\xa0"))  # alg 4, 8-byte tag
        raise AssertionError("a reading's COSE_Mac0 was taken for a manifest")
    except DecodeError:
        pass
    for name in ("../main.py", "/fwboot.py", "firmware/.hidden", "a//b"):
        entries = [(name, 1, bytes(32), 0)]
        raw = manifest.sign(KEY, NODE, 1, manifest.encode(NODE, CLS, 2, ABI, entries))
        try:
            manifest.decode(raw)
            raise AssertionError(name)
        except DecodeError:
            pass


def test_a_node_refuses_another_node_class_abi_an_older_version_or_a_replayed_counter():
    def why(**kw):
        args = {"node": NODE, "cls": CLS, "version": 6, "abi": ABI, "last_seq": 3}
        args.update(kw)
        return manifest.check(manifest.decode(signed(7, app(7), seq=3)), **args)

    assert why() is None
    assert why(last_seq=4) == "replayed manifest"
    assert why(version=7) == "version 7 not above 7"
    assert why(node="lamp-2") == "another node's"
    assert why(cls="rp2") == "for class esp32"
    assert why(abi=(5, 3)) == "needs .mpy 6.3"
    assert why(abi=(6, 2)) == "needs .mpy 6.3"  # 1.22 loads 6.2 only
    assert why(abi=(6, 4)) is None  # a newer sub-version loads older files


def test_an_update_downloads_into_the_other_slot_then_flips_one_pointer_and_resets():
    fs = flashed(1)
    old = dict(fs.d)
    fs.d["/fw/b/firmware/stale.py"] = b"print('old')"  # would shadow a new .mpy
    resets = []
    up = updater(fs, resets)
    assert up.version == 1 and up.running == "a"
    up.offered(2, 0)
    server = Server(signed(2, app(2)), app(2))
    drive(up, server)
    assert len(resets) == 1
    assert fs.d["/fw/trial"] == b"b 0" and fs.d["/fw/current"] == b"a"
    for p, d in app(2):
        assert fs.d["/fw/b/" + p] == d
    assert sorted(k for k in fs.d if k.startswith("/fw/b/")) == sorted(
        ["/fw/b/" + p for p, _ in app(2)] + ["/fw/b/manifest.cbor"]
    )
    for k, v in old.items():  # the running slot untouched
        if k.startswith("/fw/a/"):
            assert fs.d[k] == v
    assert server.queries[:2] == ["v=1", "r=0"]


def test_a_lost_link_resumes_at_the_block_it_stopped_and_a_reboot_too():
    fs = flashed(1)
    server = Server(signed(2, app(2)), app(2))
    up = updater(fs)
    up.offered(2, 0)
    drive(up, server, lose=(3, 4, 9))
    assert fs.d["/fw/trial"] == b"b 0"
    plain = Server(signed(2, app(2)), app(2))
    drive_fresh = updater(flashed(1))
    drive_fresh.offered(2, 0)
    drive(drive_fresh, plain)
    assert len(server.asked) == len(plain.asked)  # no block asked twice: lost ones only retried

    # A reboot in the middle: the parts on flash are kept, the next updater goes on from them.
    fs = flashed(1)
    up = updater(fs)
    up.offered(2, 0)
    for _ in range(6):
        up.answer(server(up.request(0)), 0)
    before = len(server.asked)
    up = updater(fs)  # after a reset: state from the flash only
    assert up.st["state"] == "downloading"
    up.offered(2, 0)
    drive(up, server)
    assert fs.d["/fw/trial"] == b"b 0"
    blocks = [a for a in server.asked[before:] if a[0] != "m"]
    assert ("m", 0) in server.asked[before:] and len(blocks) < len(
        [a for a in plain.asked if a[0] != "m"]
    )


def test_a_forged_or_unsuitable_manifest_is_refused_and_recorded_and_not_asked_again():
    for raw, result in (
        (signed(2, app(2), key=bytes(32)), "refused: bad signature"),
        (signed(2, app(2), abi=(7, 0)), "refused: needs .mpy 7.0"),
        (signed(2, app(2), node="lamp-9"), "refused: another node's"),
    ):
        fs = flashed(1)
        up = updater(fs)
        up.offered(2, 0)
        drive(up, Server(raw, app(2)))
        assert up.st["result"] == result, up.st
        assert "/fw/trial" not in fs.d and not any(k.startswith("/fw/b/") for k in fs.d)
    up.offered(2, 0)  # the same version again: nothing asked
    assert up.request(0) is None or up.st["skip"] != 2


def test_a_file_that_does_not_match_its_hash_ends_the_update_without_a_switch():
    fs = flashed(1)
    files = app(2)
    bad = [(p, d if i else d[:-1] + b"X") for i, (p, d) in enumerate(files)]
    up = updater(fs)
    up.offered(2, 0)
    server = Server(signed(2, files), files)
    server.blobs = Server(signed(2, files), bad).blobs  # served under the right hash, wrong
    server.blobs[fetch._hex(hashlib.sha256(files[0][1]).digest()).decode()] = bad[0][1]
    drive(up, server)
    assert up.st["result"].startswith("failed: firmware/m0.mpy does not match its SHA-256")
    assert "/fw/trial" not in fs.d and fs.d["/fw/current"] == b"a"


def test_the_trial_slot_is_confirmed_by_the_first_acknowledged_reading():
    fs = flashed(1)
    up = updater(fs)
    up.offered(2, 0)
    drive(up, Server(signed(2, app(2)), app(2)))
    fs.d["/fw/trial"] = b"b 1"  # the shim booted it once
    resets = []
    up = updater(fs, resets)
    assert (up.running, up.version, up.trial) == ("b", 2, "b")
    up.offered(3, 0)  # no update on top of an unconfirmed one
    assert up.request(0) is None
    up.poll(ota.TRIAL_MS - 1)
    assert resets == []
    up.acked(1000)
    assert fs.d["/fw/current"] == b"b" and "/fw/trial" not in fs.d
    assert up.st["result"] == "confirmed" and up.st["state"] == "idle"


def test_a_trial_that_is_never_acknowledged_resets_and_the_rollback_is_reported():
    fs = flashed(1)
    up = updater(fs)
    up.offered(2, 0)
    drive(up, Server(signed(2, app(2)), app(2)))
    fs.d["/fw/trial"] = b"b 1"
    resets = []
    up = updater(fs, resets)
    up.poll(ota.TRIAL_MS)
    assert resets  # the board resets; the shim counts the boot
    del fs.d["/fw/trial"]  # what fwboot.choose does after TRIES boots (tests/test_ota.py)
    fs.d["/fw/rolled"] = b"b"
    up = updater(fs)
    assert (up.running, up.version) == ("a", 1)
    assert up.st["result"] == "rolled back: not confirmed after 3 boots"
    assert up.st["skip"] == 2 and up.st["r"] == ota.R_FAILED and "/fw/rolled" not in fs.d
    up.offered(2, 0)
    assert up.request(0) is None  # that version is not tried again
    up.offered(3, 0)
    assert up.request(0) is not None  # a newer one is
