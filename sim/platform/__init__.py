"""The municipal platform for tests and the demo: a real SensorThings API v1.1 server
(``django-ogc-sensorthings`` on SQLite) in its own process, and a fault-injecting proxy.

>>> with start_platform("platform.sqlite3") as platform:
...     proxy = FaultProxy(platform.address, seed=1, rate=0.2).start()
...     base = proxy.url + "/v1.1"
"""

import os
import subprocess
import sys
from pathlib import Path

from sim.platform.proxy import FAULTS, FaultLog, FaultProxy

__all__ = ["FAULTS", "FaultLog", "FaultProxy", "PlatformProcess", "start_platform"]


class PlatformError(RuntimeError):
    """The platform process did not start."""


class PlatformProcess:
    """A running platform: ``url`` is its SensorThings service root (``.../v1.1``)."""

    def __init__(self, proc: subprocess.Popen, url: str) -> None:
        self.proc = proc
        self.url = url

    @property
    def address(self) -> str:
        """``host:port`` of the server, for a proxy in front of it."""
        return self.url.split("://", 1)[1].split("/", 1)[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe:
                pipe.close()

    def __enter__(self) -> "PlatformProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_platform(
    db_path: str | Path,
    *,
    token: str | None = None,
    basic: str | None = None,
    port: int = 0,
    public_url: str | None = None,
) -> PlatformProcess:
    """Start the platform on loopback and return once it accepts connections.

    ``token`` makes it require that bearer token, ``basic`` ("user:password") accept that basic
    auth; ``public_url`` is the root its self links and ``@iot.nextLink`` carry.
    """
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    for name, value in (
        ("REVERBERE_PLATFORM_TOKEN", token),
        ("REVERBERE_PLATFORM_BASIC", basic),
        ("REVERBERE_PLATFORM_URL", public_url),
    ):
        env.pop(name, None)
        if value:
            env[name] = value
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sim.platform.server",
            "--db",
            str(db_path),
            "--port",
            str(port),
            "--exit-with-stdin",
        ],
        stdin=subprocess.PIPE,  # closes when this process ends: the platform follows
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    line = proc.stdout.readline().strip() if proc.stdout else ""
    if not line.startswith("http"):
        proc.kill()
        proc.wait()
        raise PlatformError(f"the platform did not start (exit code {proc.poll()})")
    return PlatformProcess(proc, line)
