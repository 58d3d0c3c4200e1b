"""The ``[alerts]`` section of the gateway's TOML config, checked into a typed record.

Errors name the key (``AlertsConfigError.key``, dotted below the section, an element of
``[[alerts.routes]]`` by its index: ``smtp.port``, ``routes[0].email``); ``from_config`` adds
the file and line through the config's own locator (``gateway.config.Config.error``), as for
every other section. Every number has a range (``RANGES``), every route says exactly one
way to reach its people, and a route by e-mail needs ``[alerts.smtp]``. docs/alerts.md.
"""

import fnmatch
import re
import ssl
import urllib.parse
from dataclasses import dataclass, field
from datetime import time as dtime
from typing import Any

# The kinds of events the detectors open (gateway/pipeline/detect): a route may name these,
# and a misspelt one is refused. The messages say each in words (gateway.alerts.messages).
KINDS = (
    "dark_at_night",
    "lit_by_day",
    "lit_in_switch_off",
    "not_dimmed",
    "silent",
    "counter_reset",
    "stuck",
    "drift",
    "off_schedule",
    "unusual",
    "wrong_time",
    "spike",
    "dip",
    "dropout",
    "stuck_meter",
)
# Kinds that cannot wait for the morning: a street in the dark, a node nobody hears from.
DEFAULT_URGENT = ("dark_at_night", "silent")
SEVERITIES = ("all", "urgent", "digest")
SECURITIES = ("starttls", "tls", "none")
# key -> (lowest, highest) of every number in [alerts] and [alerts.smtp] (docs/alerts.md).
RANGES: dict[str, tuple[float, float]] = {
    "max_per_hour": (1, 1000),
    "retry_base_s": (1, 3600),
    "retry_cap_s": (1, 86400),
    "smtp.port": (1, 65535),
    "smtp.timeout": (1, 600),
    "timeout": (1, 600),
}
_TOP = {"urgent", "digest_at", "max_per_hour", "retry_base_s", "retry_cap_s", "timeout"}
_SMTP = {"host", "port", "security", "username", "password", "sender", "ca_file", "timeout"}
_ROUTE = {"name", "email", "webhook", "ntfy", "token", "kinds", "nodes", "severity"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_EMAIL = re.compile(r"[^@\s<>]+@[^@\s<>]+")


class AlertsConfigError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"[alerts] {key}: {message}")
        self.key = key


@dataclass(frozen=True)
class Smtp:
    """The mail server the gateway hands its messages to (``[alerts.smtp]``)."""

    host: str
    port: int = 587
    security: str = "starttls"  # STARTTLS on 587; "tls" is implicit TLS (465)
    username: str | None = None
    password: str | None = None
    sender: str = "reverbere@localhost"
    ca_file: str | None = None  # the CA of a server whose certificate no public CA signs
    timeout: float = 30.0

    def tls_context(self) -> ssl.SSLContext:
        """The server's certificate is checked (against ``ca_file`` when given)."""
        return ssl.create_default_context(cafile=self.ca_file)


@dataclass(frozen=True)
class Route:
    """Who hears of which events, and how: one of ``email`` (addresses), ``webhook`` (a URL
    that gets a JSON POST) or ``ntfy`` (a topic URL of an ntfy server)."""

    name: str
    transport: str  # "email", "webhook" or "ntfy"
    target: tuple[str, ...]  # addresses, or the one URL
    token: str | None = None  # bearer token of the webhook or ntfy server
    kinds: tuple[str, ...] = ()  # empty: every kind
    nodes: tuple[str, ...] = ("*",)  # glob patterns of node ids: the group
    severity: str = "all"  # all: urgent at once, the rest in the digest; urgent; digest

    def wants(self, node: str, kind: str) -> bool:
        return (not self.kinds or kind in self.kinds) and any(
            fnmatch.fnmatchcase(node, p) for p in self.nodes
        )


@dataclass(frozen=True)
class AlertsConfig:
    routes: tuple[Route, ...]
    timezone: str = "UTC"  # the town's ([site] / [detect] timezone): times in the messages
    urgent: tuple[str, ...] = DEFAULT_URGENT
    digest_at: dtime = dtime(7, 0)  # local time of the daily digest
    max_per_hour: int = 10  # immediate messages per route and hour; more wait for the digest
    retry_base: float = 30.0  # seconds after a failed delivery, doubling...
    retry_cap: float = 3600.0  # ...up to this (with jitter)
    timeout: float = 30.0  # seconds per webhook or ntfy request
    smtp: Smtp | None = None
    routes_by_name: dict[str, Route] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.routes_by_name.update({r.name: r for r in self.routes})

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], timezone: str = "UTC") -> "AlertsConfig":
        """Check ``raw`` (the ``[alerts]`` table); raise ``AlertsConfigError`` naming the key."""
        for key in raw:
            if key not in (*_TOP, "smtp", "routes"):
                known = ", ".join(sorted((*_TOP, "smtp", "routes")))
                raise AlertsConfigError(key, f"unknown key (known: {known})")
        values: dict[str, Any] = {"timezone": timezone}
        if "urgent" in raw:
            values["urgent"] = _kinds("urgent", raw["urgent"])
        if "digest_at" in raw:
            values["digest_at"] = _clock("digest_at", raw["digest_at"])
        for key, attr in (
            ("max_per_hour", "max_per_hour"),
            ("retry_base_s", "retry_base"),
            ("retry_cap_s", "retry_cap"),
            ("timeout", "timeout"),
        ):
            if key in raw:
                values[attr] = _number(key, raw[key], integer=key == "max_per_hour")
        smtp = raw.get("smtp")
        if smtp is not None:
            values["smtp"] = _smtp(smtp)
        routes = raw.get("routes", [])
        if not isinstance(routes, list):
            raise AlertsConfigError("routes", "expected [[alerts.routes]] tables")
        values["routes"] = tuple(_route(i, r) for i, r in enumerate(routes))
        names = [r.name for r in values["routes"]]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise AlertsConfigError(f"routes[{i}].name", f"{name!r} names two routes")
        for i, r in enumerate(values["routes"]):
            if r.transport == "email" and smtp is None:
                raise AlertsConfigError(
                    f"routes[{i}].email", "a route by e-mail needs an [alerts.smtp] server"
                )
        return cls(**values)


def _number(key: str, value: Any, integer: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
    ):
        raise AlertsConfigError(key, f"expected {'an integer' if integer else 'a number'}")
    low, high = RANGES[key]
    if not low <= value <= high:
        raise AlertsConfigError(key, f"must be between {low:g} and {high:g}, got {value!r}")
    return value


def _kinds(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        raise AlertsConfigError(key, 'expected a list of kinds, e.g. ["dark_at_night"]')
    for k in value:
        if k not in KINDS:
            raise AlertsConfigError(key, f"unknown kind {k!r} (known: {', '.join(KINDS)})")
    return tuple(value)


def _clock(key: str, value: Any) -> dtime:
    m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", value) if isinstance(value, str) else None
    if m is None:
        raise AlertsConfigError(key, f'expected a local time like "07:00", got {value!r}')
    return dtime(int(m.group(1)), int(m.group(2)))


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise AlertsConfigError(key, "expected a non-empty string")
    return value


def _smtp(raw: Any) -> Smtp:
    if not isinstance(raw, dict):
        raise AlertsConfigError("smtp", "expected a table [alerts.smtp]")
    for key in raw:
        if key not in _SMTP:
            raise AlertsConfigError(
                f"smtp.{key}", f"unknown key (known: {', '.join(sorted(_SMTP))})"
            )
    if "host" not in raw:
        raise AlertsConfigError("smtp.host", "missing: the mail server's name or address")
    values: dict[str, Any] = {"host": _text("smtp.host", raw["host"])}
    if "port" in raw:
        values["port"] = int(_number("smtp.port", raw["port"], integer=True))
    if "timeout" in raw:
        values["timeout"] = float(_number("smtp.timeout", raw["timeout"]))
    security = raw.get("security", "starttls")
    if security not in SECURITIES:
        raise AlertsConfigError("smtp.security", f"must be one of {', '.join(SECURITIES)}")
    values["security"] = security
    values.setdefault("port", {"starttls": 587, "tls": 465, "none": 25}[security])
    for key in ("username", "password", "ca_file"):
        if key in raw:
            values[key] = _text(f"smtp.{key}", raw[key])
    if ("username" in raw) != ("password" in raw):
        raise AlertsConfigError("smtp.password", "username and password go together")
    if "username" in raw and security == "none":
        raise AlertsConfigError("smtp.security", "a login is never sent unencrypted: starttls")
    if "sender" in raw:
        sender = _text("smtp.sender", raw["sender"])
        if not _EMAIL.fullmatch(sender):
            raise AlertsConfigError("smtp.sender", f"not an e-mail address: {sender!r}")
        values["sender"] = sender
    if "ca_file" in values:
        try:
            ssl.create_default_context(cafile=values["ca_file"])
        except (OSError, ssl.SSLError) as e:
            raise AlertsConfigError("smtp.ca_file", f"cannot read certificates: {e}") from None
    return Smtp(**values)


def _route(i: int, raw: Any) -> Route:
    at = f"routes[{i}]"
    if not isinstance(raw, dict):
        raise AlertsConfigError(at, "expected a table [[alerts.routes]]")
    for key in raw:
        if key not in _ROUTE:
            raise AlertsConfigError(
                f"{at}.{key}", f"unknown key (known: {', '.join(sorted(_ROUTE))})"
            )
    name = raw.get("name", f"route-{i + 1}")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise AlertsConfigError(f"{at}.name", "letters, digits, '.', '_' or '-' (64 at most)")
    ways = [k for k in ("email", "webhook", "ntfy") if k in raw]
    if len(ways) != 1:
        raise AlertsConfigError(at, "say exactly one of email, webhook or ntfy")
    way = ways[0]
    value = raw[way]
    if way == "email":
        addresses = [value] if isinstance(value, str) else value
        if not isinstance(addresses, list) or not addresses:
            raise AlertsConfigError(f"{at}.email", "expected an address or a list of them")
        for a in addresses:
            if not isinstance(a, str) or not _EMAIL.fullmatch(a):
                raise AlertsConfigError(f"{at}.email", f"not an e-mail address: {a!r}")
        target = tuple(addresses)
    else:
        url = _text(f"{at}.{way}", value)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise AlertsConfigError(f"{at}.{way}", f"expected an http(s) URL, got {url!r}")
        if way == "ntfy" and not parts.path.strip("/"):
            raise AlertsConfigError(f"{at}.ntfy", "expected the topic's URL: https://server/topic")
        target = (url,)
    values: dict[str, Any] = {"name": name, "transport": way, "target": target}
    if "token" in raw:
        if way == "email":
            raise AlertsConfigError(f"{at}.token", "a token is for webhook and ntfy routes")
        values["token"] = _text(f"{at}.token", raw["token"])
    if "kinds" in raw:
        values["kinds"] = _kinds(f"{at}.kinds", raw["kinds"])
    if "nodes" in raw:
        nodes = raw["nodes"]
        if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
            raise AlertsConfigError(f"{at}.nodes", "expected a list of node ids or patterns")
        values["nodes"] = tuple(nodes)
    if "severity" in raw:
        if raw["severity"] not in SEVERITIES:
            raise AlertsConfigError(f"{at}.severity", f"must be one of {', '.join(SEVERITIES)}")
        values["severity"] = raw["severity"]
    return Route(**values)


def from_config(cfg: Any, timezone: str) -> "AlertsConfig | None":
    """The checked ``[alerts]`` of a gateway ``Config`` (None without routes), times in
    ``timezone`` (the town's); raise ``ConfigError`` naming file, line and key: a key of the
    n-th ``[[alerts.routes]]`` is found below that table's n-th header, as TOML reads it."""
    raw = cfg.section("alerts")
    if not raw:
        return None
    try:
        checked = AlertsConfig.from_mapping(raw, timezone)
    except AlertsConfigError as e:
        raise cfg.error("alerts", e.key, str(e).split(": ", 1)[-1]) from None
    return checked if checked.routes else None
