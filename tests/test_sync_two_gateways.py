"""Several gateways, one platform (hardening issue 13, item 20).

Node ids repeat from one town to the next (``lamp-001``), so a Thing is found by its name and
the gateway's id (``[sync] gateway_id``, a Thing property). Before, the second gateway found
the first one's Things by name, adopted them and wrote its summaries into them. These tests
run two gateways with the same node ids against one real platform (django-ogc-sensorthings)
and read the platform's own database: each town's figures on its own Things, exactly once.
"""

import datetime
import json
import sqlite3
from collections import Counter
from pathlib import Path

import httpx

from gateway.store.db import open_db
from gateway.sync.budget import Budget
from gateway.sync.config import DEFAULT_GATEWAY_ID, SyncConfig
from gateway.sync.outbox import ANOMALIES, enqueue_events, enqueue_summaries
from gateway.sync.report import as_record, from_outbox
from gateway.sync.sensorthings import GATEWAY_PROPERTY, SensorThingsTarget
from gateway.sync.worker import SyncWorker
from tests.sync_helpers import locations, some_events, week_of_summaries

NODES = 3


def _gateway(tmp_path: Path, platform, gateway_id: str, seed: int) -> SyncWorker:
    """A gateway owing 6 hours of ``NODES`` lamps (``lamp-000``...) and their events."""
    db = open_db(tmp_path / f"{gateway_id}.db")
    enqueue_summaries(db, week_of_summaries(NODES, hours=6, seed=seed))
    enqueue_events(db, some_events(NODES, seed=seed))
    budget = Budget(db, None)
    target = SensorThingsTarget(
        platform.url, db, budget, locations=locations(NODES), gateway_id=gateway_id
    )
    return SyncWorker(db, target, budget, batch_rows=500, backoff_base=0.01)


def _things(platform_db: Path) -> list[tuple[str, str | None]]:
    """``(name, gateway property)`` of every Thing on the platform."""
    with sqlite3.connect(platform_db) as conn:
        rows = conn.execute(
            "SELECT name, properties FROM sensorthings_v1_1_django_backend_thing ORDER BY name"
        ).fetchall()
    return [(name, json.loads(props or "{}").get(GATEWAY_PROPERTY)) for name, props in rows]


def _by_gateway(platform_db: Path) -> dict[str | None, tuple[Counter, Counter]]:
    """Every Observation on the platform as the gateway's records, per the ``gateway``
    property of the Thing it hangs from. Read from the platform's own database, not through
    the client under test."""
    sql = (
        "SELECT t.properties, d.name, o.phenomenon_time_begin, o.result, o.parameters "
        "FROM sensorthings_v1_1_django_backend_observation o "
        "JOIN sensorthings_v1_1_django_backend_datastream d ON d.id = o.datastream_id "
        "JOIN sensorthings_v1_1_django_backend_thing t ON t.id = d.thing_id"
    )
    out: dict[str | None, tuple[Counter, Counter]] = {}
    with sqlite3.connect(platform_db) as conn:
        for props, name, when, result, params in conn.execute(sql):
            owner = json.loads(props or "{}").get(GATEWAY_PROPERTY)
            node, _, stream = name.rpartition("/")
            t = int(datetime.datetime.fromisoformat(when).replace(tzinfo=datetime.UTC).timestamp())
            _, record = as_record(node, stream, t, result, json.loads(params or "{}"))
            summaries, events = out.setdefault(owner, (Counter(), Counter()))
            (events if stream == ANOMALIES else summaries)[record] += 1
    return out


def _assert_own_figures(worker: SyncWorker, held: tuple[Counter, Counter]) -> None:
    want_s, want_e = from_outbox(worker.db, 0, 2**31)
    got_s, got_e = held
    assert max(got_s.values()) == 1 and max(got_e.values()) == 1, "duplicates"
    assert got_s == Counter(want_s)
    assert got_e == Counter(want_e)


def test_two_towns_with_the_same_node_ids_keep_their_figures_apart(tmp_path, platform):
    lyon = _gateway(tmp_path, platform, "lyon-3f9a2c", seed=1)
    metz = _gateway(tmp_path, platform, "metz-81d0e4", seed=7)
    assert lyon.sync_until_idle() == "idle"
    assert metz.sync_until_idle() == "idle"
    # Each again, interleaved: nothing new is made, nothing sent twice.
    assert lyon.sync_until_idle() == "idle" and metz.sync_until_idle() == "idle"
    for w in (lyon, metz):
        w.target.close()

    names = [f"lamp-{n:03d}" for n in range(NODES)]
    assert _things(platform.db_path) == sorted(
        (n, g) for n in names for g in ("lyon-3f9a2c", "metz-81d0e4")
    )
    held = _by_gateway(platform.db_path)
    assert set(held) == {"lyon-3f9a2c", "metz-81d0e4"}
    _assert_own_figures(lyon, held["lyon-3f9a2c"])
    _assert_own_figures(metz, held["metz-81d0e4"])


def _strip_gateway_property(platform_db: Path) -> None:
    """Make the platform's Things look as a gateway made them before they carried an id."""
    with sqlite3.connect(platform_db) as conn:
        conn.execute(
            "UPDATE sensorthings_v1_1_django_backend_thing "
            "SET properties = json_remove(properties, '$.gateway')"
        )


def test_an_existing_deployment_keeps_its_things_and_a_new_town_gets_its_own(tmp_path, platform):
    # The gateway that made its Things before there were ids remembers their ids in
    # sync_streams: upgraded (a config without gateway_id, so the default id), it writes
    # its id into them once (PATCH), makes no second Thing, and goes on writing into them.
    old = _gateway(tmp_path, platform, DEFAULT_GATEWAY_ID, seed=1)
    assert old.sync_until_idle() == "idle"
    _strip_gateway_property(platform.db_path)
    old.db.execute("DELETE FROM sync_state WHERE name LIKE 'st:%:gateway'")
    enqueue_summaries(old.db, week_of_summaries(NODES, hours=8, seed=1)[-2 * NODES :])
    assert old.sync_until_idle() == "idle"
    names = [f"lamp-{n:03d}" for n in range(NODES)]
    assert _things(platform.db_path) == [(n, DEFAULT_GATEWAY_ID) for n in names]

    # A second town's gateway with the same node ids does not take them.
    new = _gateway(tmp_path, platform, "metz-81d0e4", seed=7)
    assert new.sync_until_idle() == "idle"
    for w in (old, new):
        w.target.close()
    assert _things(platform.db_path) == sorted(
        (n, g) for n in names for g in (DEFAULT_GATEWAY_ID, "metz-81d0e4")
    )
    held = _by_gateway(platform.db_path)
    _assert_own_figures(old, held[DEFAULT_GATEWAY_ID])
    _assert_own_figures(new, held["metz-81d0e4"])


def test_a_thing_without_an_id_is_adopted_once_not_duplicated(tmp_path, platform):
    # A gateway that lost its sync_streams (a new database) finds the Things made before
    # ids by their name, claims them with a PATCH and makes none; a later gateway with
    # another id finds them claimed and makes its own.
    first = _gateway(tmp_path, platform, "lyon-3f9a2c", seed=1)
    assert first.sync_until_idle() == "idle"
    first.target.close()
    _strip_gateway_property(platform.db_path)
    things_before = _things(platform.db_path)

    (tmp_path / "new").mkdir()
    again = _gateway(tmp_path / "new", platform, "lyon-3f9a2c", seed=1)
    streams = again.target.ensure_streams({(f"lamp-{n:03d}", "p") for n in range(NODES)})
    assert len(streams) >= NODES
    assert [n for n, _ in _things(platform.db_path)] == [n for n, _ in things_before]
    assert {g for _, g in _things(platform.db_path)} == {"lyon-3f9a2c"}
    again.target.close()

    other = _gateway(tmp_path, platform, "metz-81d0e4", seed=7)
    other.target.ensure_streams({(f"lamp-{n:03d}", "p") for n in range(NODES)})
    other.target.close()
    assert len(_things(platform.db_path)) == 2 * NODES


def test_gateway_id_config(tmp_path):
    assert SyncConfig.from_dict({"url": "http://127.0.0.1:1/v1.1"}).gateway_id == "default"
    cfg = SyncConfig.from_dict({"url": "http://127.0.0.1:1/v1.1", "gateway_id": "lyon-3f9a2c"})
    assert cfg.gateway_id == "lyon-3f9a2c"
    for bad in ("", "a b", "x" * 65, "-lead", "ville'"):
        try:
            SyncConfig.from_dict({"url": "http://127.0.0.1:1/v1.1", "gateway_id": bad})
        except ValueError as e:
            assert "gateway_id" in str(e)
        else:
            raise AssertionError(f"{bad!r} taken")


def test_httpx_sees_the_property_through_the_api(tmp_path, platform):
    # What a town's dashboard sees: the Thing's properties say which gateway it is.
    w = _gateway(tmp_path, platform, "lyon-3f9a2c", seed=1)
    w.target.ensure_streams({("lamp-000", "p")})
    w.target.close()
    things = httpx.get(platform.url + "/Things", params={"$select": "name,properties"}).json()
    assert things["value"][0]["properties"] == {"node": "lamp-000", "gateway": "lyon-3f9a2c"}


def test_gateway_init_writes_a_distinct_gateway_id(tmp_path):
    from click.testing import CliRunner

    from gateway.cli.gateway import gateway_group
    from gateway.config import load

    ids = []
    for town in ("lyon", "metz"):
        result = CliRunner().invoke(gateway_group, ["init", str(tmp_path / town)])
        assert result.exit_code == 0, result.output
        raw = load(tmp_path / town / "gateway.toml").section("sync")
        ids.append(SyncConfig.from_dict({**raw, "target": "sensorthings", "url": "http://h/v1.1"}))
    assert ids[0].gateway_id != ids[1].gateway_id
    assert all(i.gateway_id.startswith("gw-") for i in ids)
