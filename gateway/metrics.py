"""Prometheus metrics in the text exposition format, served on ``/metrics`` by a tiny HTTP server.

No dependency: a ``Registry`` of counters and gauges (with optional labels) and an asyncio
HTTP/1.1 server that answers GET on a table of routes. Other stages add metrics with
``registry.counter(...)``/``registry.gauge(...)`` and pages with ``HttpServer.routes[path]``.
"""

import asyncio
import math
from collections.abc import Awaitable, Callable

Labels = tuple[tuple[str, str], ...]


class Metric:
    """A counter or gauge; ``labels`` are keyword arguments of ``inc``/``set``."""

    def __init__(self, name: str, kind: str, help_text: str):
        self.name = name
        self.kind = kind
        self.help = help_text
        self.values: dict[Labels, float] = {}
        self.func: Callable[[], float] | None = None

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0) + amount

    def set(self, value: float, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] = value

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0)

    def set_function(self, func: Callable[[], float]) -> None:
        """Compute the (unlabelled) value at scrape time."""
        self.func = func

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        values = dict(self.values)
        if self.func is not None:
            values[()] = self.func()
        for labels, value in sorted(values.items()):
            lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(self.name + (f"{{{lab}}}" if lab else "") + " " + _num(value))
        return lines


def _escape(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if v != v else ("+Inf" if v > 0 else "-Inf")
    return repr(int(v)) if float(v).is_integer() else repr(float(v))


class Registry:
    """Every metric of one gateway, in the order they were made."""

    def __init__(self) -> None:
        self.metrics: dict[str, Metric] = {}

    def _make(self, name: str, kind: str, help_text: str) -> Metric:
        if name not in self.metrics:
            self.metrics[name] = Metric(name, kind, help_text)
        return self.metrics[name]

    def counter(self, name: str, help_text: str = "") -> Metric:
        return self._make(name, "counter", help_text or HELP.get(name, name))

    def gauge(self, name: str, help_text: str = "") -> Metric:
        return self._make(name, "gauge", help_text or HELP.get(name, name))

    def render(self) -> str:
        lines: list[str] = []
        for m in self.metrics.values():
            lines.extend(m.render())
        return "\n".join(lines) + "\n"


# Help texts of the metrics made in more than one place.
HELP = {
    "reverbere_readings_stored_total": "Readings newly stored (duplicates not counted).",
    "reverbere_commits_total": "Group commits (one fsync each).",
    "reverbere_packs_committed_total": "Packs that went through a commit.",
    "reverbere_store_full": "1 while the disk budget is reached (nodes get 5.03).",
    "reverbere_last_commit_seconds": "Duration of the last commit, fsync included.",
    "reverbere_stage_errors_total": "Failures of after-commit stages, by stage.",
}

Handler = Callable[[], Awaitable[tuple[int, str, bytes]]]


class HttpServer:
    """A minimal read-only HTTP/1.1 server: GET ``path`` -> ``routes[path]()``.

    A handler returns ``(status, content type, body)``. One request per connection.
    """

    def __init__(self, routes: dict[str, Handler] | None = None):
        self.routes: dict[str, Handler] = dict(routes or {})
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; return the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._serve, host, port)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path = target.split("?", 1)[0]
            if method != "GET":
                status, ctype, body = 405, "text/plain", b"only GET\n"
            elif path in self.routes:
                status, ctype, body = await self.routes[path]()
            else:
                status, ctype, body = 404, "text/plain", b"not found\n"
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(status, "")
            writer.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n"
                % (status, reason.encode(), ctype.encode(), len(body))
                + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            pass
        except ConnectionError:
            pass
        finally:
            writer.close()


PROM_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
