"""Structured logs: one JSON object per line, and the limiter that keeps rejections quiet."""

import io
import json
import logging

from gateway import logs


def test_json_lines_carry_the_fields(monkeypatch):
    stream = io.StringIO()
    logs.setup("info", "json", stream)
    logs.event(logging.getLogger("reverbere.test"), logging.WARNING, "pack rejected", node="n1")
    rec = json.loads(stream.getvalue().splitlines()[-1])
    assert (rec["level"], rec["logger"], rec["msg"], rec["node"]) == (
        "warning",
        "reverbere.test",
        "pack rejected",
        "n1",
    )
    logging.getLogger().handlers.clear()


def test_limiter_allows_one_line_per_key_and_period_and_counts_the_rest():
    lim = logs.RateLimiter(60.0)
    assert lim.allow("n1", now=0) == 0
    assert lim.allow("n1", now=10) is None
    assert lim.allow("n1", now=59) is None
    assert lim.allow("n2", now=59) == 0  # another node has its own minute
    assert lim.allow("n1", now=61) == 2  # the next line says how many were held back


def test_limiter_with_a_burst_and_bounded_keys():
    lim = logs.RateLimiter(60.0, max_keys=3, burst=2)
    assert [lim.allow("all", now=0), lim.allow("all", now=1), lim.allow("all", now=2)] == [
        0,
        0,
        None,
    ]
    for i in range(10):
        lim.allow(f"forged-{i}", now=5)
    assert len(lim._last) == 3
