"""Anomalies found against those injected: the figures the demo and benchmarks/anomaly.py print.

``evaluate(events, truth)`` matches the gateway's anomaly events (rows of the ``anomalies``
table) with the injected anomalies (``sim.profiles.Anomaly`` or dicts with node, kind, start,
end): an injected anomaly is found when an event of the same node overlaps its window (widened
by ``slack`` seconds after its end, for detectors that need a few readings to be sure); an event
that overlaps no injected anomaly of its node is a false alarm.
"""

import statistics
from collections.abc import Iterable

# The detector's name for each injected kind, where they differ.
EXPECTED_KIND = {
    "out_at_night": "dark_at_night",
    "spike": "unusual",
    # A building's meter (gateway/pipeline/detect/buildings.py): a size it draws at other hours.
    "night_base_load": "wrong_time",
    "holiday_as_workday": "wrong_time",
}


def _get(a, key):
    return a[key] if isinstance(a, dict) else getattr(a, key)


def evaluate(events: Iterable[dict], truth: Iterable, slack: float = 3600.0) -> dict:
    """``anomalies_injected``, ``anomalies_found``, ``anomalies_missed``, ``false_alarms``, and
    per injected kind: injected, found, recall, median delay (minutes, from the window's start to
    the first matching event) and the event kinds that found it."""
    events = list(events)
    truth = list(truth)
    matched: set[int] = set()
    per_kind: dict[str, dict] = {}
    delays: dict[str, list[float]] = {}
    for a in truth:
        node, kind, a0, a1 = _get(a, "node"), _get(a, "kind"), _get(a, "start"), _get(a, "end")
        hits = [
            e
            for e in events
            if e["node"] == node
            and e["start"] <= a1 + slack
            and (e["end"] is None or e["end"] >= a0)
        ]
        k = per_kind.setdefault(kind, {"injected": 0, "found": 0, "found_as": {}})
        k["injected"] += 1
        if hits:
            k["found"] += 1
            first = min(hits, key=lambda e: e["start"])
            delays.setdefault(kind, []).append(max(0.0, first["start"] - a0) / 60)
            k["found_as"][first["kind"]] = k["found_as"].get(first["kind"], 0) + 1
            matched.update(id(e) for e in hits)
    for kind, k in per_kind.items():
        k["recall"] = round(k["found"] / k["injected"], 3)
        d = delays.get(kind)
        k["median_delay_min"] = round(statistics.median(d), 1) if d else None
    false = [e for e in events if id(e) not in matched]
    return {
        "anomalies_injected": len(truth),
        "anomalies_found": sum(k["found"] for k in per_kind.values()),
        "anomalies_missed": sum(k["injected"] - k["found"] for k in per_kind.values()),
        "false_alarms": len(false),
        "false_alarm_kinds": _count(e["kind"] for e in false),
        "per_kind": per_kind,
    }


def _count(items) -> dict:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out
