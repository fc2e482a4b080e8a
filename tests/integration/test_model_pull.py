"""`hyperion-node models pull` between real daemons on loopback, over /hyperion/blob/1.

A serves the packaged model; B starts with none. B pulls it from A over A's lane (A's upload capped so that
the pull takes seconds), is killed half-way, starts again, goes on from the chunks it had verified, and once
restarted serves the model. C pulls from a hostile provider (a real libp2p host that corrupts every chunk it
sends, over the stream or over a lane of its own) and A together: the corrupted chunks are refused, the
hostile host is scored down and dropped, and the chunks come from A. While strangers hold every place at
A's lane, a pull goes on over the stream.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from hyperion_node.blobs.lane import LaneServer
from hyperion_node.blobs.manifest import manifest_of_file
from hyperion_node.blobs.store import BlobStore
from hyperion_node.p2p.limits import PeerSlots
from hyperion_node.protocols import blob as blob_protocol
from hyperion_node.protocols.blob import Request
from hyperion_node.tasks.messages import FrameReader
from hyperion_node.tasks.streams import read_frame
from hyperion_node.testing.hostile import hostile_host, new_identity
from hyperion_node.testing.process import NodeProcess, hyperion_executable, wait_until
from runtimes.inference.registry import ModelHashes, ensure_packaged_model

pytestmark = pytest.mark.process

MODEL = "gemma-3-270m-q4_k_m"
FAST = ["p2p.mdns=false", "p2p.heartbeat_interval_s=0.5", "hardware.benchmark_on_start=false",
        'runtimes.disabled=["zk-groth16", "render-blender"]', "runtimes.inference.n_ctx=512"]
NO_MODEL = [*FAST, "runtimes.inference.include_packaged_model=false"]


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pull-model")
    return ensure_packaged_model(root / "models", ModelHashes(root / "hashes.json")).path


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[NodeProcess]:
    # 25 MiB/s: the packaged model (~240 MiB) takes about ten seconds, time enough to kill B half-way.
    a = NodeProcess(tmp_path / "a", sets=[*FAST, "blobs.max_upload_mib_s=25"]).start()
    try:
        yield a
    finally:
        a.stop()


def pulls(node: NodeProcess) -> dict[str, dict[str, Any]]:
    return {p["model"]: p for p in node.get("/api/models/pulls")}


def start_pull(node: NodeProcess, body: dict[str, Any]) -> dict[str, Any]:
    answer = httpx.post(node.api_url + "/api/models/pull", json=body, timeout=30,
                        headers={"Authorization": f"Bearer {node.token}"})
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_b_pulls_the_model_is_killed_half_way_resumes_and_then_serves_it(
        provider: NodeProcess, packaged: Path, tmp_path: Path) -> None:
    boot = f'p2p.bootstrap=["{provider.p2p_addr()}"]'
    b = NodeProcess(tmp_path / "b", sets=[*NO_MODEL, boot]).start()
    try:
        wait_until(lambda: b.get(f"/api/providers/inference/{MODEL}"), timeout=60, what="B finds A's offer")
        start_pull(b, {"model": MODEL})
        half = wait_until(lambda: (p := pulls(b).get(MODEL)) and p["size"] and p["done_bytes"] >= 0.4 * p["size"]
                          and p, timeout=120, what="B's pull is 40 % done")
        assert half["state"] == "fetching", half
        assert half["providers"] == [provider.peer_id]
        assert half["lanes"] == [provider.peer_id], "B fetched over A's lane (at A's upload rate)"
        b.signal(signal.SIGKILL)
        b.wait()
        partial = list((tmp_path / "b" / "blobs" / "partial").glob("*.have"))
        assert len(partial) == 1, "the killed pull left its verified chunks"
        assert not (tmp_path / "b" / "models").exists() or not list((tmp_path / "b" / "models").iterdir())

        b.start()  # the same data dir: goes on from there, through the CLI as a user would
        wait_until(lambda: b.get(f"/api/providers/inference/{MODEL}"), timeout=60, what="B finds A's offer again")
        cli = subprocess.run([hyperion_executable(), "models", "pull", MODEL, "--data-dir", str(b.data_dir), "--json"],
                             capture_output=True, text=True, timeout=300)
        assert cli.returncode == 0, cli.stdout + cli.stderr
        done = json.loads(cli.stdout)
        assert done["state"] == "done", done
        assert done["resumed_bytes"] > 0, f"B fetched everything again: {done}"
        assert done["lanes"] == [provider.peer_id], done
        assert done["done_bytes"] == done["size"] == packaged.stat().st_size
        pulled = Path(done["path"])
        assert pulled.parent == tmp_path / "b" / "models"
        assert sha256(pulled) == sha256(packaged)
        assert not list((tmp_path / "b" / "blobs" / "partial").glob("*.data"))

        b.stop()
        provider.stop()  # B alone can serve the model now
        b.start()  # the node reads its models when it starts
        offers = [o for r in b.get("/api/status")["runtimes"] if r.get("name") == "inference"
                  for o in r.get("offers", [])]
        assert [o["item"] for o in offers] == [MODEL], offers
        answer = httpx.post(b.api_url + "/v1/completions", timeout=120,
                            json={"model": MODEL, "prompt": "Name a colour.", "max_tokens": 4, "temperature": 0},
                            headers={"Authorization": f"Bearer {b.token}"})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-hyperion-worker"] == b.peer_id
    finally:
        b.stop()


class CorruptingStore(BlobStore):
    """Shares the real model and flips a byte in every chunk it reads: what a lying provider's lane sends."""

    def __init__(self, root: Path, packaged: Path, corrupted: list[int]) -> None:
        super().__init__(root)
        self.share(packaged)
        self.corrupted = corrupted

    def read_chunk(self, address: str, index: int) -> bytes | None:
        chunk = super().read_chunk(address, index)
        if chunk is None:
            return None
        flipped = bytearray(chunk)
        flipped[len(flipped) // 2] ^= 0xFF
        self.corrupted.append(index)
        return bytes(flipped)


async def serve_corrupted(packaged: Path, stream: Any, corrupted: list[int], lane: LaneServer | None) -> None:
    """A provider that knows the real manifest but flips a byte in every chunk it sends; with ``lane``, it
    grants lanes too, and its lane sends the flipped chunks, sealed with the grant's key."""
    manifest = manifest_of_file(packaged)
    request = Request.decode(await read_frame(stream, FrameReader(blob_protocol.MAX_REQUEST_BYTES)))
    if request.kind == blob_protocol.T_FIND:
        await stream.write(blob_protocol.encode_found(manifest.address, packaged.name, manifest.size))
    elif request.kind == blob_protocol.T_MANIFEST:
        await stream.write(blob_protocol.encode_manifest(manifest.encode()))
    elif request.kind == blob_protocol.T_LANE:
        grant = lane.grant(str(stream.muxed_conn.peer_id), request.blob) if lane is not None else None
        if grant is not None and lane is not None:
            await stream.write(blob_protocol.encode_lane(lane.port, grant.token, grant.key))
    else:
        with packaged.open("rb") as f:
            for index in range(request.index, request.index + request.count):
                f.seek(index * manifest.chunk_size)
                chunk = bytearray(f.read(manifest.chunk_length(index)))
                chunk[len(chunk) // 2] ^= 0xFF
                corrupted.append(index)
                await stream.write(blob_protocol.encode_chunk(index, bytes(chunk)))
    await stream.close()


@pytest.mark.parametrize("over", ["stream", "lane"])
async def test_a_corrupted_chunk_is_refused_and_fetched_from_another_provider(
        provider: NodeProcess, packaged: Path, tmp_path: Path, over: str, nursery: trio.Nursery) -> None:
    boot = f'p2p.bootstrap=["{provider.p2p_addr()}"]'
    c = await trio.to_thread.run_sync(lambda: NodeProcess(tmp_path / "c", sets=[*NO_MODEL, boot]).start())
    corrupted: list[int] = []  # chunks the hostile host sent flipped over the stream
    corrupted_on_lane: list[int] = []  # and over its lane
    lane = None
    if over == "lane":
        async def pace(n: int) -> None:
            await trio.lowlevel.checkpoint()

        slots = PeerSlots(per_peer=4, total=8)
        lane = LaneServer(CorruptingStore(tmp_path / "hostile", packaged, corrupted_on_lane), host="127.0.0.1", port=0,
                          take_place=slots.take, give_place=slots.give, pace=pace, refuse=lambda why: None,
                          penalize=lambda peer, why: None, stats=Counter())
        await nursery.start(lane.run)
    try:
        async with hostile_host() as attacker:
            async def handler(stream: Any) -> None:
                await serve_corrupted(packaged, stream, corrupted, lane)

            attacker.host.set_stream_handler(blob_protocol.PROTOCOL_ID, handler)
            await attacker.connect(c.p2p_addr())
            await trio.to_thread.run_sync(start_pull, c, {"model": MODEL, "from": [attacker.peer_id,
                                                                                   provider.peer_id]})
            done = await trio.to_thread.run_sync(lambda: wait_until(
                lambda: (p := pulls(c).get(MODEL)) and p["state"] in ("done", "failed") and p,
                timeout=240, what="C's pull ends"))
        assert done["state"] == "done", done
        assert corrupted_on_lane if over == "lane" else corrupted, "the hostile provider was asked for chunks"
        assert done["refused_chunks"] >= 1, done
        assert attacker.peer_id in done["dropped"], done
        assert attacker.peer_id not in done["lanes"], "a lane counts once it delivered a run of good chunks"
        assert provider.peer_id not in done["dropped"], done
        assert sha256(Path(done["path"])) == sha256(packaged)
        them = next(p for p in c.get("/api/peers") if p["peer_id"] == attacker.peer_id)
        assert them["offences"].get("bad_chunk", 0) >= 1, them
        assert c.get("/api/p2p")["stats"]["rejected"].get("blob:bad_chunk", 0) >= 1
    finally:
        c.stop()


async def test_strangers_at_a_lane_are_refused_and_counted_and_a_pull_still_ends(
        provider: NodeProcess, packaged: Path, tmp_path: Path) -> None:
    """Strangers keep every place for new connections at A's lane from this address taken (they send no
    token; A closes each after HANDSHAKE_S and they come straight back), and one sends a token A never
    granted. B's pull ends with the model, over the stream when it is refused the lane (or over the lane
    when its connection comes in between two strangers'), and A counts what it refused."""
    from hyperion_node.blobs import lane as lane_module

    port = provider.get("/api/status")["blobs"]["lane"]["port"]
    boot = f'p2p.bootstrap=["{provider.p2p_addr()}"]'
    b = await trio.to_thread.run_sync(lambda: NodeProcess(tmp_path / "b", sets=[*NO_MODEL, boot]).start())
    try:
        async with trio.open_nursery() as strangers:
            async def hold_a_place() -> None:
                while True:
                    try:
                        stream = await trio.open_tcp_stream("127.0.0.1", port)
                        async with stream:
                            await stream.receive_some()  # until A closes it
                    except (OSError, trio.BrokenResourceError):
                        pass

            for _ in range(lane_module.MAX_HANDSHAKES_PER_IP):
                strangers.start_soon(hold_a_place)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:  # a forged token: refused, as a stranger's or for want of a place
                await stream.send_all(os.urandom(lane_module.TOKEN_BYTES))
            await trio.to_thread.run_sync(start_pull, b, {"model": MODEL, "from": [provider.peer_id]})
            done = await trio.to_thread.run_sync(lambda: wait_until(
                lambda: (p := pulls(b).get(MODEL)) and p["state"] in ("done", "failed") and p,
                timeout=240, what="B's pull ends"))
            strangers.cancel_scope.cancel()
        assert done["state"] == "done", done
        assert sha256(Path(done["path"])) == sha256(packaged)
        rejected = provider.get("/api/p2p")["stats"]["rejected"]
        assert rejected.get("blob:lane_bad_token", 0) + rejected.get("blob:lane_busy", 0) >= 1, rejected
        assert provider.get("/api/status")["blobs"]["streams"] == 0, "every place came back"
    finally:
        b.stop()


def test_a_pull_that_cannot_be_made_says_why_in_one_line(provider: NodeProcess, tmp_path: Path) -> None:
    from tests.integration.test_tiers import one_line_error

    def pull(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([hyperion_executable(), "models", "pull", *args], capture_output=True, text=True,
                              timeout=120)

    stopped = pull(MODEL, "--data-dir", str(tmp_path / "never-started"))
    assert stopped.returncode != 0
    assert "no hyperion-node is running" in one_line_error(stopped.stderr + stopped.stdout)
    stranger = str(new_identity().peer_id)  # a peer nobody knows: no address, no answer
    unknown = pull("no-such-model", "--from", stranger, "--data-dir", str(provider.data_dir))
    assert unknown.returncode != 0
    assert "none of the 1 peers asked for 'no-such-model' shares it" in one_line_error(unknown.stderr + unknown.stdout)
