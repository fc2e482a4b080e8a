"""The in-memory fabric under ``P2PNetwork`` (the demo's ``--network memory``): its streams behave as libp2p's
do for our protocols (bytes in order, half-close, reset, errors from ``STREAM_ERRORS``), and whole P2P layers
on it find providers through the DHT, subscribe to their presence and refuse a bad heartbeat."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from hyperion_demo.fabric import MemoryFabric, MemoryStream, ProtocolNotSupported
from hyperion_node.config import load_config
from hyperion_node.datadir import DataDir
from hyperion_node.identity import load_identity
from hyperion_node.p2p.messages import Heartbeat, OfferAd, encode_frame
from hyperion_node.p2p.network import LocalState, P2PNetwork
from hyperion_node.p2p.peer_table import PeerState
from hyperion_node.p2p.presence import PRESENCE_PROTOCOL
from hyperion_node.store import Store
from hyperion_node.tasks.streams import STREAM_ERRORS, open_with_first_frame

PROTOCOL = "/hyperion/test/1"


def _peer() -> ID:
    return ID.from_pubkey(create_new_key_pair().public_key)


@asynccontextmanager
async def _two_hosts(fabric: MemoryFabric) -> AsyncIterator[tuple[object, object, list[tuple[ID, bool]]]]:
    events: list[tuple[ID, bool]] = []
    async with fabric.attach(_peer(), lambda p, c: events.append((p, c)), None) as (a, _), \
            fabric.attach(_peer(), lambda p, c: None, None) as (b, _):
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

    async with fabric.attach(_peer(), lambda p, c: events.append((p, c)), None) as (a, _):
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                left = trio.Event()
                b_id = _peer()

                async def b_host(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
                    async with fabric.attach(b_id, lambda p, c: None, None) as (b, _):
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
    return P2PNetwork(load_identity(data_dir, create=True), config.p2p, store, local, name=name,
                      stack=fabric.stack)


class _Observer:
    """A ``PeerObserver`` (what the scheduler is to a node's P2P layer) that keeps what it is told."""

    def __init__(self) -> None:
        self.heartbeats: list[Heartbeat] = []
        self.rtts: list[tuple[str, float]] = []

    def observe_heartbeat(self, heartbeat: Heartbeat) -> None:
        self.heartbeats.append(heartbeat)

    def observe_rtt(self, peer_id: str, rtt_ms: float) -> None:
        self.rtts.append((peer_id, rtt_ms))


async def test_p2p_layers_on_a_fabric_find_providers_subscribe_and_refuse_a_bad_heartbeat(tmp_path: Path) -> None:
    fabric = MemoryFabric()
    offer = OfferAd(runtime="inference", item="tiny-model", unit="token", price_per_unit=1e-6, capacity=1,
                    throughput=50.0)
    a, b = _network(tmp_path, "a", fabric), _network(tmp_path, "b", fabric, (offer,))
    observer = _Observer()
    a.add_observer(observer)
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
            # a routes to b: it subscribes, and b's heartbeats arrive, and nobody else's.
            assert a.presence.received == 0
            a.presence.want([b.peer_id], trio.current_time())
            while a.presence.received < 2:  # noqa: ASYNC110
                await trio.sleep(0.05)
            assert b.presence.subscribers() == [a.peer_id]
            assert a.table.get(b.peer_id).heartbeat is not None
            assert b.presence.received == 0  # b routes nowhere: it hears no heartbeat at all
            # What a heard and measured reached its observer: every heartbeat taken, and b's round trips.
            assert len(observer.heartbeats) == a.presence.received
            assert {hb.peer_id for hb in observer.heartbeats} == {b.peer_id}
            while not observer.rtts:  # noqa: ASYNC110
                await trio.sleep(0.05)
            assert {peer for peer, _ in observer.rtts} == {b.peer_id}
        nursery.cancel_scope.cancel()
    a.store.close()
    b.store.close()


async def test_a_provider_that_sends_someone_elses_heartbeat_is_refused(tmp_path: Path) -> None:
    """A presence stream carries its provider's own heartbeats: one sealed by another key (a replay of another
    peer's, or a forgery) is refused and scored down, and a garbage frame too."""
    fabric = MemoryFabric()
    a = _network(tmp_path, "a", fabric)
    stranger_dir = DataDir(tmp_path / "stranger")
    stranger_dir.ensure()
    stranger = load_identity(stranger_dir, create=True)
    forged = Heartbeat(peer_id=str(stranger.peer_id), seq=1, time=time.time(), name="x", addrs=(), health="ok",
                       queue_depth=0, active_tasks=0, ram_available_bytes=0)
    async with trio.open_nursery() as nursery, fabric.attach(_peer(), lambda p, c: None, None) as (liar, _):

        async def lie(stream: MemoryStream) -> None:
            await stream.write(encode_frame(forged.seal(stranger)))
            await trio.sleep_forever()

        liar.set_stream_handler(PRESENCE_PROTOCOL, lie)
        with trio.fail_after(20):
            await nursery.start(a.run)
            a.presence.want([liar.peer_id], trio.current_time())
            while a.stats.to_json()["rejected"].get("presence:sender_mismatch", 0) < 1:  # noqa: ASYNC110
                await trio.sleep(0.05)
            assert a.table.get(liar.peer_id).score < 0  # type: ignore[union-attr]
            assert a.presence.received == 0
        nursery.cancel_scope.cancel()
    a.store.close()
