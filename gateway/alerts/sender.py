"""The alert sender: a thread with its own connection that delivers the rows of ``alerts``.

It sends, oldest first, each message whose ``next_try`` has come, and marks it ``sent`` only
after the server accepted it (``gateway.alerts.transports.deliver``). A failure is written
down (``attempts``, ``error``) and tried again after a backoff that doubles from
``retry_base_s`` up to ``retry_cap_s``, with jitter; a route that fails keeps its later
messages for the next turn (a closing message never overtakes its opening). The uplink of a
small town is often down: what waits is in the database and goes when the link is back, also
after a restart. ``notify()`` (the alert stage's listener) wakes it at once.

A stop is prompt: the sender ends between two messages, and waits ``STOP_GRACE`` (gateway.daemon,
5 s) at most for the one in flight, whose server may hold it for ``timeout`` (up to 600 s):
systemd gives the whole stop 30 s. A message left in flight is not marked, whatever its
server answers later, and goes again at the next start with the same key (docs/alerts.md).
"""

import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from gateway.alerts.config import AlertsConfig
from gateway.alerts.outbox import SENDABLE
from gateway.alerts.transports import Alert, DeliveryError, deliver
from gateway.daemon import STOP_GRACE
from gateway.logs import event

log = logging.getLogger("reverbere.alerts")

BATCH = 50  # messages read per turn


def pending(db: sqlite_utils.Database, now: float, limit: int = BATCH) -> list[Alert]:
    """The messages to send by ``now`` (wall clock), oldest first."""
    rows = db.execute(
        "SELECT id, key, route, phase, urgent, subject, body, data FROM alerts"
        f" WHERE sent IS NULL AND phase IN ({', '.join('?' * len(SENDABLE))})"
        " AND next_try <= ? ORDER BY id LIMIT ?",
        [*SENDABLE, now, limit],
    ).fetchall()
    return [
        Alert(i, key, route, phase, bool(u), subj or "", body or "", json.loads(data or "{}"))
        for i, key, route, phase, u, subj, body, data in rows
    ]


def next_due(db: sqlite_utils.Database) -> float | None:
    row = db.execute(
        "SELECT min(next_try) FROM alerts WHERE sent IS NULL"
        f" AND phase IN ({', '.join('?' * len(SENDABLE))})",
        SENDABLE,
    ).fetchone()
    return row[0]


class Halt:
    """How a stop reaches the sender's turn: once ``requested`` the turn ends before its next
    message; once ``abandon``-ed (the stop gave up waiting for the message in flight) it
    writes nothing more, so that what a left-behind thread learns later (the server's late
    250, or its error) cannot mark a message the next start already sends again, nor touch a
    database another gateway may hold by then."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._lock = threading.Lock()
        self._abandoned = False

    def abandon(self) -> None:
        with self._lock:  # waits for a write under way: it is kept
            self._abandoned = True

    @contextmanager
    def recording(self) -> Iterator[bool]:
        """Hold off ``abandon`` while the outcome of a delivery is written; yield whether it
        may be."""
        with self._lock:
            yield not self._abandoned


def send_due(
    db: sqlite_utils.Database,
    config: AlertsConfig,
    now: float | None = None,
    halt: Halt | None = None,
) -> int:
    """One turn: deliver what is due, mark it; return how many were sent. With ``halt``
    (``AlertSender``), a stop ends the turn between two messages (a backlog after an outage
    is not all sent before a stop), and an abandoned delivery writes nothing."""
    now = time.time() if now is None else now
    halt = halt or Halt()
    failed: dict[str, float] = {}  # route -> when its first failed message is tried again
    sent = 0
    for alert in pending(db, now):
        if halt.requested.is_set():
            break
        route = config.routes_by_name.get(alert.route)
        if route is None or alert.route in failed:
            # After its route's failure (in order), or a route no longer configured (kept:
            # 'reverbere alerts list' shows it): not before the route's next try.
            later = failed.get(alert.route, now + config.retry_cap)
            with db.atomic():
                db.execute("UPDATE alerts SET next_try = ? WHERE id = ?", [later, alert.id])
            continue
        try:
            deliver(alert, route, config)
        except DeliveryError as e:
            with halt.recording() as keep:
                if not keep:
                    break
                failed[alert.route] = _failed(db, config, alert, str(e), now)
            continue
        with halt.recording() as keep:
            if not keep:  # sent again at the next start, with its key (the mail's Message-ID)
                break
            with db.atomic():
                db.execute(
                    "UPDATE alerts SET sent = ?, error = NULL WHERE id = ?",
                    [time.time(), alert.id],
                )
        sent += 1
        log.info("alert sent", extra={"fields": {"key": alert.key, "route": alert.route}})
    return sent


def _failed(
    db: sqlite_utils.Database, config: AlertsConfig, alert: Alert, error: str, now: float
) -> float:
    """Write the failure down; return when the message is tried again."""
    attempts = db.execute("SELECT attempts FROM alerts WHERE id = ?", [alert.id]).fetchone()[0]
    wait = min(config.retry_cap, config.retry_base * 2**attempts) * random.uniform(0.5, 1.0)
    with db.atomic():
        db.execute(
            "UPDATE alerts SET attempts = attempts + 1, next_try = ?, error = ? WHERE id = ?",
            [now + wait, error, alert.id],
        )
    log.warning(
        "alert not delivered, will retry",
        extra={"fields": {"key": alert.key, "error": error, "retry_in_s": round(wait, 1)}},
    )
    return now + wait


class AlertSender:
    """The sender in its own thread: ``start()``, ``notify()`` after new alerts, ``stop()``."""

    def __init__(self, db_path: str | Path, config: AlertsConfig, idle_wait: float = 60.0):
        self.db_path = db_path
        self.config = config
        self.idle_wait = idle_wait
        self._wake = threading.Event()
        self._halt = Halt()
        self._thread = threading.Thread(target=self._run, name="reverbere-alerts", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> "AlertSender":
        self._thread.start()
        return self

    def notify(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = STOP_GRACE) -> bool:
        """Stop the sender: it ends after the message in flight, if any; wait ``timeout``
        seconds at most for that, and return whether the thread ended. A message that
        outlasts it (a mail server or webhook that stopped answering holds it for its
        ``timeout``, 30 s by default) is abandoned to the daemon thread, which ends with the
        process and writes nothing: the message is still owed in ``alerts`` and goes again at
        the next start, with the same key. Calling ``stop`` again waits for the thread."""
        self._halt.requested.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._halt.abandon()
            event(
                log,
                logging.WARNING,
                "alert still in flight at stop: sent again at the next start, with its key",
                waited_s=timeout,
            )
            return False
        return True

    def _run(self) -> None:
        from gateway.store.db import open_db

        db = open_db(self.db_path)
        try:
            while not self._halt.requested.is_set():
                self._wake.clear()
                send_due(db, self.config, halt=self._halt)
                due = next_due(db)
                wait = self.idle_wait if due is None else min(self.idle_wait, due - time.time())
                self._wake.wait(max(wait, 0.05))
        except BaseException as exc:  # reported (service restarts it), not swallowed
            self.error = exc
            log.exception("alert sender died", extra={"fields": {}})
            raise
        finally:
            db.close()


def send_test(config: AlertsConfig, names: tuple[str, ...] = ()) -> dict[str, str | None]:
    """Send a test message by each route (those ``names`` only, when given) now, outside
    the database; return each route's error, None where the server accepted it."""
    from gateway.alerts.messages import PRODUCT, local_time, zone_note

    now = time.time()
    results: dict[str, str | None] = {}
    for route in config.routes:
        if names and route.name not in names:
            continue
        key = f"{route.name}/test/{int(now)}"
        subject = f"[{PRODUCT}] Message d'essai ({route.name})"
        body = (
            "Bonjour,\n\nCeci est un message d'essai de la passerelle "
            f"{PRODUCT}, envoyé le {local_time(now, config.timezone)} : les alertes de la "
            f"route « {route.name} » vous parviendront ainsi.\n\nRien à faire.\n\n"
            f"{zone_note(config.timezone)}\n"
        )
        data = {"id": key, "phase": "test", "route": route.name, "urgent": False}
        data |= {"subject": subject, "text": body}
        try:
            deliver(Alert(0, key, route.name, "test", False, subject, body, data), route, config)
            results[route.name] = None
        except DeliveryError as e:
            results[route.name] = str(e)
    return results


def declare_metrics(registry, db: sqlite_utils.Database) -> None:
    """``/metrics`` gauges read from ``alerts`` at each scrape (the index on ``sent`` keeps
    it cheap): messages waiting, and those of them whose delivery failed at least once (an
    SMTP server or webhook down: worth an alert of its own in Prometheus)."""
    unsent = f"sent IS NULL AND phase IN ({', '.join(repr(p) for p in SENDABLE)})"

    def count(where: str) -> int:
        return db.execute(f"SELECT count(*) FROM alerts WHERE {where}").fetchone()[0]

    registry.gauge(
        "reverbere_alerts_waiting", "Alert messages not yet accepted by their server."
    ).set_function(lambda: count(unsent))
    registry.gauge(
        "reverbere_alerts_failing", "Alert messages waiting after a failed delivery."
    ).set_function(lambda: count(unsent + " AND attempts > 0"))
