"""What a freshly flashed node does at boot, on the virtual board: the real firmware, running.

1. In the board's real MicroPython, the boot shim ``fwboot`` (written by ``reverbere node
   flash``) selects the firmware slot named in ``/fw/current`` and every module of that slot is
   imported: a broken or mixed install fails here, as it would on the node.
2. The Wi-Fi join is checked against the site's network the board was given (``--wifi``), as
   the radio would: a wrong password or an unknown network stops here.
3. The flashed firmware's own ``firmware.node.Node`` runs in that MicroPython, on the flashed
   ``config.json`` and its reading ring ``/ring.bin`` on the board's flash, with a small HAL
   (``RUN_NODE``): the WebAssembly build has no sockets, so its ``send`` and ``wait`` are host
   calls to :class:`Radio`, a UDP socket to the flashed gateway address. Time runs faster while
   nothing is in flight (a sleep returns at once), so the node samples, fills its first pack
   and sends it within a second; while an exchange is in flight it runs in real time, so CoAP
   retransmissions and the gateway's answer are real. The loop stops after the first exchange
   (the board returns to its REPL): that is what commissioning needs to see.

The console lines (docs/flashing.md, "What the node prints") are printed here, in the
firmware's stead. ``/status.json`` is the firmware's own record (firmware/status.py), written
by the node as ``firmware/main.py`` has it write: at its first poll, with a Wi-Fi failure or a
bad config noted, and when the node stops (here: after the first exchange); the reading
buffer ``node doctor`` reads is the firmware's own ring.
"""

from __future__ import annotations

import base64
import json
import os
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path

from gateway.provision.flash import CONFIG_PATH
from protocols import cbor, coap, cose, senml

# Real seconds the node may take for its first exchange before the board gives up on it.
BUDGET_S = 12

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

# The flashed firmware's node loop, on a HAL for this board (runs in the board's MicroPython).
RUN_NODE = r"""
import os, sys, time, binascii
from firmware import config as _fc
from firmware.node import Node
__rb_radio = sys._rb_radio  # the board's radio, a host function (see sim/board/node.py)

class _Ring:
    # The reading ring as a preallocated file, as firmware/board.py keeps it.
    def __init__(s, path, size):
        s.size = size
        try:
            if os.stat(path)[6] != size:
                raise OSError
        except OSError:
            with open(path, 'wb') as f:
                for _ in range(size // 256):
                    f.write(b'\xff' * 256)
        s.f = open(path, 'r+b')
    def readinto(s, off, buf):
        s.f.seek(off)
        s.f.readinto(buf)
    def write(s, off, data):
        s.f.seek(off)
        s.f.write(data)

class _Files:
    def read(s, name):
        try:
            with open(name) as f:
                return f.read()
        except OSError:
            return None
    def write(s, name, text):
        with open(name, 'w') as f:
            f.write(text)
    def rename(s, a, b):
        os.rename(a, b)

class _Hal:
    def __init__(s, cfg):
        s.t0 = time.ticks_ms()
        s.skip = 0  # ms the clock jumped while nothing was in flight
        s.dev = _Ring('ring.bin', cfg['store_kb'] * 1024)
        s.fs = _Files()
    def ms(s):
        return time.ticks_diff(time.ticks_ms(), s.t0) + s.skip
    def unix(s):
        return None
    def set_unix(s, t):
        pass
    def read(s, ch):
        if ch == 'p':
            return 58 + s.urandom(1)[0] % 5
        if ch == 't':
            return 21.5
        return None
    def send(s, data):
        __rb_radio('send', binascii.b2a_base64(data).decode())
    def wait(s, ms, busy):
        if not busy:
            s.skip += ms
            return None
        got = __rb_radio('wait', min(ms, 1000))
        return binascii.a2b_base64(got) if got else None
    def urandom(s, n):
        # This WASI build's os.urandom fails (no entropy source): the host gives it.
        return binascii.a2b_base64(__rb_radio('urandom', n))
    def feed(s):
        pass
    def led(s, on):
        pass

def _first_exchange(node, hal):
    end = time.ticks_add(time.ticks_ms(), BUDGET_MS)
    while not (node.stats['acked'] or node.stats['failed']):
        if time.ticks_diff(end, time.ticks_ms()) < 0:
            break
        d = hal.wait(node.poll(), node.link.busy())
        if d:
            node.datagram(d)
        elif __rb_radio('refused'):  # ICMP port unreachable: nobody listens there
            break
    last = __rb_radio('last')
    what = 'code=' + last['code'] if last['code'] else 'error=' + last['error']
    print('reverbere: send seq=%d readings=%d %s' % (last['seq'], last['readings'], what))

try:
    _cfg = _fc.load(open('config.json').read())
except (OSError, ValueError) as e:
    _cfg = None
    print('reverbere: config error=' + str(e).replace(' ', '_')[:60])
    # firmware/main.py records a bad config, without a node
    from firmware.status import Status
    _st = Status(_Files(), None)
    _st.note('config: ' + str(e), 0)
    _st.write(0)
if _cfg is not None:
    _hal = _Hal(_cfg)
    _node = Node(_hal, _cfg)
    if WIFI_ERROR:  # the radio did not join: main.py notes it at boot; the board stops here
        _node.status.note('wifi: ' + WIFI_ERROR, 0)
        print('reverbere: wifi error=%s ssid=%s' % (WIFI_ERROR, _cfg['wifi'].get('ssid')))
    else:
        _first_exchange(_node, _hal)
    _node.status.write(_hal.ms())  # as main.py does when Ctrl-C stops the node
    _hal.dev.f.close()
"""


class Radio:
    """The node's UDP socket, on the host: what the firmware's HAL sends and waits for."""

    def __init__(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.error = "timeout"
        try:
            self.sock.connect((host, port))
        except OSError:
            self.error = "no-route"
        self.seq = 0
        self.readings = 0
        self.code: str | None = None

    def close(self) -> None:
        self.sock.close()

    def call(self, op: str, *args):
        return getattr(self, "op_" + op)(*args)

    def op_send(self, b64: str) -> None:
        data = base64.b64decode(b64)
        try:
            msg = coap.decode(data)
            mac0 = cose.decode(msg.payload)
            self.seq = mac0.seq
            pack = senml.resolve(cbor.loads(mac0.payload), time.time())
            self.readings = sum(1 for r in pack if r[0] != "drop")
        except ValueError:
            pass
        try:
            self.sock.send(data)
        except OSError:
            self.error = "no-route"

    def op_wait(self, ms: int) -> str | None:
        try:
            ready, _, _ = select.select([self.sock], [], [], ms / 1000)
            if not ready:
                return None
            data = self.sock.recv(2048)
        except ConnectionRefusedError:
            self.error = "refused"
            return None
        except OSError:
            return None
        try:
            code = coap.decode(data).code
        except ValueError:
            return None
        if code:  # not an empty ACK
            self.code = f"{code >> 5}.{code & 0x1F:02d}"
        return base64.b64encode(data).decode()

    def op_refused(self) -> bool:
        return self.error == "refused" and self.code is None

    def op_urandom(self, n: int) -> str:
        return base64.b64encode(os.urandom(n)).decode()

    def op_last(self) -> dict:
        return {"seq": self.seq, "readings": self.readings, "code": self.code, "error": self.error}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def run(
    flash: Path,
    wifi: tuple[str, str] | None,
    console: Callable[[str], None],
    execute: Callable[[str], tuple[bytes, bytes]],
    plug_radio: Callable[[Radio | None], None],
) -> None:
    """Boot the node once: join the Wi-Fi, run the firmware until its first exchange ends."""
    cfg = _read_json(flash / CONFIG_PATH.lstrip("/"))
    site = cfg.get("wifi") or {}
    ssid = site.get("ssid")
    error = None
    if ssid and wifi is not None:
        if wifi[0] != ssid:
            error = "no-ap"
        elif wifi[1] != site.get("password", ""):
            error = "wrong-password"
    if ssid and not error:  # (the error line comes from the node, after its boot record)
        console(f"reverbere: wifi ok ssid={ssid}\n")
    radio = Radio(str(cfg.get("gateway", "")), int(cfg.get("port", 5683)))
    plug_radio(radio)
    try:
        code = RUN_NODE.replace("BUDGET_MS", str(BUDGET_S * 1000))
        out, err = execute(code.replace("WIFI_ERROR", repr(error)))
    finally:
        plug_radio(None)
        radio.close()
    console((out + err).decode("utf-8", "replace"))
