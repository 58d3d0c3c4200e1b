"""The NAB scorer of benchmarks/nab.py on a case small enough to score by hand."""

import importlib.util
import math
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "nab", Path(__file__).resolve().parent.parent / "benchmarks" / "nab.py"
)
nab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nab)

STANDARD = nab.PROFILES["standard"]


def sig(x: float) -> float:
    return 2 / (1 + math.exp(5 * x)) - 1


def test_hand_case():
    # 20 rows: probation floor(0.15 * 20) = 3 rows; one window, rows 10..13 (width 4).
    # Detections at row 1 (probation: ignored), row 11 (in the window) and row 17 (after it).
    scores = [0.0] * 20
    scores[1] = scores[11] = scores[17] = 1.0
    corpus = nab.Corpus([nab.DataFile("f", [""] * 20, [0.0] * 20, [(10, 13)])], [scores])
    # Row 11 sits at -(13 - 11 + 1) / 4 = -0.75 of the window: sig(-0.75) / sig(-1) = 0.96699.
    tp = sig(-0.75) / sig(-1.0)
    # Row 17 is (17 - 13) / (4 - 1) = 1.333 window widths after it: sig(1.333) = -0.99746.
    fp = 0.11 * sig(4 / 3)
    assert tp == pytest.approx(0.96699, abs=1e-5)
    assert fp == pytest.approx(-0.10972, abs=1e-5)
    raw = corpus.raw(0.5, STANDARD)
    assert raw == pytest.approx(tp + fp)
    # Null detector: -1 (the one window missed); perfect: +1 (row 10, its first row).
    assert corpus.normalised(0.5, STANDARD) == pytest.approx(100 * (tp + fp + 1) / 2)
    assert corpus.normalised(0.5, STANDARD) == pytest.approx(92.86, abs=0.01)
    # Missing the window costs fn: the "reward low FN" profile doubles it.
    assert corpus.raw(1.5, nab.PROFILES["reward_low_FN_rate"]) == -2.0
    assert corpus.normalised(1.5, STANDARD) == 0.0


def test_only_earliest_detection_counts_and_sweep_finds_best():
    scores = [0.0] * 20
    scores[12], scores[10], scores[17] = 0.9, 0.6, 0.8
    corpus = nab.Corpus([nab.DataFile("f", [""] * 20, [0.0] * 20, [(10, 13)])], [scores])
    # At 0.5 the window is caught at its first row (full weight 1) and row 17 costs fp.
    assert corpus.raw(0.5, STANDARD) == pytest.approx(1.0 + 0.11 * sig(4 / 3))
    # Candidates: 0.9 catches the window late (row 12: 0.86), 0.8 adds the false positive,
    # 0.6 catches it at row 10 (1.0) but keeps the false positive (-0.11): 0.6 is best.
    thr, best = corpus.best_threshold(STANDARD)
    assert thr == 0.6
    assert best == pytest.approx(100 * (1.0 + 0.11 * sig(4 / 3) + 1) / 2)


def test_window_inside_probation_does_not_count():
    scores = [0.0] * 20
    corpus = nab.Corpus([nab.DataFile("f", [""] * 20, [0.0] * 20, [(0, 2), (10, 13)])], [scores])
    assert corpus.raw(0.5, STANDARD) == -1.0  # only the second window is scored
