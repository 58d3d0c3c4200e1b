"""The node's entry point on the device: ``main.py`` at the root of the board's filesystem.

Loads config.json (a bad one is reported on the console and the LED blinks; the node does not
start, so that the REPL stays reachable), starts the watchdog and runs the node's loop. A
crash resets the board; a hang is reset by the watchdog.
"""

import time

from firmware import config


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
        led = machine.Pin("LED" if "rp2" in __import__("sys").platform else 2, machine.Pin.OUT)
        while True:  # blink fast: the node waits for a good config.json over the REPL
            led.value(not led.value())
            time.sleep_ms(150)
    hal = Board(cfg)
    hal.start_watchdog()
    node = Node(hal, cfg)
    st = node.store
    _log("node %s up, boot %d, %d readings waiting" % (cfg["node"], st.boot, st.pending()))
    cap = cfg["wdt_ms"] // 2
    try:
        while True:
            ms = node.poll()
            hal.led(node.link.busy())
            data = hal.wait(min(ms, cap))
            if data:
                node.datagram(data)
    except Exception as e:  # anything unexpected: log it, start afresh
        import sys

        sys.print_exception(e)
        time.sleep_ms(1000)
        machine.reset()


if __name__ == "__main__":
    run()
