"""The node application for MicroPython (>= 1.22). Ships inside the gateway's package for flashing."""
