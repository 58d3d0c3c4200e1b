"""The raw backlog's status (``gateway.sync.raw.raw_backlog``) runs on the event loop for
/metrics and on the console's Passerelle page: it reads a bounded number of spans, and says
when its counts are floors rather than the whole backlog."""

from gateway.store.db import open_db
from gateway.sync import raw


def spans(db, count, rejected_every=0):
    with db.conn:
        db.conn.executemany(
            "INSERT INTO sync_raw (node, channel, first, last, n, inflight, rejected)"
            " VALUES (?, 'p', ?, ?, 10, ?, ?)",
            [(i, 1e9 + i, 1e9 + i + 50, 1 if i < 3 else None,
              "refusé" if rejected_every and i % rejected_every == 0 else None)
             for i in range(count)],
        )  # fmt: skip


def test_the_backlog_counts_owed_set_aside_and_in_flight_spans(tmp_path):
    db = open_db(tmp_path / "gw.db")
    spans(db, 100, rejected_every=10)
    b = raw.raw_backlog(db)
    assert (b.pending, b.rejected, b.inflight, b.oldest, b.complete) == (
        900, 100, 3, 1e9 + 1, True,
    )  # fmt: skip


def test_beyond_its_bound_the_backlog_is_a_floor_and_says_so(tmp_path, monkeypatch):
    db = open_db(tmp_path / "gw.db")
    spans(db, 100)
    monkeypatch.setattr(raw, "STATUS_SPANS", 40)
    b = raw.raw_backlog(db)
    # the 40 oldest spans' readings: the oldest reading owed is still exact
    assert (b.pending, b.oldest, b.complete) == (400, 1e9, False)
