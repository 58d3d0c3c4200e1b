"""``reverbere_ota_nodes{state=...}`` on /metrics: nodes per firmware update state.

The counts come from :func:`gateway.ota.rollout.state_counts` (the nodes' signed readings and
the rollout's table), which queries the database: a scrape reuses the counts for ``every``
seconds, so that scraping often costs the gateway next to nothing. No series at all while
no rollout was ever started.
"""

import time
from collections.abc import Iterator

import sqlite_utils

from gateway.metrics import Registry
from gateway.ota import rollout


def declare_ota_metrics(registry: Registry, db: sqlite_utils.Database, every: float = 30.0) -> None:
    cache: dict = {"at": -every, "counts": {}}

    def collect() -> Iterator[tuple[dict[str, str], float]]:
        now = time.monotonic()
        if now - cache["at"] >= every:
            cache["at"] = now
            started = db.execute("SELECT 1 FROM ota_rollout LIMIT 1").fetchone()
            cache["counts"] = rollout.state_counts(db) if started else {}
        for state in ("idle", *rollout.STATES) if cache["counts"] else ():
            yield {"state": state}, cache["counts"].get(state, 0)

    registry.gauge(
        "reverbere_ota_nodes",
        "Nodes per firmware update state (idle, waiting, offered, confirmed, rolled_back, "
        "failed, cancelled), from their signed readings",
    ).set_collector(collect)
