"""Prometheus text format and the small HTTP server that serves it."""

import ast
import asyncio
import time
from pathlib import Path

from gateway_helpers import add_node, http_get, metric, running_gateway

from gateway import __version__
from gateway.ingest.resource import REJECTION_REASONS
from gateway.metrics import HttpServer, Registry, declare_process_metrics
from protocols.const import CHANGED
from sim.sender import Sender, SimNode

ROOT = Path(__file__).resolve().parents[1]


def test_text_format_with_labels_help_and_computed_gauges():
    r = Registry()
    c = r.counter("x_total", "Things.")
    c.inc(reason='bad "mac"')
    c.inc(2, reason='bad "mac"')
    r.gauge("depth", "Queue.").set_function(lambda: 7)
    assert r.render() == (
        "# HELP x_total Things.\n# TYPE x_total counter\n"
        'x_total{reason="bad \\"mac\\""} 3\n'
        "# HELP depth Queue.\n# TYPE depth gauge\ndepth 7\n"
    )


def test_http_server_routes_404_and_405():
    async def go():
        server = HttpServer({"/metrics": _page})
        port = await server.start("127.0.0.1", 0)
        try:
            return [
                await _request(port, m, p)
                for m, p in (("GET", "/metrics"), ("GET", "/nope"), ("POST", "/metrics"))
            ]
        finally:
            await server.stop()

    ok, missing, post = asyncio.run(go())
    assert ok.startswith(b"HTTP/1.1 200 OK") and ok.endswith(b"\r\n\r\nup 1\n")
    assert missing.startswith(b"HTTP/1.1 404") and post.startswith(b"HTTP/1.1 405")


async def _page():
    return 200, "text/plain", b"up 1\n"


async def _request(port, method, path):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data


def test_declared_series_and_collectors_render_before_any_event():
    r = Registry()
    r.counter("x_total", "Things.").declare(reason="a").declare(reason="b")
    r.counter("x_total").inc(reason="b")
    r.gauge("g", "Per node.").set_collector(lambda: [({"node": "n2"}, 2), ({"node": "n1"}, 1.5)])
    assert r.render() == (
        "# HELP x_total Things.\n# TYPE x_total counter\n"
        'x_total{reason="a"} 0\nx_total{reason="b"} 1\n'
        '# HELP g Per node.\n# TYPE g gauge\ng{node="n1"} 1.5\ng{node="n2"} 2\n'
    )


def test_process_metrics_and_build_info():
    r = Registry()
    declare_process_metrics(r, "1.2.3")
    text = r.render()
    assert 'reverbere_build_info{version="1.2.3"} 1' in text
    assert "# TYPE process_cpu_seconds_total counter" in text
    assert 0 < metric(text, "process_cpu_seconds_total ") < time.process_time() + 1
    rss = metric(text, "process_resident_memory_bytes ")
    assert 10e6 < rss < 2e9  # a Python process with the gateway imported: tens of MB


def test_a_gateway_shows_every_series_from_the_start_and_each_node(tmp_path):
    """What an alert needs: a 0 before the first event, and per node a last-seen time that
    stops moving when the node falls silent, its battery and signal."""

    async def go():
        async with running_gateway(tmp_path) as gw:
            key = add_node(gw, "lamp-001")
            gw._ingest.nodes.reload()  # added after the start: as within a second in service
            _, before = await http_get(gw.http_port, "/metrics")
            async with Sender("127.0.0.1", gw.coap_port) as s:
                t = int(time.time()) - 60
                readings = [("p", t, 40), ("bat", t - 60, 80), ("bat", t, 77), ("rssi", t, -67)]
                assert (await s.send(SimNode("lamp-001", key), readings)).code == CHANGED
            _, after = await http_get(gw.http_port, "/metrics")
            return before, after

    before, after = asyncio.run(go())
    for line in (
        "reverbere_readings_stored_total 0",
        "reverbere_commits_total 0",
        "reverbere_readings_received_total 0",
        'reverbere_packs_accepted_total{outcome="stored"} 0',
        'reverbere_stage_errors_total{stage="Detector"} 0',
        'reverbere_stage_errors_total{stage="Detector.quiet"} 0',
        'reverbere_node_last_seen_timestamp_seconds{node="lamp-001"} 0',
        f'reverbere_build_info{{version="{__version__}"}} 1',
    ):
        assert line in before.splitlines(), line
    for reason in REJECTION_REASONS:
        assert f'reverbere_packs_rejected_total{{reason="{reason}"}} 0' in before
    assert "reverbere_node_battery_ratio{" not in before  # not heard yet: no series
    seen = metric(after, 'reverbere_node_last_seen_timestamp_seconds{node="lamp-001"}')
    assert abs(seen - time.time()) < 30
    assert metric(after, 'reverbere_node_battery_ratio{node="lamp-001"}') == 0.77  # the latest
    assert metric(after, 'reverbere_node_rssi_dbm{node="lamp-001"}') == -67
    assert metric(after, 'reverbere_packs_accepted_total{outcome="stored"}') == 1
    assert "<" not in after  # no label holds a repr (an address: a new series at each start)


def test_every_rejection_reason_in_the_code_is_declared_and_documented():
    """REJECTION_REASONS is what the gateway declares at 0: a reason the code raises and the
    list forgets would appear only at its first occurrence, one the docs forget is a mystery."""
    used = set()
    for path in (ROOT / "gateway" / "ingest").glob("*.py"):
        for call in ast.walk(ast.parse(path.read_text())):
            if not isinstance(call, ast.Call):
                continue
            name = getattr(call.func, "id", getattr(call.func, "attr", ""))
            position = {"Rejected": 1, "_bad": 0, "refuse": 0}.get(name)
            if position is None or len(call.args) <= position:
                continue
            arg = call.args[position]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                used.add(arg.value)
    assert used and used <= set(REJECTION_REASONS), used - set(REJECTION_REASONS)
    docs = (ROOT / "docs" / "gateway.md").read_text()
    assert [r for r in REJECTION_REASONS if f"`{r}`" not in docs] == []
