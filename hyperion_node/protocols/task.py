"""``/hyperion/task/1``: one task, one stream, opened by the requester straight to the worker.

::

    requester (opener)                 worker (answerer)
    TASK  ──────────────────────────▶  admission, at once
          ◀──────── ACCEPTED | BUSY | REJECTED          BUSY / REJECTED end it
          ◀──────── PARTIAL ...                         tokens, frames, progress
          ◀──────── FINAL | ERROR                       FINAL carries the worker-signed receipt
    COUNTERSIGN ────────────────────▶                  the result checked, the bill too: settled

Closing or resetting the stream before FINAL is how the requester cancels. Frames are encoded in
``hyperion_node.tasks.messages`` (varint length, canonical CBOR map, ``v``/``t``); the caps are per side.
"""

from __future__ import annotations

from hyperion_node.protocols.machine import Conversation, Protocol, Side
from hyperion_node.tasks.messages import (
    MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES,
    T_ACCEPTED,
    T_BUSY,
    T_COUNTERSIGN,
    T_ERROR,
    T_FINAL,
    T_PARTIAL,
    T_REJECTED,
    T_TASK,
)

PROTOCOL_ID = "/hyperion/task/1"
REQUESTER, WORKER = Side.OPENER, Side.ANSWERER

TASK = Protocol(
    protocol_id=PROTOCOL_ID,
    start="await_task",
    moves={
        "await_task": {(REQUESTER, T_TASK): "admitting"},
        "admitting": {(WORKER, T_ACCEPTED): "running", (WORKER, T_BUSY): "refused",
                      (WORKER, T_REJECTED): "refused"},
        "running": {(WORKER, T_PARTIAL): "running", (WORKER, T_FINAL): "await_countersign",
                    (WORKER, T_ERROR): "failed"},
        "await_countersign": {(REQUESTER, T_COUNTERSIGN): "settled"},
        "refused": {},
        "failed": {},
        "settled": {},
    },
    max_frame={REQUESTER: MAX_REQUEST_BYTES, WORKER: MAX_RESPONSE_BYTES},
)


def requester_side() -> Conversation:
    return Conversation(TASK, REQUESTER)


def worker_side() -> Conversation:
    return Conversation(TASK, WORKER)
