"""The CoAP layer under hostile datagrams (issue 13, items 2, 3, 11, 14): a real gateway on a
real UDP socket, raw datagrams from sockets, answers read off the wire.

Each test would fail on the gateway before the hardening: Block1 uploads were reassembled by
aiocoap before /r saw them (2.31 Continue), unknown critical options were ignored, a token
length of 15 got 4.04, a non-UTF-8 Uri-Path escaped aiocoap with a traceback, every unparsable
datagram made a warning line, and a source failing authentication was never slowed down.
"""

import asyncio
import contextlib
import logging
import socket

import pytest
from gateway_helpers import (
    add_node,
    con_post,
    count_readings,
    exchange,
    http_get,
    metric,
    minute_readings,
    running_gateway,
)

from gateway.ingest.coap import FAILED_BURST, KernelBans, guarded_transport
from gateway.ingest.resource import MAX_REJECTION_LINES
from protocols import coap, cose, senml
from protocols.const import (
    BAD_REQUEST,
    CF_COSE_MAC0,
    CHANGED,
    CON,
    CONTENT_FORMAT,
    EMPTY,
    NON,
    NOT_FOUND,
    POST,
    REQUEST_ENTITY_TOO_LARGE,
    RST,
    SIZE1,
    UNAUTHORIZED,
    URI_PATH,
)

BLOCK1 = 27  # RFC 7959 Section 2.1
BAD_OPTION = 0x82  # 4.02
ACK = 2


def run(coro):
    return asyncio.run(coro)


def post(mid, options, payload=b"x", mtype=CON, token=b"tk"):
    return coap.encode(mtype, POST, mid, token, options=options, payload=payload)


def block1(num, more, szx):
    return (BLOCK1, coap.uint_option(num << 4 | more << 3 | szx))


R = (URI_PATH, b"r")
COSE = (CONTENT_FORMAT, coap.uint_option(CF_COSE_MAC0))


class _Collect(asyncio.DatagramProtocol):
    def __init__(self):
        self.queue = asyncio.Queue()

    def datagram_received(self, data, addr):
        self.queue.put_nowait(coap.decode(data))


@contextlib.asynccontextmanager
async def socket_from(host, port):
    """A UDP socket bound to ``host`` (127.0.0.x: another source address) to the gateway."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        _Collect, local_addr=(host, 0), remote_addr=("127.0.0.1", port)
    )
    try:
        yield transport, proto
    finally:
        transport.close()


async def ping_after(port, host="127.0.0.1"):
    """A CoAP ping (empty CON) answered with RST: everything the gateway received before it
    from the same socket has been handled (one socket, one event loop, in order)."""
    async with socket_from(host, port) as (transport, proto):
        transport.sendto(coap.encode(CON, EMPTY, 4242))
        msg = await asyncio.wait_for(proto.queue.get(), 5)
        assert (msg.mtype, msg.mid) == (RST, 4242)


def test_block1_is_refused_on_its_first_block_with_size1_and_bert_with_4_00(tmp_path):
    async def go():
        async with running_gateway(tmp_path, max_payload=512) as gw:
            key = add_node(gw)
            (msg,) = await exchange(gw.coap_port, post(1, [R, COSE, block1(0, 1, 6)], b"a" * 1024))
            assert msg.code == REQUEST_ENTITY_TOO_LARGE  # was 2.31 Continue: kept for 93 s
            assert coap.option_uint(msg.option(SIZE1)) == 512
            (msg,) = await exchange(gw.coap_port, post(2, [(URI_PATH, b"x"), block1(0, 1, 6)]))
            assert msg.code == NOT_FOUND  # other paths: nothing assembled either
            (msg,) = await exchange(gw.coap_port, post(3, [R, COSE, block1(0, 1, 7)], b"a" * 1024))
            assert msg.code == BAD_REQUEST  # SZX 7 (BERT) is not for UDP
            # a single-datagram pack still gets 4.13 with Size1 when it is too large
            big = cose.sign(key, b"lamp-001", 1, senml.encode(minute_readings(90)))
            (msg,) = await exchange(gw.coap_port, con_post(big, 4))
            assert msg.code == REQUEST_ENTITY_TOO_LARGE
            assert coap.option_uint(msg.option(SIZE1)) == 512
            _, text = await http_get(gw.http_port, "/metrics")
            assert metric(text, 'reverbere_packs_rejected_total{reason="blockwise"}') == 1
            assert metric(text, 'reverbere_packs_rejected_total{reason="bert"}') == 1

    run(go())


def test_unknown_critical_option_gets_4_02_and_an_unknown_elective_one_is_ignored(tmp_path):
    async def go():
        async with running_gateway(tmp_path) as gw:
            key = add_node(gw)
            pack = cose.sign(key, b"lamp-001", 1, senml.encode(minute_readings(3)))
            (msg,) = await exchange(gw.coap_port, post(1, [R, COSE, (2049, b"\x01")], pack))
            assert msg.code == BAD_OPTION  # odd number: critical (RFC 7252 Section 5.4.1)
            assert count_readings(gw.cfg) == 0
            (msg,) = await exchange(gw.coap_port, post(2, [R, COSE, (2048, b"\x01")], pack))
            assert msg.code == CHANGED  # even number: elective, ignored
            assert count_readings(gw.cfg) == 3

    run(go())


def test_a_token_length_of_15_is_a_format_error_rst_for_con_nothing_for_non(tmp_path):
    async def go():
        async with running_gateway(tmp_path) as gw:
            bad = bytearray(post(77, [R, COSE]))
            bad[0] = (bad[0] & 0xF0) | 15  # token length 15: reserved (RFC 7252 Section 3)
            async with socket_from("127.0.0.1", gw.coap_port) as (transport, proto):
                transport.sendto(bytes(bad))
                msg = await asyncio.wait_for(proto.queue.get(), 5)
                assert (msg.mtype, msg.code, msg.mid, msg.token) == (RST, EMPTY, 77, b"")
                non = bytearray(bad)
                non[0] = (non[0] & 0xCF) | NON << 4
                transport.sendto(bytes(non))
                transport.sendto(coap.encode(CON, EMPTY, 78))  # ping: RST 78 comes next
                msg = await asyncio.wait_for(proto.queue.get(), 5)
                assert (msg.mtype, msg.mid) == (RST, 78)
            _, text = await http_get(gw.http_port, "/metrics")
            assert metric(text, 'reverbere_packs_rejected_total{reason="coap_format"}') == 2

    run(go())


def test_a_non_utf8_uri_path_gets_rst_without_a_traceback(tmp_path, caplog):
    async def go():
        async with running_gateway(tmp_path) as gw:
            for mid in range(3):
                (msg,) = await exchange(gw.coap_port, post(mid, [(URI_PATH, b"\xff\xfe"), COSE]))
                assert (msg.mtype, msg.mid) == (RST, mid)
            _, text = await http_get(gw.http_port, "/metrics")
            assert metric(text, 'reverbere_packs_rejected_total{reason="coap_format"}') == 3

    with caplog.at_level(logging.WARNING):
        run(go())
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    formats = [r for r in caplog.records if r.getMessage() == "pack rejected"]
    assert len(formats) == 1 and "UnicodeDecodeError" in formats[0].fields["detail"]


def test_what_a_flood_of_junk_makes_aiocoap_and_ingest_log_shares_one_limit(tmp_path, caplog):
    """600 datagrams from 150 source addresses that each make a line: unparsable ones,
    requests sent as ACKs (aiocoap warns "those don't fit"), a Block1 POST: the lines stay
    within the ingest's limit of MAX_REJECTION_LINES a minute, aiocoap's and ingest's together
    (before: one aiocoap warning per datagram)."""

    async def go():
        async with running_gateway(tmp_path) as gw:
            for i in range(150):
                async with socket_from(f"127.0.1.{i + 1}", gw.coap_port) as (transport, _):
                    transport.sendto(b"\x4f" + bytes(40))  # token length 15
                    transport.sendto(bytes([0x40, POST, 0, i, 0xF0]))  # option nibble 15
                    transport.sendto(bytes([0x60, POST, 0, i]))  # a POST sent as an ACK
                    transport.sendto(post(i, [R, COSE, block1(0, 1, 2)]))
            await ping_after(gw.coap_port, "127.0.0.3")  # 127.0.0.1 is over its budget now

    aiocoap = logging.getLogger("coap-server")
    with caplog.at_level(logging.WARNING):
        run(go())
    lines = [r for r in caplog.records if r.name in (aiocoap.name, "reverbere.ingest")]
    assert 3 <= len(lines) <= MAX_REJECTION_LINES
    assert any(r.name == "coap-server" for r in lines)  # aiocoap's own lines are let through


def test_a_fault_nobody_foresaw_gets_4_00_not_5_00_and_no_traceback(tmp_path, caplog):
    """No hostile bytes are known to get past the strict decoders, so the fault is put in a
    real part: the node cache fails as a decoder bug would. The answer must still be 4.00."""

    async def go():
        async with running_gateway(tmp_path) as gw:
            key = add_node(gw)

            def broken(node_id):
                raise ArithmeticError("a decoder bug")

            gw._ingest.nodes.get = broken
            pack = cose.sign(key, b"lamp-001", 1, senml.encode(minute_readings(3)))
            for mid in range(3):
                (msg,) = await exchange(gw.coap_port, con_post(pack, mid))
                assert msg.code == BAD_REQUEST  # was 5.00 with a 2.2 KB traceback each
            _, text = await http_get(gw.http_port, "/metrics")
            assert metric(text, 'reverbere_packs_rejected_total{reason="unexpected"}') == 3

    with caplog.at_level(logging.WARNING):
        run(go())
    assert not [r for r in caplog.records if r.exc_info]


def test_a_source_failing_authentication_is_dropped_past_its_budget_others_are_not(tmp_path):
    async def go():
        async with running_gateway(tmp_path) as gw:
            key = add_node(gw)
            forged = cose.sign(b"\x07" * 32, b"lamp-999", 1, senml.encode(minute_readings(3)))
            n = int(FAILED_BURST) * 5
            async with socket_from("127.0.0.1", gw.coap_port) as (transport, proto):
                for mid in range(n):
                    transport.sendto(con_post(forged, mid))
                # the legitimate node, on another address, is answered at once
                pack = cose.sign(key, b"lamp-001", 1, senml.encode(minute_readings(3)))
                async with socket_from("127.0.0.2", gw.coap_port) as (t2, p2):
                    t2.sendto(con_post(pack, 1))
                    msg = await asyncio.wait_for(p2.queue.get(), 5)
                    assert msg.code == CHANGED
                await ping_after(gw.coap_port, "127.0.0.3")
                answered = [proto.queue.get_nowait() for _ in range(proto.queue.qsize())]
            assert all(m.code == UNAUTHORIZED for m in answered)
            _, text = await http_get(gw.http_port, "/metrics")
            dropped = metric(text, 'reverbere_packs_rejected_total{reason="source_over_budget"}')
            assert dropped > 0 and len(answered) < n
            assert dropped + len(answered) == n
            # the answered ones are the burst plus what the rate refilled meanwhile
            assert len(answered) <= FAILED_BURST + 2 * 20

    run(go())


def test_a_relay_whose_packs_are_sometimes_overtaken_is_never_cut_off(tmp_path):
    # Every node of the fleet's lossy proxy (or behind a border router, or a NAT) comes from
    # one address; reordering makes some packs arrive after a newer one: replays, 4.01. The
    # packs the relay delivers earn its budget back, so it is never dropped, where a source
    # that stores nothing (the test above) is.
    async def go():
        async with running_gateway(tmp_path) as gw:
            key = add_node(gw)
            n = int(FAILED_BURST) * 3
            async with socket_from("127.0.0.1", gw.coap_port) as (transport, proto):
                for seq in range(1, n + 1):  # each new pack, then an old one overtaken by it
                    fresh = cose.sign(key, b"lamp-001", 2 * seq, senml.encode(minute_readings(3)))
                    stale = cose.sign(key, b"lamp-001", 2 * seq - 1, senml.encode([]))
                    transport.sendto(con_post(fresh, 2 * seq))
                    assert (await asyncio.wait_for(proto.queue.get(), 5)).code == CHANGED
                    transport.sendto(con_post(stale, 2 * seq + 1))
                    assert (await asyncio.wait_for(proto.queue.get(), 5)).code == UNAUTHORIZED
            _, text = await http_get(gw.http_port, "/metrics")
            assert metric(text, 'reverbere_packs_rejected_total{reason="replay"}') == n
            assert metric(text, 'reverbere_packs_rejected_total{reason="source_over_budget"}') == 0

    run(go())


@pytest.mark.parametrize("wire", [b"\x40", b"\x40\x02\x00", b"\x40\x02\x00\x01\xff"])
def test_short_and_marker_only_datagrams_are_counted_and_never_answered_with_5_00(tmp_path, wire):
    async def go():
        async with running_gateway(tmp_path) as gw:
            async with socket_from("127.0.0.1", gw.coap_port) as (transport, proto):
                transport.sendto(wire)
                transport.sendto(coap.encode(CON, EMPTY, 9))
                msg = await asyncio.wait_for(proto.queue.get(), 5)
                if msg.mid != 9:  # a CON with a format error may get its RST first
                    assert msg.mtype == RST
                    msg = await asyncio.wait_for(proto.queue.get(), 5)
                assert (msg.mtype, msg.mid) == (RST, 9)
            _, text = await http_get(gw.http_port, "/metrics")
            assert metric(text, 'reverbere_packs_rejected_total{reason="coap_format"}') == 1

    run(go())


# Kernel bans (issue 13's flood target): a source over budget is listed in a socket filter for
# a few seconds, so that its datagrams are dropped before they are queued for the gateway.


def kernel_drops(port):
    """The kernel's drop counter of the UDP socket on ``port`` (``/proc/net/udp6``): what a
    socket filter refused, and overflows of the receive queue."""
    with open("/proc/net/udp6") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}"):
                return int(fields[-1])
    raise AssertionError(f"no UDP socket on port {port}")


def refused_total(text):
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("reverbere_packs_rejected_total{")
    )


def test_a_banned_source_is_dropped_in_the_kernel_while_another_is_answered(tmp_path):
    async def go():
        async with running_gateway(tmp_path) as gw:
            key = add_node(gw)
            port, bans = gw.coap_port, guarded_transport(gw._ctx).bans
            assert bans.available
            forged = cose.sign(b"\x07" * 32, b"lamp-999", 1, senml.encode(minute_readings(3)))
            pack = cose.sign(key, b"lamp-001", 1, senml.encode(minute_readings(3)))
            async with (
                socket_from("127.0.0.2", port) as (flooder, answers),
                socket_from("127.0.0.3", port) as (node, acks),
            ):
                for mid in range(int(FAILED_BURST) * 5):
                    flooder.sendto(con_post(forged, mid))
                    if mid == int(FAILED_BURST) * 4:  # amid the flood: the drain passes it on
                        node.sendto(con_post(pack, 1))
                assert (await asyncio.wait_for(acks.queue.get(), 5)).code == CHANGED
                await ping_after(port, "127.0.0.3")
                assert "::ffff:127.0.0.2" in bans  # its bucket ran out: banned
                _, text = await http_get(gw.http_port, "/metrics")
                seen, drops = refused_total(text), kernel_drops(port)

                for mid in range(200):
                    flooder.sendto(con_post(forged, 1000 + mid))
                pack = cose.sign(key, b"lamp-001", 2, senml.encode(minute_readings(3)))
                node.sendto(con_post(pack, 2))
                msg = await asyncio.wait_for(acks.queue.get(), 5)
                assert msg.code == CHANGED  # the node on another address is answered
                await ping_after(port, "127.0.0.3")
                _, text = await http_get(gw.http_port, "/metrics")
                assert refused_total(text) == seen  # Python saw none of the 200
                assert kernel_drops(port) - drops == 200  # the kernel dropped them

                # the ban ends: the source is heard again, with no token saved up meanwhile,
                # so its next failure is over budget at once and bans it again
                bans.unban("::ffff:127.0.0.2")
                assert "::ffff:127.0.0.2" not in bans
                flooder.sendto(con_post(forged, 2000))
                await ping_after(port, "127.0.0.3")
                _, text = await http_get(gw.http_port, "/metrics")
                assert refused_total(text) == seen + 1
                assert "::ffff:127.0.0.2" in bans
                assert answers.queue.qsize() <= FAILED_BURST + 2 * 20  # 4.01s: burst + refill

    run(go())


@contextlib.contextmanager
def listening(family, host):
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def received_from(server):
    """The source hosts of what ``server`` has queued (the kernel delivers loopback datagrams
    within the sender's sendto, so everything sent before is queued or dropped already)."""
    hosts = []
    with contextlib.suppress(BlockingIOError):
        while True:
            hosts.append(server.recvfrom(64)[1][0])
    return hosts


def test_kernel_bans_drop_ipv4_as_v4_mapped_and_ipv6_sources_and_lift_after_their_time():
    async def go():
        with (
            listening(socket.AF_INET6, "::") as server,  # dual-stack, as the gateway's
            listening(socket.AF_INET, "127.0.0.2") as banned4,
            listening(socket.AF_INET, "127.0.0.3") as other4,
            listening(socket.AF_INET6, "::1") as banned6,
        ):
            lifted = asyncio.Event()
            bans = KernelBans(server, asyncio.get_running_loop(), seconds=0.05)
            bans.lifted = lambda host: len(bans) == 0 and lifted.set()
            assert bans.ban("::ffff:127.0.0.2") and bans.ban("::1")
            assert not bans.ban("::1")  # banned already: no second timer
            port = server.getsockname()[1]
            for _ in range(3):
                banned4.sendto(b"x", ("127.0.0.1", port))
                other4.sendto(b"x", ("127.0.0.1", port))
                banned6.sendto(b"x", ("::1", port))
            assert received_from(server) == ["::ffff:127.0.0.3"] * 3

            await asyncio.wait_for(lifted.wait(), 5)  # both bans end on their own
            banned4.sendto(b"x", ("127.0.0.1", port))
            banned6.sendto(b"x", ("::1", port))
            assert sorted(received_from(server)) == ["::1", "::ffff:127.0.0.2"]

    run(go())


def test_the_ban_list_stops_growing_where_the_kernel_refuses_a_longer_filter(caplog):
    """The kernel refuses a filter larger than the socket's option memory
    (``net.core.optmem_max``: 20 KB on older kernels, about 30 IPv6 bans of 9 instructions)
    or than 4,096 instructions. With MAX_BANNED lifted, a few hundred IPv6 bans make one: the
    filter attached stays and bans go on, with the list at the length the kernel took."""

    async def go():
        with (
            listening(socket.AF_INET6, "::") as server,
            listening(socket.AF_INET6, "::1") as banned6,
            listening(socket.AF_INET, "127.0.0.3") as other4,
        ):
            bans = KernelBans(server, asyncio.get_running_loop(), max_banned=1000)
            assert bans.ban("::1")
            made = 1 + sum(bans.ban(f"2001:db8::{i:x}") for i in range(1, 1000))
            assert made < 1000 and bans.available and len(bans) == made == bans.max_banned
            assert not bans.ban("2001:db8::ffff")
            port = server.getsockname()[1]
            banned6.sendto(b"x", ("::1", port))
            other4.sendto(b"x", ("127.0.0.1", port))
            assert received_from(server) == ["::ffff:127.0.0.3"]
            bans.unban("::1")
            assert bans.ban("2001:db8::ffff")  # room again

    with caplog.at_level(logging.WARNING):
        run(go())
    (line,) = [r.getMessage() for r in caplog.records if "kernel bans" in r.getMessage()]
    assert line.startswith("at most ")


def test_where_no_filter_can_be_attached_bans_stop_with_one_line(caplog):
    """A socket whose filter is locked (SO_LOCK_FILTER) refuses another (EPERM), as a kernel
    or a sandbox without socket filters would: one line says so and over-budget datagrams
    are dropped in Python, as before."""
    SO_LOCK_FILTER = 44  # asm-generic/socket.h

    async def go():
        with listening(socket.AF_INET6, "::") as server:
            server.setsockopt(socket.SOL_SOCKET, SO_LOCK_FILTER, 1)
            bans = KernelBans(server, asyncio.get_running_loop())
            assert not bans.available
            assert not bans.ban("::ffff:127.0.0.2") and len(bans) == 0

    with caplog.at_level(logging.WARNING):
        run(go())
    (line,) = [r.getMessage() for r in caplog.records if "kernel bans" in r.getMessage()]
    assert line.startswith("no kernel bans ([Errno 1] Operation not permitted): ")
    assert line.endswith("over-budget sources dropped in Python")
