"""Serial ports for a technician: which ones look like boards, and why one cannot be opened.

``reverbere node ports`` lists what pyserial's ``serial.tools.list_ports`` finds, marking the
ports whose USB vendor makes the serial chips of MicroPython boards (:data:`BOARD_VIDS`);
``--port auto`` takes the one such port when there is exactly one. :func:`check_open` opens a
port the way the flash tool will (pyserial, with an exclusive lock, as mpremote does) and turns
the operating system's refusal into one of three errors, each a sentence with what to do:
:class:`NoSuchPort`, :class:`PortBusy` (another program holds it), :class:`NoPermission` (the
user is not in the group that owns it). mpremote alone says ``failed to access PORT`` for all
three.
"""

from __future__ import annotations

import errno
import grp
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import serial
from serial.tools import list_ports
from serial.tools.list_ports_common import ListPortInfo

# USB vendor ids of the chips MicroPython boards talk through (and of the boards themselves).
BOARD_VIDS = {
    0x303A: "Espressif (native USB)",
    0x10C4: "Silicon Labs CP210x",
    0x1A86: "WCH CH340",
    0x0403: "FTDI",
    0x2E8A: "Raspberry Pi (RP2040)",
    0xF055: "MicroPython",
}


class PortError(Exception):
    """The port cannot be used; the message is a sentence saying what to do."""


class NoSuchPort(PortError):
    pass


class PortBusy(PortError):
    pass


class NoPermission(PortError):
    pass


@dataclass(frozen=True)
class Port:
    """One serial port as ``node ports`` shows it."""

    device: str  # /dev/ttyUSB0
    description: str  # what the USB device says it is, or "n/a"
    vid: int | None
    pid: int | None
    serial_number: str | None

    @property
    def board_like(self) -> bool:
        return self.vid in BOARD_VIDS

    @property
    def usb_id(self) -> str:
        return "" if self.vid is None else f"{self.vid:04x}:{self.pid or 0:04x}"

    @property
    def chip(self) -> str:
        return BOARD_VIDS.get(self.vid or -1, "")


def ports(found: Iterable[ListPortInfo] | None = None) -> list[Port]:
    """Serial ports, board-like ones first (``found``: pyserial's ``comports()`` by default)."""
    infos = list_ports.comports() if found is None else found
    out = [Port(p.device, p.description, p.vid, p.pid, p.serial_number) for p in infos]
    return sorted(out, key=lambda p: (not p.board_like, p.device))


def auto(found: Iterable[ListPortInfo] | None = None) -> str:
    """The device of the one board-like port, or :class:`PortError` saying what was found."""
    everything = ports(found)
    boards = [p for p in everything if p.board_like]
    if len(boards) == 1:
        return boards[0].device
    if not boards:
        others = ", ".join(p.device for p in everything) or "no serial port at all"
        raise NoSuchPort(
            f"--port auto found no port that looks like a board ({others}): plug the node in "
            f"with a data cable (some USB cables only charge), or pass --port"
        )
    names = ", ".join(f"{p.device} ({p.description})" for p in boards)
    raise PortError(f"--port auto found {len(boards)} boards: {names}; pass --port one of them")


def holders(device: str) -> list[str]:
    """``name (pid N)`` of each process that has ``device`` open, as far as /proc shows."""
    try:
        target = os.path.realpath(device)
    except OSError:
        return []
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fds = list((proc / "fd").iterdir())
            if any(os.readlink(fd) == target for fd in fds):
                name = (proc / "comm").read_text().strip()
                out.append(f"{name} (pid {proc.name})")
        except OSError:
            continue  # gone, or not ours to read
    return out


def explain(device: str, e: OSError) -> PortError:
    """The sentence for an ``OSError`` (or pyserial's ``SerialException``) opening ``device``."""
    code = e.errno
    if code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        return NoSuchPort(
            f"no such port {device}: is the node plugged in? `reverbere node ports` lists the "
            f"serial ports (a board is often /dev/ttyUSB0 or /dev/ttyACM0)"
        )
    if code in (errno.EACCES, errno.EPERM):
        try:
            group = grp.getgrgid(os.stat(device).st_gid).gr_name
        except (OSError, KeyError):
            group = "dialout"
        return NoPermission(
            f"no permission to open {device}: add yourself to the {group} group "
            f"(sudo usermod -aG {group} $USER), then log out and in again"
        )
    if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK):
        who = ", ".join(holders(device))
        by = f" ({who})" if who else ""
        return PortBusy(
            f"port {device} is busy: another program holds it{by}; close it (a serial "
            f"console, mpremote, an IDE such as Thonny) and try again"
        )
    return PortError(f"cannot open {device}: {e.strerror or e}")


def check_open(device: str, baud: int = 115200) -> None:
    """Open ``device`` as the flash tool will and close it again; :class:`PortError` if not."""
    try:
        s = serial.serial_for_url(device, baudrate=baud, exclusive=True, do_not_open=True)
        s.open()
    except (serial.SerialException, OSError) as e:
        raise explain(device, e) from None
    s.close()
