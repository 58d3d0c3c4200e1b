"""``reverbere demo``: the whole system on one machine, every figure computed from what happened.

    fleet (real firmware,  ──> lossy UDP proxy ──> gateway ──────> fault proxy ──> platform
    simulated clock, N     (loss, duplicates,    (ingest, detect,  (the uplink:     (SensorThings
    nodes, anomalies)       reordering, a cut)    summarise,        down a while,    server on
                                                  outbox, sync)     some faults)     SQLite)

1. A SensorThings server (sim/platform) starts behind the seeded fault proxy.
2. A gateway starts on a temporary directory, configured as an operator would (gateway.toml
   with [site], [detect] and [sync] pointing at the platform through the proxy).
3. A fleet of nodes running the real firmware (sim/fleet.py) sends ``hours`` of simulated time,
   from a Monday at midnight UTC, through a lossy proxy (sim/net.py); the nodes are cut off
   from the gateway for 15 minutes (they buffer and backfill), and the uplink is down for a
   quarter of the run (the outbox waits, the worker backs off, then catches up). Anomalies are
   injected with ground truth. Before it starts, the gateway's detectors learn from the
   same profiles' days before the run (sim/history.py), as a gateway that has run for
   weeks would have: they all speak during the run, and the buildings' meter faults (one per
   building, a closing day of the town run as a working day among them) are judged.
4. At the end: the gateway's readings against what the nodes sent and saw acknowledged (every
   datagram a node sends and every answer it accepts is decoded on the way), its anomaly
   events against the ground truth, and the summaries pulled back from the platform against
   the gateway's; a chart of energy per hour with the anomalies marked.
"""

import asyncio
import json
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

from firmware.link import Link
from gateway import config
from gateway.alerts.outbox import alert_rows
from gateway.console import accounts
from gateway.pipeline.calendar import is_public_holiday
from gateway.provision import build
from gateway.reports import Town
from gateway.service import Gateway, stages
from gateway.store.db import open_db
from gateway.sync.service import sync_status
from protocols import coap, cose, senml
from protocols.errors import DecodeError
from sim.alerts import AlertServers, expected_alerts
from sim.fleet import Fleet, gateway_keys, kind_of, make_keys, make_profile
from sim.groundtruth import evaluate
from sim.history import learn
from sim.net import Impairments, LossyProxy
from sim.platform.demo import DemoPlatform, pull_back, start_demo_platform
from sim.profiles import LATITUDE, LONGITUDE, Anomaly, plan_anomalies
from sim.updates import DemoUpdates

SEED = 1
UTC_OFFSET = 3600  # the site's time zone, Etc/GMT-1 (the fleet's profiles are in UTC+1)
EPOCH = date(1970, 1, 1).toordinal()
NODE_OUTAGE = 600  # seconds (simulated) the nodes cannot reach the gateway: with a node's
# pack (10 minutes of readings) and its backoff after the cut (up to 6 min 15 s), below the
# silent rule's 30 minutes, so a network cut is not reported as silent nodes (15 minutes was
# not: two nodes were called silent for a moment at the cut)
UPLINK_DOWN = (0.25, 0.5)  # fractions of the run during which the platform is unreachable
LEARNING_DAYS = 4  # the statistical detector learns 3 days before it speaks (docs/anomalies.md)
STAT_KINDS = ("spike", "drift")  # injected kinds only the statistical detector can find
# A building's meter faults, judged once its hours were learnt on three days.
METER_KINDS = ("dropout", "stuck_meter", "night_base_load")
# One per building, in turn, when the detectors learnt from a past (HISTORY_DAYS).
BUILDING_FAULTS = (*METER_KINDS, "holiday_as_workday")
# Days before the run the detectors learn from (sim/history.py). A building's, from a
# Saturday: three weekends, as its meter's detectors learn a closed day's hours from the
# closed days of the weeks whose weekdays they already know (the first week's are not, so
# the first weekend is not learnt), and they judge from three (gateway/pipeline/detect/
# buildings.py, LEARNT). A street light's statistical detector speaks after three days.
HISTORY_DAYS = 16
LAMP_PAST = 4 * 86400
# The street lights' cabinet, as the gateway's [[detect.lighting]] group says (local hours):
# dimmed to half from 22:00 to the morning, dark from 01:00 to 05:00 (extinction nocturne).
LAMP_SCHEDULE = {"dim": (22, 12), "dim_level": 0.5, "switch_off": (1, 5)}

GATEWAY_TOML = """\
# The demo's gateway, configured as an operator would (see `reverbere gateway init`).
[coap]
# The fleet runs about 2,000 times faster than real time: a second here is half an hour of the
# nodes' time. Kept 60 s (a real gateway's default), an answer is still there 33 simulated
# hours later, and a node reset since (a firmware update) whose new random message IDs run
# into its old ones gets stale answers for hours (tests/test_sim_stall.py).
dedup_lifetime_s = 1

[site]
latitude = {lat}
longitude = {lon}
timezone = "Etc/GMT-1"
price_kwh = 0.2016
off_peak_price_kwh = 0.1470
off_peak_hours = ["22:00-06:00"]

[detect]
lamps = ["lamp-*"]

[[detect.lighting]]
name = "Avenue de la Libération"
nodes = ["lamp-*"]
watts = 70.0

[[detect.lighting.switch_off]]
from = "01:00"
to = "05:00"

[[detect.lighting.dim]]
from = "22:00"
percent = 50

[[detect.buildings]]
nodes = ["bldg-*"]
days = "mon-fri"
open = "08:00"
close = "18:00"

[sync]
target = "sensorthings"
url = "{url}"
timeout = 3.0
backoff_base = 0.5
backoff_cap = 4.0
"""


class ObservedFleet(Fleet):
    """The fleet, with every reading a node sends and every one it saw acknowledged.

    The firmware is untouched: each node's CoAP request is decoded (COSE_Mac0 -> SenML) when
    it leaves, and when the node's link accepts a 2.xx answer for it, its readings count as
    acknowledged (what the node then deletes from its flash)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: set[tuple[str, str, int]] = set()
        self.acked: set[tuple[str, str, int]] = set()
        self._links: dict[int, Link] = {}
        self._last_msg: dict[int, bytes] = {}
        self._readings: dict[bytes, list[tuple[str, str, int]]] = {}

    def _decode(self, node: str, msg: bytes) -> list[tuple[str, str, int]]:
        got = self._readings.get(msg)
        if got is None:
            try:
                mac = cose.decode(coap.decode(msg).payload)
                records = senml.decode(mac.payload, int(self.clock.now))
            except (DecodeError, ValueError):
                records = []
            got = [(node, name.rpartition(":")[2], int(t)) for name, _, t, _ in records]
            self._readings[msg] = got
        return got

    def _watch(self, idx: int) -> None:
        m = self.members[idx]
        link = m.node.link
        if self._links.get(idx) is not link:  # a new node object (first boot or reboot)
            self._links[idx] = link
            end = link._end

            def _end(result, link=link, end=end, node=m.id):
                ok = isinstance(result, coap.Message) and result.code >> 5 == 2
                if ok and link.msg is not None:
                    self.acked.update(self._decode(node, link.msg))
                end(result)

            link._end = _end
        if link.msg is not None and link.msg is not self._last_msg.get(idx):
            self._last_msg[idx] = link.msg
            self.sent.update(self._decode(m.id, link.msg))
            if len(self._readings) > 4096:  # answered long ago: keep memory bounded
                self._readings.clear()

    def _step(self, idx: int) -> None:
        super()._step(idx)
        self._watch(idx)


def _plan(
    keys: dict[str, bytes], start: float, duration: float, closed: list[int], learnt: bool
) -> tuple[list, str]:
    """Anomalies to inject: one node in four, a lamp left on in the first switch-off window
    of the run, and, when the detectors learnt from a past (``learnt``), a meter fault on
    every building that has none (``BUILDING_FAULTS`` in turn; the closing day ``closed`` run
    as a working day among them). Without a past, a run shorter than the detectors' learning
    leaves out the kinds only they can find (and says so)."""
    nodes = {n: kind_of(n) for n in keys}
    count = max(1, len(keys) // 4)
    plan = plan_anomalies(nodes, start, duration, len(keys), SEED, closed, learnt)
    note = ""
    if duration < LEARNING_DAYS * 86400:
        plan = [a for a in plan if a.kind not in STAT_KINDS + BUILDING_FAULTS]
        if not learnt:
            note = (
                f"(spikes, drift and buildings' meter faults are left out: the detectors learn"
                f" for 3 days, use --hours {LEARNING_DAYS * 24} or more to inject them too)"
            )
        else:
            note = f"(spikes and drift are left out under {LEARNING_DAYS} days)"
    plan = [_after_switch_off(a, nodes) for a in plan[:count]]
    left_on = _left_on(sorted(n for n in nodes if nodes[n] == "lamp"), plan, start, duration)
    meters: list[Anomaly] = []
    if learnt:
        taken = {a.node for a in plan}
        free = {n: "building" for n in sorted(nodes) if nodes[n] == "building" and n not in taken}
        meters = plan_anomalies(free, start, duration, len(free), SEED, closed, learnt=True)
        meters = [a for a in meters if a.kind in BUILDING_FAULTS]
    return plan + left_on + meters, note


def _closed_days(start: float, duration: float, history: float) -> tuple[list[int], list[int]]:
    """The local dates (days since 1970-01-01) the town's buildings close, from the start of
    the past the detectors learn from to the end of the run: France's public holidays (the
    gateway's calendar knows them: [detect] country), and the town's own closing day, the last
    weekday whose working hours (08:00-18:00 local) the run covers, if it covers one (written
    for [detect] closing_days). Returns (all of them, the town's own)."""
    first = int((start - history + UTC_OFFSET) // 86400)
    last = int((start + duration + UTC_OFFSET) // 86400)
    public = [d for d in range(first, last + 1) if is_public_holiday(date.fromordinal(EPOCH + d))]
    own = [
        d
        for d in range(int((start + UTC_OFFSET) // 86400), last + 1)
        if (d + 3) % 7 < 5  # 1970-01-01 was a Thursday: 0 = Monday
        and d not in public
        and start <= d * 86400 + 8 * 3600 - UTC_OFFSET
        and d * 86400 + 18 * 3600 - UTC_OFFSET <= start + duration
    ][-1:]
    return sorted(public + own), own


def _after_switch_off(a: Anomaly, nodes: dict[str, str]) -> Anomaly:
    """A lamp's sensor stuck while the cabinet has it dark would be stuck at 0 W, and read as
    a dark lamp once the schedule lights it again (``dark_at_night``, an urgent alert): start
    it at 05:15 instead, once lit again, where it is what it says (a short run puts its
    anomalies anywhere in the run)."""
    first, last = LAMP_SCHEDULE["switch_off"]
    hour = (a.start + UTC_OFFSET) % 86400 / 3600
    if a.kind != "stuck" or nodes[a.node] != "lamp" or not first <= hour < last:
        return a
    start = a.start - a.start % 86400 + int(last * 3600 - UTC_OFFSET) + 900
    return Anomaly(a.node, a.channel, a.kind, start, start + (a.end - a.start))


def _left_on(lamps: list[str], plan: list, start: float, duration: float) -> list[Anomaly]:
    """A lamp left on at full power from 01:30 to 04:00 (local) of the first night whose
    switch-off window the run covers, on a lamp without another anomaly: the waste the
    lighting rules are for (``lit_in_switch_off``). None when the run covers no such night."""
    taken = {a.node for a in plan}
    free = [n for n in lamps if n not in taken]
    offset = LAMP_SCHEDULE["switch_off"][0] * 3600 - UTC_OFFSET  # 01:00 local, in UTC
    night = start - start % 86400 + offset + 1800
    if night < start:
        night += 86400
    if not free or night + 9000 > start + duration:
        return []
    return [Anomaly(free[0], "p", "lit_in_switch_off", int(night), int(night + 9000))]


def _at(start: float, t: float) -> str:
    """A simulated time as hours into the run."""
    return f"hour {(t - start) / 3600:.1f}"


async def _uplink_outage(plat: DemoPlatform, fleet: Fleet, window: tuple[float, float]) -> None:
    """Take the platform off the network between two simulated times."""
    while fleet.clock.now < window[0]:
        await asyncio.sleep(0.02)
    plat.proxy.down = True
    while fleet.clock.now < window[1]:
        await asyncio.sleep(0.02)
    plat.proxy.down = False


async def _progress(echo, fleet: "ObservedFleet", start: float, hours: float, plat) -> None:
    """A line every 10 s while the fleet runs, so that a person sees it move."""
    while True:
        await asyncio.sleep(10)
        down = ", uplink down" if plat.proxy.down else ""
        echo(
            f"  ... simulated hour {(fleet.clock.now - start) / 3600:.0f} of {hours:g}: "
            f"{len(fleet.acked)} readings acknowledged{down}"
        )


async def _wait_synced(gw: Gateway, timeout: float) -> dict:
    db = open_db(gw.cfg.database)
    deadline = time.monotonic() + timeout
    try:
        while True:
            st = sync_status(db)
            if st["pending_summaries"] + st["pending_events"] + st["inflight"] == 0:
                return st
            if time.monotonic() > deadline:
                return st
            await asyncio.sleep(0.1)
    finally:
        db.close()


async def _demo(
    echo: Callable[[str], None], nodes: int, hours: float, workdir: Path, history_days: int
) -> dict:
    t_begin = time.monotonic()
    duration = hours * 3600
    history = history_days * 86400
    # A Monday, 00:00 UTC, in the past (every reading is older than the gateway's clock): the
    # same run, anomalies and opening hours whatever the hour the demo is started.
    day = int(time.time() - duration) // 86400 - 1
    start = (day - (day + 3) % 7) * 86400  # 1970-01-01 was a Thursday
    keys_plan = make_keys(nodes, SEED)
    closed, own = _closed_days(start, duration, history)
    truth, note = _plan(keys_plan, start, duration, own, learnt=history_days >= HISTORY_DAYS)

    plat = start_demo_platform(workdir / "platform", fault_rate=0.05, seed=SEED)
    alert_servers = AlertServers().start()  # the people who act: a mail server, a webhook
    try:
        path = workdir / "gateway.toml"
        toml = GATEWAY_TOML.format(lat=LATITUDE, lon=LONGITUDE, url=plat.url)
        if own:  # the town's own closing day (its public holidays the calendar knows)
            days = workdir / "closing-days.txt"
            days.write_text("".join(f"{date.fromordinal(EPOCH + d)}\n" for d in own))
            toml = toml.replace("[detect]\n", f'[detect]\nclosing_days = "{days}"\n', 1)
        path.write_text(toml + alert_servers.toml())
        cfg = config.load(path, {"coap_host": "127.0.0.1", "coap_port": 0, "http_port": 0})
        keys = gateway_keys(path, list(keys_plan))  # `reverbere node add` for each node
        login = _console_login(cfg)
        # The nodes' profiles, and what the gateway's detectors learnt from their past.
        profiles = {n: make_profile(n, SEED, truth, closed, LAMP_SCHEDULE) for n in keys_plan}
        since = {
            n: start - (history if kind_of(n) == "building" else min(history, LAMP_PAST))
            for n in keys_plan
        }
        learnt = await asyncio.to_thread(_learn_past, cfg, profiles, since, start)
        gw = Gateway(cfg)
        await gw.start()
        lamps = sum(kind_of(n) == "lamp" for n in keys)
        cut = start + duration * 0.6
        up0, up1 = (start + duration * f for f in UPLINK_DOWN)
        echo(
            f"Réverbère demo: {nodes} nodes ({lamps} street lights, {nodes - lamps} buildings) "
            f"running the real firmware, {hours:g} simulated hours"
        )
        echo(f"  gateway   coap udp/{gw.coap_port}, database {cfg.database}")
        echo(
            f"  console   http://127.0.0.1:{gw.http_port}/ as {login[0]} / {login[1]}"
            " (technician; while the demo runs)"
        )
        echo(f"  platform  SensorThings {plat.direct_url} behind a fault proxy (5 % of requests)")
        echo(
            f"  network   2 % loss, 1 % duplicated, 1 % reordered; nodes cut off from the gateway"
            f" at {_at(start, cut)} for {NODE_OUTAGE // 60} min"
        )
        echo(f"  uplink    platform unreachable from {_at(start, up0)} to {_at(start, up1)}")
        if history:
            echo(
                f"  history   the detectors learnt from the days before the run ({history_days}"
                f" for the buildings, {min(history, LAMP_PAST) / 86400:g} for the street lights:"
                f" {learnt['readings']} readings of the same profiles through the detect stage"
                f" in {learnt['seconds']} s, {learnt['events']} events raised)"
            )
        echo(f"  anomalies {len(truth)} injected {note}".rstrip())

        fleet: Fleet | None = None
        proxy = LossyProxy(
            ("127.0.0.1", gw.coap_port),
            Impairments(
                loss=0.02, duplicate=0.01, reorder=0.01, outages=[(cut, cut + NODE_OUTAGE)]
            ),
            seed=SEED,
            clock=lambda: fleet.clock.now,
        )
        addr = await proxy.start()
        # Firmware updates mid-run (sim/updates.py): the gateway's own firmware, compiled.
        files = [(f.path, f.data) for f in await asyncio.to_thread(build.compile_firmware)]
        updates = DemoUpdates(
            cfg.database, list(keys), files, start, duration, echo=echo,
            reload=gw.ota_pending.reload,
        )  # fmt: skip
        shutil.rmtree(workdir / "nodes", ignore_errors=True)
        fleet = ObservedFleet(
            keys, addr, start, duration, seed=SEED, anomalies=truth, record=True,
            firmware_dir=workdir / "nodes", timer=(60, updates.tick),
            lamp_schedule=LAMP_SCHEDULE, closed=closed, profiles=profiles,
        )  # fmt: skip
        outage = asyncio.create_task(_uplink_outage(plat, fleet, (up0, up1)))
        progress = asyncio.create_task(_progress(echo, fleet, start, hours, plat))
        t0 = time.monotonic()
        stats = await fleet.run()
        fleet_wall = time.monotonic() - t0
        outage.cancel()
        progress.cancel()
        plat.proxy.down = False
        proxy.close()
        echo(
            f"fleet done: {stats.sim_seconds / 3600:.1f} simulated hours in {fleet_wall:.1f} s "
            f"({stats.speedup:.0f}x real time); the gateway's uplink catches up..."
        )
        # The hours still open at the end (no reading after them yet) go now, as before a stop.
        await gw.flush()
        st = await _wait_synced(gw, timeout=60)
        sync_stats = gw.sync.worker.stats if gw.sync and gw.sync.worker else None
        alerts_unsent = await _alerts_delivered(gw, timeout=30)
        await gw.stop()

        db = open_db(cfg.database)
        try:
            # The detectors judged each node from its past on: node-weeks of both.
            weeks = sum(start + duration - t for t in since.values()) / 604800
            report = _figures(db, fleet, stats, truth, start, weeks)
            report.update(updates.figures())
            town = Town.from_detect(gw.pipeline.detect)  # the chart in its zone, lamps as lamps
            report.update(pull_back(db, plat, workdir / "summaries.svg", town))
            # Hours with readings: an hour only a long counter segment crosses has energy but
            # no reading of its own, and is not sent (gateway/pipeline/handoff.py).
            report["summaries_made"] = db.execute(
                "SELECT count(*) FROM summaries WHERE count > 0"
            ).fetchone()[0]
        finally:
            db.close()
        report.update(
            {
                "nodes": nodes,
                "hours": hours,
                "sync_requests_failed": sync_stats.requests_failed if sync_stats else None,
                "sync_reconciled": (sync_stats.adopted + sync_stats.resent) if sync_stats else None,
                "sync_backlog_at_end": st["pending_summaries"] + st["pending_events"],
                "network": {
                    "forwarded": proxy.stats.forwarded,
                    "dropped": proxy.stats.dropped,
                    "duplicated": proxy.stats.duplicated,
                    "reordered": proxy.stats.reordered,
                    "outage_dropped": proxy.stats.outage_dropped,
                },
                **alert_servers.figures(),
                "alerts_expected": expected_alerts(truth, gw.pipeline.alerts, start + duration),
                "alerts_unsent": alerts_unsent,
                "fleet_seconds": round(fleet_wall, 1),
                "seconds": round(time.monotonic() - t_begin, 1),
            }
        )
    finally:
        plat.stop()
        alert_servers.stop()
    _print(echo, report)
    return report


def _learn_past(cfg: config.Config, profiles: dict, since: dict[str, float], end: float) -> dict:
    """The gateway's detect stage, as ``stages(cfg)`` makes it, fed the profiles' readings
    from each node's ``since`` to ``end`` on the gateway's database (sim/history.py)."""
    t0 = time.monotonic()
    db = open_db(cfg.database)
    try:
        figures = learn(db, stages(cfg).detect, profiles, since, end)
    finally:
        db.close()
    return {"readings": 0, "events": 0, **figures, "seconds": round(time.monotonic() - t0, 1)}


async def _alerts_delivered(gw: Gateway, timeout: float) -> int:
    """Make the digests due by now (the fleet ran in the past: all of them) and give the
    sender up to ``timeout`` seconds to deliver every alert; return how many still wait."""
    stage = gw.stages.alerts
    await gw.committer.settled()
    await gw.committer.run(lambda db: stage.settle(db, time.time()))
    deadline = time.monotonic() + timeout
    while True:
        unsent = len(alert_rows(gw.db, unsent_only=True))
        if not unsent or time.monotonic() > deadline:
            return unsent
        await asyncio.sleep(0.2)


def _console_login(cfg: config.Config) -> tuple[str, str]:
    """A technician's account on the demo gateway's console (docs/console.md), with a fresh
    password: what `reverbere user add demo --role technician` does."""
    password = secrets.token_urlsafe(12)
    db = open_db(cfg.database)
    try:
        accounts.add_user(db, "demo", "technician", password)
    finally:
        db.close()
    return "demo", password


def _figures(db, fleet: ObservedFleet, stats, truth: list, start: float, node_weeks: float) -> dict:
    rows = db.execute(
        "SELECT n.id, r.channel, r.time FROM readings r JOIN nodes n ON n.ref = r.node"
    ).fetchall()
    stored = {(a, b, int(c)) for a, b, c in rows}
    events = list(db.query("SELECT * FROM anomalies ORDER BY start"))
    found = evaluate(events, truth)
    # What the events' kinds of waste drew above the schedule, priced with [site]'s tariff.
    waste_kwh, waste_eur = db.execute(
        "SELECT total(waste_kwh), total(waste_eur) FROM anomalies"
    ).fetchone()
    per = []
    for a in truth:
        hits = [
            e
            for e in events
            if e["node"] == a.node
            and e["start"] <= a.end + 3600
            and (e["end"] is None or e["end"] >= a.start)
        ]
        first = min(hits, key=lambda e: e["start"]) if hits else None
        per.append(
            {
                "node": a.node,
                "kind": a.kind,
                "at": _at(start, a.start),
                "found_as": first["kind"] if first else None,
                "delay_min": round(max(0, first["start"] - a.start) / 60) if first else None,
                "reason": first["reason"] if first else None,
            }
        )
    return {
        "readings_made": stats.readings,
        "readings_sent": len(fleet.sent),
        "readings_acked": len(fleet.acked),
        "readings_stored": len(rows),
        "duplicates_stored": len(rows) - len(stored),
        "acked_but_lost": len(fleet.acked - stored),
        "stored_not_sent": len(stored - fleet.sent),
        "readings_left_on_nodes": stats.pending,
        "readings_dropped_by_nodes": stats.dropped,
        "packs_sent": stats.packs,
        "packs_acked": stats.acked,
        "datagrams_sent": stats.datagrams,
        "anomalies_injected": found["anomalies_injected"],
        "anomalies_found": found["anomalies_found"],
        "anomalies_missed": found["anomalies_missed"],
        "false_alarms": found["false_alarms"],
        "false_alarm_kinds": found["false_alarm_kinds"],
        # Per node and week of simulated time the detectors judged (the learnt past's too: an
        # event raised there is in the count): comparable between runs of any size and length.
        "false_alarms_per_node_week": round(
            found["false_alarms"] / max(node_weeks, len(fleet.members) / 604800), 3
        ),
        "events": len(events),
        "waste_kwh": round(waste_kwh, 3),
        "waste_eur": round(waste_eur, 2),
        "anomaly_details": per,
    }


def _print(echo: Callable[[str], None], r: dict) -> None:
    echo("")
    echo("Nodes -> gateway")
    echo(
        f"  readings made {r['readings_made']}, sent {r['readings_sent']} "
        f"({r['packs_sent']} packs, {r['datagrams_sent']} datagrams with retransmissions), "
        f"acknowledged {r['readings_acked']}, stored {r['readings_stored']}"
    )
    echo(
        f"  duplicates stored {r['duplicates_stored']}, acknowledged but lost "
        f"{r['acked_but_lost']}, left in the nodes' buffers {r['readings_left_on_nodes']}"
    )
    n = r["network"]
    echo(
        f"  the lossy network dropped {n['dropped']} datagrams, duplicated {n['duplicated']}, "
        f"reordered {n['reordered']}, and {n['outage_dropped']} during the cut"
    )
    echo("Anomalies")
    echo(
        f"  injected {r['anomalies_injected']}, found {r['anomalies_found']}, missed "
        f"{r['anomalies_missed']}, false alarms {r['false_alarms']} "
        f"{r['false_alarm_kinds'] or ''}".rstrip()
    )
    for a in r["anomaly_details"]:
        if a["found_as"]:
            echo(
                f"  - {a['node']} {a['kind']} at {a['at']}: found as {a['found_as']} after "
                f"{a['delay_min']} min: {a['reason']}"
            )
        else:
            echo(f"  - {a['node']} {a['kind']} at {a['at']}: MISSED")
    echo(
        f"  waste {r['waste_kwh']:.2f} kWh, {r['waste_eur']:.2f} € at the [site] tariff"
        " (0.2016 €/kWh, 0.1470 off-peak 22:00-06:00; `reverbere waste`, docs/reports.md)"
    )
    echo("Gateway -> platform")
    echo(
        f"  summaries made {r['summaries_made']}, synced {r['summaries_synced']}, on the platform "
        f"{r['summaries_on_platform']} (duplicates {r['duplicates_on_platform']}); events synced "
        f"{r['events_synced']}, on the platform {r['events_on_platform']}"
    )
    per_node_day = r["uplink_bytes"] / max(1, r["nodes"]) / max(r["hours"] / 24, 1 / 24)
    echo(
        f"  uplink {r['uplink_bytes']} bytes ({per_node_day:.0f} per node per day), "
        f"{r['faults_injected']} faults injected by the proxy, {r['sync_requests_failed']} "
        f"failed requests (outage included), {r['sync_reconciled']} rows reconciled by reading "
        f"the platform back"
    )
    echo("Firmware updates over the air (docs/ota.md)")
    echo(
        f"  version 1 confirmed by {r['ota_updated']} nodes; the broken version 2 rolled back by"
        f" {r['ota_rolled_back']}; nodes without a confirmed version {r['ota_failed']}"
    )
    echo("Alerts (a mail server and a webhook on loopback; docs/alerts.md)")
    echo(
        f"  sent {r['alerts_sent']} ({r['alerts_mailed']} mails), as the routing rules call for "
        f"from the ground truth {r['alerts_expected']}, duplicated {r['alerts_duplicated']}, "
        f"still waiting {r['alerts_unsent']}"
    )
    echo(f"done in {r['seconds']} s (fleet {r['fleet_seconds']} s)")


# What a run writes into its directory, removed first so that each run starts afresh (the
# nodes are registered again, with new keys): the only files the demo deletes there.
DEMO_FILES = (
    "gateway.toml",
    "reverbere.db",
    "reverbere.db-wal",
    "reverbere.db-shm",
    "reverbere.db.lock",
    "summaries.svg",
    "report.json",
    "closing-days.txt",
)


def run_demo(
    echo: Callable[[str], None] = print,
    nodes: int = 20,
    hours: float = 48,
    out: str | Path | None = "demo-out",
    history_days: int = HISTORY_DAYS,
) -> dict:
    """Run the demo in ``out`` and keep what it made there to explore afterwards (the
    gateway's config and database, the platform's database in ``platform/``, the chart
    ``summaries.svg`` and ``report.json``); print the commands that look at them; return the
    figures. A previous run's files there are replaced; ``out=None`` runs in a temporary
    directory that is deleted at the end. ``history_days``: the past the detectors learn
    from before the run (0: none, they learn during the run as a new gateway would)."""
    if out is None:
        with tempfile.TemporaryDirectory(prefix="reverbere-demo-") as tmp:
            return asyncio.run(_demo(echo, nodes, hours, Path(tmp), history_days))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in DEMO_FILES:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "platform", ignore_errors=True)
    report = asyncio.run(_demo(echo, nodes, hours, out, history_days))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if report.get("chart"):
        echo(f"chart: {Path(report['chart']).resolve()}")
    echo(f"report: {(out / 'report.json').resolve()}")
    cfg = out / "gateway.toml"
    echo(f"what the demo left in {out}/, to explore:")
    for command in (
        f"reverbere node list --config {cfg}",
        f"reverbere readings --config {cfg} --node lamp-001 --limit 20",
        f"reverbere anomalies --db {out / 'reverbere.db'}",
        f"reverbere summaries --config {cfg} --format csv",
    ):
        echo(f"  {command}")
    return report
