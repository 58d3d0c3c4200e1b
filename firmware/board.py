"""The HAL on real hardware: ESP32 and RP2040 W (Raspberry Pi Pico W), MicroPython >= 1.22.

Sensors, by channel (wiring in config.json "hw", see docs/firmware.md):

- "p" power (W): an INA219 on I2C (bus voltage times shunt current), or "p_adc": an ADC pin
  scaled by "p_scale" W per volt (a current transformer with a burden resistor and rectifier).
- "e" energy (Wh): an S0 pulse output of an energy meter on a Pin with an IRQ counter,
  "s0_wh" Wh per pulse; the count since the last reset.
- "t" temperature (Cel): the MCU's internal sensor.
- "lux": an LDR divider on an ADC pin scaled by "lux_scale" lx per volt.
- "rssi": the Wi-Fi signal (dBm).
"""

import os
import struct
import sys
import time

import machine

_RP2 = sys.platform == "rp2"
_EPOCH = 946684800 if time.gmtime(0)[0] == 2000 else 0  # ports with a 2000 epoch


class FileDev:
    """The reading ring as a preallocated file on the board's LittleFS (which levels wear)."""

    def __init__(self, path, size):
        self.size = size
        try:
            if os.stat(path)[6] != size:
                raise OSError
        except OSError:
            with open(path, "wb") as f:
                blank = b"\xff" * 256
                for _ in range(size // 256):
                    f.write(blank)
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
    def __init__(self, cfg, dev=None, fs=None, net=True):
        hw = cfg["hw"]
        self.cfg = cfg
        self.dev = dev or FileDev("ring.bin", cfg["store_kb"] * 1024)
        self.fs = fs or FS()
        self.wdt = None
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
        self.error = None  # a Wi-Fi failure at boot, for the status record
        if net:
            self._net(cfg)

    def _net(self, cfg):
        import select
        import socket

        self.wlan = self._wifi(cfg["wifi"])
        self.addr = socket.getaddrinfo(cfg["gateway"], cfg["port"])[0][-1]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.poller = select.poll()
        self.poller.register(self.sock, select.POLLIN)

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

    def _wifi(self, w):
        if not w.get("ssid"):
            return None
        import network

        wlan = network.WLAN(network.STA_IF)
        wlan.active(True)
        if not wlan.isconnected():
            wlan.connect(w["ssid"], w.get("password", ""))
            for _ in range(100):
                if wlan.isconnected():
                    break
                time.sleep_ms(100)
        if wlan.isconnected():
            self.log("wifi ok ssid=" + w["ssid"])
        else:
            st = wlan.status()
            why = "timeout"
            if st == getattr(network, "STAT_WRONG_PASSWORD", None):
                why = "wrong-password"
            elif st == getattr(network, "STAT_NO_AP_FOUND", None):
                why = "no-ap"
            self.log("wifi error=%s ssid=%s" % (why, w["ssid"]))
            self.error = "wifi: " + why
        return wlan

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
        if ch == "rssi":
            return self.wlan.status("rssi") if self.wlan else None
        f = self.sensors.get(ch)
        try:
            return f() if f else None
        except OSError:  # a sensor that does not answer: no reading
            return None

    def send(self, data):
        try:  # noqa: SIM105 - MicroPython has no contextlib
            self.sock.sendto(data, self.addr)
        except OSError:  # no route yet: the exchange retransmits
            pass

    def wait(self, ms):
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

    def start_watchdog(self):
        self.wdt = machine.WDT(timeout=self.cfg["wdt_ms"])

    def feed(self):
        if self.wdt:
            self.wdt.feed()

    def led(self, on):
        if self._led:
            self._led.value(1 if on else 0)
