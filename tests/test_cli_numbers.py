"""Bounded numbers of the commands (``gateway.cli.options.number_option``): the gateway's
``fleet update`` and the simulator's ``sim`` commands declare them the same way, so each says
its range and default in ``--help`` and refuses a value out of it in one line naming it."""

import pytest
from click.testing import CliRunner

from gateway.cli.main import cli


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["fleet", "update", "--version", "2", "--canary", "-1"], "--canary"),
        (["fleet", "update", "--version", "0"], "--version"),
        (["fleet", "update", "--version", "2", "--every", "0.5"], "--every"),
        (["sim", "net", "--loss", "1.5"], "--loss"),
        (["sim", "fleet", "--nodes", "0"], "--nodes"),
        (["sim", "fleet", "--anomalies", "-2"], "--anomalies"),
        (["sim", "platform", "--fault-rate", "2"], "--fault-rate"),
    ],
)
def test_a_number_out_of_range_is_one_line_naming_the_option(args, option):
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 2
    error = out.output.strip().splitlines()[-1]
    assert error.startswith(f"Error: Invalid value for '{option}'") and "range" in error


def test_help_says_each_range_and_default():
    fleet = CliRunner().invoke(cli, ["fleet", "update", "--help"]).output
    assert "[default: 2; 0<=x<=10000]" in fleet  # --canary
    net = CliRunner().invoke(cli, ["sim", "net", "--help"]).output
    assert "Share of datagrams lost.  [default: 0.0;" in net
    assert "--seed INTEGER" in net and "Seed of the random choices.  [default: 0]" in net
