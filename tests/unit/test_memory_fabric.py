"""The in-memory fabric under ``P2PNetwork`` (the demo's ``--network memory``): its streams behave as libp2p's
do for our protocols (bytes in order, half-close, reset, errors from ``STREAM_ERRORS``), and whole P2P layers
on it see each other through signed heartbeats, find providers through the DHT and refuse bad gossip."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from hyperion_node.config import load_config
from hyperion_node.datadir import DataDir
from hyperion_node.identity import load_identity
from hyperion_node.ledger.messages import records_from_gossip_body, to_gossip_body
from hyperion_node.p2p.memory import MemoryFabric, MemoryStream, ProtocolNotSupported
from hyperion_node.p2p.messages import Heartbeat, OfferAd
from hyperion_node.p2p.network import PRESENCE_TOPIC, LocalState, P2PNetwork
from hyperion_node.p2p.peer_table import PeerState
from hyperion_node.store import Store
from hyperion_node.tasks.gossip_outbox import SettledOutbox
from hyperion_node.tasks.streams import STREAM_ERRORS, open_with_first_frame
from hyperion_node.testing.receipts import ReceiptFactory

PROTOCOL = "/hyperion/test/1"


def _peer() -> ID:
    return ID.from_pubkey(create_new_key_pair().public_key)


@asynccontextmanager
async def _two_hosts(fabric: MemoryFabric) -> AsyncIterator[tuple[object, object, list[tuple[ID, bool]]]]:
    events: list[tuple[ID, bool]] = []
    async with fabric.attach(_peer(), lambda p, c: events.append((p, c)), None) as (a, _, _), \
            fabric.attach(_peer(), lambda p, c: None, None) as (b, _, _):
        yield a, b, events


async def test_bytes_arrive_in_order_and_a_close_is_an_end_of_stream() -> None:
    fabric = MemoryFabric()
    got: list[bytes] = []

    async def echo(stream: MemoryStream) -> None:
        data = b""
        while True:  # until the end of stream, which the fabric raises as libp2p does (StreamEOF)
            try:
                data += await stream.read(7)
            except STREAM_ERRORS:
                break
        got.append(data)
        await stream.write(b"ok:" + data[:4])
        await stream.close()

    async with _two_hosts(fabric) as (a, b, events):
        b.set_stream_handler(PROTOCOL, echo)
        frame = bytes(range(256)) * 4
        with trio.fail_after(5):
            stream = await open_with_first_frame(a, b.get_id(), PROTOCOL, frame[:600])
            await stream.write(frame[600:])
            await stream.close()
            assert await stream.read(100) == b"ok:" + frame[:4]
            with pytest.raises(STREAM_ERRORS):
                await stream.read(1)
            with pytest.raises(STREAM_ERRORS):
                await stream.write(b"after close")
        assert got == [frame]
        assert stream.get_protocol() == PROTOCOL
        assert str(stream.muxed_conn.peer_id) == str(b.get_id())
        assert (b.get_id(), True) in events


async def test_a_reset_reaches_the_other_end_and_a_missing_protocol_is_refused() -> None:
    fabric = MemoryFabric()
    reading, failed = trio.Event(), trio.Event()
    seen: list[type[BaseException]] = []

    async def wait(stream: MemoryStream) -> None:
        reading.set()
        try:
            await stream.read(10)
        except STREAM_ERRORS as exc:
            seen.append(type(exc))
            failed.set()

    async with _two_hosts(fabric) as (a, b, _):
        b.set_stream_handler(PROTOCOL, wait)
        with trio.fail_after(5):
            stream = await a.new_stream(b.get_id(), [PROTOCOL])
            await reading.wait()
            await stream.reset()
            await failed.wait()
        assert seen[0].__name__ == "StreamReset"
        with pytest.raises(ProtocolNotSupported):
            await a.new_stream(b.get_id(), ["/hyperion/nobody-speaks-this/1"])


async def test_a_host_that_leaves_resets_its_streams_and_its_peers_hear_of_it() -> None:
    fabric = MemoryFabric()
    events: list[tuple[ID, bool]] = []
    started = trio.Event()

    async def hold(stream: MemoryStream) -> None:
        started.set()
        await trio.sleep_forever()

    async with fabric.attach(_peer(), lambda p, c: events.append((p, c)), None) as (a, _, _):
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                left = trio.Event()
                b_id = _peer()

                async def b_host(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
                    async with fabric.attach(b_id, lambda p, c: None, None) as (b, _, _):
                        b.set_stream_handler(PROTOCOL, hold)
                        task_status.started(b)
                        await left.wait()

                await nursery.start(b_host)
                stream = await a.new_stream(b_id, [PROTOCOL])
                await started.wait()
                left.set()
            with pytest.raises(STREAM_ERRORS):
                await stream.read(1)
    assert events == [(b_id, True), (b_id, False)]


def _network(tmp_path: Path, name: str, fabric: MemoryFabric, offers: tuple[OfferAd, ...] = ()) -> P2PNetwork:
    config = load_config(data_dir=tmp_path / name, environ={}, sets=[
        "p2p.heartbeat_interval_s=0.2", "p2p.suspect_after_s=1.0", "p2p.dead_after_s=2.0"])
    data_dir = DataDir(config.node.data_dir)
    data_dir.ensure()
    store = Store.open(data_dir.db_path)
    local = LocalState(offers=lambda: offers, hardware=lambda: {"cpu": "test", "cores": 2, "gpus": []},
                       telemetry=lambda: {"ram_available_bytes": 1 << 30, "gpus": []}, load=lambda: (0, 0))
    return P2PNetwork(load_identity(data_dir, create=True), config.p2p, store, local, name=name, fabric=fabric)


async def test_p2p_layers_on_a_fabric_meet_find_providers_and_refuse_bad_gossip(tmp_path: Path) -> None:
    fabric = MemoryFabric()
    offer = OfferAd(runtime="inference", item="tiny-model", unit="token", price_per_unit=1e-6, capacity=1,
                    throughput=50.0)
    a, b = _network(tmp_path, "a", fabric), _network(tmp_path, "b", fabric, (offer,))
    async with trio.open_nursery() as nursery:
        with trio.fail_after(20):
            await nursery.start(a.run)
            await nursery.start(b.run)
            while b.peer_id not in {e.peer_id for e in a.table.live_peers()}:  # noqa: ASYNC110
                await trio.sleep(0.05)
            assert a.table.get(b.peer_id).state is PeerState.ALIVE
            assert all("/memory/" in addr for addr in a.listen_addrs())
            found = []
            while not found:
                found = await a.find_providers("inference", "tiny-model")
                await trio.sleep(0.05)
            assert [r.peer_id for r in found] == [b.peer_id]
            assert found[0].offers == (offer,)
            # b sends garbage, then a heartbeat sealed by another key, on the presence topic: a counts both,
            # scores b down, and still hears b's own heartbeats after them.
            assert b.pubsub is not None
            before = a.table.get(b.peer_id).score
            await b.pubsub.publish(PRESENCE_TOPIC, b"\xff not an envelope")
            stranger_dir = DataDir(tmp_path / "stranger")
            stranger_dir.ensure()
            stranger = load_identity(stranger_dir, create=True)
            forged = Heartbeat(peer_id=str(stranger.peer_id), seq=1, time=time.time(), name="x", addrs=(),
                               health="ok", queue_depth=0, active_tasks=0, ram_available_bytes=0)
            await b.pubsub.publish(PRESENCE_TOPIC, forged.seal(stranger))
            rejected = a.stats.to_json()["rejected"]
            assert rejected.get("presence:undecodable", 0) >= 1, rejected
            assert rejected.get("presence:sender_mismatch", 0) >= 1, rejected
            assert a.table.get(b.peer_id).score < before
            seen = a.stats.gossip_in[PRESENCE_TOPIC]
            while a.stats.gossip_in[PRESENCE_TOPIC] <= seen:  # noqa: ASYNC110
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    a.store.close()
    b.store.close()


async def test_a_subscriber_whose_handler_fails_does_not_stop_the_publisher_or_the_others() -> None:
    fabric = MemoryFabric()
    heard: list[bytes] = []

    def broken(msg: object) -> None:
        raise RuntimeError("a bug in one node's consumer")

    async with fabric.attach(_peer(), lambda p, c: None, None) as (_, _, sender), \
            fabric.attach(_peer(), lambda p, c: None, None) as (_, _, bad), \
            fabric.attach(_peer(), lambda p, c: None, None) as (_, _, good):
        bad.handle("/t", broken)
        good.handle("/t", lambda msg: heard.append(msg.data))
        bad.set_topic_validator("/t", lambda forwarder, msg: True, False)
        good.set_topic_validator("/t", lambda forwarder, msg: msg.data != b"refused", False)
        for data in (b"one", b"refused", b"two"):
            await sender.publish("/t", data)
    assert heard == [b"one", b"two"]
    assert bad.failed == 3


async def test_a_busy_workers_receipts_all_reach_its_peers_through_the_outbox(tmp_path: Path) -> None:
    """40 receipts settled within a second: sent one message each, a peer's per-peer rate limit drops most
    of them and scores the worker down (what busy workers met before the outbox); through the outbox every
    one arrives and nothing is dropped."""
    fabric = MemoryFabric()
    a, b = _network(tmp_path, "a", fabric), _network(tmp_path, "b", fabric)
    factory = ReceiptFactory(worker=b.identity)
    heard: list[object] = []
    a.on_receipt_gossip = lambda sender, body: heard.extend(records_from_gossip_body(body))
    outbox = SettledOutbox(b.publish_receipt_gossip, interval_s=0.2)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(20):
            await nursery.start(a.run)
            await nursery.start(b.run)
            await nursery.start(outbox.run)
            while b.peer_id not in {e.peer_id for e in a.table.live_peers()}:  # noqa: ASYNC110
                await trio.sleep(0.05)
            batched = [factory.settled() for _ in range(40)]
            for receipt in batched:  # settled at once, as by a busy worker
                outbox.add(receipt)
            while len(heard) < len(batched):  # noqa: ASYNC110
                await trio.sleep(0.05)
            assert heard == batched
            assert "receipts:rate_limited" not in a.stats.to_json()["rejected"]
            assert outbox.messages < 10
            score = a.table.get(b.peer_id).score
            for receipt in [factory.settled() for _ in range(40)]:
                await b.publish_receipt_gossip(to_gossip_body(receipt))
            rejected = a.stats.to_json()["rejected"].get("receipts:rate_limited", 0)
            assert rejected >= 20, rejected
            assert len(heard) < 2 * len(batched)
            assert a.table.get(b.peer_id).score < score
        nursery.cancel_scope.cancel()
    a.store.close()
    b.store.close()
