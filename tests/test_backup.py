"""Backups and restores of the database (gateway.store.backup, `reverbere backup|restore`):
consistent while a writer commits, 0600 (the database holds the node keys), and no restore
under a running gateway."""

import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway import daemon
from gateway.cli.main import cli
from gateway.ingest import registry
from gateway.store import backup as store_backup
from gateway.store.db import NoDatabase, open_db, schema_status

BATCH = 50  # readings per transaction of the writer below


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def gateway_dir(tmp_path: Path) -> Path:
    """A config and its database with one node; returns the config's path."""
    cfg = tmp_path / "gateway.toml"
    cfg.write_text('[gateway]\ndatabase = "reverbere.db"\n')
    os.chmod(cfg, 0o600)
    db = open_db(tmp_path / "reverbere.db")
    registry.add_node(db, "lamp-1")
    db.close()
    return cfg


def test_a_backup_taken_while_a_writer_commits_is_one_commit_s_state(tmp_path):
    """Why the online backup API and not cp: each transaction writes BATCH readings, so a
    consistent copy holds a multiple of BATCH, whatever the moment it is taken."""
    gateway_dir(tmp_path)
    stop, committed = threading.Event(), threading.Event()

    def writer():
        con = sqlite3.connect(tmp_path / "reverbere.db", timeout=30)
        t = 0
        while not stop.is_set():
            with con:
                con.executemany(
                    "INSERT INTO readings (node, channel, time, value) VALUES (1, 'p', ?, 1)",
                    [(t + i,) for i in range(BATCH)],
                )
            t += BATCH
            if t >= 10 * BATCH:
                committed.set()
        con.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert committed.wait(30)  # the writer is well under way
        copies = [
            store_backup.backup(tmp_path / "reverbere.db", tmp_path / f"b{i}.db") for i in range(3)
        ]
    finally:
        stop.set()
        thread.join()
    for copy in copies:
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
        assert not Path(f"{copy}-wal").exists()  # one self-contained file
        con = sqlite3.connect(copy)
        n = con.execute("SELECT count(*) FROM readings").fetchone()[0]
        assert n >= 10 * BATCH and n % BATCH == 0
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()


def test_backup_never_overwrites_nor_creates_a_database(tmp_path):
    gateway_dir(tmp_path)
    (tmp_path / "taken.db").write_text("mine")
    with pytest.raises(store_backup.BackupError, match="never overwritten"):
        store_backup.backup(tmp_path / "reverbere.db", tmp_path / "taken.db")
    assert (tmp_path / "taken.db").read_text() == "mine"
    with pytest.raises(NoDatabase):
        store_backup.backup(tmp_path / "missing.db", tmp_path / "b.db")
    assert not (tmp_path / "missing.db").exists() and not (tmp_path / "b.db").exists()


def test_backup_and_restore_from_the_command_line(tmp_path):
    cfg = gateway_dir(tmp_path)
    r = invoke("backup", tmp_path / "saved.db", "--config", cfg)
    assert r.exit_code == 0 and "node keys" in r.output, r.output
    db = open_db(tmp_path / "reverbere.db")
    registry.add_node(db, "lamp-2")  # after the backup: the restore takes it away
    db.close()
    r = invoke("restore", tmp_path / "saved.db", "--config", cfg)
    assert r.exit_code == 0, r.output
    db = open_db(tmp_path / "reverbere.db")
    assert [n.id for n in registry.list_nodes(db)] == ["lamp-1"]
    db.close()
    [kept] = tmp_path.glob("reverbere.db.before-restore.*.bak")  # the database as it was
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert {n.id for n in registry.list_nodes(open_db(kept))} == {"lamp-1", "lamp-2"}


def test_restore_refuses_while_a_gateway_runs_on_the_database(tmp_path):
    cfg = gateway_dir(tmp_path)
    invoke("backup", tmp_path / "saved.db", "--config", cfg)
    with daemon.instance_lock(tmp_path / "reverbere.db"):  # what `gateway run` holds
        r = invoke("restore", tmp_path / "saved.db", "--config", cfg)
    assert r.exit_code == 1 and "already running" in r.output and "stop it" in r.output
    assert list(tmp_path.glob("*.bak")) == []  # nothing touched


def test_restore_refuses_what_is_not_a_whole_gateway_database(tmp_path):
    cfg = gateway_dir(tmp_path)
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE t (x)")
    other.commit()
    other.close()
    r = invoke("restore", tmp_path / "other.db", "--config", cfg)
    assert r.exit_code == 1 and "not a gateway database" in r.output
    (tmp_path / "junk.db").write_bytes(b"junk" * 1000)
    r = invoke("restore", tmp_path / "junk.db", "--config", cfg)
    assert r.exit_code == 1 and "not an SQLite database" in r.output
    store_backup.backup(tmp_path / "reverbere.db", tmp_path / "future.db")
    con = sqlite3.connect(tmp_path / "future.db")
    con.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
        " VALUES ('reverbere.store', 'm099_next', 'x')"
    )
    con.commit()
    con.close()
    r = invoke("restore", tmp_path / "future.db", "--config", cfg)
    assert r.exit_code == 1 and "newer" in r.output
    assert schema_status(open_db(tmp_path / "reverbere.db")).unknown == ()  # untouched
