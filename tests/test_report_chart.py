"""The summaries chart (``reverbere summaries --chart``, issue 15 item 6): one panel per kind of
asset, each on its own scale with its unit, so 60 W lamps are not flattened by 20 kWh
buildings; the nodes named in the legend, the anomalies marked and labelled in French; hours
in the town's zone, which the axis names; nothing loaded from the internet."""

import datetime as dt
import re
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest
from click.testing import CliRunner

from gateway.cli.main import cli
from gateway.sync.outbox import Event, Summary
from gateway.sync.report import ANOMALY_COLOUR, chart_panels, write_chart

SVG = "{http://www.w3.org/2000/svg}"
# Two days across the change to summer time in Paris (29 March 2026, 01:00 UTC).
H0 = int(dt.datetime(2026, 3, 28, 12, tzinfo=dt.UTC).timestamp())
HOURS = [H0 + 3600 * i for i in range(48)]


def a_town() -> tuple[list[Summary], list[Event]]:
    """Three lamps (60-64 W, lit at night), a town hall's meter (8-19.5 kWh an hour), a
    school's power meter (2 kW) and a classroom thermometer; an event on each kind."""
    sums = []
    for i, h in enumerate(HOURS):
        lit = not 6 <= (i + 12) % 24 < 19
        for n in range(3):
            w = 60.0 + 2 * n if lit or (n, i) == (1, 24) else 0.0  # lamp-001 lit by day
            sums.append(Summary(f"lamp-{n:03d}", "p", h, 60, w, w, w, w))
        sums.append(Summary("mairie-e1", "e", h, 60, None, None, None, 8000.0 + 500 * (i % 24)))
        sums.append(Summary("ecole-e1", "p", h, 60, 1500, 2500, 2000.0, 2000.0))
        sums.append(Summary("ecole-t1", "t", h, 60, 19, 21, 19.5 + (i % 4) / 2, None))
    events = [
        Event("lamp-001", "p", HOURS[24] + 600, None, "lit_by_day", 0.9, "allumée de jour"),
        Event("mairie-e1", "e", HOURS[14], HOURS[17], "off_schedule", 0.8, "hors horaires"),
        Event("ecole-t1", "t", HOURS[30], None, "stuck", 0.7, "bloqué sur 20,5 °C"),
        Event("mairie-e1", "e", HOURS[14] + 900, None, "spike", 0.8, "pic"),  # the same hour
    ]
    return sums, events


def panels_of(path) -> list[ET.Element]:
    """The pygal charts inside the written SVG, one per panel, top to bottom."""
    root = ET.parse(path).getroot()
    return [c[0] for c in root if c.tag == SVG + "svg"]


def texts(panel: ET.Element, cls: str) -> list[str]:
    return [
        t.text or ""
        for g in panel.iter()
        if cls in g.get("class", "").split()
        for t in g.iter(SVG + "text")
    ]


def axis_labels(panel: ET.Element, axis: str) -> list[str]:
    for g in panel.iter(SVG + "g"):
        if g.get("class", "").split()[:2] == ["axis", axis]:
            return [t.text for t in g.iter(SVG + "text") if t.text]
    return []


@pytest.fixture
def chart(tmp_path):
    sums, events = a_town()
    return write_chart(tmp_path / "semaine.svg", sums, events, tz="Europe/Paris")


def test_one_panel_per_kind_of_asset_each_with_its_unit(chart):
    lamps, buildings, temperatures = panels_of(chart)
    titles = [p.find(SVG + "title").text for p in (lamps, buildings, temperatures)]
    assert titles == [
        "Éclairage public : puissance moyenne par heure",
        "Bâtiments : énergie consommée par heure",
        "Températures : moyenne par heure",
    ]
    for panel, unit, top in ((lamps, "W", 70), (buildings, "kWh", 20), (temperatures, "°C", 22)):
        ys = axis_labels(panel, "y")
        assert ys and all(y.endswith(" " + unit) for y in ys), ys  # one unit on each y axis
        values = [float(y.rsplit(" ", 1)[0].replace(",", ".")) for y in ys]
        assert max(values) <= top  # its own scale: the lamps' axis ends near 64 W, not 20 kW
        assert f"({unit})" in " ".join(texts(panel, "titles"))
    assert min(float(y.split()[0].replace(",", ".")) for y in axis_labels(temperatures, "y")) > 0


def test_nodes_in_the_legend_and_the_anomalies_labelled_in_french(chart):
    lamps, buildings, temperatures = panels_of(chart)
    assert texts(lamps, "legends") == ["lamp-000", "lamp-001", "lamp-002", "Anomalies"]
    assert texts(buildings, "legends") == ["ecole-e1", "mairie-e1", "Anomalies"]
    # each event on its own node's panel, with its kind in words
    assert texts(lamps, "text-overlay") == ["lamp-001 : allumé de jour"]
    # two events of a node in one hour: one marker naming both (labels drawn one over another
    # could not be read)
    assert texts(buildings, "text-overlay") == [
        "mairie-e1 : consommation hors horaires, pic de consommation"
    ]
    assert texts(temperatures, "text-overlay") == ["ecole-t1 : capteur bloqué"]
    # hovering a marker shows the browser's own tooltip (an SVG <title>), with no script
    dots = [g for g in lamps.iter(SVG + "g") if g.get("class") == "dots"]
    tips = [t.text for g in dots for t in g.iter(SVG + "title")]
    assert tips == ["lamp-001 : allumé de jour, 29/03 14h: 62 W"]


def test_distinct_colours_and_the_anomalies_in_their_own(chart):
    for panel in panels_of(chart):
        css = panel.find(f"{SVG}defs/{SVG}style").text
        colours = dict(re.findall(r"\.color-(\d+)[^{]*\{[^}]*stroke:(#\w+)", css))
        legend = texts(panel, "legends")
        nodes = [colours[str(i)] for i in range(len(legend) - 1)]
        assert colours[str(len(legend) - 1)] == ANOMALY_COLOUR
        assert len(set(nodes)) == len(nodes) and ANOMALY_COLOUR not in nodes


def test_hours_are_the_towns_and_say_so(chart):
    for panel in panels_of(chart):
        assert "Heure locale (Europe/Paris)" in texts(panel, "titles")
        xs = axis_labels(panel, "x")
        # Round local hours on both sides of the clock change (pygal alone would pick round
        # UTC hours: 01h, 07h in winter, 02h, 08h in summer).
        assert {x.split()[1] for x in xs} <= {"00h", "06h", "12h", "18h"}, xs
        assert "29/03 00h" in xs and "29/03 06h" in xs and "30/03 06h" in xs


def test_nothing_is_loaded_from_the_internet(tmp_path):
    sums, events = a_town()
    for name in ("c.svg", "c.html"):
        text = write_chart(tmp_path / name, sums, events, tz="Europe/Paris").read_text()
        # The only URL is the SVG namespace, a name, never fetched.
        assert set(re.findall(r"https?://[^\"'\s<>]*", text)) == {"http://www.w3.org/2000/svg"}
        assert "<script" not in text and "@import" not in text and "xml-stylesheet" not in text


def test_the_page_lists_the_anomalies_in_french_and_local_time(tmp_path):
    sums, events = a_town()
    page = write_chart(tmp_path / "c.html", sums, events, tz="Europe/Paris").read_text()
    assert "<html lang='fr'>" in page and page.count("<svg") >= 3
    assert "<th>début (Europe/Paris)</th>" in page
    # 2026-03-29 12:10 UTC is 14:10 in summer time; the open event says so
    assert "<td>2026-03-29 14:10:00+02:00</td><td>en cours</td><td>lamp-001</td>" in page
    assert "<td>allumé de jour</td><td>allumée de jour</td>" in page


def test_the_config_says_which_nodes_are_lamps():
    sums, _ = a_town()
    # a town whose lamps are not called lamp-*: the config's [detect] lamps patterns decide
    renamed = [replace(s, node=s.node.replace("lamp", "rue-haute")) for s in sums]
    panels = chart_panels(renamed, [], is_lamp=lambda node: node.startswith("rue-haute"))
    assert [p.unit for p in panels] == ["W", "kWh", "°C"]
    assert sorted(panels[0].series) == ["rue-haute-000", "rue-haute-001", "rue-haute-002"]


def test_the_summaries_command_draws_in_the_towns_zone(tmp_path):
    CliRunner().invoke(cli, ["gateway", "init", str(tmp_path)], catch_exceptions=False)
    from gateway.store.db import open_db

    db = open_db(tmp_path / "reverbere.db")
    db["summaries"].insert_all(
        {
            "node": s.node,
            "channel": s.channel,
            "hour": s.hour,
            "count": s.count,
            "min": s.min,
            "max": s.max,
            "sum": 0.0,
            "mean": s.mean,
            "wh": s.wh,
        }
        for s in a_town()[0]
    )
    db.conn.commit()
    out = tmp_path / "c.svg"
    args = ["summaries", "--config", str(tmp_path / "gateway.toml"), "--chart", str(out)]
    result = CliRunner().invoke(cli, [*args, "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [p.find(SVG + "title").text.split(" :")[0] for p in panels_of(out)] == [
        "Éclairage public",
        "Bâtiments",
        "Températures",
    ]
    assert "Heure locale (Europe/Paris)" in out.read_text()
    CliRunner().invoke(cli, [*args, "--utc", "--format", "json"], catch_exceptions=False)
    assert "Heure (UTC)" in out.read_text()


def test_a_png_draws_the_same_panels(tmp_path):
    # matplotlib is the optional `png` extra: on a Pi without it, .svg and .html still work
    pytest.importorskip("matplotlib")
    sums, events = a_town()
    png = write_chart(tmp_path / "c.png", sums, events, tz="Europe/Paris")
    assert png.read_bytes().startswith(b"\x89PNG")
