"""benchmarks/anomaly.py --quick, as CI runs it: the figures come out, and say something sane.

(The full run is by hand: ``python benchmarks/anomaly.py``; its figures are in
docs/anomalies.md.)"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_runs_and_detects():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "anomaly.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    report = json.loads(out.stdout)
    nab = report["nab"]
    if "skipped" not in nab:  # the NAB data set lives beside the project, in ../shared
        standard = nab["profiles"]["standard"]
        assert 0 < standard["default_alarms"] <= 100
        assert standard["tuned"] >= standard["default_threshold"]
    fleet = report["sim_fleet"]
    for key in ("anomalies_injected", "anomalies_found", "anomalies_missed", "false_alarms"):
        assert key in fleet
    assert fleet["anomalies_found"] >= fleet["anomalies_injected"] - 1
    assert report["fleet"]["false_events_per_node_week"] <= 1.0
    for cost in report["cost"].values():
        assert cost["state_bytes"] <= 4096


# -- The building-meter part (issue 14): the scorer by hand, then two real files, reduced ---------
sys.path.insert(0, str(ROOT / "benchmarks"))
import anomaly  # noqa: E402


def test_building_scorer_on_a_hand_made_case():
    # Ten hourly readings, two labelled runs: a drop-out (rows 2-4) and a raised night (row 7).
    values = [5.0, 5.2, 0.0, 0.0, 0.0, 5.1, 5.0, 9.0, 5.2, 5.1]
    labels = [0, 0, 1, 1, 1, 0, 0, 1, 0, 0]
    runs = anomaly.labelled_runs(labels)
    assert runs == [(2, 4), (7, 7)]
    times = [3600.0 * i for i in range(10)]
    assert anomaly.shape_of(runs[0], times, values, labels) == "drop-out"
    shapes = ["drop-out", "wrong time"]
    # An alarm 3 readings after a run still finds it; one 4 after is a false alarm.
    alarms = [False] * 10
    alarms[4] = True  # inside the drop-out
    assert anomaly.score_alarms(alarms, runs, shapes)["found"]["drop-out"] == [1, 1]
    late = [False] * 10
    late[1] = True  # before any run: false
    late[9] = True  # 2 readings after row 7: finds the raised night
    res = anomaly.score_alarms(late, runs, shapes)
    assert res["found"]["wrong time"] == [1, 1]
    assert res["found"]["drop-out"] == [0, 1]
    assert res["false"] == 1


def test_building_part_on_two_files_at_reduced_size():
    places = (ROOT.parent / "shared" / "data" / "lead-dev", Path("/work/shared/data/lead-dev"))
    folder = next((p for p in places if p.exists()), None)
    if folder is None:  # the labelled buildings live beside the project, in ../shared
        pytest.skip("no labelled building meters in ../shared/data/lead-dev")
    report = anomaly.run_buildings(folder, limit=2, rows=24 * 120)
    assert len(report["files"]) == 2
    ours = report["detectors"]["ours"]
    assert ours["runs"] > 0
    # The detector beats the rolling z-score on drop-outs and stuck meters, with few alarms.
    assert ours["recall_dropout_stuck"] >= 0.6
    assert (
        ours["recall_dropout_stuck"] > report["detectors"]["rolling z 7 d"]["recall_dropout_stuck"]
    )
    # A third of these 120 days is learning (a slot is judged after 3 days, a weekday once
    # seen): more false alarms than over a year (0.075 per building-day on the 7 files).
    assert ours["false_per_building_day"] <= 0.5
    assert set(ours["by_shape"]) == set(anomaly.SHAPES)


def test_sensitivity_moves_one_constant_at_a_time_and_puts_it_back(tmp_path):
    # --sensitivity sets a constant of buildings.py for a run: it must be restored after, or
    # every later figure (and the gateway, in the same process) would use the changed one.
    from gateway.pipeline.detect import buildings

    places = (ROOT.parent / "shared" / "data" / "lead-dev", Path("/work/shared/data/lead-dev"))
    folder = next((p for p in places if p.exists()), None)
    if folder is None:
        pytest.skip("no labelled building meters in ../shared/data/lead-dev")
    for path in sorted(folder.glob("*.csv"))[:2]:  # two buildings, their first 60 days
        lines = path.read_text().splitlines()[: 1 + 24 * 60]
        (tmp_path / path.name).write_text("\n".join(lines) + "\n")
    z_alarm = buildings.Z_ALARM
    sens = anomaly.run_sensitivity(tmp_path, names=("Z_ALARM",))
    assert z_alarm == buildings.Z_ALARM
    assert list(sens) == ["Z_ALARM x0.5", "Z_ALARM x2"]
    low, high = sens["Z_ALARM x0.5"], sens["Z_ALARM x2"]
    # A lower alarm threshold raises at least as many false alarms as a higher one.
    assert low["false_per_building_day"] >= high["false_per_building_day"]
