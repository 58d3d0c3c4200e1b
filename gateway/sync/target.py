"""What the sync worker asks of a platform: the :class:`Target` protocol, the :class:`Row` it
hands over and the outcomes a request can have.

Two targets implement it: ``SensorThingsTarget`` (gateway/sync/sensorthings.py), the default,
and ``MqttTarget`` (gateway/sync/mqtt.py). Exactly-once needs reading back after an uncertain
outcome; a target that can do that is a :class:`ReadBack` too (SensorThings). The senders check
for it: with a target that cannot (MQTT), what had an uncertain outcome is sent again, so
delivery is at least once.

The outcomes are the three the senders act on differently: :class:`Unreachable` (nothing left
the gateway: release the batch), :class:`Rejected` (the platform answered no: release it and
count it against the rows) and :class:`Uncertain` (it may have been applied: keep the batch in
flight and read back before sending it again). :class:`BadAnswer` is an uncertain outcome
whose message says which rule of the protocol the answer broke.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class SyncError(Exception):
    """Base of the sync target's failures."""


class Unreachable(SyncError):
    """No connection: the request never left, nothing happened at the platform."""


class Uncertain(SyncError):
    """The request may have been applied (timeout, reset, 5xx): read back before resending."""


class BadAnswer(Uncertain):
    """An answer the protocol does not define as success, nor as a refusal: a redirect, a
    2xx other than the one the request calls for, an ``@iot.nextLink`` off the platform's
    origin or in a loop, an answer too big to read. Nothing is confirmed from it; like any
    uncertain outcome the rows stay in flight and are read back before they are sent again
    (a misdirected POST may still have been stored somewhere on the platform's side)."""


class Rejected(SyncError):
    """The platform answered with a client error: the request was not applied."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"platform refused ({status}): {text[:200]}")
        self.status = status


class AuthFailed(Rejected):
    """401/403: the token or password in ``[sync]`` is wrong."""


@dataclass(frozen=True)
class Row:
    """One Observation to create or update, as the worker hands it over."""

    item: int  # outbox row id
    time: int
    result: float
    parameters: dict


class Target(Protocol):
    """A platform the senders (gateway/sync/outbox_sender.py, raw_sender.py) write to.

    A stream id is whatever names a ``(node, stream)`` on the platform: a Datastream id for
    SensorThings, ``"node/stream"`` for MQTT. Every method charges the byte budget before a
    request leaves and raises :class:`SyncError` subclasses as described above, or
    ``BudgetExhausted`` when the request would not fit in today's budget.
    """

    def ensure_streams(self, needed: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """Stream ids of every ``(node, stream)`` in ``needed``, made where missing."""
        ...

    def create(self, groups: Mapping[str, list[Row]]) -> dict[int, str | None]:
        """Create the rows (per stream id) in one request: per outbox item, the new
        Observation's id, or None for a row the platform did not take."""
        ...

    def update(self, obs_id: str, row: Row) -> bool:
        """Replace the figures of Observation ``obs_id``; False when it is gone."""
        ...

    def create_raw(self, groups: Mapping[str, list[tuple[float, float]]]) -> list[bool]:
        """Create raw readings ``(time, value)`` per stream id: in order, whether each was
        taken."""
        ...

    def forget_streams(self, ids: Iterable[str]) -> None:
        """Every row sent to these streams failed: they may be gone from the platform, so
        look them up again next time instead of trusting what was remembered."""
        ...

    def close(self) -> None:
        """Close the connection (called by the worker's owner, not the senders)."""
        ...


@runtime_checkable
class ReadBack(Target, Protocol):
    """A target that can tell what it holds: after an uncertain outcome the senders look
    the rows up and adopt what is there instead of sending it twice (exactly once)."""

    def observations(
        self, ds_ids: Iterable[str] | None, t0: int, t1: int
    ) -> dict[str, list[tuple[str, int, float, dict]]]:
        """Per stream id, ``(obs id, time, result, parameters)`` with time in ``[t0, t1]``."""
        ...

    def observation_times(
        self, ranges: Iterable[tuple[str, float, float]]
    ) -> dict[str, list[tuple[str, float]]]:
        """Per stream id, ``(obs id, time)`` within each ``(stream id, t0, t1)``."""
        ...

    def delete(self, obs_id: str) -> None:
        """Delete a second copy found by a read-back (gone already is fine)."""
        ...
