"""Alerts from a real gateway process (``reverbere gateway run``): readings that open an event
become a webhook POST; an alert that could not be delivered waits in the database across a
``kill -9`` and goes when the receiver is back; none is sent twice after a restart."""

import asyncio
import time

from alert_servers import HttpReceiver
from gateway_helpers import GatewayProcess, http_get, metric

from gateway.ingest import registry
from gateway.store.db import open_db
from sim.sender import Sender, SimNode


def config_text(receiver: HttpReceiver) -> str:
    # counter_reset made urgent: three readings of an energy counter open it at once.
    return f"""
[site]
timezone = "Europe/Paris"

[alerts]
urgent = ["counter_reset"]
retry_base_s = 1
retry_cap_s = 2

[[alerts.routes]]
name = "services"
webhook = "{receiver.url}/hook"
"""


def reset_pack(start: int) -> list[tuple]:
    """An energy counter that goes back: a counter_reset event on its third reading."""
    return [("e", start, 1000), ("e", start + 60, 1010), ("e", start + 120, 400)]


def test_alert_waits_through_an_outage_and_a_kill_9_and_goes_once(tmp_path):
    receiver = HttpReceiver()  # not started: the town's uplink is down
    cfg_path = tmp_path / "gateway.toml"
    cfg_path.write_text(config_text(receiver))
    db = open_db(tmp_path / "reverbere.db")
    meters = [SimNode(f"meter-{i}", registry.add_node(db, f"meter-{i}")) for i in (1, 2, 3)]
    db.close()
    start = int(time.time()) - 3600

    async def send(gw: GatewayProcess, node: SimNode) -> None:
        async with Sender("127.0.0.1", gw.coap_port) as sender:
            assert (await sender.send(node, reset_pack(start))).acked

    gw = GatewayProcess(cfg_path)
    try:
        asyncio.run(send(gw, meters[0]))
        gw.wait_for("alert not delivered, will retry")  # written down, then refused
        status, page = asyncio.run(http_get(gw.http_port, "/metrics"))
        assert status == 200
        assert metric(page, "reverbere_alerts_failing ") == 1  # what an administrator sees
        gw.kill()  # SIGKILL, with the alert still owed

        receiver.start()  # the link is back
        gw = GatewayProcess(cfg_path)
        got = receiver.wait(lambda r: len(r.got) == 1)
        assert got[0].body["event"]["node"] == "meter-1"
        gw.wait_for("alert sent")  # marked in the database

        asyncio.run(send(gw, meters[1]))
        receiver.wait(lambda r: len(r.got) == 2)
        gw.wait_for("alert sent")
        gw.kill()

        # After the restart, a new alert goes; the sender takes the oldest first, so one
        # already sent that it wrongly thought owed would have come before it.
        gw = GatewayProcess(cfg_path)
        asyncio.run(send(gw, meters[2]))
        got = receiver.wait(lambda r: len(r.got) >= 3)
        gw.kill()
    finally:
        if gw.proc.poll() is None:
            gw.kill()
        receiver.stop()

    assert [g.body["event"]["node"] for g in got] == ["meter-1", "meter-2", "meter-3"]
    assert len(set(receiver.keys())) == 3  # each alert once, each with its own key
    assert all(g.body["text"].startswith("Bonjour,") for g in got)
