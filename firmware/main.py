"""The node's entry point on the device: ``main.py`` at the root of the board's filesystem.

Loads config.json (a bad one is reported on the console and the LED blinks; the node does not
start, so that the REPL stays reachable), starts the watchdog and runs the node's loop. A
crash resets the board; a hang is reset by the watchdog. The status record (status.json,
firmware/status.py) notes a Wi-Fi failure or a watchdog reset at boot, a bad config, a crash,
and is written when Ctrl-C stops the node (mpremote, ``reverbere node doctor``).
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

    from firmware.board import FS, Board
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
    hal = Board(cfg)
    hal.start_watchdog()
    node = Node(hal, cfg)
    st = node.store
    _log("node %s up, boot %d, %d readings waiting" % (cfg["node"], st.boot, st.pending()))
    why = hal.error or (machine.reset_cause() == machine.WDT_RESET and "reset: watchdog")
    if why:  # recorded in the boot's status record (the first poll writes it)
        node.status.note(why, 0)
    cap = cfg["wdt_ms"] // 2
    try:
        while True:
            ms = node.poll()
            hal.led(node.link.busy())
            data = hal.wait(min(ms, cap))
            if data:
                node.datagram(data)
    except KeyboardInterrupt:  # Ctrl-C at the REPL: the record says how long it ran
        node.status.write(hal.ms())
        raise
    except Exception as e:  # anything unexpected: log it, record it, start afresh
        import sys

        sys.print_exception(e)
        node.status.note("crash: " + repr(e)[:80], hal.ms())
        node.status.write(hal.ms())
        time.sleep_ms(1000)
        machine.reset()


if __name__ == "__main__":
    run()
