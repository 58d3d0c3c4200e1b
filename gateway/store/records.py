"""The one record type a reading has inside the gateway, from ingest to sync."""

from typing import NamedTuple


class Reading(NamedTuple):
    """One stored measurement: ``value`` of ``channel`` (see ``protocols.const.CHANNELS``)
    at ``time`` (Unix seconds, UTC) from node ``node``."""

    node: str
    channel: str
    time: float
    value: float
