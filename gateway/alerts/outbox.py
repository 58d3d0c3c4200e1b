"""The alert stage and its durable outbox: which events go to whom, and when.

``AlertStage(config)(db, readings)`` runs after ``detect`` on each commit (gateway/service.py),
and ``settle(db, now)`` every minute (events a timer opened, digests that fell due). In one
transaction it reads every event of ``anomalies`` whose ``version`` it has not seen
(``alert_seen``), decides for each route of ``[alerts]`` (docs/alerts.md), and writes the
messages to send as rows of ``alerts``, text and all: durable before anything is sent. The
sender (gateway/alerts/sender.py) delivers them and marks each sent once the server accepted it.

Never a storm:

* an urgent event (``[alerts] urgent`` kinds) is sent at once, and once: while it is open, the
  route's other events of the same node and kind are covered by it (``alert_open``), and its
  end is announced by a closing message;
* every other event waits for the route's daily digest (``digest_at``, local time);
* an urgent event of a node and kind the route heard of less than an hour before (a condition
  that comes and goes) waits for the digest too;
* at most ``max_per_hour`` immediate messages per route in an hour (by the events' time):
  beyond, the event waits for the digest, which says so.

Each decision has a unique ``key`` (``<route>/event/<id>``, ``<route>/close/<id>``,
``<route>/digest/<first item>``): replaying the stage writes nothing twice, and the receivers
get the key with the message (webhook and ntfy header ``Idempotency-Key``, the mail's
Message-ID), so a crash between a delivery and its mark shows as the same key twice, not as a
new alert.
"""

import json
import time
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import sqlite_utils
from sqlite_utils.migrations import Migrations

from gateway.alerts import messages
from gateway.alerts.config import AlertsConfig, Route
from gateway.alerts.messages import EventFacts
from gateway.store.records import Reading

migrations = Migrations("reverbere.alerts")

SENDABLE = ("open", "close", "digest")  # phases the sender delivers; "item" and "covered" wait
OVER_CAP_NOTE = " (envoyée ici : plafond de messages par heure atteint)"
FLAPPING_NOTE = " (revenue moins d'une heure après un message pour ce capteur)"
FLAPPING_S = 3600.0  # an urgent event this soon after a message of its node and kind: digest


@migrations()
def m001_alert_tables(db: sqlite_utils.Database) -> None:
    db["alert_seen"].create({"event": int, "version": int}, pk="event")
    db["alert_open"].create(
        {"route": str, "node": str, "kind": str, "event": int}, pk=("route", "node", "kind")
    )
    db["alerts"].create(
        {
            "id": int,
            "key": str,
            "route": str,
            "phase": str,  # open, close, digest (sent); item (waits for a digest), covered
            "event": int,
            "node": str,
            "kind": str,
            "urgent": int,
            "at": float,  # the event's time the decision is about (the hourly cap counts it)
            "due": float,  # items: when their digest is made
            "note": str,
            "subject": str,
            "body": str,
            "data": str,  # JSON for webhook and ntfy
            "digest": int,  # items: the digest that carried them
            "created": float,
            "sent": float,
            "attempts": int,
            "next_try": float,
            "error": str,
        },
        pk="id",
        not_null={"key", "route", "phase", "at", "created", "attempts", "next_try"},
        defaults={"attempts": 0, "next_try": 0.0, "urgent": 0, "note": ""},
    )
    db["alerts"].create_index(["key"], unique=True)
    db["alerts"].create_index(["sent", "next_try"])
    db["alerts"].create_index(["route", "phase", "at"])


class AlertStage:
    """The alert stage (see the module docstring); ``listeners`` wake the sender."""

    def __init__(self, config: AlertsConfig) -> None:
        self.config = config
        self.listeners: list[Callable[[], None]] = []

    def __call__(self, db: sqlite_utils.Database, new: Sequence[Reading]) -> int:
        now = max((r.time for r in new), default=None)
        return self.settle(db, now)

    def settle(self, db: sqlite_utils.Database, now: float | None) -> int:
        """Route what changed and make the digests due by ``now`` (Unix time: the fleet's
        newest reading, or the gateway's trusted clock); return the messages written."""
        made = route_events(db, self.config, now)
        if made:
            for notify in self.listeners:
                notify()
        return made


def digest_time(after: float, config: AlertsConfig) -> float:
    """The first ``digest_at`` (local time) strictly after ``after``."""
    tz = ZoneInfo(config.timezone)
    local = datetime.fromtimestamp(after, tz)
    day: date = local.date()
    while True:
        t = datetime.combine(day, config.digest_at, tzinfo=tz).timestamp()
        if t > after:
            return t
        day += timedelta(days=1)


def route_events(db: sqlite_utils.Database, config: AlertsConfig, now: float | None) -> int:
    """The stage's work in one transaction; return the sendable messages written."""
    made = 0
    with db.atomic():
        rows = db.execute(
            "SELECT a.id, a.node, a.channel, a.kind, a.start, a.end, a.score, a.reason, a.version"
            " FROM anomalies a LEFT JOIN alert_seen s ON s.event = a.id"
            " WHERE s.event IS NULL OR a.version > s.version ORDER BY a.id"
        ).fetchall()
        for row in rows:
            ev = EventFacts(*row[:8])
            for route in config.routes:
                made += _decide(db, config, route, ev)
        db.conn.executemany(
            "INSERT INTO alert_seen (event, version) VALUES (?, ?)"
            " ON CONFLICT (event) DO UPDATE SET version = excluded.version",
            [(row[0], row[8]) for row in rows],
        )
        if now is not None:
            made += _make_digests(db, config, now)
    return made


def _decide(db: sqlite_utils.Database, config: AlertsConfig, route: Route, ev: EventFacts) -> int:
    if not route.wants(ev.node, ev.kind):
        return 0
    urgent = ev.kind in config.urgent
    if route.severity == "urgent" and not urgent:
        return 0
    immediate = urgent and route.severity != "digest"
    made = 0
    decided = db.execute(
        "SELECT phase FROM alerts WHERE key = ?", [f"{route.name}/event/{ev.id}"]
    ).fetchone()
    if decided is None:
        if not immediate:
            _insert(db, route, "item", ev, ev.start, due=digest_time(ev.start, config))
        elif _holder(db, route, ev) not in (None, ev.id):
            _insert(db, route, "covered", ev, ev.start)  # one message per node and kind
        elif _opened_lately(db, route, ev):
            due = digest_time(ev.start, config)
            _insert(db, route, "item", ev, ev.start, due=due, note=FLAPPING_NOTE)
        elif _sent_in_hour(db, route, ev.start) >= config.max_per_hour:
            due = digest_time(ev.start, config)
            _insert(db, route, "item", ev, ev.start, due=due, note=OVER_CAP_NOTE)
        else:
            subject, body = messages.opening(ev, config.timezone, urgent=True)
            _insert(db, route, "open", ev, ev.start, subject=subject, body=body, urgent=True)
            made += 1
            if ev.end is None:
                db.execute(
                    "INSERT OR REPLACE INTO alert_open (route, node, kind, event)"
                    " VALUES (?, ?, ?, ?)",
                    [route.name, ev.node, ev.kind, ev.id],
                )
        decided = db.execute(
            "SELECT phase FROM alerts WHERE key = ?", [f"{route.name}/event/{ev.id}"]
        ).fetchone()
    if ev.end is not None and _holder(db, route, ev) == ev.id:
        db.execute(
            "DELETE FROM alert_open WHERE route = ? AND node = ? AND kind = ?",
            [route.name, ev.node, ev.kind],
        )
        if decided[0] == "open":
            subject, body = messages.closing(ev, config.timezone)
            made += _insert(db, route, "close", ev, ev.end, subject=subject, body=body, urgent=True)
    return made


def _holder(db: sqlite_utils.Database, route: Route, ev: EventFacts) -> int | None:
    row = db.execute(
        "SELECT event FROM alert_open WHERE route = ? AND node = ? AND kind = ?",
        [route.name, ev.node, ev.kind],
    ).fetchone()
    return None if row is None else row[0]


def _opened_lately(db: sqlite_utils.Database, route: Route, ev: EventFacts) -> bool:
    """Whether the route was told of the same node and kind less than ``FLAPPING_S`` before
    (by the events' time): a condition that comes and goes is one message, not one each time."""
    return (
        db.execute(
            "SELECT 1 FROM alerts WHERE route = ? AND node = ? AND kind = ? AND phase = 'open'"
            " AND at > ? AND at <= ? LIMIT 1",
            [route.name, ev.node, ev.kind, ev.start - FLAPPING_S, ev.start],
        ).fetchone()
        is not None
    )


def _sent_in_hour(db: sqlite_utils.Database, route: Route, at: float) -> int:
    return db.execute(
        "SELECT count(*) FROM alerts WHERE route = ? AND phase = 'open' AND at > ? AND at <= ?",
        [route.name, at - 3600, at],
    ).fetchone()[0]


def _insert(
    db: sqlite_utils.Database,
    route: Route,
    phase: str,
    ev: EventFacts | None,
    at: float,
    *,
    key: str | None = None,
    subject: str | None = None,
    body: str | None = None,
    urgent: bool = False,
    due: float | None = None,
    note: str = "",
) -> int:
    """Write one decision; 0 if its key was already written (a replay), else 1."""
    if key is None:
        key = f"{route.name}/{'close' if phase == 'close' else 'event'}/{ev.id}"
    data = None
    if phase in SENDABLE:
        data = {"id": key, "phase": phase, "route": route.name, "urgent": urgent}
        if ev is not None:
            data["event"] = {
                "id": ev.id,
                "node": ev.node,
                "channel": ev.channel,
                "kind": ev.kind,
                "start": ev.start,
                "end": ev.end,
                "score": ev.score,
                "reason": ev.reason,
            }
        data["subject"], data["text"] = subject, body
    cur = db.execute(
        "INSERT OR IGNORE INTO alerts (key, route, phase, event, node, kind, urgent, at, due,"
        " note, subject, body, data, created)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            key,
            route.name,
            phase,
            ev.id if ev else None,
            ev.node if ev else None,
            ev.kind if ev else None,
            int(urgent),
            at,
            due,
            note,
            subject,
            body,
            json.dumps(data, ensure_ascii=False) if data else None,
            time.time(),
        ],
    )
    return cur.rowcount


def _make_digests(db: sqlite_utils.Database, config: AlertsConfig, now: float) -> int:
    """One digest per route and digest time that has come, of the items waiting for it."""
    made = 0
    due = db.execute(
        "SELECT DISTINCT route, due FROM alerts"
        " WHERE phase = 'item' AND digest IS NULL AND due <= ? ORDER BY due",
        [now],
    ).fetchall()
    for route_name, when in due:
        route = config.routes_by_name.get(route_name)
        items = db.execute(
            "SELECT al.id, al.note, a.id, a.node, a.channel, a.kind, a.start, a.end, a.score,"
            " a.reason FROM alerts al JOIN anomalies a ON a.id = al.event"
            " WHERE al.route = ? AND al.phase = 'item' AND al.digest IS NULL AND al.due = ?"
            " ORDER BY a.start",
            [route_name, when],
        ).fetchall()
        if route is None or not items:  # a route removed from the config: its items stay
            continue
        facts = [(EventFacts(*it[2:]), it[1]) for it in items]
        subject, body = messages.digest(facts, when, config.timezone)
        # Keyed by its first item: an event that comes after its digest went (a late one)
        # makes a digest of its own rather than joining one already sent.
        key = f"{route.name}/digest/{items[0][0]}"
        _insert(db, route, "digest", None, when, key=key, subject=subject, body=body)
        data = json.loads(db.execute("SELECT data FROM alerts WHERE key = ?", [key]).fetchone()[0])
        data["events"] = [
            {"id": f.id, "node": f.node, "kind": f.kind, "start": f.start, "end": f.end}
            for f, _ in facts
        ]
        digest_id = db.execute(
            "UPDATE alerts SET data = ? WHERE key = ? RETURNING id",
            [json.dumps(data, ensure_ascii=False), key],
        ).fetchone()[0]
        db.conn.executemany(
            "UPDATE alerts SET digest = ? WHERE id = ?", [(digest_id, it[0]) for it in items]
        )
        made += 1
    return made


# What ``alerts list`` shows of each message: when it was made and, once a server took it, when
# it was sent (``sent`` empty while it waits), its state, and for one that fails its attempts and
# the last error.
LIST_COLUMNS = (
    "id",
    "created",
    "route",
    "phase",
    "node",
    "kind",
    "state",
    "sent",
    "attempts",
    "error",
)
LIST_TIMES = ("created", "sent")  # Unix seconds: the CLI writes them in the town's time zone


def alert_rows(db: sqlite_utils.Database, unsent_only: bool = False) -> list[dict]:
    """The messages of ``alerts`` (items of a digest and covered events left out), newest
    last, with their ``state``: ``envoyé`` (``sent`` says when), ``en attente`` or
    ``en échec``."""
    where = f"phase IN ({', '.join('?' * len(SENDABLE))})"
    if unsent_only:
        where += " AND sent IS NULL"
    rows = list(db.query(f"SELECT * FROM alerts WHERE {where} ORDER BY id", SENDABLE))
    for r in rows:
        r["state"] = "envoyé" if r["sent"] else ("en échec" if r["attempts"] else "en attente")
    return rows
