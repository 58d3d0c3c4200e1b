"""The hand-off from detect and summarise to the sync outbox: the "outbox" stage.

``feed_outbox(db, readings)`` runs after ``detect`` and ``summarise`` (see gateway/service.py).
It takes every row of ``summaries`` and ``anomalies`` whose ``version`` is above its
``synced_version`` (new, or changed since: a late reading corrected an hour, an event closed),
owes it to the platform through :func:`gateway.sync.outbox.enqueue_summaries` and
:func:`~gateway.sync.outbox.enqueue_events`, and sets ``synced_version = version``, in one
transaction. From there the outbox owns exactly-once delivery; ``synced_version`` in the stage
tables means "handed to the outbox".

An event is handed over when it opens (its ``end`` is then its start) and again when it closes
or its score grows; its identity (``<channel>:<kind>:<id>``) makes the platform update the same
Observation. An hour with no reading of its own (``count`` 0: only the energy of a long counter
segment) is not sent.
"""

from collections.abc import Callable, Sequence

import sqlite_utils

from gateway.store.records import Reading


def feed_outbox(
    db: sqlite_utils.Database,
    readings: Sequence[Reading] = (),
    *,
    settled_at: float | None = None,
    grace: float | Callable[[str], float] = 3600.0,
    limit: int | None = None,
) -> int:
    """Hand every new or changed summary and event to the outbox; return how many.

    ``limit`` takes at most that many summaries, the oldest hours first, and leaves the rest
    to the next call: the stage runs in the writer's turn, and a large backlog (an upgrade, a
    month of hours closed at once) must not hold the commits, and so the acks, behind it.

    ``settled_at`` (Unix time, e.g. the newest reading just stored) holds back the summaries of
    hours still open: an hour goes once its channel has a reading after it (its figures and
    energy are final), or ``grace`` seconds after it ended (a node gone quiet). Without it the
    open hour goes at every commit, and the platform's Observation is updated as often.
    ``grace`` may be a function of the node id (the gateway's clock closes a silent node's hour
    after twice its pack span: ``Gateway.close_hours``).
    """
    from gateway.sync.outbox import Event, Summary, enqueue_events, enqueue_summaries

    with db.atomic():  # one transaction: sqlite-utils commits on its own inside `with db.conn`
        per_node = callable(grace)
        sums = db.execute(
            "SELECT s.node, s.channel, s.hour, s.count, s.min, s.max, s.mean, s.wh, s.version,"
            " s.hour + 3600 <= (SELECT c.time FROM summary_cursor c"
            "                   WHERE c.node = s.node AND c.channel = s.channel) AS closed"
            " FROM summaries s WHERE s.version > s.synced_version"
            " AND (:now IS NULL OR s.hour + 3600 + :grace <= :now"
            "      OR s.hour + 3600 <= (SELECT c.time FROM summary_cursor c"
            "                           WHERE c.node = s.node AND c.channel = s.channel))"
            " ORDER BY s.hour LIMIT :limit",
            {"now": settled_at, "grace": 0.0 if per_node else grace, "limit": limit or -1},
        ).fetchall()
        if per_node and settled_at is not None:  # each node's own grace (SQL took none)
            sums = [s for s in sums if s[9] or s[2] + 3600 + grace(s[0]) <= settled_at]
        sums = [s[:9] for s in sums]
        events = db.execute(
            "SELECT id, node, channel, kind, start, end, score, reason, waste_kwh, waste_eur,"
            " ack_by, ack_at, ack_note, version FROM anomalies WHERE version > synced_version"
        ).fetchall()
        enqueue_summaries(
            db,
            [
                Summary(node, ch, hour, count, mn, mx, mean, wh)
                for node, ch, hour, count, mn, mx, mean, wh, _ in sums
                if count
            ],
        )
        enqueue_events(
            db,
            [
                Event(
                    node,
                    ch,
                    start,
                    start if end is None else end,
                    kind,
                    score,
                    reason,
                    key=f"{ch}:{kind}:{eid}",
                    ack=None if ack_by is None else (ack_by, ack_at, ack_note or ""),
                    waste_kwh=kwh,
                    waste_eur=eur,
                )
                for (
                    eid,
                    node,
                    ch,
                    kind,
                    start,
                    end,
                    score,
                    reason,
                    kwh,
                    eur,
                    ack_by,
                    ack_at,
                    ack_note,
                    _,
                ) in events
            ],
        )
        db.conn.executemany(
            "UPDATE summaries SET synced_version = ? WHERE node = ? AND channel = ? AND hour = ?",
            [(v, node, ch, hour) for node, ch, hour, *_, v in sums],
        )
        db.conn.executemany(
            "UPDATE anomalies SET synced_version = ? WHERE id = ?",
            [(v, eid) for eid, *_, v in events],
        )
    return len(sums) + len(events)
