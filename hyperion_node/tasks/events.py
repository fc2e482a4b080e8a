"""What the caller of a task sees, in order: :class:`Assigned` (maybe several times, one per worker tried),
:class:`Partial`..., then :class:`Final` or :class:`Failed`.

The events are typed (``TaskEvent`` is their union: ``match`` on it, or ``isinstance``); turning them into
bytes is the API's business (``hyperion_node/api/streaming.py`` for the NDJSON of ``POST /api/tasks``,
``api/openai.py`` for OpenAI's shapes), and so is the HTTP status a failure answers with
(``api/errors.py``). What kind of failure an exception is, is decided here: :func:`failed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import trio

from hyperion_node.errors import HyperionError
from hyperion_node.tasks.exceptions import LimitReached, NoWorker, TaskFailed, TaskRejected


class FailureKind(StrEnum):
    """Why a task did not complete. The value is the error's ``type`` on the wire."""

    INVALID_REQUEST = "invalid_request_error"  # TaskRejected: no worker can run it as asked
    NO_WORKER = "no_worker"  # NoWorker: nobody can take it now
    WORKER_FAILED = "worker_failed"  # TaskFailed: a worker failed after its output had started
    DEADLINE = "deadline"  # the task's deadline passed
    LIMIT = "limit_reached"  # LimitReached: a spending limit of this node (its daily budget)
    INTERNAL = "internal"  # anything else: a bug here


@dataclass(frozen=True)
class Assigned:
    """A worker was chosen and asked (``local``: this node); ``score`` is the scheduler's, best highest."""

    task_id: str
    worker: str
    local: bool
    score: float


@dataclass(frozen=True)
class Partial:
    """Part of the result, as the runtime emitted it (text, a frame...)."""

    task_id: str
    worker: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Final:
    """The task completed: its output and the settled receipt that pays for it."""

    task_id: str
    worker: str
    output: dict[str, Any]
    receipt_id: str  # hex
    units: int
    total_atto: int
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failed:
    """The task ended without a result. ``reason`` and ``retry_after_s`` are a ``NO_WORKER``'s: the
    scheduler's reason (``no-provider``, ``all-busy``...) and when asking again may help (None: unknown)."""

    task_id: str
    kind: FailureKind
    message: str
    reason: str | None = None
    retry_after_s: float | None = None


TaskEvent = Assigned | Partial | Final | Failed


def failed(task_id: str, exc: BaseException) -> Failed:
    """The last event of a job that ended with ``exc``."""
    if isinstance(exc, LimitReached):
        kind = FailureKind.LIMIT
    elif isinstance(exc, TaskRejected):
        kind = FailureKind.INVALID_REQUEST
    elif isinstance(exc, NoWorker):
        kind = FailureKind.NO_WORKER
    elif isinstance(exc, TaskFailed):
        kind = FailureKind.WORKER_FAILED
    elif isinstance(exc, trio.TooSlowError):
        kind = FailureKind.DEADLINE
    else:
        kind = FailureKind.INTERNAL
    if isinstance(exc, HyperionError):
        message = exc.one_line()
    elif isinstance(exc, trio.TooSlowError):
        message = "the task's deadline passed"
    else:
        message = f"internal error ({type(exc).__name__}); the node's log has the details"
    if isinstance(exc, NoWorker):
        return Failed(task_id, kind, message, reason=exc.status, retry_after_s=exc.retry_after_s)
    if isinstance(exc, LimitReached):
        return Failed(task_id, kind, message, reason="daily-budget", retry_after_s=exc.retry_after_s)
    return Failed(task_id, kind, message)
