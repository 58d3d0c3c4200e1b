"""Prometheus metrics in the text exposition format, served on ``/metrics`` by the gateway's
HTTP server.

A ``Registry`` of counters and gauges (with optional labels), and ``HttpServer``: the
gateway's aiohttp server (the console's pages, ``gateway.console``, and plain GET routes such
as ``/metrics``), with a cap on open connections. Other stages add metrics with
``registry.counter(...)``/``registry.gauge(...)``.

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
from typing import Any

from aiohttp import web

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
    """The gateway's HTTP server (aiohttp, on the event loop that runs CoAP): ``app`` is the
    ``aiohttp.web.Application`` the console (``gateway.console``) adds its pages to, and
    ``routes`` maps a path to a plain ``GET`` handler returning ``(status, content type,
    body)``, such as ``/metrics``. Their answers close the connection (a scrape is one
    request; a client reading to the end of the stream is not kept waiting).

    Bounded (issue 13, item 10: 341 half-open connections held 10 s each exhausted the
    process's file descriptors): at most ``max_connections`` at once, a connection over the
    cap is closed at once; a connection idle for ``head_timeout`` seconds, before its first
    request or between two, is closed (aiohttp's keep-alive timer starts when the connection
    is made, so a client that never sends a complete head is dropped too); refusals are
    logged at most once a minute (``gateway.logs.RateLimiter``) with how many were held back.
    """

    def __init__(
        self,
        routes: dict[str, Handler] | None = None,
        max_connections: int = MAX_CONNECTIONS,
        head_timeout: float = HEAD_TIMEOUT,
        app: web.Application | None = None,
    ):
        self.app = app if app is not None else web.Application()
        self.routes: dict[str, Handler] = dict(routes or {})
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.open_connections = 0
        self.refused = 0  # connections closed at once because the cap was reached
        self._changed = asyncio.Event()
        self._limit = RateLimiter(60.0)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; return the bound port (useful with port 0)."""
        for path, handler in self.routes.items():
            self.app.router.add_get(path, _plain(handler), allow_head=False)
        self._runner = web.AppRunner(
            self.app, keepalive_timeout=self.head_timeout, access_log=None, handle_signals=False
        )
        await self._runner.setup()
        server = self._runner.server
        lost = server.connection_lost

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            lost(handler, exc)
            self.open_connections -= 1
            self._changed.set()

        server.connection_lost = connection_lost  # counts what the factory below counted
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, host, port)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._server is not None:
            await self._server.wait_closed()

    async def wait_connections(self, n: int) -> None:
        """Until exactly ``n`` connections are open (tests: no sleeping)."""
        while self.open_connections != n:
            self._changed.clear()
            await self._changed.wait()

    def _protocol(self) -> asyncio.Protocol:
        """A connection's protocol: aiohttp's, or one that closes it when the cap is reached."""
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
            return _Refuse()
        self.open_connections += 1
        self._changed.set()
        return self._runner.server()


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def _plain(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def answer(request: web.Request) -> web.Response:
        status, ctype, body = await handler()
        response = web.Response(status=status, body=body, headers={"Content-Type": ctype})
        response.force_close()
        return response

    return answer


PROM_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
