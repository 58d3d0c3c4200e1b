"""The MQTT target against Debian's mosquitto, started by the test on a free loopback port."""

import json
import shutil
import socket
import subprocess
import threading

import paho.mqtt.client as mqtt
import pytest

from gateway.store.db import open_db
from gateway.sync.config import SyncConfig
from gateway.sync.outbox import backlog, enqueue_events, enqueue_summaries
from gateway.sync.service import build_worker
from tests.sync_helpers import H0, RawStore, minutes, some_events, week_of_summaries

pytestmark = pytest.mark.skipif(not shutil.which("mosquitto"), reason="needs mosquitto")


@pytest.fixture
def broker(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen(["mosquitto", "-v", "-c", str(conf)], stderr=subprocess.PIPE, text=True)
    # Wait for its own word that it listens (each line is an event, no polling).
    for line in proc.stderr:
        if line.rstrip().endswith(" running"):
            break
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
    yield port
    proc.terminate()
    proc.wait(10)


class Subscriber:
    """A QoS 1 subscriber to everything, collecting (topic, payload)."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, dict]] = []
        self.ready = threading.Event()
        self.changed = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sub")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("#", qos=1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.ready.wait(10)

    def _on_message(self, client, userdata, msg) -> None:
        with self.changed:
            self.messages.append((msg.topic, json.loads(msg.payload)))
            self.changed.notify_all()

    def wait_for(self, n: int) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.messages) >= n, 10)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_summaries_and_events_are_published_with_qos1(tmp_path, broker):
    sub = Subscriber(broker)
    db = open_db(tmp_path / "gw.db")
    enqueue_summaries(db, week_of_summaries(2, hours=3))
    enqueue_events(db, some_events(1))
    cfg = SyncConfig.from_dict(
        {"target": "mqtt", "mqtt": {"port": broker, "topic": "town/{node}/{channel}"}}
    )
    worker = build_worker(db, cfg)
    assert worker.sync_until_idle() == "idle"
    worker.target.close()
    assert sub.wait_for(13)
    sub.stop()
    topics = sorted({t for t, _ in sub.messages})
    assert topics == [
        "town/lamp-000/anomalies",
        "town/lamp-000/e",
        "town/lamp-000/p",
        "town/lamp-001/e",
        "town/lamp-001/p",
    ]
    first = next(m for t, m in sub.messages if t == "town/lamp-000/p")
    assert first["time"] == "2026-01-01T00:00:00Z" and first["count"] == 60
    event = next(m for t, m in sub.messages if t.endswith("anomalies"))
    assert event["reason"] == "lamp on in daylight"
    assert backlog(db).synced == 13
    # The bytes of each PUBLISH were counted against the budget.
    assert worker.budget.use().sent > sum(len(json.dumps(m)) for _, m in sub.messages)


def test_thingsboard_gateway_preset(tmp_path, broker):
    sub = Subscriber(broker)
    db = open_db(tmp_path / "gw.db")
    enqueue_summaries(db, week_of_summaries(2, hours=2))
    cfg = SyncConfig.from_dict(
        {"target": "mqtt", "mqtt": {"port": broker, "preset": "thingsboard"}}
    )
    worker = build_worker(db, cfg)
    assert worker.sync_until_idle() == "idle"
    worker.target.close()
    assert sub.wait_for(1)
    sub.stop()
    topic, body = sub.messages[0]
    assert topic == "v1/gateway/telemetry"
    assert sorted(body) == ["lamp-000", "lamp-001"]
    point = body["lamp-000"][0]
    assert point["ts"] == H0 * 1000
    assert set(point["values"]) >= {"p", "p_min", "p_max", "p_count", "e", "e_wh"}


def test_raw_readings_in_batches_on_their_own_topic(tmp_path, broker):
    sub = Subscriber(broker)
    db = open_db(tmp_path / "gw.db")
    st = RawStore(db, channels=("p",))
    st.put("lamp-000", minutes("p", H0, 50) + minutes("e", H0, 50))
    st.put("lamp-000", minutes("p", H0 + 30.5, 3))  # late, between those
    enqueue_summaries(db, week_of_summaries(1, hours=1))
    cfg = SyncConfig.from_dict(
        {"target": "mqtt", "raw": ["p"], "raw_interval": 0, "mqtt": {"port": broker}}
    )
    worker = build_worker(db, cfg)
    assert worker.sync_until_idle() == "idle"
    worker.target.close()
    assert sub.wait_for(3)
    sub.stop()
    raw = [m for t, m in sub.messages if t == "reverbere/lamp-000/p/raw"]
    got = sorted(tuple(r) for m in raw for r in m["readings"])
    assert len(got) == 53 == len(set(got)) and worker.stats.raw_sent == 53
    assert got[0] == ("2026-01-01T00:00:00Z", 50.25)
    assert ("2026-01-01T00:00:30.500Z", 50.25) in got
    # Summaries first, raw last: the raw messages came after the summaries.
    topics = [t for t, _ in sub.messages]
    assert max(topics.index(t) for t in topics if not t.endswith("/raw")) < topics.index(
        "reverbere/lamp-000/p/raw"
    )


def test_raw_readings_with_the_thingsboard_preset(tmp_path, broker):
    sub = Subscriber(broker)
    db = open_db(tmp_path / "gw.db")
    RawStore(db).put("lamp-000", minutes("p", H0, 5) + minutes("t", H0 + 0.5, 5, base=9))
    cfg = SyncConfig.from_dict(
        {
            "target": "mqtt",
            "raw": True,
            "raw_interval": 0,
            "mqtt": {"port": broker, "preset": "thingsboard"},
        }
    )
    worker = build_worker(db, cfg)
    assert worker.sync_until_idle() == "idle"
    worker.target.close()
    assert sub.wait_for(1)
    sub.stop()
    topic, body = sub.messages[0]
    assert topic == "v1/gateway/telemetry" and list(body) == ["lamp-000"]
    points = body["lamp-000"]
    assert {"ts": H0 * 1000, "values": {"p_raw": 50.25}} in points
    assert {"ts": H0 * 1000 + 500, "values": {"t_raw": 9.25}} in points
    assert len(points) == 10


def test_unreachable_broker_is_a_failure_with_backoff(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens there
    db = open_db(tmp_path / "gw.db")
    enqueue_summaries(db, week_of_summaries(1, hours=1))
    worker = build_worker(db, SyncConfig.from_dict({"target": "mqtt", "mqtt": {"port": port}}))
    assert worker.step() == "failed"
    assert worker.link.failures == 1 and worker.last_error.startswith("Unreachable")
    assert worker.budget.use().sent == 0


def test_mqtt_cannot_read_back_so_what_was_in_flight_is_published_again(tmp_path, broker):
    # A broker cannot say what it got: after a gateway died mid-publish, the senders must
    # neither ask the target to read back (it is no ReadBack) nor lose the rows in flight.
    from gateway.sync import raw
    from gateway.sync.mqtt import MqttTarget
    from gateway.sync.target import ReadBack

    sub = Subscriber(broker)
    db = open_db(tmp_path / "gw.db")
    RawStore(db, channels=("p",)).put("lamp-000", minutes("p", H0, 10))
    enqueue_summaries(db, week_of_summaries(2, hours=2))
    # What the senders commit before a request leaves, and a crash leaves behind.
    db.execute("UPDATE sync_outbox SET inflight = 1")
    db.conn.commit()
    assert len(raw.take(db, 100, attempt=1)[0].readings) == 10
    assert (backlog(db).inflight, raw.inflight_count(db)) == (8, 1)
    cfg = SyncConfig.from_dict(
        {"target": "mqtt", "raw": ["p"], "raw_interval": 0, "mqtt": {"port": broker}}
    )
    worker = build_worker(db, cfg)
    assert isinstance(worker.target, MqttTarget) and not isinstance(worker.target, ReadBack)
    assert worker.sync_until_idle() == "idle"
    worker.target.close()
    assert (worker.stats.resent, worker.stats.raw_resent, worker.stats.adopted) == (8, 10, 0)
    assert backlog(db).synced == 8 and raw.raw_backlog(db).pending == 0
    assert sub.wait_for(9)
    sub.stop()
    raw_got = [r for t, m in sub.messages if t.endswith("/raw") for r in m["readings"]]
    assert len(raw_got) == 10 and len([t for t, _ in sub.messages if "/raw" not in t]) == 8
