"""/hyperion/verify/2 codec: round trips and garbage, as for every codec of ours."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperion_node.tasks.messages import FrameReader, MalformedFrame
from hyperion_node.verify.messages import (
    CheckRequest,
    Refused,
    VerdictAnswer,
    VerifyBusy,
    decode_answer,
    decode_check,
    encode_answer,
    encode_check,
    statistics_for_answer,
)

maps = st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8) | st.binary(max_size=8), max_size=4)


def unframe(data: bytes) -> bytes:
    reader = FrameReader(max_bytes=len(data) + 16)
    reader.feed(data)
    frame = reader.next_frame()
    assert frame is not None
    return frame


@given(st.binary(max_size=64), maps, maps, st.none() | maps)
def test_checks_round_trip(receipt: bytes, payload: dict[str, object], output: dict[str, object],
                           sample: dict[str, object] | None) -> None:
    request = CheckRequest(receipt, payload, output, sample)
    assert decode_check(unframe(encode_check(request))) == request


def test_a_sample_must_be_a_map_with_text_keys() -> None:
    body = cbor2.loads(unframe(encode_check(CheckRequest(b"r", {}, {}, {"frame": 1}))))
    body["sample"] = [1, 2]
    with pytest.raises(MalformedFrame, match="sample must be a map"):
        decode_check(cbor2.dumps(body))


@given(st.booleans(), st.text(max_size=100), st.binary(min_size=1, max_size=64))
def test_verdicts_round_trip(ok: bool, reason: str, dispute: bytes) -> None:
    answer = VerdictAnswer(ok, reason, None if ok else dispute)
    assert decode_answer(unframe(encode_answer(answer))) == answer


@given(st.text(max_size=100), st.floats(0, 3600))
def test_busy_and_refused_round_trip(reason: str, retry: float) -> None:
    for answer in (VerifyBusy(reason, retry), Refused(reason or "refused")):
        assert decode_answer(unframe(encode_answer(answer))) == answer


@given(st.binary(max_size=200))
def test_garbage_is_a_malformed_frame(data: bytes) -> None:
    for decode in (decode_check, decode_answer):
        try:
            decode(data)
        except MalformedFrame:
            continue


def test_a_failed_verdict_must_carry_its_signed_dispute() -> None:
    forged = encode_answer(VerdictAnswer(True, "x"))
    body = cbor2.loads(unframe(forged))
    body["ok"] = False
    with pytest.raises(MalformedFrame, match="dispute"):
        decode_answer(cbor2.dumps(body))


def test_a_version_1_check_is_refused_by_name() -> None:
    body = cbor2.loads(unframe(encode_check(CheckRequest(b"r", {}, {}))))
    body["v"] = 1
    with pytest.raises(MalformedFrame) as caught:
        decode_check(cbor2.dumps(body))
    assert caught.value.reason == "bad_version"


def test_a_verdict_carries_its_check_statistics_when_they_fit() -> None:
    figures = {"checked_positions": 17, "deviations": [0.1, 0.2], "greedy_gaps": []}
    answer = VerdictAnswer(True, "checked", statistics=statistics_for_answer(figures))
    assert decode_answer(unframe(encode_answer(answer))) == answer
    assert statistics_for_answer({"deviations": [0.5] * 4000}) is None  # too large: left out, the verdict counts
    assert statistics_for_answer({}) is None


def test_statistics_must_be_a_map_with_text_keys() -> None:
    body = cbor2.loads(unframe(encode_answer(VerdictAnswer(True, "x", statistics={"a": 1}))))
    body["statistics"] = [1]
    with pytest.raises(MalformedFrame, match="statistics must be a map"):
        decode_answer(cbor2.dumps(body))
