"""Shared set-up of the sync tests: a TLS certificate authority, data, and the comparison of
what the platform holds with what the gateway owes it."""

import datetime
import ipaddress
import json
import random
import sqlite3
import ssl
from collections import Counter
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.ingest import registry
from gateway.store import group as store
from gateway.store.commit import commit_batch
from gateway.store.records import Reading
from gateway.sync.outbox import ANOMALIES, RAW_SUFFIX, Event, Summary
from gateway.sync.raw import RawLog
from gateway.sync.report import as_record, from_outbox, pull

H0 = 1767225600  # 2026-01-01T00:00Z
WEEK = 7 * 24


def make_tls(tmp: Path) -> tuple[ssl.SSLContext, str]:
    """A CA and a certificate for 127.0.0.1 signed by it: (server context, CA file)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Reverbere test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = tmp / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = tmp / "server.pem"
    chain.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain)
    return ctx, str(ca_file)


def week_of_summaries(nodes: int, hours: int = WEEK, seed: int = 1) -> list[Summary]:
    """Power (p) and energy counter (e) summaries of street lights."""
    rng = random.Random(seed)
    out = []
    for n in range(nodes):
        node = f"lamp-{n:03d}"
        for h in range(hours):
            lit = (h % 24) >= 17 or (h % 24) < 7
            watts = (60 + rng.random() * 5) if lit else rng.random()
            out.append(
                Summary(node, "p", H0 + 3600 * h, 60, watts * 0.9, watts * 1.1, watts, watts)
            )
            out.append(Summary(node, "e", H0 + 3600 * h, 60, 1000 + h, 1060 + h, 1030 + h, watts))
    return out


def some_events(nodes: int, seed: int = 2) -> list[Event]:
    rng = random.Random(seed)
    out = []
    for n in range(nodes):
        h = rng.randrange(WEEK)
        out.append(
            Event(
                f"lamp-{n:03d}",
                "p",
                H0 + 3600 * h,
                H0 + 3600 * (h + 2),
                "lit_by_day",
                round(rng.uniform(3, 9), 2),
                "lamp on in daylight",
            )
        )
    return out


def locations(nodes: int) -> dict[str, tuple[float, float]]:
    return {f"lamp-{n:03d}": (4.83 + n * 1e-4, 45.76) for n in range(nodes)}


def platform_records(platform_db: Path) -> tuple[Counter, Counter]:
    """Every Observation in the platform's own database, as the gateway's records.

    Read straight from its SQLite file: faster than the API for tens of thousands of rows,
    and independent of the client code under test. Duplicates show as counts above 1.
    """
    sql = (
        "SELECT d.name, o.phenomenon_time_begin, o.result, o.parameters "
        "FROM sensorthings_v1_1_django_backend_observation o "
        "JOIN sensorthings_v1_1_django_backend_datastream d ON d.id = o.datastream_id"
    )
    summaries, events = Counter(), Counter()
    with sqlite3.connect(platform_db) as conn:
        for name, when, result, params in conn.execute(sql):
            node, _, stream = name.rpartition("/")
            if stream.endswith(RAW_SUFFIX):
                continue  # raw readings: see raw_on_platform
            t = int(datetime.datetime.fromisoformat(when).replace(tzinfo=datetime.UTC).timestamp())
            _, record = as_record(node, stream, t, result, json.loads(params or "{}"))
            (events if stream == ANOMALIES else summaries)[record] += 1
    return summaries, events


def assert_platform_matches(db, platform) -> dict:
    """The platform holds exactly the gateway's summaries and events: none missing, none
    extra, none duplicated, each with its latest figures."""
    got_s, got_e = platform_records(platform.db_path)
    want_s, want_e = from_outbox(db, 0, 2**31)
    assert max(got_s.values(), default=1) == 1, "duplicated summaries on the platform"
    assert max(got_e.values(), default=1) == 1, "duplicated events on the platform"
    assert got_s == Counter(want_s)
    assert got_e == Counter(want_e)
    return {"summaries": len(got_s), "events": len(got_e)}


def assert_pull_matches(db, url: str) -> None:
    """The same, through the SensorThings API (what ``summaries --from URL`` does)."""
    got = pull(url, 0, 2**31)
    want_s, want_e = from_outbox(db, 0, 2**31)
    assert got.duplicates == 0
    assert Counter(got.summaries) == Counter(want_s)
    assert Counter(got.events) == Counter(want_e)


def raw_on_platform(platform_db: Path) -> Counter:
    """Every raw reading on the platform, read from its own database: Counter of
    ``(node, channel, time in ms, value)``; a count above 1 is a duplicate."""
    sql = (
        "SELECT d.name, o.phenomenon_time_begin, o.result "
        "FROM sensorthings_v1_1_django_backend_observation o "
        "JOIN sensorthings_v1_1_django_backend_datastream d ON d.id = o.datastream_id "
        "WHERE d.name LIKE ?"
    )
    out: Counter = Counter()
    with sqlite3.connect(platform_db) as conn:
        for name, when, result in conn.execute(sql, ["%" + RAW_SUFFIX]):
            node, _, stream = name.rpartition("/")
            t = datetime.datetime.fromisoformat(when).replace(tzinfo=datetime.UTC).timestamp()
            out[(node, stream.removesuffix(RAW_SUFFIX), round(t * 1000), float(result))] += 1
    return out


def raw_in_gateway(db) -> Counter:
    """The gateway's stored readings in the form of :func:`raw_on_platform`."""
    rows = db.execute(
        "SELECT n.id, r.channel, r.time, r.value FROM readings r JOIN nodes n ON n.ref = r.node"
    )
    return Counter((node, ch, round(t * 1000), float(v)) for node, ch, t, v in rows)


class RawStore:
    """Packs of readings committed the way the gateway's committer does, raw log included."""

    def __init__(self, db, channels=None) -> None:
        self.db = db
        self.log = RawLog(channels)
        self.nodes: dict[str, tuple[int, bytes, int]] = {}

    def put(self, node: str, readings: list[tuple[str, float, float]]) -> int:
        if node not in self.nodes:
            key = registry.add_node(self.db, node)
            ref = self.db.execute("SELECT ref FROM nodes WHERE id = ?", [node]).fetchone()[0]
            self.nodes[node] = (ref, key, 0)
        ref, key, seq = self.nodes[node]
        self.nodes[node] = (ref, key, seq + 1)
        pack = store.Pack(ref, node, key, seq + 1, [Reading(node, *r) for r in readings])
        _, new = commit_batch(self.db.conn, [pack], in_commit=[self.log.log])
        return len(new)


def minutes(channel: str, start: float, n: int, step: float = 60.0, base: float = 50.0):
    return [(channel, start + step * k, base + (k % 13) + 0.25) for k in range(n)]
