"""Issue 13, item 16: a gateway whose clock is days behind (a Raspberry Pi booted without
network) must not hand that time to its nodes, must keep taking their good readings, and must
say so; then, when NTP steps the clock, go back to normal. Real packs from several nodes, a
real gateway on loopback, an injected clock (``tests/conftest.py``) and injected witnesses
for the operating system's word (the test machine's own clock is not the one on trial)."""

import asyncio
import logging
from pathlib import Path

import cbor2

from firmware.node import Node
from gateway.clock import ClockWatch, kernel_synchronized, system_witnesses, timesyncd_synchronized
from gateway.store.db import open_db
from protocols import coap, cose, senml
from protocols.const import CHANGED, RESP_CONFIG, RESP_TIME, SERVICE_UNAVAILABLE
from tests.gateway_helpers import (
    add_node,
    con_post,
    exchange,
    http_get,
    metric,
    running_gateway,
)
from tests.portable.fw_fakes import FakeHal, node_cfg

DAY = 86400
BEHIND = 3 * DAY


class Steps:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watch_on(clock, system=None):
    system = system or {"kernel": None, "timesyncd": None}
    mono = Steps()
    return ClockWatch(clock, lambda: dict(system), mono), mono


# --- the witnesses --------------------------------------------------------------------------


def test_timesyncd_flag_says_yes_no_or_nothing(tmp_path):
    run_dir = tmp_path / "timesync"
    assert timesyncd_synchronized(run_dir / "synchronized") is None  # timesyncd not running
    run_dir.mkdir()
    assert timesyncd_synchronized(run_dir / "synchronized") is False  # running, not yet synced
    (run_dir / "synchronized").touch()
    assert timesyncd_synchronized(run_dir / "synchronized") is True


def test_the_kernel_is_heard_only_while_a_time_service_runs(tmp_path):
    # Without a time service STA_UNSYNC is never cleared (this test machine has none): the
    # kernel then has no say, or every gateway there would withhold its time for ever.
    assert kernel_synchronized() in (True, False)  # adjtimex answers on Linux, for any user
    nothing = system_witnesses((tmp_path / "none",), tmp_path / "timesync" / "synchronized")
    assert nothing == {"kernel": None, "timesyncd": None}
    (tmp_path / "chrony").mkdir()
    heard = system_witnesses((tmp_path / "chrony",), tmp_path / "timesync" / "synchronized")
    assert heard["kernel"] == kernel_synchronized()


# --- the readings as a witness ----------------------------------------------------------------


def test_three_nodes_ahead_say_the_clock_is_behind_and_a_step_is_corrected(clock):
    watch, mono = watch_on(clock)
    true_now = clock.now + BEHIND
    watch.observe("a", true_now - 30)
    watch.observe("b", true_now - 5)
    assert watch.state().synchronized  # two nodes are not enough to accuse the clock
    assert watch.state().offset is None
    watch.observe("c", true_now - 100)
    state = watch.state()
    assert not state.synchronized and state.offset == BEHIND - 30 and state.nodes == 3
    assert watch.reference() == clock.now + BEHIND - 30
    # NTP steps the clock: the offsets measured before are corrected by the step
    mono.now += 20
    clock.now += BEHIND + 20
    state = watch.state()
    assert state.synchronized and state.offset == -30
    assert watch.reference() == clock.now


def test_backfill_and_one_wrong_node_do_not_accuse_the_clock(clock):
    watch, mono = watch_on(clock)
    watch.observe("a", clock.now - 6 * 3600)  # a node back from an outage: old readings first
    watch.observe("b", clock.now - 2 * DAY)
    watch.observe("c", clock.now + 10 * DAY)  # one node with a wrong clock
    watch.observe("d", clock.now - 60)
    assert watch.state().synchronized
    # the freshest sample of a node in the window counts, not its latest backfill pack
    watch.observe("d", clock.now - 3 * DAY)
    assert watch.offset() == ((-6 * 3600 - 60) / 2, 4)
    # samples older than the window are forgotten
    mono.now += 901
    assert watch.offset() == (None, 0)


def test_a_witness_that_says_no_wins(clock):
    watch, _ = watch_on(clock, {"kernel": True, "timesyncd": False})
    assert not watch.state().synchronized
    watch, _ = watch_on(clock, {"kernel": None, "timesyncd": None})
    assert watch.state().synchronized  # nobody says no: the clock is taken as it is


# --- a real gateway, days behind, then stepped -------------------------------------------------


def test_gateway_days_behind_keeps_readings_gives_no_time_then_recovers(tmp_path, clock, caplog):
    system = {"kernel": False, "timesyncd": False}  # a Pi booted offline: NTP not answered yet
    true_start = clock.now
    clock.now -= BEHIND  # the gateway's clock: the last saved time

    async def go():
        async with running_gateway(tmp_path, clock=clock) as gw:
            gw._ingest.clock_watch.system = lambda: dict(system)
            gw._ingest.clock_watch._checked = float("-inf")
            names = ("lamp-1", "lamp-2", "lamp-3", "lamp-4", "lamp-5")
            keys = {n: add_node(gw, n) for n in names}
            seqs = dict.fromkeys(keys, 0)

            async def post(node, readings):
                seqs[node] += 1
                body = cose.sign(keys[node], node.encode(), seqs[node], senml.encode(readings))
                (msg,) = await exchange(gw.coap_port, con_post(body, sum(seqs.values())))
                return msg

            # The first node: its readings (true time) are 3 days ahead of the gateway. Not
            # refused (the node would drop them): 5.03, it keeps them and tries again.
            t = true_start - 60
            first = await post("lamp-1", [("p", t, 61), ("p", t + 30, 62)])
            assert first.code == SERVICE_UNAVAILABLE, first.payload
            assert first.option(14) is not None  # Max-Age
            # Two more nodes: now three agree, the gateway believes them and stores.
            second = await post("lamp-2", [("p", t + 10, 50)])
            assert second.code == SERVICE_UNAVAILABLE
            third = await post("lamp-3", [("p", t + 20, 40)])
            assert third.code == CHANGED, third.payload
            body = cbor2.loads(third.payload)
            assert RESP_TIME not in body and RESP_CONFIG in body  # no untrusted time
            retry = await post("lamp-1", [("p", t, 61), ("p", t + 30, 62)])
            assert retry.code == CHANGED
            # A node without a clock sends relative times: resolved against the fleet's time
            rel = await post("lamp-4", [("t", -60, 4)])
            assert rel.code == CHANGED and RESP_TIME not in cbor2.loads(rel.payload)
            _, page = await http_get(gw.http_port, "/metrics")
            assert metric(page, "reverbere_clock_synchronized ") == 0
            offset = metric(page, "reverbere_clock_offset_seconds ")
            assert BEHIND - 60 <= offset <= BEHIND
            assert gw.clock_state()["synchronized"] is False

            # The firmware goes on without "t": it keeps its own clock, drops what was acked.
            hal = FakeHal(unix0=int(true_start))
            node = Node(hal, node_cfg(node="lamp-5", key=keys["lamp-5"].hex(), first=True))
            while not hal.sent and hal.now < 120_000:  # its first sample goes at once
                hal.now += max(1, node.poll())
            (request,) = hal.sent
            (answer,) = await exchange(gw.coap_port, request)
            node.datagram(
                coap.encode(answer.mtype, answer.code, answer.mid, answer.token, (), answer.payload)
            )
            assert node.stats["acked"] == 1 and hal.set_times == []
            assert node.unix(hal.ms()) == int(true_start) + hal.ms() // 1000  # its own

            # NTP answers: the clock is stepped to the true time, the system says so.
            clock.now = true_start + 120
            system.update(kernel=True, timesyncd=True)
            gw._ingest.clock_watch._checked = float("-inf")
            seqs["lamp-2"] = 10
            after = await post("lamp-2", [("p", true_start + 60, 51)])
            assert after.code == CHANGED
            assert cbor2.loads(after.payload)[RESP_TIME] == true_start + 120
            _, page = await http_get(gw.http_port, "/metrics")
            assert metric(page, "reverbere_clock_synchronized ") == 1
            assert abs(metric(page, "reverbere_clock_offset_seconds ")) <= 300
            return gw.cfg.database

    with caplog.at_level(logging.INFO, logger="reverbere.clock"):
        database = asyncio.run(go())
    lines = [r.getMessage() for r in caplog.records if r.name == "reverbere.clock"]
    # one line on each change (and perhaps one at start, of the test machine's clock)
    assert lines[-2:] == ["clock not synchronized", "clock synchronized"], lines
    assert lines.count("clock not synchronized") == 1
    db = open_db(Path(database))
    rows = db.execute(
        "SELECT n.id, r.channel, r.time FROM readings r JOIN nodes n ON n.ref = r.node"
        " ORDER BY r.time"
    ).fetchall()
    # every reading with the nodes' (true) times, none with the gateway's wrong one
    assert ("lamp-1", "p", true_start - 60) in rows and ("lamp-5", "p", true_start) in rows
    assert all(t >= true_start - 120 for _, _, t in rows), rows
    rel_time = next(t for n, ch, t in rows if n == "lamp-4")
    assert abs(rel_time - (true_start - 60)) <= 60
