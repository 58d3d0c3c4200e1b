"""benchmarks/anomaly.py --quick, as CI runs it: the figures come out, and say something sane.

(The full run is by hand: ``python benchmarks/anomaly.py``; its figures are in
docs/anomalies.md.)"""

import json
import subprocess
import sys
from pathlib import Path

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
