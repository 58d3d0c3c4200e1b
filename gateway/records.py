"""The one record type a reading has inside the gateway, from ingest to sync."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reading:
    """One stored measurement: ``value`` of ``channel`` (see ``protocols.const.CHANNELS``)
    at ``time`` (Unix seconds, UTC) from node ``node``."""

    node: str
    channel: str
    time: float
    value: float
