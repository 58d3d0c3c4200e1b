"""Hardening issue 13, items 6, 7 and 9: what the SensorThings target does with hostile or
broken answers. The platform here is a real HTTP server on loopback (http.server in a
thread) that answers what each test tells it to; nothing is mocked on the gateway's side.

- 6: ``@iot.nextLink`` is followed on the platform's own origin only (the bearer token goes
  with every request), never in a loop, at most ``MAX_PAGES`` pages;
- 7: answers are streamed and given up beyond ``MAX_ANSWER_BYTES`` received or
  decompressed (a 400 KB gzip answer once took the gateway to 1.29 GB);
- 9: only the status the protocol defines as success confirms anything: a 302 carrying a
  JSON list of links once marked the outbox rows as synced.
"""

import contextlib
import gzip
import json
import threading
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gateway.store.db import open_db
from gateway.sync.budget import Budget
from gateway.sync.outbox import enqueue_summaries
from gateway.sync.sensorthings import MAX_ANSWER_BYTES, MAX_PAGES, SensorThingsTarget
from gateway.sync.target import BadAnswer
from gateway.sync.worker import SyncWorker
from tests.sync_helpers import locations, week_of_summaries

Handler = Callable[[BaseHTTPRequestHandler], None]


class Hostile:
    """An HTTP/1.1 server on ``host`` (loopback) that answers every request with
    ``self.answer(handler)`` and records ``(method, path, Authorization)`` of each."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.answer: Handler = lambda h: _json(h, 200, {"value": []})
        self.requests: list[tuple[str, str, str | None]] = []
        outer = self

        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.requests.append((self.command, self.path, self.headers.get("Authorization")))
                # The gateway giving up reading is what some of these tests want.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    outer.answer(self)

            do_GET = do_POST = do_PATCH = do_DELETE = _any

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), _H)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _json(h: BaseHTTPRequestHandler, status: int, body: object, **headers: str) -> None:
    data = json.dumps(body).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    for k, v in headers.items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(data)


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    yield server
    server.close()


@pytest.fixture
def elsewhere() -> Iterator[Hostile]:
    """A second host: another loopback address, so another origin."""
    server = Hostile("127.0.0.2")
    yield server
    server.close()


def _target(tmp_path: Path, server: Hostile) -> SensorThingsTarget:
    db = open_db(tmp_path / "gw.db")
    return SensorThingsTarget(
        server.origin + "/v1.1", db, Budget(db, None), token="s3cret", locations=locations(2)
    )


# -- 6: @iot.nextLink ------------------------------------------------------------------------


def test_next_link_to_another_host_is_not_followed(tmp_path, hostile, elsewhere):
    # The token must never reach a host that is not the platform's.
    foreign = elsewhere.origin + "/collect?page=2"
    hostile.answer = lambda h: _json(h, 200, {"value": [], "@iot.nextLink": foreign})
    target = _target(tmp_path, hostile)
    with pytest.raises(BadAnswer, match="leads off the platform"):
        list(target.pages("Things"))
    target.close()
    assert elsewhere.requests == []
    assert len(hostile.requests) == 1


def test_next_link_on_another_port_is_another_origin(tmp_path, hostile, elsewhere):
    other_port = f"http://127.0.0.1:{elsewhere.server.server_address[1]}/collect"
    hostile.answer = lambda h: _json(h, 200, {"value": [], "@iot.nextLink": other_port})
    target = _target(tmp_path, hostile)
    with pytest.raises(BadAnswer, match="leads off the platform"):
        list(target.pages("Things"))
    target.close()
    assert elsewhere.requests == []


def test_next_link_in_a_loop_stops_at_the_second_visit(tmp_path, hostile):
    # The platform that once took 1,012 requests in 45 s: a page that links to itself.
    hostile.answer = lambda h: _json(
        h, 200, {"value": [], "@iot.nextLink": hostile.origin + "/v1.1/Things?$skip=0"}
    )
    target = _target(tmp_path, hostile)
    with pytest.raises(BadAnswer, match="loops"):
        list(target.pages("Things"))
    target.close()
    assert len(hostile.requests) == 2


def test_next_link_on_and_on_stops_at_max_pages(tmp_path, hostile):
    def endless(h: BaseHTTPRequestHandler) -> None:
        n = len(hostile.requests)
        _json(h, 200, {"value": [], "@iot.nextLink": f"{hostile.origin}/v1.1/Things?$skip={n}"})

    hostile.answer = endless
    target = _target(tmp_path, hostile)
    with pytest.raises(BadAnswer, match=f"after {MAX_PAGES} pages"):
        list(target.pages("Things"))
    target.close()
    assert len(hostile.requests) == MAX_PAGES
    assert all(auth == "Bearer s3cret" for _, _, auth in hostile.requests)


def test_next_link_behind_a_proxy_is_rebased_on_the_root(tmp_path, hostile, elsewhere):
    # A platform behind a reverse proxy writes its internal address in its links: the
    # link's path under the version segment is kept, the request goes to the root given.
    pages = iter([{"value": [1], "@iot.nextLink": elsewhere.origin + "/v1.1/Things?$skip=1"}])
    hostile.answer = lambda h: _json(h, 200, next(pages, {"value": [2]}))
    target = _target(tmp_path, hostile)
    assert [p["value"] for p in target.pages("Things")] == [[1], [2]]
    target.close()
    assert elsewhere.requests == []
    assert hostile.requests[1][1] == "/v1.1/Things?$skip=1"


# -- 7: bounded answers ----------------------------------------------------------------------


def test_a_gzip_bomb_is_given_up_without_inflating_it(tmp_path, hostile):
    # 64 MB of zeros is 64 KB gzipped: the gateway must stop at MAX_ANSWER_BYTES and never
    # hold the whole of it (traced: before the fix, its peak was the 64 MB answer).
    bomb = gzip.compress(b"{" + b" " * (64 << 20), compresslevel=9, mtime=0)

    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Encoding", "gzip")
        h.send_header("Content-Length", str(len(bomb)))
        h.end_headers()
        h.wfile.write(bomb)

    hostile.answer = answer
    target = _target(tmp_path, hostile)
    tracemalloc.start()
    try:
        with pytest.raises(BadAnswer, match="over 16 MB"):
            list(target.pages("Things"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    target.close()
    assert peak < MAX_ANSWER_BYTES * 2.5, f"peak {peak >> 20} MB"
    assert target.budget.use().received > 0  # what did arrive is counted


def test_an_endless_plain_answer_is_given_up(tmp_path, hostile):
    # No Content-Length, no end: the gateway stops reading past the cap and hangs up.
    chunk = b" " * 65536

    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(b"[")
        for _ in range((MAX_ANSWER_BYTES // len(chunk)) * 4):
            h.wfile.write(chunk)

    hostile.answer = answer
    target = _target(tmp_path, hostile)
    with pytest.raises(BadAnswer, match="over 16 MB"):
        target.request("GET", "Things")
    target.close()


def test_an_answer_within_the_cap_is_read_whole(tmp_path, hostile):
    value = [{"@iot.id": i, "name": f"lamp-{i:03d}"} for i in range(20000)]
    raw = json.dumps({"value": value}).encode()
    body = zlib.compress(raw)

    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Encoding", "deflate")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    hostile.answer = answer
    target = _target(tmp_path, hostile)
    assert [p["value"] for p in target.pages("Things")] == [value]
    target.close()


# -- 9: what confirms a row --------------------------------------------------------------------


def _owing(tmp_path: Path, hostile: Hostile) -> tuple[SyncWorker, SensorThingsTarget]:
    """A worker owing 4 summaries of lamp-000/p, whose Datastream id 7 it already knows."""
    target = _target(tmp_path, hostile)
    db = target.db
    enqueue_summaries(db, [s for s in week_of_summaries(1, hours=4) if s.channel == "p"])
    db["sync_streams"].insert_all(
        [
            {"node": "lamp-000", "stream": s, "target": target.url, "entity_id": e}
            for s, e in (("", "3"), ("p", "7"))
        ]
    )
    return SyncWorker(db, target, target.budget, batch_rows=100, backoff_base=0.01), target


def _links(n: int, origin: str) -> list[str]:
    return [f"{origin}/v1.1/Observations({i})" for i in range(1, n + 1)]


@pytest.mark.parametrize("status", [302, 200, 204])
def test_only_a_201_confirms_created_observations(tmp_path, hostile, status):
    # A login proxy's 302 with a JSON list (or a 200 from something that is not the
    # platform) used to confirm every row: nothing may be confirmed from it.
    def answer(h: BaseHTTPRequestHandler) -> None:
        if h.command == "POST":
            where = {"Location": hostile.origin + "/login"} if status == 302 else {}
            _json(h, status, _links(4, hostile.origin), **where)
        else:  # the read-back finds nothing
            _json(h, 200, {"value": []})

    hostile.answer = answer
    worker, target = _owing(tmp_path, hostile)
    assert worker.step() == "failed"
    rows = list(target.db.query("SELECT synced_version, obs_id, inflight FROM sync_outbox"))
    assert [(r["synced_version"], r["obs_id"]) for r in rows] == [(0, None)] * 4
    assert all(r["inflight"] is not None for r in rows)  # read back before sending again
    assert f"answered {status}" in (worker.last_error or "")
    assert "confirms nothing" in (worker.last_error or "")
    target.close()


def test_a_redirect_is_not_followed(tmp_path, hostile, elsewhere):
    hostile.answer = lambda h: _json(
        h, 307, {"value": []}, Location=elsewhere.origin + "/v1.1/Things"
    )
    target = _target(tmp_path, hostile)
    with pytest.raises(BadAnswer, match="not followed"):
        target.request("GET", "Things")
    target.close()
    assert elsewhere.requests == []


def test_a_201_still_confirms(tmp_path, hostile):
    def answer(h: BaseHTTPRequestHandler) -> None:
        if h.command == "POST":
            _json(h, 201, _links(4, hostile.origin))
        else:
            _json(h, 200, {"value": []})

    hostile.answer = answer
    worker, target = _owing(tmp_path, hostile)
    assert worker.step() == "sent"
    rows = list(target.db.query("SELECT synced_version, obs_id FROM sync_outbox ORDER BY time"))
    assert [r["obs_id"] for r in rows] == ["1", "2", "3", "4"]
    target.close()
