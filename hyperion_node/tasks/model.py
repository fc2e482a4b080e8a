"""What a task is and how its state may change, as pure code (no I/O, no trio).

A task's ID is derived from its content: the runtime, the item, the payload's hash, the requester and the
moment and nonce of its creation, so that two identical prompts are still two tasks (each with a receipt of
its own; the ledger refuses a receipt it has seen) while a task's ID cannot be chosen apart from what it is.

States, and the only moves between them (``TRANSITIONS``)::

    queued ──▶ assigned ──▶ running ──▶ completed
                 ▲  │          │
                 └──┘◀─────────┘        (failover to the next candidate, before any output)
    any state but the three final ones ──▶ failed | cancelled
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import cbor2

from hyperion_node.errors import InternalError


class TaskState(StrEnum):
    QUEUED = "queued"
    ASSIGNED = "assigned"  # a worker was chosen and asked
    RUNNING = "running"  # the worker accepted it
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED})

TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = {
    TaskState.QUEUED: frozenset({TaskState.ASSIGNED, TaskState.RUNNING, TaskState.FAILED, TaskState.CANCELLED}),
    TaskState.ASSIGNED: frozenset({TaskState.ASSIGNED, TaskState.RUNNING, TaskState.FAILED, TaskState.CANCELLED}),
    TaskState.RUNNING: frozenset({TaskState.ASSIGNED, TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED}),
    TaskState.COMPLETED: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.CANCELLED: frozenset(),
}


def check_transition(old: TaskState, new: TaskState) -> None:
    if new not in TRANSITIONS[old]:
        raise InternalError(f"a task cannot go from {old} to {new}")


def payload_hash(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(cbor2.dumps(dict(payload), canonical=True)).hexdigest()


def new_task_id(runtime: str, item: str, payload: Mapping[str, Any], requester: str, created_ms: int,
                nonce: bytes | None = None) -> str:
    """A content-derived ID: 128 bits of SHA-256 over what the task is, who asked and when."""
    material = {
        "runtime": runtime, "item": item, "payload": payload_hash(payload), "requester": requester,
        "created_ms": created_ms, "nonce": nonce if nonce is not None else secrets.token_bytes(8),
    }
    return hashlib.sha256(cbor2.dumps(material, canonical=True)).hexdigest()[:32]


@dataclass(frozen=True)
class TaskSpec:
    """A task as the requester side receives it from the API or the CLI."""

    runtime: str
    item: str
    payload: Mapping[str, Any]
    timeout_s: float  # the deadline, relative to submission; it holds across every failover attempt
    max_price_per_unit: float | None = None  # credits per work unit
    min_memory_bytes: int = 0
    expected_units: float | None = None  # for the scheduler's too-slow filter (e.g. max_tokens)
    # Only these peers may run it (a job that splits work across chosen peers pins each part); empty: any.
    only: frozenset[str] = frozenset()


@dataclass
class Attempt:
    """One try of a task on one worker, as the task history shows it."""

    peer_id: str
    outcome: str = "pending"  # success, busy, unreachable, rejected, failed, timeout, cancelled
    detail: str = ""
    started_ms: int = 0
    ended_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"peer_id": self.peer_id, "outcome": self.outcome, "detail": self.detail,
                "started_ms": self.started_ms, "ended_ms": self.ended_ms}


@dataclass
class TaskRecord:
    """The persisted view of one task on one side (requester or worker)."""

    task_id: str
    role: str  # "requester" (we asked) or "worker" (we ran it for a peer)
    runtime: str
    item: str
    requester: str
    state: TaskState = TaskState.QUEUED
    worker: str | None = None
    created_ms: int = 0
    updated_ms: int = 0
    error: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)  # small facts: tokens, units, receipt id, ttft

    def move(self, new: TaskState, now_ms: int) -> None:
        check_transition(self.state, new)
        self.state = new
        self.updated_ms = now_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id, "role": self.role, "runtime": self.runtime, "item": self.item,
            "requester": self.requester, "worker": self.worker, "state": self.state.value,
            "created_ms": self.created_ms, "updated_ms": self.updated_ms, "error": self.error,
            "attempts": [a.to_json() for a in self.attempts], "result": self.result,
        }
