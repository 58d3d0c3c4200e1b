"""The node's status record, ``status.json``, for ``reverbere node doctor``.

One small JSON object, written atomically (``status.json.tmp``, then a rename) and rarely, to
spare the flash: at the first poll after boot, when the error state changes (at most once per
``_GAP`` seconds; a later change waits for the gap), every ``_EVERY`` seconds to refresh the
uptime, and when the node stops (Ctrl-C at the REPL, a crash: firmware/main.py)::

    {"boot": 3, "uptime_s": 3600, "acks": 57, "ack_s": 3540,
     "last_error": "gateway: timeout", "error_boot": 3, "error_s": 120}

``boot`` is the store's boot number; ``acks`` and ``ack_s`` count this boot's acknowledged
packs and say when the last one was (seconds since boot). ``last_error`` stays until another
error replaces it, across resets too, so a technician sees what went wrong even once the node
has recovered; ``error_boot``/``error_s`` say since when it failed that way.
"""

import json

FILE = "status.json"
_GAP = 300  # s: error changes are written at most this often
_EVERY = 3600  # s: the record is written at least this often


class Status:
    def __init__(self, fs, boot):
        self.fs = fs
        self.boot = boot
        self.acks = 0
        self.ack_s = None
        self.failing = False
        self.dirty = False
        self.at = None  # ms of the last write
        self.e = {}  # last_error, error_boot, error_s: carried over from the last record
        try:
            old = json.loads(fs.read(FILE) or "{}")
            for k in ("last_error", "error_boot", "error_s"):
                self.e[k] = old.get(k)
        except (ValueError, AttributeError):
            pass

    def note(self, err, now):
        """An outcome at ``now`` (ms since boot): None (a pack acknowledged) or an error text."""
        if err is None:
            self.acks += 1
            self.ack_s = now // 1000
            self.dirty = self.dirty or self.failing
        elif err != self.e.get("last_error") or not self.failing:
            self.e = {"last_error": err, "error_boot": self.boot, "error_s": now // 1000}
            self.dirty = True
        self.failing = err is not None

    def poll(self, now):
        """Write the record if it is due."""
        at = self.at
        if at is None or now - at >= _EVERY * 1000 or (self.dirty and now - at >= _GAP * 1000):
            self.write(now)

    def write(self, now):
        r = {"boot": self.boot, "uptime_s": now // 1000, "acks": self.acks, "ack_s": self.ack_s}
        r["last_error"] = None
        r.update(self.e)
        self.at = now
        self.dirty = False
        try:
            self.fs.write(FILE + ".tmp", json.dumps(r))
            self.fs.rename(FILE + ".tmp", FILE)
        except OSError:  # a full or failing flash must not stop the node: the record waits
            pass
