"""A stand-in for MicroPython's ``network`` module: one station interface and an access point
that the test switches on and off.

The access point is down until the ``JOIN_AT``-th ``connect()`` call (counting from 1; 0:
never), which joins at once; ``WRONG_PASSWORD`` makes every join fail that way. ``CONNECTS``
records the time of each ``connect()`` on the test's clock (``CLOCK``), ``CONNECTED`` is the
link (a test may drop it).
"""

STA_IF = 0
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_WRONG_PASSWORD = 202
STAT_NO_AP_FOUND = 201
STAT_GOT_IP = 1010

JOIN_AT = 1
WRONG_PASSWORD = False
CONNECTED = False
CONNECTS = []
CLOCK = [lambda: 0]  # the test's clock, in ms


def reset(join_at=1, connected=False):
    global JOIN_AT, WRONG_PASSWORD, CONNECTED
    JOIN_AT = join_at
    WRONG_PASSWORD = False
    CONNECTED = connected
    CONNECTS.clear()


class WLAN:
    def __init__(self, interface):
        self.interface = interface
        self.on = False

    def active(self, on=None):
        if on is None:
            return self.on
        self.on = on

    def isconnected(self):
        return CONNECTED

    def connect(self, ssid, password):
        global CONNECTED
        if not self.on:
            raise OSError("STA must be active")
        CONNECTS.append(CLOCK[0]())
        CONNECTED = not WRONG_PASSWORD and JOIN_AT > 0 and len(CONNECTS) >= JOIN_AT

    def disconnect(self):
        global CONNECTED
        CONNECTED = False

    def status(self, param=None):
        if param == "rssi":
            if not CONNECTED:
                raise OSError("not connected")
            return -61
        if CONNECTED:
            return STAT_GOT_IP
        if not CONNECTS:
            return STAT_IDLE
        return STAT_WRONG_PASSWORD if WRONG_PASSWORD else STAT_NO_AP_FOUND
