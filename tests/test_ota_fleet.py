"""``reverbere fleet update`` / ``fleet status``: the rollout's steps as an operator sees them.

The nodes' signed readings are written straight into the readings table here (what the
ingest stores once their MAC checked): tests/test_ota_rollout.py has real nodes send them.
"""

import asyncio
import json

from click.testing import CliRunner

from gateway.cli.main import cli
from gateway.ingest import registry
from gateway.metrics import Registry
from gateway.ota import rollout, updates
from gateway.ota.gauges import declare_ota_metrics
from gateway.store.db import open_db


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def signed(db, node, channel, value, t):
    """A reading as the ingest stores it after checking the node's MAC."""
    ref = registry.lookup(db, node)[0]
    with db.conn:
        db.execute("INSERT INTO readings VALUES (?, ?, ?, ?)", [ref, channel, t, value])


def test_canaries_first_then_the_rest_and_a_rollback_stops_the_rollout(tmp_path):
    invoke("gateway", "init", tmp_path)
    cfg = tmp_path / "gateway.toml"
    for n in ("lamp-001", "lamp-002", "lamp-003", "bldg-001"):
        invoke("node", "add", n, "--config", cfg)
    fw = tmp_path / "v2"
    (fw / "firmware").mkdir(parents=True)
    (fw / "firmware" / "node.mpy").write_bytes(b"M\x06" + b"node" * 500)
    r = invoke(
        "fleet", "update", "--version", 2, "--firmware", fw, "--config", cfg,
        "--nodes", "lamp-*", "--canary", 1, "--no-wait",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert r.output.splitlines() == [
        "3 nodes, 1 canaries",
        "version 2: 0 updated, 0 failed, 3 waiting (canaries first)",
    ]
    db = open_db(tmp_path / "reverbere.db")
    # Only the canary is offered: its 2.04s say "u", the others' do not.
    assert [(s["node"], s["version"]) for s in updates.status(db)] == [("lamp-001", 2)]
    # What the node says about itself when it fetches is not enough ...
    updates.Pending(db).report("lamp-001", 2, 1)
    assert rollout.advance(db).counts == {"offered": 1, "waiting": 2}
    # ... its signed reading is: confirmed, its offer withdrawn, the others offered.
    signed(db, "lamp-001", "fw", 2, 1_800_000_000)
    status = json.loads(invoke("fleet", "status", "--config", cfg, "--format", "json").output)
    by = {s["node"]: s for s in status}
    assert by["lamp-001"] == {
        "node": "lamp-001", "running": 2, "trial": None, "target": 2, "state": "confirmed"
    }  # fmt: skip
    assert by["lamp-002"]["state"] == by["lamp-003"]["state"] == "offered"
    assert by["bldg-001"]["state"] == "idle"  # not in this rollout
    assert [s["node"] for s in updates.status(db) if s["version"]] == ["lamp-002", "lamp-003"]
    # lamp-002 rolled back (the boot shim gave v2 up): --max-failures 0, so the rollout stops
    # and lamp-003's offer is withdrawn.
    signed(db, "lamp-002", "fw", 1, 1_800_000_100)
    signed(db, "lamp-002", "fwx", 2, 1_800_000_100)
    table = invoke("fleet", "status", "--config", cfg).output
    assert "version 2: 1 updated, 1 failed, 0 waiting, 1 cancelled (STOPPED" in table
    assert [s["node"] for s in updates.status(db) if s["version"]] == []
    states = {u.node: u.state for u in rollout.node_states(db)}
    assert states == {
        "bldg-001": "idle", "lamp-001": "confirmed", "lamp-002": "rolled_back",
        "lamp-003": "cancelled",
    }  # fmt: skip
    assert rollout.state_counts(db) == {
        "idle": 1, "confirmed": 1, "rolled_back": 1, "cancelled": 1
    }  # fmt: skip


def test_a_pattern_that_matches_no_node_is_refused_with_a_hint(tmp_path):
    invoke("gateway", "init", tmp_path)
    cfg = tmp_path / "gateway.toml"
    invoke("node", "add", "lamp-001", "--config", cfg)
    r = invoke("fleet", "update", "--version", 2, "--config", cfg, "--nodes", "bldg-*")
    assert r.exit_code == 1
    assert "no registered node matches 'bldg-*'" in r.output and "node list" in r.output


def test_metrics_count_the_nodes_per_update_state_once_a_rollout_exists(tmp_path):
    invoke("gateway", "init", tmp_path)
    cfg = tmp_path / "gateway.toml"
    for n in ("lamp-001", "lamp-002"):
        invoke("node", "add", n, "--config", cfg)
    db = open_db(tmp_path / "reverbere.db")
    registry_ = Registry()
    declare_ota_metrics(registry_, db, every=0)
    assert "reverbere_ota_nodes{" not in registry_.render()  # no rollout yet: no series
    rollout.start(db, 2, [("firmware/node.mpy", b"M\x06node")], ["lamp-001"], canary=1)
    text = registry_.render()
    assert 'reverbere_ota_nodes{state="offered"} 1' in text
    assert 'reverbere_ota_nodes{state="idle"} 1' in text
    assert 'reverbere_ota_nodes{state="failed"} 0' in text


def test_a_node_silent_past_the_timeout_counts_as_failed_and_its_offer_goes(tmp_path):
    # A node off the network says nothing signed: after TIMEOUT it is a failure (and with
    # --max-failures 1, one failure does not stop the rollout).
    invoke("gateway", "init", tmp_path)
    invoke("node", "add", "lamp-001", "--config", tmp_path / "gateway.toml")
    db = open_db(tmp_path / "reverbere.db")
    files = [("firmware/node.mpy", b"M\x06node")]
    assert rollout.start(db, 2, files, ["lamp-001"], max_failures=1, now=1000).phase == "canary"
    assert rollout.advance(db, 1000 + rollout.TIMEOUT).counts == {"offered": 1}
    p = rollout.advance(db, 1001 + rollout.TIMEOUT)
    assert (p.phase, p.counts) == ("done", {"failed": 1})
    assert updates.status(db)[0]["version"] is None


def test_the_gateway_steps_an_open_rollout_by_itself(tmp_path):
    # No `fleet update` waiting: the service's own watch settles the node from its signed
    # reading and withdraws its offer ("u" leaves the 2.04s).
    from tests.gateway_helpers import add_node, running_gateway

    async def scenario():
        async with running_gateway(tmp_path) as gw:
            add_node(gw, "lamp-001")
            db = open_db(gw.cfg.database)
            rollout.start(db, 2, [("firmware/node.mpy", b"M\x06node")], ["lamp-001"], canary=1)
            assert gw.ota_pending("lamp-001") == 2
            signed(db, "lamp-001", "fw", 2, 1_800_000_000)
            watch = asyncio.create_task(gw._ota_watch(every=0.01))
            try:
                while rollout.is_open(db):
                    await asyncio.sleep(0.01)
            finally:
                watch.cancel()
            assert gw.ota_pending("lamp-001") is None  # re-read at once after the step
            return [u.state for u in rollout.node_states(db)]

    assert asyncio.run(scenario()) == ["confirmed"]
