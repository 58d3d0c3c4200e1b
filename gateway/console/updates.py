"""A node's firmware update as the console shows it: the version it runs and where its update
stands, in the spirit of LwM2M object 5 (Firmware Update), from what the gateway knows.

The version and the outcome come from the node's SIGNED readings (``fw`` the confirmed
version, ``fwt`` a version on trial, ``fwx`` a version given up: docs/ota.md) and from the
rollout's table (``gateway.ota.rollout``), which is settled from those readings only. What the
node said when it asked for its manifest (``v=``, ``r=``, ``gateway.ota.updates.status``) is
not authenticated: it only tells *downloading* from *offered*, and words the reason of a
failure, never decides an outcome. The transfer itself is stateless on the gateway (any
block, any time: docs/protocol.md), so how many of its files a node has checked is known on
the node only (``/fw/ota.json``, ``reverbere node doctor``), not here.

States, in the order an update goes through them:

=============  ===============================================================================
idle           in no rollout
waiting        in the rollout, its wave not offered yet (the canaries first)
offered        offered in its 2.04s, not asked for yet
downloading    it asked for its manifest since the offer: fetching and checking the files
updating       it runs the new version on trial (``fwt``), not yet confirmed
confirmed      it runs the new version, confirmed (``fw``)
rolled_back    it gave the version up (``fwx``): with the reason it gave
failed         neither within 6 hours of the offer
cancelled      the rollout stopped (too many failures) before its turn
=============  ===============================================================================

Every read is a primary-key look-up (``ota_rollout``, ``ota_nodes``, the node's latest
``fw``/``fwt``/``fwx`` in ``readings``); only the fleet reads ``ota_rollout`` whole, a row per
node of the rollout, as it reads the ``nodes`` table.
"""

from dataclasses import dataclass

import sqlite_utils

from gateway.console.i18n import N_
from gateway.ota.rollout import settled

UPDATE_STATES = (
    N_("idle"),
    N_("waiting"),
    N_("offered"),
    N_("downloading"),
    N_("updating"),
    N_("confirmed"),
    N_("rolled_back"),
    N_("failed"),
    N_("cancelled"),
)
# LwM2M object 5, resource 5 "Update Result", as the node reports it (docs/protocol.md).
RESULTS = {
    5: N_("the files did not match the signed manifest (integrity check failed)"),
    6: N_("the node refused the manifest (another class, .mpy or version)"),
    8: N_("the new version did not start: the node went back to the previous one"),
}
GAVE_UP = N_("the node gave the version up")
NO_CONFIRMATION = N_("no confirmation within 6 hours of the offer")
STOPPED = N_("the rollout stopped after too many failures")


@dataclass(frozen=True)
class UpdateView:
    """A node's firmware and update, for its page and its line of the fleet."""

    running: int | None  # the confirmed version (latest fw), None: never said
    trial: int | None  # a version on trial (latest fwt above running)
    target: int | None  # the version rolled out to it, None: in no rollout
    state: str  # one of UPDATE_STATES
    reason: str | None  # why it rolled back, failed or was cancelled (a msgid)
    offered: float | None  # when it was offered the version
    asked: float | None  # when it last asked for its manifest (unauthenticated)
    ended: float | None  # when its part of the rollout ended


def rollout_states(db: sqlite_utils.Database) -> dict[str, str]:
    """node -> its state in the rollout (nodes outside it are idle): the fleet's filter."""
    return dict(db.execute("SELECT node, state FROM ota_rollout").fetchall())


def _latest_sql(channel: str, ref: str) -> str:
    # primary key (node, channel, time): one look-up
    return (
        f"(SELECT value FROM readings WHERE node = {ref} AND channel = '{channel}'"
        " ORDER BY time DESC LIMIT 1)"
    )


_FACTS = f"""
    SELECT r.node, {_latest_sql("fw", "n.ref")}, {_latest_sql("fwt", "n.ref")},
           {_latest_sql("fwx", "n.ref")}, r.version, r.state, r.offered, r.ended,
           o.reported, o.result
    FROM ota_rollout r JOIN nodes n ON n.id = r.node LEFT JOIN ota_nodes o ON o.node = r.node
"""


def offered_states(db: sqlite_utils.Database) -> dict[str, str]:
    """node -> its update state, for every node the version is offered to (one query, three
    primary-key look-ups a node): the Parc filter's states beyond the rollout's own."""
    rows = db.execute(_FACTS + " WHERE r.state = 'offered'").fetchall()
    return {row[0]: _judge(*row[1:]).state for row in rows}


def state_of(node: str, rollout: dict[str, str], offered: dict[str, str]) -> str:
    """The node's update state as its page says it (``rollout``: :func:`rollout_states`,
    ``offered``: :func:`offered_states`)."""
    state = rollout.get(node, "idle")
    return offered.get(node, state) if state == "offered" else state


def _judge(
    running: float | None,
    trial: float | None,
    given_up: float | None,
    target: int,
    state: str,
    offered: float | None,
    ended: float | None,
    reported: float | None,
    result: int | None,
) -> UpdateView:
    """The view from a row of ``_FACTS`` (after its node): the rollout's state, refined
    from the node's signed readings while it is offered the version."""
    running = None if running is None else int(running)
    trial = None if trial is None else int(trial)
    if trial is not None and running is not None and trial <= running:
        trial = None
    since_offer = reported is not None and offered is not None and reported >= offered
    reason = None
    if state == "offered":  # the rollout settles it within a minute; its readings say it now
        said = settled(target, running, None if given_up is None else int(given_up))
        if said is not None:
            state = said
        elif trial is not None and trial >= target:
            state = "updating"
        elif since_offer:
            state = "downloading"
    if state == "rolled_back":
        reason = RESULTS.get(result or 0, GAVE_UP) if since_offer else GAVE_UP
    elif state == "failed":
        reason = NO_CONFIRMATION
    elif state == "cancelled":
        reason = STOPPED
    return UpdateView(
        running, trial, target, state, reason, offered, reported if since_offer else None, ended
    )


def update_view(db: sqlite_utils.Database, node: str, ref: int) -> UpdateView:
    """The node's firmware and update (see the module for the states)."""
    row = db.execute(_FACTS + " WHERE r.node = ?", [node]).fetchone()
    if row is not None:
        return _judge(*row[1:])
    running, trial = db.execute(
        f"SELECT {_latest_sql('fw', '?')}, {_latest_sql('fwt', '?')}", [ref, ref]
    ).fetchone()
    view = _judge(running, trial, None, 0, "idle", None, None, None, None)
    return UpdateView(view.running, view.trial, None, "idle", None, None, None, None)
