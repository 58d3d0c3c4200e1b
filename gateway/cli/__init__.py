"""The ``reverbere`` command (``main``), one module per command group, each a thin shell.

Imports nothing: the entry point is ``gateway.cli.main:cli``.
"""
