"""The SensorThings API v1.1 (OGC 18-088) adapter: the default sync target.

Mapping: a node is a Thing (with its Location), each channel a Datastream (with a Sensor and
an ObservedProperty) named ``<node>/<channel>``, plus one ``<node>/anomalies`` Datastream.
They are created by deep insert on first use and their ids remembered in ``sync_streams``.
An hourly summary is an Observation (phenomenonTime = hour start, result = mean or Wh,
parameters = min/max/count/wh); an anomaly event is an Observation on the ``anomalies``
Datastream (phenomenonTime = window start, result = score, parameters = reason, kind, end).

Every request goes through :meth:`SensorThingsTarget.request`, which measures it, charges the
byte budget before it leaves, and sorts failures into the three outcomes the senders need
(gateway/sync/target.py): ``Unreachable`` (nothing was sent), ``Rejected`` (the platform
answered no) and ``Uncertain`` (it may have been applied: reconcile before sending again).
The HTTP reading lives in the "one request" section: :meth:`SensorThingsTarget.request`,
``_read`` and :meth:`SensorThingsTarget.pages` (``@iot.nextLink``). What an answer may be is
bounded because the platform (or whatever answers in its place) is not trusted with the
gateway's memory or its token: only the status the protocol defines as success for the
method counts as one (``SUCCESS``; redirects are not followed), an answer is streamed and
given up beyond ``MAX_ANSWER_BYTES`` received or decompressed, and ``@iot.nextLink`` is
followed on the service root's own origin only, at most ``MAX_PAGES`` pages.

It is a ``Target`` and a ``ReadBack`` (gateway/sync/target.py): it can read back what it holds.
"""

import gzip
import json
import math
import re
import ssl
import time
import urllib.parse
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import httpx
import sqlite_utils

from gateway.sync.budget import Budget
from gateway.sync.config import DEFAULT_GATEWAY_ID
from gateway.sync.outbox import ANOMALIES, RAW_SUFFIX
from gateway.sync.target import (
    AuthFailed,
    BadAnswer,
    Rejected,
    Row,
    SyncError,
    Uncertain,
    Unreachable,
)
from protocols.const import CHANNELS

# The statuses that mean success, per method (OGC 18-088 section 10: 201 Created for a
# POST, CreateObservations included; 200 for a GET; 200 or 204 for PATCH and DELETE).
# Anything else below 400 (a 302 from a login proxy, a 200 to a POST) confirms nothing.
SUCCESS = {"GET": (200,), "POST": (201,), "PATCH": (200, 204), "DELETE": (200, 204)}
# An answer is given up beyond this many bytes received or decompressed: the biggest the
# gateway asks for (10,000 Observations of a read-back page) is about 2 MB of JSON, and a
# 400 KB gzip bomb once took it to 1.29 GB.
MAX_ANSWER_BYTES = 16 << 20
# A collection is read at most this many pages (@iot.nextLink) deep: 1,000,000 Observations
# at $top=10000, far more than a read-back covers; a platform that links on and on, or in a
# circle (1,012 requests in 45 s once), is stopped.
MAX_PAGES = 100
# The Thing property that says which gateway a Thing belongs to (docs/sync.md): node ids
# repeat from one town to the next, so a Thing is the pair (name, gateway).
GATEWAY_PROPERTY = "gateway"

OM_MEASUREMENT = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"

# SenML unit (RFC 8428 Section 12.1) -> SensorThings unitOfMeasurement name.
UNIT_NAMES = {
    "W": "watt",
    "Wh": "watt hour",
    "Cel": "degree Celsius",
    "lx": "lux",
    "%EL": "percent of remaining energy level",
    "dBW": "decibel watt",
    "1": "count",
}
PROPERTY_NAMES = {
    "p": "Active power",
    "e": "Energy",
    "t": "Temperature",
    "lux": "Illuminance",
    "bat": "Battery level",
    "rssi": "Radio signal strength",
    "drop": "Dropped readings",
    ANOMALIES: "Anomaly score",
}


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def iso_ms(t: float) -> str:
    """A reading's time: whole seconds as :func:`iso`, else with milliseconds."""
    ms = round(t * 1000)
    if ms % 1000 == 0:
        return iso(ms // 1000)
    return iso(ms // 1000)[:-1] + f".{ms % 1000:03d}Z"


def parse_instant(s: str) -> float:
    """A SensorThings time instant (or an interval's start) -> Unix seconds, fractions kept."""
    from datetime import datetime

    start = s.split("/", 1)[0].replace("Z", "+00:00")
    return datetime.fromisoformat(start).timestamp()


def parse_time(s: str) -> int:
    """A SensorThings time instant (or the start of an interval) -> Unix seconds."""
    from datetime import datetime

    start = s.split("/", 1)[0].replace("Z", "+00:00")
    return int(datetime.fromisoformat(start).timestamp())


_ID_IN_LINK = re.compile(r"\('?([^')]+)'?\)$")
_UNQUOTED_ID = re.compile(
    r"^(\d+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
)


def id_from_link(link: str) -> str:
    m = _ID_IN_LINK.search(link)
    if not m:
        raise SyncError(f"not an entity link: {link!r}")
    return m.group(1)


def id_literal(entity_id: str) -> str:
    """How an id is written in a path or a $filter: numbers and UUIDs bare, strings quoted."""
    if _UNQUOTED_ID.match(entity_id):
        return entity_id
    return "'{}'".format(entity_id.replace("'", "''"))


def rebase(root: str, path: str) -> str:
    """An absolute URL for ``path`` under the service ``root``.

    A link the platform made (self link, ``@iot.nextLink``) keeps its path and query but is
    sent to the root we were configured with: the platform may sit behind a proxy and not
    know its public address.
    """
    if path.startswith(("http://", "https://")):
        tail = "/" + root.rsplit("/", 1)[1] + "/"
        if tail in path:
            return root + "/" + path.split(tail, 1)[1]
        return path
    return root + "/" + path.lstrip("/")


def origin(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` of ``url``, default port filled in: where a request goes."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


@dataclass(frozen=True)
class Answer:
    """A platform's answer, read whole within ``MAX_ANSWER_BYTES`` and decompressed."""

    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def _decompressor(encoding: str) -> "zlib._Decompress | None":
    """A decompressor for a Content-Encoding the gateway asked for (it sends
    ``Accept-Encoding: gzip``; deflate is taken too), None for identity."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise BadAnswer(f"the platform answered in Content-Encoding {encoding!r}, not gzip")


def _read(resp: httpx.Response, limit: int) -> bytes:
    """The body of a streamed ``resp``, decompressed, or ``BadAnswer`` as soon as more than
    ``limit`` bytes arrive or come out of the decompressor: a bomb never sits in memory
    (zlib's ``max_length`` keeps each step's output within what is left)."""
    dec = _decompressor(resp.headers.get("Content-Encoding", ""))
    out = bytearray()
    too_big = BadAnswer(
        f"the platform's answer is over {limit >> 20} MB (received or decompressed): "
        "given up (gateway.sync.sensorthings.MAX_ANSWER_BYTES)"
    )
    for chunk in resp.iter_raw():
        if resp.num_bytes_downloaded > limit:
            raise too_big
        if dec is None:
            out += chunk
            continue
        data = chunk
        while data:
            out += dec.decompress(data, limit + 1 - len(out))
            if len(out) > limit:
                raise too_big
            data = dec.unconsumed_tail
    if dec is not None:
        out += dec.flush()
    if len(out) > limit:
        raise too_big
    return bytes(out)


def path_id(entity_id: str) -> str:
    return entity_id if entity_id.isdigit() else f"'{entity_id}'"


def _wire_size(request: httpx.Request) -> int:
    """Bytes of the request on the wire: request line, headers, blank line, body."""
    target = request.url.raw_path.decode("ascii")
    size = len(f"{request.method} {target} HTTP/1.1\r\n") + 2
    size += sum(len(k) + len(v) + 4 for k, v in request.headers.raw)
    return size + len(request.content)


def _response_size(response: httpx.Response) -> int:
    """Bytes of the answer on the wire, as far as it was read (status line guessed)."""
    head = 17 + sum(len(k) + len(v) + 4 for k, v in response.headers.raw) + 2
    return head + response.num_bytes_downloaded


class SensorThingsTarget:
    """A SensorThings v1.1 service at ``url`` (its root, e.g. ``https://host/v1.1``)."""

    def __init__(
        self,
        url: str,
        db: sqlite_utils.Database,
        budget: Budget,
        *,
        token: str | None = None,
        basic: tuple[str, str] | None = None,
        ca_file: str | None = None,
        timeout: float = 30.0,
        compress: str = "auto",
        locations: Mapping[str, tuple[float, float]] | None = None,
        default_location: tuple[float, float] | None = None,
        max_rows: int = 2000,
        gateway_id: str = DEFAULT_GATEWAY_ID,
    ) -> None:
        if compress not in ("auto", "gzip", "none"):
            raise ValueError(f"compress must be auto, gzip or none, not {compress!r}")
        self.url = url.rstrip("/")
        self.db = db
        self.budget = budget
        self.compress = compress
        self.locations = dict(locations or {})
        self.default_location = default_location
        self.max_rows = max_rows
        self.gateway_id = gateway_id
        headers = {"Accept-Encoding": "gzip"}
        if token:
            headers["Authorization"] = "Bearer " + token
        verify: ssl.SSLContext | bool = True
        if ca_file:
            verify = ssl.create_default_context(cafile=ca_file)
        self.client = httpx.Client(
            headers=headers,
            auth=httpx.BasicAuth(*basic) if basic else None,
            verify=verify,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        )
        # Drop httpx's User-Agent and Accept: bytes on a metered link.
        for name in ("User-Agent", "Accept"):
            self.client.headers.pop(name, None)
        self._gzip_ok = compress == "gzip" or (
            compress == "auto" and (self._state("gzip") or "1") == "1"
        )

    def close(self) -> None:
        self.client.close()

    # -- one request ------------------------------------------------------------------------

    def _state(self, name: str) -> str | None:
        row = self.db.execute(
            "SELECT value FROM sync_state WHERE name = ?", [f"st:{self.url}:{name}"]
        ).fetchone()
        return row[0] if row else None

    def _set_state(self, name: str, value: str) -> None:
        with self.db.atomic():
            self.db.execute(
                "INSERT INTO sync_state (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                [f"st:{self.url}:{name}", value],
            )

    def _absolute(self, path: str) -> str:
        return rebase(self.url, path)

    def request(
        self, method: str, path: str, *, body: object = None, params: dict | None = None
    ) -> Answer:
        """Send one request within the budget; return its answer when its status is the
        success ``SUCCESS`` defines for ``method``, else raise (see gateway/sync/target.py).

        Redirects are not followed (httpx's default, kept on purpose): the token would go
        wherever the answer points, and a 3xx is no confirmation of anything."""
        content = None
        headers = {}
        compressed = False
        if body is not None:
            content = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
            if self._gzip_ok and len(content) > 200:
                content = gzip.compress(content, compresslevel=9, mtime=0)
                headers["Content-Encoding"] = "gzip"
                compressed = True
        req = self.client.build_request(
            method, self._absolute(path), content=content, headers=headers, params=params
        )
        size = _wire_size(req)
        self.budget.spend(size)
        try:
            resp = self.client.send(req, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            self.budget.refund(size)
            raise Unreachable(str(exc) or type(exc).__name__) from exc
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise Uncertain(str(exc) or type(exc).__name__) from exc
        try:
            answer = Answer(resp.status_code, _read(resp, MAX_ANSWER_BYTES))
        except zlib.error as exc:
            raise Uncertain(f"the platform's compressed answer is corrupt: {exc}") from exc
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise Uncertain(str(exc) or type(exc).__name__) from exc
        finally:
            resp.close()
            self.budget.add_received(_response_size(resp))
        status = answer.status
        if status >= 500:
            raise Uncertain(f"platform answered {status}")
        if compressed and self.compress == "auto" and status in (400, 415, 422):
            # This platform does not take compressed bodies: say so once, send plain.
            self._gzip_ok = False
            self._set_state("gzip", "0")
            return self.request(method, path, body=body, params=params)
        if status in (401, 403):
            raise AuthFailed(status, answer.text)
        if status >= 400:
            raise Rejected(status, answer.text)
        if status not in SUCCESS.get(method, (200,)):
            where = resp.headers.get("Location")
            hint = f" to {where} (not followed: check [sync] url)" if where else ""
            raise BadAnswer(
                f"platform answered {status}{hint} to {method} {req.url.path}, which confirms "
                f"nothing (success is {' or '.join(map(str, SUCCESS.get(method, (200,))))})"
            )
        return answer

    def _json(self, answer: Answer) -> object:
        try:
            return json.loads(answer.body)
        except ValueError as exc:
            raise Uncertain("unreadable answer from the platform") from exc

    def _next_link(self, link: object, seen: set[str]) -> str:
        """Where ``@iot.nextLink`` ``link`` may be fetched: re-based on the service root
        (``rebase``), then only on the root's own origin (the bearer token goes with every
        request), never twice for one collection (a loop)."""
        if not isinstance(link, str):
            raise BadAnswer(f"@iot.nextLink should be a URL, not {link!r:.80}")
        url = rebase(self.url, link)
        if origin(url) != origin(self.url):
            raise BadAnswer(
                f"@iot.nextLink leads off the platform ({link!r:.120}): not followed, "
                f"only links on {self.url}'s own scheme, host and port are"
            )
        if url in seen:
            raise BadAnswer(f"@iot.nextLink loops back to a page already read ({link!r:.120})")
        seen.add(url)
        return url

    def pages(self, path: str, params: dict | None = None) -> Iterator[dict]:
        """GET a collection and follow its ``@iot.nextLink`` pages (``_next_link``), at
        most ``MAX_PAGES`` of them."""
        answer = self.request("GET", path, params=params)
        seen: set[str] = set()
        for n in range(1, MAX_PAGES + 1):
            page = self._json(answer)
            if not isinstance(page, dict):
                raise Uncertain("a collection should be a JSON object")
            yield page
            link = page.get("@iot.nextLink")
            if not link:
                return
            if n == MAX_PAGES:
                break
            answer = self.request("GET", self._next_link(link, seen))
        raise BadAnswer(
            f"{path}: still an @iot.nextLink after {MAX_PAGES} pages: given up "
            "(gateway.sync.sensorthings.MAX_PAGES)"
        )

    # -- Things and Datastreams -------------------------------------------------------------

    def known_streams(self) -> dict[tuple[str, str], str]:
        return {
            (r[0], r[1]): r[2]
            for r in self.db.execute(
                "SELECT node, stream, entity_id FROM sync_streams WHERE target = ?", [self.url]
            )
        }

    def _remember(self, rows: Iterable[tuple[str, str, str]]) -> None:
        with self.db.atomic():
            self.db.conn.executemany(
                "INSERT OR REPLACE INTO sync_streams (node, stream, target, entity_id) "
                "VALUES (?, ?, ?, ?)",
                [(node, stream, self.url, eid) for node, stream, eid in rows],
            )

    def forget_streams(self, ids: Iterable[str]) -> None:
        """Drop these Datastream ids from ``sync_streams``: every row sent to them failed, so
        they may have been deleted on the platform; the next ``ensure_streams`` looks again."""
        with self.db.atomic():
            self.db.conn.executemany(
                "DELETE FROM sync_streams WHERE target = ? AND entity_id = ?",
                [(self.url, ds) for ds in ids],
            )

    def _location(self, node: str) -> tuple[float, float]:
        loc = self.locations.get(node) or self.default_location
        if loc is None:
            raise SyncError(
                f"no location for node {node}: set its location in the nodes config, "
                "or [sync] location for the gateway's own"
            )
        return loc

    def _datastream(self, node: str, stream: str) -> dict:
        channel = stream.removesuffix(RAW_SUFFIX)
        unit = "1" if stream == ANOMALIES else CHANNELS.get(channel, "1")
        what = PROPERTY_NAMES.get(channel, channel)
        summary = "anomaly events" if stream == ANOMALIES else "hourly summaries"
        if stream.endswith(RAW_SUFFIX):
            summary = "raw readings"
        return {
            "name": f"{node}/{stream}",
            "description": f"{what} of node {node}: {summary}",
            "observationType": OM_MEASUREMENT,
            "unitOfMeasurement": {
                "name": UNIT_NAMES.get(unit, unit),
                "symbol": unit,
                "definition": "https://ucum.org/ucum#" + unit,
            },
            "properties": {"node": node, "channel": stream, GATEWAY_PROPERTY: self.gateway_id},
            "Sensor": {
                "name": f"Réverbère node {node}",
                "description": "MicroPython sensor node behind a Réverbère gateway",
                "encodingType": "text/html",
                "metadata": "https://reverbere.invalid/node",
            },
            "ObservedProperty": {
                "name": what,
                "definition": f"urn:reverbere:channel:{channel}",
                "description": what,
            },
        }

    def ensure_streams(self, needed: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """Datastream ids of every ``(node, stream)`` in ``needed``, creating what is missing.

        Never creates before looking: a Thing or Datastream whose creation had an uncertain
        outcome is found by name and this gateway's id (``_lookup``) and adopted, not created
        twice.
        """
        if self._state("gateway") != self.gateway_id:
            self._claim_known()
        known = self.known_streams()
        missing = sorted({k for k in needed if k not in known})
        if not missing:
            return known
        by_node: dict[str, set[str]] = {}
        for node, stream in missing:
            by_node.setdefault(node, set()).add(stream)
        # 1. Look the Things up by name, with their Datastreams: an earlier creation with
        #    an uncertain outcome may have made them.
        self._lookup(sorted(by_node))
        known = self.known_streams()
        # 2. Create what is still missing: a whole Thing by deep insert, or Datastreams.
        created = []
        for node, streams in sorted(by_node.items()):
            todo = sorted(s for s in streams if (node, s) not in known)
            if not todo:
                continue
            created.append(node)
            if (node, "") in known:
                for stream in todo:
                    body = self._datastream(node, stream)
                    body["Thing"] = {"@iot.id": known[(node, "")]}
                    self.request("POST", "Datastreams", body=body)
                continue
            lon, lat = self._location(node)
            thing = {
                "name": node,
                "description": f"Réverbère sensor node {node}",
                "properties": {"node": node, GATEWAY_PROPERTY: self.gateway_id},
                "Locations": [
                    {
                        "name": node,
                        "description": f"where node {node} is installed",
                        "encodingType": "application/geo+json",
                        "location": {"type": "Point", "coordinates": [lon, lat]},
                    }
                ],
                "Datastreams": [self._datastream(node, s) for s in todo],
            }
            self.request("POST", "Things", body=thing)
        # 3. Learn the new ids (20 Things per request rather than one each).
        self._lookup(created)
        return self.known_streams()

    def _things(self, nodes: list[str]) -> Iterator[tuple[str, list[dict]]]:
        """``(node, the Things named after it)``, 20 nodes a request, with their properties
        and Datastreams. Several gateways may each have a Thing ``lamp-001``: which one is
        whose is decided by the caller, from the properties (filtered here, client side,
        rather than by ``$filter`` on ``properties/gateway``: the Things made before the
        property existed must be found too, and not every server filters on properties)."""
        for i in range(0, len(nodes), 20):
            chunk = nodes[i : i + 20]
            flt = " or ".join("name eq '{}'".format(n.replace("'", "''")) for n in chunk)
            params = {
                "$filter": flt,
                "$select": "id,name,properties",
                "$expand": "Datastreams($select=id,name)",
            }
            named: dict[str, list[dict]] = {n: [] for n in chunk}
            for page in self.pages("Things", params):
                for thing in page.get("value", []):
                    if thing.get("name") in named:
                        named[thing["name"]].append(thing)
            yield from named.items()

    @staticmethod
    def _owner(thing: dict) -> str | None:
        props = thing.get("properties")
        owner = props.get(GATEWAY_PROPERTY) if isinstance(props, dict) else None
        return str(owner) if owner is not None else None

    def _claim(self, thing: dict) -> None:
        """Write this gateway's id into a Thing made before Things carried one (PATCH,
        keeping its other properties): from now on no other gateway takes it."""
        props = thing.get("properties") if isinstance(thing.get("properties"), dict) else {}
        body = {"properties": {**props, GATEWAY_PROPERTY: self.gateway_id}}
        self.request("PATCH", f"Things({path_id(str(thing['@iot.id']))})", body=body)

    def _lookup(self, nodes: list[str]) -> None:
        """Find these nodes' Things (this gateway's: see ``_things``) and their Datastreams;
        remember what exists. A Thing carrying this gateway's id is ours; failing that, one
        carrying no gateway id (made before there were any) is claimed, once; one carrying
        another gateway's id never is."""
        found = []
        for node, things in self._things(nodes):
            ours = [t for t in things if self._owner(t) == self.gateway_id]
            if not ours:
                ours = [t for t in things if self._owner(t) is None][:1]
                for thing in ours:
                    self._claim(thing)
            if not ours:
                continue
            thing = min(ours, key=lambda t: str(t["@iot.id"]))
            found.append((node, "", str(thing["@iot.id"])))
            for ds in thing.get("Datastreams", []):
                prefix, _, stream = ds["name"].rpartition("/")
                if prefix == node:
                    found.append((node, stream, str(ds["@iot.id"])))
        self._remember(found)

    def _claim_known(self) -> None:
        """Once per gateway id: the Things remembered in ``sync_streams`` (found or made
        before Things carried a gateway id) get this gateway's id, so that a second gateway
        with the same node ids does not take them; a remembered Thing that carries another
        gateway's id is forgotten, with its Datastreams, and this gateway's own is looked up
        or made at the next ``ensure_streams``."""
        known = self.known_streams()
        thing_ids = {node: eid for (node, stream), eid in known.items() if stream == ""}
        foreign = []
        for node, things in self._things(sorted(thing_ids)):
            for thing in things:
                if str(thing["@iot.id"]) != thing_ids[node]:
                    continue
                owner = self._owner(thing)
                if owner is None:
                    self._claim(thing)
                elif owner != self.gateway_id:
                    foreign.append(node)
        if foreign:
            with self.db.atomic():
                self.db.conn.executemany(
                    "DELETE FROM sync_streams WHERE target = ? AND node = ?",
                    [(self.url, node) for node in foreign],
                )
        self._set_state("gateway", self.gateway_id)

    # -- Observations -----------------------------------------------------------------------

    def create(self, groups: Mapping[str, list[Row]]) -> dict[int, str | None]:
        """Create Observations in one ``CreateObservations`` request (DataArray extension).

        Returns, per outbox item, the new Observation's id, or None where the platform
        answered "error" for that row (a failed row still comes back inside a 201).
        Raises :class:`Uncertain` when the answer does not account for every row.
        """
        body = []
        order: list[int] = []
        for ds_id, rows in groups.items():
            body.append(
                {
                    "Datastream": {"@iot.id": ds_id},
                    "components": ["phenomenonTime", "result", "parameters"],
                    "dataArray": [[iso(r.time), r.result, r.parameters] for r in rows],
                }
            )
            order += [r.item for r in rows]
        resp = self.request("POST", "CreateObservations", body=body)
        links = self._json(resp)
        if not isinstance(links, list) or len(links) != len(order):
            raise Uncertain(
                f"CreateObservations answered {len(links) if isinstance(links, list) else links!r}"
                f" for {len(order)} rows"
            )
        out: dict[int, str | None] = {}
        for item, link in zip(order, links, strict=True):
            out[item] = None if not isinstance(link, str) or link == "error" else id_from_link(link)
        return out

    def create_raw(self, groups: Mapping[str, list[tuple[float, float]]]) -> list[bool]:
        """Create raw readings ``(time, value)`` as Observations, one ``CreateObservations``
        request (DataArray: only ``phenomenonTime`` and ``result``, a dozen bytes a reading
        once gzipped). Returns, in order, whether each was created."""
        body = [
            {
                "Datastream": {"@iot.id": ds_id},
                "components": ["phenomenonTime", "result"],
                "dataArray": [[iso_ms(t), v] for t, v in readings],
            }
            for ds_id, readings in groups.items()
        ]
        total = sum(len(r) for r in groups.values())
        links = self._json(self.request("POST", "CreateObservations", body=body))
        if not isinstance(links, list) or len(links) != total:
            raise Uncertain(f"CreateObservations answered {links!r:.80} for {total} readings")
        return [isinstance(link, str) and link != "error" for link in links]

    def observation_times(
        self, ranges: Iterable[tuple[str, float, float]]
    ) -> dict[str, list[tuple[str, float]]]:
        """``(obs id, phenomenonTime)`` per Datastream id, for each ``(Datastream id, t0, t1)``
        in ``ranges`` (phenomenonTime in ``[t0, t1]``, whole seconds around it); 20 ranges a
        request, each its own clause, so scattered ranges do not read what lies between."""
        clauses = sorted(
            f"(Datastream/id eq {id_literal(ds)} and phenomenonTime ge {iso(math.floor(t0))}"
            f" and phenomenonTime le {iso(math.ceil(t1))})"
            for ds, t0, t1 in set(ranges)
        )
        out: dict[str, list[tuple[str, float]]] = {}
        seen: set[str] = set()  # an Observation two overlapping clauses both found
        for i in range(0, len(clauses), 20):
            params = {
                "$filter": " or ".join(clauses[i : i + 20]),
                "$select": "id,phenomenonTime",
                "$resultFormat": "dataArray",
                "$orderby": "id asc",
                "$top": "10000",
            }
            for ds, rec in self.observation_records(params):
                if str(rec["id"]) not in seen:
                    seen.add(str(rec["id"]))
                    when = parse_instant(rec["phenomenonTime"])
                    out.setdefault(ds, []).append((str(rec["id"]), when))
        return out

    def update(self, obs_id: str, row: Row) -> bool:
        """PATCH an existing Observation; False when it no longer exists (404)."""
        try:
            self.request(
                "PATCH",
                f"Observations({path_id(obs_id)})",
                body={"result": row.result, "parameters": row.parameters},
            )
        except Rejected as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def delete(self, obs_id: str) -> None:
        try:
            self.request("DELETE", f"Observations({path_id(obs_id)})")
        except Rejected as exc:
            if exc.status != 404:
                raise

    def observations(
        self, ds_ids: Iterable[str] | None, t0: int, t1: int
    ) -> dict[str, list[tuple[str, int, float, dict]]]:
        """What the platform has, per Datastream id: ``(obs id, time, result, parameters)``
        for phenomenonTime in ``[t0, t1]`` (all Datastreams when ``ds_ids`` is None)."""
        flt = f"phenomenonTime ge {iso(t0)} and phenomenonTime le {iso(t1)}"
        if ds_ids is not None:
            ids = sorted(set(ds_ids))
            flt = "({}) and {}".format(
                " or ".join(f"Datastream/id eq {id_literal(i)}" for i in ids),
                flt,
            )
        params = {
            "$filter": flt,
            "$select": "id,phenomenonTime,result,parameters",
            "$resultFormat": "dataArray",
            "$orderby": "id asc",
            "$top": "10000",
        }
        out: dict[str, list] = {}
        for ds, rec in self.observation_records(params):
            out.setdefault(ds, []).append(
                (
                    str(rec["id"]),
                    parse_time(rec["phenomenonTime"]),
                    rec["result"],
                    rec.get("parameters") or {},
                )
            )
        return out

    def observation_records(self, params: dict) -> Iterator[tuple[str, dict]]:
        """Each Observation a ``$resultFormat=dataArray`` query finds, every page of it:
        ``(Datastream id, {component: value})``."""
        for page in self.pages("Observations", params):
            for group in page.get("value", []):
                ds = id_from_link(group["Datastream@iot.navigationLink"])
                cols = group["components"]
                for values in group["dataArray"]:
                    yield ds, dict(zip(cols, values, strict=True))
