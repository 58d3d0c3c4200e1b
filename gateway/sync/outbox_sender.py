"""The outbox sender: hourly summaries and anomaly events from ``sync_outbox`` to the target,
exactly once.

Each :meth:`OutboxSender.step` does one unit of work:

1. reconcile: rows marked ``inflight`` (a request carrying them got no clear answer, or the
   gateway stopped mid-request) are looked up on the platform, matched by Datastream and
   phenomenonTime (events by their id); found ones are adopted, missing ones sent again. A
   target that cannot read back (MQTT, not a ``ReadBack``) gets them all again;
2. ensure the Things and Datastreams of the next batch exist;
3. send the next batch: new rows in one ``create`` request (``CreateObservations``), corrected
   rows as ``update`` (``PATCH``) of their Observation. New rows are marked inflight
   (committed) before the request leaves (gateway/sync/sending.py) and confirmed
   (``synced_version``, ``obs_id``) only from the platform's answer.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass

import sqlite_utils

from gateway.sync.budget import Budget
from gateway.sync.link import Link, get_number, put_numbers
from gateway.sync.outbox import backlog, get_state, set_state
from gateway.sync.sending import SyncStats, send_halving
from gateway.sync.target import ReadBack, Rejected, Row, Target

MAX_ROW_ERRORS = 5  # a row refused this many times is set aside as rejected
MAX_PATCHES_PER_STEP = 50

_Settled = tuple[str | None, int | None, int]  # obs id, confirmed version, outbox id


def _marks(ids: list) -> str:
    return ",".join("?" * len(ids))


@dataclass
class _Batch:
    """New rows marked inflight, and the same rows per Datastream id as they are sent."""

    rows: list[dict]
    groups: dict[str, list[Row]]

    def __len__(self) -> int:
        return len(self.rows)


class OutboxSender:
    """Send what ``sync_outbox`` owes to ``target``, a batch of ``link.batch_size()`` rows
    at a time, in the order the budget calls for."""

    def __init__(
        self,
        db: sqlite_utils.Database,
        target: Target,
        budget: Budget,
        link: Link,
        stats: SyncStats,
        *,
        recent_hours: int,
        clock: Callable[[], float],
    ) -> None:
        self.db = db
        self.target = target
        self.budget = budget
        self.link = link
        self.stats = stats
        self.recent_hours = recent_hours
        self.clock = clock

    def step(self) -> str:
        """One unit of work: ``reconciled``, ``sent`` or ``idle`` (nothing owed)."""
        if self._inflight_ids():
            self.reconcile()
            return "reconciled"
        return self._send_next()

    # -- after an uncertain outcome -----------------------------------------------------------

    def _inflight_ids(self) -> list[int]:
        sql = "SELECT id FROM sync_outbox WHERE inflight IS NOT NULL"
        return [r[0] for r in self.db.execute(sql)]

    def reconcile(self) -> None:
        """Settle a chunk of the inflight rows (the slow-start size: a read-back too big for
        a slow link would otherwise time out again and again) from what the platform holds."""
        rows = list(
            self.db.query(
                "SELECT id, kind, node, stream, key, time, result, parameters, version "
                "FROM sync_outbox WHERE inflight IS NOT NULL ORDER BY node, stream, time "
                "LIMIT ?",
                [self.link.batch_size()],
            )
        )
        if isinstance(self.target, ReadBack):
            updates = self._adopt(self.target, rows)
        else:  # nothing to read back (MQTT): every one is sent again, at least once
            self.stats.resent += len(rows)
            updates = [(None, None, r["id"]) for r in rows]
        with self.db.atomic():
            for obs_id, version, item in updates:
                self.db.execute(
                    "UPDATE sync_outbox SET inflight = NULL, obs_id = ?, "
                    "synced_version = coalesce(?, synced_version) WHERE id = ?",
                    [obs_id, version, item],
                )

    def _adopt(self, target: ReadBack, rows: list[dict]) -> list[_Settled]:
        """``(obs id, confirmed version, outbox id)`` for each row: the Observation found
        (a second copy deleted), or ``(None, None, id)`` to send it again."""
        streams = target.ensure_streams({(r["node"], r["stream"]) for r in rows})
        ds_of = {r["id"]: streams[(r["node"], r["stream"])] for r in rows}
        t0 = min(r["time"] for r in rows)
        t1 = max(r["time"] for r in rows)
        found = target.observations(set(ds_of.values()), t0, t1)
        by_time: dict[tuple[str, int], list] = {}
        by_key: dict[tuple[str, str], list] = {}
        for ds, obs in found.items():
            for o in obs:
                by_time.setdefault((ds, o[1]), []).append(o)
                key = o[3].get("id") if isinstance(o[3], dict) else None
                if key is not None:
                    by_key.setdefault((ds, str(key)), []).append(o)
        updates: list[_Settled] = []
        for r in rows:
            ds = ds_of[r["id"]]
            if r["kind"] == "event":
                cands = by_key.get((ds, r["key"]), [])
            else:
                cands = by_time.get((ds, r["time"]), [])
            if not cands:
                self.stats.resent += 1
                updates.append((None, None, r["id"]))
                continue
            keep, extras = cands[0], cands[1:]
            for extra in extras:
                target.delete(extra[0])
                self.stats.duplicates_removed += 1
            same = keep[2] == r["result"] and keep[3] == json.loads(r["parameters"])
            self.stats.adopted += 1
            updates.append((keep[0], r["version"] if same else None, r["id"]))
        return updates

    # -- the next batch -----------------------------------------------------------------------

    def _pending(self, limit: int) -> list[dict]:
        """The next rows to send, in the order the budget calls for.

        With room for the whole backlog today (or no budget), datastream by datastream,
        oldest first: big groups, cheap for the platform. When the budget is tight:
        anomaly events first, then summaries of the last ``recent_hours`` newest hour
        first (what a dashboard shows), then the backfill, oldest first.
        """
        base = (
            "SELECT id, kind, node, stream, key, time, result, parameters, version, obs_id "
            "FROM sync_outbox WHERE synced_version < version AND rejected IS NULL "
            "AND inflight IS NULL "
        )
        if not self._tight():
            order = "ORDER BY kind = 'event' DESC, node, stream, time LIMIT ?"
            return list(self.db.query(base + order, [limit]))
        recent = int(self.clock()) - self.recent_hours * 3600
        order = (
            "ORDER BY kind = 'event' DESC, "
            "CASE WHEN kind = 'event' THEN time END, "
            "time >= :recent DESC, "
            "CASE WHEN time >= :recent THEN -time ELSE time END, node, stream LIMIT :limit"
        )
        return list(self.db.query(base + order, {"recent": recent, "limit": limit}))

    def _tight(self) -> bool:
        use = self.budget.use()
        if use.limit is None:
            return False
        pending = self.db.execute(
            "SELECT count(*) FROM sync_outbox WHERE synced_version < version AND rejected IS NULL"
        ).fetchone()[0]
        per_row = float(get_state(self.db, "bytes_per_row", "120"))
        return pending * per_row > (use.left or 0)

    def _send_next(self) -> str:
        rows = self._pending(self.link.batch_size())
        if not rows:
            return "idle"
        streams = self.target.ensure_streams({(r["node"], r["stream"]) for r in rows})
        patches = [r for r in rows if r["obs_id"]][:MAX_PATCHES_PER_STEP]
        creates = [r for r in rows if not r["obs_id"]]
        for r in patches:
            row = Row(r["id"], r["time"], r["result"], json.loads(r["parameters"]))
            if self.target.update(r["obs_id"], row):
                self.stats.updated += 1
                self._confirm([(r["id"], r["obs_id"], r["version"])])
            else:  # gone from the platform: create it again
                with self.db.atomic():
                    sql = "UPDATE sync_outbox SET obs_id = NULL WHERE id = ?"
                    self.db.execute(sql, [r["id"]])
        if creates:
            self._create(creates, streams)
        return "sent"

    def _take(self, rows: list[dict], streams: dict, limit: int) -> _Batch:
        """The first ``limit`` of ``rows``, marked inflight under a new attempt number."""
        rows = rows[:limit]
        groups: dict[str, list[Row]] = {}
        for r in rows:
            ds = streams[(r["node"], r["stream"])]
            groups.setdefault(ds, []).append(
                Row(r["id"], r["time"], r["result"], json.loads(r["parameters"]))
            )
        attempt = int(get_number(self.db, "attempt", 0)) + 1
        ids = [r["id"] for r in rows]
        with self.db.atomic():
            set_state(self.db, "attempt", str(attempt))
            self.db.execute(
                f"UPDATE sync_outbox SET inflight = ? WHERE id IN ({_marks(ids)})",
                [attempt, *ids],
            )
        return _Batch(rows, groups)

    def _send(self, batch: _Batch) -> tuple[dict[int, str | None], int]:
        """The platform's answer, and the bytes the request cost."""
        sent_before = self.budget.use().sent
        result = self.target.create(batch.groups)
        return result, self.budget.use().sent - sent_before

    def _release(self, batch: _Batch) -> None:
        self._clear_inflight([r["id"] for r in batch.rows])

    def _refused(self, batch: _Batch, exc: Rejected) -> None:
        ids = [r["id"] for r in batch.rows]
        self._row_errors(ids, str(exc), split=len(batch) > 1)

    def _create(self, creates: list[dict], streams: dict) -> None:
        sent = send_halving(
            len(creates),
            lambda limit: self._take(creates, streams, limit),
            self._send,
            self._release,
            self._refused,
        )
        if sent is None:  # never: there are rows to take
            return
        batch, (result, cost) = sent
        if cost > 0:
            old = float(get_state(self.db, "bytes_per_row", "120"))
            put_numbers(self.db, bytes_per_row=f"{0.7 * old + 0.3 * cost / len(batch):.1f}")
        by_id = {r["id"]: r for r in batch.rows}
        confirmed = [(i, obs, by_id[i]["version"]) for i, obs in result.items() if obs]
        failed = [i for i, obs in result.items() if not obs]
        self._confirm(confirmed)
        self.stats.created += len(confirmed)
        if failed:
            self._clear_inflight(failed)
            self._row_errors(failed, "the platform answered 'error' for this row")
            # A whole Datastream failing may mean it is gone: look it up again next time.
            gone = [ds for ds, grp in batch.groups.items() if all(r.item in failed for r in grp)]
            if gone:
                self.target.forget_streams(gone)

    # -- the rows' state ----------------------------------------------------------------------

    def _confirm(self, confirmed: list[tuple[int, str, int]]) -> None:
        with self.db.atomic():
            self.db.conn.executemany(
                "UPDATE sync_outbox SET obs_id = ?, synced_version = ?, inflight = NULL, "
                "errors = 0 WHERE id = ?",
                [(obs, version, item) for item, obs, version in confirmed],
            )
            # counters and index look-ups (gateway.sync.outbox.backlog): no scan in here
            set_state(self.db, "cursor", str(backlog(self.db).cursor))

    def _clear_inflight(self, ids: list[int]) -> None:
        with self.db.atomic():
            self.db.execute(
                f"UPDATE sync_outbox SET inflight = NULL WHERE id IN ({_marks(ids)})",
                ids,
            )

    def _row_errors(self, ids: list[int], reason: str, split: bool = False) -> None:
        """Count a refusal against each row; a row refused too often is set aside. A batch
        refused as a whole counts once per row only when alone (else it is split)."""
        if split:
            return  # next step sends smaller batches via the probe size
        self.stats.row_errors += len(ids)
        with self.db.atomic():
            self.db.execute(
                "UPDATE sync_outbox SET errors = errors + 1, "
                f"rejected = CASE WHEN errors + 1 >= ? THEN ? END WHERE id IN ({_marks(ids)})",
                [MAX_ROW_ERRORS, reason, *ids],
            )
        self.stats.rejected = backlog(self.db).rejected  # counters: no scan of the outbox
