"""Firmware updates in the demo (sim/demo.py): the whole fleet updated mid-run, then a broken
version sent to two nodes, which must roll back by themselves (docs/ota.md).

A thin driver over :mod:`gateway.ota.rollout`, as ``reverbere fleet update`` is: its ``tick``
is the fleet's timer (``Fleet(timer=(60, updates.tick))``), so the rollout steps once per
simulated minute, in step with the fleet however fast it runs.

1. At ``at`` (a fraction of the run): version 1, this gateway's own firmware compiled as the
   flash tool does, to every node, two canaries first, stopping at the first failure.
2. Once every node confirmed it: version 2, the same files plus one that makes the slot crash
   at boot (``sim.hal.CRASH``), to two nodes, both canaries; the boot shim gives it up after
   its 3 boots and each node goes back to version 1 by itself.
"""

from collections.abc import Callable
from pathlib import Path

import sqlite_utils

from gateway.ota import rollout
from gateway.store.db import open_db
from sim.hal import CRASH


class DemoUpdates:
    def __init__(
        self,
        database: Path,
        nodes: list[str],
        files: list[tuple[str, bytes]],
        start: float,
        duration: float,
        at: float = 0.3,
        echo: Callable[[str], None] = print,
        reload: Callable[[], None] | None = None,
    ):
        self.db: sqlite_utils.Database = open_db(database)
        self.nodes = nodes
        self.broken = nodes[-2:]  # the last two (buildings): any two would do
        self.files = files
        self.start = start
        self.at = start + duration * at
        self.echo = echo
        self.reload = reload  # the gateway's offers re-read now (sim time runs fast)
        self.phase = 0  # 0 before, 1 version 1 rolling, 2 version 2 rolling, 3 done
        self.updated = 0
        self.rolled_back = 0
        self.stopped = False

    def tick(self, now: float) -> None:
        if self.phase == 0 and now >= self.at:
            self.phase = 1
            self._say(now, "update: version 1 to every node, 2 canaries first")
            rollout.start(self.db, 1, self.files, self.nodes, "linux", 2, 0, now=now)
        elif self.phase == 1:
            p = rollout.advance(self.db, now)
            if p.done:
                self.updated = p.counts.get("confirmed", 0)
                self.stopped = p.phase == "stopped"
                self.phase = 2
                self._say(now, f"update: version 1 confirmed by {self.updated} nodes")
                broken = [*self.files, (CRASH, b"")]
                self._say(now, f"update: a broken version 2 to {', '.join(self.broken)}")
                rollout.start(self.db, 2, broken, self.broken, "linux", 2, 2, now=now)
        elif self.phase == 2:
            p = rollout.advance(self.db, now)
            if p.done:
                self.rolled_back = p.counts.get("rolled_back", 0)
                self.phase = 3
                self._say(now, f"update: version 2 rolled back by {self.rolled_back} nodes")
        else:
            return
        if self.reload is not None:
            self.reload()

    def _say(self, now: float, text: str) -> None:
        self.echo(f"  ... simulated hour {(now - self.start) / 3600:.1f}: {text}")

    def figures(self) -> dict:
        """``ota_updated``: nodes that confirmed version 1; ``ota_rolled_back``: nodes that
        gave version 2 up by themselves; ``ota_failed``: nodes left without a confirmed
        version (none of the signed readings says one runs): must be 0."""
        states = rollout.node_states(self.db)
        self.db.close()
        return {
            "ota_updated": self.updated,
            "ota_rolled_back": self.rolled_back,
            "ota_failed": sum(1 for u in states if not u.running),
        }
