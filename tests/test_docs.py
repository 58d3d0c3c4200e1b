"""Docs cannot drift from the CLI: every ``reverbere`` command is described in docs/ or README."""

from pathlib import Path

import click
import pytest

from gateway.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md")) + (
    ROOT / "README.md"
).read_text(encoding="utf-8")


def commands(cmd: click.Command, path: tuple[str, ...]):
    yield " ".join(path)
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from commands(sub, (*path, name))


@pytest.mark.parametrize("command", list(commands(cli, ("reverbere",))))
def test_every_command_is_documented(command):
    assert command in DOCS, f"document `{command}` in docs/ (or README.md)"


@pytest.mark.parametrize("command", list(commands(cli, ("reverbere",))))
def test_every_command_has_help(command):
    cmd = cli
    for name in command.split()[1:]:
        cmd = cmd.commands[name]
    assert (cmd.help or "").strip(), f"`{command}` has no help text"
