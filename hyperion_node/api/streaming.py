"""Turning a running :class:`~hyperion_node.tasks.service.Job` into HTTP answers.

A job's errors before any output (no worker, a rejected request, a passed deadline) must reach the client
as HTTP status codes, not as a 200 that breaks off: so nothing is sent until the job's first output or
its error is known. From the first output on, the answer streams; a failure after that point arrives as a
last error event (OpenAI's clients raise it), never as a silently shortened answer.

When the client goes away, Starlette cancels the streaming generator; its ``finally`` cancels the job,
which closes the stream to the worker, which stops the work.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, assert_never

import trio

from hyperion_node.api import errors
from hyperion_node.tasks.events import Assigned, Failed, Final, Partial, TaskEvent
from hyperion_node.tasks.service import Job


@dataclass
class Started:
    """A job up to its first output: the events so far, and the worker chosen for it."""

    job: Job
    first: list[TaskEvent]
    worker: str

    @property
    def error(self) -> Failed | None:
        last = self.first[-1] if self.first else None
        return last if isinstance(last, Failed) else None


async def start(job: Job) -> Started:
    """Wait for the job's first output (or its end). Cancels the job if the caller is cancelled."""
    first: list[TaskEvent] = []
    worker = ""
    try:
        async for event in job.events:
            first.append(event)
            if isinstance(event, Failed):
                break
            worker = event.worker or worker
            if isinstance(event, Partial | Final):
                break
    except BaseException:
        job.cancel()
        raise
    return Started(job, first, worker)


async def events(started: Started) -> AsyncIterator[TaskEvent]:
    """Every event of a started job, from its first output to its end; cancels the job on the way out."""
    try:
        for event in started.first:
            yield event
        if started.first and isinstance(started.first[-1], Final | Failed):
            return
        async for event in started.job.events:
            yield event
            if isinstance(event, Final | Failed):
                return
    finally:
        started.job.cancel()


async def collect(started: Started) -> tuple[list[Partial], Final | Failed | None]:
    """Run a started job to its end: (its partial results, its final or failed event)."""
    partials: list[Partial] = []
    last: Final | Failed | None = None
    async for event in events(started):
        if isinstance(event, Partial):
            partials.append(event)
        elif isinstance(event, Final | Failed):
            last = event
    return partials, last


def task_json(event: TaskEvent) -> dict[str, Any]:
    """One event of ``POST /api/tasks``'s NDJSON answer: ``event`` (assigned, partial, final or error),
    ``task_id``, ``worker`` (empty in an error), then the event's own fields."""
    match event:
        case Assigned():
            return {"event": "assigned", "task_id": event.task_id, "worker": event.worker, "local": event.local,
                    "score": round(event.score, 4)}
        case Partial():
            return {"event": "partial", "task_id": event.task_id, "worker": event.worker, **event.data}
        case Final():
            return {"event": "final", "task_id": event.task_id, "worker": event.worker, "output": event.output,
                    "receipt_id": event.receipt_id, "units": event.units, "total_atto": str(event.total_atto),
                    "evidence": event.evidence}
        case Failed():
            return {"event": "error", "task_id": event.task_id, "worker": "", **errors.fields(event)}
        case _:
            assert_never(event)


def sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def ndjson(data: Any) -> bytes:
    return (json.dumps(data, separators=(",", ":"), default=_plain) + "\n").encode()


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON")


async def stream_bytes(started: Started, render: Callable[[TaskEvent], list[bytes]],
                       tail: Callable[[], list[bytes]] = list) -> AsyncIterator[bytes]:
    """The body of a streamed answer: each event rendered, then ``tail()`` (e.g. ``data: [DONE]``)."""
    async for event in events(started):
        for chunk in render(event):
            yield chunk
        await trio.lowlevel.checkpoint()
    for chunk in tail():
        yield chunk
