"""Prometheus metrics in the text exposition format, served on ``/metrics`` by a tiny HTTP server.

No dependency: a ``Registry`` of counters and gauges (with optional labels) and an asyncio
HTTP/1.1 server that answers GET on a table of routes. Other stages add metrics with
``registry.counter(...)``/``registry.gauge(...)`` and pages with ``HttpServer.routes[path]``.

Every series an alert may use exists from the start: a counter that appears only at its
first event makes ``rate()`` and ``absent()`` rules blind until then, so the gateway
``declare``s each one, with each known label value, at 0 (``gateway.service``). Names follow
Prometheus' conventions: base units, ``_total`` for counters, ``_timestamp_seconds`` for a
Unix time (``time() - x`` is then an age).
"""

import asyncio
import logging
import math
import os
import resource
from collections.abc import Awaitable, Callable, Iterable

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
        self.collect: Callable[[], Iterable[tuple[dict[str, str], float]]] | None = None

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0) + amount

    def set(self, value: float, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] = value

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0)

    def declare(self, **labels: str) -> "Metric":
        """Make the series with these labels exist (at 0 until it counts or is set), so that
        it is scraped before its first event."""
        self.values.setdefault(tuple(sorted(labels.items())), 0)
        return self

    def set_function(self, func: Callable[[], float]) -> None:
        """Compute the (unlabelled) value at scrape time."""
        self.func = func

    def set_collector(self, collect: Callable[[], Iterable[tuple[dict[str, str], float]]]) -> None:
        """Compute the labelled series at scrape time: ``collect()`` yields (labels, value),
        e.g. one per node from what ingest keeps in memory (it must not query a table: a
        scrape should cost nothing the gateway would notice)."""
        self.collect = collect

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        values = dict(self.values)
        if self.func is not None:
            values[()] = self.func()
        if self.collect is not None:
            for labels, value in self.collect():
                values[tuple(sorted(labels.items()))] = value
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


def declare_process_metrics(registry: Registry, version: str) -> None:
    """``reverbere_build_info{version} 1`` (which version runs: a join key for dashboards, an
    alert after a failed upgrade) and the process' CPU time, resident memory and open files,
    under the names Prometheus' own clients use (``process_*``), read at scrape time from
    ``resource.getrusage`` and ``/proc/self`` (Linux; elsewhere the memory is the peak)."""
    registry.gauge("reverbere_build_info", "The running version (value 1).").set(1, version=version)
    registry.counter(
        "process_cpu_seconds_total", "User and system CPU time of the gateway's process."
    ).set_function(_cpu_seconds)
    registry.gauge(
        "process_resident_memory_bytes", "Resident memory of the gateway's process."
    ).set_function(_resident_bytes)
    if os.path.isdir("/proc/self/fd"):
        registry.gauge("process_open_fds", "Open file descriptors.").set_function(
            lambda: len(os.listdir("/proc/self/fd"))
        )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _resident_bytes() -> float:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak (kilobytes on Linux and BSD)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# Help texts of the metrics made in more than one place.
HELP = {
    "reverbere_readings_stored_total": "Readings newly stored (duplicates not counted).",
    "reverbere_commits_total": "Group commits (one fsync each).",
    "reverbere_packs_committed_total": "Packs that went through a commit.",
    "reverbere_store_full": "1 while the disk budget is reached (nodes get 5.03).",
    "reverbere_last_commit_seconds": "Duration of the last commit, fsync included.",
    "reverbere_stage_errors_total": "Failures of after-commit stages, by stage.",
    "reverbere_readings_received_total": "Readings in packs that passed validation.",
    "reverbere_packs_accepted_total": "Packs answered 2.04, by outcome.",
    "reverbere_packs_rejected_total": "Packs refused, by reason.",
    "reverbere_sync_restarts_total": "Sync worker restarts after an error.",
    "reverbere_node_last_seen_timestamp_seconds": (
        "Unix time of the node's last stored pack (0: never since it was added)."
    ),
    "reverbere_node_battery_ratio": "The node's last battery reading (0 to 1).",
    "reverbere_node_rssi_dbm": "The node's last radio signal reading, as it sends it (dBm).",
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
