"""Evaluate the gateway's anomaly detection; print figures.

    python benchmarks/anomaly.py            # full: NAB's 58 series, a 2-week synthetic fleet
    python benchmarks/anomaly.py --quick    # reduced, for CI (a few NAB series, 4 days)
    python benchmarks/anomaly.py --fleet-days 7 --fleet-nodes 10   # the simulated fleet alone

1. NAB (../shared/data/nab, or --nab DIR): every series runs through
   ``gateway.pipeline.detect.replay(kind="generic")``, the very detectors of the gateway,
   and is scored
   with NAB's method (benchmarks/nab.py) for the three profiles, with the threshold tuned over the
   corpus (NAB's convention) and with the fixed default threshold.
2. The simulated fleet's profiles and ground truth (sim/profiles.py: street lights, buildings,
   ``plan_anomalies``), sampled at the nodes' channel intervals straight into the real detect
   stage on a real SQLite file: recall per injected kind, median delay, false alarms per node per
   week (sim/groundtruth.py). Then this script's own labelled fleet, which adds what the sim's
   profiles do not inject (consumption outside a building's schedule, a step in temperature):
   event-level precision and recall per kind, median delay, false events per node per week.
3. Cost: microseconds per reading per channel (detectors alone, and the whole stage with SQLite),
   bytes of packed state per channel.
4. Building meters with labelled anomalies (../shared/data/lead-dev, or --buildings DIR, files of
   ``timestamp,value,label``): each file through ``replay(kind="power")``, the code path of
   ``reverbere anomalies replay --kind power``; per anomaly shape (drop-out, stuck, spike, dip,
   wrong time) the labelled runs found (an alarm inside the run or within 3 readings after it),
   false alarms (alarms elsewhere) per building-day, NAB's standard score (runs as windows,
   alarms as detections), beside two references measured on the same files: a rolling z-score
   over 7 days (|z| > 4) and an hour-of-week median over 4 weeks (> 5 MAD). Also for the first
   and the second half of the files, and per building. ``--buildings-only`` runs only this part;
   ``--sensitivity`` adds ours with each main constant of buildings.py at half and twice its
   value (``SENSITIVITY``): figures that hold across that range are not fitted to the files.
"""

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import nab  # noqa: E402

from gateway.pipeline.detect import DEFAULT_THRESHOLD, DetectConfig, Detector, replay  # noqa: E402
from gateway.pipeline.detect.config import Schedule, _parse_days  # noqa: E402
from gateway.pipeline.detect.engine import ChannelDetector  # noqa: E402
from gateway.pipeline.detect.rules import Clock  # noqa: E402
from gateway.store.db import open_db  # noqa: E402
from gateway.store.records import Reading  # noqa: E402

PUBLISHED = {  # NAB standard profile, from NAB's scoreboard
    "ARTime": 74.9,
    "Numenta HTM": "70.1-70.5",
    "CAD OSE": 69.9,
    "KNN CAD": 58.0,
    "Random Cut Forest": 51.7,
    "Windowed Gaussian": 39.6,
}
QUICK_FILES = [
    "artificialWithAnomaly/art_daily_jumpsup.csv",
    "realAWSCloudwatch/ec2_cpu_utilization_5f5533.csv",
    "realKnownCause/ec2_request_latency_system_failure.csv",
    "realTraffic/speed_t4013.csv",
    "realTweets/Twitter_volume_CRM.csv",
    "artificialNoAnomaly/art_daily_small_noise.csv",
]


# -- 1. NAB -------------------------------------------------------------------------------------
def run_nab(root: Path, quick: bool) -> dict:
    files = nab.load_corpus(root, QUICK_FILES if quick else None)
    scores, alarms = [], []
    n = 0
    t0 = time.perf_counter()
    for f in files:
        rows = [(_ts(t), v) for t, v in zip(f.times, f.values, strict=True)]
        s, a = [], []
        for _, score, alarm in replay(rows, kind="generic"):
            s.append(score)
            a.append(1.0 if alarm else 0.0)
        scores.append(s)
        alarms.append(a)
        n += len(rows)
    elapsed = time.perf_counter() - t0
    by_score, by_alarm = nab.Corpus(files, scores), nab.Corpus(files, alarms)
    out = {
        "files": len(files),
        "rows": n,
        "windows": sum(len(f.windows) for f in files),
        "us_per_row_replay": round(1e6 * elapsed / n, 1),
        "profiles": {},
    }
    for name, profile in nab.PROFILES.items():
        thr, tuned = by_score.best_threshold(profile)
        out["profiles"][name] = {
            "tuned": round(tuned, 1),
            "tuned_threshold": round(thr, 4),
            "default_threshold": round(by_score.normalised(DEFAULT_THRESHOLD, profile), 1),
            "default_alarms": round(by_alarm.normalised(0.5, profile), 1),
        }
    return out


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# -- 2. A labelled synthetic fleet ----------------------------------------------------------------
SITE = {"latitude": 45.76, "longitude": 4.84, "timezone": "Europe/Paris"}
SCHOOL = Schedule(
    ("school-*",),
    _parse_days("k", "mon-fri"),
    *[datetime.strptime(x, "%H:%M").time() for x in ("07:30", "18:30")],
)


def make_fleet(days: int, lamps: int, buildings: int, seed: int = 7):
    """Readings (time-ordered) and ground truth [(node, kind, start, end)]."""
    rng = random.Random(seed)
    cfg = DetectConfig(**SITE, buildings=(SCHOOL,))
    clock = Clock(cfg)
    t0 = int(datetime(2026, 10, 5, tzinfo=UTC).timestamp())  # a Monday
    end = t0 + days * 86400
    readings: list[Reading] = []
    truth = []
    inject_from = t0 + 3 * 86400  # three days to learn first

    def pick(length: float) -> float:
        return rng.uniform(inject_from, end - length - 3600)

    lamp_kinds = ["lit_by_day", "dark_at_night", "silent", "drift", "stuck"]
    for i in range(lamps):
        node = f"lamp-{i + 1:03d}"
        kind = lamp_kinds[i % len(lamp_kinds)]
        nominal = rng.uniform(55, 120)
        a0 = a1 = None
        if kind == "lit_by_day":
            day = rng.randrange(3, days)
            a0 = t0 + day * 86400 + 10 * 3600 + rng.uniform(0, 3 * 3600)  # late morning UTC
            a1 = a0 + 2 * 3600
        elif kind == "dark_at_night":
            day = rng.randrange(3, days - 1)
            a0 = t0 + day * 86400 + 20 * 3600 + rng.uniform(0, 3600)
            a1 = a0 + 2 * 3600
        elif kind == "silent":
            a0 = pick(3 * 3600)
            a1 = a0 + 3 * 3600
        elif kind == "stuck":
            a0 = t0 + rng.randrange(3, days - 1) * 86400 + 21 * 3600
            a1 = a0 + 3 * 3600
        drift_from = t0 + 3 * 86400
        drift_days = max(1.0, (days - 3) * 0.8)
        stuck_value = None
        for k in range(days * 1440):
            t = t0 + 60 * k + rng.uniform(0, 2)
            sun = clock.sun(t)
            rise, set_ = sun
            lit = t > set_ + 300 or t < rise - 300
            loc_h = (clock.local(t) // 3600) % 24
            level = nominal * (0.6 if 0 <= loc_h < 5 else 1.0)  # dimmed after midnight
            if kind == "drift" and t > drift_from:
                level *= 1 + 0.25 * min(1.0, (t - drift_from) / (drift_days * 86400))
            p = level + rng.gauss(0, 0.01 * nominal) if lit else 0.0
            if a0 is not None and a0 <= t < a1:
                if kind == "lit_by_day":
                    p = nominal + rng.gauss(0, 0.01 * nominal)
                elif kind == "dark_at_night":
                    p = 0.0
                elif kind == "silent":
                    continue
                elif kind == "stuck":
                    stuck_value = p if stuck_value is None else stuck_value
                    p = stuck_value
            readings.append(Reading(node, "p", t, round(p, 2)))
        if kind == "drift":
            # The truth starts when the excess crosses the documented drift_percent (10 %).
            a0 = drift_from + 0.4 * drift_days * 86400
            a1 = end
        truth.append((node, kind, a0, a1))

    b_kinds = ["off_schedule", "counter_reset", "unusual"]
    for i in range(buildings):
        node = f"school-{i + 1:02d}"
        kind = b_kinds[i % len(b_kinds)]
        base, busy = rng.uniform(200, 500), rng.uniform(2000, 5000)
        if kind == "off_schedule":
            day = rng.choice([d for d in range(3, days) if (d % 7) < 4])
            a0 = t0 + day * 86400 + 19.5 * 3600
            a1 = a0 + 3 * 3600
        elif kind == "counter_reset":
            a0 = pick(600)
            a1 = a0 + 600
        else:
            a0 = pick(3 * 3600)
            a1 = a0 + 3 * 3600
        energy = rng.uniform(1e5, 1e6)
        reset_done = False
        for k in range(days * 288):  # every 5 minutes
            t = t0 + 300 * k + rng.uniform(0, 2)
            wd, now = clock.weekday_time(t)
            p = busy if SCHOOL.is_open(wd, now) else base
            p *= 1 + rng.gauss(0, 0.05)
            if kind == "off_schedule" and a0 <= t < a1:
                p = busy * (1 + rng.gauss(0, 0.05))
            energy += p * 300 / 3600
            if kind == "counter_reset" and t >= a0 and not reset_done:
                energy, reset_done = 0.0, True
            temp = 20 + 2 * math.sin(2 * math.pi * ((t - t0) % 86400) / 86400) + rng.gauss(0, 0.2)
            if kind == "unusual" and a0 <= t < a1:
                temp += 8
            readings.append(Reading(node, "p", t, round(p, 1)))
            readings.append(Reading(node, "e", t + 0.5, round(energy, 1)))
            readings.append(Reading(node, "t", t + 1, round(temp, 2)))
        truth.append((node, kind, a0, a1))
    readings.sort(key=lambda r: r.time)
    return cfg, readings, truth, lamps + buildings


def run_fleet(days: int, lamps: int, buildings: int) -> dict:
    cfg, readings, truth, nodes = make_fleet(days, lamps, buildings)
    with tempfile.TemporaryDirectory() as d:
        db = open_db(os.path.join(d, "gateway.store.db"))
        detect = Detector(cfg)
        t0 = time.perf_counter()
        batch = 50  # about what one group commit carries
        for k in range(0, len(readings), batch):
            detect(db, readings[k : k + batch])
        stage_us = 1e6 * (time.perf_counter() - t0) / len(readings)
        events = list(db.query("SELECT * FROM anomalies"))
        sizes = [len(s) for (s,) in db.execute("SELECT state FROM detect_state")]
    slack = 3 * 3600
    kinds = sorted({k for _, k, _, _ in truth})
    per_kind = {}
    matched_events = set()
    for kind in kinds:
        cases = [t for t in truth if t[1] == kind]
        found, delays = 0, []
        for node, _, a0, a1 in cases:
            hits = [
                e
                for e in events
                if e["node"] == node
                and e["kind"] == kind
                and e["start"] <= a1 + slack
                and (e["end"] is None or e["end"] >= a0 - 60)
            ]
            if hits:
                found += 1
                first = min(hits, key=lambda e: e["start"])
                delays.append(max(0.0, first["start"] - a0))
                matched_events.update(e["id"] for e in hits)
        per_kind[kind] = {
            "injected": len(cases),
            "found": found,
            "recall": round(found / len(cases), 3),
            "median_delay_min": round(statistics.median(delays) / 60, 1) if delays else None,
        }
    # Events that explain an injected anomaly of another kind (e.g. "unusual" at a lamp that went
    # dark) are not false alarms; anything else is.
    for e in events:
        if e["id"] in matched_events:
            continue
        for node, _, a0, a1 in truth:
            if (
                e["node"] == node
                and e["start"] <= a1 + slack
                and (e["end"] is None or e["end"] >= a0 - 60)
            ):
                matched_events.add(e["id"])
    false = [e for e in events if e["id"] not in matched_events]
    # Precision per kind of event: the share of its events that point at an injected anomaly
    # (of any kind: an "unusual" temperature at a school counts when the school has a fault).
    for kind in sorted({e["kind"] for e in events} | set(per_kind)):
        mine = [e for e in events if e["kind"] == kind]
        per_kind.setdefault(kind, {"injected": 0})["events"] = len(mine)
        per_kind[kind]["precision"] = (
            round(sum(e["id"] in matched_events for e in mine) / len(mine), 3) if mine else None
        )
    weeks = days / 7
    return {
        "days": days,
        "nodes": nodes,
        "readings": len(readings),
        "events": len(events),
        "per_kind": per_kind,
        "false_events": len(false),
        "false_events_per_node_week": round(len(false) / nodes / weeks, 3),
        "false_by_kind": _count(e["kind"] for e in false),
        "stage_us_per_reading": round(stage_us, 1),
        "state_bytes_max": max(sizes),
        "state_bytes_median": int(statistics.median(sizes)),
        "anomalies_injected": len(truth),
        # (a kind of event that was not injected has no "found")
        "anomalies_found": sum(v.get("found", 0) for v in per_kind.values()),
        "anomalies_missed": sum(v["injected"] - v.get("found", 0) for v in per_kind.values()),
        "false_alarms": len(false),
    }


def _count(items) -> dict:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


# -- 2b. The simulated fleet's own profiles and ground truth (sim/profiles.py) --------------------
def run_sim_fleet(days: int, nodes: int, seed: int = 3) -> dict:
    """The readings the fleet's nodes sample (sim.profiles: street lights, buildings, injected
    anomalies from plan_anomalies, the town's closing days), at their channels' intervals,
    straight into the detect stage (no radio: the network's losses are the gateway tests'
    business). Run it a week or more: the statistical detector speaks after three days and
    its false events show once it has learnt (issue 14)."""
    from sim.fleet import kind_of, make_keys
    from sim.groundtruth import evaluate
    from sim.profiles import (
        LATITUDE,
        LONGITUDE,
        Building,
        StreetLight,
        closing_days,
        plan_anomalies,
    )

    ids = sorted(make_keys(nodes, seed))
    start = float(datetime(2026, 10, 5, tzinfo=UTC).timestamp())  # a Monday, in autumn
    duration = days * 86400
    closed = closing_days(start, duration)
    truth = plan_anomalies({n: kind_of(n) for n in ids}, start, duration, len(ids), seed, closed)
    tmp = tempfile.TemporaryDirectory()
    closing = Path(tmp.name) / "closing-days.txt"
    closing.write_text("".join(f"{date.fromordinal(719163 + d)}\n" for d in closed))
    cfg = DetectConfig.from_mapping(
        {
            "latitude": LATITUDE,
            "longitude": LONGITUDE,
            "timezone": "Etc/GMT-1",  # UTC+1
            "lamps": ["lamp-*"],
            "buildings": [
                {"nodes": ["bldg-*"], "days": "mon-fri", "open": "08:00", "close": "18:00"}
            ],
            "closing_days": str(closing),
        }
    )
    readings: list[Reading] = []
    for node in ids:
        mine = tuple(a for a in truth if a.node == node)
        if kind_of(node) == "building":
            prof = Building(node, seed, mine, closing_days=closed)
        else:
            prof = StreetLight(node, seed, mine)
        sched = sorted(
            (t, ch)
            for ch, every in prof.channels.items()
            for t in range(int(start), int(start + duration), every)
        )
        for t, ch in sched:
            if prof.silent(t) is not None:
                continue
            v = prof.read(ch, t)
            if v is not None:
                readings.append(Reading(node, ch, float(t), round(v, 3)))
    readings.sort(key=lambda r: r.time)
    with tempfile.TemporaryDirectory() as d:
        db = open_db(os.path.join(d, "gateway.store.db"))
        detect = Detector(cfg)
        for k in range(0, len(readings), 50):
            detect(db, readings[k : k + 50])
        events = list(db.query("SELECT * FROM anomalies"))
    tmp.cleanup()
    out = evaluate(events, truth)
    out.update(
        {
            "days": days,
            "nodes": len(ids),
            "readings": len(readings),
            "false_alarms_per_node_week": round(out["false_alarms"] / len(ids) / (days / 7), 3),
        }
    )
    return out


# -- 3. Cost of the detectors alone ---------------------------------------------------------------
COST_TARGET_US = 20.0  # microseconds per reading, detectors alone (issue 14)
COST_TARGET_BYTES = 4096  # bytes of packed state per channel (engine.MAX_STATE)
# How nodes send: power every minute or every 10 minutes, or an energy counter read hourly.
COST_CADENCES = (("p every minute", "p", 60), ("p every 10 min", "p", 600), ("e hourly", "e", 3600))


def cost_series(node: str, channel: str, every: int, n: int) -> list[tuple[float, float]]:
    """``n`` readings of a street light (``lamp-*``) or a school (sim/profiles.py), a channel
    read every ``every`` seconds from a Monday in October."""
    from sim.profiles import Building, StreetLight

    profile = StreetLight(node, 1) if node.startswith("lamp-") else Building(node, 1)
    t0 = datetime(2026, 10, 5, tzinfo=UTC).timestamp()
    return [(t0 + every * k, profile.read(channel, t0 + every * k)) for k in range(n)]


def run_cost(n: int, repeat: int = 3) -> dict:
    """Microseconds per reading of one channel's detectors (``ChannelDetector.step``, no
    SQLite) in CPU time of this process, the best of ``repeat`` runs (the machine is shared:
    the least disturbed run), and the largest packed state (``ChannelDetector.dumps``, looked
    at every 500 readings), for a generic channel and for a lamp's and a school's channels at
    each cadence."""
    cfg = DetectConfig(**SITE, buildings=(SCHOOL,))
    rng = random.Random(1)
    generic = []
    for k in range(n):
        generic.append(
            (1.79e9 + 60 * k, 60 + rng.gauss(0, 1) if (k // 600) % 2 else rng.gauss(0, 0.1))
        )
    cases = [("generic x every minute", "x", "x", generic)]
    for what, node in (("lamp", "lamp-001"), ("building", "school-01")):
        for label, channel, every in COST_CADENCES:
            cases.append((f"{what} {label}", node, channel, cost_series(node, channel, every, n)))
    out = {}
    for label, node, channel, rows in cases:
        best, size = math.inf, 0
        for run in range(repeat):
            cd = ChannelDetector(node, channel, cfg, Clock(cfg))
            spent = 0.0
            for i in range(0, len(rows), 500):
                t0 = time.process_time()
                for t, v in rows[i : i + 500]:
                    cd.step(t, v)
                spent += time.process_time() - t0
                if run == 0:
                    size = max(size, len(cd.dumps()))
            best = min(best, spent)
        out[label] = {"us_per_reading": round(1e6 * best / len(rows), 1), "state_bytes": size}
    return out


def print_cost(cost: dict) -> None:
    """The cost table, each figure beside its target."""
    print("Cost per channel: detectors alone, CPU time, best of 3 runs; largest state")
    print(f"{'channel':<30}{'us/reading':>11}{'target':>8}{'state B':>9}{'target':>8}")
    for label, c in cost.items():
        us, size = c["us_per_reading"], c["state_bytes"]
        flag = "" if us <= COST_TARGET_US and size <= COST_TARGET_BYTES else "  over"
        print(
            f"{label:<30}{us:>11}{'<= ' + str(round(COST_TARGET_US)):>8}"
            f"{size:>9}{'<= ' + str(COST_TARGET_BYTES):>8}{flag}"
        )


# -- 4. Building meters with labelled anomalies (LEAD 1.0 extract) -------------------------------
SHAPES = ("drop-out", "stuck", "spike", "dip", "wrong time")
AFTER = 3  # readings after a labelled run in which an alarm still finds it
# The site's clock without a zone, and no calendar: the buildings' country is not given.
BUILDING_CONFIG = {"timezone": "UTC", "country": ""}


def load_building(path: Path) -> tuple[list[float], list[float], list[int]]:
    """``timestamp,value,label`` rows: Unix times (the local clock read as UTC), values, labels."""
    import csv

    times, values, labels = [], [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            times.append(_ts(row["timestamp"]))
            values.append(float(row["value"]))
            labels.append(int(row["label"]))
    return times, values, labels


def labelled_runs(labels: list[int]) -> list[tuple[int, int]]:
    """(first, last) row index of each run of label 1."""
    runs, i = [], 0
    while i < len(labels):
        if labels[i]:
            j = i
            while j + 1 < len(labels) and labels[j + 1]:
                j += 1
            runs.append((i, j))
            i = j + 1
        else:
            i += 1
    return runs


def shape_of(run: tuple[int, int], times: list[float], values: list[float], labels) -> str:
    """What a labelled run looks like, from the values alone (the labels say only "anomaly")."""
    a, b = run
    seg = values[a : b + 1]
    normal = sorted(v for v, lab in zip(values, labels, strict=True) if not lab)
    low = normal[len(normal) // 20]  # 5th percentile of the normal hours
    ones = sum(v == 1.0 for v in normal) / len(normal)
    dropped = sum(v <= 0.2 * low or (v == 1.0 and ones < 0.01) for v in seg)
    if dropped * 2 >= len(seg):
        return "drop-out"
    flat = sum(values[i] == values[i - 1] for i in range(max(a, 1), b + 1))
    if len(seg) >= 3 and flat * 2 >= len(seg):
        return "stuck"
    # Against the same hour of the week in the building's unlabelled hours.
    how = {}
    for t, v, lab in zip(times, values, labels, strict=True):
        if not lab:
            how.setdefault(int(t // 3600) % 168, []).append(v)
    med = {k: statistics.median(v) for k, v in how.items()}
    excess = sum(
        v - med.get(int(t // 3600) % 168, v) for t, v in zip(times[a : b + 1], seg, strict=True)
    )
    if excess < 0:
        return "dip"
    return "spike" if max(seg) > normal[int(0.99 * (len(normal) - 1))] else "wrong time"


def score_alarms(alarms: list[bool], runs, shapes) -> dict:
    """Event recall per shape, alarms outside every run (plus AFTER readings)."""
    covered = [False] * len(alarms)
    found = {s: [0, 0] for s in SHAPES}
    for (a, b), shape in zip(runs, shapes, strict=True):
        found[shape][1] += 1
        if any(alarms[a : min(len(alarms), b + 1 + AFTER)]):
            found[shape][0] += 1
        for i in range(a, min(len(alarms), b + 1 + AFTER)):
            covered[i] = True
    false = sum(1 for i, x in enumerate(alarms) if x and not covered[i])
    return {"found": found, "false": false}


def rolling_z(times, values, days: int = 7, limit: float = 4.0) -> list[bool]:
    """Reference 1: |z| over the past ``days`` above ``limit``, alarm where a crossing starts."""
    from collections import deque

    win: deque = deque()
    s = s2 = 0.0
    out, was = [], False
    for t, v in zip(times, values, strict=True):
        while win and win[0][0] <= t - days * 86400:
            _, old = win.popleft()
            s -= old
            s2 -= old * old
        n = len(win)
        hit = False
        if n >= 24:
            mean = s / n
            sd = math.sqrt(max(s2 / n - mean * mean, 0.0))
            hit = sd > 0 and abs(v - mean) > limit * sd
        out.append(hit and not was)
        was = hit
        win.append((t, v))
        s += v
        s2 += v * v
    return out


def how_median(times, values, weeks: int = 4, limit: float = 5.0) -> list[bool]:
    """Reference 2: more than ``limit`` MAD from the median of the same hour of the week over the
    past ``weeks`` weeks, alarm where a crossing starts."""
    from collections import deque

    slots: dict[int, deque] = {}
    out, was = [], False
    for t, v in zip(times, values, strict=True):
        q = slots.setdefault(int(t // 3600) % 168, deque(maxlen=weeks))
        hit = False
        if len(q) >= 2:
            med = statistics.median(q)
            mad = statistics.median(abs(x - med) for x in q)
            hit = abs(v - med) > limit * max(mad, 0.01 * abs(med), 1e-9)
        out.append(hit and not was)
        was = hit
        q.append(v)
    return out


def ours(times, values) -> list[bool]:
    """The gateway's detectors, as ``reverbere anomalies replay --kind power`` runs them."""
    cfg = DetectConfig.from_mapping(BUILDING_CONFIG)
    return [alarm for _, _, alarm in replay(zip(times, values, strict=True), "power", cfg)]


def run_buildings(folder: Path, limit: int | None = None, rows: int | None = None) -> dict:
    """Each building file through ours and the two references: recall per shape, false alarms
    per building-day, NAB's standard score (labelled runs as windows, alarms as detections)."""
    files = sorted(folder.glob("*.csv"))[:limit]
    detectors = {"ours": ours, "rolling z 7 d": rolling_z, "hour-of-week median 4 w": how_median}
    per_file = {}
    for path in files:
        times, values, labels = load_building(path)
        if rows:
            times, values, labels = times[:rows], values[:rows], labels[:rows]
        runs = labelled_runs(labels)
        shapes = [shape_of(r, times, values, labels) for r in runs]
        days = (times[-1] - times[0]) / 86400 or 1.0
        per_file[path.stem] = {"days": days, "runs": runs, "shapes": shapes, "n": len(times)}
        for name, detect in detectors.items():
            t0 = time.perf_counter()
            alarms = detect(times, values)
            us = 1e6 * (time.perf_counter() - t0) / len(times)
            res = score_alarms(alarms, runs, shapes)
            res["us"] = us
            res["alarms"] = [1.0 if x else 0.0 for x in alarms]
            per_file[path.stem][name] = res
    out = {}
    for name in detectors:
        out[name] = _building_totals(per_file, name, list(per_file))
        half = sorted(per_file)
        out[name]["first half"] = _building_totals(per_file, name, half[: len(half) // 2 + 1])
        out[name]["second half"] = _building_totals(per_file, name, half[len(half) // 2 + 1 :])
        out[name]["per building"] = {k: _building_totals(per_file, name, [k]) for k in per_file}
    return {"files": [p.name for p in files], "detectors": out}


def _building_totals(per_file: dict, name: str, keys: list[str], nab_score: bool = True) -> dict:
    found = {s: [0, 0] for s in SHAPES}
    false = 0
    days = 0.0
    data, scores = [], []
    for k in keys:
        f = per_file[k]
        r = f[name]
        for s in SHAPES:
            found[s][0] += r["found"][s][0]
            found[s][1] += r["found"][s][1]
        false += r["false"]
        days += f["days"]
        data.append(nab.DataFile(k, [""] * f["n"], [0.0] * f["n"], f["runs"]))
        scores.append(r["alarms"])
    total = [sum(v[0] for v in found.values()), sum(v[1] for v in found.values())]
    faults = [found["drop-out"][i] + found["stuck"][i] for i in (0, 1)]
    out = {
        "recall": round(total[0] / total[1], 3) if total[1] else None,
        "runs": total[1],
        "recall_dropout_stuck": round(faults[0] / faults[1], 3) if faults[1] else None,
        "false_per_building_day": round(false / days, 3) if days else None,
        "nab_standard": round(nab.Corpus(data, scores).normalised(0.5, nab.PROFILES["standard"]), 1)
        if data and nab_score
        else None,
        "by_shape": {s: f"{v[0]}/{v[1]}" for s, v in found.items()},
    }
    if len(keys) > 1:
        out["us_per_reading"] = round(statistics.mean(per_file[k][name]["us"] for k in keys), 1)
    return out


# The building detectors' main constants (gateway/pipeline/detect/buildings.py), each tried at
# half and at twice its value: figures that hold across that range are not fitted to the files.
SENSITIVITY = ("Z_ALARM", "STUCK_MARGIN", "STUCK_CHANCE", "DROP_RATIO", "HELD_RATIO")


def run_sensitivity(folder: Path, names=SENSITIVITY) -> dict:
    """Ours on every file with one constant of buildings.py at x0.5 and x2 (the others as they
    are): recall, drop-out + stuck recall and false alarms per building-day for each."""
    from gateway.pipeline.detect import buildings

    files = sorted(folder.glob("*.csv"))
    loaded = [load_building(p) for p in files]
    out = {}
    for name in names:
        value = getattr(buildings, name)
        for factor in (0.5, 2.0):
            setattr(buildings, name, type(value)(value * factor))
            try:
                per_file = {}
                for path, (times, values, labels) in zip(files, loaded, strict=True):
                    runs = labelled_runs(labels)
                    shapes = [shape_of(r, times, values, labels) for r in runs]
                    res = score_alarms(ours(times, values), runs, shapes)
                    res["alarms"], res["us"] = [], 0.0
                    days = (times[-1] - times[0]) / 86400 or 1.0
                    per_file[path.stem] = {"days": days, "runs": runs, "n": len(times), "ours": res}
                t = _building_totals(per_file, "ours", list(per_file), nab_score=False)
            finally:
                setattr(buildings, name, value)
            out[f"{name} x{factor:g}"] = {
                k: t[k] for k in ("recall", "recall_dropout_stuck", "false_per_building_day")
            }
    return out


def print_sensitivity(sens: dict) -> None:
    print("Sensitivity of ours: each constant of buildings.py at x0.5 and x2, others unchanged")
    print(f"{'constant':<26}{'recall':>7}{'drop+stuck':>11}{'false/b-day':>12}")
    for label, x in sens.items():
        print(
            f"{label:<26}{x['recall']!s:>7}{x['recall_dropout_stuck']!s:>11}"
            f"{x['false_per_building_day']!s:>12}"
        )


def print_buildings(report: dict) -> None:
    """The building-meter table, ours beside the references, then ours per building."""
    print("Building meters (" + ", ".join(report["files"]) + ")")
    print(
        f"{'detector':<26}{'recall':>7}{'drop+stuck':>11}{'false/b-day':>12}{'NAB':>8}"
        f"{'us/row':>8}  by shape"
    )
    for name, r in report["detectors"].items():
        for label, x in (
            (name, r),
            ("  first half", r["first half"]),
            ("  second half", r["second half"]),
        ):
            shapes = ", ".join(f"{s} {v}" for s, v in x["by_shape"].items())
            print(
                f"{label:<26}{x['recall']!s:>7}{x['recall_dropout_stuck']!s:>11}"
                f"{x['false_per_building_day']!s:>12}{x['nab_standard']!s:>8}"
                f"{x.get('us_per_reading', '')!s:>8}  {shapes}"
            )
    for name, x in report["detectors"]["ours"]["per building"].items():
        shapes = ", ".join(f"{s} {v}" for s, v in x["by_shape"].items())
        print(
            f"{'  ours ' + name:<26}{x['recall']!s:>7}{x['recall_dropout_stuck']!s:>11}"
            f"{x['false_per_building_day']!s:>12}{x['nab_standard']!s:>8}{'':>8}  {shapes}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced size, for CI")
    ap.add_argument("--nab", default=str(ROOT.parent / "shared" / "data" / "nab"))
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    ap.add_argument(
        "--fleet-days",
        type=int,
        metavar="N",
        help="run only the simulated fleet, N days (a week or more: every detector speaks)",
    )
    ap.add_argument("--fleet-nodes", type=int, default=40, metavar="N", help="its size (40)")
    ap.add_argument(
        "--buildings",
        default=str(ROOT.parent / "shared" / "data" / "lead-dev"),
        metavar="DIR",
        help="a folder of timestamp,value,label CSVs of building meters (LEAD's development set)",
    )
    ap.add_argument(
        "--buildings-only", action="store_true", help="run only the building-meter part"
    )
    ap.add_argument(
        "--sensitivity",
        action="store_true",
        help="with the building-meter part: ours with each main constant at x0.5 and x2 (80 s)",
    )
    ap.add_argument(
        "--cost-only", action="store_true", help="run only the cost part (3), best of 3 runs"
    )
    ap.add_argument("--nab-only", action="store_true", help="run only the NAB part (1)")
    args = ap.parse_args()
    cost_n = 3000 if args.quick else 20000
    if args.cost_only:
        cost = run_cost(cost_n)
        if args.json:
            print(json.dumps({"cost": cost}))
        else:
            print_cost(cost)
        return
    folder = Path(args.buildings)
    if not folder.exists():
        folder = Path("/work/shared/data/lead-dev")
    meters = (
        run_buildings(folder, *((2, 24 * 120) if args.quick else (None, None)))
        if folder.exists()
        else {"skipped": f"no building meters at {args.buildings}"}
    )
    if args.buildings_only:
        if args.json:
            print(json.dumps({"buildings": meters}))
        elif "skipped" not in meters:
            print_buildings(meters)
            if args.sensitivity:
                print_sensitivity(run_sensitivity(folder))
        return
    if args.fleet_days:
        fleet = run_sim_fleet(args.fleet_days, args.fleet_nodes)
        print(json.dumps({"sim_fleet": fleet}, indent=None if args.json else 1))
        return
    nab_root = Path(args.nab)
    if not nab_root.exists():
        nab_root = Path("/work/shared/data/nab")
    report = {}
    if nab_root.exists():
        report["nab"] = run_nab(nab_root, args.quick)
        report["nab"]["published_standard"] = PUBLISHED
    else:
        report["nab"] = {"skipped": f"no NAB data at {args.nab}"}
    if args.nab_only:
        print(json.dumps(report, indent=None if args.json else 1))
        return
    days, lamps, buildings = (5, 5, 3) if args.quick else (14, 20, 6)
    report["sim_fleet"] = run_sim_fleet(5 if args.quick else 14, 10 if args.quick else 40)
    report["fleet"] = run_fleet(days, lamps, buildings)
    report["cost"] = run_cost(cost_n)
    report["buildings"] = meters
    if args.json:
        print(json.dumps(report))
        return
    print(json.dumps(report, indent=1))
    print_cost(report["cost"])
    if "skipped" not in meters:
        print_buildings(meters)


if __name__ == "__main__":
    main()
