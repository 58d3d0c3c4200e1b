"""The sync service: the configured target and worker, the worker's thread, its metrics
and the status an operator reads (``reverbere sync status``)."""

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import sqlite_utils

from gateway.daemon import STOP_GRACE
from gateway.logs import event
from gateway.sync.budget import Budget
from gateway.sync.config import SyncConfig, SyncConfigError
from gateway.sync.outbox import (
    backlog,
    get_state,
)
from gateway.sync.raw import raw_backlog
from gateway.sync.target import Target
from gateway.sync.worker import SyncWorker

log = logging.getLogger("reverbere.sync")


def build_target(
    db: sqlite_utils.Database,
    config: SyncConfig,
    budget: Budget,
    locations: Mapping[str, tuple[float, float]] | None = None,
) -> Target:
    """The configured target (SensorThings or MQTT), sharing ``db`` and ``budget``; each
    module is imported only when configured (MQTT needs the optional paho-mqtt)."""
    if config.target == "mqtt":
        from gateway.sync.mqtt import MqttTarget

        return MqttTarget(db, budget, config.mqtt)
    if config.target != "sensorthings":
        raise SyncConfigError("target", "sync is switched off (target = 'none')")
    from gateway.sync.sensorthings import SensorThingsTarget

    return SensorThingsTarget(
        config.url or "",
        db,
        budget,
        token=config.token,
        basic=(config.username, config.password) if config.username else None,
        ca_file=config.ca_file,
        timeout=config.timeout,
        compress=config.compress,
        locations=locations,
        default_location=config.location,
        gateway_id=config.gateway_id,
    )


def build_worker(
    db: sqlite_utils.Database,
    config: SyncConfig,
    locations: Mapping[str, tuple[float, float]] | None = None,
    **overrides,
) -> SyncWorker:
    """A worker on ``db`` (use it from the thread that opened ``db``)."""
    budget = Budget(db, config.daily_budget)
    target = build_target(db, config, budget, {**config.locations, **(locations or {})})
    kwargs = {
        "batch_rows": config.batch_rows,
        "probe_rows": config.probe_rows,
        "backoff_base": config.backoff_base,
        "backoff_cap": config.backoff_cap,
        "recent_hours": config.recent_hours,
        "raw": bool(config.raw),
        "raw_interval": config.raw_interval,
    }
    kwargs.update(overrides)
    return SyncWorker(db, target, budget, **kwargs)


class SyncService:
    """The sync worker in its own thread, with its own connection to the gateway database.

    >>> sync = SyncService(db_path, config, locations).start()   # at service start
    >>> feed_outbox(db, readings); sync.notify()                 # after each commit
    >>> sync.stop()                                              # at shutdown
    """

    def __init__(
        self,
        db_path: str | Path,
        config: SyncConfig,
        locations: Mapping[str, tuple[float, float]] | None = None,
        idle_wait: float = 60.0,
    ) -> None:
        self.db_path = db_path
        self.config = config
        self.locations = locations
        self.idle_wait = idle_wait
        self.worker: SyncWorker | None = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reverbere-sync", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        from gateway.store.db import open_db

        db = open_db(self.db_path)
        try:
            self.worker = build_worker(db, self.config, self.locations)
            self._ready.set()
            if not self._stopping.is_set():
                self.worker.run(self.idle_wait)
        except BaseException as exc:  # reported by stop() and status, not swallowed
            self.error = exc
            self._ready.set()
            raise
        finally:
            if self.worker is not None:
                self.worker.target.close()
            db.close()

    def start(self) -> "SyncService":
        self._thread.start()
        self._ready.wait(30)
        return self

    def notify(self) -> None:
        if self.worker is not None:
            self.worker.notify()

    def stop(self, timeout: float = STOP_GRACE) -> bool:
        """Stop the worker: it ends after the request in flight, if any; wait ``timeout``
        seconds at most for that, and return whether the thread ended. A request that
        outlasts it (a platform that stopped answering holds one for ``[sync] timeout``,
        30 s) is left to the daemon thread and ends with the process: its rows were marked
        in flight before it left, so the next start reconciles them (gateway/sync/sending.py),
        as after a power cut. The rest of a backlog stays in the outbox, which is durable."""
        self._stopping.set()
        if self.worker is not None:
            self.worker.stop(timeout=0)
        self._thread.join(timeout)
        if self._thread.is_alive():
            event(
                log,
                logging.WARNING,
                "sync request still in flight at stop: the next start reconciles it",
                waited_s=timeout,
            )
            return False
        return True


STATUS_TTL = 1.0  # seconds: the ten gauges of one scrape share one ``sync_status``


def declare_metrics(
    registry, db: sqlite_utils.Database, config: SyncConfig | None, ttl: float = STATUS_TTL
) -> None:
    """Gauges for ``/metrics`` (``registry.gauge(name, help).set_function(fn)``), read from
    ``db`` (the service's reading connection) when scraped. They run on the event loop, so
    they share one ``sync_status`` per scrape (kept ``ttl`` seconds), and that status reads
    counters (``gateway.sync.outbox.backlog``), never a scan of the outbox."""
    cache: dict = {"at": float("-inf"), "status": {}}

    def status() -> dict:
        now = time.monotonic()
        if now - cache["at"] >= ttl:
            cache["status"], cache["at"] = sync_status(db, config), now
        return cache["status"]

    def st(key: str):
        return lambda: float(status()[key] or 0)

    for name, key, text in (
        ("reverbere_sync_budget_sent_bytes", "budget_sent", "Bytes sent today (UTC) by sync."),
        ("reverbere_sync_budget_limit_bytes", "budget_limit", "Daily byte budget (0: none)."),
        ("reverbere_sync_received_bytes", "budget_received", "Bytes received today by sync."),
        ("reverbere_sync_pending_summaries", "pending_summaries", "Summaries not yet synced."),
        ("reverbere_sync_pending_events", "pending_events", "Anomaly events not yet synced."),
        ("reverbere_sync_inflight", "inflight", "Rows awaiting reconciliation."),
        ("reverbere_sync_rejected", "rejected", "Rows the platform keeps refusing."),
        ("reverbere_sync_cursor", "cursor", "Every outbox row up to this number is confirmed."),
        ("reverbere_sync_failures", "failures", "Failed sync requests in a row."),
        (
            "reverbere_sync_last_success_timestamp_seconds",
            "last_success",
            "Unix time of the last success (0: none yet).",
        ),
    ):
        registry.gauge(name, text).set_function(st(key))
    if config is not None and config.raw:
        registry.gauge(
            "reverbere_sync_pending_raw", "Raw readings not yet confirmed by the platform."
        ).set_function(lambda: float(raw_backlog(db).pending))
        registry.gauge(
            "reverbere_sync_raw_oldest_timestamp_seconds",
            "Unix time of the oldest raw reading owed (0: none).",
        ).set_function(lambda: float(raw_backlog(db).oldest or 0))


def sync_status(db: sqlite_utils.Database, config: SyncConfig | None = None) -> dict:
    """Budget use, cursor, backlog and last success, for ``reverbere sync status``."""
    budget = Budget(db, config.daily_budget if config else None).use()
    b = backlog(db)
    r = raw_backlog(db)

    def num(name: str) -> float | None:
        v = get_state(db, name)
        return float(v) if v not in (None, "") else None

    return {
        "target": (config.url or config.target) if config else None,
        "budget_day": budget.day,
        "budget_limit": budget.limit,
        "budget_sent": budget.sent,
        "budget_received": budget.received,
        "budget_requests": budget.requests,
        "cursor": b.cursor,
        "pending_events": b.pending_events,
        "pending_summaries": b.pending_summaries,
        "inflight": b.inflight,
        "rejected": b.rejected,
        "synced": b.synced,
        "oldest_pending": b.oldest_pending,
        "last_success": num("last_success"),
        "last_failure": num("last_failure"),
        "last_error": get_state(db, "last_error"),
        "failures": int(num("failures") or 0),
        "next_attempt": num("next_attempt") or None,
        "raw": (list(config.raw_channels or ()) or True) if config and config.raw else False,
        "pending_raw": r.pending,
        "raw_inflight": r.inflight,
        "raw_rejected": r.rejected,
        "raw_oldest_pending": r.oldest,
    }
