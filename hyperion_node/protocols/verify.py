"""``/hyperion/verify/2``: one check of a settled receipt's work, asked by its requester of another peer.

::

    requester (opener)              verifier (answerer)
    CHECK ────────────────────────▶
          ◀──────── VERDICT | BUSY | REFUSED        one answer ends it

The frames are in ``hyperion_node.verify.messages``. A verifier answers BUSY before reading the check when
it has no place for it (per peer: one open check; all together: ``verify.concurrent`` running and as many
waiting), so a flood of large checks costs it no memory.
"""

from __future__ import annotations

from hyperion_node.protocols.machine import Conversation, Protocol, Side
from hyperion_node.tasks.messages import MAX_REQUEST_BYTES
from hyperion_node.verify.messages import MAX_VERDICT_BYTES, T_BUSY, T_CHECK, T_REFUSED, T_VERDICT

PROTOCOL_ID = "/hyperion/verify/2"
ASKER, VERIFIER = Side.OPENER, Side.ANSWERER

VERIFY = Protocol(
    protocol_id=PROTOCOL_ID,
    start="await_check",
    moves={
        # BUSY may come before the check is read: the verifier answers as soon as the stream opens.
        "await_check": {(ASKER, T_CHECK): "judging", (VERIFIER, T_BUSY): "answered"},
        "judging": {(VERIFIER, T_VERDICT): "answered", (VERIFIER, T_BUSY): "answered",
                    (VERIFIER, T_REFUSED): "answered"},
        "answered": {},
    },
    max_frame={ASKER: MAX_REQUEST_BYTES, VERIFIER: MAX_VERDICT_BYTES},
)


def asker_side() -> Conversation:
    return Conversation(VERIFY, ASKER)


def verifier_side() -> Conversation:
    return Conversation(VERIFY, VERIFIER)
