"""Docs cannot drift from the code: every ``reverbere`` command is described in docs/ or README,
and every module path or ``gateway.*`` name the docs and docstrings mention exists."""

import ast
import functools
import importlib
import io
import re
import tokenize
from pathlib import Path
from typing import Any

import click
import pytest

from gateway import config
from gateway.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS = "\n".join(p.read_text(encoding="utf-8") for p in MARKDOWN)


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


# --- Module paths and dotted names the docs and docstrings mention must exist ----------------
#
# The gateway was reorganised into folders (ingest/, store/, pipeline/, sync/, provision/, cli/)
# and modules keep moving; a doc that names a file or a ``gateway.x.y`` that is gone sends a
# reader (or the integrator) to nothing. Every mention is checked against the tree and by import.

# A path: one of the project's top folders, then more path characters; not inside a longer path
# or URL (``docs/gateway.md``, ``v1/gateway/telemetry``, ``/var/lib/...``).
PATH_RE = re.compile(r"(?<![\w./~-])(?:gateway|protocols|firmware|sim|benchmarks)/[\w./*-]*")
# A dotted name ``gateway.x(.y...)``, not a file name (``gateway.toml``, ``docs/gateway.md``).
NAME_RE = re.compile(r"(?<![\w./~-])gateway(?:\.[A-Za-z_]\w*)+")
# A name relative to one of gateway/'s packages, as the docs write them in backquotes
# (`store.STAGES_IDLE`): those packages' __init__ files import nothing, so `store.X` is stale
# unless X is a submodule (or a configuration key such as `store.max_queue`).
RELATIVE_RE = re.compile(r"`((?:ingest|store|pipeline|sync|provision|cli)(?:\.[A-Za-z_]\w*)+)")
# from gateway.x import a, b / import gateway.x, in the docs' code samples and the docstrings.
IMPORT_RE = re.compile(
    r"^\s*(?:from\s+(gateway[\w.]*)\s+import\s+(?:\(([\w,\s]+)\)|([\w, ]+))"
    r"|import\s+(gateway[\w.]*))",
    re.M,
)


def _config_keys() -> set[str]:
    """``section.key`` of every table and key `gateway init` writes, commented-out ones too."""
    keys, table = set(), ""
    for line in config.TEMPLATE.splitlines():
        line = line.lstrip("# ")
        if m := re.match(r"\[+([\w.\"-]+)\]+", line):
            table = m.group(1)
            keys.add(table)
        elif m := re.match(r"(\w+)\s*=", line):
            keys.add(f"{table}.{m.group(1)}")
    return keys


CONFIG_KEYS = _config_keys()
FILE_SUFFIXES = {"toml", "md", "py", "json", "service", "db", "log", "svg", "png", "html", "csv"}


@functools.cache
def _prose_sources() -> list[tuple[str, int, str]]:
    """(file, first line, text) of README.md, docs/*.md, and the docstrings and comments of
    gateway/ (its code is checked by importing it; only its prose can silently go stale)."""
    out = [(str(p.relative_to(ROOT)), 1, p.read_text(encoding="utf-8")) for p in MARKDOWN]
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        source = path.read_text(encoding="utf-8")
        docstrings = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                body = node.body
                first = body[0].value if body and isinstance(body[0], ast.Expr) else None
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    docstrings.add((first.lineno, first.col_offset))
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT or (
                tok.type == tokenize.STRING and tok.start in docstrings
            ):
                out.append((rel, tok.start[0], tok.string))
    return out


def _mentions(regex: re.Pattern, *groups: int) -> list[tuple[str, Any]]:
    """(file:line, mention) for every match of ``regex`` in the prose: the whole match without
    a sentence's full stop, or the given group, or a tuple of the given groups."""
    found = []
    for rel, first, text in _prose_sources():
        for m in regex.finditer(text):
            mention = m.group(*groups) if groups else m.group(0).rstrip(".")
            found.append((f"{rel}:{first + text.count(chr(10), 0, m.start())}", mention))
    return found


def _path_exists(mention: str) -> bool:
    if mention.endswith(".mpy"):  # compiled on a build or a node: its source is in the tree
        mention = mention[: -len(".mpy")] + ".py"
    if "*" in mention:
        return any(ROOT.glob(mention))
    return (ROOT / mention).exists()


def _name_exists(dotted: str) -> bool:
    """True if ``dotted`` is a module, or an attribute (at any depth) of the longest module
    prefix of it that imports."""
    parts = dotted.split(".")
    if parts[-1] in FILE_SUFFIXES:
        return True  # a file name such as gateway.toml, not a Python name
    if dotted in CONFIG_KEYS:
        return True  # a configuration key: `gateway.database` is `database` in [gateway]
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as e:
            if e.name is None or not f"{dotted}.".startswith(f"{e.name}."):
                raise  # a dependency is missing, not the module named
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def _report(missing: list[tuple[str, str]], what: str) -> str:
    lines = [f"{len(missing)} {what} mentioned in the docs or docstrings do not exist:"]
    lines += [f"  {where}: {mention}" for where, mention in missing]
    lines.append("Point them at where the code lives now (or drop the mention).")
    return "\n".join(lines)


def test_every_path_mentioned_exists():
    missing = [(w, m) for w, m in _mentions(PATH_RE) if not _path_exists(m)]
    assert not missing, _report(missing, "paths")


def test_every_gateway_name_mentioned_exists():
    missing = [(w, m) for w, m in _mentions(NAME_RE) if not _name_exists(m)]
    assert not missing, _report(missing, "gateway.* names")


def _relative_exists(dotted: str) -> bool:
    """``store.X``: a configuration key, or ``gateway.store.X`` exists. ``store.mpy`` is a file
    of the node's build (firmware/store.py compiled), not a name."""
    if dotted.endswith((".mpy", ".py")):
        return True
    return dotted in CONFIG_KEYS or _name_exists(f"gateway.{dotted}")


def test_every_relative_gateway_name_mentioned_exists():
    missing = [(w, m) for w, m in _mentions(RELATIVE_RE, 1) if not _relative_exists(m)]
    assert not missing, _report(missing, "names relative to a gateway package")


def test_every_gateway_import_shown_works():
    missing = []
    for where, (module, inparens, names, plain) in _mentions(IMPORT_RE, 1, 2, 3, 4):
        names = (inparens or names or "").split(",")
        wanted = [plain] if plain else [f"{module}.{n.split(' as ')[0].strip()}" for n in names]
        missing += [(where, name) for name in wanted if name and not _name_exists(name)]
    assert not missing, _report(missing, "imported names")


def test_the_checks_catch_a_stale_mention():
    # The two checks above pass vacuously if the patterns match nothing: they must see the
    # mentions this file knows are there, and refuse what the reorganisation removed.
    assert ("README.md", "gateway/service.py") in {
        (w.split(":")[0], m) for w, m in _mentions(PATH_RE)
    }
    assert any(m == "gateway.store.commit" for _, m in _mentions(NAME_RE))
    assert not _path_exists("gateway/committer.py")
    assert _path_exists("firmware/node.mpy") and not _path_exists("firmware/nope.mpy")
    assert _name_exists("gateway.database") and not _name_exists("gateway.databases")
    assert not _name_exists("gateway.committer")
    assert not _name_exists("gateway.store.committer.NoSuchThing")
    assert _name_exists("gateway.store.committer.Committer")
    assert [m.group(0) for m in PATH_RE.finditer("docs/gateway.md v1/gateway/telemetry")] == []
    assert _relative_exists("store.max_queue")  # a [store] key, not a Python name
    assert _relative_exists("store.stages.STAGES_IDLE")
    assert not _relative_exists("store.STAGES_IDLE")  # the package imports nothing
    assert _relative_exists("store.mpy")  # a file of the node's build
    sample = "from gateway import config, registry\nimport gateway.ingest.coap\n"
    sample += "from gateway.store import (\n    db,\n    records,\n)\n"
    assert [m.groups() for m in IMPORT_RE.finditer(sample)] == [
        ("gateway", None, "config, registry", None),
        (None, None, None, "gateway.ingest.coap"),
        ("gateway.store", "\n    db,\n    records,\n", None, None),
    ]
