"""The HTTP status each kind of task failure answers with, and the fields of its error body.

The task layer says why a task failed (:class:`~hyperion_node.tasks.events.FailureKind`); which status that
is, is the API's choice, made here and nowhere else: for ``POST /api/tasks``, ``POST /api/render`` and the
OpenAI-compatible endpoints alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hyperion_node.tasks.events import Failed, FailureKind

STATUS: Mapping[FailureKind, int] = {
    FailureKind.INVALID_REQUEST: 400,  # no worker can run it as asked: the request is wrong
    FailureKind.NO_WORKER: 503,  # nobody can take it now (a Retry-After when the scheduler knows when)
    FailureKind.WORKER_FAILED: 502,  # a worker failed after its output had started
    FailureKind.DEADLINE: 504,
    FailureKind.LIMIT: 429,  # a spending limit of this node: Retry-After says when it resets
    FailureKind.INTERNAL: 500,
}


def status(failure: Failed) -> int:
    return STATUS[failure.kind]


def fields(failure: Failed) -> dict[str, Any]:
    """``status``, ``type``, ``message``, and a no-worker failure's ``reason`` and ``retry_after_s`` (either
    may be null), in that order: the body of an error event or answer."""
    out: dict[str, Any] = {"status": status(failure), "type": failure.kind.value, "message": failure.message}
    if failure.kind in (FailureKind.NO_WORKER, FailureKind.LIMIT):
        out["reason"] = failure.reason
        out["retry_after_s"] = failure.retry_after_s
    return out
