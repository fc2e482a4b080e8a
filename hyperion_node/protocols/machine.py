"""A protocol's message order as a table, and one conversation's place in it (sans-IO).

A protocol is a set of states, two sides, and the moves ``(state, side, message type) -> next state``. A
:class:`Conversation` starts in the protocol's first state; each message either side sends moves it on, or
is refused: a message the *remote* side may not send now is its fault (:class:`ProtocolViolation`, with a
stable ``reason`` for counters), one that *we* may not send now is our bug (``InternalError``). A message of
a closed conversation is refused too. Closing the stream is not a message: it ends the conversation in any
state, and what that means (cancelled, incomplete) is the driving service's to decide.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from hyperion_node.errors import InternalError, RemoteError


class Side(StrEnum):
    """The two ends of a stream: who opened it (and asks), who accepted it (and answers)."""

    OPENER = "opener"
    ANSWERER = "answerer"

    @property
    def other(self) -> Side:
        return Side.ANSWERER if self is Side.OPENER else Side.OPENER


class ProtocolViolation(RemoteError):
    """The remote sent a message the protocol does not allow at this point."""

    def __init__(self, reason: str, detail: str, *, peer_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}", peer_id=peer_id)
        self.reason = reason


@dataclass(frozen=True)
class Protocol:
    """A protocol's identity, caps and message order."""

    protocol_id: str
    start: str
    # state -> {(side, message type): next state}; a state with no moves is final
    moves: Mapping[str, Mapping[tuple[Side, str], str]]
    # the largest frame each side may send, in bytes (checked before a frame is buffered)
    max_frame: Mapping[Side, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        targets = {target for table in self.moves.values() for target in table.values()}
        unknown = (targets | {self.start}) - set(self.moves)
        if unknown:
            raise InternalError(f"{self.protocol_id}: states {sorted(unknown)} are reached but not defined")

    def final(self, state: str) -> bool:
        return not self.moves[state]

    def allowed(self, state: str, side: Side) -> list[str]:
        """The message types ``side`` may send in ``state``."""
        return sorted(msg for (who, msg) in self.moves[state] if who is side)


@dataclass
class Conversation:
    """One stream's progress through a protocol, as seen by ``us`` (one of the two sides)."""

    protocol: Protocol
    us: Side
    state: str = ""
    history: list[tuple[Side, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = self.state or self.protocol.start

    @property
    def done(self) -> bool:
        return self.protocol.final(self.state)

    def received(self, msg_type: str, *, peer_id: str | None = None) -> str:
        """The remote sent ``msg_type``: move on, or raise ``ProtocolViolation``. Returns the new state."""
        return self._move(self.us.other, msg_type, peer_id)

    def sending(self, msg_type: str) -> str:
        """We are about to send ``msg_type``: move on, or raise ``InternalError``. Returns the new state."""
        return self._move(self.us, msg_type, None)

    def _move(self, side: Side, msg_type: str, peer_id: str | None) -> str:
        target = self.protocol.moves[self.state].get((side, msg_type))
        if target is None:
            allowed = self.protocol.allowed(self.state, side)
            detail = (f"{msg_type[:32]!r} in state {self.state} of {self.protocol.protocol_id}; "
                      f"allowed: {', '.join(allowed) or 'nothing'}")
            if side is self.us:
                raise InternalError(f"we tried to send {detail}")
            reason = "after_end" if not allowed and self.done else "out_of_order"
            raise ProtocolViolation(reason, detail, peer_id=peer_id)
        self.history.append((side, msg_type))
        self.state = target
        return target
