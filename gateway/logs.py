"""Structured logs: one JSON object per line when not on a terminal, and rate-limited rejections.

Every log call may carry fields in ``extra={"fields": {...}}``; the JSON formatter writes them
as top-level keys. ``RateLimiter`` lets a rejection be logged once per node per minute while
every rejection is still counted in metrics; ``LimitFilter`` puts a library's logger (aiocoap's)
behind the same limiter, so that every line a peer can provoke shares one budget.
"""

import json
import logging
import sys
import time
from collections import OrderedDict
from typing import Any, TextIO

log = logging.getLogger("reverbere")


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "logger": ..., "msg": ..., <fields>}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable: time, level, message, then ``key=value`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname.lower():<7} {record.getMessage()}"
        if tail:
            line += " " + tail
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Send the ``reverbere`` and ``coap`` loggers to ``stream`` (stderr) in ``fmt``."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # libraries (aiocoap) only say what matters
    logging.getLogger("reverbere").setLevel(level.upper())


def event(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    """Log ``msg`` with structured ``fields``."""
    logger.log(level, msg, extra={"fields": fields})


class RateLimiter:
    """Says whether an event for ``key`` may be logged now: at most ``burst`` times per
    ``period`` seconds (default once).

    Counts what it held back, so the next line can say how many were suppressed. Bounded: keeps
    at most ``max_keys`` keys (the oldest go first), so a flood of forged node ids cannot grow it.
    """

    def __init__(self, period: float = 60.0, max_keys: int = 10000, burst: int = 1):
        self.period = period
        self.max_keys = max_keys
        self.burst = burst
        # key -> [start of the current period, events allowed in it, suppressed since]
        self._last: OrderedDict[Any, list] = OrderedDict()

    def allow(self, key: Any, now: float | None = None) -> int | None:
        """None to stay quiet; else the number of events suppressed since the last line."""
        now = time.monotonic() if now is None else now
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self.period:
            if entry[1] < self.burst:
                entry[1] += 1
                suppressed, entry[2] = entry[2], 0
                return suppressed
            entry[2] += 1
            return None
        suppressed = entry[2] if entry else 0
        self._last[key] = [now, 1, 0]
        self._last.move_to_end(key)
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        return suppressed


class LimitFilter(logging.Filter):
    """A logging filter that lets a record through only when ``limiter`` allows ``key``.

    For loggers the gateway does not call itself (aiocoap warns once per unparsable datagram
    and logs a traceback per failed rendering): sharing the ingest's limiter keeps what a
    hostile peer can make the gateway write to the same number of lines a minute. A record
    let through says how many were held back before it (field ``suppressed``)."""

    def __init__(self, limiter: RateLimiter, key: Any = "all"):
        super().__init__()
        self.limiter = limiter
        self.key = key

    def filter(self, record: logging.LogRecord) -> bool:
        suppressed = self.limiter.allow(self.key)
        if suppressed is None:
            return False
        if suppressed:
            record.fields = {**getattr(record, "fields", {}), "suppressed": suppressed}
        return True
