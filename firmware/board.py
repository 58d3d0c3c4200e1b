"""The HAL on real hardware: ESP32 and RP2040 W (Raspberry Pi Pico W), MicroPython >= 1.22.

Sensors, by channel (wiring in config.json "hw", see docs/firmware.md):

- "p" power (W): an INA219 on I2C (bus voltage times shunt current), or "p_adc": an ADC pin
  scaled by "p_scale" W per volt (a current transformer with a burden resistor and rectifier).
- "e" energy (Wh): an S0 pulse output of an energy meter on a Pin with an IRQ counter,
  "s0_wh" Wh per pulse; the count since the last reset.
- "t" temperature (Cel): the MCU's internal sensor.
- "lux": an LDR divider on an ADC pin scaled by "lux_scale" lx per volt.
- "rssi": the Wi-Fi signal (dBm), while joined.

The network never stops the node: the Wi-Fi join and the gateway's name lookup are retried in
the background (``_up``), at most once per ``_RETRY`` ms at first, the gap doubling up to
``_RETRY_MAX``; meanwhile readings wait in the flash ring and datagrams are not sent (the
node's exchange times out and backs off as when the gateway is away).
"""

import os
import struct
import sys
import time

import machine

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_RP2 = sys.platform == "rp2"
WDT_MAX = 8388 if _RP2 else 600000  # ms: the RP2040's watchdog counts at most 8.388 s
_RETRY = const(10000)  # ms: a join's first look, and the first gap between retries
_RETRY_MAX = const(120000)  # ms: the longest gap between two retries
_EPOCH = 946684800 if time.gmtime(0)[0] == 2000 else 0  # ports with a 2000 epoch


class FileDev:
    """The reading ring as a preallocated file on the board's LittleFS (which levels wear)."""

    def __init__(self, path, size, feed):
        self.size = size
        try:
            if os.stat(path)[6] != size:
                raise OSError
        except OSError:
            with open(path, "wb") as f:
                blank = b"\xff" * 256
                for _ in range(size // 256):
                    f.write(blank)
                    feed()  # up to 1 MB on the first boot: longer than a watchdog period
        self.f = open(path, "r+b")  # noqa: SIM115 - open for the node's life

    def readinto(self, off, buf):
        self.f.seek(off)
        self.f.readinto(buf)

    def write(self, off, data):
        self.f.seek(off)
        self.f.write(data)
        self.f.flush()


class FS:
    def read(self, name):
        try:
            with open(name) as f:
                return f.read()
        except OSError:
            return None

    def write(self, name, text):
        with open(name, "w") as f:
            f.write(text)

    def rename(self, a, b):
        os.rename(a, b)  # LittleFS renames atomically


class INA219:
    """Bus voltage (register 2, 4 mV LSB) times shunt voltage (register 1, 10 uV LSB) / R."""

    def __init__(self, i2c, addr=0x40, shunt_ohm=0.1):
        self.i2c = i2c
        self.addr = addr
        self.r = shunt_ohm
        self.b = bytearray(2)

    def _reg(self, n, fmt):
        self.i2c.readfrom_mem_into(self.addr, n, self.b)
        return struct.unpack(fmt, self.b)[0]

    def power(self):
        volts = (self._reg(2, ">H") >> 3) * 0.004  # unsigned, bits 15..3
        amps = self._reg(1, ">h") * 0.00001 / self.r  # signed
        return abs(volts * amps)


class Board:
    def __init__(self, cfg, dev=None, fs=None, net=True, wdt=None):
        hw = cfg["hw"]
        self.cfg = cfg
        self.wdt = wdt  # started by main.py before the board, so a hang here resets too
        self.dev = dev or FileDev("ring.bin", cfg["store_kb"] * 1024, self.feed)
        self.fs = fs or FS()
        self._ms = 0
        self._last = time.ticks_ms()
        self._clock_ok = False
        try:
            self._led = machine.Pin("LED" if _RP2 else hw.get("led", 2), machine.Pin.OUT)
        except (TypeError, ValueError):
            self._led = None
        self.sensors = {}
        if "i2c" in hw:  # [id, scl, sda]
            i, scl, sda = hw["i2c"]
            bus = machine.I2C(i, scl=machine.Pin(scl), sda=machine.Pin(sda), freq=100000)
            self.sensors["p"] = INA219(bus, hw.get("ina219", 0x40), hw.get("shunt", 0.1)).power
        elif "p_adc" in hw:
            adc = machine.ADC(machine.Pin(hw["p_adc"]))
            k = hw.get("p_scale", 1000) * 3.3 / 65535
            self.sensors["p"] = lambda: adc.read_u16() * k
        if "s0" in hw:
            self._pulses = 0
            pin = machine.Pin(hw["s0"], machine.Pin.IN, machine.Pin.PULL_UP)
            pin.irq(self._pulse, machine.Pin.IRQ_FALLING)
            wh = hw.get("s0_wh", 1)
            self.sensors["e"] = lambda: self._pulses * wh
        if "lux_adc" in hw:
            ldr = machine.ADC(machine.Pin(hw["lux_adc"]))
            k = hw.get("lux_scale", 1000) * 3.3 / 65535
            self.sensors["lux"] = lambda: ldr.read_u16() * k
        self.sensors["t"] = self._temp
        self.wlan = None
        self.addr = None  # the gateway's address, once looked up
        self.on = False  # joined, as last seen
        self.error = None  # what keeps the node off the network now, for the status record
        if net:
            import select
            import socket

            self.gai = socket.getaddrinfo
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.poller = select.poll()
            self.poller.register(self.sock, select.POLLIN)
            self._gap = _RETRY
            self._at = 0  # when to try again what is missing (ms)
            if cfg["wifi"].get("ssid"):
                import network

                self.wlan = network.WLAN(network.STA_IF)
                self.wlan.active(True)
                self.sensors["rssi"] = lambda: self.wlan.status("rssi") if self.on else None
                if not self.wlan.isconnected():
                    self._join()
                    self._at = self.ms() + _RETRY  # the first look at how the join went
            self.on = self.wlan is None

    def _pulse(self, _pin):
        self._pulses += 1

    def _temp(self):
        if _RP2:
            v = machine.ADC(4).read_u16() * 3.3 / 65535
            return 27 - (v - 0.706) / 0.001721
        import esp32

        if hasattr(esp32, "mcu_temperature"):
            return esp32.mcu_temperature()
        return (esp32.raw_temperature() - 32) / 1.8

    def _join(self):
        w = self.cfg["wifi"]
        try:  # noqa: SIM105 - a join already under way, or none to leave: go on
            self.wlan.disconnect()
        except OSError:
            pass
        try:  # noqa: SIM105
            self.wlan.connect(w["ssid"], w.get("password", ""))
        except OSError:
            pass

    def _up(self):
        """True when a datagram can go: Wi-Fi joined and the gateway's address known.

        Else retry what is missing (join, or look the gateway up) if the gap since the last
        try has passed, and double the gap; never waits for the outcome.
        """
        w = self.wlan
        on = w is None or w.isconnected()
        now = self.ms()
        if on != self.on:
            self.on = on
            self._gap = _RETRY
            self._at = now
            if on:
                self.addr = None  # look the gateway up again, at once: DHCP may have moved it
                self.log("wifi ok ssid=" + self.cfg["wifi"]["ssid"])
            else:  # lost: the driver may rejoin by itself first
                self._at += _RETRY
        if on and self.addr:
            return True
        if now < self._at:
            return False
        self._at = now + self._gap
        retry = " retry_s=%d" % (self._gap // 1000)
        self._gap = min(self._gap * 2, _RETRY_MAX)
        if on:
            host = self.cfg["gateway"]
            self.feed()  # a lookup blocks until the DNS server answers or lwIP gives up
            try:
                self.addr = self.gai(host, self.cfg["port"])[0][-1]
                self.error = None
                return True
            except (OSError, IndexError):
                self.error = "dns: failed"
                self.log("gateway resolve=failed host=" + host + retry)
            return False
        import network

        st = w.status()
        why = "timeout"
        if st == getattr(network, "STAT_WRONG_PASSWORD", None):
            why = "wrong-password"
        elif st == getattr(network, "STAT_NO_AP_FOUND", None):
            why = "no-ap"
        self.error = "wifi: " + why
        self.log("wifi error=%s ssid=%s%s" % (why, self.cfg["wifi"]["ssid"], retry))
        self._join()
        return False

    # --- the HAL -------------------------------------------------------------------------------

    def ms(self):
        t = time.ticks_ms()
        self._ms += time.ticks_diff(t, self._last)
        self._last = t
        return self._ms

    def unix(self):
        return time.time() + _EPOCH if self._clock_ok else None

    def set_unix(self, t):
        tm = time.gmtime(t - _EPOCH)
        machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6], tm[3], tm[4], tm[5], 0))
        self._clock_ok = True

    def read(self, ch):
        f = self.sensors.get(ch)
        try:
            return f() if f else None
        except OSError:  # a sensor that does not answer: no reading
            return None

    def send(self, data):
        if self._up():  # else not sent: the exchange retransmits, then backs off
            try:  # noqa: SIM105 - MicroPython has no contextlib
                self.sock.sendto(data, self.addr)
            except OSError:  # no route yet: the exchange retransmits
                pass

    def wait(self, ms):
        self._up()  # rejoin in the background, even while nothing is sent
        if self.poller.poll(ms):
            try:
                return self.sock.recv(1280)
            except OSError:
                return None
        return None

    def urandom(self, n):
        return os.urandom(n)

    def log(self, line):
        print("reverbere:", line)  # the console lines commissioning reads (docs/flashing.md)

    def feed(self):
        if self.wdt:
            self.wdt.feed()

    def led(self, on):
        if self._led:
            self._led.value(1 if on else 0)
