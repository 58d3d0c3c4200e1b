"""The sync worker: sends what the outbox owes whenever the platform is reachable.

One loop, in its own thread with its own database connection (the CoAP side never waits on
the uplink). Each :meth:`SyncWorker.step` does one unit of work:

1. reconcile: rows marked ``inflight`` (a request carrying them got no clear answer, or the
   gateway stopped mid-request) are looked up on the platform, matched by Datastream and
   phenomenonTime (events by their id); found ones are adopted, missing ones sent again;
2. ensure the Things and Datastreams of the next batch exist;
3. send the next batch: new rows in one ``CreateObservations`` request, corrected rows as
   ``PATCH`` of their Observation. Rows are marked inflight (committed) before the request
   leaves and confirmed (``synced_version``, ``obs_id``) only from the platform's answer.
4. with ``raw`` on and the outbox empty: the raw readings owed (gateway/sync/raw.py), their
   own uncertain batches read back first, then the next batch, at most one partial batch
   every ``raw_interval`` seconds. Raw readings come last under a tight budget too.

Reachability is learned from these real requests only (no pings). After a failure the worker
waits ``base * 2**(failures-1)`` seconds, capped, with jitter, and restarts with a small
probe batch that doubles with each success (slow start); the failure count only returns to
zero after several successes in a row, so a flapping link backs off further instead of
storming. The backoff state is in the database: a restarting gateway does not storm either.
"""

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlite_utils

from gateway.sync import raw
from gateway.sync.budget import Budget, BudgetExhausted
from gateway.sync.outbox import backlog, get_state, set_state
from gateway.sync.sensorthings import (
    AuthFailed,
    Rejected,
    Row,
    SyncError,
    Uncertain,
    Unreachable,
)

log = logging.getLogger("reverbere.sync")

MAX_ROW_ERRORS = 5  # a row refused this many times is set aside as rejected
STABLE_SUCCESSES = 3  # successes in a row before the failure count is forgotten
MAX_PATCHES_PER_STEP = 50


def _marks(ids: list) -> str:
    return ",".join("?" * len(ids))


@dataclass
class SyncStats:
    """What the worker did (since it started)."""

    created: int = 0
    updated: int = 0
    adopted: int = 0  # found on the platform after an uncertain outcome
    resent: int = 0  # not found after an uncertain outcome: sent again
    duplicates_removed: int = 0
    row_errors: int = 0
    rejected: int = 0
    requests_failed: int = 0
    raw_sent: int = 0  # raw readings confirmed by the platform's answer
    raw_adopted: int = 0  # raw readings found on the platform after an uncertain outcome
    raw_resent: int = 0  # raw readings not found after an uncertain outcome: owed again
    steps: int = 0
    outcomes: list[str] = field(default_factory=list)


class SyncWorker:
    """Drain the outbox of ``db`` to ``target`` within ``budget``."""

    def __init__(
        self,
        db: sqlite_utils.Database,
        target,
        budget: Budget,
        *,
        batch_rows: int = 2000,
        probe_rows: int = 20,
        backoff_base: float = 2.0,
        backoff_cap: float = 600.0,
        recent_hours: int = 24,
        raw: bool = False,
        raw_interval: float = 0.0,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.target = target
        self.budget = budget
        self.batch_rows = batch_rows
        self.probe_rows = probe_rows
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.recent_hours = recent_hours
        self.raw = raw  # send the raw readings owed (gateway/sync/raw.py), last of all
        self.raw_interval = raw_interval  # at most one partial raw batch this often
        self.clock = clock
        self.rng = rng or random.Random()
        self.stats = SyncStats()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.on_idle: Callable[[], None] | None = None  # called each time the outbox is drained

    # -- persistent link state ----------------------------------------------------------------

    def _get(self, name: str, default: float) -> float:
        return float(get_state(self.db, name, str(default)))

    def _put(self, **values: object) -> None:
        with self.db.atomic():
            for name, value in values.items():
                set_state(self.db, name, str(value))

    @property
    def failures(self) -> int:
        return int(self._get("failures", 0))

    @property
    def next_attempt(self) -> float:
        return self._get("next_attempt", 0.0)

    def _succeeded(self) -> None:
        streak = int(self._get("streak", 0)) + 1
        failures = self.failures
        if failures and streak >= STABLE_SUCCESSES:
            failures = 0
        self._put(streak=streak, failures=failures, last_success=self.clock(), next_attempt=0)

    def _failed(self, exc: Exception) -> float:
        """Count a failed request; return how long to wait before the next one."""
        failures = self.failures + 1
        delay = min(self.backoff_cap, self.backoff_base * 2 ** (failures - 1))
        delay = delay / 2 + self.rng.uniform(0, delay / 2)  # "equal jitter"
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.stats.requests_failed += 1
        self._put(
            failures=failures,
            streak=0,
            next_attempt=self.clock() + delay,
            last_error=self.last_error,
            last_failure=self.clock(),
        )
        return delay

    def _batch_size(self) -> int:
        """Slow start after failures: a probe, doubling with each success in a row."""
        if not self.failures:
            return self.batch_rows
        streak = int(self._get("streak", 0))
        return min(self.batch_rows, self.probe_rows * 2**streak)

    # -- one step -----------------------------------------------------------------------------

    def step(self) -> str:
        """Do one unit of work. Returns ``idle``, ``sent``, ``reconciled``, ``budget``
        (today's budget is spent), ``failed`` (backoff scheduled) or ``auth`` (refused)."""
        self.stats.steps += 1
        try:
            if self._inflight_ids():
                self._reconcile()
                outcome = "reconciled"
            else:
                outcome = self._send_next()
                if outcome == "idle" and self.raw:  # raw readings last, once the outbox is empty
                    outcome = self._raw_step()
        except BudgetExhausted:
            outcome = "budget"
        except AuthFailed as exc:
            self._failed(exc)
            outcome = "auth"
        except (Unreachable, Uncertain) as exc:
            self._failed(exc)
            outcome = "failed"
        except SyncError as exc:
            self._failed(exc)
            outcome = "failed"
        else:
            if outcome != "idle":
                self._succeeded()
        self.stats.outcomes.append(outcome)
        return outcome

    def _inflight_ids(self) -> list[int]:
        sql = "SELECT id FROM sync_outbox WHERE inflight IS NOT NULL"
        return [r[0] for r in self.db.execute(sql)]

    def _reconcile(self) -> None:
        # A chunk at a time (the slow-start size): a read-back that is too big for a slow
        # link would otherwise time out again and again.
        rows = list(
            self.db.query(
                "SELECT id, kind, node, stream, key, time, result, parameters, version "
                "FROM sync_outbox WHERE inflight IS NOT NULL ORDER BY node, stream, time "
                "LIMIT ?",
                [self._batch_size()],
            )
        )
        streams = self.target.ensure_streams({(r["node"], r["stream"]) for r in rows})
        ds_of = {r["id"]: streams[(r["node"], r["stream"])] for r in rows}
        t0 = min(r["time"] for r in rows)
        t1 = max(r["time"] for r in rows)
        found = self.target.observations(set(ds_of.values()), t0, t1)
        by_time: dict[tuple[str, int], list] = {}
        by_key: dict[tuple[str, str], list] = {}
        for ds, obs in found.items():
            for o in obs:
                by_time.setdefault((ds, o[1]), []).append(o)
                key = o[3].get("id") if isinstance(o[3], dict) else None
                if key is not None:
                    by_key.setdefault((ds, str(key)), []).append(o)
        updates = []
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
                self.target.delete(extra[0])
                self.stats.duplicates_removed += 1
            same = keep[2] == r["result"] and keep[3] == json.loads(r["parameters"])
            self.stats.adopted += 1
            updates.append((keep[0], r["version"] if same else None, r["id"]))
        with self.db.atomic():
            for obs_id, version, item in updates:
                self.db.execute(
                    "UPDATE sync_outbox SET inflight = NULL, obs_id = ?, "
                    "synced_version = coalesce(?, synced_version) WHERE id = ?",
                    [obs_id, version, item],
                )

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
        rows = self._pending(self._batch_size())
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

    def _create(self, rows: list[dict], streams: dict) -> None:
        while True:
            groups: dict[str, list[Row]] = {}
            for r in rows:
                ds = streams[(r["node"], r["stream"])]
                groups.setdefault(ds, []).append(
                    Row(r["id"], r["time"], r["result"], json.loads(r["parameters"]))
                )
            attempt = int(self._get("attempt", 0)) + 1
            ids = [r["id"] for r in rows]
            with self.db.atomic():
                set_state(self.db, "attempt", str(attempt))
                self.db.execute(
                    f"UPDATE sync_outbox SET inflight = ? WHERE id IN ({_marks(ids)})",
                    [attempt, *ids],
                )
            sent_before = self.budget.use().sent
            try:
                result = self.target.create(groups)
            except BudgetExhausted:
                self._clear_inflight(ids)
                if len(rows) == 1:
                    raise
                rows = rows[: len(rows) // 2]
                continue
            except Unreachable:
                self._clear_inflight(ids)  # nothing left the gateway
                raise
            except Rejected as exc:
                self._clear_inflight(ids)
                self._row_errors(ids, str(exc), split=len(rows) > 1)
                raise
            # Uncertain propagates: rows stay inflight until reconciled.
            break
        sent = self.budget.use().sent - sent_before
        if sent > 0:
            old = float(get_state(self.db, "bytes_per_row", "120"))
            with self.db.atomic():
                set_state(self.db, "bytes_per_row", f"{0.7 * old + 0.3 * sent / len(rows):.1f}")
        by_id = {r["id"]: r for r in rows}
        confirmed = [(i, obs, by_id[i]["version"]) for i, obs in result.items() if obs]
        failed = [i for i, obs in result.items() if not obs]
        self._confirm(confirmed)
        self.stats.created += len(confirmed)
        if failed:
            self._clear_inflight(failed)
            self._row_errors(failed, "the platform answered 'error' for this row")
            # A whole Datastream failing may mean it is gone: look it up again next time.
            for ds, grp in groups.items():
                if all(r.item in failed for r in grp):
                    with self.db.atomic():
                        self.db.execute(
                            "DELETE FROM sync_streams WHERE target = ? AND entity_id = ?",
                            [self.target.url, ds],
                        )

    def _confirm(self, confirmed: list[tuple[int, str, int]]) -> None:
        with self.db.atomic():
            self.db.conn.executemany(
                "UPDATE sync_outbox SET obs_id = ?, synced_version = ?, inflight = NULL, "
                "errors = 0 WHERE id = ?",
                [(obs, version, item) for item, obs, version in confirmed],
            )
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
        self.stats.rejected = self.db.execute(
            "SELECT count(*) FROM sync_outbox WHERE rejected IS NOT NULL"
        ).fetchone()[0]

    # -- raw readings ([sync] raw) -------------------------------------------------------------

    def _raw_step(self) -> str:
        if raw.inflight_count(self.db):
            self._reconcile_raw()
            return "reconciled"
        if not self._raw_due():
            return "idle"
        return self._send_raw()

    def _raw_due(self) -> bool:
        """A full batch is owed, or ``raw_interval`` has passed since the last raw batch."""
        if self.clock() - self._get("raw_last", 0.0) >= self.raw_interval:
            return True
        return raw.raw_backlog(self.db).pending >= self.batch_rows

    def _raw_groups(self, taken: list[raw.Taken]) -> tuple[dict, list[tuple[str, int, float]]]:
        """Readings per Datastream id, and (Datastream id, taken index, time) in the order
        they are sent."""
        streams = self.target.ensure_streams(
            {(t.span.node, raw.raw_stream(t.span.channel)) for t in taken}
        )
        groups: dict[str, list[tuple[float, float]]] = {}
        where: dict[str, list[tuple[str, int, float]]] = {}
        for i, t in enumerate(taken):
            ds = streams[(t.span.node, raw.raw_stream(t.span.channel))]
            groups.setdefault(ds, []).extend(t.readings)
            where.setdefault(ds, []).extend((ds, i, when) for when, _ in t.readings)
        return groups, [x for ds in groups for x in where[ds]]

    def _send_raw(self) -> str:
        limit = self._batch_size()
        smaller = int(self._get("raw_limit", 0))
        if smaller:
            limit = min(limit, smaller)
        while True:
            attempt = int(self._get("attempt", 0)) + 1
            self._put(attempt=attempt)
            taken = raw.take(self.db, limit, attempt)
            if not taken:
                return "idle"
            n = sum(len(t.readings) for t in taken)
            try:
                groups, order = self._raw_groups(taken)
            except BaseException:
                raw.release(self.db, taken)  # nothing of the readings left the gateway
                raise
            try:
                ok = self.target.create_raw(groups)
            except BudgetExhausted:
                raw.release(self.db, taken)
                if n == 1:
                    raise
                limit = n // 2
                continue
            except AuthFailed:
                raw.release(self.db, taken)
                raise
            except Rejected:
                raw.release(self.db, taken)
                if n > 1:  # something in it is refused: smaller batches find it
                    self._put(raw_limit=max(1, n // 2))
                else:
                    raw.settle(self.db, taken[0], ())
                    self.stats.row_errors += 1
                raise
            except Unreachable:
                raw.release(self.db, taken)  # nothing left the gateway
                raise
            # Uncertain propagates: the spans stay inflight until reconciled.
            break
        confirmed: list[set[float]] = [set() for _ in taken]
        answered: set[str] = set()  # Datastreams with a reading created
        for (ds, i, when), good in zip(order, ok, strict=True):
            if good:
                confirmed[i].add(when)
                answered.add(ds)
        for t, times in zip(taken, confirmed, strict=True):
            self.stats.raw_sent += raw.settle(self.db, t, times)
        self.stats.row_errors += n - sum(map(len, confirmed))
        gone = set(groups) - answered  # every reading failed: the Datastream may be gone
        if gone:
            with self.db.atomic():
                self.db.conn.executemany(
                    "DELETE FROM sync_streams WHERE target = ? AND entity_id = ?",
                    [(self.target.url, ds) for ds in gone],
                )
        self._put(raw_last=self.clock(), raw_limit=0)
        return "sent"

    def _reconcile_raw(self) -> None:
        """Read back what the platform holds of the inflight spans' readings: adopt what is
        there (deleting a second copy of one if any), owe the rest again."""
        items = raw.inflight(self.db)
        streams = self.target.ensure_streams(
            {(t.span.node, raw.raw_stream(t.span.channel)) for t in items}
        )

        def ds_of(t: raw.Taken) -> str:
            return streams[(t.span.node, raw.raw_stream(t.span.channel))]

        found = self.target.observation_times(
            (ds_of(t), t.readings[0][0], t.readings[-1][0]) for t in items if t.readings
        )
        on_platform: dict[str, set[int]] = {}  # Datastream -> times (ms) found there
        for ds, obs in found.items():
            by_key: dict[int, list[str]] = {}
            for obs_id, when in obs:
                by_key.setdefault(raw.time_key(when), []).append(obs_id)
            for ids in by_key.values():
                for extra in ids[1:]:
                    self.target.delete(extra)
                    self.stats.duplicates_removed += 1
            on_platform[ds] = set(by_key)
        for t in items:
            there = on_platform.get(ds_of(t), set())
            present = {when for when, _ in t.readings if raw.time_key(when) in there}
            self.stats.raw_adopted += raw.settle(self.db, t, present, error=False)
            self.stats.raw_resent += len(t.readings) - len(present)

    # -- driving it ---------------------------------------------------------------------------

    def sync_until_idle(self, max_steps: int | None = None, wait: bool = True) -> str:
        """Step until nothing is left (``idle``), the budget is spent (``budget``), auth is
        refused (``auth``) or ``max_steps`` ran out; waits out backoffs when ``wait``."""
        n = 0
        while max_steps is None or n < max_steps:
            n += 1
            delay = self.next_attempt - self.clock()
            if delay > 0:
                if not wait:
                    return "failed"
                if self._stop.wait(delay):
                    return "stopped"
            outcome = self.step()
            if outcome in ("idle", "budget", "auth"):
                return outcome
        return "steps"

    def notify(self) -> None:
        """New rows are in the outbox: try now (unless backing off)."""
        self._wake.set()

    def run(self, idle_wait: float = 60.0) -> None:
        """Loop until :meth:`stop`: sync, then sleep until notified, due or a new day."""
        while not self._stop.is_set():
            self._wake.clear()
            try:
                outcome = self.sync_until_idle()
            except Exception as exc:  # a bug must not end the uplink for good: log, back off
                log.exception("sync step failed")
                self._failed(exc)
                outcome = "failed"
            if outcome == "stopped":
                return
            if outcome == "idle" and self.on_idle is not None:
                self.on_idle()
            wait = idle_wait
            if outcome == "budget":
                wait = 86400 - self.clock() % 86400 + 1  # next UTC day
            if outcome in ("auth", "failed"):
                wait = max(idle_wait, self.next_attempt - self.clock())
            self._wake.wait(wait)

    def start(self) -> "SyncWorker":
        self._thread = threading.Thread(target=self.run, name="reverbere-sync", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
