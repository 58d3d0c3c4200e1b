"""Shared helpers for the gateway tests: a real gateway on 127.0.0.1 (port 0), raw CoAP."""

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from gateway import config
from gateway.ingest import registry
from gateway.service import Gateway
from gateway.store.db import open_db
from protocols import coap
from protocols.const import (
    ACK,
    CF_COSE_MAC0,
    CON,
    CONTENT_FORMAT,
    EMPTY,
    POST,
    READINGS_PATH,
    URI_PATH,
)

LOOPBACK = {"coap_host": "127.0.0.1", "coap_port": 0, "http_host": "127.0.0.1", "http_port": 0}


def make_config(tmp_path: Path, text: str = "", **overrides: Any) -> config.Config:
    return config.loads(text, tmp_path / "gateway.toml", {**LOOPBACK, **overrides})


@contextlib.asynccontextmanager
async def running_gateway(
    tmp_path: Path, clock: Callable[[], float] | None = None, **overrides: Any
) -> AsyncIterator[Gateway]:
    """A gateway on loopback, on a database in ``tmp_path``; stopped gracefully after.

    ``clock`` replaces the wall clock of ingest (``Ingest.clock``): what "now" is for
    relative times, the accepted time window and the time in the 2.04 answer."""
    gw = Gateway(make_config(tmp_path, **overrides))
    await gw.start()
    if clock is not None:
        gw._ingest.clock = clock  # the Gateway makes its Ingest in start()
    try:
        yield gw
    finally:
        await gw.stop()


def add_node(gw_or_cfg: Any, node_id: str = "lamp-001") -> bytes:
    cfg = getattr(gw_or_cfg, "cfg", gw_or_cfg)
    db = open_db(cfg.database)
    try:
        return registry.add_node(db, node_id)
    finally:
        db.close()


def minute_readings(n: int = 10, channel: str = "p", start: int | None = None) -> list[tuple]:
    start = int(time.time()) // 60 * 60 - 3600 if start is None else start
    return [(channel, start + 60 * k, 50 + k) for k in range(n)]


def con_post(body: bytes, mid: int, cf: int | None = CF_COSE_MAC0, token: bytes = b"tk") -> bytes:
    options = [(URI_PATH, READINGS_PATH.encode())]
    if cf is not None:
        options.append((CONTENT_FORMAT, coap.uint_option(cf)))
    return coap.encode(CON, POST, mid, token, options=options, payload=body)


class _Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait(coap.decode(data))


@contextlib.asynccontextmanager
async def raw_socket(port: int) -> AsyncIterator[tuple[asyncio.DatagramTransport, _Collect]]:
    """A UDP socket to the gateway; responses land decoded in ``proto.queue``."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        _Collect, remote_addr=("127.0.0.1", port)
    )
    try:
        yield transport, proto
    finally:
        transport.close()


async def exchange(port: int, wire: bytes, copies: int = 1) -> list[coap.Message]:
    """Send ``wire`` ``copies`` times (a CoAP retransmission is the same bytes) and collect
    one response per copy."""
    async with raw_socket(port) as (transport, proto):
        out = []
        for _ in range(copies):
            transport.sendto(wire)
            msg = await asyncio.wait_for(proto.queue.get(), 5)
            if (msg.mtype, msg.code) == (ACK, EMPTY):  # the answer comes separately (5.2.2)
                msg = await asyncio.wait_for(proto.queue.get(), 10)
                transport.sendto(coap.encode(ACK, EMPTY, msg.mid))
            out.append(msg)
        return out


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def metric(text: str, line_start: str) -> float:
    """The value of the first metric line starting with ``line_start``."""
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line {line_start!r} in:\n{text}")


def count_readings(cfg: config.Config) -> int:
    db = open_db(cfg.database)
    try:
        return db.execute("SELECT count(*) FROM readings").fetchone()[0]
    finally:
        db.close()


def _reap(proc: Any) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


class GatewayProcess:
    """``reverbere gateway run`` in a subprocess; its JSON log lines are read by a thread."""

    def __init__(self, config_path: Path, coap: str = "127.0.0.1:0", http: str = "127.0.0.1:0"):
        import json
        import queue
        import subprocess
        import sys
        import threading

        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "gateway",
                "run",
                "--config",
                str(config_path),
                "--coap",
                coap,
                "--http",
                http,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Killed at the latest when the object goes, or when pytest exits: a test that fails
        # before its own kill() leaves no gateway (and its writer process) running.
        weakref.finalize(self, _reap, self.proc)
        self.lines: queue.Queue = queue.Queue()
        self.log: list[dict] = []

        def drain() -> None:
            for line in self.proc.stderr:
                try:
                    rec = json.loads(line)
                except ValueError:
                    rec = {"msg": line.rstrip()}
                self.log.append(rec)
                self.lines.put(rec)
            self.lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        rec = self.wait_for("gateway listening")
        self.coap_port, self.http_port = rec["coap_port"], rec["http_port"]

    def wait_for(self, msg: str, timeout: float = 30) -> dict:
        while True:
            rec = self.lines.get(timeout=timeout)
            if rec is None:
                raise AssertionError(f"gateway exited: {self.log[-5:]}")
            if rec.get("msg") == msg:
                return rec

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
