"""The month's and year's report from sums SQLite makes (issue 16): a report of a whole town
read every hour of its period into Python (10 s for a month of 2,000 nodes). The figures now
come from the per-day sums the database keeps (gateway/console/daily.py) when they are in
the report's zone, else from the energy channels' hours summed by SQLite; both give what the
hours give, over a month whose last Sunday is 25 hours long."""

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from detect_helpers import make_db

from gateway import reports
from gateway.console import daily
from gateway.ingest.registry import add_node

PARIS = ZoneInfo("Europe/Paris")


def hours(period):
    return range(int(period.start), int(period.end), 3600)


@pytest.fixture
def town(tmp_path):
    """October 2026 (the clocks go back on the 25th) and October 2025: a town hall with a
    counter (and a power channel the counter wins over), a school measured one hour in three
    with a corrected hour, a lamp whose power has no ``wh`` (its mean is its Wh), a lamp with
    an hour without a reading, and a thermometer (no energy)."""
    db = make_db(tmp_path / "g.db")
    for node in ("mairie-e1", "ecole-e1", "lamp-001", "lamp-002", "salle-t"):
        add_node(db, node)
    october = reports.Period.month("2026-10", "Europe/Paris")
    before = october.in_year(2025)
    rows = []
    for i, h in enumerate(hours(october)):
        local = dt.datetime.fromtimestamp(h, PARIS)
        rows += [
            ("mairie-e1", "e", h, 6, 900.0 + local.hour, 900.0),
            ("mairie-e1", "p", h, 6, 1.0, 1.0),
            ("lamp-001", "p", h, 6, None, 70.0 if local.hour < 7 else 0.0),
            ("lamp-002", "p", h, 0 if i % 5 == 0 else 6, None, 65.0),
            ("salle-t", "t", h, 6, None, 19.5),
        ]
        if i % 3 == 0:
            rows.append(("ecole-e1", "e", h, 6, 2000.0 + i, 2000.0))
    rows += [("mairie-e1", "e", h, 6, 1100.0, 1100.0) for h in hours(before)]
    with db.conn:
        db.conn.executemany(
            "INSERT INTO summaries (node, channel, hour, count, wh, mean, sum)"
            " VALUES (?, ?, ?, ?, ?, ?, 0)",
            rows,
        )
        db.execute(  # a late pack corrected one of the school's hours
            "UPDATE summaries SET wh = 2500.5 WHERE node = 'ecole-e1' AND hour = ?",
            [int(october.start) + 9 * 3600],
        )
    return db


def figures(report):
    return (
        [(a.asset, a.kind, a.nodes, a.kwh, a.reference_kwh, round(a.measured, 9))
         for a in report.assets],
        {kind: {d: round(v, 6) for d, v in s.items()} for kind, s in report.daily.items()},
        report.reference.name if report.reference else None,
    )  # fmt: skip


def read_while(db, build):
    statements = []
    db.conn.set_trace_callback(statements.append)
    try:
        return build(), statements
    finally:
        db.conn.set_trace_callback(None)


@pytest.mark.parametrize("name", ["2026-10", "2026"])
def test_the_days_kept_give_the_figures_of_the_hours(town, name):
    period = (
        reports.Period.month(name, "Europe/Paris")
        if "-" in name
        else reports.Period.year(int(name), "Europe/Paris")
    )
    t = reports.Town("Europe/Paris")
    from_hours, hourly = read_while(town, lambda: reports.build(town, period, t))
    assert not any("console_energy_days" in s for s in hourly)  # no sums kept yet
    daily.ensure_zone(town, "Europe/Paris")
    from_days, by_day = read_while(town, lambda: reports.build(town, period, t))
    assert not any("FROM summaries" in s for s in by_day)  # only the day sums
    assert figures(from_days) == figures(from_hours)
    by = {a.asset: a for a in from_days.assets}
    # what the hours give, by hand: 744 hours in October 2026 (one of 25 h), 745 in 2025's
    assert period.hours == (745 if "-" in name else 8760)
    month_hours = len(hours(reports.Period.month("2026-10", "Europe/Paris")))
    assert by["mairie"].kwh == pytest.approx(
        sum(
            900 + dt.datetime.fromtimestamp(h, PARIS).hour
            for h in hours(reports.Period.month("2026-10", "Europe/Paris"))
        ) / 1000
    )  # fmt: skip
    assert by["lamp"].nodes == ["lamp-001", "lamp-002"] and "salle" not in by
    assert by["ecole"].measured == pytest.approx(len(range(0, month_hours, 3)) / period.hours)
    if "-" in name:
        assert by["mairie"].reference_kwh == pytest.approx(745 * 1.1)
        assert sorted(from_days.daily["bâtiment"]) == [f"{d:02d}" for d in range(1, 32)]
        # the 25th is 25 hours long: lamp-001 lit 8 of them (2 o'clock twice), lamp-002
        # measured about 4 hours in 5
        assert from_days.daily["éclairage"]["25"] == pytest.approx(
            (8 * 70 + 25 * 65 * 0.8) / 1000, abs=0.07
        )
    else:
        assert list(from_days.daily["bâtiment"]) == ["10"]  # one month measured that year


def test_another_zone_than_the_sums_reads_the_hours_through_their_index(town):
    """The sums are the local days of the zone the console keeps them in; a report in another
    zone (a CLI given another config) sums the hours, by the index on (channel, hour)."""
    daily.ensure_zone(town, "Europe/Paris")
    period = reports.Period.month("2026-10", "UTC")
    report, statements = read_while(town, lambda: reports.build(town, period, reports.Town("UTC")))
    reads = [s for s in statements if "FROM summaries" in s]
    assert len(reads) == 3  # the month's totals and days, the reference's totals
    for sql in reads:
        plan = " ".join(r[3] for r in town.execute("EXPLAIN QUERY PLAN " + sql))
        assert "USING INDEX console_summaries_energy" in plan, plan
    assert {a.asset for a in report.assets} == {"mairie", "ecole", "lamp"}
