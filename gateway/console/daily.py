"""Each node's energy per local day, kept up to date as the hourly summaries are written.

The Energy page shows every building and lighting group over the last 31 local days and the
same days a year before: summed from ``summaries`` at each visit, that is 2,000 nodes x 744
hours twice, seconds on a Pi; computed at the start and held in memory, the first visit after
a start waited 2.1 s for it (issue 16). So the database keeps the sums itself:
``console_energy_days`` holds, per local day, node and energy channel (``e``, ``p``), the Wh of
its hours and how many hours had one. Triggers on ``summaries`` add a new hour's Wh, and
take back the old one when the summariser corrects an hour (a late pack) or retention deletes
it, in the writer's own transaction: the sums can never disagree with the summaries. A visit
reads 31 + 31 days of them by primary key (62,000 rows for such a town), never the summaries.

A local day depends on the town's zone (a day is 23 or 25 hours when the clocks change), which
SQLite does not know: ``console_days`` lists the Unix time of every local midnight in that zone
from a year before now (``BEHIND``) to ``AHEAD`` years after, and a trigger finds an hour's day
by a primary key search in it. :func:`ensure_zone` fills it for the configured zone and, when
the zone is new (the first start after the upgrade, or ``[detect] timezone`` changed) or the
list must be extended, recomputes the sums from the summaries, one node per transaction so
that the nodes' acks never wait long behind it.

An hour's energy is the summariser's ``wh``, else a power channel's mean in W (its Wh over the
hour when there was no segment to integrate), as ``gateway.reports.node_energy`` reads it.
"""

import datetime as dt
import time
from collections.abc import Iterable
from zoneinfo import ZoneInfo

import sqlite_utils

# The local days listed: from a year before now (or the year of the oldest energy summary) to
# AHEAD years after, about 4,400 rows (60 KB; the whole century was 36,525 rows, 0.5 MB, half a
# small disk budget). A start lists more when fewer than AHEAD_MIN years are left ahead: an hour
# past the last listed day would count in that day, so a gateway would have to run eight years
# without a restart to meet it.
BEHIND, AHEAD, AHEAD_MIN = 1, 10, 2


def _energy(row: str) -> str:
    """The SQL of a summary row's Wh (``NEW`` or ``OLD``), NULL when it has none."""
    return (
        f"CASE WHEN {row}.channel IN ('e', 'p') AND {row}.count > 0 THEN"
        f" coalesce({row}.wh, CASE WHEN {row}.channel = 'p' THEN {row}.mean END) END"
    )


def _day(row: str) -> str:
    return f"(SELECT start FROM console_days WHERE start <= {row}.hour ORDER BY start DESC LIMIT 1)"


def _add(row: str) -> str:
    return f"""
        INSERT INTO console_energy_days (day, node, channel, wh, hours)
        SELECT {_day(row)}, {row}.node, {row}.channel, {_energy(row)}, 1
        WHERE {_energy(row)} IS NOT NULL AND {_day(row)} IS NOT NULL
        ON CONFLICT (day, node, channel) DO UPDATE SET wh = wh + excluded.wh, hours = hours + 1;
    """


def _take_back(row: str) -> str:
    return f"""
        UPDATE console_energy_days SET wh = wh - {_energy(row)}, hours = hours - 1
        WHERE {_energy(row)} IS NOT NULL AND day = {_day(row)}
          AND node = {row}.node AND channel = {row}.channel;
    """


def create(db: sqlite_utils.Database) -> None:
    """The tables and the triggers: the console's migration m002 runs this, so what it
    creates must never change (a new trigger is a new migration that drops the old one)."""
    db.execute(
        """
        CREATE TABLE console_days (
            start INTEGER PRIMARY KEY,      -- Unix time of a local midnight
            zone TEXT NOT NULL              -- the zone it is midnight in
        )
        """
    )
    db.execute(
        """
        CREATE TABLE console_energy_days (
            day INTEGER NOT NULL,           -- console_days.start
            node TEXT NOT NULL,
            channel TEXT NOT NULL,          -- e or p
            wh REAL NOT NULL,               -- the sum of its hours' Wh
            hours INTEGER NOT NULL,         -- hours with a Wh (0: none left)
            PRIMARY KEY (day, node, channel)
        ) WITHOUT ROWID
        """
    )
    # The zone whose sums are complete ('' until ensure_zone has run once).
    db.execute("CREATE TABLE console_energy_zone (zone TEXT NOT NULL)")
    db.execute("INSERT INTO console_energy_zone VALUES ('')")
    db.execute(
        f"CREATE TRIGGER console_energy_insert AFTER INSERT ON summaries BEGIN {_add('NEW')} END"
    )
    db.execute(
        "CREATE TRIGGER console_energy_update AFTER UPDATE OF count, wh, mean ON summaries"
        f" BEGIN {_take_back('OLD')} {_add('NEW')} END"
    )
    db.execute(
        "CREATE TRIGGER console_energy_delete AFTER DELETE ON summaries"
        f" BEGIN {_take_back('OLD')} END"
    )


ENERGY_ONLY = {  # each trigger's WHEN: the rows it can change, the energy channels'
    "console_energy_insert": "NEW.channel IN ('e', 'p')",
    "console_energy_update": "OLD.channel IN ('e', 'p') OR NEW.channel IN ('e', 'p')",
    "console_energy_delete": "OLD.channel IN ('e', 'p')",
}


def energy_only(db: sqlite_utils.Database) -> None:
    """The triggers of :func:`create`, run for the energy channels' summaries only (migration
    m003). Without a WHEN, every summary row written, temperature, battery or signal alike,
    ran the trigger's program in the writer's transaction, looking its day up twice for a Wh
    that was NULL; with it, SQLite skips the program on the other channels' rows. Migration
    m003 runs this: its SQL must not change either."""
    bodies = {
        "console_energy_insert": ("AFTER INSERT", _add("NEW")),
        "console_energy_update": (
            "AFTER UPDATE OF count, wh, mean",
            _take_back("OLD") + _add("NEW"),
        ),
        "console_energy_delete": ("AFTER DELETE", _take_back("OLD")),
    }
    for name, (event, body) in bodies.items():
        db.execute(f"DROP TRIGGER {name}")
        db.execute(
            f"CREATE TRIGGER {name} {event} ON summaries WHEN {ENERGY_ONLY[name]} BEGIN {body} END"
        )


def local_midnights(zone: str, first_year: int, last_year: int) -> Iterable[int]:
    """The Unix time of every local midnight in ``zone`` from ``first_year`` to ``last_year``."""
    tz = ZoneInfo(zone)
    day, end = dt.date(first_year, 1, 1), dt.date(last_year, 12, 31)
    while day <= end:
        yield int(dt.datetime.combine(day, dt.time(), tz).timestamp())
        day += dt.timedelta(days=1)


def _years(db: sqlite_utils.Database, now: float) -> tuple[int, int]:
    """The years whose days must be listed: from a year before ``now``, or the oldest energy
    summary's (each channel's minimum through the (channel, hour) index), to ``AHEAD_MIN``
    years after."""
    this = dt.datetime.fromtimestamp(now, dt.UTC).year
    first = this - BEHIND
    for channel in ("e", "p"):
        (oldest,) = db.execute(
            "SELECT min(hour) FROM summaries WHERE channel = ?", [channel]
        ).fetchone()
        if oldest is not None:
            first = min(first, dt.datetime.fromtimestamp(oldest, dt.UTC).year - 1)
    return first, this + AHEAD_MIN


def ensure_zone(db: sqlite_utils.Database, zone: str, now: float | None = None) -> bool:
    """Make the sums those of ``zone``'s days, over the years ``now`` needs; True when they
    had to be recomputed (each node in a transaction of its own: its summaries by primary-key
    range)."""
    now = time.time() if now is None else now
    first, last = _years(db, now)
    listed = db.execute("SELECT min(start), max(start) FROM console_days").fetchone()
    if (
        db.execute("SELECT zone FROM console_energy_zone").fetchone()[0] == zone
        and listed[0] is not None
        and listed[0] <= next(local_midnights(zone, first, first))
        and listed[1] >= next(local_midnights(zone, last, last))
    ):
        return False
    days = [(s, zone) for s in local_midnights(zone, first, last - AHEAD_MIN + AHEAD)]
    with db.atomic():  # the days are computed before taking the write lock
        db.execute("DELETE FROM console_days")
        db.conn.executemany("INSERT INTO console_days (start, zone) VALUES (?, ?)", days)
        db.execute("DELETE FROM console_energy_days")
    # Summaries committed before the days were listed are recounted here (the nodes the
    # gateway knows, and any the summariser has a cursor for); later ones the triggers add.
    nodes = [r[0] for r in db.execute("SELECT id FROM nodes UNION SELECT node FROM summary_cursor")]
    for node in nodes:
        with db.atomic():  # replaces what the triggers added meanwhile: it is all recounted
            db.execute(
                f"""
                INSERT INTO console_energy_days (day, node, channel, wh, hours)
                SELECT day, node, channel, sum(wh), count(*) FROM (
                    SELECT {_day("s")} AS day, s.node AS node, s.channel AS channel,
                           {_energy("s")} AS wh
                    FROM summaries s WHERE s.node = ? AND s.channel IN ('e', 'p')
                ) WHERE wh IS NOT NULL AND day IS NOT NULL GROUP BY day, node, channel
                ON CONFLICT (day, node, channel) DO UPDATE
                    SET wh = excluded.wh, hours = excluded.hours
                """,
                [node],
            )
    with db.atomic():
        db.execute("UPDATE console_energy_zone SET zone = ?", [zone])
    return True


def periods_wh(
    db: sqlite_utils.Database, firsts: list[int], last: int
) -> dict[str, list[float | None]]:
    """Each node's Wh over the local days from each of ``firsts`` to ``last`` (days'
    ``console_days.start``, both included; ``firsts[-1]`` the earliest), None for a period
    without a summary: its counter's (``e``) when it has one those days, else its power's
    (``p``). One primary-key range, summed by SQLite."""
    sums = ", ".join("sum(CASE WHEN day >= ? THEN wh END)" for _ in firsts)
    rows = db.execute(
        f"SELECT node, channel, {sums} FROM console_energy_days"
        " WHERE day >= ? AND day <= ? AND hours > 0 GROUP BY node, channel",
        [*firsts, min(firsts), last],
    ).fetchall()
    counters = {r[0] for r in rows if r[1] == "e"}
    return {r[0]: list(r[2:]) for r in rows if (r[1] == "e") == (r[0] in counters)}
