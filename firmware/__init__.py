"""The node application for MicroPython (>= 1.22).

Ships inside the installed package so that ``reverbere node flash`` finds it.
"""
