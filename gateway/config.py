"""The gateway's TOML configuration: defaults, checks, and errors that name file, line and key.

``load(path)`` returns a ``Config``. Every section this module knows is checked key by key
(unknown keys, wrong types and out-of-range values are errors: every number has a range, so
a typo such as ``commit_delay_ms = 1000000000000000`` cannot pass for a setting); the
sections of the stages after the store (``STAGE_SECTIONS``) are kept in ``Config.raw`` for
the stages that own them (``Config.section(name)``), which check them; any other table is
an error, so a misspelled ``[stroe]`` is not silently ignored. A new stage adds its section's
name to ``STAGE_SECTIONS``. Relative paths are relative to the directory of the config file.
``TEMPLATE`` is the commented file ``gateway init`` writes.
"""

import logging
import re
import secrets
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("reverbere.config")


class ConfigError(ValueError):
    """A configuration file is unreadable or holds a bad value; ``str()`` says where."""

    def __init__(self, path: str | Path, line: int | None, key: str | None, message: str):
        self.path = str(path)
        self.line = line
        self.key = key
        self.message = message
        where = self.path + (f":{line}" if line else "")
        super().__init__(f"{where}: {key + ': ' if key else ''}{message}")


@dataclass(frozen=True)
class Config:
    """The checked configuration. Times in seconds, sizes in bytes."""

    path: Path  # the file it came from (or a notional one)
    database: Path
    coap_host: str = "::"
    coap_port: int = 5683
    http_host: str = "127.0.0.1"
    http_port: int = 9683
    http_metrics_public: bool = True  # /metrics without logging in (docs/console.md)
    http_session: float = 480 * 60.0  # a console session ends this long after login
    http_behind_tls: bool = False  # a TLS proxy serves the console: cookies get Secure
    max_payload: int = 1024  # bytes of COSE_Mac0; more gets 4.13
    max_future: float = 600.0  # a reading may be this far ahead of the gateway's clock
    max_past: float = 400 * 86400.0  # and this far behind it
    dedup_lifetime: float = 60.0  # seconds a CoAP response is kept for retransmissions
    dedup_max: int = 20000  # and at most this many of them
    commit_max_packs: int = 128  # a group commit takes at most this many packs
    commit_delay: float = 0.001  # and waits at most this long for more to arrive
    max_queue: int = 2000  # packs waiting for a commit; beyond it the gateway answers 5.03
    disk_budget: int = 1 << 30  # bytes the database may use
    min_free: int = 64 << 20  # bytes to leave free on the disk
    retry_after: int = 60  # Max-Age of a 5.03, seconds
    retention_days: float = 30.0
    log_level: str = "info"
    log_format: str = "auto"  # auto (JSON unless a TTY), json, text
    node_defaults: dict[str, Any] = field(default_factory=lambda: {"interval": 60, "pack": 10})
    node_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def node_config(self, node_id: str) -> dict[str, Any]:
        """The settings sent to ``node_id`` in each 2.04 (defaults, then its overrides)."""
        over = self.node_overrides.get(node_id)
        return {**self.node_defaults, **over} if over else self.node_defaults

    def section(self, name: str) -> dict[str, Any]:
        """The raw table ``[name]`` of the file (empty if absent), for stages that own it."""
        return self.raw.get(name, {})

    def error(self, table: str, key: str | None, message: str) -> "ConfigError":
        """A ``ConfigError`` for ``table.key`` of a stage's section, with its line in the file
        when the file can be read (``key`` may be dotted, with element indices:
        ``mqtt.host`` in ``[sync]``, ``lighting[1].dim[0].percent`` in ``[detect]``)."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        dotted = table + ("." + key if key else "")
        return ConfigError(self.path, _key_line(text, table, key), dotted, message)


_PORT = (0, 65535)  # 0: any free port
_TIB_MB = 1 << 20  # a tebibyte in MB: the largest disk sizes taken

# section -> key -> (Config attribute, type, (minimum, maximum) or None, scale to the
# attribute's unit). The ranges are documented in docs/gateway.md; the reasons of the less
# obvious ones are beside them.
_KEYS: dict[str, dict[str, tuple[str, type, tuple[int, int] | None, float]]] = {
    "gateway": {"database": ("database", str, None, 1)},
    "coap": {
        "host": ("coap_host", str, None, 1),
        "port": ("coap_port", int, _PORT, 1),
        "max_payload": ("max_payload", int, (64, 65000), 1),  # one UDP datagram
        "max_future_s": ("max_future", int, (0, 86400), 1),
        "max_past_days": ("max_past", int, (1, 3650), 86400),
        # RFC 7252 section 4.8.2: EXCHANGE_LIFETIME is 247 s; an hour is plenty.
        "dedup_lifetime_s": ("dedup_lifetime", int, (1, 3600), 1),
        "dedup_max": ("dedup_max", int, (0, 1_000_000), 1),  # ~0.5 KB each: 500 MB at most
    },
    "http": {
        "host": ("http_host", str, None, 1),
        "port": ("http_port", int, _PORT, 1),
        "metrics_public": ("http_metrics_public", bool, None, 1),
        # Five minutes to a week; a working day by default (docs/console.md).
        "session_minutes": ("http_session", int, (5, 7 * 24 * 60), 60),
        "behind_tls": ("http_behind_tls", bool, None, 1),
    },
    "store": {
        "commit_max_packs": ("commit_max_packs", int, (1, 10000), 1),
        # Every ack waits for its commit: beyond a second, nodes (ACK_TIMEOUT 2 s) retransmit.
        "commit_delay_ms": ("commit_delay", int, (0, 1000), 0.001),
        "max_queue": ("max_queue", int, (1, 1_000_000), 1),
        "disk_budget_mb": ("disk_budget", int, (1, _TIB_MB), 1 << 20),
        "min_free_mb": ("min_free", int, (0, _TIB_MB), 1 << 20),
        # Max-Age is a uint32 (RFC 7252 section 5.10.5); a node told to wait a day waits long.
        "retry_after_s": ("retry_after", int, (1, 86400), 1),
        "retention_days": ("retention_days", int, (1, 3650), 1),
    },
    "log": {"level": ("log_level", str, None, 1), "format": ("log_format", str, None, 1)},
}
_CHOICES = {
    "log_level": ("debug", "info", "warning", "error"),
    "log_format": ("auto", "json", "text"),
}
# What a node accepts (firmware/config.py's SCHEMA): seconds between samples, readings a pack.
_NODE_KEYS = {"interval": (1, 86400), "pack": (1, 64)}
# The tables of the stages after the store, checked by the stages that own them
# (gateway/service.py's pipeline_config): a new stage adds its table here.
STAGE_SECTIONS = ("site", "detect", "sync", "alerts")
_TABLES = (*_KEYS, "node_defaults", "nodes", *STAGE_SECTIONS)
# Keys whose values are secrets: a config holding one should be readable by its owner only.
_SECRET_KEYS = re.compile(r"(password|token|secret)$")


def _key_line(text: str, table: str, key: str | None) -> int | None:
    """The line of ``key`` in ``[table]`` (or of the table header when ``key`` is None); both
    dotted, with the index of an array of tables' element in brackets
    (``detect.lighting[1].switch_off[0]``, ``from``). A key the file does not spell out (a
    missing one, or one inside an inline table) gets the line of the nearest table or key
    above it that it does, so that every error of a table that is in the file has a line."""
    where = _key_lines(text)
    path = _path(table) + (_path(key) if key else ())
    while path:
        if path in where:
            return where[path]
        path = path[:-1]
    return None


_PART = re.compile(r'"((?:[^"\\]|\\.)*)"|\'([^\']*)\'|\[(\d+)\]|([^.\[\]"\'\s]+)')
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_BARE_OR_QUOTED = r"(?:\"(?:[^\"\\]|\\.)*\"|'[^']*'|[A-Za-z0-9_\-]+)"
_KEY = re.compile(rf"^\s*({_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*)\s*=")


def _path(dotted: str) -> tuple[str | int, ...]:
    """``'nodes."lamp-1".pack'`` -> ``("nodes", "lamp-1", "pack")``; ``"lighting[1].dim"`` ->
    ``("lighting", 1, "dim")``: the names of a TOML dotted key and the element indices of
    the keys the stages report (``DetectConfigError.key``)."""
    out: list[str | int] = []
    for m in _PART.finditer(dotted):
        quoted, literal, index, bare = m.groups()
        if index is not None:
            out.append(int(index))
        else:
            out.append(next(p for p in (quoted, literal, bare) if p is not None))
    return tuple(out)


def _key_lines(text: str) -> dict[tuple[str | int, ...], int]:
    """Where each table and key of the TOML ``text`` is: its path (``_path``) -> line. The
    n-th ``[[a.b]]`` header is ``("a", "b", n - 1)``, and a header below it (``[[a.b.c]]``)
    belongs to that last element, as TOML reads them (TOML 1.0, "Array of Tables")."""
    lines: dict[tuple[str | int, ...], int] = {}
    implicit: set[tuple[str | int, ...]] = set()  # tables only a deeper header names
    counts: dict[tuple[str | int, ...], int] = {}  # an array of tables -> its elements so far
    table: tuple[str | int, ...] = ()
    in_string = ""  # the delimiter of the multi-line string being read, if any
    for number, line in enumerate(text.splitlines(), 1):
        if in_string:
            if in_string in line:
                in_string = ""
            continue
        header = _HEADER.match(line)
        if header:
            names = _path(header.group(2))
            array = header.group(1) == "[["
            path: tuple[str | int, ...] = ()
            for i, name in enumerate(names):
                path += (name,)
                if array and i == len(names) - 1:
                    counts[path] = counts.get(path, 0) + 1
                if path in counts:  # an element of an array of tables: the last one
                    path += (counts[path] - 1,)
            for k in range(1, len(path)):
                if path[:k] not in lines:
                    lines[path[:k]] = number
                    implicit.add(path[:k])
            if path not in lines or path in implicit:
                lines[path] = number
                implicit.discard(path)
            table = path
            continue
        key = _KEY.match(line)
        if key:
            lines.setdefault(table + _path(key.group(1)), number)
            rest = line[key.end() :]
            for delim in ('"""', "'''"):
                if rest.count(delim) % 2:
                    in_string = delim
                    break
    return lines


def _table_line(text: str, table: str) -> int | None:
    """The line of the first header ``[table]`` or ``[table.sub]`` (``[[table]]`` too)."""
    header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]")
    for i, line in enumerate(text.splitlines(), 1):
        m = header.match(line)
        if m:
            name = m.group(1).replace('"', "").replace(" ", "")
            if name == table or name.startswith(table + "."):
                return i
    return None


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read and check the config at ``path``; raise ``ConfigError`` naming file, line, key.

    ``overrides`` (attribute -> value, e.g. from ``--coap``) replace what the file says.
    Logs a warning when the file holds a secret (a ``password``, ``token``...) and every
    user of the machine can read it.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(path, None, None, f"cannot read: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            path, line, None, f"not UTF-8 text (byte 0x{data[e.start]:02x}): save it as UTF-8"
        ) from None
    cfg = loads(text, path, overrides)
    _warn_if_exposed(path, cfg.raw)
    return cfg


def _warn_if_exposed(path: Path, raw: dict[str, Any]) -> None:
    """Warn when ``path`` holds a secret and is readable by others (the sync token, say)."""
    secrets = _secrets(raw)
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if secrets and mode & stat.S_IROTH:
        log.warning(
            "%s holds %s and every user of this machine can read it: chmod 600 %s",
            path,
            secrets[0],
            path,
        )


def _secrets(table: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of the secret-valued keys in ``table``, at any depth."""
    out = []
    for key, value in table.items():
        if isinstance(value, dict):
            out += _secrets(value, f"{prefix}{key}.")
        elif _SECRET_KEYS.search(key) and value:
            out.append(prefix + key)
    return out


def loads(text: str, path: str | Path = "gateway.toml", overrides: dict | None = None) -> Config:
    """Check the TOML ``text`` as if read from ``path`` (see ``load``)."""
    path = Path(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise ConfigError(path, int(m.group(1)) if m else None, None, msg) from None

    def fail(table: str, key: str | None, message: str) -> ConfigError:
        dotted = table + ("." + key if key else "")
        return ConfigError(path, _key_line(text, table, key), dotted, message)

    for name, value in raw.items():
        if name not in _TABLES:
            line = _table_line(text, name) if isinstance(value, dict) else _key_line(text, "", name)
            known = ", ".join(f"[{t}]" for t in _TABLES)
            raise ConfigError(path, line, name, f"unknown table (known: {known})")

    values: dict[str, Any] = {"path": path, "raw": raw}
    for section, keys in _KEYS.items():
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise fail(section, None, f"expected a table [{section}]")
        for key, value in table.items():
            if key not in keys:
                raise fail(section, key, "unknown key (known: " + ", ".join(sorted(keys)) + ")")
            attr, kind, limits, scale = keys[key]
            if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise fail(section, key, f"expected an integer, got {value!r}")
            if kind is bool and not isinstance(value, bool):
                raise fail(section, key, f"expected true or false, got {value!r}")
            if kind is str and not isinstance(value, str):
                raise fail(section, key, f"expected a string, got {value!r}")
            if limits is not None:
                _check_range(fail, section, key, value, *limits)
            if attr in _CHOICES and value not in _CHOICES[attr]:
                raise fail(section, key, "must be one of " + ", ".join(_CHOICES[attr]))
            values[attr] = value * scale if scale != 1 else value

    defaults = dict(Config.__dataclass_fields__["node_defaults"].default_factory())
    overrides_by_node: dict[str, dict[str, Any]] = {}
    for table_name in ("node_defaults", "nodes"):
        table = raw.get(table_name, {})
        if not isinstance(table, dict):
            raise fail(table_name, None, "expected a table")
    for key, value in raw.get("node_defaults", {}).items():
        _check_node_key(fail, "node_defaults", key, value)
        defaults[key] = value
    for node_id, table in raw.get("nodes", {}).items():
        if not isinstance(table, dict):
            raise fail("nodes", node_id, f"expected a table [nodes.{node_id}]")
        for key, value in table.items():
            _check_node_key(fail, "nodes." + node_id, key, value)
        overrides_by_node[node_id] = dict(table)
    values["node_defaults"] = defaults
    values["node_overrides"] = overrides_by_node

    database = Path(values.get("database", "reverbere.db"))
    values["database"] = database if database.is_absolute() else path.parent / database
    values.update(overrides or {})
    return Config(**values)


def _check_range(fail, table: str, key: str, value: int, low: int, high: int) -> None:
    if value < low:
        raise fail(table, key, f"must be at least {low}, got {value}")
    if value > high:
        raise fail(table, key, f"must be at most {high}, got {value}")


def _check_node_key(fail, table: str, key: str, value: Any) -> None:
    if key not in _NODE_KEYS:
        raise fail(table, key, "unknown node setting (known: " + ", ".join(_NODE_KEYS) + ")")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(table, key, f"expected a positive integer, got {value!r}")
    _check_range(fail, table, key, value, *_NODE_KEYS[key])


def with_gateway_id(text: str) -> str:
    """``text`` (a config from ``TEMPLATE``) with a new, random ``[sync] gateway_id``: node
    ids repeat from one town to the next, and a gateway finds its Things on a shared
    platform by this id (docs/sync.md), so ``gateway init`` makes a distinct one."""
    gateway_id = "gw-" + secrets.token_hex(4)
    return text.replace('# gateway_id = "default"  ', f'gateway_id = "{gateway_id}"', 1)


TEMPLATE = """\
# Réverbère gateway configuration. Every key is optional; the values shown are the defaults.
# Relative paths are relative to this file's directory. Sizes in MB, times as the key says.

[gateway]
database = "reverbere.db"      # the SQLite buffer (WAL mode)

[coap]                         # where the nodes post their readings (CoAP over UDP, path /r)
host = "::"                    # "::" is every address, IPv4 and IPv6
port = 5683
max_payload = 1024             # bytes; a larger message gets 4.13
max_future_s = 600             # readings further ahead of the gateway clock are refused (4.00)
max_past_days = 400            # and readings older than this
dedup_lifetime_s = 60          # a response is kept this long to answer CoAP retransmissions
dedup_max = 20000              # and at most this many, ~0.5 KB each (docs/gateway.md)

[http]                         # the web console and /metrics (docs/console.md)
host = "127.0.0.1"             # loopback; "0.0.0.0" to reach the console from the LAN
port = 9683
metrics_public = true          # /metrics without logging in (false: an API token)
session_minutes = 480          # a console session ends this long after login
behind_tls = false             # true when an HTTPS proxy serves the console (Secure cookies)

[store]
commit_max_packs = 128         # group commit: packs per transaction (one fsync each)
commit_delay_ms = 1            # how long an idle committer waits for more packs
max_queue = 2000               # packs waiting for a commit; beyond it nodes get 5.03
disk_budget_mb = 1024          # database size at which nodes get 5.03 instead of a full disk
min_free_mb = 64               # free disk space to keep
retry_after_s = 60             # Max-Age sent with a 5.03
retention_days = 30            # raw readings older than this go, once summarised and synced

[log]
level = "info"                 # debug, info, warning, error
format = "auto"                # auto (JSON unless on a terminal), json, text

[node_defaults]                # sent to every node in each 2.04 response
interval = 60                  # seconds between samples
pack = 10                      # readings per message

# [nodes."lamp-001"]           # per-node settings override the defaults
# interval = 30

[site]                         # where the town is: sunrise and sunset, local time, map position
latitude = 48.8566             # degrees north
longitude = 2.3522             # degrees east
timezone = "Europe/Paris"      # IANA name of the town's zone: schedules and reasons use it
# price_kwh = 0.2016           # € per kWh: the waste's cost (docs/reports.md)
# off_peak_price_kwh = 0.1470  # optional, with off_peak_hours: € per kWh in the off-peak hours
# off_peak_hours = ["22:00-06:00"]  # local times, HH:MM-HH:MM

[detect]                       # anomaly detection (docs/anomalies.md); [site] gives the place
threshold = 0.5                # THE one default threshold: a score at or above it opens an event
lamps = ["lamp-*"]             # node ids (glob patterns) that are street lights
lamp_on_watts = 5.0            # a lamp drawing more than this is lit
twilight_minutes = 30          # grace around sunrise and sunset for the lamp rules
# lamps_off = ["01:00", "05:00"]  # lamps are switched off at night in this window
drift_percent = 10.0           # a lit lamp drawing this much more than it learnt is drifting
silent_intervals = 5           # a node is silent after this many of its intervals...
silent_minutes = 30            # ...and at least this long
stuck_readings = 30            # identical readings in a row before a sensor counts as stuck

# [[detect.buildings]]         # meters with opening hours, one table per group
# nodes = ["school-*"]         # node ids (glob patterns)
# days = "mon-fri"             # "mon-fri", "mon,wed,fri", "daily"
# open = "07:30"               # local time
# close = "18:30"
# standby_watts = 400.0        # optional; learnt from the meter's out-of-hours use if absent

[sync]                         # the uplink to the municipal platform (docs/sync.md)
target = "none"                # "sensorthings", "mqtt", or "none" (no uplink)
# gateway_id = "default"      # this gateway's Things on the platform (docs/sync.md)
# url = "https://platform.example.org/v1.1"  # SensorThings service root
# token = "secret"             # bearer token; or username = "..." and password = "..."
# ca_file = "/etc/reverbere/platform-ca.pem"  # CA that signs the platform's certificate
# daily_budget = "5 MB"        # bytes a day (UTC) on a metered link; absent: no limit
timeout = 30.0                 # seconds per request
compress = "auto"              # gzip request bodies: auto, gzip, none
batch_rows = 2000              # Observations per CreateObservations request
backoff_base = 2.0             # seconds after the first failure, doubling...
backoff_cap = 600.0            # ...up to this (with jitter)
raw = false                    # raw readings too, after everything else: true, or ["p", "e"]
raw_interval = 300             # seconds between partial batches of raw readings

# [sync.locations]             # map positions [longitude, latitude] of the platform's Things;
# "lamp-001" = [2.3525, 48.857]  # nodes not listed are placed at the [site]

# [sync.mqtt]                  # with target = "mqtt"
# host = "127.0.0.1"
# port = 1883
# preset = "thingsboard"       # topic v1/gateway/telemetry and ThingsBoard's payload

# [alerts]                     # events to the people who act (docs/alerts.md); none without routes
# urgent = ["dark_at_night", "silent"]  # sent at once, with a closing message; the rest...
# digest_at = "07:00"          # ...wait for the daily digest, at this local time ([site] timezone)
# max_per_hour = 10            # immediate messages per route and hour; more go to the digest
# retry_base_s = 30            # a failed delivery is tried again after this, doubling...
# retry_cap_s = 3600           # ...up to this; undelivered alerts wait in the database

# [alerts.smtp]                # the mail server, for routes by e-mail
# host = "smtp.example.org"
# port = 587
# security = "starttls"        # starttls, tls (port 465) or none (no login then)
# username = "reverbere@example.org"
# password = "secret"
# sender = "reverbere@example.org"

# [[alerts.routes]]            # one table per route: who hears of what, and how
# name = "astreinte"
# email = ["astreinte@mairie.example.org"]  # or webhook = "https://..."
#                              # or ntfy = "https://ntfy.sh/topic" (with token = "..." if needed)
# kinds = ["dark_at_night", "silent"]      # absent: every kind
# nodes = ["lamp-*"]           # node ids (glob patterns): the group; absent: every node
# severity = "urgent"          # all (urgent at once, the rest in the digest), urgent, digest
"""
