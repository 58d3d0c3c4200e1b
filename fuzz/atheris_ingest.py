"""Coverage-guided fuzzing of the ingest path (fuzz/ingest.py) with atheris (libFuzzer).

    python -m fuzz.atheris_ingest CORPUS_DIR [libFuzzer options]

The first directory is the corpus: the seeds (fuzz/seeds.py) are written into it when it
holds no file, and libFuzzer adds every input that reaches new code. Unless given,
``-max_len`` is set past ``max_payload`` so that the 4.13 branch stays reachable. A crash
(see fuzz/ingest.py for what counts) stops the run with a traceback and a ``crash-*`` file
that ``python -m fuzz.atheris_ingest crash-<hash>`` replays. docs/gateway.md ("Fuzzing")
gives the CI run and the long one.

libFuzzer ends the process with C ``exit()``, which runs no Python cleanup, so this runs in
two processes: the parent makes the gateway's temporary directory, runs the fuzzer in a child
(``--workdir``) and removes the directory whatever the child's end. The child prints how far
the inputs got (``outcomes:``, by answer) at every power of two from 1024 inputs on.

Coverage is measured on the code a datagram goes through and nothing else: ``protocols``,
``gateway.ingest`` and aiocoap's message and option decoding (``INSTRUMENTED``), instrumented
as they are imported. Not the store, the stages or the rest of aiocoap: the stages run in the
writer thread whenever they like, which would make coverage differ between two runs of one
input; the commits run in the writer process, out of the fuzzer's sight anyway.
"""

import importlib.util
import logging
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

WORKDIR = "--workdir="
INSTRUMENTED = ("protocols", "fuzz", "gateway.ingest", "aiocoap.message", "aiocoap.option")


def main(argv: list[str]) -> int:
    """Run the fuzzer in a child process with a fresh gateway directory; its exit code."""
    corpus = [a for a in argv[1:] if not a.startswith("-")]
    if corpus and Path(corpus[0]).is_dir() and not any(Path(corpus[0]).iterdir()):
        from fuzz import seeds  # the child imports it instrumented

        seeds.write(Path(corpus[0]))
    # a SIGTERM (timeout, CI cancelling) unwinds too, so that the directory goes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with tempfile.TemporaryDirectory(prefix="reverbere-fuzz-") as workdir:
        cmd = [sys.executable, "-m", "fuzz.atheris_ingest", WORKDIR + workdir, *argv[1:]]
        child = subprocess.Popen(cmd)
        try:
            return child.wait()
        finally:
            if child.poll() is None:
                child.terminate()
                child.wait()


def fuzz(workdir: Path, argv: list[str]) -> None:
    """The child: atheris on ``Target.run``; never returns (libFuzzer exits)."""
    import atheris

    # atheris includes whole top-level packages, and excludes modules one by one
    packages = sorted({name.partition(".")[0] for name in INSTRUMENTED})
    exclude = [m for p in packages for m in _modules(p) if not m.startswith(INSTRUMENTED)]
    with atheris.instrument_imports(include=packages, exclude=exclude):
        from fuzz.ingest import Target

    logging.disable(logging.CRITICAL)  # each refusal logs a warning: not per fuzz input
    target = Target(workdir)
    if not any(a.startswith("-max_len=") for a in argv):
        argv = [*argv, f"-max_len={target.cfg.max_payload + 128}"]
    runs = 0

    def one_input(data: bytes) -> None:
        nonlocal runs
        target.run(data)
        runs += 1
        if runs >= 1024 and not runs & (runs - 1):
            counts = ", ".join(f"{k}: {n}" for k, n in target.outcomes.most_common())
            print(f"#{runs}\toutcomes: {counts}", file=sys.stderr, flush=True)

    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def _modules(package: str) -> list[str]:
    """The names of every module of ``package``, found on disk without importing them."""
    spec = importlib.util.find_spec(package)
    out = []
    for root in spec.submodule_search_locations or ():
        for path in Path(root).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            out.append(".".join((package, *parts[: -1 if parts[-1] == "__init__" else None])))
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith(WORKDIR):
        fuzz(Path(sys.argv[1].removeprefix(WORKDIR)), [sys.argv[0], *sys.argv[2:]])
    sys.exit(main(sys.argv))
