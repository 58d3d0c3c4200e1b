"""What a freshly flashed node does at boot, on the virtual board.

Two halves, because the WebAssembly MicroPython has no sockets:

1. In the board's real MicroPython: the boot shim ``fwboot`` (written by ``reverbere node
   flash``) selects the firmware slot named in ``/fw/current`` and every module of that slot is
   imported: a broken or mixed install fails here, as it would on the node.
2. In CPython, the radio: join the Wi-Fi named in the flashed config (the board can be told the
   real network's name and password, to simulate a technician's typo), sign one pack of three
   readings with the flashed key (``protocols.senml`` + ``protocols.cose``), POST it over CoAP
   on UDP to the flashed gateway address, and print on the console what happened, in the
   firmware's console lines (docs/flashing.md, "What the node prints"):

   ``reverbere: wifi ok ssid=...`` / ``reverbere: wifi error=wrong-password ssid=...``
   ``reverbere: send seq=N readings=3 code=2.04`` / ``reverbere: send seq=N error=timeout``

It also writes ``/status.json`` (uptime, buffer fill, dropped count, last error), which
``reverbere node doctor`` reads.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from gateway.flash import CONFIG_PATH, STATUS_PATH
from protocols import coap, cose, senml
from protocols.const import CF_COSE_MAC0, CON, CONTENT_FORMAT, POST, READINGS_PATH, URI_PATH

BUFFER_CAPACITY = 1024  # readings the simulated node's flash ring buffer holds

# Runs in the board's MicroPython at boot (see the module docstring).
LOAD_FIRMWARE = r"""
import os, fwboot
_slot = fwboot.select()
_hw = ('network', 'socket', 'ssl', 'bluetooth', 'esp32', 'rp2', 'ntptime', 'neopixel')
_n = [0, 0]
def _walk(d, pkg):
    for e in os.ilistdir(d):
        name = e[0]
        if e[1] & 0x4000:
            _walk(d + '/' + name, pkg + name + '.')
        elif name.endswith('.mpy') or name.endswith('.py'):
            mod = pkg + name.rsplit('.', 1)[0]
            if mod.endswith('__init__'):
                mod = mod[:-9]
            try:
                __import__(mod)
                _n[0] += 1
            except ImportError as e:
                # A module that needs the radio or the chip loads on the node, not here.
                if str(e).split("'")[-2:-1] and str(e).split("'")[-2] in _hw:
                    _n[1] += 1
                else:
                    raise
if _slot is None:
    print('reverbere: boot error=no-firmware')
else:
    _walk('/fw/' + _slot, '')
    print('reverbere: boot slot=%s modules=%d hw=%d' % (_slot, _n[0], _n[1]))
"""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_status(flash: Path, status: dict) -> None:
    path = flash / STATUS_PATH.lstrip("/")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)


def run(
    flash: Path,
    wifi: tuple[str, str] | None,
    console: Callable[[str], None],
    unplugged: Callable[[], bool],
) -> None:
    """Boot the node's radio once: join Wi-Fi, send one signed pack, report on the console."""
    t0 = time.monotonic()
    cfg = _read_json(flash / CONFIG_PATH.lstrip("/"))
    status = _read_json(flash / STATUS_PATH.lstrip("/"))
    status["boots"] = status.get("boots", 0) + 1
    status.setdefault("dropped", 0)
    status["buffer"] = {"used": 3, "capacity": BUFFER_CAPACITY}
    try:
        key = bytes.fromhex(cfg.get("key", ""))
    except ValueError:
        key = b""
    node_id = cfg.get("node")
    if not node_id or len(key) != 32:
        console("reverbere: config error=" + ("no-key" if node_id else "no-config") + "\n")
        status["last_error"] = "no config or key"
        _write_status(flash, status)
        return

    site = cfg.get("wifi") or {}
    ssid = site.get("ssid")
    if ssid and wifi is not None:
        error = None
        if wifi[0] != ssid:
            error = "no-ap"
        elif wifi[1] != site.get("password", ""):
            error = "wrong-password"
        if error:
            console(f"reverbere: wifi error={error} ssid={ssid}\n")
            status["last_error"] = "wifi: " + error
            status["uptime_s"] = int(time.monotonic() - t0)
            _write_status(flash, status)
            return
    if ssid:
        console(f"reverbere: wifi ok ssid={ssid}\n")

    seq = status.get("seq", 0) + 1
    now = int(time.time())
    readings = [("p", now - 120, 61), ("p", now - 60, 60), ("p", now, 62)]
    body = cose.sign(key, node_id.encode(), seq, senml.encode(readings))
    mid = (seq * 7919) & 0xFFFF
    token = seq.to_bytes(4, "big")
    wire = coap.encode(
        CON,
        POST,
        mid,
        token,
        options=[(URI_PATH, READINGS_PATH.encode()), (CONTENT_FORMAT, bytes([CF_COSE_MAC0]))],
        payload=body,
    )
    host, port = cfg.get("gateway", "127.0.0.1"), int(cfg.get("port", 5683))
    code = None
    error = "timeout"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((host, port))
        except OSError:
            error = "no-route"
        else:
            timeout = 0.5
            for _attempt in range(4):  # RFC 7252 Section 4.2 backoff, shortened
                if unplugged():
                    return
                try:
                    sock.send(wire)
                    sock.settimeout(timeout)
                    while True:
                        reply = coap.decode(sock.recv(2048))
                        if reply.mid == mid or reply.token == token:
                            code = reply.code
                            break
                    break
                except TimeoutError:
                    timeout *= 2
                except ConnectionRefusedError:
                    error = "refused"
                    timeout *= 2
                except (OSError, ValueError):
                    timeout *= 2
    status["seq"] = seq
    status["uptime_s"] = int(time.monotonic() - t0)
    if code is None:
        console(f"reverbere: send seq={seq} readings=3 error={error}\n")
        status["last_error"] = "gateway: " + error
        status["buffer"]["used"] = 3
    else:
        text = f"{code >> 5}.{code & 0x1F:02d}"
        console(f"reverbere: send seq={seq} readings=3 code={text}\n")
        if text == "2.04":
            status["buffer"]["used"] = 0
            status["last_error"] = None
        else:
            status["last_error"] = "gateway answered " + text
    _write_status(flash, status)
