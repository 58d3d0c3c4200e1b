"""The platform's part of ``reverbere demo``: start it behind the fault proxy, then pull the
summaries back, check them against the gateway and draw the chart.

    plat = start_demo_platform(workdir)          # plat.url goes into [sync] url
    plat.proxy.down = True  ...  = False         # the link outage
    figures = pull_back(db, plat, workdir / "summaries.svg", town)
    plat.stop()
"""

from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from gateway.reports import Town
from gateway.sync.report import pull, write_chart
from sim.platform import FaultProxy, PlatformProcess, start_platform


@dataclass
class DemoPlatform:
    server: PlatformProcess
    proxy: FaultProxy

    @property
    def url(self) -> str:
        """What the gateway talks to: the platform's service root through the proxy."""
        return self.proxy.url + "/v1.1"

    @property
    def direct_url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.proxy.stop()
        self.server.stop()


def start_demo_platform(
    workdir: str | Path, *, fault_rate: float = 0.05, seed: int = 1
) -> DemoPlatform:
    """A SensorThings server on loopback, with the seeded fault proxy in front of it."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    server = start_platform(workdir / "platform.sqlite3")
    try:
        proxy = FaultProxy(server.address, seed=seed, rate=fault_rate).start()
    except BaseException:
        server.stop()
        raise
    return DemoPlatform(server, proxy)


def pull_back(
    db: sqlite_utils.Database,
    platform: DemoPlatform,
    chart: str | Path | None = None,
    town: Town | None = None,
) -> dict:
    """Pull everything back from the platform, compare with the gateway's outbox and draw
    ``chart`` for ``town`` (its zone and lamps: ``Town.from_detect`` of the gateway's
    ``[detect]``; by default UTC and ids ``lamp...``). Returns the demo's figures."""
    got = pull(platform.direct_url, 0, 2**31)
    row = db.execute(
        "SELECT sum(kind = 'summary' AND synced_version = version),"
        " sum(kind = 'event' AND synced_version = version),"
        " sum(synced_version < version) FROM sync_outbox"
    ).fetchone()
    sent = db.execute(
        "SELECT coalesce(sum(sent), 0), coalesce(sum(received), 0) FROM sync_budget"
    ).fetchone()
    if chart is not None:
        town = town or Town()
        write_chart(chart, got.summaries, got.events, tz=town.timezone, is_lamp=town.is_lamp)
    return {
        "summaries_synced": row[0] or 0,
        "summaries_on_platform": len(got.summaries),
        "events_synced": row[1] or 0,
        "events_on_platform": len(got.events),
        "duplicates_on_platform": got.duplicates,
        "sync_backlog": row[2] or 0,
        "uplink_bytes": sent[0],
        "downlink_bytes": sent[1],
        "faults_injected": platform.proxy.log.count(),
        "chart": str(chart) if chart is not None else None,
    }
