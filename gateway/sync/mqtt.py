"""The optional MQTT target: the same summaries and events, published with QoS 1.

Topic and payload are configurable (``[sync.mqtt]``): by default one JSON message per
summary or event on ``reverbere/{node}/{channel}``; the ``thingsboard`` preset publishes a
batch per message on ``v1/gateway/telemetry`` in the ThingsBoard gateway format
``{"<device>": [{"ts": <ms>, "values": {...}}]}``.

Raw readings (``[sync] raw``) go as batches: JSON ``{"node", "channel", "readings": [[time,
value], ...]}`` on ``raw_topic`` (``reverbere/{node}/{channel}/raw``), or with the
``thingsboard`` preset as telemetry key ``<channel>_raw`` at the reading's own ``ts``.

MQTT cannot be read back (the target is not a ``ReadBack``), so after an uncertain outcome
(no PUBACK) the senders publish again: delivery is at least once. A repeated message carries
the same timestamp and values, so a consumer keyed on (device, ts) - as ThingsBoard's
telemetry is - stores it once.
"""

import json
import threading
import time
from collections.abc import Iterable, Mapping

import sqlite_utils

from gateway.sync.budget import Budget
from gateway.sync.config import MqttConfig
from gateway.sync.outbox import ANOMALIES, RAW_SUFFIX
from gateway.sync.sensorthings import iso, iso_ms
from gateway.sync.target import Row, SyncError, Uncertain, Unreachable

MAX_MESSAGE = 64 * 1024  # bytes of payload per ThingsBoard batch message


def _publish_size(topic: str, payload: bytes) -> int:
    """Bytes of an MQTT 3.1.1 PUBLISH (QoS 1) on the wire: fixed header, topic, id, payload."""
    body = 2 + len(topic.encode()) + 2 + len(payload)
    length_bytes = 1 if body < 128 else 2 if body < 16384 else 3 if body < 2097152 else 4
    return 1 + length_bytes + body


class MqttTarget:
    """Publish to a broker: a ``Target`` (gateway/sync/target.py), driven by the same senders
    as the SensorThings target, but not a ``ReadBack``: a broker cannot say what it got."""

    def __init__(self, db: sqlite_utils.Database, budget: Budget, config: MqttConfig) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError as exc:  # reported, not crashed on
            raise SyncError(
                "the MQTT target needs paho-mqtt: pip install 'reverbere[mqtt]'"
            ) from exc
        self._mqtt = mqtt
        self.db = db
        self.budget = budget
        self.config = config
        self.url = f"mqtt://{config.host}:{config.port}"
        self._client = None
        self._connected = threading.Event()

    def _connect(self):
        if self._client is not None and self._client.is_connected():
            return self._client
        self.close()
        mqtt = self._mqtt
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.config.client_id,
            protocol=mqtt.MQTTv311,
        )
        if self.config.username:
            client.username_pw_set(self.config.username, self.config.password)
        if self.config.tls:
            client.tls_set(ca_certs=self.config.ca_file)
        self._connected.clear()
        client.on_connect = lambda c, u, f, rc, p=None: rc == 0 and self._connected.set()
        try:
            client.connect(self.config.host, self.config.port, keepalive=self.config.keepalive)
        except OSError as exc:
            raise Unreachable(f"MQTT broker {self.url}: {exc}") from exc
        client.loop_start()
        if not self._connected.wait(self.config.timeout):
            client.loop_stop()
            raise Unreachable(f"MQTT broker {self.url} did not accept the connection")
        self._client = client
        return client

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    # -- the Target protocol (gateway/sync/target.py) ----------------------------------------

    def ensure_streams(self, needed: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        return {(node, stream): f"{node}/{stream}" for node, stream in needed}

    def forget_streams(self, ids: Iterable[str]) -> None:
        """Nothing to forget: a topic is made from its name each time, never remembered."""

    def update(self, obs_id: str, row: Row) -> bool:
        """Publish the corrected figures again (obs_id is its "node/stream")."""
        self._publish_rows({obs_id: [row]})
        return True

    def create(self, groups: Mapping[str, list[Row]]) -> dict[int, str | None]:
        self._publish_rows(groups)
        return {r.item: ds for ds, rows in groups.items() for r in rows}

    def create_raw(self, groups: Mapping[str, list[tuple[float, float]]]) -> list[bool]:
        """Publish raw readings ``(time, value)`` per "node/channel.raw"; all or an error."""
        self._publish(self._raw_messages(groups))
        return [True] * sum(len(r) for r in groups.values())

    # -- messages -----------------------------------------------------------------------------

    def _messages(self, groups: Mapping[str, list[Row]]) -> list[tuple[str, bytes]]:
        if self.config.payload == "thingsboard":
            return self._thingsboard(groups)
        out = []
        for ds, rows in groups.items():
            node, _, stream = ds.partition("/")
            topic = self.config.topic.format(node=node, channel=stream)
            for r in rows:
                body = {"node": node, "channel": stream, "time": iso(r.time), "result": r.result}
                body.update(r.parameters)
                out.append((topic, json.dumps(body, separators=(",", ":")).encode()))
        return out

    def _thingsboard(self, groups: Mapping[str, list[Row]]) -> list[tuple[str, bytes]]:
        devices: dict[str, dict[int, dict]] = {}
        for ds, rows in groups.items():
            node, _, stream = ds.partition("/")
            for r in rows:
                values = devices.setdefault(node, {}).setdefault(r.time * 1000, {})
                if stream == ANOMALIES:
                    values["anomaly_score"] = r.result
                    values.update({f"anomaly_{k}": v for k, v in r.parameters.items()})
                else:
                    values[stream] = r.result
                    values.update({f"{stream}_{k}": v for k, v in r.parameters.items()})
        messages, current, size = [], {}, 0
        for node, by_ts in sorted(devices.items()):
            entry = [{"ts": ts, "values": v} for ts, v in sorted(by_ts.items())]
            n = len(json.dumps(entry))
            if current and size + n > MAX_MESSAGE:
                messages.append(current)
                current, size = {}, 0
            current[node] = entry
            size += n
        if current:
            messages.append(current)
        return [
            (self.config.topic, json.dumps(m, separators=(",", ":")).encode()) for m in messages
        ]

    def _raw_messages(
        self, groups: Mapping[str, list[tuple[float, float]]]
    ) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        if self.config.payload == "thingsboard":
            devices: dict[str, list[dict]] = {}
            for ds, readings in groups.items():
                node, _, stream = ds.partition("/")
                key = stream.removesuffix(RAW_SUFFIX) + "_raw"
                devices.setdefault(node, []).extend(
                    {"ts": round(t * 1000), "values": {key: v}} for t, v in readings
                )
            chunks = [{node: [p]} for node, points in devices.items() for p in points]
            return self._packed(self.config.topic, chunks)
        for ds, readings in groups.items():
            node, _, stream = ds.partition("/")
            channel = stream.removesuffix(RAW_SUFFIX)
            topic = self.config.raw_topic.format(node=node, channel=channel)
            head = {"node": node, "channel": channel}
            size = 0
            chunk: list = []
            for t, v in readings:
                item = [iso_ms(t), v]
                size += len(json.dumps(item)) + 1
                chunk.append(item)
                if size > MAX_MESSAGE:
                    out.append((topic, _dumps({**head, "readings": chunk})))
                    size, chunk = 0, []
            if chunk:
                out.append((topic, _dumps({**head, "readings": chunk})))
        return out

    def _packed(self, topic: str, parts: list[dict]) -> list[tuple[str, bytes]]:
        """ThingsBoard telemetry parts ``{device: [points]}`` merged into messages of at most
        about ``MAX_MESSAGE`` bytes."""
        messages: list[dict] = []
        current: dict[str, list] = {}
        size = 0
        for part in parts:
            for node, points in part.items():
                n = len(json.dumps(points))
                if current and size + n > MAX_MESSAGE:
                    messages.append(current)
                    current, size = {}, 0
                current.setdefault(node, []).extend(points)
                size += n
        if current:
            messages.append(current)
        return [(topic, _dumps(m)) for m in messages]

    def _publish_rows(self, groups: Mapping[str, list[Row]]) -> None:
        self._publish(self._messages(groups))

    def _publish(self, messages: list[tuple[str, bytes]]) -> None:
        client = self._connect()
        pending = []
        for topic, payload in messages:
            self.budget.spend(_publish_size(topic, payload))
            info = client.publish(topic, payload, qos=1)
            if info.rc != self._mqtt.MQTT_ERR_SUCCESS:
                raise Uncertain(f"MQTT publish failed ({info.rc})")
            pending.append(info)
        deadline = time.monotonic() + self.config.timeout
        for info in pending:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                raise Uncertain(f"MQTT: {exc}") from exc
            if not info.is_published():
                raise Uncertain("MQTT broker did not acknowledge (PUBACK) in time")
        self.budget.add_received(4 * len(pending))  # one PUBACK each


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
