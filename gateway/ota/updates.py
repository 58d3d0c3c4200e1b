"""The updates waiting for nodes: one signed manifest per node, and the files it lists.

``offer`` signs a manifest for one node (its key from the registry, the node's own manifest
counter, which only grows, even across a withdrawal) and stores it with the files, each
deflated when that makes it smaller; ``withdraw`` takes it back. Files are kept once, by
SHA-256, whatever the number of nodes. What the nodes report when they ask (the version they
run, how their last update ended) is kept beside the offer: it is what a node says about
itself, unauthenticated, for the operator's eyes only; nothing is decided from it.

``Pending`` is the ingest's view: node id -> the version waiting, for the ``"u"`` of each 2.04
answer, from a copy in memory that is read again at most every ``refresh`` seconds (an offer
made by the CLI, in another process, reaches the answers within that time).
"""

import sqlite3
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from hashlib import sha256

import sqlite_utils
from sqlite_utils.migrations import Migrations

from gateway.ingest import registry
from protocols import manifest

migrations = Migrations("reverbere.ota")

# Deflate window of the files as served: 2^10 = 1 KB, what a node inflates them with.
WBITS = 10
ABI = (6, 3)  # the .mpy version gateway/provision/build.py compiles for (mpy-cross 1.29)


@migrations()
def m001_updates(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE ota_files (
            sha256 TEXT PRIMARY KEY,      -- hex, of the file as installed
            data BLOB NOT NULL,           -- the file
            deflated BLOB                 -- zlib stream (1 KB window) if smaller, else NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE ota_nodes (
            node TEXT PRIMARY KEY,        -- node id
            seq INTEGER NOT NULL,         -- the last manifest counter used for this node
            version INTEGER,              -- the version waiting; NULL: none
            manifest BLOB,                -- its signed manifest (COSE_Mac0, alg 5)
            offered REAL,                 -- Unix time of the offer
            running INTEGER,              -- what the node last said it runs ("v=")
            result INTEGER,               -- and how its last update ended ("r=", LwM2M 5/5)
            reported REAL                 -- when it said so
        )
        """
    )


@migrations()
def m002_rollout(db: sqlite_utils.Database) -> None:
    # One staged rollout at a time (gateway/ota/rollout.py): its release, and a row per node.
    db.execute(
        """
        CREATE TABLE ota_release (
            path TEXT PRIMARY KEY,        -- a file's path in the slot
            sha256 TEXT NOT NULL          -- in ota_files
        )
        """
    )
    db.execute(
        """
        CREATE TABLE ota_rollout (
            node TEXT PRIMARY KEY,        -- node id
            version INTEGER NOT NULL,     -- the version rolled out
            node_class TEXT NOT NULL,     -- its sys.platform, for the manifest
            wave INTEGER NOT NULL,        -- 0: canary, 1: the rest
            state TEXT NOT NULL,          -- waiting, offered, confirmed, rolled_back, failed,
                                          -- cancelled (the rollout stopped before its turn)
            offered REAL,                 -- Unix time of the offer
            ended REAL                    -- Unix time of the end (confirmed, failed...)
        )
        """
    )
    db.execute("CREATE TABLE ota_meta (key TEXT PRIMARY KEY, value)")  # max_failures, clock


class UpdateError(Exception):
    """An update that cannot be offered; the message says why."""


@dataclass(frozen=True)
class Offer:
    node: str
    version: int
    seq: int
    manifest: bytes
    files: int
    bytes_served: int  # what the node downloads, deflated where it helps


def offer(
    db: sqlite_utils.Database,
    node_id: str,
    version: int,
    files: Iterable[tuple[str, bytes]],
    node_class: str,
    abi: tuple[int, int] = ABI,
) -> Offer:
    """Sign and store the manifest of ``files`` (slot path, bytes) as ``version`` for one node.

    ``node_class`` is the board's MicroPython ``sys.platform`` ("esp32", "rp2"); ``abi`` the
    .mpy (major, sub) the files were compiled for. Replaces what waited for the node."""
    found = registry.lookup(db, node_id)
    if found is None or not found[1]:
        raise UpdateError(f"no node {node_id!r} in the registry (or removed)")
    key = found[1]
    entries = []
    served = 0
    with db.atomic():
        for path, data in sorted(files):
            entry = store_file(db, path, data)
            served += entry[3] or len(data)
            entries.append(entry)
        row = db.execute("SELECT seq FROM ota_nodes WHERE node = ?", [node_id]).fetchone()
        seq = (row[0] if row else 0) + 1
        payload = manifest.encode(node_id, node_class, version, abi, entries)
        signed = manifest.sign(key, node_id, seq, payload)
        db.execute(
            """INSERT INTO ota_nodes (node, seq, version, manifest, offered) VALUES (?, ?, ?, ?, ?)
               ON CONFLICT (node) DO UPDATE SET seq = excluded.seq, version = excluded.version,
               manifest = excluded.manifest, offered = excluded.offered""",
            [node_id, seq, version, signed, time.time()],
        )
    return Offer(node_id, version, seq, signed, len(entries), served)


def store_file(
    db: sqlite_utils.Database, path: str, data: bytes, deflate: bool = True
) -> tuple[str, int, bytes, int]:
    """Keep ``data`` once by SHA-256 (deflated too, when smaller, unless ``deflate`` is
    False): its manifest entry (path, size, digest, deflated size or 0), as stored (a file
    kept before stays as it was)."""
    digest = sha256(data).hexdigest()
    keep = None
    if deflate:
        z = zlib.compressobj(9, zlib.DEFLATED, WBITS)
        deflated = z.compress(data) + z.flush()
        keep = deflated if len(deflated) < len(data) else None
    db.execute(
        "INSERT OR IGNORE INTO ota_files (sha256, data, deflated) VALUES (?, ?, ?)",
        [digest, data, keep],
    )
    (zsize,) = db.execute(
        "SELECT coalesce(length(deflated), 0) FROM ota_files WHERE sha256 = ?", [digest]
    ).fetchone()
    return (path, len(data), bytes.fromhex(digest), zsize)


def withdraw(db: sqlite_utils.Database, node_id: str) -> bool:
    """No update waits for the node any more (its counter is kept); False if none did."""
    with db.atomic():
        cur = db.execute(
            "UPDATE ota_nodes SET version = NULL, manifest = NULL "
            "WHERE node = ? AND version IS NOT NULL",
            [node_id],
        )
    return cur.rowcount > 0


def waiting_manifest(db: sqlite_utils.Database, node_id: str) -> bytes | None:
    row = db.execute(
        "SELECT manifest FROM ota_nodes WHERE node = ? AND manifest IS NOT NULL", [node_id]
    ).fetchone()
    return row[0] if row else None


def file_data(db: sqlite_utils.Database, digest: str) -> bytes | None:
    """A file as served: deflated when that was smaller (its manifest entry says so)."""
    row = db.execute("SELECT data, deflated FROM ota_files WHERE sha256 = ?", [digest]).fetchone()
    if row is None:
        return None
    return row[1] if row[1] is not None else row[0]


def status(db: sqlite_utils.Database) -> list[dict]:
    """One row per node ever offered an update: what waits and what the node last said."""
    return [
        dict(r)
        for r in db.query(
            "SELECT node, seq, version, offered, running, result, reported FROM ota_nodes "
            "ORDER BY node"
        )
    ]


class Pending:
    """node id -> the version waiting for it, from memory, re-read every ``refresh`` s."""

    def __init__(self, db: sqlite_utils.Database, refresh: float = 5.0):
        self.db = db
        self.refresh = refresh
        self._at = -refresh
        self._versions: dict[str, int] = {}

    def __call__(self, node_id: str) -> int | None:
        now = time.monotonic()
        if now - self._at >= self.refresh:
            self.reload(now)
        return self._versions.get(node_id)

    def reload(self, now: float | None = None) -> None:
        self._at = time.monotonic() if now is None else now
        rows = self.db.execute(
            "SELECT node, version FROM ota_nodes WHERE version IS NOT NULL"
        ).fetchall()
        self._versions = dict(rows)

    def report(self, node_id: str, running: int | None, result: int | None) -> None:
        """What a node said about itself when it asked for its manifest (unauthenticated:
        kept for the operator, never acted on). Lost, not waited for, if the database is busy."""
        try:
            with self.db.conn:
                self.db.execute(
                    "UPDATE ota_nodes SET running = ?, result = ?, reported = ? WHERE node = ?",
                    [running, result, time.time(), node_id],
                )
        except sqlite3.OperationalError:
            pass
