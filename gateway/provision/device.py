"""A MicroPython board on a serial port: a thin adapter over mpremote's ``SerialTransport``.

mpremote (pinned in pyproject.toml) speaks the raw REPL and raw-paste mode for us; its library
API is young and has changed between releases, so the rest of the project only ever sees this
module: :class:`Device` opens the port, runs code, reads and writes files, and turns every
transport failure into :class:`DeviceError` (or :class:`DeviceLost` when the cable went away).

Files are moved as base64 text in chunks (one raw-paste exec per chunk) and checked with
SHA-256 computed on the board itself, by :meth:`Device.sha256`. The code they call there is
firmware/remote/helpers.py, sent once per session; the calls carry only ``repr`` of paths and
hashes, and base64 text.

Opening a port never hangs and never says only "failed to access": the port is first opened
by :func:`gateway.provision.ports.check_open` (no such port, busy, no permission: a sentence
each), then woken with Ctrl-C and Ctrl-A within :data:`ANSWER_S` seconds (:meth:`Device.wake`):
a port where nothing answers, or something that is not MicroPython's REPL, is said so in a
sentence. mpremote reads a pty with no timeout at all (a silent /dev/pts/N hung it for good),
so the serial line's reads are bounded by :data:`READ_S` whatever mpremote asks.
"""

from __future__ import annotations

import ast
import binascii
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import serial

from gateway.provision import ports
from gateway.provision.build import remote_code
from gateway.provision.extras import need

_transport = need("mpremote.transport", "flashing a node (reverbere node flash, node doctor)")
_transport_serial = need("mpremote.transport_serial", "flashing a node")
TransportError = _transport.TransportError
TransportExecError = _transport.TransportExecError
SerialTransport = _transport_serial.SerialTransport

CHUNK = 1536  # raw bytes per write exec: 2 KiB of base64, a few raw-paste windows
ANSWER_S = 3.0  # a board answers Ctrl-C within this; silence this long: nothing is there
WAKE_S = 10.0  # the raw REPL's banner must come within this (a board busy printing, booting)
READ_S = 10.0  # no single read of the serial line waits longer than this
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n>"

# Helpers kept in the board's RAM for the session (defined again after a soft reset).
_HELPERS = remote_code("helpers")


class DeviceError(Exception):
    """The board did not do what was asked; the message says what and why."""


class DeviceLost(DeviceError):
    """The serial line went away (cable pulled, board reset, port taken)."""


class NoAnswer(DeviceError):
    """Nothing answers on the port, or not MicroPython's REPL."""


@dataclass(frozen=True)
class BoardInfo:
    """What a board says about itself."""

    platform: str  # sys.platform: "esp32", "rp2"...
    machine: str  # os.uname().machine: "Generic ESP32 module with ESP32"
    version: tuple[int, int, int]  # MicroPython version
    mpy: int  # sys.implementation._mpy (bytecode version in the low byte)

    @property
    def version_text(self) -> str:
        return ".".join(str(x) for x in self.version)

    @property
    def bytecode(self) -> tuple[int, int]:
        """The .mpy version (major, sub-version) this board loads."""
        return self.mpy & 0xFF, (self.mpy >> 8) & 3


class Device:
    """One open serial connection to a MicroPython board, in its raw REPL."""

    def __init__(self, port: str, baud: int = 115200) -> None:
        self.port = port
        try:
            ports.check_open(port, baud)
        except ports.PortError as e:
            raise DeviceError(str(e)) from None
        try:
            self._t = SerialTransport(port, baudrate=baud)
        except (TransportError, serial.SerialException, OSError) as e:
            raise DeviceError(f"cannot open {port}: {e}") from None
        self._t.serial.timeout = READ_S
        self.bytes_sent = 0
        self._helpers = False

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError, serial.SerialException):
            self._t.close()

    def _call(self, fn: Callable, *args):
        try:
            return fn(*args)
        except TransportExecError as e:
            raise DeviceError(_last_line(e.error_output)) from None
        except TransportError as e:
            raise DeviceError(
                f"the board on {self.port} stopped answering as MicroPython does ({e}): press "
                f"its reset button and try again"
            ) from None
        except (serial.SerialException, OSError) as e:
            raise DeviceLost(f"lost the connection to {self.port}: {e}") from None

    def wake(self) -> None:
        """Interrupt what runs (Ctrl-C) and ask for the raw REPL (Ctrl-A) until its banner.

        Raises :class:`NoAnswer` with a sentence when nothing at all comes back within
        :data:`ANSWER_S` seconds, or something that is not the banner within :data:`WAKE_S`
        (an echo, another program's output, a board stuck printing).
        """
        ser = self._t.serial
        heard = b""
        start = time.monotonic()
        ser.timeout = 0.1
        try:
            ser.write(b"\r\x03\x03\r\x01")
            poked = start
            while not heard.endswith(RAW_BANNER):
                now = time.monotonic()
                # Only our own control bytes back (a loopback, a modem echoing) is no answer.
                if not heard.strip(b"\r\x01\x03") and now - start > ANSWER_S:
                    echo = " (only an echo of what was sent)" if heard else ""
                    raise NoAnswer(
                        f"nothing answers on {self.port}{echo}: is it a MicroPython board? "
                        f"press its reset button (or unplug and replug it) and try again"
                    )
                if now - start > WAKE_S:
                    said = "".join(
                        c for c in heard[-200:].decode("ascii", "replace") if c.isprintable()
                    ).strip()[-60:]
                    raise NoAnswer(
                        f"{self.port} answers, but not as MicroPython does (it said {said!r}): "
                        f"is it a MicroPython board? press its reset button and try again"
                    )
                if now - poked > 1.0:  # a board busy at boot: ask again
                    ser.write(b"\r\x03\r\x01")
                    poked = now
                heard += ser.read(max(1, min(ser.in_waiting, 4096)))
        except (serial.SerialException, OSError) as e:
            raise DeviceLost(f"lost the connection to {self.port}: {e}") from None
        finally:
            with contextlib.suppress(serial.SerialException, OSError):
                ser.timeout = READ_S

    def enter_raw(self, soft_reset: bool = True) -> None:
        """Interrupt what runs and enter the raw REPL (after a soft reset: clean RAM)."""
        self.wake()
        self._call(self._t.enter_raw_repl, soft_reset)
        self._helpers = False

    def exec(self, code: str) -> str:
        """Run ``code``; return what it printed; raise DeviceError with its exception."""
        self.bytes_sent += len(code) + 8
        out = self._call(self._t.exec, code)
        return out.decode("utf-8", "replace")

    def eval(self, expr: str) -> Any:
        return ast.literal_eval(self.exec(f"print(repr({expr}))").strip())

    def _need_helpers(self) -> None:
        if not self._helpers:
            self.exec(_HELPERS)
            self._helpers = True

    def info(self) -> BoardInfo:
        self._need_helpers()
        got = self.eval("_rb_info()")
        return BoardInfo(got[0], got[1], tuple(got[2]), got[3])

    def sha256(self, paths: Iterable[str]) -> dict[str, str | None]:
        """SHA-256 (hex) of each file, computed on the board; None when it does not exist."""
        paths = list(paths)
        if not paths:
            return {}
        self._need_helpers()
        got = self.eval(f"[_rb_sha(p) for p in {paths!r}]")
        return dict(zip(paths, got, strict=True))

    def walk(self, directory: str) -> list[str]:
        """Every file under ``directory``, as paths relative to it."""
        self._need_helpers()
        return self.eval(f"_rb_walk({directory!r})")

    def read(self, path: str) -> bytes | None:
        """A small file's content, or None when it does not exist."""
        self._need_helpers()
        return self.eval(f"_rb_read({path!r})")

    def write(self, path: str, data: bytes, progress: Callable[[int], None] | None = None) -> None:
        """Write ``data`` to ``path`` (which is overwritten), in base64 chunks.

        The first exec also makes the parent directories and opens the file, the last one
        closes it: a small file costs one round trip.
        """
        self._need_helpers()
        parent = path.rsplit("/", 1)[0]
        head = f"_rb_mkdirs({parent!r})\n" if parent else ""
        head += f"_rb_f = open({path!r}, 'wb')\n"
        chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
        try:
            for n, chunk in enumerate(chunks):
                b64 = binascii.b2a_base64(chunk, newline=False).decode()
                code = head + f"_rb_f.write(binascii.a2b_base64('{b64}'))"
                if n == len(chunks) - 1:
                    code += "\n_rb_f.close()"
                self.exec(code)
                head = ""
                if progress:
                    progress(len(chunk))
        except DeviceLost:
            raise
        except DeviceError:
            self.exec("_rb_f.close()")
            raise

    def commit(self, tmp: str, path: str, sha256_hex: str) -> bool:
        """Rename ``tmp`` to ``path`` if its SHA-256, computed on the board, is the one given."""
        self._need_helpers()
        return self.eval(f"_rb_commit({tmp!r}, {path!r}, {sha256_hex!r})")

    def copy(self, src: str, dst: str) -> None:
        """Copy a file on the board (no bytes cross the serial line)."""
        self._need_helpers()
        parent = dst.rsplit("/", 1)[0]
        self.exec(f"_rb_mkdirs({parent!r})\n_rb_cp({src!r}, {dst!r})")

    def rename(self, src: str, dst: str) -> None:
        """Atomic on littlefs: the destination is replaced in one step."""
        self.exec(f"import os\nos.rename({src!r}, {dst!r})")

    def remove(self, path: str) -> None:
        """Remove a file or a directory tree; nothing if it does not exist."""
        self._need_helpers()
        self.exec(f"_rb_rm({path!r})")

    def reset_and_listen(self, until: Callable[[str | None], bool], timeout: float) -> list[str]:
        """Soft-reset into ``main.py`` (friendly REPL, Ctrl-D) and read console lines.

        ``until`` is called with each line, and with None about every 0.1 s of silence;
        returns the lines read when it says True or after ``timeout`` seconds.
        """
        lines: list[str] = []
        buf = b""
        ser = self._t.serial
        try:
            ser.write(b"\r\x02")  # Ctrl-B: leave the raw REPL for the friendly one
            self._t.read_until(1, b">>> ", timeout=2)
            ser.write(b"\x04")  # Ctrl-D: soft reset, run main.py
            deadline = time.monotonic() + timeout
            ser.timeout = 0.1
            while time.monotonic() < deadline:
                data = ser.read(256)
                buf += data
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    lines.append(line)
                    if until(line):
                        return lines
                if not data and until(None):
                    return lines
        except (serial.SerialException, OSError) as e:
            raise DeviceLost(f"lost the connection to {self.port}: {e}") from None
        return lines


def _last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1] if lines else "error on the board"
