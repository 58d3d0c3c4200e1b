"""The ingest fuzz target (fuzz/ingest.py): its seeds, its crash checks, and short runs.

tests/test_fuzz_decoders.py fuzzes each decoder and Ingest with hostile bytes, which never
carry a valid MAC, so they stop at 4.01. Here the inputs are signed with the registered node's
key, so that they reach SenML validation and the store; and atheris, coverage-guided, runs
the whole path (guarded transport, aiocoap, check_request, Ingest) for a bounded number of
inputs. The long run is in docs/gateway.md ("Fuzzing").
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from aiocoap.numbers.codes import Code
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz import seeds as fuzz_seeds
from fuzz.ingest import AGAIN, NODE_ID, SIGN, Target
from protocols import cbor, senml
from protocols.const import BN, BS, BT, BU, BV, CHANNELS, N, S, T, U, V

ROOT = Path(__file__).resolve().parent.parent
SHORT_RUNS = 2000  # about 5 s of fuzzing on a loaded 2-core CI machine


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    t = Target(tmp_path_factory.mktemp("fuzz-target"))
    yield t
    t.close()


def test_each_seed_has_the_outcome_it_documents(tmp_path):
    # A fresh target: the retransmission seed answers 2.04 because the pack before it was stored.
    t = Target(tmp_path)
    try:
        got = [(s.name, t.run(s.data)) for s in fuzz_seeds.seeds()]
    finally:
        t.close()
    assert got == [(s.name, s.expected) for s in fuzz_seeds.seeds()]


def test_the_seeds_are_written_one_a_file(tmp_path):
    paths = fuzz_seeds.write(tmp_path / "corpus")
    assert [p.read_bytes() for p in paths] == [s.data for s in fuzz_seeds.seeds()]


def test_a_fault_ingest_hides_behind_its_4_00_is_a_crash(target, monkeypatch):
    # The gateway answers an unforeseen exception with 4.00 "unexpected" so that the node
    # drops the pack; the fuzzer must see the exception itself, or it would find nothing.
    def boom(data, now):
        raise TypeError("a fault in the decoder")

    monkeypatch.setattr(senml, "decode", boom)
    with pytest.raises(TypeError, match="a fault in the decoder"):
        target.run(fuzz_seeds.seeds()[0].data)


# Structure-aware SenML: every label of RFC 8428 with values of the right type and of wrong
# ones, names of known and unknown channels, times relative, absolute, in and out of range.
names = st.sampled_from([*CHANNELS, f"{NODE_ID}:p", "other:p", ""]) | st.text(max_size=6)
units = st.sampled_from(sorted(set(CHANNELS.values()))) | st.text(max_size=4)
numbers = (
    st.integers(-(2**64), 2**64 - 1)
    | st.floats()
    | st.sampled_from([10**15, 10**15 + 1, 1e15, 2.5e15])
    | st.text(max_size=3)
)
times = st.integers(-500 * 86400, 3600) | st.integers(2**28 - 2, 2**28) | st.floats() | numbers
record = st.fixed_dictionaries(
    {},
    optional={
        BN: names,
        BT: times,
        BU: units,
        BV: numbers,
        BS: numbers,
        N: names,
        U: units,
        V: numbers,
        S: numbers,
        T: times,
    },
)
packs = st.lists(record, max_size=6).map(cbor.dumps) | st.lists(
    st.tuples(st.sampled_from(list(CHANNELS)), st.integers(-86400, 0), st.integers(0, 10**6)),
    min_size=1,
    max_size=8,
).map(senml.encode)


@settings(max_examples=150, deadline=None)
@given(packs, st.booleans())
def test_signed_packs_are_stored_or_refused_4_00_never_an_unexpected_error(target, pack, again):
    # Signed by the registered node with a fresh counter (or the last one again): past the
    # MAC, a pack is either stored (2.04) or refused by SenML validation (4.00). Target.run
    # also fails if a refusal moved the node's counter or a 2.04 came before the commit.
    mode = SIGN | (AGAIN if again else 0)
    outcome = target.run(bytes((mode,)) + fuzz_seeds.datagram(pack))
    assert outcome in (Code.CHANGED, Code.BAD_REQUEST)


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_a_short_coverage_guided_run_finds_no_crash_and_gets_past_the_mac(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "fuzz.atheris_ingest",
            str(corpus),
            f"-runs={SHORT_RUNS}",
            "-seed=1",
        ],
        cwd=tmp_path,  # a crash file would land here, not in the tree
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"#{SHORT_RUNS}\tDONE" in run.stderr
    # the seeds were written, and the fuzzer kept inputs that reached new code
    assert len(list(corpus.iterdir())) > len(fuzz_seeds.seeds())
    outcomes = re.findall(r"outcomes: (.*)", run.stderr)
    assert outcomes and "2.04 Changed" in outcomes[-1], run.stderr[-3000:]
