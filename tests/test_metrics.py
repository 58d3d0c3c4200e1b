"""Prometheus text format and the small HTTP server that serves it."""

import asyncio

from gateway.metrics import HttpServer, Registry


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
