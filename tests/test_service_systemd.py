"""`gateway run` as a systemd service (gateway/daemon.py): READY=1 and WATCHDOG=1 reach a real
$NOTIFY_SOCKET from the gateway's main process (NotifyAccess=main drops anything else), the
watchdog goes quiet while the store is stuck (a hung gateway must be restarted, not only a
crashed one), and a second gateway on the same database refuses to start."""

import array
import asyncio
import json
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from gateway_helpers import GatewayProcess, http_get, running_gateway

from gateway import daemon, service

RUN = [sys.executable, "-m", "gateway", "gateway", "run"]
LOOPBACK = ["--coap", "127.0.0.1:0", "--http", "127.0.0.1:0"]


class NotifySocket:
    """A unix datagram socket standing in for systemd's: each datagram with its sender's PID
    (SCM_CREDENTIALS, as systemd checks it)."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def receive(self, timeout: float = 30) -> tuple[str, int | None]:
        self.sock.settimeout(timeout)
        size = struct.calcsize("3i")
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(size))
        pid = None
        for level, kind, payload in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                pid = array.array("i", payload[:size])[0]
        return data.decode(), pid

    def close(self) -> None:
        self.sock.close()


class Run:
    """`python -m gateway gateway run` with ``env`` added; its JSON log lines in ``lines``."""

    def __init__(self, config_path: Path, env: dict[str, str]):
        self.proc = subprocess.Popen(
            [*RUN, "--config", str(config_path), *LOOPBACK],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
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

        threading.Thread(target=drain, daemon=True).start()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def initialised(tmp_path: Path) -> Path:
    return service.init_dir(tmp_path / "data")


def test_ready_then_watchdog_then_stopping_from_the_main_process(tmp_path, initialised):
    notify = NotifySocket(tmp_path / "notify")
    # 0.6 s: a ping every 0.2 s, so the test sees several quickly.
    run = Run(initialised, {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "600000"})
    try:
        state, pid = notify.receive()
        assert state.splitlines()[0] == "READY=1"
        assert pid == run.proc.pid  # the main PID: systemd's NotifyAccess=main takes only it
        # READY=1 comes after the ports are bound: the log says where, and /metrics answers.
        listening = next(r for r in run.log if r.get("msg") == "gateway listening")
        assert f"HTTP port {listening['http_port']}" in state
        status, _ = asyncio.run(http_get(listening["http_port"], "/metrics"))
        assert status == 200
        for _ in range(3):
            assert notify.receive() == ("WATCHDOG=1", run.proc.pid)
        run.proc.send_signal(signal.SIGTERM)
        while (received := notify.receive())[0] == "WATCHDOG=1":
            pass
        assert received == ("STOPPING=1", run.proc.pid)
        assert run.proc.wait(timeout=30) == 0
    finally:
        run.close()
        notify.close()


def test_without_watchdog_usec_ready_is_sent_and_no_watchdog(tmp_path, initialised):
    notify = NotifySocket(tmp_path / "notify")
    env = {"NOTIFY_SOCKET": str(notify.path)}
    run = Run(initialised, {**env, "WATCHDOG_USEC": "", "WATCHDOG_PID": ""})
    try:
        assert notify.receive()[0].startswith("READY=1\n")
        run.proc.send_signal(signal.SIGTERM)
        assert notify.receive()[0] == "STOPPING=1"  # not a WATCHDOG=1 in between
        assert run.proc.wait(timeout=30) == 0
    finally:
        run.close()
        notify.close()


def test_watchdog_period_follows_systemds_variables(monkeypatch):
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert daemon.watchdog_period() is None  # not under a systemd watchdog
    monkeypatch.setenv("WATCHDOG_USEC", "120000000")
    assert daemon.watchdog_period() == 40.0  # WatchdogSec=120: a ping every 40 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert daemon.watchdog_period() is None  # meant for another process (sd_watchdog_enabled)
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert daemon.watchdog_period() == 40.0


def test_an_abstract_notify_socket_is_reached(monkeypatch):
    """``@name`` is the abstract namespace (what systemd passes in some containers)."""
    name = f"reverbere-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert daemon.notify("READY=1")
        s.settimeout(5)
        assert s.recv(100) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert daemon.notify("READY=1") is False


def test_the_watchdog_goes_quiet_while_the_store_is_stuck(tmp_path):
    """A writer thread that never returns (a stage stuck, a commit that never ends: both hold
    what the probe waits for) stops the WATCHDOG=1s; they resume once it returns."""
    period = 0.05

    async def main() -> None:
        async with running_gateway(tmp_path) as gw:
            pings: asyncio.Queue = asyncio.Queue()

            async def probe() -> None:  # as serve() does
                await gw.committer.run(lambda db: None)

            task = asyncio.create_task(daemon.keep_alive(probe, period, pings.put_nowait))
            entered, stuck = threading.Event(), threading.Event()

            def hang_thread(db: object) -> None:
                entered.set()
                stuck.wait()

            try:
                assert await asyncio.wait_for(pings.get(), 10) == "WATCHDOG=1"
                hang = asyncio.create_task(gw.committer.run(hang_thread))
                assert await asyncio.to_thread(entered.wait, 10)
                while not pings.empty():  # what was sent before the hang
                    pings.get_nowait()
                # Over 10 periods, at most the ping of a probe that ran just before the hang
                # (its answer may still be on its way through the event loop).
                late = []
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(10 * period):
                        while True:
                            late.append(await pings.get())
                assert len(late) <= 1
                stuck.set()
                await hang
                assert await asyncio.wait_for(pings.get(), 10) == "WATCHDOG=1"
            finally:
                stuck.set()
                task.cancel()

    asyncio.run(main())


def test_a_second_gateway_on_the_same_database_refuses(tmp_path, initialised):
    first = GatewayProcess(initialised)
    database = initialised.parent / "reverbere.db"
    second = subprocess.run(
        [*RUN, "--config", str(initialised), *LOOPBACK],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert f"another gateway (PID {first.proc.pid}) is already running on {database}" in (
        second.stderr
    )
    assert "Traceback" not in second.stderr
    # The first one is untouched and still answers.
    assert first.proc.poll() is None
    assert asyncio.run(http_get(first.http_port, "/metrics"))[0] == 200
    # A gateway killed outright leaves its lock file, which does not block the next start:
    # the kernel released the lock with the process.
    first.kill()
    assert daemon.lock_path(database).exists()
    third = GatewayProcess(initialised)
    try:
        assert asyncio.run(http_get(third.http_port, "/metrics"))[0] == 200
        assert daemon.lock_path(database).read_text() == f"{third.proc.pid}\n"
    finally:
        third.kill()


def test_a_lock_beside_a_missing_directory_is_a_sentence(tmp_path):
    database = tmp_path / "nowhere" / "reverbere.db"
    with pytest.raises(daemon.LockFileError) as e, daemon.instance_lock(database):
        pass
    assert str(e.value) == (
        f"cannot create the lock file {database}.lock: No such file or directory (the "
        "database's directory must exist and be writable by this user)"
    )
