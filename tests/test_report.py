"""Energy reports (issue 15, items 4 and 6): a month against the same month of a reference
year, the yearly OPERAT CSV, and outputs a French town opens as they are (Excel's CSV, local
times that say their zone, charts that load nothing from the internet)."""

import csv
import datetime as dt
import io
import re
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from detect_helpers import make_db

from gateway import render, reports
from gateway.cli.main import cli
from gateway.pipeline.detect.engine import save_event
from gateway.pipeline.detect.events import Event

PARIS = ZoneInfo("Europe/Paris")
TOWN = reports.Town("Europe/Paris")


def hours(year, month):
    """The UTC hour starts of a local month in Paris."""
    p = reports.Period.month(f"{year}-{month:02d}", "Europe/Paris")
    return range(int(p.start), int(p.end), 3600)


def add_summaries(db, node, channel, hour_starts, wh, every=1):
    db.conn.executemany(
        "INSERT INTO summaries (node, channel, hour, count, sum, mean, wh) VALUES (?,?,?,?,?,?,?)",
        [
            (node, channel, h, 6, 6 * wh, wh, wh)
            for i, h in enumerate(hour_starts)
            if i % every == 0
        ],
    )
    db.conn.commit()


@pytest.fixture
def town_db(tmp_path):
    """November 2026 and November 2025 of a town hall (a counter), a school measured one hour
    in two, and three lamps (power only) in two streets."""
    db = make_db(tmp_path / "g.db")
    add_summaries(db, "mairie-e1", "e", hours(2026, 11), 1000.0)  # 720 h x 1 kWh
    add_summaries(db, "mairie-e1", "p", hours(2026, 11), 999.0)  # ignored: it has a counter
    add_summaries(db, "mairie-e1", "e", hours(2025, 11), 1250.0)  # 900 kWh then
    add_summaries(db, "ecole-e1", "e", hours(2026, 11), 2000.0, every=2)  # half the hours
    for lamp in ("lamp-001", "lamp-002", "lamp-101"):
        add_summaries(db, lamp, "p", hours(2026, 11), 70.0)
    start = dt.datetime(2026, 11, 20, 8, 0, tzinfo=PARIS).timestamp()
    save_event(
        db, Event("lamp-001", "p", "lit_by_day", start, None, 1, "allumée", None, 1, 0.7, 0.14)
    )
    save_event(
        db,
        Event("ecole-e1", "e", "off_schedule", start, start + 3600, 1, "nuit", None, 1, 3.0, 0.45),
    )
    return db


def test_a_month_against_the_reference_year(town_db):
    groups = reports.waste.group_function({"Rue de la Mairie": ["lamp-00*"]})
    town = reports.Town("Europe/Paris", lambda n: n.startswith("lamp"), groups)
    rep = reports.build(town_db, reports.Period.month("2026-11", "Europe/Paris"), town)
    by = {a.asset: a for a in rep.assets}
    assert rep.reference.name == "2025-11"
    # The town hall: 720 kWh against 900 kWh, 20 % less, every hour measured.
    assert by["mairie"].kwh == 720.0 and by["mairie"].reference_kwh == 900.0
    assert by["mairie"].change == pytest.approx(-0.2) and by["mairie"].measured == 1.0
    # The school: half its hours, so its 720 kWh are a floor; no reference.
    assert by["ecole"].kwh == 720.0 and by["ecole"].measured == 0.5
    assert by["ecole"].change is None
    # Lamps by lighting group, else by prefix: 720 h x 70 W = 50.4 kWh a lamp.
    assert (
        by["Rue de la Mairie"].kwh == pytest.approx(100.8)
        and by["Rue de la Mairie"].kind == "éclairage"
    )
    assert by["lamp"].kwh == pytest.approx(50.4) and by["lamp"].nodes == ["lamp-101"]
    assert [r["kwh"] for r in rep.waste_by_kind] == [3.0, 0.7, 3.7]
    assert [e["node"] for e in rep.open_events] == ["lamp-001"]


def test_the_report_command_writes_html_and_excel_csv(town_db, tmp_path):
    out = tmp_path / "rapports"
    conf = tmp_path / "gateway.toml"
    conf.write_text(
        f'[gateway]\ndatabase = "{tmp_path / "g.db"}"\n[site]\ntimezone = "Europe/Paris"\n'
        '[detect]\nlamps = ["lamp-*"]\n'
    )
    result = CliRunner().invoke(
        cli, ["report", "--config", str(conf), "--month", "2026-11", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    page = (out / "rapport-2026-11.html").read_text(encoding="utf-8")
    # Charts inline, two per kind of asset, nothing fetched: pygal's tooltips script came from
    # its web site (nothing showed offline); only its inline config remains.
    assert page.count("<svg") == 4 and "kozea" not in page
    assert not re.search(r"<script[^>]*src=", page)
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)
    assert "comparé à 2025-11" in page and "heures locales (Europe/Paris)" in page
    assert "allumé de jour" in page and "consommation hors horaires" in page
    data = (out / "rapport-2026-11.csv").read_bytes()
    assert data.startswith("\ufeffactif;type;nœuds;énergie (kWh)".encode())
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig")), delimiter=";"))
    assert ["mairie", "bâtiment", "mairie-e1", "720,0", "900,0", "-20,0", "100,0"] in rows
    assert ["ecole", "bâtiment", "ecole-e1", "720,0", "", "", "50,0"] in rows


def test_the_yearly_operat_csv(town_db, tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "report",
            "--db",
            str(tmp_path / "g.db"),
            "--year",
            "2026",
            "--out",
            str(tmp_path),
            "--no-excel",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.split() == [
        str(tmp_path / "rapport-2026.html"),
        str(tmp_path / "rapport-2026.csv"),
        str(tmp_path / "operat-2026.csv"),
    ]
    rows = list(csv.reader(io.StringIO((tmp_path / "operat-2026.csv").read_text())))
    # Buildings only, their final electricity in kWh over the year and the hours measured:
    # a month measured of 8,760 hours is 8.2 %, a month at half is 4.1 %.
    assert rows == [
        [
            "année",
            "bâtiment",
            "compteurs",
            "type d'énergie",
            "énergie finale (kWh)",
            "heures mesurées (%)",
        ],
        ["2026", "ecole", "ecole-e1", "Électricité", "720", "4.1"],
        ["2026", "mairie", "mairie-e1", "Électricité", "720", "8.2"],
    ]


def test_a_month_is_local():
    nov = reports.Period.month("2026-11", "Europe/Paris")
    assert render.iso(nov.start) == "2026-10-31T23:00:00Z" and nov.hours == 720
    # March 2026 loses an hour to summer time.
    assert reports.Period.month("2026-03", "Europe/Paris").hours == 743
    with pytest.raises(reports.ReportError, match="YYYY-MM"):
        reports.Period.month("11/2026", "Europe/Paris")


def test_excel_csv_bytes():
    # 25 November 2026 13:10 UTC is 14:10 in Paris.
    t = dt.datetime(2026, 11, 25, 13, 10, tzinfo=dt.UTC).timestamp()
    rows = [{"node": "lamp-001", "start": t, "kwh": 1.25, "reason": "allumée; de jour"}]
    text = render.render(
        rows, ("node", "start", "kwh", "reason"), "csv", tz="Europe/Paris", excel=True
    )
    assert text.encode("utf-8") == (
        b"\xef\xbb\xbfnode;start (Europe/Paris);kwh;reason\r\n"
        b'lamp-001;25/11/2026 14:10;1,25;"allum\xc3\xa9e; de jour"\r\n'
    )


def test_times_say_their_zone():
    t = dt.datetime(2026, 11, 25, 13, 10, tzinfo=dt.UTC).timestamp()
    table = render.render([{"start": t}], ("start",), tz="Europe/Paris")
    assert table.splitlines() == ["start (Europe/Paris)", "2026-11-25 14:10:00+01:00"]
    assert render.render([{"start": t}], ("start",), "json", tz="Europe/Paris").count(
        "2026-11-25T14:10:00+01:00"
    )
    assert render.render([{"start": t}], ("start",)).splitlines()[1] == "2026-11-25T13:10:00Z"


def test_the_summaries_chart_loads_nothing_from_the_internet(tmp_path):
    from gateway.sync.outbox import Event, Summary
    from gateway.sync.report import write_chart

    h = 1_795_000_000 // 3600 * 3600
    sums = [Summary("lamp-001", "p", h + 3600 * i, 60, 0, 70, 70.0, 70.0) for i in range(3)]
    ev = Event("lamp-001", "p", h, None, "lit_by_day", 0.9, "allumée de jour")
    page = write_chart(tmp_path / "c.html", sums, [ev]).read_text(encoding="utf-8")
    assert "<svg" in page and "kozea" not in page
    assert not re.search(r"<script[^>]*src=", page)
