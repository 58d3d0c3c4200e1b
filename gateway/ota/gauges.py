"""``reverbere_ota_nodes{state=...}`` on /metrics: nodes per firmware update state.

A scrape runs on the event loop's connection, the one that acknowledges the nodes' packs, so
the counts must cost next to nothing: a node's state is its row of ``ota_rollout`` ("idle"
without one), and :func:`gateway.ota.rollout.state_counts` counts them in one grouped query
over the ``nodes`` table, one primary-key look-up in ``ota_rollout`` per node (1.5 ms at 2,000
nodes; counted from :func:`~gateway.ota.rollout.node_states`, which also reads each node's
versions from its readings, it took ~200 ms every 30 s during a rollout while the acks waited,
issue 16). A scrape still reuses the counts for ``every``
seconds. No series at all while no rollout was ever started.
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
