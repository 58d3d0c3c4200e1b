"""sim/net.py: the lossy UDP proxy, between a real client socket and a real echo server."""

import asyncio

from sim.net import Impairments, LossyProxy


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport
        self.peers = set()

    def datagram_received(self, data, addr):
        self.peers.add(addr)
        self.transport.sendto(b"re:" + data, addr)


class _Client(asyncio.DatagramProtocol):
    def __init__(self):
        self.got = []
        self.event = asyncio.Event()

    def datagram_received(self, data, addr):
        self.got.append(data)
        self.event.set()


async def _exchange(imp, n=400, seed=7, clock=None, clients=1):
    loop = asyncio.get_running_loop()
    echo_t, echo = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    upstream = echo_t.get_extra_info("sockname")[:2]
    proxy = LossyProxy(upstream, imp, seed=seed, **({"clock": clock} if clock else {}))
    addr = await proxy.start()
    got = []
    for c in range(clients):
        t, client = await loop.create_datagram_endpoint(_Client, remote_addr=addr)
        for i in range(n):
            t.sendto(b"%d:%d" % (c, i))
            if i % 20 == 19:  # let the loop breathe, as a node would between packs
                await asyncio.sleep(0.001)
        # Wait until nothing more arrives for a while (no fixed sleep for the result itself).
        while True:
            client.event.clear()
            try:
                await asyncio.wait_for(client.event.wait(), 0.2)
            except TimeoutError:
                break
        got.append(client.got)
        t.close()
    proxy.close()
    echo_t.close()
    return got, proxy.stats, echo


def test_loss_rate_and_same_seed_same_fate():
    got1, stats, _ = asyncio.run(_exchange(Impairments(loss=0.2)))
    got2, _, _ = asyncio.run(_exchange(Impairments(loss=0.2)))
    got3, _, _ = asyncio.run(_exchange(Impairments(loss=0.2), seed=8))
    # Each way loses ~20 %: about 64 % of the round trips come back.
    assert 0.55 * 400 < len(got1[0]) < 0.73 * 400
    assert 0.15 < stats.dropped / (stats.dropped + stats.forwarded) < 0.25
    assert sorted(got1[0]) == sorted(got2[0])  # the seed decides, not the timing
    assert sorted(got1[0]) != sorted(got3[0])


def test_duplication_and_reordering():
    got, stats, _ = asyncio.run(_exchange(Impairments(duplicate=0.1, reorder=0.1), n=300))
    replies = got[0]
    assert len(replies) > 300 and stats.duplicated > 0
    assert len(set(replies)) == 300  # nothing lost
    order = [int(r.split(b":")[2]) for r in replies]
    assert order != sorted(order) and stats.reordered > 0


def test_scheduled_outage_on_the_given_clock_drops_everything_inside_it():
    now = {"t": 0.0}
    imp = Impairments(outages=[(100.0, 200.0)])

    async def go():
        loop = asyncio.get_running_loop()
        echo_t, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
        proxy = LossyProxy(echo_t.get_extra_info("sockname")[:2], imp, clock=lambda: now["t"])
        addr = await proxy.start()
        t, client = await loop.create_datagram_endpoint(_Client, remote_addr=addr)
        results = []
        for at in (50.0, 150.0, 250.0):
            now["t"] = at
            client.event.clear()
            t.sendto(b"at %d" % at)
            try:
                await asyncio.wait_for(client.event.wait(), 0.5)
                results.append(True)
            except TimeoutError:
                results.append(False)
        t.close()
        proxy.close()
        echo_t.close()
        return results, proxy.stats

    results, stats = asyncio.run(go())
    assert results == [True, False, True]
    assert stats.outage_dropped == 1


def test_each_client_gets_its_own_upstream_address():
    got, _, echo = asyncio.run(_exchange(Impairments(), n=5, clients=3))
    assert [len(g) for g in got] == [5, 5, 5]
    assert len(echo.peers) == 3
