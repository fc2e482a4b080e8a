"""One peer starves a worker for free -- no more: deadlines capped, a per-peer share of slots and queue,
unpaid work counted against the peer, checks under their own admission, bounded frames and streams.

Before: two task streams with ``deadline_s=1e9`` held W's slot and queue (an honest client got 0 answers of 15
in 60 s), and thirty-two verify streams of 63 MiB took W from 518 MB to 2,660 MB.
"""

from __future__ import annotations

import threading

import psutil
import pytest
import trio
from libp2p.kad_dht.common import PROTOCOL_ID as KAD
from libp2p.peer.id import ID

from hyperion_node.p2p.libp2p_stack import DHT_STREAM_S, DHT_STREAMS_PER_PEER
from hyperion_node.p2p.messages import capability_key
from hyperion_node.p2p.provider_walk import ProviderWalk, dht_key
from hyperion_node.tasks.messages import Accepted, Busy, FinalResult, Rejected, TaskRequest
from hyperion_node.tasks.model import new_task_id
from hyperion_node.testing.hostile import TASK, VERIFY, Hostile, hostile_host, raw_frame
from hyperion_node.verify.messages import VerifyBusy, decode_answer
from tests.adversarial.conftest import MODEL, Net, ask, call, now_ms, peer, rejected

pytestmark = pytest.mark.process


def task(requester: str, max_tokens: int, deadline_s: float = 1e9) -> TaskRequest:
    payload = {"model": MODEL, "prompt": "Tell a long story about the sea.", "max_tokens": max_tokens,
               "temperature": 0.8, "seed": 1}
    return TaskRequest(task_id=new_task_id("inference", MODEL, payload, requester, now_ms()), runtime="inference",
                       item=MODEL, payload=payload, requester=requester, deadline_s=deadline_s)


async def test_one_peer_holds_its_share_and_unpaid_work_counts_against_it(net: Net) -> None:
    w_id = await call(lambda: net.w.peer_id)
    w_addr = await call(net.w.p2p_addr)
    async with hostile_host() as attacker, hostile_host() as honest:
        await attacker.connect(w_addr)
        await honest.connect(w_addr)
        # Long tasks with a deadline of thirty years: a peer that has never paid W holds one place (a paying one
        # half of W's 4 streams and 1 queue place); its second task is over its share.
        held = []
        stream, answers = await attacker.task(w_id, task(attacker.peer_id, 200), until_final=False)
        assert isinstance(answers[0], Accepted)
        held.append(stream)
        _, answers = await attacker.task(w_id, task(attacker.peer_id, 200), until_final=False)
        assert isinstance(answers[0], Busy)
        assert "until you have countersigned" in answers[0].reason
        # An honest requester gets a stream beside the attacker's, and is served.
        _, answers = await honest.task(w_id, task(honest.peer_id, 8, deadline_s=120))
        assert isinstance(answers[0], Accepted)
        assert isinstance(answers[-1], FinalResult)
        for stream in held:
            await stream.reset()
        # Results taken and never countersigned: after tasks.max_unpaid of them, no more work for the taker.
        refused = None
        for _ in range(6):
            stream, answers = await attacker.task(w_id, task(attacker.peer_id, 4), countersign=False)
            if isinstance(answers[0], Rejected):
                refused = answers[0]
                break
            assert isinstance(answers[-1], FinalResult)
            await attacker.answer(stream)  # W closes the stream when its countersignature wait times out
        assert refused is not None
        assert "countersigned" in refused.reason
        _, answers = await honest.task(w_id, task(honest.peer_id, 4, deadline_s=120))
        assert isinstance(answers[-1], FinalResult)


async def test_a_verify_flood_costs_no_memory(net: Net) -> None:
    w_id = await call(lambda: net.w.peer_id)
    assert net.w.proc is not None
    process = psutil.Process(net.w.proc.pid)
    before = process.memory_info().rss
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    size = 63 << 20
    answers: list[object] = []
    try:
        async with hostile_host() as attacker:
            await attacker.connect(await call(net.w.p2p_addr))

            async def flood(attacker: Hostile) -> None:
                try:
                    stream = await attacker.stream(w_id, VERIFY)
                    await stream.write(_varint(size))  # a 63 MiB check announced, then sent
                    chunk = bytes(1 << 20)
                    for _ in range(size >> 20):
                        await stream.write(chunk)
                except Exception:  # W answers BUSY and resets most of them: writing then fails
                    answers.append("reset")
                    return
                frame = await attacker.answer(stream, max_bytes=16 << 10)
                answers.append(decode_answer(frame) if frame else "reset")

            async with trio.open_nursery() as nursery:
                for _ in range(32):
                    nursery.start_soon(flood, attacker)
            status, _ = await call(ask, net.r)
            assert status == 200
    finally:
        stop.set()
        sampler.join()
    busy = sum(isinstance(a, VerifyBusy) for a in answers) + answers.count("reset")
    assert busy >= 31
    grown = (peak[0] - before) / 2**20
    assert grown < 300, f"W grew by {grown:.0f} MiB under 32 checks of 63 MiB"  # was 2,142 MiB
    assert (await call(peer, net.w, attacker.peer_id))["offences"]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


async def test_oversized_and_non_finite_frames_are_refused_and_counted(net: Net) -> None:
    w_id = await call(lambda: net.w.peer_id)
    before = await call(rejected, net.w)
    async with hostile_host() as attacker:
        await attacker.connect(await call(net.w.p2p_addr))
        stream = await attacker.stream(w_id, TASK)
        await stream.write(_varint(200 << 20) + b"\x00" * 16)  # a 200 MiB frame announced
        assert await attacker.answer(stream) is None
        stream = await attacker.stream(w_id, TASK)
        await stream.write(raw_frame({"v": 1, "t": "task", "id": "x", "runtime": "inference", "item": MODEL,
                                      "payload": {"model": MODEL, "prompt": "hi"}, "requester": attacker.peer_id,
                                      "deadline_s": float("inf")}))
        assert await attacker.answer(stream) is None
    after = await call(rejected, net.w)
    assert after.get("task:oversized", 0) > before.get("task:oversized", 0), after
    assert after.get("task:non_finite", 0) > before.get("task:non_finite", 0)
    status, _ = await call(ask, net.r)
    assert status == 200


async def test_a_countersignature_frame_is_bounded_by_what_a_countersignature_is(net: Net) -> None:
    """After FINAL the requester may send only its countersignature: a frame announced larger is refused before
    it is buffered (it used to be read up to the task request's 64 MiB), counted, and the result stays unpaid."""
    w_id = await call(lambda: net.w.peer_id)
    async with hostile_host() as attacker:
        await attacker.connect(await call(net.w.p2p_addr))
        stream, answers = await attacker.task(w_id, task(attacker.peer_id, 4, deadline_s=120), countersign=False)
        assert isinstance(answers[-1], FinalResult)
        await stream.write(_varint(8 << 20) + b"\x00" * 1024)  # an 8 MiB "countersignature" announced
        assert await attacker.answer(stream) is None  # W resets or closes the stream
        offences = (await call(peer, net.w, attacker.peer_id))["offences"]
    assert offences.get("oversized", 0) >= 1, offences
    status, _ = await call(ask, net.r)
    assert status == 200


async def test_idle_dht_streams_hold_no_place_an_honest_lookup_needs(net: Net) -> None:
    """A stranger opens DHT streams to W and sends nothing. py-libp2p serves 12 inbound DHT streams at once and
    resets the rest, each held until its remote closes it, so sixteen such streams left W resetting every other
    peer's DHT request (a new node's provider lookup among them). Now one peer holds at most
    ``DHT_STREAMS_PER_PEER`` (the rest are reset and counted), each stream lives ``DHT_STREAM_S``, and an honest
    peer's GET_PROVIDERS is answered meanwhile."""
    w_id = await call(lambda: net.w.peer_id)
    w_addr = await call(net.w.p2p_addr)
    before = (await call(rejected, net.w)).get("stream:dht_streams", 0)
    target = dht_key(capability_key("inference", MODEL))
    async with hostile_host() as attacker, hostile_host(dht=True) as honest:
        await attacker.connect(w_addr)
        idle = []
        for _ in range(16):
            try:
                idle.append(await attacker.stream(w_id, KAD))
            except Exception:  # refused at the negotiation: W is already resetting them
                continue
        opened = trio.current_time()
        await honest.connect(w_addr)
        assert honest.dht is not None
        with trio.fail_after(10):
            providers, closer = await ProviderWalk(honest.dht)._get_providers(ID.from_base58(w_id), target)
        assert providers or closer, "W answered with no peer at all"
        # The streams past the attacker's share were reset at once, and counted.
        assert (await call(rejected, net.w)).get("stream:dht_streams", 0) - before >= len(idle) - DHT_STREAMS_PER_PEER
        # The ones W kept are closed after DHT_STREAM_S, though the attacker never closes them.
        with trio.fail_after(DHT_STREAM_S + 10):
            for stream in idle:
                try:
                    await stream.read(1)
                except Exception:  # reset: closed by W, as it should be
                    pass
        assert trio.current_time() - opened >= DHT_STREAM_S - 1
