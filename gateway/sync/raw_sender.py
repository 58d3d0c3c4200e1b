"""The raw sender (``[sync] raw``): the raw readings owed (gateway/sync/raw.py), last of all.

The worker steps it only once the outbox is empty, so under a tight budget raw readings wait
for the next day. Each :meth:`RawSender.step` reconciles the spans of an uncertain batch first
(read back, adopt what is there, owe the rest again), else sends the next batch, at most one
partial batch every ``interval`` seconds: raw readings go in batches, not a request per commit.
"""

from collections.abc import Callable
from dataclasses import dataclass

import sqlite_utils

from gateway.sync import raw
from gateway.sync.link import Link, get_number, put_numbers
from gateway.sync.sending import SyncStats, send_halving
from gateway.sync.target import AuthFailed, ReadBack, Rejected, Target


def _stream_of(t: raw.Taken) -> tuple[str, str]:
    return (t.span.node, raw.raw_stream(t.span.channel))


@dataclass
class _Batch:
    """Spans' readings marked inflight; per Datastream id, the readings as they are sent, and
    ``order``: (Datastream id, index in ``taken``, time) of each reading in that order."""

    taken: list[raw.Taken]
    groups: dict[str, list[tuple[float, float]]]
    order: list[tuple[str, int, float]]

    def __len__(self) -> int:
        return len(self.order)


class RawSender:
    """Send the raw readings of ``db`` owed to ``target``."""

    def __init__(
        self,
        db: sqlite_utils.Database,
        target: Target,
        link: Link,
        stats: SyncStats,
        *,
        interval: float,
        clock: Callable[[], float],
    ) -> None:
        self.db = db
        self.target = target
        self.link = link
        self.stats = stats
        self.interval = interval  # at most one partial raw batch this often
        self.clock = clock

    def step(self) -> str:
        """One unit of work: ``reconciled``, ``sent`` or ``idle`` (nothing due)."""
        if raw.inflight_count(self.db):
            self.reconcile()
            return "reconciled"
        if not self._due():
            return "idle"
        return self._send()

    def _due(self) -> bool:
        """A full batch is owed, or ``interval`` has passed since the last raw batch."""
        if self.clock() - get_number(self.db, "raw_last", 0.0) >= self.interval:
            return True
        return raw.raw_backlog(self.db).pending >= self.link.batch_rows

    # -- sending ------------------------------------------------------------------------------

    def _take(self, limit: int) -> _Batch | None:
        """Up to ``limit`` readings owed, their spans marked inflight under a new attempt
        number, grouped by Datastream (released again if finding the Datastreams fails)."""
        attempt = int(get_number(self.db, "attempt", 0)) + 1
        put_numbers(self.db, attempt=attempt)
        taken = raw.take(self.db, limit, attempt)
        if not taken:
            return None
        try:
            streams = self.target.ensure_streams({_stream_of(t) for t in taken})
        except BaseException:
            raw.release(self.db, taken)  # nothing of the readings left the gateway
            raise
        groups: dict[str, list[tuple[float, float]]] = {}
        where: dict[str, list[tuple[str, int, float]]] = {}
        for i, t in enumerate(taken):
            ds = streams[_stream_of(t)]
            groups.setdefault(ds, []).extend(t.readings)
            where.setdefault(ds, []).extend((ds, i, when) for when, _ in t.readings)
        return _Batch(taken, groups, [x for ds in groups for x in where[ds]])

    def _release(self, batch: _Batch) -> None:
        raw.release(self.db, batch.taken)

    def _refused(self, batch: _Batch, exc: Rejected) -> None:
        if isinstance(exc, AuthFailed):
            return  # the readings are not at fault
        if len(batch) > 1:  # something in it is refused: smaller batches find it
            put_numbers(self.db, raw_limit=max(1, len(batch) // 2))
        else:
            raw.settle(self.db, batch.taken[0], ())
            self.stats.row_errors += 1

    def _send(self) -> str:
        limit = self.link.batch_size()
        smaller = int(get_number(self.db, "raw_limit", 0))
        if smaller:
            limit = min(limit, smaller)
        sent = send_halving(
            limit,
            self._take,
            lambda batch: self.target.create_raw(batch.groups),
            self._release,
            self._refused,
        )
        if sent is None:
            return "idle"
        batch, ok = sent
        confirmed: list[set[float]] = [set() for _ in batch.taken]
        answered: set[str] = set()  # Datastreams with a reading created
        for (ds, i, when), good in zip(batch.order, ok, strict=True):
            if good:
                confirmed[i].add(when)
                answered.add(ds)
        for t, times in zip(batch.taken, confirmed, strict=True):
            self.stats.raw_sent += raw.settle(self.db, t, times)
        self.stats.row_errors += len(batch) - sum(map(len, confirmed))
        gone = set(batch.groups) - answered  # every reading failed: the Datastream may be gone
        if gone:
            self.target.forget_streams(gone)
        put_numbers(self.db, raw_last=self.clock(), raw_limit=0)
        return "sent"

    # -- after an uncertain outcome -----------------------------------------------------------

    def reconcile(self) -> None:
        """Read back what the platform holds of the inflight spans' readings: adopt what is
        there (deleting a second copy of one if any), owe the rest again. A target that
        cannot read back (MQTT) owes them all again."""
        items = raw.inflight(self.db)
        found: dict[tuple[str, str], set[int]] = {}
        if isinstance(self.target, ReadBack):
            found = self._read_back(self.target, items)
        for t in items:
            there = found.get(_stream_of(t), set())
            present = {when for when, _ in t.readings if raw.time_key(when) in there}
            self.stats.raw_adopted += raw.settle(self.db, t, present, error=False)
            self.stats.raw_resent += len(t.readings) - len(present)

    def _read_back(
        self, target: ReadBack, items: list[raw.Taken]
    ) -> dict[tuple[str, str], set[int]]:
        """Per (node, raw stream), the times (ms, ``raw.time_key``) the platform holds in the
        items' ranges; a second Observation at one time is deleted."""
        needed = {_stream_of(t) for t in items}
        streams = target.ensure_streams(needed)
        found = target.observation_times(
            (streams[_stream_of(t)], t.readings[0][0], t.readings[-1][0])
            for t in items
            if t.readings
        )
        on_platform: dict[str, set[int]] = {}  # Datastream -> times (ms) found there
        for ds, obs in found.items():
            by_key: dict[int, list[str]] = {}
            for obs_id, when in obs:
                by_key.setdefault(raw.time_key(when), []).append(obs_id)
            for ids in by_key.values():
                for extra in ids[1:]:
                    target.delete(extra)
                    self.stats.duplicates_removed += 1
            on_platform[ds] = set(by_key)
        return {k: on_platform.get(streams[k], set()) for k in needed}
