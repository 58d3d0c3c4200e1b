"""The node's entry point on the device: ``main.py`` at the root of the board's filesystem.

Loads config.json (a bad one is reported on the console and the LED blinks; the node does not
start and no watchdog runs, so that the REPL stays reachable), starts the watchdog, then
builds the board and runs the node's loop. A crash, during the board's construction too,
resets the board; a hang is reset by the watchdog. The status record (status.json,
firmware/status.py) notes a watchdog reset at boot, the network being out of reach (Wi-Fi,
gateway lookup), a bad config, a crash, and is written when Ctrl-C stops the node (mpremote,
``reverbere node doctor``).
"""

import time

from firmware import config
from firmware.status import Status


def _log(msg):
    try:
        import logging  # micropython-lib, optional

        logging.getLogger("node").info(msg)
    except ImportError:
        print("node:", msg)


def load(fs):
    text = fs.read(config.FILE)
    if text is None:
        raise config.ConfigError("config.json: missing (write one, see docs/firmware.md)")
    return config.load(text)


def run():
    import machine

    from firmware.board import FS, WDT_MAX, Board
    from firmware.node import Node

    try:
        cfg = load(FS())
    except config.ConfigError as e:
        print("CONFIG ERROR:", e)
        print("reverbere: config error=" + str(e).replace(" ", "_"))
        st = Status(FS(), None)
        st.note("config: " + str(e), 0)
        st.write(0)
        led = machine.Pin("LED" if "rp2" in __import__("sys").platform else 2, machine.Pin.OUT)
        while True:  # blink fast: the node waits for a good config.json over the REPL
            led.value(not led.value())
            time.sleep_ms(150)
    # From here on the watchdog resets a node stuck anywhere, building the board included
    # (a first boot formats the reading ring; the Wi-Fi join and the gateway lookup never
    # block: board.py retries them in the background).
    ms = min(cfg["wdt_ms"], WDT_MAX)
    cap = ms // 2
    hal = node = None
    try:
        wdt = machine.WDT(timeout=ms)
        hal = Board(cfg, wdt=wdt)
        node = Node(hal, cfg)
        st = node.store
        _log("node %s up, boot %d, %d readings waiting" % (cfg["node"], st.boot, st.pending()))
        if machine.reset_cause() == machine.WDT_RESET:  # noted in the boot's first record
            node.status.note("reset: watchdog", 0)
        while True:
            ms = node.poll()
            hal.led(node.link.busy())
            data = hal.wait(min(ms, cap))
            if hal.error:  # off the network: Wi-Fi not joined, gateway not found
                node.status.note(hal.error, hal.ms())
            if data:
                node.datagram(data)
    except KeyboardInterrupt:  # Ctrl-C at the REPL: the record says how long it ran
        if node:
            wdt.feed()  # the watchdog cannot be stopped: the REPL gets one full period
            node.status.write(hal.ms())
        raise
    except Exception as e:  # anything unexpected, at boot too: log, record, start afresh
        import sys

        sys.print_exception(e)
        now = hal.ms() if hal else 0
        st = node.status if node else Status(FS(), None)
        st.note("crash: " + repr(e)[:80], now)
        st.write(now)
        time.sleep_ms(1000)
        machine.reset()


if __name__ == "__main__":
    run()
