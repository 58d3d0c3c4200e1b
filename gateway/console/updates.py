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


def rollout_exists(db: sqlite_utils.Database) -> bool:
    return db.execute("SELECT 1 FROM ota_rollout LIMIT 1").fetchone() is not None


def rollout_states(db: sqlite_utils.Database) -> dict[str, str]:
    """node -> its state in the rollout (nodes outside it are idle): the fleet's filter."""
    return dict(db.execute("SELECT node, state FROM ota_rollout").fetchall())


def state_of(db: sqlite_utils.Database, node: str, ref: int, rollout: dict[str, str]) -> str:
    """The node's update state, as its page says it (``rollout``: :func:`rollout_states`):
    the rollout's own when its part ended, else judged from its readings too (a few
    primary-key look-ups for each node offered the version, only when the fleet is filtered
    by update state)."""
    state = rollout.get(node, "idle")
    return update_view(db, node, ref).state if state == "offered" else state


def _latest(db: sqlite_utils.Database, ref: int, channel: str) -> int | None:
    row = db.execute(  # primary key (node, channel, time)
        "SELECT value FROM readings WHERE node = ? AND channel = ? ORDER BY time DESC LIMIT 1",
        [ref, channel],
    ).fetchone()
    return None if row is None else int(row[0])


def update_view(db: sqlite_utils.Database, node: str, ref: int) -> UpdateView:
    """The node's firmware and update (see the module for the states)."""
    running, trial = _latest(db, ref, "fw"), _latest(db, ref, "fwt")
    if trial is not None and running is not None and trial <= running:
        trial = None
    row = db.execute(
        "SELECT version, state, offered, ended FROM ota_rollout WHERE node = ?", [node]
    ).fetchone()
    asked = db.execute(
        "SELECT reported, result FROM ota_nodes WHERE node = ?", [node]
    ).fetchone() or (None, None)
    if row is None:
        return UpdateView(running, trial, None, "idle", None, None, None, None)
    target, state, offered, ended = row
    reported, result = asked
    since_offer = reported is not None and offered is not None and reported >= offered
    reason = None
    if state == "offered":  # the rollout settles it within a minute; its readings say it now
        if running is not None and running >= target:
            state = "confirmed"
        elif _latest(db, ref, "fwx") == target:
            state = "rolled_back"
        elif trial is not None and trial >= target:
            state = "updating"
        elif since_offer:
            state = "downloading"
    if state == "rolled_back":
        reason = RESULTS.get(result, GAVE_UP) if since_offer else GAVE_UP
    elif state == "failed":
        reason = NO_CONFIRMATION
    elif state == "cancelled":
        reason = STOPPED
    return UpdateView(
        running, trial, target, state, reason, offered, reported if since_offer else None, ended
    )
