"""The blob lane (``hyperion_node/blobs/lane.py``) on 127.0.0.1, with real sockets: a granted fetcher gets its
chunks sealed, opened and checked; a grant serves one connection; strangers, replayed tokens, runs out of
bounds and bytes changed on the way get nothing, are counted, and blame nobody they cannot prove."""

from __future__ import annotations

import os
import socket
from collections import Counter
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hyperion_node.blobs import lane as lane_module
from hyperion_node.blobs.lane import Lane, LaneBroken, LaneServer, nonce
from hyperion_node.blobs.manifest import CHUNK_SIZE, BadManifest
from hyperion_node.blobs.store import BlobStore, Shared
from hyperion_node.p2p.limits import PeerSlots

PEER = "12D3KooWFetcher"


class Refusals(Counter[str]):
    def count(self, reason: str) -> None:  # type: ignore[override]
        self[reason] += 1


class Provider:
    """A LaneServer over a store that shares one random file, with what it refused and whom it blamed."""

    def __init__(self, tmp_path: Path, size: int = 3 * CHUNK_SIZE + 77) -> None:
        self.path = tmp_path / "model.gguf"
        self.path.write_bytes(os.urandom(size))
        self.store = BlobStore(tmp_path / "a")
        self.shared: Shared = self.store.share(self.path)
        self.slots = PeerSlots(per_peer=2, total=4)
        self.refused = Refusals()
        self.blamed: list[tuple[str, str]] = []
        self.stats: Counter[str] = Counter()
        self.server = LaneServer(self.store, host="127.0.0.1", port=0, take_place=self.slots.take,
                                 give_place=self.slots.give, pace=self._pace, refuse=self.refused.count,
                                 penalize=lambda peer, why: self.blamed.append((peer, why)), stats=self.stats)

    async def _pace(self, n: int) -> None:
        await trio.lowlevel.checkpoint()

    def chunk(self, index: int) -> bytes:
        return self.path.read_bytes()[index * CHUNK_SIZE:(index + 1) * CHUNK_SIZE]


@pytest.fixture
async def provider(tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> Provider:
    monkeypatch.setattr(lane_module, "HANDSHAKE_S", 0.3)
    made = Provider(tmp_path)
    await nursery.start(made.server.run)
    return made


async def raw_connection(port: int, first: bytes) -> bytes:
    """Connect to the lane, send ``first``, and return whatever comes back before it closes or resets (1 s at
    most)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    got = b""
    async with stream:
        await stream.send_all(first)
        with trio.move_on_after(1):
            try:
                while data := await stream.receive_some():
                    got += data
            except trio.BrokenResourceError:  # closed with our bytes unread: a reset
                pass
    return got


async def test_a_granted_fetcher_gets_every_chunk_checked_and_the_grant_serves_once(
        provider: Provider, tmp_path: Path) -> None:
    grant = provider.server.grant(PEER, provider.shared.address)
    assert grant is not None
    manifest = provider.shared.manifest
    partial = BlobStore(tmp_path / "b").partial(manifest)
    lane = await Lane.open("127.0.0.1", provider.server.port, grant.token, grant.key, manifest)
    took: list[int] = []

    async def record(index: int) -> None:
        took.append(index)

    try:
        await lane.fetch(partial, [0, 1], record, wait_s=5)
        await lane.fetch(partial, [2, 3], record, wait_s=5)  # the same connection, the next run
    finally:
        await lane.aclose()
    assert took == [0, 1, 2, 3]
    target = partial.finish(tmp_path / "models" / "model.gguf")
    assert target.read_bytes() == provider.path.read_bytes()
    assert provider.stats["lane_served_bytes"] == manifest.size

    # The token was spent: the same grant opens nothing a second time.
    assert await raw_connection(provider.server.port, grant.token + b"\0\0\0\0\0\0\0\1") == b""
    assert provider.refused["lane_bad_token"] == 1
    assert provider.blamed == []
    assert provider.slots.held() == 0


async def test_strangers_expired_grants_and_runs_out_of_bounds_get_nothing(provider: Provider) -> None:
    port = provider.server.port
    assert await raw_connection(port, os.urandom(32) + b"\0" * 8) == b""  # a token nobody granted
    assert await raw_connection(port, b"GET / HTTP/1.1\r\n\r\n") == b""  # no token within HANDSHAKE_S
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lane_module, "GRANT_S", 0.0)  # void as it is made
        expired = provider.server.grant(PEER, provider.shared.address)
    assert expired is not None
    assert await raw_connection(port, expired.token + b"\0" * 8) == b""
    assert provider.refused["lane_bad_token"] == 3

    # A granted peer that asks for a run longer than the protocol allows is blamed (it holds a grant: it is
    # known), and the connection ends.
    greedy = provider.server.grant(PEER, provider.shared.address)
    assert greedy is not None
    assert await raw_connection(port, greedy.token + (0).to_bytes(4, "big") + (10_000).to_bytes(4, "big")) == b""
    assert provider.blamed == [(PEER, "lane_bad_request")]
    # A peer holds at most MAX_GRANTS_PER_PEER unused grants.
    while provider.server.grant(PEER, provider.shared.address) is not None:
        pass
    assert provider.server.grant("12D3KooWAnother", provider.shared.address) is not None


async def test_silent_strangers_take_a_bounded_number_of_places(provider: Provider) -> None:
    port = provider.server.port
    silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(lane_module.MAX_HANDSHAKES_PER_IP + 2)]
    try:
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)  # every connection accepted and waited on
        assert provider.refused["lane_busy"] == 2  # one address holds MAX_HANDSHAKES_PER_IP places, no more
    finally:
        for stream in silent:
            await stream.aclose()
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)  # the handlers saw them close
    grant = provider.server.grant(PEER, provider.shared.address)
    assert grant is not None  # the places came back: a granted fetcher is served
    reply = await raw_connection(port, grant.token + (0).to_bytes(4, "big") + (1).to_bytes(4, "big"))
    assert len(reply) == 4 + CHUNK_SIZE + lane_module.TAG_BYTES


async def test_a_changed_byte_breaks_the_lane_and_a_provider_sealed_lie_is_the_providers(
        provider: Provider, tmp_path: Path) -> None:
    manifest = provider.shared.manifest
    partial = BlobStore(tmp_path / "b").partial(manifest)
    key = AESGCM.generate_key(bit_length=256)
    aead = AESGCM(key)
    head = (0).to_bytes(4, "big")
    sealed = bytearray(head + aead.encrypt(nonce(0), provider.chunk(0), head))
    sealed[100] ^= 0xFF  # changed on the way: not the provider's seal, so no proof against it
    with pytest.raises(LaneBroken):
        lane_module._open_check_write(aead, partial, 0, 0, sealed)
    wrong = provider.chunk(1)  # sealed by the key holder, but not chunk 0's bytes: the provider's own lie
    with pytest.raises(BadManifest, match="bad_chunk"):
        lane_module._open_check_write(aead, partial, 0, 0, bytearray(head + aead.encrypt(nonce(0), wrong, head)))
    assert partial.missing() == list(range(manifest.count))  # nothing was written


async def test_a_lane_nobody_listens_on_is_a_lane_not_to_be_had(provider: Provider) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    with pytest.raises(LaneBroken, match="cannot reach"):
        await Lane.open("127.0.0.1", free_port, b"t" * 32, b"k" * 32, provider.shared.manifest)
