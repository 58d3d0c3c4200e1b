"""The node registry: keys made at provisioning, revocation, rotation, what `node list` shows."""

import os
import stat

import pytest

from gateway.ingest import registry
from gateway.service import init_dir
from gateway.store.db import open_db


@pytest.fixture
def db(tmp_path):
    d = open_db(tmp_path / "r.db")
    yield d
    d.close()


def test_add_makes_a_fresh_32_byte_key_per_node(db):
    k1 = registry.add_node(db, "lamp-001")
    k2 = registry.add_node(db, "lamp-002")
    assert len(k1) == len(k2) == 32 and k1 != k2
    assert registry.lookup(db, "lamp-001")[1:] == (k1, -1)  # nothing stored yet: counter 0 is taken


def test_add_refuses_an_existing_node_and_bad_ids(db):
    registry.add_node(db, "lamp-001")
    with pytest.raises(registry.NodeExists):
        registry.add_node(db, "lamp-001")
    for bad in ("", "a:b", "x" * 65, "é", "a b"):
        with pytest.raises(registry.BadNodeId):
            registry.add_node(db, bad)


def test_remove_revokes_the_key_but_keeps_the_ref_for_its_readings(db):
    registry.add_node(db, "lamp-001")
    ref = registry.lookup(db, "lamp-001")[0]
    registry.remove_node(db, "lamp-001")
    assert registry.lookup(db, "lamp-001") is None
    assert registry.list_nodes(db) == []
    assert [n.active for n in registry.list_nodes(db, include_removed=True)] == [False]
    with pytest.raises(registry.NodeNotFound):
        registry.remove_node(db, "lamp-001")
    key = registry.add_node(db, "lamp-001")  # re-provisioned: same ref, new key
    assert registry.lookup(db, "lamp-001") == (ref, key, -1)


def test_rotate_key_replaces_the_key_and_restarts_the_counter(db):
    old = registry.add_node(db, "lamp-001")
    db.execute("UPDATE nodes SET last_seq = 40 WHERE id = 'lamp-001'")
    new = registry.rotate_key(db, "lamp-001")
    assert new != old and registry.lookup(db, "lamp-001")[1:] == (new, -1)
    with pytest.raises(registry.NodeNotFound):
        registry.rotate_key(db, "nope")


def test_the_database_holding_keys_is_readable_by_its_owner_only(tmp_path):
    path = init_dir(tmp_path / "gw")
    mode = stat.S_IMODE(os.stat(path.parent / "reverbere.db").st_mode)
    assert mode == 0o600


def test_node_cache_is_a_prefilter_refreshed_from_the_database(db):
    key = registry.add_node(db, "lamp-001")
    cache = registry.NodeCache(db, refresh=3600)
    assert cache.get("lamp-001") == (1, key, -1)
    assert cache.get("lamp-002") is None
    registry.add_node(db, "lamp-002")  # e.g. `reverbere node add` from another process
    assert cache.get("lamp-002") is None  # a miss is remembered until the next reload
    new = registry.rotate_key(db, "lamp-001")
    cache.accepted("lamp-001", key, 7)
    assert cache.get("lamp-001") == (1, key, 7)  # stale until reloaded
    cache.reload()
    assert cache.get("lamp-001") == (1, new, -1)
    assert cache.get("lamp-002") is not None
