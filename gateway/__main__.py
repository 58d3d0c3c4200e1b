"""``python -m gateway``: the ``reverbere`` command."""

from gateway.cli import cli

cli(prog_name="reverbere")
