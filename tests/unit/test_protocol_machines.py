"""Every stream protocol's message order, as its transition table says, and nothing else.

For any sequence of (sender, message type), a conversation either follows the table move by move, or stops at
the first message the table does not allow with our error: ``ProtocolViolation`` (the remote's fault, with a
reason for the counters) when the remote sent it, ``InternalError`` when we would have.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperion_node.errors import InternalError
from hyperion_node.protocols import dialback, task, verify
from hyperion_node.protocols.machine import Conversation, Protocol, ProtocolViolation, Side

PROTOCOLS: list[Protocol] = [task.TASK, verify.VERIFY, dialback.DIALBACK]


def alphabet(protocol: Protocol) -> list[tuple[Side, str]]:
    moves = {move for table in protocol.moves.values() for move in table}
    return sorted(moves | {(Side.OPENER, "garbage"), (Side.ANSWERER, "garbage")})


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.protocol_id)
@pytest.mark.parametrize("us", list(Side))
@given(data=st.data())
def test_any_sequence_follows_the_table_or_ends_in_our_error(protocol: Protocol, us: Side, data: st.DataObject) -> None:
    sequence = data.draw(st.lists(st.sampled_from(alphabet(protocol)), max_size=12))
    conversation = Conversation(protocol, us)
    state = protocol.start
    for side, msg in sequence:
        target = protocol.moves[state].get((side, msg))
        if target is None:
            expected = InternalError if side is us else ProtocolViolation
            move = conversation.sending if side is us else conversation.received
            with pytest.raises(expected):
                move(msg)
            assert conversation.state == state  # a refused message changes nothing
            return
        moved = conversation.sending(msg) if side is us else conversation.received(msg)
        assert moved == target == conversation.state
        state = target


def test_the_task_protocol_in_order() -> None:
    worker = task.worker_side()
    worker.received("task")
    worker.sending("accepted")
    for _ in range(3):
        worker.sending("partial")
    worker.sending("final")
    worker.received("countersign")
    assert worker.done
    assert worker.state == "settled"


@pytest.mark.parametrize(("sequence", "reason"), [
    ([(Side.ANSWERER, "accepted")], "out_of_order"),  # an answer before the task
    ([(Side.OPENER, "task"), (Side.ANSWERER, "partial")], "out_of_order"),  # output before admission
    ([(Side.OPENER, "task"), (Side.ANSWERER, "busy"), (Side.ANSWERER, "accepted")], "after_end"),
    ([(Side.OPENER, "task"), (Side.ANSWERER, "accepted"), (Side.ANSWERER, "final"),
      (Side.ANSWERER, "partial")], "out_of_order"),  # more output after the final frame
])
def test_a_requester_names_what_the_worker_did_wrong(sequence: list[tuple[Side, str]], reason: str) -> None:
    requester = task.requester_side()
    *ok, (_side, bad) = sequence
    for who, msg in ok:
        (requester.sending if who is Side.OPENER else requester.received)(msg)
    with pytest.raises(ProtocolViolation) as caught:
        requester.received(bad, peer_id="W")
    assert caught.value.reason == reason
    assert caught.value.peer_id == "W"


def test_a_verifier_may_say_busy_before_it_reads_the_check() -> None:
    asker = verify.asker_side()
    asker.received("busy")
    assert asker.done
    asker = verify.asker_side()
    asker.sending("check")
    with pytest.raises(ProtocolViolation):
        asker.received("check")  # the asker's own message, echoed: not the verifier's to send


def test_a_dialback_answers_once() -> None:
    dialler = dialback.dialler_side()
    dialler.received("dialback-request")
    dialler.sending("dialback-result")
    with pytest.raises(ProtocolViolation) as caught:
        dialler.received("dialback-request")
    assert caught.value.reason == "after_end"
