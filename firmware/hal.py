"""The hardware abstraction layer: what the node needs from a board, and RAM-backed parts.

A HAL is any object with these attributes (duck-typed, no base class, to keep the node small):

    ms()                monotonic milliseconds since boot (never wraps)
    unix()              Unix seconds if the board knows the time (RTC set, NTP), else None
    set_unix(t)         the gateway's time (the board may set its RTC, or ignore it)
    read(channel)       a reading of that channel ("p" W, "e" Wh, "t" Cel, ...) or None
    send(data)          send one datagram to the gateway
    wait(ms)            sleep up to ms; return a datagram that arrived, or None
    urandom(n)          n random bytes (CoAP message ids, tokens, jitter)
    feed()              feed the watchdog
    led(on)             the status LED
    log(line)           optional: a console line for commissioning ("send seq=1 ... code=2.04")
    error               optional: why the node is off the network now ("wifi: no-ap",
                        "dns: failed"), else None; a failed exchange is then blamed on it
    dev                 flash for firmware.store: size, readinto(off, buf), write(off, data)
    fs                  files: read(name) -> str or None, write(name, text), rename(a, b)

firmware/board.py implements it for ESP32 and RP2040 W; sim/hal.py for the simulator; the tests
use ``MemDev`` and ``MemFS`` below with a fake clock and socket.
"""


class MemDev:
    """A flash region in RAM, erased to 0xFF."""

    def __init__(self, size):
        self.size = size
        self.buf = bytearray(b"\xff" * size)

    def readinto(self, off, buf):
        buf[:] = memoryview(self.buf)[off : off + len(buf)]

    def write(self, off, data):
        self.buf[off : off + len(data)] = data


class MemFS:
    """Files in a dict; ``rename`` replaces the target in one step, like LittleFS."""

    def __init__(self, files=None):
        self.files = files if files is not None else {}

    def read(self, name):
        return self.files.get(name)

    def write(self, name, text):
        self.files[name] = text

    def rename(self, a, b):
        self.files[b] = self.files.pop(a)
