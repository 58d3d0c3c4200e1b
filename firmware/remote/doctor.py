# Run on a board over the raw REPL by `reverbere node doctor` (gateway/provision/flash.py),
# which then calls these functions with paths it checked. Sent as remote/helpers.py is.
import json
import os
import sys


def _rb_config(path):
    # The node's config without its key: the key never crosses the cable.
    try:
        with open(path) as f:
            c = json.load(f)
    except (OSError, ValueError):
        c = {}
    k = c.pop("key", None)
    print(json.dumps([c, bool(k)]))


class _RO:
    # The reading ring's file as the store's flash device, read-only: writes are dropped.
    def __init__(self, p):
        self.f = open(p, "rb")  # noqa: SIM115 - open while the Store reads
        self.size = os.stat(p)[6]

    def readinto(self, off, buf):
        self.f.seek(off)
        self.f.readinto(buf)

    def write(self, off, data):
        pass


def _rb_store(slot_dir, ring):
    # The firmware's own Store (from the slot the node boots) reads its ring.
    sys.path.insert(0, slot_dir)
    from firmware.store import Store

    st = Store(_RO(ring))
    try:
        print(
            repr(
                {
                    "pending": st.pending(),
                    "capacity": st.n,
                    "dropped": st.drops,
                    "boot": st.boot - 1,
                    "counter": st.limit,
                }
            )
        )
    finally:
        st.dev.f.close()
