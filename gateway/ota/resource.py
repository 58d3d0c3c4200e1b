"""``GET /u/...``: manifests and files for nodes, block by block (RFC 7959 Block2), stateless.

- ``/u/<node id>/m?v=<running version>&r=<last result>``: the node's signed manifest (4.04
  when none waits); the query is the node's report (``updates.Pending.report``);
- ``/u/f/<SHA-256 hex>``: a stored firmware file (firmware is no secret: what only a node
  may install is said by its signed manifest), as served (deflated when its manifest entry
  gives a deflated size).

Every block is cut from the stored bytes on each request: any block may be asked at any time,
by any node, after any pause or reboot, and the gateway holds nothing per node between
requests (aiocoap's own Block2 would keep a response per exchange). Block 0 carries Size2
(RFC 7959 Section 4); every block carries an ETag, the start of the representation's SHA-256,
so that a node sees that a manifest changed between two of its blocks (Section 2.4). A block
size above 1024 bytes (SZX 7, BERT) is answered at 1024; a block past the end gets 4.02
(Bad Option, Section 2.2). The node asks for 512-byte blocks (firmware/ota.py).
"""

import hashlib
import logging
import re
from typing import Any

import sqlite_utils
from aiocoap import Message, optiontypes
from aiocoap.numbers.codes import Code

from gateway.ota.updates import Pending, file_data, waiting_manifest
from protocols.manifest import UPDATE_PATH

log = logging.getLogger("reverbere.ota")

MAX_SZX = 6  # 1024-byte blocks: the largest for UDP (SZX 7 is BERT, RFC 8323)
_HEX = re.compile(r"[0-9a-f]{64}")
_QUERY = re.compile(r"([vr])=(\d{1,9})")


def block(data: bytes, num: int, szx: int) -> Message:
    """Block ``num`` of ``data`` with size 2^(szx+4) as a 2.05 response (4.02 if past the end)."""
    szx = min(szx, MAX_SZX)
    size = 1 << (szx + 4)
    start = num * size
    if start > len(data) or (start == len(data) and num > 0):
        return Message(code=Code.BAD_OPTION, payload=b"block past the end")
    more = start + size < len(data)
    msg = Message(code=Code.CONTENT, payload=data[start : start + size])
    msg.opt.block2 = optiontypes.BlockOption.BlockwiseTuple(num, more, szx)
    msg.opt.etag = hashlib.sha256(data).digest()[:8]
    if num == 0:
        msg.opt.size2 = len(data)
    return msg


class UpdateResource:
    """What the root resource (``ingest.resource.ReadingsResource``) hands ``/u/...`` to."""

    def __init__(self, db: sqlite_utils.Database, pending: Pending):
        self.db = db
        self.pending = pending

    async def render(self, request: Any) -> Message:
        if request.code != Code.GET:
            return Message(code=Code.METHOD_NOT_ALLOWED, payload=b"GET only")
        path = request.opt.uri_path
        b2 = request.opt.block2
        num, szx = (0, MAX_SZX) if b2 is None else (b2.block_number, b2.size_exponent)
        data = None
        if len(path) != 3 or path[0] != UPDATE_PATH:
            pass
        elif path[2] == "m":
            data = waiting_manifest(self.db, path[1])
            report = dict(m.groups() for q in request.opt.uri_query if (m := _QUERY.fullmatch(q)))
            if data is not None and report and num == 0:  # once per fetch, not per block
                self.pending.report(path[1], _int(report.get("v")), _int(report.get("r")))
        elif path[1] == "f" and _HEX.fullmatch(path[2]):
            data = file_data(self.db, path[2])
        if data is None:
            return Message(code=Code.NOT_FOUND, payload=b"no such update")
        return block(data, num, szx)


def _int(text: str | None) -> int | None:
    return None if text is None else int(text)
