"""The /hyperion/task/1 codec, the task state machine and worker admission, as pure code."""

from __future__ import annotations

from collections.abc import Callable

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperion_node.errors import InternalError
from hyperion_node.p2p.limits import PaidPeers
from hyperion_node.p2p.messages import encode_frame
from hyperion_node.tasks.messages import (
    MAX_TEXT,
    Accepted,
    Busy,
    Countersign,
    FinalResult,
    FrameReader,
    MalformedFrame,
    PartialResult,
    Rejected,
    TaskError,
    TaskRequest,
    decode_requester,
    decode_worker,
    encode_countersign,
    encode_request,
    encode_worker,
)
from hyperion_node.tasks.model import TRANSITIONS, TaskRecord, TaskState, check_transition, new_task_id
from hyperion_node.tasks.worker import Admission

text = st.text(min_size=1, max_size=40)
plain = st.recursive(st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=20)
                     | st.binary(max_size=20), lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
payloads = st.dictionaries(st.text(max_size=10), plain, max_size=5)
seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False)

requests = st.builds(TaskRequest, task_id=text, runtime=text, item=text, payload=payloads, requester=text,
                     deadline_s=seconds, max_price_per_unit=st.none() | seconds,
                     min_memory_bytes=st.integers(0, 2**40))
worker_messages = st.one_of(
    st.builds(Accepted, st.integers(0, 1000)),
    st.builds(Busy, st.text(max_size=MAX_TEXT), seconds),
    st.builds(Rejected, text),
    st.builds(PartialResult, payloads),
    st.builds(FinalResult, payloads, st.binary(max_size=200)),
    st.builds(TaskError, text, st.text(max_size=MAX_TEXT)),
)


def unframe(data: bytes) -> bytes:
    reader = FrameReader(max_bytes=len(data) + 16)
    reader.feed(data)
    frame = reader.next_frame()
    assert frame is not None
    return frame


@given(requests)
def test_requests_round_trip(req: TaskRequest) -> None:
    decoded = decode_requester(unframe(encode_request(req)))
    assert decoded == req


@given(worker_messages)
def test_worker_messages_round_trip(msg: object) -> None:
    assert decode_worker(unframe(encode_worker(msg))) == msg  # type: ignore[arg-type]


@given(st.binary(min_size=64, max_size=64))
def test_countersign_round_trips(sig: bytes) -> None:
    assert decode_requester(unframe(encode_countersign(Countersign(sig)))) == Countersign(sig)


def outcome(decode: Callable[[bytes], object], data: bytes) -> str:
    """"decoded", or the reason a malformed frame was refused: any other exception fails the test."""
    try:
        decode(data)
    except MalformedFrame as exc:
        return exc.reason
    return "decoded"


@given(st.binary(max_size=300))
def test_garbage_is_a_malformed_frame_never_a_crash(data: bytes) -> None:
    for decode in (decode_requester, decode_worker):
        assert outcome(decode, data)


@pytest.mark.parametrize(("body", "reason"), [
    ({"v": 2, "t": "task"}, "bad_version"),
    ({"v": 1, "t": "accepted"}, "wrong_type"),  # a worker message sent by a requester
    ({"v": 1, "t": "task", "id": "x", "runtime": "r", "item": "i", "payload": [], "requester": "p",
      "deadline_s": 1}, "bad_schema"),
    ({"v": 1, "t": "task", "id": "x", "runtime": "r", "item": "i", "payload": {}, "requester": "p",
      "deadline_s": float("nan")}, "non_finite"),
    ({"v": 1, "t": "task", "id": "x", "runtime": "r", "item": "i", "payload": {"t": [1.0, float("inf")]},
      "requester": "p", "deadline_s": 1}, "non_finite"),  # anywhere in the frame, payloads included
    ({"v": 1, "t": "countersign", "sig": b"short"}, "bad_schema"),
])
def test_each_schema_violation_is_named(body: dict[str, object], reason: str) -> None:
    with pytest.raises(MalformedFrame) as caught:
        decode_requester(cbor2.dumps(body))
    assert caught.value.reason == reason


def test_frame_reader_splits_frames_and_refuses_oversized_ones() -> None:
    reader = FrameReader(max_bytes=10)
    reader.feed(encode_frame(b"abc") + encode_frame(b"de")[:2])
    assert reader.next_frame() == b"abc"
    assert reader.next_frame() is None  # the second frame is incomplete
    reader.feed(b"e")
    assert reader.next_frame() == b"de"
    reader.feed(encode_frame(b"x" * 11))
    with pytest.raises(MalformedFrame, match="oversized"):
        reader.next_frame()


def test_task_states_move_only_forward() -> None:
    record = TaskRecord(task_id="t", role="requester", runtime="r", item="i", requester="p")
    for state in (TaskState.ASSIGNED, TaskState.RUNNING, TaskState.ASSIGNED, TaskState.RUNNING, TaskState.COMPLETED):
        record.move(state, 1)
    with pytest.raises(InternalError):
        record.move(TaskState.FAILED, 2)  # completed is final
    for final in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED):
        assert TRANSITIONS[final] == frozenset()
    with pytest.raises(InternalError):
        check_transition(TaskState.QUEUED, TaskState.COMPLETED)  # nothing completes without running


def test_task_ids_derive_from_content_and_differ_per_submission() -> None:
    a = new_task_id("inference", "m", {"prompt": "x"}, "peer", 1, nonce=b"n")
    assert a == new_task_id("inference", "m", {"prompt": "x"}, "peer", 1, nonce=b"n")
    assert a != new_task_id("inference", "m", {"prompt": "y"}, "peer", 1, nonce=b"n")
    assert new_task_id("inference", "m", {}, "peer", 1) != new_task_id("inference", "m", {}, "peer", 1)
    assert len(a) == 32


def test_admission_runs_capacity_then_queues_then_refuses() -> None:
    admission = Admission(queue_depth=1)
    key = ("inference", "m")
    assert admission.try_admit(key, capacity=2) == 0
    assert admission.try_admit(key, capacity=2) == 0
    assert admission.try_admit(key, capacity=2) == 1  # queued behind the two running
    assert admission.try_admit(key, capacity=2) is None  # slots and queue full: BUSY
    assert admission.load() == (1, 2)
    admission.release(key)
    assert admission.try_admit(key, capacity=2) == 1
    for _ in range(3):
        admission.release(key)
    assert admission.load() == (0, 0)


def test_one_peer_holds_at_most_its_share_of_an_offers_places() -> None:
    """Slots 1 and queue 1: a peer holds one place, so an honest requester always finds the other."""
    admission = Admission(queue_depth=1)
    key = ("inference", "m")
    assert admission.try_admit(key, capacity=1, peer="attacker") == 0
    assert admission.try_admit(key, capacity=1, peer="attacker") is None  # its share is taken
    assert admission.try_admit(key, capacity=1, peer="honest") == 1  # queued behind it
    admission.release(key, "attacker")
    assert admission.try_admit(key, capacity=1, peer="attacker") == 1
    assert admission.share(4) == 2  # with 4 slots and 1 queue place: two at once


def test_a_peer_that_has_not_paid_holds_one_place_and_paid_peers_are_bounded() -> None:
    admission = Admission(queue_depth=1)
    key = ("inference", "m")
    assert admission.share(4, paid=False) == 1
    assert admission.try_admit(key, capacity=4, peer="stranger", paid=False) == 0
    assert admission.try_admit(key, capacity=4, peer="stranger", paid=False) is None  # one place until it pays
    assert admission.try_admit(key, capacity=4, peer="stranger", paid=True) == 0  # then half of 4 + 1
    paid = PaidPeers(max_peers=3)
    for peer in ("a", "b", "c", "a", "d"):
        paid.add(peer)
    assert ("a" in paid, "b" in paid, "c" in paid, "d" in paid, len(paid)) == (True, False, True, True, 3)
