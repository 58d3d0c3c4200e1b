"""A seeded, repeatable fault-injecting HTTP proxy between the gateway and the platform.

It speaks just enough HTTP/1.1 (Content-Length bodies, keep-alive) to forward each request
to the upstream platform and to decide, per request and from its own seeded random
generator, whether to break it and how. The same seed and the same request sequence give the
same faults.

Faults (names in ``FAULTS``):

``drop``     close the connection without forwarding the request (the client cannot tell
             whether it was processed)
``500``      answer 500 without forwarding (nothing happened at the platform)
``502``      forward, let the platform process the request, then answer 502 (it did happen)
``reset``    forward, then send half the response and reset the connection
``stall``    forward, then never answer (the client times out; it did happen)
``slow``     forward, answer after ``slow_delay`` seconds (nothing breaks, it is only slow)
``tls``      (TLS mode only, per connection) break the TLS handshake

``faults`` may repeat a name to make it likelier than the others.

Besides the random faults, ``proxy.down = True`` makes the link down: the proxy stops
listening (connections are refused) until it is set back to False; and ``proxy.choose``
(a function of the request number, method and target returning a fault name or None)
forces faults on chosen requests. ``wait_forwarded(n)`` blocks until ``n`` requests have
reached the platform.
"""

import contextlib
import http.client
import random
import socket
import ssl
import struct
import threading
from dataclasses import dataclass, field

FAULTS = ("drop", "500", "502", "reset", "stall", "slow")

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te"}


@dataclass
class FaultLog:
    """What the proxy did: one entry per injected fault, plus counts."""

    faults: list[tuple[int, str]] = field(default_factory=list)
    requests: int = 0

    def count(self, name: str | None = None) -> int:
        return sum(1 for _, f in self.faults if name is None or f == name)


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class FaultProxy:
    """Forward HTTP from ``127.0.0.1:port`` to ``upstream`` (a ``host:port``), breaking some."""

    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        rate: float = 0.0,
        faults: tuple[str, ...] = FAULTS,
        tls: ssl.SSLContext | None = None,
        tls_rate: float = 0.0,
        slow_delay: float = 0.2,
        stall_limit: float = 30.0,
        host: str = "127.0.0.1",
    ) -> None:
        for name in faults:
            if name not in FAULTS:
                raise ValueError("unknown fault {!r} (known: {})".format(name, ", ".join(FAULTS)))
        up_host, _, up_port = upstream.rpartition(":")
        self.upstream = (up_host, int(up_port))
        self.rate = rate
        self.faults = faults
        self.tls = tls
        self.tls_rate = tls_rate
        self.slow_delay = slow_delay
        self.stall_limit = stall_limit
        self._down = False
        self.choose = None
        self.stalled = threading.Event()  # set when a "stall" holds a processed request
        self.forwarded = 0
        self._forwarded_cond = threading.Condition()
        self.log = FaultLog()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(0.2)
        self.host = host
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def url(self) -> str:
        """The proxy's root; append the platform's path (``/v1.1``)."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def start(self) -> "FaultProxy":
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        self._acceptor.join(timeout=5)
        self._listener.close()
        for t in self._threads:
            t.join(timeout=1)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def down(self) -> bool:
        return self._down

    @down.setter
    def down(self, value: bool) -> None:
        with self._lock:
            if value and not self._down:
                self._down = True  # first: the accept loop must see it when accept() fails
                # shutdown() stops listening at once, even while accept() blocks on it.
                with contextlib.suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
            elif not value and self._down:
                listener = socket.create_server((self.host, self.port))
                listener.settimeout(0.2)
                self._listener = listener
                self._down = False

    def wait_forwarded(self, n: int, timeout: float = 60.0) -> bool:
        """Wait until ``n`` requests have been forwarded to the platform."""
        with self._forwarded_cond:
            return self._forwarded_cond.wait_for(lambda: self.forwarded >= n, timeout)

    def _decide(self, rate: float, choices: tuple[str, ...]) -> str | None:
        with self._lock:
            roll = self._rng.random()
            pick = self._rng.choice(choices) if choices else None
            return pick if roll < rate else None

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._down:  # not listening: wait to be brought back up
                    self._closing.wait(0.05)
                    continue
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(self.stall_limit)
        try:
            if self.tls is not None:
                if self._decide(self.tls_rate, ("tls",)):
                    with self._lock:
                        self.log.faults.append((self.log.requests, "tls"))
                    # Not a TLS record: the client's handshake fails.
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                    _reset(conn)
                    return
                conn = self.tls.wrap_socket(conn, server_side=True)
            reader = conn.makefile("rb")
            while not self._closing.is_set():
                request = _read_request(reader)
                if request is None:
                    break
                if not self._handle(conn, request):
                    return
            conn.close()
        except (OSError, ssl.SSLError, ValueError):
            with contextlib.suppress(OSError):
                conn.close()

    def _handle(self, conn: socket.socket, request: bytes) -> bool:
        """Forward one request, maybe breaking it; False when the connection is gone."""
        with self._lock:
            self.log.requests += 1
            number = self.log.requests
        fault = self._decide(self.rate, self.faults)
        if self.choose is not None:
            line = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            fault = self.choose(number, line[0], line[1]) or fault
        if fault:
            with self._lock:
                self.log.faults.append((self.log.requests, fault))
        if self._down or fault == "drop":
            _reset(conn)
            return False
        if fault == "500":
            body = b'{"detail": "injected fault"}'
            conn.sendall(_response(500, "Internal Server Error", [], body))
            return True
        status, reason, headers, body = self._forward(request)
        with self._forwarded_cond:
            self.forwarded += 1
            self._forwarded_cond.notify_all()
        if fault == "502":
            conn.sendall(_response(502, "Bad Gateway", [], b"injected fault"))
            return True
        wire = _response(status, reason, headers, body)
        if fault == "reset":
            conn.sendall(wire[: max(1, len(wire) // 2)])
            _reset(conn)
            return False
        if fault == "stall":
            self.stalled.set()
            self._closing.wait(self.stall_limit)
            _reset(conn)
            return False
        if fault == "slow":
            self._closing.wait(self.slow_delay)
        conn.sendall(wire)
        return True

    def _forward(self, request: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        head, _, body = request.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if line]
        upstream = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP:
                    upstream.putheader(name, value)
            upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body)
            resp = upstream.getresponse()
            data = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
            return resp.status, resp.reason, out, data
        except OSError:
            return 502, "Bad Gateway", [], b"platform unreachable"
        finally:
            upstream.close()


def _read_request(reader) -> bytes | None:
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = reader.readline(65537)
        if not line:
            return None
        head += line
        if len(head) > 1 << 20:
            raise ValueError("request head too large")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = reader.read(length) if length else b""
    return head + body


def _response(status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers]
    lines += [f"Content-Length: {len(body)}", "Connection: keep-alive", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body
