"""The virtual board's serial line: a pseudo-terminal speaking MicroPython's REPL protocols.

What the host sees on the pty is what a MicroPython board sends over USB serial:

- the friendly REPL (``>>>``, echo, Ctrl-D soft reset that runs ``main.py``);
- the raw REPL (Ctrl-A enters, Ctrl-B leaves, Ctrl-C clears, Ctrl-D runs the code received
  and answers ``OK``, then stdout, ``\\x04``, the traceback, ``\\x04`` and the ``>`` prompt; Ctrl-D
  on an empty line soft-resets: ``OK\\r\\nMPY: soft reboot\\r\\n``);
- raw-paste mode (``\\x05A\\x01`` answered ``R\\x01``, a 16-bit little-endian window size and a
  first ``\\x01``; the board sends one ``\\x01`` each time it has consumed a window; ``\\x04``
  ends the data and is acknowledged with ``\\x04``).

The line can be slowed to a baud rate (10 bits a byte, both directions) and the cable can be
pulled after a number of bytes received: the pty is closed (the host gets an I/O error), the
board loses power (RAM is lost, the flash keeps what was written) and is plugged back in on a
new pty. ``port`` is a symlink that always points at the current pty.
"""

from __future__ import annotations

import os
import select
import struct
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path

from sim.board import node
from sim.board.vm import BOARDS, BoardVM, CrashedError, Identity

CTRL_A, CTRL_B, CTRL_C, CTRL_D, CTRL_E = 1, 2, 3, 4, 5
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
PASTE_WINDOW = 128  # bytes; what small ports use (the ring buffer of the USB/UART stdin)


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


class _Unplugged(Exception):
    """The cable was pulled: abandon whatever the board was doing."""


class VirtualBoard:
    """A MicroPython board on a pty. ``start()`` returns the device path."""

    def __init__(
        self,
        state_dir: str | os.PathLike,
        *,
        baud: int | None = None,
        disconnect_after: int | None = None,
        identity: Identity | None = None,
        wifi: tuple[str, str] | None = None,
        on_replug: Callable[[str], None] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.flash_dir = self.state_dir / "flash"
        self.port = str(self.state_dir / "port")  # symlink to the current pty
        self.baud = baud
        self.disconnect_after = disconnect_after
        self.identity = identity or Identity()
        self.wifi = wifi
        self.on_replug = on_replug
        self.device = ""
        self.bytes_in = 0  # received from the host since power-on of this process
        self.bytes_out = 0
        self.unplugged = threading.Event()  # set once the simulated cable pull happened
        self.replugged = threading.Event()  # set once it is plugged back in (new pty, link)
        self.node_runs = 0
        self.node_ran = threading.Event()
        self._master = -1
        self._gen = 0  # bumps at each unplug
        self._inbuf = bytearray()
        self._cond = threading.Condition()
        self._wlock = threading.Lock()
        self._stop = threading.Event()
        self._busy = False
        self._interrupted = False
        self._radio: node.Radio | None = None
        self._threads: list[threading.Thread] = []
        self.vm: BoardVM | None = None

    # --- life cycle -------------------------------------------------------------------

    def start(self) -> str:
        self.vm = BoardVM(self.flash_dir, self.identity, {"__rb_radio": self._radio_call})
        self._plug()
        for target in (self._reader, self._device):
            t = threading.Thread(target=target, daemon=True, name="board-" + target.__name__)
            t.start()
            self._threads.append(t)
        return self.device

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=5)
        with self._wlock:
            if self._master >= 0:
                os.close(self._master)
                self._master = -1
        if self.vm is not None:
            self.vm.close()

    def __enter__(self) -> VirtualBoard:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _plug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self.device = os.ttyname(slave)
        os.close(slave)  # the host opens it; holding it would keep its exclusive lock
        with self._wlock:
            self._master = master
        tmp = self.port + ".tmp"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(self.device, tmp)
        os.replace(tmp, self.port)

    def _unplug(self) -> None:
        """Pull the cable: close the pty now; the device thread power-cycles the board."""
        with self._wlock:
            os.close(self._master)
            self._master = -1
        with self._cond:
            self._gen += 1
            self._inbuf.clear()
            self._cond.notify_all()
        self.unplugged.set()

    # --- the wire ---------------------------------------------------------------------

    def _pace(self, n: int) -> None:
        if self.baud:
            time.sleep(n * 10 / self.baud)

    def _reader(self) -> None:
        chunk = max(1, (self.baud or 10_000_000) // 1000)  # ~10 ms of line time per read
        while not self._stop.is_set():
            master = self._master
            if master < 0:
                self._plug()
                self.replugged.set()
                if self.on_replug:
                    self.on_replug(self.device)
                continue
            try:
                ready, _, _ = select.select([master], [], [], 0.05)
                data = os.read(master, chunk) if ready else b""
            except OSError:  # no host has the pty open (EIO), or it was just closed
                time.sleep(0.02)
                continue
            if not data:
                continue
            self._pace(len(data))
            if self.disconnect_after is not None and not self.unplugged.is_set():
                room = self.disconnect_after - self.bytes_in
                if room <= len(data):
                    self._feed(data[: max(room, 0)])
                    self._unplug()
                    continue
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        self.bytes_in += len(data)
        with self._cond:
            self._inbuf += data
            self._cond.notify_all()
        if CTRL_C in data and self._busy and self.vm is not None:
            self._interrupted = True
            self.vm.interrupt()

    def _getc(self, gen: int) -> int:
        with self._cond:
            while not self._inbuf:
                if self._stop.is_set() or self._gen != gen:
                    raise _Unplugged
                self._cond.wait(0.1)
            if self._gen != gen:
                raise _Unplugged
            c = self._inbuf[0]
            del self._inbuf[0]
            return c

    def write(self, data: bytes) -> None:
        """Send bytes to the host (dropped when no host listens, like a UART)."""
        step = max(1, (self.baud or 10_000_000) // 100)
        for i in range(0, len(data), step):
            part = data[i : i + step]
            with self._wlock:
                if self._master < 0:
                    return
                try:
                    os.write(self._master, part)
                except OSError:
                    return
            self.bytes_out += len(part)
            self._pace(len(part))

    def console(self, text: str) -> None:
        self.write(text.replace("\n", "\r\n").encode())

    # --- the board --------------------------------------------------------------------

    def _banner(self) -> bytes:
        ident = self.vm.identity
        version = ".".join(str(x) for x in self.vm.version())
        machine = BOARDS[ident.board][1]
        return (
            f"MicroPython v{version} on {BoardVM.BUILD_DATE}; {machine} with "
            f'{ident.board.upper()}\r\nType "help()" for more information.\r\n'
        ).encode()

    def _device(self) -> None:
        gen = self._gen
        self.write(self._banner())
        self._run_main(gen)
        self.write(b">>> ")
        while not self._stop.is_set():
            try:
                self._friendly(gen)
            except _Unplugged:
                if self._stop.is_set():
                    return
                gen = self._gen
                # Power cycle: RAM is lost, the flash keeps what was written.
                self.vm.power_cycle()
                self.write(self._banner())
                self._run_main(gen)
                self.write(b">>> ")

    def _execute(self, src: bytes, gen: int) -> tuple[bytes, bytes]:
        self._busy = True
        try:
            out, err = self.vm.execute(src.decode("utf-8", "replace"))
        except CrashedError as e:
            # An interrupt (Ctrl-C on a runaway loop) or a crash of the VM, which restarted.
            why = f"SystemError: board crashed ({e})"
            if self._interrupted:
                why = "KeyboardInterrupt: "
            self._interrupted = False
            out, err = "", f"Traceback (most recent call last):\n{why[:300]}\n"
        finally:
            self._busy = False
        if self._gen != gen:
            raise _Unplugged  # its output went down a pulled cable
        # The simulator's own frames are not the board's business.
        err = "".join(x for x in err.splitlines(True) if "__rb_" not in x)
        err = err.replace('"<string>"', '"<stdin>"')
        return _crlf(out), _crlf(err)

    def _soft_reset(self, gen: int, run_main: bool) -> None:
        self.write(b"MPY: soft reboot\r\n")
        self.vm.soft_reset()
        if (self.flash_dir / "boot.py").exists():
            out, err = self._execute(b"exec(open('boot.py').read())", gen)
            self.write(out + err)
        if run_main:
            self._run_main(gen)

    def _run_main(self, gen: int) -> None:
        """What the board does at power-on or on a soft reset from the friendly REPL."""
        if (self.flash_dir / "fwboot.py").exists():
            # The Réverbère boot shim: select the firmware slot and load its modules in the
            # real MicroPython; the node's radio side then runs in CPython (sim/board/node.py).
            out, err = self._execute(node.LOAD_FIRMWARE.encode(), gen)
            self.write(out + err)
            if err:
                return
            self.node_runs += 1
            node.run(
                self.flash_dir,
                self.wifi,
                self.console,
                lambda src: self._execute(src.encode(), gen),
                self._plug_radio,
            )
            self.node_ran.set()
        elif (self.flash_dir / "main.py").exists():
            out, err = self._execute(b"exec(open('main.py').read())", gen)
            self.write(out + err)

    def _plug_radio(self, radio: node.Radio | None) -> None:
        self._radio = radio

    def _radio_call(self, op: str, *args):
        if self._radio is None:
            raise OSError("the radio is off")
        return self._radio.call(op, *args)

    def _friendly(self, gen: int) -> None:
        line = bytearray()
        while True:
            c = self._getc(gen)
            if c == CTRL_A:
                self.write(b"\r\n")
                self._raw(gen)
                return
            if c == CTRL_B:
                self.write(b"\r\n" + self._banner() + b">>> ")
                line.clear()
            elif c == CTRL_C:
                line.clear()
                self.write(b"\r\n>>> ")
            elif c == CTRL_D and not line:
                self.write(b"\r\n")
                self._soft_reset(gen, run_main=True)
                self.write(self._banner() + b">>> ")
            elif c in (0x0D, 0x0A):
                self.write(b"\r\n")
                if line.strip():
                    out, err = self._execute(bytes(line), gen)
                    self.write(out + err)
                line.clear()
                self.write(b">>> ")
            elif c in (0x08, 0x7F):
                if line:
                    line.pop()
                    self.write(b"\x08 \x08")
            elif c >= 0x20:
                line.append(c)
                self.write(bytes([c]))

    def _raw(self, gen: int) -> None:
        self.write(RAW_BANNER + b">")
        line = bytearray()
        while True:
            c = self._getc(gen)
            if c == CTRL_A:
                if line == b"\x05A":
                    self._raw_paste(gen)
                else:
                    self.write(RAW_BANNER + b">")
                line.clear()
            elif c == CTRL_B:
                self.write(b"\r\n" + self._banner() + b">>> ")
                return
            elif c == CTRL_C:
                line.clear()
            elif c == CTRL_D:
                self.write(b"OK")
                if not line:
                    self.write(b"\r\n")
                    self._soft_reset(gen, run_main=False)
                    self.write(RAW_BANNER + b">")
                else:
                    out, err = self._execute(bytes(line), gen)
                    self.write(out + b"\x04" + err + b"\x04>")
                    line.clear()
            else:
                line.append(c)

    def _raw_paste(self, gen: int) -> None:
        self.write(b"R\x01" + struct.pack("<H", PASTE_WINDOW) + b"\x01")
        src = bytearray()
        consumed = 0
        while True:
            c = self._getc(gen)
            if c == CTRL_D:
                self.write(b"\x04")
                break
            src.append(c)
            consumed += 1
            if consumed == PASTE_WINDOW:
                consumed = 0
                self.write(b"\x01")
        out, err = self._execute(bytes(src), gen)
        self.write(out + b"\x04" + err + b"\x04>")
