"""The ``readings`` table and its log for the stages (``stages_pending``): their migrations and
the queries on them.

``readings`` holds every stored reading once, keyed (node, channel, time), so that a
retransmitted pack inserts nothing. ``stages_pending`` is what each commit stored that the
after-commit stages have not yet confirmed (one row per (node, channel) of the commit, see
gateway/store/committer.py); ``pending_readings`` and ``logged_readings`` read those readings
back for the stages (gateway/store/stages.py). The commit itself writes both tables
(gateway/store/commit.py, which imports nothing of the gateway's).
"""

from collections.abc import Iterator, Sequence

import sqlite_utils
from sqlite_utils.migrations import Migrations

from gateway.store.records import Reading

# The set's name is in every database's ``_sqlite_migrations``: it stays "reverbere.store"
# (the name it had when these lived in gateway/store/committer.py).
migrations = Migrations("reverbere.store")

CATCH_UP_CHUNK = 5000  # readings per call of the stages when catching up


@migrations()
def m001_readings(db: sqlite_utils.Database) -> None:
    # WITHOUT ROWID: the key is the table, so a reading costs one b-tree entry. node is
    # nodes.ref (an integer: 1-2 bytes instead of the id's text); integral times and values
    # are stored as integers by SQLite, which keeps a reading near 20 bytes.
    db.execute(
        """
        CREATE TABLE readings (
            node INTEGER NOT NULL,
            channel TEXT NOT NULL,
            time REAL NOT NULL,
            value REAL NOT NULL,
            PRIMARY KEY (node, channel, time)
        ) WITHOUT ROWID
        """
    )


@migrations()
def m002_stages_pending(db: sqlite_utils.Database) -> None:
    # What the after-commit stages have not yet confirmed (see the module docstring): a few
    # rows per commit, deleted once the stages ran; a plain table, since it stays tiny.
    db.execute(
        """
        CREATE TABLE stages_pending (
            seq INTEGER NOT NULL,
            node INTEGER NOT NULL,
            channel TEXT NOT NULL,
            first REAL NOT NULL,
            last REAL NOT NULL
        )
        """
    )
    # By seq: deleting what the stages confirmed stays cheap even if a failing stage let it grow.
    db.execute("CREATE INDEX stages_pending_seq ON stages_pending (seq)")


def pending_readings(
    db: sqlite_utils.Database,
    chunk: int = CATCH_UP_CHUNK,
    *,
    after: int = 0,
    upto: int | None = None,
    but: Sequence[int] = (),
) -> Iterator[tuple[list[int], list[Reading]]]:
    """The readings of the commits whose stages have not all run (``stages_pending``), in
    commit order: ``(seqs, readings)`` chunks of about ``chunk`` readings, each reading once;
    only the commits after ``after`` and up to ``upto``, leaving out those in ``but``."""
    leave = set(but)
    seqs = [
        seq
        for (seq,) in db.execute(
            "SELECT DISTINCT seq FROM stages_pending WHERE seq > ? AND seq <= ? ORDER BY seq",
            [after, upto if upto is not None else 2**62],
        )
        if seq not in leave
    ]
    done: list[int] = []
    out: list[Reading] = []
    seen: set[tuple[str, str, float]] = set()
    for seq in seqs:
        for r in logged_readings(db, seq):
            if (r.node, r.channel, r.time) not in seen:
                seen.add((r.node, r.channel, r.time))
                out.append(r)
        done.append(seq)
        if len(out) >= chunk:
            yield done, out
            done, out = [], []
            seen.clear()  # a reading in two chunks goes twice: harmless, stages are idempotent
    if done:
        yield done, out


def logged_readings(db: sqlite_utils.Database, seq: int) -> list[Reading]:
    """The readings commit ``seq`` logged in ``stages_pending``, read back from ``readings``
    (with any other reading of the same node and channel between its first and last)."""
    out = []
    for node, channel, first, last in db.execute(
        "SELECT n.id, p.channel, p.first, p.last FROM stages_pending p"
        " JOIN nodes n ON n.ref = p.node WHERE p.seq = ? ORDER BY n.id, p.channel",
        [seq],
    ).fetchall():
        out.extend(
            Reading(node, channel, t, v)
            for t, v in db.execute(
                "SELECT r.time, r.value FROM readings r JOIN nodes n ON n.ref = r.node"
                " WHERE n.id = ? AND r.channel = ? AND r.time BETWEEN ? AND ? ORDER BY r.time",
                [node, channel, first, last],
            )
        )
    return out


def forget_logged(db: sqlite_utils.Database, seqs: Sequence[int]) -> None:
    """Delete the ``stages_pending`` rows of commits ``seqs`` (every stage ran on them)."""
    with db.conn:
        db.conn.executemany("DELETE FROM stages_pending WHERE seq = ?", [(s,) for s in seqs])


def newest_seq(db: sqlite_utils.Database) -> int:
    """The ``seq`` of the newest commit logged in ``stages_pending`` (0: none)."""
    return db.execute("SELECT coalesce(max(seq), 0) FROM stages_pending").fetchone()[0]


def oldest_logged(db: sqlite_utils.Database, but: Sequence[int] = ()) -> float | None:
    """The time of the oldest reading logged in ``stages_pending``, leaving out the commits
    ``but`` (None: none)."""
    return db.execute(
        f"SELECT min(first) FROM stages_pending WHERE seq NOT IN ({', '.join('?' * len(but))})",
        list(but),
    ).fetchone()[0]


def db_bytes(db: sqlite_utils.Database) -> int:
    """Bytes the database uses (its pages minus the free ones)."""
    page, count, free = (
        db.execute(f"PRAGMA {p}").fetchone()[0]
        for p in ("page_size", "page_count", "freelist_count")
    )
    return (count - free) * page


def query_readings(
    db: sqlite_utils.Database,
    node: str | None = None,
    since: float | None = None,
    until: float | None = None,
    limit: int | None = None,
) -> list[Reading]:
    """Stored readings, by node, channel, time; optionally of one node and a time range."""
    where, args = [], []
    if node is not None:
        where.append("n.id = ?")
        args.append(node)
    if since is not None:
        where.append("r.time >= ?")
        args.append(since)
    if until is not None:
        where.append("r.time < ?")
        args.append(until)
    sql = (
        "SELECT n.id, r.channel, r.time, r.value FROM readings r JOIN nodes n ON n.ref = r.node"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY n.id, r.channel, r.time"
        + (f" LIMIT {int(limit)}" if limit is not None else "")
    )
    return [Reading(*row) for row in db.execute(sql, args).fetchall()]


def delete_before(db: sqlite_utils.Database, before: float) -> int:
    """Delete raw readings older than ``before``; return how many. Their pages get reused."""
    with db.conn:
        return db.execute("DELETE FROM readings WHERE time < ?", [before]).rowcount
