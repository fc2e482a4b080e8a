"""``POST /api/render``: a render job split across workers, answered as NDJSON events.

Events, one JSON object a line: ``plan`` (workers, their planned speed and share), ``chunk`` (a task sent to
a worker; ``source`` reserve, orphans or stolen), ``frame`` (``frame``, ``worker``, ``pixels_sha256``,
``png_sha256``, ``png`` as base64), ``progress`` (``done``, ``total``), ``reassigned`` (a worker dropped and
the frames it will not render), then ``done`` (the summary: frames per worker, seconds, receipts) or
``error`` (``status``, ``type``, ``message``, ``missing`` frames if some were rendered).

As with ``POST /api/tasks``, nothing is sent until the first frame or the error: a request that no worker
can run is a status code (400 bad scene or range, 503 no live worker), not a 200 that breaks off. When the
client goes away, the generator's ``finally`` cancels the job, which resets every running task's stream.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import trio
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hyperion_node.api import errors
from hyperion_node.api.streaming import ndjson
from hyperion_node.tasks.exceptions import BadRenderJob
from hyperion_node.tasks.render_job import RenderEvent, RenderFailed, RenderJob
from hyperion_node.tasks.render_request import RenderJobRequest

END_KINDS = ("done", "error")


def wire(event: RenderEvent) -> dict[str, Any]:
    """An event as its NDJSON line's object: a PNG as base64, a failure as the ``error`` event."""
    if isinstance(event, RenderFailed):
        out = {"event": "error", "job_id": event.job_id, **errors.fields(event.failure)}
        if event.missing is not None:
            out["missing"] = list(event.missing)
        return out
    png = event.get("png")
    if isinstance(png, bytes):
        return {**event, "png": base64.b64encode(png).decode()}
    return event


async def parse(body: dict[str, Any], default_timeout_s: float) -> RenderJobRequest | Response:
    try:
        # In a thread: decoding and hashing a 64 MiB scene takes ~0.3 s, too long to hold the event loop.
        return await trio.to_thread.run_sync(
            lambda: RenderJobRequest.from_json(body, default_timeout_s=default_timeout_s))
    except BadRenderJob as exc:
        return JSONResponse({"error": exc.one_line()}, status_code=400)


def _name(event: RenderEvent) -> str:
    return "error" if isinstance(event, RenderFailed) else str(event["event"])


async def answer(job: RenderJob) -> Response:
    first: list[RenderEvent] = []
    try:
        async for event in job.events:
            first.append(event)
            if _name(event) in ("frame", *END_KINDS):
                break
    except BaseException:
        job.cancel()
        raise
    last = first[-1] if first else None
    if last is None:
        job.cancel()
        message = "the render job ended without a result"
        return JSONResponse({"status": 500, "message": message, "error": message}, status_code=500,
                            headers={"x-hyperion-render-job": job.job_id})
    if isinstance(last, RenderFailed):
        job.cancel()
        return JSONResponse({**wire(last), "error": last.failure.message}, status_code=errors.status(last.failure),
                            headers={"x-hyperion-render-job": job.job_id})
    return StreamingResponse(_body(job, first), media_type="application/x-ndjson",
                             headers={"x-hyperion-render-job": job.job_id})


async def _body(job: RenderJob, first: list[RenderEvent]) -> AsyncIterator[bytes]:
    try:
        for event in first:
            yield ndjson(wire(event))
        if _name(first[-1]) in END_KINDS:
            return
        async for event in job.events:
            yield ndjson(wire(event))
            if _name(event) in END_KINDS:
                return
    finally:
        job.cancel()
