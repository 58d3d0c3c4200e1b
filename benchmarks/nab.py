"""The Numenta Anomaly Benchmark's scoring method, written from its description (no NAB code).

A detector gives every row of a series a score in [0, 1]; a row "detects" when its score is at or
above a threshold. Per data file:

* the first 15 % of the rows (at most 750) are a probation period: they are not scored, and a
  labelled window lying wholly inside it does not count;
* inside a labelled window only the earliest detection counts, weighted by the scaled sigmoid of
  its relative position (the window's first row earns the full ``tp`` weight, its last about 0);
* every detection outside a window is a false positive, weighted by ``fp`` times the scaled sigmoid
  of its distance from the end of the previous window (a detection just after a window costs
  little, one far from any window costs the full ``fp``);
* a window without any detection costs ``fn``.

Over a corpus the raw scores are summed, then normalised as
``100 * (S - S_null) / (S_perfect - S_null)``, where the null detector never detects and the
perfect one detects each window at its first scorable row. NAB's convention picks, per profile,
the one threshold that maximises the corpus score; :func:`best_threshold` does that exactly by
sweeping every distinct score.
"""

import csv
import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

PROBATION_FRACTION = 0.15
PROBATION_MAX = 750  # NAB: 15 % of 5000 rows

# The three cost profiles of NAB's profiles.json (tp, fp, fn weights).
PROFILES = {
    "standard": {"tp": 1.0, "fp": 0.11, "fn": 1.0},
    "reward_low_FP_rate": {"tp": 1.0, "fp": 0.22, "fn": 1.0},
    "reward_low_FN_rate": {"tp": 1.0, "fp": 0.11, "fn": 2.0},
}


def scaled_sigmoid(position: float) -> float:
    """NAB's weight of a detection at a relative ``position``: -1 at a window's left edge gives
    about +0.987, 0 (its right edge) gives 0, +1 (one window width after it) about -0.987;
    3 or more gives -1."""
    if position >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


MAX_TP = scaled_sigmoid(-1.0)


def probation_length(rows: int) -> int:
    return int(min(math.floor(PROBATION_FRACTION * rows), PROBATION_MAX))


@dataclass(frozen=True)
class Row:
    """One scorable row: the detector's score, and what a detection here would be worth."""

    score: float
    window: int | None  # index of the labelled window it falls in, else None
    tp: float  # unweighted sigmoid value if in a window (scaled by tp weight / MAX_TP)
    fp: float  # unweighted sigmoid value (<= 0) if outside windows


def label_rows(n: int, windows: list[tuple[int, int]]) -> tuple[list, set[int]]:
    """Per row: (window index or None, weight before the profile's cost) and the set of windows
    that count. ``windows`` are (first row, last row) index pairs, sorted, not overlapping."""
    probation = probation_length(n)
    out = []
    win_at = {}
    for k, (a, b) in enumerate(windows):
        for i in range(a, b + 1):
            win_at[i] = k
    prev_end = prev_width = None
    for i in range(n):
        k = win_at.get(i)
        if k is not None:
            a, b = windows[k]
            width = b - a + 1
            weight = scaled_sigmoid(-(b - i + 1) / width) / MAX_TP
            if i == b:
                prev_end, prev_width = b, width
        elif prev_end is None:
            weight = scaled_sigmoid(3.0)
        else:
            # A window of one row has no width to measure by: treat as far away.
            weight = (
                scaled_sigmoid(abs(i - prev_end) / (prev_width - 1)) if prev_width > 1 else -1.0
            )
        out.append(None if i < probation else (k, weight))
    counted = {r[0] for r in out if r is not None and r[0] is not None}
    return out, counted


@dataclass
class DataFile:
    name: str
    times: list[str]
    values: list[float]
    windows: list[tuple[int, int]]


def load_corpus(root: str | Path, names: list[str] | None = None) -> list[DataFile]:
    """Read NAB's data/ and labels/combined_windows.json under ``root``."""
    root = Path(root)
    labels = json.loads((root / "labels" / "combined_windows.json").read_text())
    files = []
    for name in sorted(labels):
        if names is not None and name not in names:
            continue
        with open(root / "data" / name, newline="") as f:
            rows = list(csv.reader(f))[1:]
        times = [r[0] for r in rows]
        values = [float(r[1]) for r in rows]
        stamps = [_parse(t) for t in times]
        windows = []
        for start, end in labels[name]:
            s, e = _parse(start), _parse(end)
            idx = [i for i, t in enumerate(stamps) if s <= t <= e]
            if idx:
                windows.append((idx[0], idx[-1]))
        files.append(DataFile(name, times, values, windows))
    return files


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.strip())


def file_score(scores: list[float], windows, threshold: float, profile: dict) -> float:
    """Raw NAB score of one file at one threshold."""
    rows, counted = label_rows(len(scores), windows)
    return _score(scores, rows, counted, threshold, profile)


def _score(scores, rows, counted, threshold, profile) -> float:
    best = {}
    fp = 0.0
    for s, r in zip(scores, rows, strict=True):
        if r is None or s < threshold:
            continue
        k, w = r
        if k is None:
            fp += w * profile["fp"]
        elif k not in best:
            best[k] = w * profile["tp"]  # rows come in order: the first is the earliest
    return fp + sum(best.get(k, -profile["fn"]) for k in counted)


def bounds(rows, counted, profile) -> tuple[float, float]:
    """(S_null, S_perfect) of one file."""
    null = -profile["fn"] * len(counted)
    first = {}
    for r in rows:
        if r is not None and r[0] is not None and r[0] not in first:
            first[r[0]] = r[1] * profile["tp"]
    return null, sum(first.values())


class Corpus:
    """Scores of one detector over a list of files, ready to be scored at any threshold."""

    def __init__(self, files: list[DataFile], scores: list[list[float]]):
        self.files = files
        self.scores = scores
        self.labelled = [label_rows(len(f.values), f.windows) for f in files]

    def raw(self, threshold: float, profile: dict) -> float:
        return sum(
            _score(s, rows, counted, threshold, profile)
            for s, (rows, counted) in zip(self.scores, self.labelled, strict=True)
        )

    def normalised(self, threshold: float, profile: dict) -> float:
        null = perfect = 0.0
        for rows, counted in self.labelled:
            n, p = bounds(rows, counted, profile)
            null += n
            perfect += p
        return 100.0 * (self.raw(threshold, profile) - null) / (perfect - null)

    def best_threshold(self, profile: dict) -> tuple[float, float]:
        """(threshold, normalised score) maximising the corpus score, over every distinct score.

        Sweeps rows from the highest score down, keeping each window's earliest detection, so
        the whole sweep costs one sort."""
        null = perfect = 0.0
        events = []  # (score, file index, row index)
        for fi, (s, (rows, counted)) in enumerate(zip(self.scores, self.labelled, strict=True)):
            n, p = bounds(rows, counted, profile)
            null += n
            perfect += p
            for i, r in enumerate(rows):
                if r is not None and s[i] > 0:
                    events.append((s[i], fi, i))
        events.sort(key=lambda e: -e[0])
        current = null
        fp_sum = 0.0
        earliest: dict[tuple[int, int], int] = {}
        best_score, best_thr = current, 1.0 + 1e-9
        j = 0
        while j < len(events):
            thr = events[j][0]
            while j < len(events) and events[j][0] == thr:
                _, fi, i = events[j]
                k, w = self.labelled[fi][0][i]
                if k is None:
                    current += w * profile["fp"]
                    fp_sum += w * profile["fp"]
                else:
                    key = (fi, k)
                    old = earliest.get(key)
                    if old is None or i < old:
                        rows = self.labelled[fi][0]
                        before = -profile["fn"] if old is None else rows[old][1] * profile["tp"]
                        earliest[key] = i
                        current += w * profile["tp"] - before
                j += 1
            if current > best_score:
                best_score, best_thr = current, thr
        return best_thr, 100.0 * (best_score - null) / (perfect - null)
