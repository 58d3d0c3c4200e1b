"""End-to-end ingest over real UDP into a real SQLite file: each answer code, and that a
refused message stores nothing."""

import asyncio
import logging
import math
import time

import cbor2
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

from gateway.ingest import registry
from gateway.store.commit import readings_budget
from gateway.store.db import open_db
from protocols import cose, senml
from protocols.const import (
    BAD_REQUEST,
    CF_SENML_CBOR,
    CHANGED,
    MAX_AGE,
    REQUEST_ENTITY_TOO_LARGE,
    RESP_CONFIG,
    RESP_TIME,
    SERVICE_UNAVAILABLE,
    UNAUTHORIZED,
    UNSUPPORTED_CONTENT_FORMAT,
)
from sim.sender import Sender, SimNode


def run(coro):
    return asyncio.run(coro)


def test_pack_is_stored_and_answered_with_time_and_config(tmp_path):
    async def go():
        async with running_gateway(tmp_path, node_overrides={"lamp-001": {"interval": 30}}) as gw:
            node = SimNode("lamp-001", add_node(gw))
            async with Sender("127.0.0.1", gw.coap_port) as s:
                result = await s.send(node, minute_readings(10))
            assert result.code == CHANGED
            assert abs(result.body[RESP_TIME] - time.time()) < 5
            assert result.body[RESP_CONFIG] == {"interval": 30, "pack": 10}
            rows = (
                open_db(gw.cfg.database)
                .execute("SELECT channel, time, value FROM readings ORDER BY time")
                .fetchall()
            )
            assert rows == [(ch, t, v) for ch, t, v in minute_readings(10)]
            node_row = registry.list_nodes(open_db(gw.cfg.database))[0]
            assert (node_row.last_seq, node_row.messages) == (1, 1)

    run(go())


async def _code(gw, body, cf=17, mid=7):
    (msg,) = await exchange(gw.coap_port, con_post(body, mid, cf))
    return msg


def test_each_refusal_has_its_code_and_stores_nothing(tmp_path):
    async def go():
        async with running_gateway(tmp_path, max_payload=512) as gw:
            key = add_node(gw)
            good = senml.encode(minute_readings(10))
            cases = {
                "bad MAC": (cose.sign(b"\x01" * 32, b"lamp-001", 1, good), 17, UNAUTHORIZED),
                "unknown kid": (cose.sign(key, b"lamp-999", 1, good), 17, UNAUTHORIZED),
                "truncated CBOR": (cose.sign(key, b"lamp-001", 1, good)[:-3], 17, BAD_REQUEST),
                "not COSE": (cbor2.dumps([1, 2, 3]), 17, BAD_REQUEST),
                "NaN value": (
                    cose.sign(key, b"lamp-001", 1, senml.encode([("p", 1_700_000_000, math.nan)])),
                    17,
                    BAD_REQUEST,
                ),
                "oversized": (
                    cose.sign(key, b"lamp-001", 1, senml.encode(minute_readings(90))),
                    17,
                    REQUEST_ENTITY_TOO_LARGE,
                ),
                "wrong content-format": (
                    cose.sign(key, b"lamp-001", 1, good),
                    CF_SENML_CBOR,
                    UNSUPPORTED_CONTENT_FORMAT,
                ),
                "no content-format": (
                    cose.sign(key, b"lamp-001", 1, good),
                    None,
                    UNSUPPORTED_CONTENT_FORMAT,
                ),
                "SenML not a pack": (
                    cose.sign(key, b"lamp-001", 1, cbor2.dumps({"a": 1})),
                    17,
                    BAD_REQUEST,
                ),
            }
            for mid, (name, (body, cf, code)) in enumerate(cases.items()):
                msg = await _code(gw, body, cf, mid)
                assert msg.code == code, name
            assert count_readings(gw.cfg) == 0
            # none of them moved the node's counter: the next good pack (seq 1) is stored
            msg = await _code(gw, cose.sign(key, b"lamp-001", 1, good), 17, 99)
            assert msg.code == CHANGED
            assert count_readings(gw.cfg) == 10
            _, text = await http_get(gw.http_port, "/metrics")
            assert metric(text, 'reverbere_packs_rejected_total{reason="bad_mac"}') == 1
            assert metric(text, 'reverbere_packs_rejected_total{reason="too_large"}') == 1

    run(go())


def test_validation_refuses_unknown_channels_units_and_absurd_times(tmp_path, clock):
    now = clock.now

    async def go():
        async with running_gateway(tmp_path, clock=clock) as gw:
            key = add_node(gw)
            bad_packs = [
                [{-2: "voltage", -3: now, 2: 230}],  # unknown channel
                [{-2: "p", -3: now, 1: "Cel", 2: 20}],  # wrong unit for power
                [{-2: "p", -3: now + 86400, 2: 20}],  # a day in the future
                [{-2: "p", -3: 946684800, 2: 20}],  # the year 2000
                [{-2: "lamp-002:p", -3: now, 2: 20}],  # another node's name
                [{-2: "p", -3: now, 2: 1e300}],  # not a sensor value
                [{-2: "p", -3: now, 3: "on"}],  # string value
            ]
            for i, pack in enumerate(bad_packs):
                msg = await _code(gw, cose.sign(key, b"lamp-001", i + 1, cbor2.dumps(pack)), mid=i)
                assert msg.code == BAD_REQUEST, pack
            assert count_readings(gw.cfg) == 0
            # the forms the contract allows: own-name prefix, unit given, relative time
            ok = [
                {-2: "lamp-001:p", -3: now - 60, 1: "W", 2: 20},
                {-2: "t", -3: -120, 2: 19.5},  # relative: two minutes ago
            ]
            msg = await _code(gw, cose.sign(key, b"lamp-001", 50, cbor2.dumps(ok)), mid=50)
            assert msg.code == CHANGED
            rows = (
                open_db(gw.cfg.database)
                .execute("SELECT channel, time FROM readings ORDER BY channel")
                .fetchall()
            )
            # a relative time is resolved against the gateway's clock, to the second
            assert rows == [("p", now - 60), ("t", now - 120)]

    run(go())


def test_the_time_window_and_the_answer_follow_the_gateway_clock(tmp_path, clock):
    # Exact edges of [now - max_past, now + max_future], with no wall clock in between.
    async def go():
        async with running_gateway(tmp_path, clock=clock) as gw:
            key = add_node(gw)
            future, past = gw.cfg.max_future, gw.cfg.max_past
            cases = [
                (clock.now + future, CHANGED),
                (clock.now + future + 1, BAD_REQUEST),
                (clock.now - past - 1, BAD_REQUEST),
            ]
            for seq, (t, code) in enumerate(cases, 1):
                body = cose.sign(key, b"lamp-001", seq, senml.encode([("p", int(t), 60)]))
                msg = await _code(gw, body, mid=seq)
                assert msg.code == code, t - clock.now
                if code == CHANGED:
                    assert cbor2.loads(msg.payload)[RESP_TIME] == clock.now
            clock.now += 3600  # an hour later, what was a second too far ahead is taken
            t = clock.now - 3600 + future + 1
            body = cose.sign(key, b"lamp-001", 9, senml.encode([("p", int(t), 60)]))
            msg = await _code(gw, body, mid=9)
            assert msg.code == CHANGED
            assert cbor2.loads(msg.payload)[RESP_TIME] == clock.now

    run(go())


def test_retransmission_and_resent_pack_are_stored_once(tmp_path):
    async def go():
        async with running_gateway(tmp_path) as gw:
            key = add_node(gw)
            pack = senml.encode(minute_readings(10))
            wire = con_post(cose.sign(key, b"lamp-001", 1, pack), mid=1000)
            # the same CoAP message three times (lost ACKs): one answer each, stored once
            answers = await exchange(gw.coap_port, wire, copies=3)
            assert [m.code for m in answers] == [CHANGED] * 3
            assert answers[1].payload == answers[0].payload  # the kept response, byte for byte
            _, text = await http_get(gw.http_port, "/metrics")
            # ingest saw one copy
            assert metric(text, 'reverbere_packs_accepted_total{outcome="stored"}') == 1
            # the node gives up on the exchange and sends the pack again with a new counter
            msg = await _code(gw, cose.sign(key, b"lamp-001", 2, pack), mid=1001)
            assert msg.code == CHANGED
            assert count_readings(gw.cfg) == 10
            # a replay of an older counter is refused
            msg = await _code(gw, cose.sign(key, b"lamp-001", 1, pack), mid=1002)
            assert msg.code == UNAUTHORIZED

    run(go())


def test_retransmission_after_the_dedup_cache_forgot_it_is_still_2_04(tmp_path):
    # dedup_max=0: aiocoap's cache keeps nothing, so the copy reaches ingest; its counter is
    # the last accepted one, so it is answered 2.04 and stores nothing new.
    async def go():
        async with running_gateway(tmp_path, dedup_max=0) as gw:
            key = add_node(gw)
            wire = con_post(cose.sign(key, b"lamp-001", 5, senml.encode(minute_readings())), 9)
            answers = await exchange(gw.coap_port, wire, copies=2)
            assert [m.code for m in answers] == [CHANGED, CHANGED]
            assert count_readings(gw.cfg) == 10
            _, text = await http_get(gw.http_port, "/metrics")
            assert metric(text, 'reverbere_packs_accepted_total{outcome="repeated"}') == 1

    run(go())


def test_the_dedup_cache_is_capped(tmp_path):
    async def go():
        async with running_gateway(tmp_path, dedup_max=5) as gw:
            node = SimNode("lamp-001", add_node(gw))
            async with Sender("127.0.0.1", gw.coap_port) as s:
                for i in range(12):
                    assert (
                        await s.send(
                            node, minute_readings(start=int(time.time()) - 86400 + 600 * i)
                        )
                    ).acked
            _, text = await http_get(gw.http_port, "/metrics")
            assert metric(text, "reverbere_coap_dedup_entries") == 5

    run(go())


def test_removed_and_rekeyed_nodes_get_4_01(tmp_path):
    async def go():
        async with running_gateway(tmp_path) as gw:
            key1 = add_node(gw, "lamp-001")
            add_node(gw, "lamp-002")
            db = open_db(gw.cfg.database)
            registry.remove_node(db, "lamp-002")
            registry.rotate_key(db, "lamp-001")
            async with Sender("127.0.0.1", gw.coap_port) as s:
                r1 = await s.send(SimNode("lamp-001", key1), minute_readings())
                assert r1.code == UNAUTHORIZED
            assert count_readings(gw.cfg) == 0

    run(go())


def test_a_key_revoked_while_running_stores_nothing_even_before_the_cache_reloads(tmp_path):
    # The ingest cache of node keys reloads every second; the commit checks the key again in
    # its transaction, so a pack signed with a revoked key is refused at once.
    async def go():
        async with running_gateway(tmp_path) as gw:
            node = SimNode("lamp-001", add_node(gw))
            async with Sender("127.0.0.1", gw.coap_port) as s:
                assert (await s.send(node, minute_readings(start=int(time.time()) - 7200))).acked
                registry.rotate_key(open_db(gw.cfg.database), "lamp-001")
                r = await s.send(node, minute_readings(start=int(time.time()) - 3600))
                assert r.code == UNAUTHORIZED
            assert count_readings(gw.cfg) == 10

    run(go())


def test_a_node_with_a_new_key_is_taken_at_once_before_the_cache_reloads(tmp_path):
    # rotate-key gives a new key and a fresh counter; a re-provisioned node starts sending
    # at once, and its first pack must not wait for the cache's next reload.
    async def go():
        async with running_gateway(tmp_path) as gw:
            old = SimNode("lamp-001", add_node(gw))
            same_pack = minute_readings(start=int(time.time()) - 7200)
            async with Sender("127.0.0.1", gw.coap_port) as s:
                for _ in range(3):  # stored once; the cached counter is now 3
                    assert (await s.send(old, same_pack)).acked
                new = SimNode("lamp-001", registry.rotate_key(open_db(gw.cfg.database), "lamp-001"))
                r = await s.send(new, minute_readings(start=int(time.time()) - 3600))
                assert r.acked
            assert count_readings(gw.cfg) == 20

    run(go())


def test_rejections_are_logged_once_per_node_per_minute_but_all_counted(tmp_path, caplog):
    async def go():
        async with running_gateway(tmp_path) as gw:
            add_node(gw)
            forged = cose.sign(b"\x02" * 32, b"lamp-001", 1, senml.encode(minute_readings()))
            for mid in range(5):
                assert (await _code(gw, forged, mid=mid)).code == UNAUTHORIZED
            _, text = await http_get(gw.http_port, "/metrics")
            assert metric(text, 'reverbere_packs_rejected_total{reason="bad_mac"}') == 5

    with caplog.at_level(logging.WARNING, logger="reverbere.ingest"):
        run(go())
    lines = [r for r in caplog.records if r.getMessage() == "pack rejected"]
    assert len(lines) == 1
    assert lines[0].fields["node"] == "lamp-001" and lines[0].fields["reason"] == "bad_mac"


def test_disk_budget_gives_5_03_with_max_age_and_recovers_when_space_is_freed(tmp_path):
    async def go():
        # The schema as the service makes it (every stage's tables), then a budget whose share
        # for readings (the budget less the stages' reserve) is that schema and 16 pages more:
        # readings fill them quickly.
        async with running_gateway(tmp_path):
            pass
        schema = open_db(tmp_path / "reverbere.db").execute("PRAGMA page_count").fetchone()[0]
        budget = (schema + 16) * 4096
        while readings_budget(budget) < (schema + 16) * 4096:
            budget += 4096
        async with running_gateway(tmp_path, disk_budget=budget, retry_after=30) as gw:
            node = SimNode("lamp-001", add_node(gw))
            start = int(time.time()) - 300 * 86400
            codes = []
            async with Sender("127.0.0.1", gw.coap_port) as s:
                for i in range(400):
                    r = await s.send(node, minute_readings(40, start=start + 2400 * i))
                    codes.append(r.code)
                    if r.code == SERVICE_UNAVAILABLE:
                        assert r.max_age == 30
                        break
                assert codes[-1] == SERVICE_UNAVAILABLE, "budget never reached"
                stored = count_readings(gw.cfg)
                assert stored > 0 and stored == 40 * (len(codes) - 1)
                _, text = await http_get(gw.http_port, "/metrics")
                assert metric(text, "reverbere_store_full ") == 1
                # retention frees space: the pages are reused, the gateway stores again
                db = open_db(gw.cfg.database)
                with db.conn:
                    db.execute("DELETE FROM readings")
                r = await s.send(node, minute_readings(40, start=start + 2400 * 500))
                assert r.code == CHANGED
                assert count_readings(gw.cfg) == 40

    run(go())


# A request that arrives while aiocoap shuts down leaves its render coroutine unstarted.
@pytest.mark.filterwarnings("ignore:coroutine 'Context._render_to_pipe' was never awaited")
def test_graceful_stop_commits_and_answers_what_is_queued(tmp_path):
    async def go():
        async with running_gateway(tmp_path) as gw:
            nodes = [SimNode(f"n{i}", add_node(gw, f"n{i}")) for i in range(30)]
            # short timeouts: messages that arrive after the stop get no answer at all
            async with Sender("127.0.0.1", gw.coap_port, ack_timeout=0.2, max_retransmit=1) as s:
                tasks = [asyncio.create_task(s.send(n, minute_readings())) for n in nodes]
                while gw.committer.depth == 0 and not all(t.done() for t in tasks):
                    await asyncio.sleep(0)
                await gw.stop()  # while packs are queued
                results = await asyncio.gather(*tasks)
            gw.stop = _noop  # already stopped
            acked = sum(r.acked for r in results)
            assert acked > 0
            assert count_readings(gw.cfg) == 10 * acked

    run(go())


async def _noop():
    pass


def test_5_03_maxage_option_number_is_the_coap_one():
    # The sender reads Max-Age as option 14 (RFC 7252 Section 5.10.5).
    assert MAX_AGE == 14
