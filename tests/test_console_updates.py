"""The console shows each node's firmware and where its update stands (issue 17, item 4):
the version it runs and the state of its update, judged from its signed readings (fw, fwt,
fwx) and the rollout, on the Node page and, while a rollout exists, as a column and a filter
of the Fleet page; in French and English."""

import time

import pytest
from test_console import ConsoleGateway, login
from test_console_queries import scans_in

from gateway.console import store, updates
from gateway.ingest.registry import add_node, lookup
from gateway.ota import rollout
from gateway.ota.updates import Pending
from gateway.pipeline.detect import DetectConfig
from gateway.store.db import open_db

FILES = [("main.py", b"print('v2')\n")]


def signed(db, node, channel, value, t):
    """A reading as ingest stores it once its MAC checked (the node's own report)."""
    with db.conn:
        db.execute(
            "INSERT INTO readings (node, channel, time, value) VALUES (?, ?, ?, ?)",
            [lookup(db, node)[0], channel, t, value],
        )


def view(db, node):
    return updates.update_view(db, node, lookup(db, node)[0])


def test_each_state_of_an_update_from_the_signed_readings_and_the_rollout(tmp_path):
    db = open_db(tmp_path / "gw.db")
    nodes = [f"lamp-{i}" for i in range(1, 8)]
    for n in nodes:
        add_node(db, n)
        signed(db, n, "fw", 1, time.time() - 3600)  # every node runs version 1
    t0 = time.time() - 600
    # six in the rollout of version 2, five of them canaries; lamp-7 in none
    rollout.start(db, 2, FILES, nodes[:6], canary=5, max_failures=10, now=t0)
    Pending(db).report("lamp-2", 1, 0)  # lamp-2 asked for its manifest since the offer
    signed(db, "lamp-3", "fwt", 2, t0 + 60)  # lamp-3 runs version 2 on trial
    signed(db, "lamp-4", "fw", 2, t0 + 120)  # lamp-4 confirmed it
    signed(db, "lamp-5", "fwx", 2, t0 + 120)  # lamp-5's boot shim gave it up...
    Pending(db).report("lamp-5", 1, 8)  # ...and it says why (LwM2M Update Result 8)
    before = {n: view(db, n).state for n in nodes}
    assert before == {
        "lamp-1": "offered",
        "lamp-2": "downloading",
        "lamp-3": "updating",
        "lamp-4": "confirmed",  # its readings say so before the rollout's next step
        "lamp-5": "rolled_back",
        "lamp-6": "waiting",  # not a canary: after them
        "lamp-7": "idle",
    }
    assert view(db, "lamp-3").trial == 2 and view(db, "lamp-3").running == 1
    assert view(db, "lamp-2").asked is not None and view(db, "lamp-1").asked is None
    rollout.advance(db, now=t0 + 180)
    assert view(db, "lamp-4").state == "confirmed" and view(db, "lamp-4").running == 2
    five = view(db, "lamp-5")
    assert five.state == "rolled_back" and five.reason == updates.RESULTS[8]
    assert five.ended == t0 + 180 and five.running == 1
    # six hours without a confirmation: failed
    rollout.advance(db, now=t0 + rollout.TIMEOUT + 60)
    one = view(db, "lamp-1")
    assert one.state == "failed" and one.reason == updates.NO_CONFIRMATION
    assert view(db, "lamp-7") == updates.UpdateView(1, None, None, "idle", None, None, None, None)
    db.close()


def test_a_stopped_rollout_cancels_the_nodes_not_yet_offered(tmp_path):
    db = open_db(tmp_path / "gw.db")
    for n in ("lamp-1", "lamp-2"):
        add_node(db, n)
    t0 = time.time() - 600
    rollout.start(db, 3, FILES, ["lamp-1", "lamp-2"], canary=1, max_failures=0, now=t0)
    signed(db, "lamp-1", "fwx", 3, t0 + 60)  # the canary rolled back: no reason reported
    rollout.advance(db, now=t0 + 120)
    assert view(db, "lamp-1").reason == updates.GAVE_UP
    two = view(db, "lamp-2")
    assert two.state == "cancelled" and two.reason == updates.STOPPED
    # the fleet's filter and column
    statements = []
    db.conn.set_trace_callback(statements.append)
    fleet = store.fleet(db, DetectConfig(), lambda n: {}, {}, time.time(),
                        store.FleetFilter(update="cancelled"))  # fmt: skip
    db.conn.set_trace_callback(None)
    assert scans_in(db, statements) == []  # readings by primary key, never scanned
    assert fleet.rollout and [(n.id, n.update, n.update_target) for n in fleet.nodes] == [
        ("lamp-2", "cancelled", 3)
    ]
    db.close()


@pytest.fixture
def console(tmp_path):
    c = ConsoleGateway(tmp_path)
    yield c
    c.stop()


def test_the_node_and_fleet_pages_show_the_update_in_french_and_english(console):
    c = login(console, "lecteur")
    fleet = c.get("/").text
    assert 'id="filter-update"' not in fleet  # no rollout, no update column
    db = console.db()
    t0 = time.time() - 600
    rollout.start(
        db, 2, FILES, ["lamp-001", "lamp-002", "school-01"], canary=3, max_failures=5, now=t0
    )
    signed(db, "lamp-001", "fw", 1, t0 - 60)
    signed(db, "lamp-001", "fwt", 2, t0 + 60)
    signed(db, "lamp-002", "fwx", 2, t0 + 60)
    rollout.advance(db, now=t0 + 120)
    db.close()
    node = c.get("/nodes/lamp-001").text
    assert "Mise à jour" in node and "à l'essai (version 2)" in node
    assert "version 2 à l'essai" in node and 'id="fw-running">1' in node
    other = c.get("/nodes/lamp-002").text
    assert "abandonnée (version 2)" in other and "le nœud a abandonné cette version" in other
    fleet = c.get("/").text
    assert 'id="filter-update"' in fleet and "proposée (version 2)" in fleet  # school-01
    only = c.get("/?update=rolled_back").text
    assert "lamp-002" in only and "lamp-001" not in only and "school-01" not in only
    english = login(console, "lecteur", lang="en").get("/nodes/lamp-002").text
    assert "rolled back (version 2)" in english and "the node gave the version up" in english
    api = c.get("/api/nodes").json()  # the session's API answers too
    assert {n["id"]: n["update"] for n in api}["lamp-001"] == "updating"
