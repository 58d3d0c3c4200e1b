"""Issue 13, items 18 and 10: what ``/metrics`` costs.

18: the sync gauges used to scan the whole outbox, ten times a page on the event loop, and the
worker scanned it inside each confirmation's write transaction. The backlog is now counters
(``sync_counts``, kept by triggers); these tests check the counters against a full scan
through every change a row goes through, and that an outbox made before them is counted once.
10: the hand-written HTTP server held half-open connections 10 s each without a cap. Real
sockets open and hold here."""

import asyncio
import logging
import socket

from gateway.metrics import HttpServer
from gateway.store.db import open_db
from gateway.sync.outbox import (
    Event,
    Summary,
    backlog,
    enqueue_events,
    enqueue_summaries,
    migrations,
    prune_synced,
)

SCAN = (
    "SELECT coalesce(sum(kind = 'event' AND synced_version < version AND rejected IS NULL), 0),"
    " coalesce(sum(kind = 'summary' AND synced_version < version AND rejected IS NULL), 0),"
    " coalesce(sum(inflight IS NOT NULL), 0), coalesce(sum(rejected IS NOT NULL), 0),"
    " coalesce(sum(synced_version = version), 0),"
    " min(CASE WHEN synced_version < version AND rejected IS NULL THEN time END)"
    " FROM sync_outbox"
)


def counted(db) -> tuple:
    b = backlog(db)
    return (b.pending_events, b.pending_summaries, b.inflight, b.rejected, b.synced,
            b.oldest_pending)  # fmt: skip


def sums(hour0: int, n: int, mean: float = 50.0) -> list[Summary]:
    return [Summary("lamp-001", "p", hour0 + 3600 * k, 60, 1, 99, mean) for k in range(n)]


def test_backlog_counters_follow_every_change_of_a_row(tmp_path):
    db = open_db(tmp_path / "gw.db")
    h0 = 1_700_000_000 // 3600 * 3600
    enqueue_summaries(db, sums(h0, 10))
    enqueue_events(db, [Event("lamp-001", "p", h0, None, "stuck", 3.0, "stuck")])
    assert counted(db) == tuple(db.execute(SCAN).fetchone()) == (1, 10, 0, 0, 0, h0)
    with db.atomic():  # the sender's steps: inflight, confirmed, refused
        db.execute("UPDATE sync_outbox SET inflight = 1 WHERE time < ?", [h0 + 4 * 3600])
        db.execute(
            "UPDATE sync_outbox SET synced_version = version, inflight = NULL, obs_id = 'x'"
            " WHERE time < ? AND kind = 'summary'",
            [h0 + 3 * 3600],
        )
        db.execute("UPDATE sync_outbox SET rejected = 'no' WHERE time = ?", [h0 + 9 * 3600])
    assert counted(db) == tuple(db.execute(SCAN).fetchone())
    enqueue_summaries(db, sums(h0, 2, mean=51.0))  # late readings: two synced hours re-versioned
    enqueue_summaries(db, sums(h0 + 9 * 3600, 1, mean=52.0))  # a rejected one changed: owed again
    assert counted(db) == tuple(db.execute(SCAN).fetchone())
    assert backlog(db).pending_summaries == 10 - 3 + 2  # 7 never sent, 2 corrected; 9 again owed
    prune_synced(db, h0 + 100 * 3600)
    assert counted(db) == tuple(db.execute(SCAN).fetchone())
    # The cursor: every row enqueued up to it is confirmed.
    first_owed = db.execute(
        "SELECT min(enq) FROM sync_outbox WHERE synced_version < version AND rejected IS NULL"
    ).fetchone()[0]
    assert backlog(db).cursor == first_owed - 1


def test_an_outbox_made_before_the_counters_is_counted_once(tmp_path):
    """An upgrade: the outbox has rows and no counters; the migration counts it (the only
    scan), and from then on the triggers keep the count."""
    db = open_db(tmp_path / "gw.db")
    h0 = 1_700_000_000 // 3600 * 3600
    for name in ("sync_counts_insert", "sync_counts_update", "sync_counts_delete"):
        db.execute(f"DROP TRIGGER {name}")
    db.execute("DROP TABLE sync_counts")
    db.execute("DROP INDEX sync_outbox_pending_enq")
    db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm002_counts'")
    enqueue_summaries(db, sums(h0, 5))
    db.execute("UPDATE sync_outbox SET synced_version = version WHERE time < ?", [h0 + 7200])
    db.conn.commit()
    migrations.apply(db)
    assert counted(db) == tuple(db.execute(SCAN).fetchone()) == (0, 3, 0, 0, 2, h0 + 7200)


# -- item 10: the /metrics server's connections ---------------------------------------------


async def ok_page() -> tuple[int, str, bytes]:
    return 200, "text/plain", b"ok\n"


def get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        chunks = []
        while chunk := s.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


async def hold_and_scrape(cap: int, held: int) -> dict:
    server = HttpServer({"/metrics": ok_page}, max_connections=cap, head_timeout=30.0)
    port = await server.start("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    socks = []
    try:
        for _ in range(held):  # half-open: connected, never a request line
            s = socket.socket()
            s.setblocking(False)
            await loop.sock_connect(s, ("127.0.0.1", port))
            socks.append(s)
        await server.wait_connections(cap)  # the server took the first `cap` of them
        # Over the cap: closed at once, so the peer reads end-of-file, not a 10-s wait.
        closed = 0
        for s in socks[cap:]:
            if await asyncio.wait_for(loop.sock_recv(s, 1), 5) == b"":
                closed += 1
        busy = server.open_connections
        for s in socks:
            s.close()
        await server.wait_connections(0)
        page = await asyncio.to_thread(get, port)  # the held ones gone, a scrape works again
        return {"closed": closed, "busy": busy, "page": page, "refused": server.refused}
    finally:
        for s in socks:
            s.close()
        await server.stop()


def test_connections_over_the_cap_are_closed_at_once_and_logged_rarely(caplog):
    with caplog.at_level(logging.WARNING, logger="reverbere.metrics"):
        out = asyncio.run(hold_and_scrape(cap=4, held=40))
    assert out["busy"] == 4 and out["closed"] == 36 and out["refused"] == 36
    assert out["page"].startswith(b"HTTP/1.1 200 OK") and out["page"].endswith(b"ok\n")
    lines = [r for r in caplog.records if r.name == "reverbere.metrics"]
    assert 1 <= len(lines) <= 2  # one line a minute, however many were refused


async def silent_client(timeout: float) -> float:
    server = HttpServer({"/metrics": ok_page}, head_timeout=timeout)
    port = await server.start("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    try:
        s = socket.socket()
        s.setblocking(False)
        await loop.sock_connect(s, ("127.0.0.1", port))
        t0 = loop.time()
        assert await asyncio.wait_for(loop.sock_recv(s, 1), 10) == b""
        s.close()
        return loop.time() - t0
    finally:
        await server.stop()


def test_a_silent_client_is_dropped_after_the_head_timeout():
    assert asyncio.run(silent_client(0.3)) < 3.0  # was 10 s a connection
