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
from typing import Any

import trio

from hyperion_node.tasks.requester import TaskEvent
from hyperion_node.tasks.service import Job

OUTPUT_KINDS = ("partial", "final", "error")


@dataclass
class Started:
    """A job up to its first output: the events so far, and the worker chosen for it."""

    job: Job
    first: list[TaskEvent]
    worker: str

    @property
    def error(self) -> TaskEvent | None:
        last = self.first[-1] if self.first else None
        return last if last is not None and last.kind == "error" else None


async def start(job: Job) -> Started:
    """Wait for the job's first output (or its end). Cancels the job if the caller is cancelled."""
    first: list[TaskEvent] = []
    worker = ""
    try:
        async for event in job.events:
            first.append(event)
            worker = event.worker or worker
            if event.kind in OUTPUT_KINDS:
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
        if started.first and started.first[-1].kind in ("final", "error"):
            return
        async for event in started.job.events:
            yield event
            if event.kind in ("final", "error"):
                return
    finally:
        started.job.cancel()


async def collect(started: Started) -> tuple[list[TaskEvent], TaskEvent | None]:
    """Run a started job to its end: (its partial results, its final or error event)."""
    partials: list[TaskEvent] = []
    last: TaskEvent | None = None
    async for event in events(started):
        if event.kind == "partial":
            partials.append(event)
        elif event.kind in ("final", "error"):
            last = event
    return partials, last


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
