"""What the two senders (gateway/sync/outbox_sender.py, raw_sender.py) share: the one way a
batch goes out (:func:`send_halving`) and the figures they keep (:class:`SyncStats`).

A batch is marked in flight, committed, before its request leaves, so that a gateway that
dies mid-request knows to read back before sending it again. Whatever happens next is one of
the outcomes of gateway/sync/target.py, and each has one answer, the same for summaries and
raw readings: see :func:`send_halving`.
"""

from collections.abc import Callable, Sized
from dataclasses import dataclass, field
from typing import TypeVar

from gateway.sync.budget import BudgetExhausted
from gateway.sync.target import Rejected, Unreachable


@dataclass
class SyncStats:
    """What the worker did (since it started)."""

    created: int = 0
    updated: int = 0
    adopted: int = 0  # found on the platform after an uncertain outcome
    resent: int = 0  # not found after an uncertain outcome: sent again
    duplicates_removed: int = 0
    row_errors: int = 0
    rejected: int = 0
    requests_failed: int = 0
    raw_sent: int = 0  # raw readings confirmed by the platform's answer
    raw_adopted: int = 0  # raw readings found on the platform after an uncertain outcome
    raw_resent: int = 0  # raw readings not found after an uncertain outcome: owed again
    steps: int = 0
    outcomes: list[str] = field(default_factory=list)


B = TypeVar("B", bound=Sized)
R = TypeVar("R")


def send_halving(
    limit: int,
    take: Callable[[int], B | None],
    send: Callable[[B], R],
    release: Callable[[B], None],
    refused: Callable[[B, Rejected], None],
) -> tuple[B, R] | None:
    """Send one batch of at most ``limit`` rows: ``(batch, answer)``, or None when ``take``
    found nothing to send.

    ``take(limit)`` marks a batch in flight (committed) and returns it; ``send(batch)`` makes
    the request. When the request does not fit in today's budget the batch is released and
    taken again at half its size, down to one row, which raises ``BudgetExhausted``: a metered
    link still gets what fits. No connection (``Unreachable``): nothing left the gateway, the
    batch is released. A refusal (``Rejected``): not applied, released, and ``refused``
    decides what it costs the rows. Both raise on. ``Uncertain`` (or anything else) raises
    with the batch still in flight: it is read back before it is sent again.
    """
    while True:
        batch = take(limit)
        if batch is None:
            return None
        try:
            return batch, send(batch)
        except BudgetExhausted:
            release(batch)
            if len(batch) == 1:
                raise
            limit = len(batch) // 2
        except Unreachable:
            release(batch)
            raise
        except Rejected as exc:
            release(batch)
            refused(batch, exc)
            raise
