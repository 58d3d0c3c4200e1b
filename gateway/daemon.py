"""What ``gateway run`` needs to run as a service: one instance per database, and systemd's
readiness and watchdog notifications (``Type=notify``, ``WatchdogSec=`` in
gateway/systemd/reverbere.service).

- ``instance_lock(database)``: an ``fcntl.flock`` on ``<database>.lock``, held for the life of
  the process. Two gateways on one database would each run their own committer, stages and
  sync worker on the same rows (and a second one on another port would look healthy). The
  kernel drops the lock when the process dies, ``kill -9`` included, so a file left behind
  never blocks a restart; it is never deleted (deleting a lock file lets a third process lock
  a new file while the second still holds the old one).
- ``notify(state)``: one datagram to ``$NOTIFY_SOCKET`` (sd_notify(3)'s protocol, no
  dependency): ``READY=1`` once the ports are bound, ``WATCHDOG=1`` while the gateway works,
  ``STOPPING=1`` on SIGTERM. Without ``$NOTIFY_SOCKET`` (not under systemd) it does nothing.
- ``keep_alive(probe, period)``: sends ``WATCHDOG=1`` each time ``probe()`` (the writer
  thread's turn at the database, which a commit holds while the writer process runs it)
  completes, so systemd restarts a gateway whose event loop or store is stuck, not only one
  that crashed.
"""

import asyncio
import errno
import fcntl
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway.logs import event

log = logging.getLogger("reverbere.daemon")
# Seconds a stop waits for a worker's request in flight (the sync's, the alert sender's), side by
# side. systemd's TimeoutStopSec is 30 s in our unit (gateway/systemd/reverbere.service; 90 s by
# default), and the stop also commits the queued packs: the workers' share leaves them most of it.
STOP_GRACE = 5.0


class AlreadyRunning(Exception):
    """Another process holds the database's instance lock; ``str()`` names it."""

    def __init__(self, database: Path, lock: Path, pid: int | None):
        self.database, self.lock, self.pid = database, lock, pid
        who = f"another gateway (PID {pid})" if pid else "another gateway"
        super().__init__(
            f"{who} is already running on {database} (it holds {lock}): stop it first "
            "(systemctl stop reverbere), or give this one its own [gateway] database"
        )


class LockFileError(OSError):
    """The lock file cannot be made (a directory that does not exist, or is read-only)."""

    def __init__(self, path: Path, error: OSError):
        super().__init__(
            error.errno,
            f"cannot create the lock file {path}: {error.strerror} (the database's directory "
            "must exist and be writable by this user)",
        )

    def __str__(self) -> str:
        return self.strerror


def lock_path(database: Path) -> Path:
    """The instance lock's file, beside the database (in the directory the service may write)."""
    return database.with_name(database.name + ".lock")


@contextmanager
def instance_lock(database: Path) -> Iterator[Path]:
    """Hold the single-instance lock of ``database`` (its file holds this PID) inside the
    ``with``; raise ``AlreadyRunning`` naming the holder's PID if another process has it, or
    ``LockFileError`` (a sentence) if the file cannot be made."""
    path = lock_path(Path(database))
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise LockFileError(path, e) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise AlreadyRunning(Path(database), path, _read_pid(fd)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def _read_pid(fd: int) -> int | None:
    """The PID the holder wrote (None if it has not written it yet)."""
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except ValueError:
        return None


def notify(state: str) -> bool:
    """Send ``state`` (``"READY=1"``, ``"WATCHDOG=1"``...) to systemd's ``$NOTIFY_SOCKET``;
    return False without one. A socket name starting with ``@`` is in the abstract namespace."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.sendto(state.encode(), address)
    return True


def watchdog_period() -> float | None:
    """How often to send ``WATCHDOG=1``: a third of ``$WATCHDOG_USEC`` (so that a probe that
    takes up to a third too still pings in time), or None when systemd set no watchdog for
    this process (``$WATCHDOG_PID``, when set, must be ours: sd_watchdog_enabled(3))."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 3e6 if int(usec) > 0 else None
    except ValueError:
        return None


async def keep_alive(
    probe: Callable[[], Awaitable[object]],
    period: float,
    send: Callable[[str], object] = notify,
) -> None:
    """Every ``period`` seconds, run ``probe()`` and send ``WATCHDOG=1`` once it completes;
    until it does, send nothing (and systemd kills the gateway at ``WatchdogSec``). This runs
    on the event loop, so a loop that is blocked sends nothing either. A probe that does not
    complete is not started again beside itself: the next rounds wait for the same one."""
    loop = asyncio.get_running_loop()
    pending: asyncio.Task | None = None
    late_since: float | None = None
    while True:
        started = loop.time()
        if pending is None:
            pending = asyncio.ensure_future(probe())
        done, _ = await asyncio.wait({pending}, timeout=period)
        if done:
            error = pending.exception()
            pending = None
            if error is not None:
                # A probe that fails (the database, say) is not a hang: the gateway goes on
                # and reports the fault itself; the watchdog is about being stuck.
                event(log, logging.WARNING, "watchdog probe failed", error=repr(error))
            send("WATCHDOG=1")
            if late_since is not None:
                event(log, logging.INFO, "watchdog: the store answers again")
                late_since = None
        elif late_since is None:
            late_since = started
            event(
                log,
                logging.WARNING,
                "watchdog: the store has not answered: no WATCHDOG=1 until it does",
                waited_s=round(period, 1),
            )
        await asyncio.sleep(max(0.0, period - (loop.time() - started)))
