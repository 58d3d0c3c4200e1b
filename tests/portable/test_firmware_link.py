"""The CoAP exchange state machine (RFC 7252 Section 4.2) on a fake clock."""

try:
    from fw_fakes import FakeHal
except ImportError:
    from tests.portable.fw_fakes import FakeHal

from firmware.link import FAILED, REFUSED, Link
from protocols import coap
from protocols.const import ACK, CHANGED, CON, EMPTY, NON, POST, RST


def _link():
    hal = FakeHal()
    return hal, Link(hal.send, hal.urandom)


def _run_out(hal, link):
    """Poll at each due time until the exchange ends; return the send times (ms)."""
    times = [hal.now]
    while link.busy():
        hal.now = link.due
        n = len(hal.sent)
        link.poll(hal.now)
        if len(hal.sent) > n:
            times.append(hal.now)
    return times


def test_retransmits_four_times_with_doubling_timeouts_then_fails():
    hal, link = _link()
    link.start(POST, (), b"x", 0)
    times = _run_out(hal, link)
    assert len(times) == 5  # the first send and MAX_RETRANSMIT = 4 retransmissions
    first = times[1] - times[0]
    assert 2000 <= first <= 3000  # ACK_TIMEOUT * random(1, ACK_RANDOM_FACTOR)
    gaps = [times[i + 1] - times[i] for i in range(4)]
    assert gaps == [first, 2 * first, 4 * first, 8 * first]
    # Gives up at 2 * the last timeout: MAX_TRANSMIT_WAIT (93 s at most) after the first send.
    assert link.result == FAILED and hal.now == times[0] + 31 * first
    assert len(set(hal.sent)) == 1  # retransmissions are the same bytes


def test_piggybacked_response_ends_the_exchange():
    hal, link = _link()
    link.start(POST, (), b"x", 0)
    req = coap.decode(hal.sent[0])
    assert req.mtype == CON and req.code == POST and len(req.token) == 4
    link.datagram(coap.encode(ACK, CHANGED, req.mid + 1, req.token), 10)  # not ours
    assert link.busy()
    link.datagram(b"\x00garbage", 10)
    assert link.busy()
    link.datagram(coap.encode(ACK, CHANGED, req.mid, req.token, (), b"ok"), 10)
    assert not link.busy() and link.result.code == CHANGED and link.result.payload == b"ok"


def test_empty_ack_then_separate_confirmable_response_is_acknowledged():
    hal, link = _link()
    link.start(POST, (), b"x", 0)
    req = coap.decode(hal.sent[0])
    link.datagram(coap.encode(ACK, EMPTY, req.mid), 5)
    hal.now = 4000
    link.poll(hal.now)
    assert len(hal.sent) == 1  # no retransmission after an empty ACK
    link.datagram(coap.encode(CON, CHANGED, 777, req.token, (), b"late"), 9000)
    ack = coap.decode(hal.sent[-1])
    assert ack.mtype == ACK and ack.code == EMPTY and ack.mid == 777
    assert link.result.payload == b"late"
    link.datagram(coap.encode(CON, CHANGED, 777, req.token, (), b"late"), 9100)  # duplicate
    assert coap.decode(hal.sent[-1]).mid == 777 and len(hal.sent) == 3


def test_separate_non_response_and_reset():
    hal, link = _link()
    link.start(POST, (), b"x", 0)
    req = coap.decode(hal.sent[0])
    link.datagram(coap.encode(NON, CHANGED, 5, req.token), 1)
    assert link.result.code == CHANGED
    link.start(POST, (), b"y", 100)
    req2 = coap.decode(hal.sent[-1])
    assert req2.mid == (req.mid + 1) & 0xFFFF and req2.token != req.token
    link.datagram(coap.encode(RST, EMPTY, req2.mid), 200)
    assert link.result == REFUSED
