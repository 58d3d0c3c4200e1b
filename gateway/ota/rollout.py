"""A staged rollout: a new version to a few canary nodes first, then to the rest; stopped when
too many fail. Decided only from what the nodes SIGNED.

What a node says when it asks for its manifest (``v=``, ``r=``, gateway/ota/resource.py) is
not authenticated: anyone on the radio could claim a node updated. The rollout trusts only the
node's readings, which the ingest stored after checking their MAC: after each boot and after
each update the node adds the version it runs to its next pack (firmware/node.py), as the
channel ``fw`` once confirmed, ``fwt`` while on trial, and ``fwx``, the version it gave up
(rolled back by the boot shim, refused, or failed). So a node is

- ``confirmed`` when its latest ``fw`` is the version rolled out (or above);
- ``rolled_back`` when its latest ``fwx`` is that version (it will never ask for it again);
- ``failed`` when it did neither within ``timeout`` seconds of its offer (off the network,
  stuck): counted as a failure, its offer withdrawn.

Each end withdraws the node's offer (no more ``"u"`` in its 2.04s). ``advance`` does one step
and is called again and again by whoever drives the rollout (``reverbere fleet update`` while
it waits, ``fleet status``, the gateway every minute through ``tick``, the demo): the rollout
lives in the database, so a step may come from another process, or after a restart.

The timeout is judged on the clock that stamped the offers. A rollout started without a
``now`` (``fleet update``) is on the wall clock, which the gateway's own minute step shares:
a canary that never answers fails 6 hours after its offer even when nobody runs the CLI. A
simulator (the demo, the benchmarks, the tests) starts its rollouts at its own simulated
time: the gateway's step then leaves the timeout to the simulator's own steps.
"""

import fnmatch
import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlite_utils

from gateway.ingest import registry
from gateway.ota import updates

STATES = ("waiting", "offered", "confirmed", "rolled_back", "failed", "cancelled")
ENDED = ("confirmed", "rolled_back", "failed", "cancelled")
FAILURES = ("rolled_back", "failed")
TIMEOUT = 6 * 3600.0  # s: a node that confirms nothing within this is counted as failed


class RolloutError(Exception):
    """A rollout that cannot start; the message says why."""


@dataclass(frozen=True)
class NodeUpdate:
    """One node's firmware as the gateway knows it from its signed readings."""

    node: str
    running: int | None  # the confirmed version (latest "fw"), None: never said
    trial: int | None  # a version on trial (latest "fwt" above ``running``)
    target: int | None  # the version rolled out to it
    state: str  # one of STATES, or "idle" when in no rollout


@dataclass
class Progress:
    version: int
    phase: str  # "canary", "rest", "done", "stopped"
    counts: dict[str, int] = field(default_factory=dict)  # state -> nodes

    @property
    def done(self) -> bool:
        return self.phase in ("done", "stopped")


def select_nodes(db: sqlite_utils.Database, patterns: Iterable[str] = ()) -> list[str]:
    """Registered nodes matching ``patterns`` (ids, or groups as shell patterns: "lamp-*");
    every registered node when there is none. Raises when a pattern matches nothing."""
    known = [n.id for n in registry.list_nodes(db)]
    patterns = list(patterns)
    if not patterns:
        return known
    chosen: list[str] = []
    for p in patterns:
        hits = fnmatch.filter(known, p)
        if not hits:
            raise RolloutError(f"no registered node matches {p!r}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def start(
    db: sqlite_utils.Database,
    version: int,
    files: Iterable[tuple[str, bytes]],
    nodes: list[str],
    node_class: str = "esp32",
    canary: int = 2,
    max_failures: int = 0,
    deflate: bool = True,
    now: float | None = None,
) -> Progress:
    """Begin rolling ``version`` (``files``: slot path, bytes) out to ``nodes``: the first
    ``canary`` of them first. Replaces a previous rollout (whose offers are withdrawn).
    ``deflate=False`` serves new files as they are (benchmarks/ota.py compares); ``now``:
    as for ``advance``."""
    if not nodes:
        raise RolloutError("no node to update")
    if version < 1:
        raise RolloutError(f"version {version} must be 1 or more")
    with db.atomic():
        for (node,) in db.execute("SELECT node FROM ota_rollout WHERE state = 'offered'"):
            updates.withdraw(db, node)
        db.execute("DELETE FROM ota_rollout")
        db.execute("DELETE FROM ota_release")
        for path, data in sorted(files):
            entry = updates.store_file(db, path, data, deflate)
            db.execute("INSERT INTO ota_release VALUES (?, ?)", [path, entry[2].hex()])
        for key, value in (("max_failures", max_failures), ("clock", _clock(now))):
            db.execute(
                "INSERT INTO ota_meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
        for i, node in enumerate(nodes):
            db.execute(
                "INSERT INTO ota_rollout (node, version, node_class, wave, state) "
                "VALUES (?, ?, ?, ?, 'waiting')",
                [node, version, node_class, 0 if i < canary else 1],
            )
    return advance(db, now)


def _clock(now: float | None) -> str:
    """Which clock stamps a rollout's offers: the wall clock's ``time.time()``, or a time
    given by whoever drives it (a simulator's)."""
    return "wall" if now is None else "given"


def tick(db: sqlite_utils.Database, now: float | None = None) -> Progress | None:
    """The gateway's own step (gateway/service.py, every minute): ``advance`` an open
    rollout, with the timeout when its offers were stamped with the wall clock, as ``fleet
    update`` stamps them (``now``: that clock's time, ``time.time()`` when None); without
    it when a simulator stamped them, whose own steps judge the timeout on its time. None
    when no rollout is open."""
    if not is_open(db):
        return None
    row = db.execute("SELECT value FROM ota_meta WHERE key = 'clock'").fetchone()
    if row is not None and row[0] != _clock(None):
        return advance(db, now, timeout=math.inf)
    return advance(db, now)


def is_open(db: sqlite_utils.Database) -> bool:
    """A rollout has nodes still waiting or offered: ``advance`` has work to do."""
    return bool(
        db.execute(
            "SELECT 1 FROM ota_rollout WHERE state IN ('waiting', 'offered') LIMIT 1"
        ).fetchone()
    )


def _release(db: sqlite_utils.Database) -> list[tuple[str, bytes]]:
    return [
        (path, data)
        for path, data in db.execute(
            "SELECT r.path, f.data FROM ota_release r JOIN ota_files f USING (sha256)"
        )
    ]


def settled(target: int, running: int | None, given_up: int | None) -> str | None:
    """What a node's signed readings say of the version ``target`` offered to it: "confirmed"
    once it runs ``target`` or later (its ``fw``), "rolled_back" once it gave ``target`` up
    (its ``fwx``), None while they say neither (the rollout's step and the console judge by
    this)."""
    if running is not None and running >= target:
        return "confirmed"
    if given_up is not None and given_up == target:
        return "rolled_back"
    return None


def _latest(db: sqlite_utils.Database, ref: int, channel: str) -> int | None:
    row = db.execute(
        "SELECT value FROM readings WHERE node = ? AND channel = ? ORDER BY time DESC LIMIT 1",
        [ref, channel],
    ).fetchone()
    return None if row is None else int(row[0])


def advance(
    db: sqlite_utils.Database, now: float | None = None, timeout: float = TIMEOUT
) -> Progress:
    """One step: settle the offered nodes from their signed readings, stop if more than
    ``max_failures`` failed, offer the next wave once the canaries all confirmed."""
    now = time.time() if now is None else now
    refs = {v: k for k, v in registry.node_ids(db).items()}
    rows = db.execute(
        "SELECT node, version, node_class, wave, state, offered FROM ota_rollout"
    ).fetchall()
    if not rows:
        raise RolloutError("no rollout: start one with reverbere fleet update")
    version = rows[0][1]
    with db.atomic():
        for node, v, _, _, state, offered in rows:
            if state not in ("waiting", "offered"):
                continue
            ref = refs.get(node)
            fw = _latest(db, ref, "fw") if ref is not None else None
            given_up = _latest(db, ref, "fwx") if state == "offered" and ref is not None else None
            new = settled(v, fw, given_up)
            if new is None and state == "offered" and now - offered > timeout:
                new = "failed"
            if new:
                _end(db, node, new, now)
        counts = _counts(db)
        limit = int(
            db.execute("SELECT value FROM ota_meta WHERE key = 'max_failures'").fetchone()[0]
        )
        failures = sum(counts.get(s, 0) for s in FAILURES)
        if failures > limit:
            for (node,) in db.execute(
                "SELECT node FROM ota_rollout WHERE state IN ('waiting', 'offered')"
            ).fetchall():
                _end(db, node, "cancelled", now)
            return Progress(version, "stopped", _counts(db))
        canaries_open = db.execute(
            "SELECT count(*) FROM ota_rollout WHERE wave = 0 AND state NOT IN "
            "('confirmed', 'rolled_back', 'failed', 'cancelled')"
        ).fetchone()[0]
        wave = 0 if canaries_open else 1
        waiting = db.execute(
            "SELECT node, node_class FROM ota_rollout WHERE state = 'waiting' AND wave <= ?",
            [wave],
        ).fetchall()
        if waiting:
            files = _release(db)
            for node, cls in waiting:
                updates.offer(db, node, version, files, cls)
                db.execute(
                    "UPDATE ota_rollout SET state = 'offered', offered = ? WHERE node = ?",
                    [now, node],
                )
        counts = _counts(db)
    open_ = counts.get("waiting", 0) + counts.get("offered", 0)
    phase = "done" if not open_ else ("canary" if wave == 0 else "rest")
    return Progress(version, phase, counts)


def _end(db: sqlite_utils.Database, node: str, state: str, now: float) -> None:
    updates.withdraw(db, node)
    db.execute("UPDATE ota_rollout SET state = ?, ended = ? WHERE node = ?", [state, now, node])


def _counts(db: sqlite_utils.Database) -> dict[str, int]:
    return dict(Counter(s for (s,) in db.execute("SELECT state FROM ota_rollout")))


def node_states(db: sqlite_utils.Database) -> list[NodeUpdate]:
    """Every registered node's version and update state, from its signed readings and the
    rollout: for ``reverbere fleet status``, the console and /metrics. Reads only."""
    rollout = {
        node: (v, state)
        for node, v, state in db.execute("SELECT node, version, state FROM ota_rollout")
    }
    out = []
    for n in registry.list_nodes(db):
        ref = registry.lookup(db, n.id)[0]
        running = _latest(db, ref, "fw")
        trial = _latest(db, ref, "fwt")
        if trial is not None and running is not None and trial <= running:
            trial = None
        target, state = rollout.get(n.id, (None, "idle"))
        out.append(NodeUpdate(n.id, running, trial, target, state))
    return out


def state_counts(db: sqlite_utils.Database) -> dict[str, int]:
    """Registered nodes per update state, "idle" for those in no rollout: the gauges' values.
    The state alone decides it, so the counts are one grouped query (one primary-key look-up in
    ``ota_rollout`` per node), not :func:`node_states`, which also reads every node's versions
    from its readings (two queries per node)."""
    return dict(
        db.execute(
            "SELECT coalesce(r.state, 'idle'), count(*) FROM nodes n"
            " LEFT JOIN ota_rollout r ON r.node = n.id WHERE n.key IS NOT NULL"
            " GROUP BY 1"
        ).fetchall()
    )
