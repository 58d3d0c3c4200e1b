"""The spans of raw readings owed to the platform that a commit writes in its own transaction
(table ``sync_raw``; what a span is and who owns a reading: gateway/sync/raw.py).

Apart from gateway/sync/ because the store's writer process (gateway/store/commit.py) runs it, and
importing the sync package there would triple that process's memory (15 to 42 MB).
"""

import sqlite3
from collections.abc import Collection, Iterable, Sequence

MAX_SPAN_ERRORS = 5  # a reading the platform refused this often is set aside (rejected)


class RawSpans:
    """``RawSpans(channels)(conn, new)``: owe the platform the new readings of a commit, of
    the channels in ``channels`` (None: every channel), inside its transaction. An
    ``in_commit`` log of the committer (picklable: it goes to the writer process)."""

    def __init__(self, channels: Collection[str] | None = None) -> None:
        self.channels = None if channels is None else frozenset(channels)

    def __call__(self, conn: sqlite3.Connection, new: dict[tuple[int, str], list[float]]) -> None:
        for (node, channel), times in new.items():
            if self.channels is None or channel in self.channels:
                log_times(conn, node, channel, times)


def _runs(
    conn: sqlite3.Connection, node: int, channel: str, times: Iterable[float]
) -> list[tuple[float, float, int]]:
    """``times`` (stored readings of one node and channel) as tight runs ``(first, last, n)``:
    no other stored reading lies inside a run."""
    mine = sorted(set(times))
    a, b = mine[0], mine[-1]
    (count,) = conn.execute(
        "SELECT count(*) FROM readings WHERE node = ? AND channel = ? AND time BETWEEN ? AND ?",
        [node, channel, a, b],
    ).fetchone()
    if count == len(mine):
        return [(a, b, len(mine))]
    wanted = set(mine)
    runs: list[list] = []
    current: list | None = None
    for (t,) in conn.execute(
        "SELECT time FROM readings WHERE node = ? AND channel = ? AND time BETWEEN ? AND ?"
        " ORDER BY time",
        [node, channel, a, b],
    ):
        if t in wanted:
            if current is None:
                current = [t, t, 0]
                runs.append(current)
            current[1] = t
            current[2] += 1
        else:
            current = None
    return [(r[0], r[1], r[2]) for r in runs]


def log_times(
    conn: sqlite3.Connection, node: int, channel: str, times: Sequence[float], errors: int = 0
) -> None:
    """Owe the platform these stored readings (times of one node ref and channel)."""
    if not times:
        return
    runs = _runs(conn, node, channel, times)
    if errors == 0:
        newest = conn.execute(
            "SELECT id, last FROM sync_raw WHERE rejected IS NULL AND errors = 0"
            " AND id = (SELECT max(id) FROM sync_raw WHERE node = ? AND channel = ?)",
            [node, channel],
        ).fetchone()
        a, b, n = runs[0]
        if newest is not None and newest[1] < a:
            gap = conn.execute(
                "SELECT 1 FROM readings WHERE node = ? AND channel = ? AND time > ? AND time < ?"
                " LIMIT 1",
                [node, channel, newest[1], a],
            ).fetchone()
            if gap is None:  # right after the newest span: extend it
                conn.execute(
                    "UPDATE sync_raw SET last = ?, n = n + ? WHERE id = ?", [b, n, newest[0]]
                )
                runs = runs[1:]
    reason = "the platform refused these readings" if errors >= MAX_SPAN_ERRORS else None
    conn.executemany(
        "INSERT INTO sync_raw (node, channel, first, last, n, errors, rejected)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(node, channel, a, b, n, errors, reason) for a, b, n in runs],
    )
