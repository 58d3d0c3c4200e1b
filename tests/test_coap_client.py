"""Independent peers: a COSE_Mac0 made by PyPI `cwt` (with `cbor2` for the SenML pack), posted
by libcoap's `coap-client-notls`, is verified and stored; the same bytes with a wrong key are
refused. Neither peer shares code with protocols/."""

import asyncio
import shutil
import subprocess
import time

import cbor2
import pytest
from cwt import COSE, COSEKey
from gateway_helpers import add_node, count_readings, running_gateway

pytestmark = pytest.mark.skipif(
    shutil.which("coap-client-notls") is None, reason="needs libcoap3-bin (make system-deps)"
)


def cwt_message(key: bytes, kid: bytes, seq: int, pack: list) -> bytes:
    mac_key = COSEKey.from_symmetric_key(key, alg="HMAC 256/64", kid=kid)
    return COSE.new().encode_and_mac(
        cbor2.dumps(pack),
        mac_key,
        protected={1: 4, 6: seq.to_bytes(2, "big")},  # alg HMAC 256/64, Partial IV
        unprotected={4: kid},
    )


async def coap_client(port: int, path, *extra: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "coap-client-notls",
        "-m",
        "post",
        "-t",
        "17",
        "-f",
        str(path),
        "-B",
        "10",
        *extra,
        f"coap://127.0.0.1:{port}/r",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return out.decode(errors="replace")


def test_libcoap_client_with_a_cwt_message_is_stored(tmp_path):
    now = int(time.time()) // 60 * 60
    pack = [
        {-2: "p", -3: now - 600, 2: 61.5},
        {6: 60, 2: 62},
        {6: 120, 2: 60.25},
        {-2: "e", -3: now - 600, 5: 12345},
    ]

    async def go():
        async with running_gateway(tmp_path) as gw:
            key = add_node(gw, "lamp-cwt")
            good = tmp_path / "good.cose"
            good.write_bytes(cwt_message(key, b"lamp-cwt", 300, pack))
            await coap_client(gw.coap_port, good)
            assert count_readings(gw.cfg) == 4
            forged = tmp_path / "forged.cose"
            forged.write_bytes(cwt_message(b"\x07" * 32, b"lamp-cwt", 301, pack))
            out = await coap_client(gw.coap_port, forged)
            assert "4.01" in out
            assert count_readings(gw.cfg) == 4

    asyncio.run(go())
