# Run on a board over the raw REPL by gateway/provision/device.py at the start of a session:
# the functions the flash tool and `reverbere node doctor` call there. They stay in the board's
# RAM until a soft reset. Sent without comment lines, blank lines and most indentation, so
# no comment may sit inside a string here.
import binascii
import hashlib
import os


def _rb_info():
    import sys

    impl = sys.implementation
    return (sys.platform, os.uname().machine, tuple(impl.version[:3]), getattr(impl, "_mpy", 0))


def _rb_sha(p):
    try:
        h = hashlib.sha256()
        b = bytearray(512)
        m = memoryview(b)
        with open(p, "rb") as f:
            while True:
                n = f.readinto(b)
                if not n:
                    break
                h.update(m[:n])
        return binascii.hexlify(h.digest()).decode()
    except OSError:
        return None


def _rb_walk(d, pre=""):
    out = []
    try:
        entries = list(os.ilistdir(d))
    except OSError:
        return out
    for e in entries:
        if e[1] & 0x4000:
            out += _rb_walk(d + "/" + e[0], pre + e[0] + "/")
        else:
            out.append(pre + e[0])
    return out


def _rb_mkdirs(p):
    d = ""
    for part in p.strip("/").split("/"):
        d += "/" + part
        try:
            os.stat(d)
        except OSError:
            os.mkdir(d)


def _rb_rm(p):
    try:
        if os.stat(p)[0] & 0x4000:
            for e in list(os.ilistdir(p)):
                _rb_rm(p + "/" + e[0])
            os.rmdir(p)
        else:
            os.remove(p)
    except OSError:
        pass


def _rb_commit(tmp, p, want):
    if _rb_sha(tmp) != want:
        return False
    os.rename(tmp, p)
    return True


def _rb_read(p):
    try:
        with open(p, "rb") as f:
            return f.read()
    except OSError:
        return None


def _rb_cp(a, b):
    with open(a, "rb") as s, open(b, "wb") as d:
        buf = bytearray(512)
        while True:
            n = s.readinto(buf)
            if not n:
                break
            d.write(memoryview(buf)[:n])
