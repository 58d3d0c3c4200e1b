"""aiocoap is pinned to one exact version because gateway/ingest/coap.py leans on its insides.

``BoundedMessageManager`` overrides ``MessageManager``'s private deduplication methods and
replaces the ``_recent_messages`` table its ``__init__`` makes; ``ServerContext`` copies
``Context.render_to_pipe`` and calls the private ``_render_to_pipe``; ``GuardedUDP6`` overrides
the UDP transport's datagram callback; ``BoundedMessageManager._resend`` and
``GuardedUDP6._reset`` write to the socket as ``MessageInterfaceUDP6.send`` does;
``GuardedUDP6._drain`` reads it as the recvmsg transport's ``_read_ready`` does; ``bound_port``
calls the private ``_local_port``. None of that is aiocoap's API: a release may rename, re-sign
or change any of it, and the gateway would then silently keep every response for 247 s again,
or answer retransmissions twice, or crash on the first datagram.

So each aiocoap function the module overrides, copies or calls privately is recorded here with
its signature and a hash of its source. Any change fails this test, with what to re-check.
"""

import ast
import hashlib
import importlib
import inspect
import tomllib
from pathlib import Path

import aiocoap.meta
import pytest

ROOT = Path(__file__).resolve().parent.parent
COAP = ROOT / "gateway" / "ingest" / "coap.py"
PINNED = "0.4.17"

# (aiocoap name, signature, first 16 hex digits of the sha256 of its source,
#  what of gateway/ingest/coap.py depends on it)
TOUCHED = [
    (
        "aiocoap.messagemanager.MessageManager.__init__",
        "(self, token_manager) -> None",
        "72c9368529c43e76",
        "BoundedMessageManager.__init__ replaces _recent_messages and uses self.loop",
    ),
    (
        "aiocoap.messagemanager.MessageManager.dispatch_message",
        "(self, message)",
        "74449686c5ca98ad",
        "it calls _deduplicate_message for requests only and drops them on `is True`",
    ),
    (
        "aiocoap.messagemanager.MessageManager._deduplicate_message",
        "(self, message)",
        "c1bd664fd011cac1",
        "BoundedMessageManager._deduplicate_message must do what it does, bounded",
    ),
    (
        "aiocoap.messagemanager.MessageManager._store_response_for_duplicates",
        "(self, message)",
        "e8444712cfbb49bb",
        "BoundedMessageManager._store_response_for_duplicates stores encoded bytes instead",
    ),
    (
        "aiocoap.messagemanager.MessageManager._send_initially",
        "(self, message, messageerror_monitor=None)",
        "87b047727148d080",
        "it calls _store_response_for_duplicates with every response sent",
    ),
    (
        "aiocoap.protocol.Context.render_to_pipe",
        "(self, pipe)",
        "db9191612a64e0c4",
        "ServerContext.render_to_pipe is a copy of it without the repr() of the request",
    ),
    (
        "aiocoap.protocol.Context._render_to_pipe",
        "(self, pipe)",
        "22e185e6368d8759",
        "ServerContext.render_to_pipe calls it",
    ),
    (
        "aiocoap.pipe.error_to_message",
        "(old_pr, log)",
        "8bc3e59c1acb1786",
        "ServerContext.render_to_pipe calls it as Context.render_to_pipe does",
    ),
    (
        "aiocoap.pipe.run_driving_pipe",
        "(pipe, coroutine, name=None)",
        "f829447bc0e0030c",
        "ServerContext.render_to_pipe calls it as Context.render_to_pipe does",
    ),
    (
        "aiocoap.transports.udp6.MessageInterfaceUDP6.__init__",
        "(self, ctx: aiocoap.interfaces.MessageManager, log, loop)",
        "6b368bddf58f4b28",
        "GuardedUDP6 uses self.loop; create_server sets message_interface/token_interface",
    ),
    (
        "aiocoap.transports.udp6.MessageInterfaceUDP6.create_server_transport_endpoint",
        "(ctx: aiocoap.interfaces.MessageManager, log, loop, bind, multicast)",
        "3c5ce45592f17911",
        "create_server calls it on GuardedUDP6 with bind= and multicast=",
    ),
    (
        "aiocoap.transports.udp6.MessageInterfaceUDP6.datagram_msg_received",
        "(self, data, ancdata, flags, address)",
        "b24499ce829025ac",
        "GuardedUDP6.datagram_msg_received checks each datagram, then calls it",
    ),
    (
        "aiocoap.transports.udp6.MessageInterfaceUDP6.send",
        "(self, message)",
        "b2401cf3f80c3085",
        "BoundedMessageManager._resend and GuardedUDP6._reset write to the socket as it does",
    ),
    (
        "aiocoap.util.asyncio.recvmsg.RecvmsgSelectorDatagramTransport._read_ready",
        "(self)",
        "ebb2ad8c43ea63c9",
        "GuardedUDP6._drain reads the socket as it does (recvmsg(4096, 1024)) after a ban",
    ),
    (
        "aiocoap.transports.udp6.MessageInterfaceUDP6._local_port",
        "(self)",
        "b53251c52e6f1e04",
        "bound_port calls it",
    ),
    (
        "aiocoap.transports.udp6.UDP6EndpointAddress.__init__",
        "(self, sockaddr, interface, *, pktinfo=None)",
        "39e2f0441f3be4d8",
        "GuardedUDP6 makes UDP6EndpointAddress(address, self) for refused datagrams",
    ),
]


def _resolve(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def _recheck(name: str, why: str, change: str) -> str:
    return (
        f"aiocoap {aiocoap.meta.version}: {name} {change}. Re-check gateway/ingest/coap.py "
        f"({why}) against the new code, then record the new signature and hash in "
        f"tests/test_aiocoap_pin.py and the version in pyproject.toml."
    )


def test_installed_aiocoap_is_the_pinned_one():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"aiocoap=={PINNED}" in deps, (
        f"pyproject.toml must pin aiocoap=={PINNED}: gateway/ingest/coap.py overrides its "
        f"private methods (this file lists them)"
    )
    assert aiocoap.meta.version == PINNED, (
        f"aiocoap {aiocoap.meta.version} is installed, the gateway was checked against "
        f"{PINNED}: reinstall the pinned version, or re-check everything listed in "
        f"tests/test_aiocoap_pin.py and move the pin"
    )


@pytest.mark.parametrize(
    ("name", "signature", "digest", "why"), TOUCHED, ids=[t[0].split(".", 2)[2] for t in TOUCHED]
)
def test_what_the_gateway_overrides_is_unchanged(name, signature, digest, why):
    try:
        obj = _resolve(name)
    except (AttributeError, ModuleNotFoundError):
        pytest.fail(_recheck(name, why, "is gone"))
    assert str(inspect.signature(obj)) == signature, _recheck(
        name, why, f"now takes {inspect.signature(obj)} instead of {signature}"
    )
    got = hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]
    assert got == digest, _recheck(name, why, f"has new source (hash {got}, was {digest})")


def _aiocoap_classes(tree: ast.Module) -> dict[str, type]:
    """The aiocoap classes gateway/ingest/coap.py imports, by the name it uses."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aiocoap"):
            for alias in node.names:
                obj = getattr(importlib.import_module(node.module), alias.name)
                if isinstance(obj, type):
                    out[alias.asname or alias.name] = obj
    return out


def test_every_aiocoap_insider_the_gateway_touches_is_listed():
    # The list above goes stale when coap.py grows: every method it defines in a subclass of an
    # aiocoap class that the aiocoap class already has (an override), and every private
    # attribute of an aiocoap class it reads, must be recorded with its hash.
    tree = ast.parse(COAP.read_text(encoding="utf-8"))
    classes = _aiocoap_classes(tree)
    listed = {".".join(name.split(".")[-2:]) for name, *_ in TOUCHED}  # Class.method
    missing = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = [
                classes[b.id] for b in node.bases if isinstance(b, ast.Name) and b.id in classes
            ]
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    for base in bases:
                        owner = next((c for c in base.__mro__ if item.name in vars(c)), None)
                        if owner is not None and owner.__module__.startswith("aiocoap"):
                            missing.add(f"{owner.__name__}.{item.name} (overridden)")
        if isinstance(node, ast.Attribute) and node.attr[0] == "_" and node.attr[-1] != "_":
            for cls in classes.values():
                owner = next((c for c in cls.__mro__ if node.attr in vars(c)), None)
                if owner is not None and owner.__module__.startswith("aiocoap"):
                    missing.add(f"{owner.__name__}.{node.attr} (private, line {node.lineno})")
    missing = {m for m in missing if m.split(" ")[0] not in listed}
    assert not missing, (
        "gateway/ingest/coap.py touches aiocoap insides this test does not record: "
        + ", ".join(sorted(missing))
        + ". Add each to TOUCHED in tests/test_aiocoap_pin.py with its signature, hash and why."
    )
