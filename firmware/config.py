"""The node's settings: firmware/config.json, checked against a schema, with defaults.

``load(text)`` returns a complete config dict or raises ``ConfigError`` whose message names the
key and what is expected, for the device console. ``apply(cfg, remote)`` merges the settings
the gateway sends in a 2.04 response; ``save(fs, cfg)`` writes atomically (temp file, rename).
"""

import json

from protocols.const import CHANNEL_NAMES

FILE = "config.json"
# The channels a node may sample: the gateway's list (it refuses a pack with any other, and the
# node would drop the whole pack), but those the node makes itself: "drop" (its count of
# dropped readings) and its firmware's "fw", "fwt", "fwx" (firmware/node.py, docs/ota.md).
CHANNELS = tuple(c for c in CHANNEL_NAMES if c not in ("drop", "fw", "fwt", "fwx"))

# (key, default, kind, low, high), in this order. A default of None means the key is required.
SCHEMA = (
    ("node", None, "str", 1, 32),  # node id, sent as the COSE kid
    ("key", None, "hex", 32, 32),  # 32-byte HMAC key, 64 hex digits
    ("gateway", None, "str", 1, 253),  # gateway host name or address
    ("port", 5683, "int", 1, 65535),
    ("channels", {"p": 60}, "chans", 1, 86400),  # channel -> sampling interval (s)
    ("pack", 10, "int", 1, 64),  # readings per pack
    ("deadline", 600, "int", 1, 86400),  # longest a reading waits before a pack goes (s)
    ("spread", 10, "int", 0, 600),  # a ready pack waits a random part of this (s)
    ("first", False, "bool", 0, 0),  # send the first reading after boot at once
    ("backoff", 10, "int", 1, 3600),  # first back-off when the gateway is away (s)
    ("backoff_max", 900, "int", 1, 86400),  # back-off cap (s)
    ("sync_time", True, "bool", 0, 0),  # take the gateway's time from 2.04 responses
    ("store_kb", 64, "int", 1, 1024),  # flash for the reading ring
    ("wdt_ms", 30000, "int", 1000, 600000),  # watchdog timeout
    ("wifi", {}, "dict", 0, 0),  # {"ssid": ..., "password": ...}
    ("hw", {}, "dict", 0, 0),  # board wiring, see docs/firmware.md
)
KEYS = tuple(s[0] for s in SCHEMA)
# What the gateway may change remotely.
REMOTE = ("channels", "pack", "deadline", "spread", "backoff", "backoff_max")


class ConfigError(ValueError):
    pass


def _check(key, v, kind, lo, hi):
    bad = None
    if kind == "int":
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            bad = "an integer from %d to %d" % (lo, hi)
    elif kind == "str":
        if not isinstance(v, str) or not lo <= len(v) <= hi:
            bad = "a text of %d to %d characters" % (lo, hi)
    elif kind == "hex":
        try:
            if len(bytes.fromhex(v)) != lo:
                raise ValueError
        except (TypeError, ValueError):
            bad = "%d hex digits" % (2 * lo)
    elif kind == "bool":
        if not isinstance(v, bool):
            bad = "true or false"
    elif kind == "dict":
        if not isinstance(v, dict):
            bad = "an object"
    else:  # chans
        if not isinstance(v, dict) or not v:
            bad = "an object of channel: seconds"
        else:
            for ch in v:
                if ch not in CHANNELS:
                    bad = "channels among %s" % ", ".join(CHANNELS)
                else:
                    _check("channels." + ch, v[ch], "int", lo, hi)
    if bad:
        raise ConfigError("config.json: %r must be %s (got %r)" % (key, bad, v))


def validate(cfg, keys=None):
    """Check the keys of ``cfg`` (all schema keys by default); fill defaults; return cfg."""
    if not isinstance(cfg, dict):
        raise ConfigError("config.json: expected a JSON object")
    for k in cfg:
        if k not in KEYS:
            raise ConfigError("config.json: unknown key %r (known: %s)" % (k, ", ".join(KEYS)))
    for k, default, kind, lo, hi in SCHEMA:
        if keys is not None and k not in keys:
            continue
        if k not in cfg:
            if default is None:
                raise ConfigError("config.json: %r is required" % k)
            cfg[k] = dict(default) if isinstance(default, dict) else default
        _check(k, cfg[k], kind, lo, hi)
    return cfg


def load(text):
    """Parse and validate config.json's text."""
    try:
        cfg = json.loads(text)
    except ValueError:
        raise ConfigError("config.json: not valid JSON") from None
    return validate(cfg)


def apply(cfg, remote):
    """Merge the gateway's settings (a dict) into ``cfg``; return True if anything changed.

    ``"interval": s`` sets every channel's interval. Bad or unknown settings are ignored as a
    whole, so that a gateway cannot break a node.
    """
    if not isinstance(remote, dict):
        return False
    new = {}
    for k in remote:
        if k == "interval":
            new["channels"] = dict.fromkeys(cfg["channels"], remote[k])
        elif k in REMOTE:
            new[k] = remote[k]
    try:
        validate(new, list(new))
    except ConfigError:
        return False
    changed = False
    for k in new:
        if cfg[k] != new[k]:
            cfg[k] = new[k]
            changed = True
    return changed


def save(fs, cfg):
    """Write config.json atomically: a power loss leaves the old or the new file, whole."""
    fs.write(FILE + ".tmp", json.dumps(cfg))
    fs.rename(FILE + ".tmp", FILE)
