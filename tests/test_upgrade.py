"""Upgrading the database is explicit and safe (gateway.store.db.upgrade): only `gateway
upgrade` and the service's start migrate, after a backup; every other command says what to
run; a database a newer version upgraded is refused by name."""

import asyncio
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import sqlite_utils
from click.testing import CliRunner
from gateway_helpers import make_config

from gateway import daemon
from gateway.cli.main import cli
from gateway.ingest import registry
from gateway.service import Gateway
from gateway.store.commit import NO_COUNTER
from gateway.store.db import (
    NeedsUpgrade,
    SchemaTooNew,
    code_schema_version,
    migration_sets,
    open_db,
    schema_status,
    upgrade,
)

PREVIOUS_RELEASE = "39de424"  # the last commit of 0.1.0's layout (gateway/db.py)
ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def older_database(path: Path) -> list[tuple[str, str]]:
    """A database whose every set stops before its newest migration (sqlite-utils'
    ``stop_before``: the schema an older version made, not rows deleted afterwards), with a
    node as 0.1.0 left it (``last_seq`` 0: nothing stored). Returns what an upgrade owes."""
    db = sqlite_utils.Database(path)
    db.execute("PRAGMA journal_mode=WAL")
    owed = []
    for m in migration_sets():
        names = [p.name for p in m.pending(sqlite_utils.Database(memory=True))]
        if len(names) > 1:
            m.apply(db, stop_before=names[-1])
            owed.append((m.name, names[-1]))
        else:
            m.apply(db)
    db.execute(
        "INSERT INTO nodes (id, key, added, last_seq) VALUES ('lamp-1', ?, 0, 0)", [b"k" * 32]
    )
    db.conn.commit()
    db.close()
    os.chmod(path, 0o600)
    return owed


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\ndatabase = "reverbere.db"\n')
    os.chmod(path, 0o600)
    return path


def backups(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("reverbere.db.*.bak"))


def test_a_command_on_an_older_database_says_to_upgrade_and_changes_nothing(tmp_path):
    owed = older_database(tmp_path / "reverbere.db")
    assert owed, "no set has two migrations yet: this test would test nothing"
    with pytest.raises(NeedsUpgrade, match="reverbere gateway upgrade"):
        open_db(tmp_path / "reverbere.db")
    r = invoke("node", "list", "--config", config_file(tmp_path))
    assert r.exit_code == 1 and "run `reverbere gateway upgrade" in r.output
    assert "Traceback" not in r.output
    db = sqlite_utils.Database(tmp_path / "reverbere.db")
    assert set(schema_status(db).pending) == set(owed)  # not migrated behind the operator's back


def test_upgrade_backs_up_first_then_migrates(tmp_path):
    owed = older_database(tmp_path / "reverbere.db")
    before = len(schema_status(sqlite_utils.Database(tmp_path / "reverbere.db")).pending)
    r = invoke("gateway", "upgrade", "--config", config_file(tmp_path))
    assert r.exit_code == 0, r.output
    assert f"to {code_schema_version()}" in r.output and "node keys" in r.output
    [bak] = backups(tmp_path)
    # named with the old schema version, and the date; readable by its owner only
    assert f".schema{code_schema_version() - before}." in bak.name
    assert stat.S_IMODE(bak.stat().st_mode) == 0o600
    # the backup is the database as it was: still owing the migrations
    old = sqlite_utils.Database(bak)
    assert set(schema_status(old).pending) == set(owed)
    assert old.execute("SELECT last_seq FROM nodes").fetchone()[0] == 0
    db = open_db(tmp_path / "reverbere.db")  # now current: no NeedsUpgrade
    status = schema_status(db)
    assert status.pending == () and status.recorded["schema_version"] == str(code_schema_version())
    assert registry.lookup(db, "lamp-1")[2] == NO_COUNTER  # registry m002 ran on the old row
    again = invoke("gateway", "upgrade", "--config", config_file(tmp_path))
    assert "nothing to upgrade" in again.output and len(backups(tmp_path)) == 1


def test_a_newer_database_is_refused_naming_both_versions(tmp_path):
    path = tmp_path / "reverbere.db"
    open_db(path).close()
    con = sqlite3.connect(path)
    con.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
        " VALUES ('reverbere.store', 'm099_from_the_future', 'x')"
    )
    con.execute("UPDATE _reverbere_schema SET value = '9.9.0' WHERE key = 'reverbere_version'")
    con.commit()
    con.close()
    with pytest.raises(SchemaTooNew) as e:
        open_db(path)
    text = str(e.value)
    assert "reverbere 9.9.0" in text and "m099_from_the_future" in text
    assert f"version {code_schema_version() + 1}" in text  # the database's
    assert f"version {code_schema_version()};" in text  # this code's
    r = invoke("gateway", "upgrade", "--config", config_file(tmp_path))
    assert r.exit_code == 1 and "newer" in r.output and backups(tmp_path) == []


def test_upgrade_refuses_while_a_gateway_holds_the_database(tmp_path):
    older_database(tmp_path / "reverbere.db")
    with daemon.instance_lock(tmp_path / "reverbere.db"):
        r = invoke("gateway", "upgrade", "--config", config_file(tmp_path))
    assert r.exit_code == 1 and "already running" in r.output
    assert backups(tmp_path) == []


def test_the_service_upgrades_at_start_after_a_backup(tmp_path):
    older_database(tmp_path / "reverbere.db")

    async def run():
        gw = Gateway(make_config(tmp_path))  # its database: tmp_path/reverbere.db
        await gw.start()
        await gw.stop()

    asyncio.run(run())
    assert len(backups(tmp_path)) == 1
    assert schema_status(sqlite_utils.Database(tmp_path / "reverbere.db")).pending == ()


def test_a_new_database_gets_its_schema_without_a_backup(tmp_path):
    done = upgrade(tmp_path / "reverbere.db")
    assert done.backup is None and done.after == code_schema_version()
    assert backups(tmp_path) == []


OLD_RELEASE_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from gateway.db import open_db
from gateway import registry
db = open_db(sys.argv[2])
registry.add_node(db, "lamp-9")
db.close()
"""


def test_a_database_made_by_the_previous_release(tmp_path):
    """The real thing: the database 0.1.0's own code makes (from git history, when there)."""
    tree = tmp_path / "old"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", ROOT, "archive", PREVIOUS_RELEASE, "gateway", "protocols"],
        capture_output=True,
    )
    if archive.returncode:
        pytest.skip(f"no git history with {PREVIOUS_RELEASE}")
    subprocess.run(["tar", "-x", "-C", tree], input=archive.stdout, check=True)
    path = tmp_path / "reverbere.db"
    subprocess.run([sys.executable, "-c", OLD_RELEASE_SCRIPT, tree, path], check=True)
    with pytest.raises(NeedsUpgrade):
        open_db(path)
    done = upgrade(path)
    assert done.backup is not None and done.backup.exists()
    assert ("reverbere.registry", "m002_no_counter_yet") in done.applied
    db = open_db(path)
    assert registry.lookup(db, "lamp-9")[2] == NO_COUNTER
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
