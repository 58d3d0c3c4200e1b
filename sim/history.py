"""What a gateway that has run for weeks knows: its detectors' state, learnt from the fleet's past.

A town's gateway is not switched on the morning its buildings misbehave: it has seen weeks of
their readings, and its detectors judge each hour against what they learnt (the statistical
detector speaks after three days; a building's meter judges a closed day against three closed
days it saw, docs/anomalies.md). A demo of 48 simulated hours would otherwise end before they
speak, and show no false alarm, and find no building fault, for reasons that say nothing.

``learn`` samples the very profiles the fleet will run on (``sim.profiles``: same seeds, same
closing days, the lamps' cabinet schedule) for the days before the run, at each channel's
interval, and feeds those readings through the gateway's own detect stage
(``gateway.service.stages(cfg).detect``) on the gateway's database, before the gateway starts.
The detectors' state is what the stage saves after any commit (``detect_state``); the readings
themselves are not stored (the console and the summaries start with the run). The profiles go
on into the run (``Fleet(profiles=...)``): the energy counters continue where the history left
them, as a node's counter does, so the counter rules see no reset at the seam.
"""

import heapq
from collections.abc import Iterator

import sqlite_utils

from firmware.node import _INTS  # the channels a node sends as whole numbers
from gateway.pipeline.detect import Detector
from gateway.store.records import Reading
from sim.profiles import Profile

# Readings per call of the stage: a few hours of a small fleet (its silent check and state
# saves, once per call, cost more than the detectors themselves with a few hundred).
BATCH = 3000


def past_readings(
    profiles: dict[str, Profile], start: float | dict[str, float], end: float
) -> Iterator[Reading]:
    """Every reading the profiles make from ``start`` (Unix seconds; or per node) to ``end``
    (exclusive), in time order, at each channel's sampling interval, rounded as the node
    rounds them (firmware/node.py: whole numbers, or tenths); none while a node is silent.
    The profiles' clocks and counters move on with them."""
    due = []  # (time, node, channel, interval)
    for node, prof in profiles.items():
        first = int(start[node] if isinstance(start, dict) else start)
        for ch, every in prof.channels.items():
            due.append((first, node, ch, every))
    heapq.heapify(due)
    while due and due[0][0] < end:
        t, node, ch, every = due[0]
        prof = profiles[node]
        if prof.silent(t) is None:
            v = prof.read(ch, t)
            if v is not None:
                v = round(v) if ch in _INTS else round(v * 10) / 10
                yield Reading(node, ch, float(t), float(v))
        heapq.heapreplace(due, (t + every, node, ch, every))


def learn(
    db: sqlite_utils.Database,
    detect: Detector,
    profiles: dict[str, Profile],
    start: float | dict[str, float],
    end: float,
) -> dict:
    """Feed the readings of the profiles from ``start`` (or per node) to ``end`` through
    ``detect`` (the gateway's detect stage, on its database ``db``), ``BATCH`` at a time as
    commits would; return the figures: readings, and the events the detectors raised on this
    past (a clean past: each one is a false alarm)."""
    batch: list[Reading] = []
    readings = 0
    events: dict[int, object] = {}
    for r in past_readings(profiles, start, end):
        batch.append(r)
        if len(batch) >= BATCH:
            readings += len(batch)
            for ev in detect(db, batch):
                events[id(ev)] = ev
            batch = []
    if batch:
        readings += len(batch)
        for ev in detect(db, batch):
            events[id(ev)] = ev
    return {"readings": readings, "events": len(events)}
