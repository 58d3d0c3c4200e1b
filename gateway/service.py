"""The gateway service: every stage wired together, here and only here.

    CoAP /r ──> Ingest (verify, validate) ──> Committer (group commit; ack after commit)
                                                  │
                                                  └──> after_commit stages, in order:
                                                       detect -> summarise -> outbox
    HTTP /metrics <── Registry
    every hour: retention (raw readings older than retention_days, and no newer than
                what every retention guard says is summarised and synced)

A stage after the store is a callable ``stage(db, new_readings)`` appended to
``Gateway.after_commit``: it runs in the writer thread after each commit, with the writer's
``sqlite_utils.Database`` and the newly stored ``Reading``s in commit order (duplicates left
out). A stage that owns data the retention must wait for appends a callable
``guard(db) -> float | None`` (Unix time up to which raw readings may go) to
``Gateway.retention_guards``.
"""

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlite_utils

from gateway import coap, config, logs, store
from gateway.config import TEMPLATE, Config
from gateway.db import open_db
from gateway.ingest import Ingest, ReadingsResource
from gateway.logs import event
from gateway.metrics import PROM_CONTENT_TYPE, HttpServer, Registry
from gateway.records import Reading

log = logging.getLogger("reverbere.service")

RETENTION_PERIOD = 3600.0
SWITCH_INTERVAL = 0.001  # seconds; see serve()

Stage = Callable[[sqlite_utils.Database, list[Reading]], None]
Guard = Callable[[sqlite_utils.Database], float | None]


def stages(cfg: Config) -> list[tuple[Stage, Guard | None]]:
    """The pipeline after the store, in order: (stage, retention guard or None) for each.

    One line per stage, e.g. ``(detect.Detector(cfg.section("detect")), None)``; a stage
    that keeps state across calls is an object with ``__call__``.
    """
    return []


class Gateway:
    """One gateway: ``await start()``, then ``coap_port``/``http_port`` are bound; ``await
    stop()`` commits what is queued (and answers it) before closing."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.metrics = Registry()
        self.committer = store.Committer(
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
        self.retention_guards: list[Guard] = []
        for stage, guard in stages(cfg):
            self.after_commit.append(stage)
            if guard is not None:
                self.retention_guards.append(guard)
        self.http = HttpServer({"/metrics": self._metrics_page})
        self.db: sqlite_utils.Database | None = None  # the event loop's reading connection
        self.coap_port = 0
        self.http_port = 0
        self._ctx: Any = None
        self._mman: coap.BoundedMessageManager | None = None
        self._tasks: list[asyncio.Task] = []
        self._ingest: Ingest | None = None

    async def start(self) -> None:
        create_private(self.cfg.database)
        self.db = open_db(self.cfg.database)  # creates the schema before anyone reads
        await self.committer.start()
        self._ingest = ingest = Ingest(self.cfg, self.db, self.committer, self.metrics)
        self._ctx, self._mman = await coap.create_server(
            ReadingsResource(ingest),
            self.cfg.coap_host,
            self.cfg.coap_port,
            lifetime=self.cfg.dedup_lifetime,
            max_entries=self.cfg.dedup_max,
        )
        self.coap_port = coap.bound_port(self._ctx)
        self.http_port = await self.http.start(self.cfg.http_host, self.cfg.http_port)
        self._declare_metrics()
        self._tasks.append(asyncio.create_task(self._retention_loop()))
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
        if self._ctx is not None:
            await self._ingest.idle()  # every handler has returned its answer to aiocoap
            await asyncio.sleep(0)  # which sends it on its next step
            await self._ctx.shutdown()
        await self.http.stop()
        if self.db is not None:
            self.db.close()
        event(log, logging.INFO, "gateway stopped")

    async def retention(self, now: float | None = None) -> int:
        """Delete raw readings older than ``retention_days`` that every guard lets go."""
        now = time.time() if now is None else now
        before = now - self.cfg.retention_days * 86400

        def run(db: sqlite_utils.Database) -> int:
            limits = [before] + [g(db) for g in self.retention_guards]
            return store.delete_before(db, min(x for x in limits if x is not None))

        deleted = await self.committer.run(run)
        if deleted:
            event(log, logging.INFO, "retention", deleted=deleted)
        return deleted

    async def _retention_loop(self) -> None:
        while True:
            await self.retention()
            await asyncio.sleep(RETENTION_PERIOD)

    def _declare_metrics(self) -> None:
        m = self.metrics
        m.gauge("reverbere_queue_depth", "Packs waiting for a commit.").set_function(
            lambda: self.committer.depth
        )
        m.gauge("reverbere_db_bytes", "Bytes used by the database (pages in use).").set_function(
            lambda: store.db_bytes(self.db)
        )
        m.gauge("reverbere_wal_bytes", "Bytes of the write-ahead log.").set_function(
            lambda: store.wal_bytes(self.cfg.database)
        )
        m.gauge(
            "reverbere_coap_dedup_entries", "Responses kept for CoAP retransmissions."
        ).set_function(lambda: self._mman.cache_size)
        m.gauge("reverbere_disk_budget_bytes", "The database's disk budget.").set(
            self.cfg.disk_budget
        )

    async def _metrics_page(self) -> tuple[int, str, bytes]:
        return 200, PROM_CONTENT_TYPE, self.metrics.render().encode()


async def serve(cfg: Config, ready: Callable[[Gateway], None] | None = None) -> None:
    """Run a gateway until SIGTERM or SIGINT, then stop it gracefully."""
    logs.setup(cfg.log_level, cfg.log_format)
    gw = Gateway(cfg)
    await gw.start()
    # What start-up made (modules, aiocoap, the config) lives as long as the process: keep it
    # out of every garbage collection, which shortens the full ones (latency tails).
    gc.collect()
    gc.freeze()
    # The event loop and the writer thread hand the GIL to each other around every SQLite
    # call; a thread waiting for it waits up to the switch interval (5 ms by default), which
    # shows in the ack latency tail. 1 ms keeps those waits short.
    sys.setswitchinterval(SWITCH_INTERVAL)
    if ready is not None:
        ready(gw)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    event(log, logging.INFO, "stopping: committing what is queued")
    await gw.stop()


def create_private(path: Path) -> None:
    """Create an empty database file readable by its owner only (it holds the node keys);
    SQLite gives its -wal and -shm files the same mode. Does nothing if it exists."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def init_dir(directory: Path) -> Path:
    """Write a commented ``directory/gateway.toml`` and create its database; return the
    config's path. Raises ``FileExistsError`` rather than overwrite a config."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "gateway.toml"
    with open(path, "x", encoding="utf-8") as f:
        f.write(TEMPLATE)
    cfg = config.load(path)
    create_private(cfg.database)
    open_db(cfg.database).close()
    return path
