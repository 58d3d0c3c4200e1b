"""The Node, Energy and Gateway pages (docs/console.md) over real HTTP on a real gateway
(test_console.ConsoleGateway), with hourly summaries and a waste event written into its
database as the summariser and the detector would."""

import asyncio
import re
import threading
import time

import pytest
from test_console import ConsoleGateway, login

from gateway.console.views import local_midnight


@pytest.fixture
def console(tmp_path):
    c = ConsoleGateway(tmp_path)
    db = c.db()
    now = time.time()
    hour = int(now // 3600 * 3600)
    # school-01: a meter with an energy counter, 1 kWh an hour for the last 40 days and
    # 0.5 kWh an hour on the same days a year before (so it uses twice as much now).
    rows = []
    for k in range(40 * 24):
        h = hour - k * 3600
        rows.append(
            dict(
                node="school-01",
                channel="e",
                hour=h,
                count=60,
                min=0,
                max=1,
                sum=0,
                mean=1000.0,
                wh=1000.0,
            )
        )
        rows.append(
            dict(
                node="school-01",
                channel="e",
                hour=h - 365 * 86400,
                count=60,
                min=0,
                max=1,
                sum=0,
                mean=500.0,
                wh=500.0,
            )
        )
    db["summaries"].insert_all(rows)
    db["summary_cursor"].insert(dict(node="school-01", channel="e", time=now, value=0.0))
    db["anomalies"].insert(
        dict(
            node="school-01",
            channel="e",
            kind="off_schedule",
            start=now - 3 * 86400,
            end=now - 3 * 86400 + 7200,
            score=0.8,
            reason="chauffage allumé un dimanche",
            version=1,
            waste_kwh=12.5,
            waste_eur=2.52,
        ),
        alter=True,
    )
    db.conn.commit()
    db.close()
    yield c
    c.stop()


def test_a_node_page_charts_its_channels_and_lists_its_events_and_configuration(console):
    c = login(console, "lecteur")
    page = c.get("/nodes/lamp-001")
    assert page.status_code == 200
    assert "Nœud lamp-001" in page.text and "dernières 24 heures" in page.text
    chart = re.search(r'<figure class="channel" id="chart-p">.*?</figure>', page.text, re.S)[0]
    assert "<svg" in chart and "<polyline" in chart and "2 points" in chart  # 51,5 then 52,25 W
    assert "allumé en plein jour" in page.text  # its open event's reason
    assert re.search(r'<table id="node-config">.*interval', page.text, re.S)
    assert "Pas d'horaire d'éclairage" in page.text  # no [[detect.lighting]] in this town
    assert c.get("/nodes/nobody-01").status_code == 404


def test_a_node_page_over_a_month_reads_the_hourly_summaries_and_adds_up_its_waste(console):
    c = login(console, "lecteur")
    page = c.get("/nodes/school-01?span=month")
    assert "Moyennes horaires" in page.text
    assert "744 points" in page.text  # 31 days of hourly summaries, not the raw readings
    waste = re.search(r'<p id="node-waste">.*?</p>', page.text, re.S)[0]
    assert "12,5 kWh" in waste and "2,52 €" in waste


def energy_recomputed(console):
    """The Energy page's figures are computed when the gateway starts, then at a visit once
    a minute old: this fixture seeds its summaries after the start, so compute them again."""
    board = console.gw.console.energy
    asyncio.run_coroutine_threadsafe(board.refresh(), console._loop).result(60)


def test_the_energy_page_compares_each_building_with_a_year_before(console):
    energy_recomputed(console)
    c = login(console, "lecteur")
    page = c.get("/energy")
    assert page.status_code == 200 and "Énergie" in page.text
    assert "recalculés chaque minute" in page.text  # and when they were, local time
    row = re.search(r'<tr id="asset-school">.*?</tr>', page.text, re.S)[0]
    now = console.clock()
    today_h = (now - local_midnight(now, console.gw.console.tz)) // 3600 + 1  # hours so far
    assert f"{int(today_h)},0" in row.split("</td>")[3]  # today: 1 kWh per hour so far
    assert "+100" in row  # twice the reference
    assert "chauffage allumé un dimanche" in page.text and "2,52" in page.text
    assert 'href="/energy/report?month=' in page.text
    api = c.get("/api/energy").json()
    school = next(a for a in api if a["asset"] == "school")
    assert school["kwh"]["week"] == pytest.approx(2 * school["reference_kwh"]["week"])


def test_the_months_report_downloads_as_html_and_csv(console):
    c = login(console, "lecteur")
    month = time.strftime("%Y-%m")
    html = c.get(f"/energy/report?month={month}")
    assert html.status_code == 200 and "attachment" in html.headers["content-disposition"]
    assert "school" in html.text
    csv = c.get(f"/energy/report?month={month}&format=csv")
    assert csv.headers["content-type"].startswith("text/csv") and "school" in csv.text
    assert c.get("/energy/report?month=novembre").status_code == 400


def test_the_gateway_page_shows_storage_clock_uptime_and_version(console):
    c = login(console, "lecteur")
    page = c.get("/gateway")
    assert page.status_code == 200 and "Passerelle" in page.text
    assert re.search(r'<td id="db-size">[\d ,\u202f]+ (ko|Mo)', page.text)
    assert re.search(r'<td id="free-disk">[\d ,\u202f]+ (Mo|Go|To)', page.text)
    assert '<td id="version">0.' in page.text and "Horloge" in page.text
    assert "Synchronisation désactivée" in page.text  # no [sync] in this town's config
    assert c.get("/api/gateway").json()["storage"]["database_bytes"] > 0


def test_a_report_being_built_does_not_hold_up_the_other_pages(console, monkeypatch):
    """A month's report for a whole town takes seconds (gateway.reports reads every hour of
    it): it is built in a thread of its own, so the fleet answers meanwhile. The report here
    waits until the fleet has answered; built in the pages' thread, it would wait in vain."""
    from gateway import reports

    fleet_answered = threading.Event()
    real_build = reports.build

    def slow_build(*args, **kwargs):
        assert fleet_answered.wait(20), "the fleet page did not answer while a report was built"
        return real_build(*args, **kwargs)

    monkeypatch.setattr(reports, "build", slow_build)
    c = login(console, "lecteur")
    downloads = login(console, "lecteur")
    month = time.strftime("%Y-%m")
    result = {}
    download = threading.Thread(
        target=lambda: result.update(r=downloads.get(f"/energy/report?month={month}", timeout=60))
    )
    download.start()
    try:
        assert c.get("/", timeout=10).status_code == 200
    finally:
        fleet_answered.set()
        download.join(60)
    assert result["r"].status_code == 200 and "school" in result["r"].text
