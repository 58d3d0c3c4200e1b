"""The ``[sync]`` section of the gateway's TOML config, checked into a typed record.

Errors name the key (``SyncConfigError.key``); the config loader adds the file and line.
Everything that would otherwise fail later, in the sync thread, is checked here, when the
config is read: every number has a range (``RANGES``), the service root is an http(s) URL,
and a ``ca_file`` must be a readable file of PEM certificates.
"""

import re
import ssl
import urllib.parse
from dataclasses import dataclass, field, fields

from protocols.const import CHANNELS

TARGETS = ("sensorthings", "mqtt", "none")
# The identity of a config without ``gateway_id`` (one written before it existed): such a
# gateway keeps its Things; two of them on one platform would share theirs (docs/sync.md).
DEFAULT_GATEWAY_ID = "default"
_GATEWAY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# key -> (lowest, highest) of every number in [sync] and [sync.mqtt] (docs/sync.md).
RANGES: dict[str, tuple[float, float]] = {
    "timeout": (0.1, 3600),
    "daily_budget": (0, 1 << 40),
    "batch_rows": (1, 100_000),
    "probe_rows": (1, 10_000),
    "backoff_base": (0.01, 3600),
    "backoff_cap": (0.01, 86400),
    "recent_hours": (1, 24 * 366),
    "raw_interval": (0, 86400),
    "mqtt.port": (1, 65535),
    "mqtt.keepalive": (0, 65535),  # MQTT's Keep Alive is a two-byte integer (MQTT 3.1.1 3.1.2.10)
    "mqtt.timeout": (0.1, 3600),
}


class SyncConfigError(ValueError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"[sync] {key}: {message}")
        self.key = key


def parse_bytes(value: object, key: str = "daily_budget") -> int | None:
    """``5000000``, ``"5 MB"``, ``"500kB"``, ``"1MiB"`` -> bytes; 0 or "" -> no budget."""
    if value in (None, 0, "", "none", "unlimited"):
        return None
    if isinstance(value, bool):
        raise SyncConfigError(key, "expected a number of bytes or a size like '5 MB'")
    if isinstance(value, int):
        if value < 0:
            raise SyncConfigError(key, "must not be negative")
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(i?)[bB]?\s*", str(value))
    if not m:
        raise SyncConfigError(key, f"expected a size like '5 MB', not {value!r}")
    scale = 1024 if m.group(3) else 1000
    power = {"": 0, "k": 1, "m": 2, "g": 3}[m.group(2).lower()]
    return int(float(m.group(1)) * scale**power)


@dataclass(frozen=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    preset: str = ""  # "thingsboard": topic v1/gateway/telemetry and its payload
    topic: str = "reverbere/{node}/{channel}"
    raw_topic: str = "reverbere/{node}/{channel}/raw"  # raw readings ([sync] raw), json payload
    payload: str = "json"  # "json" (one summary per message) or "thingsboard"
    client_id: str = "reverbere-gateway"
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    keepalive: int = 60
    timeout: float = 10.0


@dataclass(frozen=True)
class SyncConfig:
    target: str = "sensorthings"
    url: str | None = None  # SensorThings service root, e.g. https://host/v1.1
    # Which gateway this is on the platform: its Things carry it (node ids repeat from one
    # town to the next); `gateway init` writes a random one.
    gateway_id: str = DEFAULT_GATEWAY_ID
    token: str | None = None  # bearer token
    username: str | None = None  # basic auth
    password: str | None = None
    ca_file: str | None = None  # CA bundle that signs the platform's certificate
    timeout: float = 30.0
    compress: str = "auto"  # "auto", "gzip" or "none"
    daily_budget: int | None = None  # bytes a day (UTC) on the uplink; None = unlimited
    batch_rows: int = 2000
    probe_rows: int = 20
    backoff_base: float = 2.0
    backoff_cap: float = 600.0
    recent_hours: int = 24
    # Raw readings too (docs/sync.md), last of all: False, True (every channel) or channels.
    raw: bool | tuple[str, ...] = False
    raw_interval: float = 300.0  # seconds: at most one partial batch of raw readings this often
    location: tuple[float, float] | None = None  # [lon, lat] for nodes without their own
    locations: dict[str, tuple[float, float]] = field(default_factory=dict)  # node -> [lon, lat]
    mqtt: MqttConfig = field(default_factory=MqttConfig)

    @property
    def raw_channels(self) -> tuple[str, ...] | None:
        """The channels whose raw readings are synced; None for every channel (raw = true)."""
        return None if self.raw is True else tuple(self.raw or ())

    @classmethod
    def from_dict(cls, section: dict) -> "SyncConfig":
        known = {f.name: f for f in fields(cls)}
        values: dict = {}
        for key, value in section.items():
            if key not in known:
                raise SyncConfigError(key, f"unknown key (known: {', '.join(sorted(known))})")
            if key == "daily_budget":
                values[key] = parse_bytes(value)
            elif key == "mqtt":
                values[key] = _mqtt(value)
            elif key == "raw":
                values[key] = _raw(value)
            elif key == "location":
                values[key] = _lonlat(key, value)
            elif key == "locations":
                if not isinstance(value, dict):
                    raise SyncConfigError(key, 'expected a table: "node-id" = [lon, lat]')
                values[key] = {n: _lonlat(f"locations.{n}", v) for n, v in value.items()}
            else:
                values[key] = _typed(key, value, known[key].type)
            _in_range(key, values[key])
        config = cls(**values)
        if config.target not in TARGETS:
            raise SyncConfigError("target", f"expected one of {', '.join(TARGETS)}")
        if config.compress not in ("auto", "gzip", "none"):
            raise SyncConfigError("compress", "expected auto, gzip or none")
        if config.target == "sensorthings" and not config.url:
            raise SyncConfigError("url", "the SensorThings service root is required")
        if config.url is not None:
            _check_url("url", config.url)
        if not _GATEWAY_ID.fullmatch(config.gateway_id):
            raise SyncConfigError(
                "gateway_id",
                "expected 1 to 64 letters, digits, '.', '_' or '-', like 'lyon-3f9a2c'",
            )
        if config.backoff_cap < config.backoff_base:
            raise SyncConfigError("backoff_cap", "must be at least backoff_base")
        _check_ca_file("ca_file", config.ca_file)
        if bool(config.username) != bool(config.password):
            raise SyncConfigError("password", "basic auth needs both username and password")
        return config


def _in_range(key: str, value: object) -> None:
    """Raise unless the number ``value`` of ``key`` is within ``RANGES[key]``."""
    if key not in RANGES or value is None or isinstance(value, bool):
        return
    low, high = RANGES[key]
    if value < low:  # type: ignore[operator]
        bound = "must not be negative" if low == 0 else f"must be at least {low:g}"
        raise SyncConfigError(key, f"{bound}, got {value}")
    if value > high:  # type: ignore[operator]
        raise SyncConfigError(key, f"must be at most {high:g}, got {value}")


def _check_url(key: str, url: str) -> None:
    """An http(s) URL with a host and a valid port, or ``SyncConfigError``: a typo in the
    service root is reported when the config is read, not at the first sync."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise SyncConfigError(key, f"not a valid URL: {url!r} ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"\s", url):
        raise SyncConfigError(key, f"expected an http:// or https:// URL with a host, got {url!r}")


def _check_ca_file(key: str, path: str | None) -> None:
    """A readable file of PEM certificates, or ``SyncConfigError``: the sync thread loads it
    at each connection, where a missing file would kill the thread instead of being named."""
    if path is None:
        return
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError:  # an OSError too: first
        raise SyncConfigError(key, f"{path} holds no PEM certificate") from None
    except OSError as e:
        raise SyncConfigError(key, f"cannot read {path}: {e.strerror}") from None


def _raw(value: object) -> bool | tuple[str, ...]:
    if isinstance(value, bool):
        return value
    if isinstance(value, list) and value and all(isinstance(c, str) for c in value):
        unknown = [c for c in value if c not in CHANNELS]
        if unknown:
            raise SyncConfigError(
                "raw", f"unknown channel {unknown[0]!r} (known: {', '.join(CHANNELS)})"
            )
        return tuple(dict.fromkeys(value))
    raise SyncConfigError(
        "raw", f'expected true, false or a list of channels like ["p"], got {value!r}'
    )


def _lonlat(key: str, value: object) -> tuple[float, float]:
    if not (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
        and -180 <= value[0] <= 180
        and -90 <= value[1] <= 90
    ):
        raise SyncConfigError(key, "expected [longitude, latitude] in degrees")
    return (float(value[0]), float(value[1]))


def _typed(key: str, value: object, annotation: object) -> object:
    text = str(annotation)
    if "float" in text and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if "int" in text and isinstance(value, int) and not isinstance(value, bool):
        return value
    if "str" in text and isinstance(value, str):
        return value
    if "bool" in text and isinstance(value, bool):
        return value
    raise SyncConfigError(key, f"expected {text.replace(' | None', '')}, got {value!r}")


def _mqtt(section: object) -> MqttConfig:
    if not isinstance(section, dict):
        raise SyncConfigError("mqtt", "expected a table [sync.mqtt]")
    known = {f.name: f for f in fields(MqttConfig)}
    values = {}
    for key, value in section.items():
        if key not in known:
            raise SyncConfigError(f"mqtt.{key}", "unknown key")
        values[key] = _typed(f"mqtt.{key}", value, known[key].type)
        _in_range(f"mqtt.{key}", values[key])
    _check_ca_file("mqtt.ca_file", values.get("ca_file"))
    if values.get("preset") == "thingsboard":
        values.setdefault("topic", "v1/gateway/telemetry")
        values.setdefault("payload", "thingsboard")
    elif values.get("preset", "") != "":
        raise SyncConfigError("mqtt.preset", "the only preset is 'thingsboard'")
    if values.get("payload", "json") not in ("json", "thingsboard"):
        raise SyncConfigError("mqtt.payload", "expected json or thingsboard")
    return MqttConfig(**values)
