"""A virtual MicroPython board on a pseudo-terminal (``reverbere sim board``).

``serial.VirtualBoard`` is the board: a pty speaking the REPL protocols; ``vm.BoardVM`` its
interpreter (real MicroPython in WebAssembly) and flash; ``node`` what it does at boot once the
node firmware is flashed. See docs/flashing.md, "Without hardware".
"""
