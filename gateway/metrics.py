"""Prometheus metrics in the text exposition format, served on ``/metrics`` by a tiny HTTP server.

No dependency: a ``Registry`` of counters and gauges (with optional labels) and an asyncio
HTTP/1.1 server that answers GET on a table of routes. Other stages add metrics with
``registry.counter(...)``/``registry.gauge(...)`` and pages with ``HttpServer.routes[path]``.
"""

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable

from gateway.logs import RateLimiter, event

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
MAX_CONNECTIONS = 32  # open at once; Prometheus needs one, an operator's curl another
HEAD_TIMEOUT = 2.0  # seconds for the request line and headers (loopback or LAN: milliseconds)
log = logging.getLogger("reverbere.metrics")




class HttpServer:
    """A minimal read-only HTTP/1.1 server: GET ``path`` -> ``routes[path]()``.

    A handler returns ``(status, content type, body)``. One request per connection.

    Bounded (issue 13, item 10: 341 half-open connections held 10 s each exhausted the
    process's file descriptors): at most ``max_connections`` at once, a connection over the cap
    is closed at once; the request head must come within ``head_timeout`` seconds; refusals
    are logged at most once a minute (``gateway.logs.RateLimiter``) with how many were held
    back. A later issue replaces this server with a web framework.
    """

    def __init__(
        self,
        routes: dict[str, Handler] | None = None,
        max_connections: int = MAX_CONNECTIONS,
        head_timeout: float = HEAD_TIMEOUT,
    ):
        self.routes: dict[str, Handler] = dict(routes or {})
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.open_connections = 0
        self.refused = 0  # connections closed at once because the cap was reached
        self._changed = asyncio.Event()
        self._limit = RateLimiter(60.0)
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; return the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._serve, host, port)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def wait_connections(self, n: int) -> None:
        """Until exactly ``n`` connections are open (tests: no sleeping)."""
        while self.open_connections != n:
            self._changed.clear()
            await self._changed.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open_connections >= self.max_connections:
            self.refused += 1
            suppressed = self._limit.allow("cap")
            if suppressed is not None:
                event(
                    log,
                    logging.WARNING,
                    "http connection refused: too many open",
                    open=self.open_connections,
                    cap=self.max_connections,
                    suppressed=suppressed,
                )
            writer.close()
            return
        self.open_connections += 1
        self._changed.set()
        try:
            await self._answer(reader, writer)
        finally:
            self.open_connections -= 1
            self._changed.set()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.head_timeout)
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
