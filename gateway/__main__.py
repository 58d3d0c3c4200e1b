"""``python -m gateway``: the ``reverbere`` command."""

from gateway.cli.main import cli

cli(prog_name="reverbere")
