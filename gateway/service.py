"""The gateway service: every stage wired together, here and only here.

    CoAP /r ──> Ingest (verify, validate) ──> Committer (group commit; ack after commit;
                                                  │         the commits in a writer process)
                                                  └──> after_commit stages, in order:
                                                       detect -> summarise -> outbox (-> raw)
                                                                              │ notify
    platform <── SyncService (own thread, own connection: the outbox, batches) <┘
    HTTP /metrics <── Registry; the console's pages and /api (gateway.console)
    every hour: retention (raw readings older than retention_days, and no newer than
                what every retention guard says is summarised and synced, nor than what
                the stages have not run on yet)

A stage after the store is a callable ``stage(db, new_readings)`` appended to
``Gateway.after_commit``: it runs in the writer thread after the commit's acks went out (ingest
first: as soon as no pack waits, see ``gateway/store/committer.py``), with the writer's
``sqlite_utils.Database`` and the newly stored ``Reading``s in commit order (duplicates left
out). A stage must take a reading it has already seen without change: when the gateway
starts, the committer replays through the stages the readings of the commits whose stages did
not all run (a crash between a commit and its stages, a stage that raised; see
``gateway/store/committer.py``).
A stage that owns data the retention must wait for appends a callable
``guard(db) -> float | None`` (Unix time up to which raw readings may go) to
``Gateway.retention_guards``.

The config sections of the stages: ``[site]`` (latitude, longitude, timezone),
``[detect]`` (docs/anomalies.md; the site's place and time zone unless it
sets its own) and ``[sync]`` (docs/sync.md; no uplink without it or with ``target = "none"``).
"""

import asyncio
import errno
import functools
import gc
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils
from aiocoap.error import Error as CoapError

from gateway import __version__, config, daemon, logs
from gateway.alerts.config import AlertsConfig
from gateway.alerts.config import from_config as alerts_config
from gateway.alerts.outbox import AlertStage
from gateway.alerts.sender import AlertSender
from gateway.alerts.sender import declare_metrics as declare_alert_metrics
from gateway.clock import CHECK_EVERY as CLOCK_CHECK_EVERY
from gateway.clock import console_state
from gateway.config import TEMPLATE, Config
from gateway.console.app import Console, ConsoleSettings
from gateway.ingest import coap
from gateway.ingest.registry import NodeCache
from gateway.ingest.resource import REJECTION_REASONS, Ingest, ReadingsResource
from gateway.logs import event
from gateway.metrics import PROM_CONTENT_TYPE, HttpServer, Registry, declare_process_metrics
from gateway.ota import rollout as ota_rollout
from gateway.ota import updates as ota_updates
from gateway.ota.gauges import declare_ota_metrics
from gateway.ota.resource import UpdateResource
from gateway.pipeline.detect import DetectConfig, DetectConfigError, Detector
from gateway.pipeline.handoff import feed_outbox
from gateway.pipeline.summarise import summarise
from gateway.pipeline.waste import TARIFF_KEYS, Tariff, TariffError
from gateway.store.checkpoint import wal_bytes
from gateway.store.commit import InCommit, Outcome
from gateway.store.committer import Committer
from gateway.store.db import open_db, upgrade
from gateway.store.readings import db_bytes, delete_before
from gateway.store.records import Reading
from gateway.store.stages import stage_name
from gateway.sync.config import SyncConfig, SyncConfigError
from gateway.sync.outbox import prune_synced
from gateway.sync.raw import RawLog, raw_synced_until
from gateway.sync.service import SyncService, declare_metrics, sync_status

log = logging.getLogger("reverbere.service")

RETENTION_PERIOD = 3600.0
SWITCH_INTERVAL = 0.001  # seconds; see serve()
SYNC_WATCH_PERIOD = 30.0  # seconds between checks that the sync worker is alive
QUIET_PERIOD = 60.0  # seconds without a new reading before the detector looks for silent nodes
# An hour is closed by the gateway's (trusted) clock this many of the node's pack spans after
# its end (late packs), and never sooner than CLOSE_GRACE_MIN: see Gateway.close_hours.
CLOSE_GRACE_PACKS = 2.0
CLOSE_GRACE_MIN = 120.0  # seconds
# Summaries the outbox stage hands over in one turn of the writer (the rest at its next run):
# about 0.1 s of work on this machine, so a backlog never holds the commits behind it.
OUTBOX_SLICE = 1000

Stage = Callable[[sqlite_utils.Database, list[Reading]], None]
Guard = Callable[[sqlite_utils.Database], float | None]


@dataclass(frozen=True)
class Stages:
    """The pipeline after the store, each stage by its name (``stages`` makes it), so that
    the gateway takes the one it needs without searching a list.

    ``after_commit`` is their order; ``guards`` are their retention guards (Unix time up to
    which raw readings may go, as far as that stage is concerned); ``in_commit`` the logs
    written inside each commit's own transaction."""

    detect: Detector
    summarise: Stage
    outbox: "Outbox"
    raw: RawLog | None  # with ``[sync] raw`` on
    guards: tuple[Guard, ...]
    alerts: AlertStage | None = None  # with ``[[alerts.routes]]`` (docs/alerts.md)

    @property
    def after_commit(self) -> list[Stage]:
        """The stages in pipeline order: detect, summarise, outbox (then the raw log), alerts."""
        raw = [self.raw] if self.raw is not None else []
        alerts = [self.alerts] if self.alerts is not None else []
        return [self.detect, self.summarise, self.outbox, *raw, *alerts]

    @property
    def in_commit(self) -> list[InCommit]:
        """The raw log's ``log`` when there is one (it commits with the readings)."""
        return [self.raw.log] if self.raw is not None else []


def stages(cfg: Config) -> Stages:
    """The pipeline after the store, in order, with the retention guards.

    detect raises anomaly events, summarise keeps the hourly summaries (raw readings stay
    until they are summarised), and the outbox takes what the platform is owed (what
    ``reverbere summaries --from gateway`` shows, uplink or not); when ``[sync]`` names a
    target, raw readings also stay until their hour's summaries are confirmed. With ``[sync]
    raw`` on, the raw log (``gateway.sync.raw``: its ``log`` is written in each commit's own
    transaction, its stage wakes the worker) keeps raw readings until the platform has them.
    """
    p = pipeline_config(cfg)
    detect = Detector(
        p.detect,
        pack_seconds=lambda node: pack_seconds(cfg, node),
        cost=p.tariff.cost if p.tariff is not None else None,
    )
    outbox = Outbox()
    guards: list[Guard] = [summarised_until]
    raw = None
    if p.sync is not None:
        guards.append(synced_until)
        if p.sync.raw:
            raw = RawLog(p.sync.raw_channels, p.sync.raw_interval)
            guards.append(raw_synced_until)
    alerts = AlertStage(p.alerts) if p.alerts is not None else None
    return Stages(detect, summarise, outbox, raw, tuple(guards), alerts)


def pack_seconds(cfg: Config, node_id: str) -> float:
    """How much time one of the node's packs spans: its ``pack`` times its ``interval``."""
    c = cfg.node_config(node_id)
    return float(c.get("pack", 1)) * float(c.get("interval", 0))


@dataclass(frozen=True)
class PipelineConfig:
    """The checked sections of the stages: ``detect`` always, ``sync`` None without uplink."""

    detect: DetectConfig
    sync: SyncConfig | None
    tariff: Tariff | None = None  # [site] price_kwh...: the euros of the waste
    alerts: AlertsConfig | None = None  # None without [[alerts.routes]]


def pipeline_config(cfg: Config) -> PipelineConfig:
    """Check ``[site]``, ``[detect]`` and ``[sync]``; raise ``ConfigError`` (file, line, key).

    ``[site]`` (latitude, longitude, timezone) is where the town is: ``[detect]`` takes it
    unless it sets its own, and ``[sync]`` places nodes without a location there.
    """
    site = dict(cfg.section("site"))
    known = ("latitude", "longitude", "timezone", *TARIFF_KEYS)
    for key in site:
        if key not in known:
            raise cfg.error("site", key, f"unknown key (known: {', '.join(known)})")
    try:
        tariff = Tariff.from_site(site)
    except TariffError as e:
        raise cfg.error("site", e.key, str(e).split(": ", 1)[-1]) from None
    site = {k: v for k, v in site.items() if k not in TARIFF_KEYS}
    try:
        detect = DetectConfig.from_mapping({**site, **cfg.section("detect")})
    except DetectConfigError as e:
        table = "site" if e.key in site and e.key not in cfg.section("detect") else "detect"
        raise cfg.error(table, e.key, str(e).split(": ", 1)[-1]) from None
    raw = dict(cfg.section("sync"))
    sync = None
    if raw:  # checked with target = "none" too: a typo must not wait for the link's first day
        if "location" not in raw and ("latitude" in site or "longitude" in site):
            raw["location"] = [detect.longitude, detect.latitude]
        try:
            sync = SyncConfig.from_dict(raw)
        except SyncConfigError as e:
            raise cfg.error("sync", e.key, str(e).split(": ", 1)[-1]) from None
        if sync.target == "none":
            sync = None
    alerts = alerts_config(cfg, detect.timezone)  # times in the town's zone
    return PipelineConfig(detect, sync, tariff, alerts)


class Outbox:
    """The outbox stage: what the platform is owed (``gateway.pipeline.handoff.feed_outbox``),
    summaries of an hour once it is over; then it wakes the sync worker (``listeners``)."""

    def __init__(self) -> None:
        self.listeners: list[Callable[[], None]] = []

    def __call__(self, db: sqlite_utils.Database, new: list[Reading]) -> int:
        return self._take(db, max((r.time for r in new), default=None))

    def settle(
        self,
        db: sqlite_utils.Database,
        now: float,
        grace: float | Callable[[str], float] = 3600.0,
    ) -> int:
        """Take what changed with no new reading (events a timer opened, hours over for
        ``grace``, seconds or a function of the node id) as of ``now``: the fleet's time
        (``Detector.now``), or the gateway's trusted clock (``Gateway.close_hours``)."""
        return self._take(db, now, grace)

    def flush(self, db: sqlite_utils.Database) -> int:
        """Take changed rows now, open hours included (e.g. before a planned stop), at most
        ``OUTBOX_SLICE`` summaries: ``Gateway.flush`` calls it until less comes."""
        return self._take(db, None)

    def _take(
        self,
        db: sqlite_utils.Database,
        settled_at: float | None,
        grace: float | Callable[[str], float] = 3600.0,
    ) -> int:
        """``feed_outbox`` as of ``settled_at`` (None: open hours too), ``OUTBOX_SLICE``
        summaries at most (a turn of the writer: the commits, and the acks, go between two
        turns); wake the worker."""
        taken = feed_outbox(db, settled_at=settled_at, grace=grace, limit=OUTBOX_SLICE)
        if taken:
            for notify in self.listeners:
                notify()
        return taken


def summarised_until(db: sqlite_utils.Database) -> float | None:
    """Raw readings up to the oldest one not yet folded into the summaries may go."""
    oldest = None
    cursors = db.execute(
        "SELECT n.ref, c.node, c.channel, c.time "
        "FROM summary_cursor c JOIN nodes n ON n.id = c.node"
    ).fetchall()
    for ref, _node, channel, t in cursors:
        row = db.execute(
            "SELECT 1 FROM readings WHERE node = ? AND channel = ? AND time > ? LIMIT 1",
            [ref, channel, t],
        ).fetchone()
        if row is not None and (oldest is None or t < oldest):
            oldest = t
    return oldest


def synced_until(db: sqlite_utils.Database) -> float | None:
    """Raw readings before the oldest hour whose summary is not yet on the platform: not yet
    handed to the outbox (``summaries.synced_version``), or not confirmed there."""
    row = db.execute(
        "SELECT min(t) FROM ("
        " SELECT min(hour) AS t FROM summaries WHERE version > synced_version"
        " UNION ALL SELECT min(time) FROM sync_outbox"
        " WHERE kind = 'summary' AND synced_version < version AND rejected IS NULL)"
    ).fetchone()
    return row[0]


class Gateway:
    """One gateway: ``await start()``, then ``coap_port``/``http_port`` are bound; ``await
    stop()`` commits what is queued (and answers it) before closing."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.metrics = Registry()
        self.committer = Committer(
            cfg.database,
            max_packs=cfg.commit_max_packs,
            delay=cfg.commit_delay,
            max_queue=cfg.max_queue,
            disk_budget=cfg.disk_budget,
            min_free=cfg.min_free,
            metrics=self.metrics,
        )
        # The stages after the store; see the module docstring and ``stages``.
        self.after_commit: list[Stage] = self.committer.after_commit
        # Readings the stages have not run on yet stay (they run after the acks, in time).
        self.retention_guards: list[Guard] = [self.committer.unstaged_since]
        self.pipeline = pipeline_config(cfg)
        self.stages = stages(cfg)
        self.after_commit.extend(self.stages.after_commit)
        self.retention_guards.extend(self.stages.guards)
        self.committer.in_commit.extend(self.stages.in_commit)
        self.outbox: Outbox | None = self.stages.outbox
        self.detector: Detector | None = self.stages.detect
        self.raw_log: RawLog | None = self.stages.raw
        self.sync: SyncService | None = None  # started with the gateway when [sync] says so
        self.alerts: AlertSender | None = None  # started with the gateway when [alerts] says so
        self.http = HttpServer({"/metrics": self._metrics_page})
        self.console: Console | None = None  # on the HTTP server from start()
        self.db: sqlite_utils.Database | None = None  # the event loop's reading connection
        self.coap_port = 0
        self.http_port = 0
        self._ctx: Any = None
        self._mman: coap.BoundedMessageManager | None = None
        self._tasks: list[asyncio.Task] = []
        self._ingest: Ingest | None = None

    async def start(self) -> None:
        """Open the database (0600 if new), start the committer, bind CoAP and HTTP; raise
        ``BindError`` naming the address when one cannot be bound (what was started is
        stopped first)."""
        # The service's start is where a new version's migrations run (a backup first):
        # every other opening refuses a database that needs them (gateway.store.db).
        upgrade(self.cfg.database)
        self.db = open_db(self.cfg.database)
        await self.committer.start()
        self._ingest = ingest = Ingest(self.cfg, self.db, self.committer, self.metrics)
        # Firmware updates (gateway.ota): "u" in the 2.04 answers, GET /u/... block-wise.
        ingest.updates = self.ota_pending = pending = ota_updates.Pending(self.db)
        declare_ota_metrics(self.metrics, self.db)  # reverbere_ota_nodes{state=...}
        try:
            self._ctx, self._mman = await coap.create_server(
                ReadingsResource(ingest, UpdateResource(self.db, pending)),
                self.cfg.coap_host,
                self.cfg.coap_port,
                lifetime=self.cfg.dedup_lifetime,
                max_entries=self.cfg.dedup_max,
            )
            self.coap_port = coap.bound_port(self._ctx)
            self.console = self._console(ingest)
            self.console.install(self.http.app)  # the pages beside /metrics (docs/console.md)
            self.http_port = await self.http.start(self.cfg.http_host, self.cfg.http_port)
        except (OSError, CoapError) as e:
            http = self._ctx is not None
            await self.stop()
            raise BindError(
                "HTTP (/metrics)" if http else "CoAP",
                self.cfg.http_host if http else self.cfg.coap_host,
                self.cfg.http_port if http else self.cfg.coap_port,
                e,
            ) from None
        self._declare_metrics()
        self._tasks.append(asyncio.create_task(self._retention_loop()))
        self._tasks.append(asyncio.create_task(self._clock_watch()))
        self._tasks.append(asyncio.create_task(self._ota_watch()))
        if self.detector is not None:
            self._tasks.append(asyncio.create_task(self._quiet_watch()))
        if self.pipeline.sync is not None:
            await self._start_sync()
            self._tasks.append(asyncio.create_task(self._sync_watch()))
        if self.stages.alerts is not None:
            self._start_alerts()
            declare_alert_metrics(self.metrics, self.db)
            self._tasks.append(asyncio.create_task(self._alerts_watch()))
        event(
            log,
            logging.INFO,
            "gateway listening",
            coap=f"{self.cfg.coap_host}:{self.coap_port}",
            http=f"{self.cfg.http_host}:{self.http_port}",
            coap_port=self.coap_port,
            http_port=self.http_port,
            database=str(self.cfg.database),
        )

    async def stop(self) -> None:
        """Stop taking packs, commit and answer the queued ones, close everything."""
        for task in self._tasks:
            task.cancel()
        await self.committer.stop()  # the queued packs are committed and answered here
        # Side by side, each within STOP_GRACE: a request in flight is reconciled at the next
        # start, a message in flight is sent again with its key.
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(None, s.stop) for s in (self.sync, self.alerts) if s is not None)
        )
        if self._ctx is not None:
            await self._ingest.idle()  # every handler has returned its answer to aiocoap
            await asyncio.sleep(0)  # which sends it on its next step
            await self._ctx.shutdown()
        await self.http.stop()
        if self.db is not None:
            self.db.close()
        event(log, logging.INFO, "gateway stopped")

    def _console(self, ingest: Ingest) -> Console:
        """The web console on the HTTP address, on this event loop; it reads the database
        in a thread of its own and what ingest last heard of each node from memory."""
        return Console(
            ConsoleSettings(
                self.cfg.database,
                self.pipeline.detect,
                self.cfg.node_config,
                heard=lambda: ingest.nodes.heard,
                metrics_public=self.cfg.http_metrics_public,
                session_lifetime=self.cfg.http_session,
                behind_tls=self.cfg.http_behind_tls,
                clock_state=self.clock_state,
                sync_status=(
                    None
                    if self.pipeline.sync is None
                    else functools.partial(sync_status, config=self.pipeline.sync)
                ),
                retention_days=self.cfg.retention_days,
            )
        )

    async def _start_sync(self) -> None:
        sync = SyncService(self.cfg.database, self.pipeline.sync)
        await asyncio.get_running_loop().run_in_executor(None, sync.start)  # until it is ready
        self.sync = sync
        if self.outbox is not None:
            self.outbox.listeners[:] = [sync.notify]
        if self.raw_log is not None:
            self.raw_log.listeners[:] = [sync.notify]
        sync.notify()  # what an earlier run left in the outbox

    async def _sync_watch(self) -> None:
        """Start the sync worker again if its thread died of an error (logged and counted):
        the uplink must not stay silent until someone restarts the gateway."""
        while True:
            await asyncio.sleep(SYNC_WATCH_PERIOD)
            if self.sync is not None and self.sync.error is not None:
                err = self.sync.error
                event(log, logging.ERROR, "sync worker died: restarting it", error=repr(err))
                self.metrics.counter(
                    "reverbere_sync_restarts_total", "Sync worker restarts after an error."
                ).inc()
                await self._start_sync()

    def _start_alerts(self) -> None:
        self.alerts = AlertSender(self.cfg.database, self.stages.alerts.config).start()
        self.stages.alerts.listeners[:] = [self.alerts.notify]

    async def _alerts_watch(self) -> None:
        """Every minute: route the events a timer opened (silent nodes), make the digests
        that fell due by the fleet's time (``Detector.now``: the readings' clock, going on
        while none come, as the silent check does), and start the sender again if its
        thread died of an error."""
        stage, detector = self.stages.alerts, self.detector
        while True:
            await asyncio.sleep(QUIET_PERIOD)
            if self.alerts is not None and self.alerts.error is not None:
                event(log, logging.ERROR, "alert sender died: restarting it")
                self._start_alerts()
            try:
                await self.committer.run(lambda db: stage.settle(db, detector.now(db)))
            except Exception:  # like a stage's failure: logged, counted, ingestion goes on
                log.exception("alert routing failed", extra={"fields": {}})
                self.metrics.counter("reverbere_stage_errors_total").inc(stage="AlertStage.settle")

    async def _ota_watch(self, every: float = QUIET_PERIOD) -> None:
        """Every minute while a rollout is open: settle its nodes from their signed readings,
        withdraw the offers of those that ended, offer the next wave (gateway/ota/rollout.py),
        with or without a `reverbere fleet update` waiting; the 2.04s see it at once."""
        while True:
            await asyncio.sleep(every)
            try:
                await self.ota_step()
            except Exception:  # like a stage's failure: logged, counted, ingestion goes on
                log.exception("rollout step failed", extra={"fields": {}})
                self.metrics.counter("reverbere_stage_errors_total").inc(stage="rollout.advance")

    async def ota_step(self, now: float | None = None) -> ota_rollout.Progress | None:
        """One step of an open rollout through the writer thread (``rollout.tick``: a node
        silent 6 hours after its offer fails, and past --max-failures the rollout stops, even
        with no `fleet update` running); ``now``: the wall clock's time. None: no rollout."""
        progress = await self.committer.run(lambda db: ota_rollout.tick(db, now))
        if progress is not None:
            self.ota_pending.reload()
        return progress

    async def _quiet_watch(self) -> None:
        while True:
            await asyncio.sleep(QUIET_PERIOD)
            await self.quiet()
            await self.close_hours()

    def close_grace(self, node_id: str) -> float:
        """How long after an hour's end the gateway's clock waits for late packs of
        ``node_id`` before it hands the hour over: ``CLOSE_GRACE_PACKS`` of its pack spans."""
        return max(CLOSE_GRACE_PACKS * pack_seconds(self.cfg, node_id), CLOSE_GRACE_MIN)

    async def close_hours(self) -> int:
        """Hand over the hours that are over by the gateway's clock (plus ``close_grace``),
        even with no later reading to close them: a node that fell silent would otherwise keep
        its last hour for ever. Only while the clock is trusted (``gateway.clock``): a Pi that
        booted days behind must not close hours by it. A late reading still re-versions the
        hour (gateway.pipeline.summarise) and the next call hands the correction over."""
        if self.outbox is None or self._ingest is None:
            return 0
        watch = self._ingest.clock_watch
        if not watch.state().synchronized:
            return 0
        now, outbox, grace = self._ingest.clock(), self.outbox, self.close_grace
        await self.committer.settled()  # summarise has seen every reading stored
        try:  # a slice per turn of the writer, so that commits go between them
            taken = total = await self.committer.run(lambda db: outbox.settle(db, now, grace))
            while taken >= OUTBOX_SLICE:
                taken = await self.committer.run(lambda db: outbox.settle(db, now, grace))
                total += taken
            return total
        except Exception:  # like a stage's failure: logged, counted, ingestion goes on
            log.exception("closing hours failed", extra={"fields": {}})
            self.metrics.counter("reverbere_stage_errors_total").inc(stage="Outbox.close_hours")
            return 0

    async def quiet(self, at: float | None = None) -> int:
        """When no reading came for ``QUIET_PERIOD`` (by ``at``, ``time.monotonic()``), open
        the ``silent`` events of the nodes quiet for too long, as the stages would after a
        commit, and hand them over to the outbox; return how many opened. Runs every minute:
        a whole fleet that falls silent (the nodes' Wi-Fi down) is an anomaly too."""
        detector, outbox = self.detector, self.outbox
        await self.committer.settled()  # the detector has seen every reading stored
        at = time.monotonic() if at is None else at
        if detector is None or at - detector.last_reading_at < QUIET_PERIOD:
            return 0

        def run(db: sqlite_utils.Database) -> int:
            events = detector.quiet(db, at)
            if events and outbox is not None:
                outbox.settle(db, detector.now(db, at))
            return len(events)

        try:
            return await self.committer.run(run)
        except Exception:  # like a stage's failure: logged, counted, ingestion goes on
            log.exception("silent check failed", extra={"fields": {}})
            self.metrics.counter("reverbere_stage_errors_total").inc(stage="Detector.quiet")
            return 0

    async def flush(self) -> int:
        """Once the stages have run on every reading stored, hand every changed row to the
        outbox now, open hours included (before a planned stop); return how many. A slice
        per turn of the writer, as ``close_hours``: a backlog of a million summaries held the
        writer, and every ack behind it, for the whole of it."""
        await self.committer.settled()
        if self.outbox is None:
            return 0
        taken = total = await self.committer.run(self.outbox.flush)
        while taken >= OUTBOX_SLICE:
            taken = await self.committer.run(self.outbox.flush)
            total += taken
        return total

    async def retention(self, now: float | None = None) -> int:
        """Delete raw readings older than ``retention_days`` that every guard lets go, and
        the outbox rows of that age the platform has confirmed; return the readings deleted."""
        now = time.time() if now is None else now
        before = now - self.cfg.retention_days * 86400
        guards = list(self.retention_guards)  # those of the call, whenever the writer runs it

        def run(db: sqlite_utils.Database) -> tuple[int, int]:
            limits = [before] + [g(db) for g in guards]
            deleted = delete_before(db, min(x for x in limits if x is not None))
            return deleted, prune_synced(db, before)

        deleted, pruned = await self.committer.run(run)
        if deleted or pruned:
            event(log, logging.INFO, "retention", deleted=deleted, outbox_pruned=pruned)
            self.committer.space_freed()  # stages a full database stopped run again now
        return deleted

    async def _retention_loop(self) -> None:
        while True:
            await self.retention()
            await asyncio.sleep(RETENTION_PERIOD)

    def _declare_metrics(self) -> None:
        """Every metric of the gateway, each series present from the first scrape (at 0,
        each known label value too: an alert or a ``rate()`` works before the first event),
        the per-node gauges from what ingest keeps in memory (``NodeCache.heard``: a scrape
        reads no table), the version and the process' CPU and memory."""
        m = self.metrics
        declare_process_metrics(m, __version__)
        for name in (
            "reverbere_readings_received_total",
            "reverbere_readings_stored_total",
            "reverbere_commits_total",
            "reverbere_packs_committed_total",
        ):
            m.counter(name).declare()
        m.gauge("reverbere_store_full").declare()
        m.gauge("reverbere_last_commit_seconds").declare()
        for outcome in (Outcome.STORED, Outcome.REPEATED):
            m.counter("reverbere_packs_accepted_total").declare(outcome=outcome.value)
        for reason in REJECTION_REASONS:
            m.counter("reverbere_packs_rejected_total").declare(reason=reason)
        errors = m.counter("reverbere_stage_errors_total")
        for stage in self.after_commit:
            errors.declare(stage=stage_name(stage))
        errors.declare(stage="Detector.quiet")
        if self.pipeline.sync is not None:
            m.counter("reverbere_sync_restarts_total").declare()
        nodes = self._ingest.nodes
        nodes.reload()  # the registered nodes, before their first pack
        for name, attr, scale, never in (
            ("reverbere_node_last_seen_timestamp_seconds", "last_seen", 1, 0),  # 0: never
            ("reverbere_node_battery_ratio", "battery", 0.01, None),  # the node sends %
            ("reverbere_node_rssi_dbm", "rssi", 1, None),
        ):
            m.gauge(name).set_collector(functools.partial(_heard, nodes, attr, scale, never))
        m.gauge("reverbere_queue_depth", "Packs waiting for a commit.").set_function(
            lambda: self.committer.depth
        )
        m.gauge("reverbere_db_bytes", "Bytes used by the database (pages in use).").set_function(
            lambda: db_bytes(self.db)
        )
        m.gauge("reverbere_wal_bytes", "Bytes of the write-ahead log.").set_function(
            lambda: wal_bytes(self.cfg.database)
        )
        m.gauge(
            "reverbere_coap_dedup_entries", "Responses kept for CoAP retransmissions."
        ).set_function(lambda: self._mman.cache_size)
        m.gauge("reverbere_disk_budget_bytes", "The database's disk budget.").set(
            self.cfg.disk_budget
        )
        watch = self._ingest.clock_watch
        m.gauge(
            "reverbere_clock_synchronized", "1 while the gateway trusts its clock (gateway.clock)."
        ).set_function(lambda: int(watch.state().synchronized))
        m.gauge(
            "reverbere_clock_offset_seconds",
            "How far the nodes' times are ahead of the gateway's (median; NaN: too few nodes).",
        ).set_function(lambda: _nan_if_none(watch.state().offset))
        if self.pipeline.sync is not None:
            declare_metrics(m, self.db, self.pipeline.sync)

    async def _metrics_page(self) -> tuple[int, str, bytes]:
        return 200, PROM_CONTENT_TYPE, self.metrics.render().encode()

    def clock_state(self) -> dict[str, object]:
        """Whether the gateway trusts its clock, for the console (``gateway.clock``)."""
        return console_state(self._ingest.clock_watch)

    async def _clock_watch(self) -> None:
        """Look at the clock's state now and then, so that its change (NTP answered) is
        logged when it happens, not at the next pack."""
        while True:
            self._ingest.clock_watch.state()
            await asyncio.sleep(CLOCK_CHECK_EVERY)


def _heard(
    nodes: NodeCache, attr: str, scale: float, never: float | None
) -> Iterator[tuple[dict[str, str], float]]:
    """One series per active node of what ingest last heard (``NodeCache.heard``), its
    ``attr`` times ``scale``; a node not heard of yet has ``never`` (None: no series)."""
    for node_id, heard in nodes.heard.items():
        value = getattr(heard, attr)
        if value is not None:
            yield {"node": node_id}, value * scale
        elif never is not None:
            yield {"node": node_id}, never


def _nan_if_none(x: float | None) -> float:
    return math.nan if x is None else x


async def serve(cfg: Config, ready: Callable[[Gateway], None] | None = None) -> None:
    """Run a gateway until SIGTERM or SIGINT, then stop it gracefully.

    One per database: ``gateway.daemon.instance_lock`` raises ``AlreadyRunning`` (naming the
    other's PID) before anything is opened. Under systemd (gateway/daemon.py) it sends
    ``READY=1`` once the ports are bound and, with ``WatchdogSec=``, ``WATCHDOG=1`` each time
    the writer thread gets its turn at the database, so a stuck gateway is restarted too."""
    logs.setup(cfg.log_level, cfg.log_format)
    with daemon.instance_lock(cfg.database):
        await _serve(cfg, ready)


async def _serve(cfg: Config, ready: Callable[[Gateway], None] | None) -> None:
    gw = Gateway(cfg)
    await gw.start()
    # What start-up made (modules, aiocoap, the config) lives as long as the process: keep it
    # out of every garbage collection, which shortens the full ones (latency tails).
    gc.collect()
    gc.freeze()
    # The event loop and the writer thread (the stages, retention) hand the GIL to each other
    # around every SQLite call; a thread waiting for it waits up to the switch interval (5 ms
    # by default), which shows in the ack latency tail. 1 ms keeps those waits short.
    sys.setswitchinterval(SWITCH_INTERVAL)
    if ready is not None:
        ready(gw)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    daemon.notify(f"READY=1\nSTATUS=CoAP port {gw.coap_port}, HTTP port {gw.http_port}")
    period = daemon.watchdog_period()
    watchdog = None
    if period is not None:

        async def probe() -> None:  # the turn a commit holds while the writer process runs it
            await gw.committer.run(lambda db: None)

        watchdog = asyncio.create_task(daemon.keep_alive(probe, period))
    await stop.wait()
    daemon.notify("STOPPING=1")
    if watchdog is not None:
        watchdog.cancel()
    event(log, logging.INFO, "stopping: committing what is queued")
    await gw.stop()


class BindError(OSError):
    """The gateway cannot listen on an address of its config (``--coap``, ``[coap] host``...);
    ``str()`` is a sentence naming the service and the address, with the reason."""

    def __init__(self, service: str, host: str, port: int, error: OSError | CoapError):
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if isinstance(error, CoapError | socket.gaierror):
            reason = "not an address or a name of this machine (a typo, or another host's?)"
        elif error.errno == errno.EADDRINUSE:
            reason = "the port is in use (another gateway?)"
        elif error.errno == errno.EADDRNOTAVAIL:
            reason = "that address is not one of this machine's"
        elif error.errno == errno.EACCES:
            reason = "permission denied (ports below 1024 need privileges)"
        else:
            reason = error.strerror or str(error)
        super().__init__(error.errno if isinstance(error, OSError) else None, where)
        self.address = where
        self.message = f"cannot listen for {service} on {where}: {reason}"

    def __str__(self) -> str:
        return self.message


def init_dir(directory: Path) -> Path:
    """Write a commented ``directory/gateway.toml`` and create its database; return the
    config's path. Raises ``FileExistsError`` rather than overwrite a config. Both are
    readable by their owner only: the config is where the uplink's credentials go, and the
    database (``open_db``) holds the node keys."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "gateway.toml"
    with os.fdopen(
        os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "w", encoding="utf-8"
    ) as f:
        f.write(TEMPLATE)
    open_db(config.load(path).database).close()
    return path
