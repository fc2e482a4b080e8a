"""Task outcomes are typed events; their NDJSON form (``POST /api/tasks``, ``POST /api/render``) is a public
interface the CLI reads, pinned here byte for byte. Which kind of failure an exception is, is decided in the
task layer; the HTTP status of each kind, in the API (``api/errors.py``)."""

from __future__ import annotations

import pytest
import trio

from hyperion_node.api import errors, streaming
from hyperion_node.api.render import wire
from hyperion_node.errors import InternalError
from hyperion_node.tasks.events import Assigned, Failed, FailureKind, Final, Partial, TaskEvent, failed
from hyperion_node.tasks.exceptions import BadRenderJob, NoWorker, RenderJobFailed, TaskFailed, TaskRejected
from hyperion_node.tasks.render_job import RenderFailed


@pytest.mark.parametrize(("exc", "kind", "status", "message"), [
    (TaskRejected("unknown model", hint="see GET /v1/models"), FailureKind.INVALID_REQUEST, 400,
     "unknown model -- see GET /v1/models"),
    (BadRenderJob("bad range"), FailureKind.INVALID_REQUEST, 400, "bad range"),
    (NoWorker("nobody", status="no-provider"), FailureKind.NO_WORKER, 503, "nobody"),
    (TaskFailed("broke"), FailureKind.WORKER_FAILED, 502, "broke"),
    (RenderJobFailed("left", missing=[3]), FailureKind.WORKER_FAILED, 502,
     "left -- the frames already written stand; submit the missing ones again"),
    (trio.TooSlowError(), FailureKind.DEADLINE, 504, "the task's deadline passed"),
    (InternalError("a bug"), FailureKind.INTERNAL, 500, "a bug"),
    (ValueError("secret detail"), FailureKind.INTERNAL, 500,
     "internal error (ValueError); the node's log has the details"),
])
def test_an_exception_is_a_kind_of_failure_and_the_api_gives_it_a_status(
        exc: BaseException, kind: FailureKind, status: int, message: str) -> None:
    event = failed("t1", exc)
    assert (event.kind, event.message) == (kind, message)
    assert errors.status(event) == status


def test_every_kind_of_failure_has_a_status() -> None:
    assert set(errors.STATUS) == set(FailureKind)


@pytest.mark.parametrize(("event", "line"), [
    (Assigned("t1", "12D3w", local=True, score=0.123456),
     b'{"event":"assigned","task_id":"t1","worker":"12D3w","local":true,"score":0.1235}\n'),
    (Partial("t1", "12D3w", {"text": "Hel", "png": b"\x01\xff"}),
     b'{"event":"partial","task_id":"t1","worker":"12D3w","text":"Hel","png":"01ff"}\n'),
    (Final("t1", "12D3w", {"text": "Hello"}, receipt_id="abcd", units=3, total_atto=3 * 10**20,
           evidence={"model_sha256": "00"}),
     b'{"event":"final","task_id":"t1","worker":"12D3w","output":{"text":"Hello"},"receipt_id":"abcd","units":3,'
     b'"total_atto":"300000000000000000000","evidence":{"model_sha256":"00"}}\n'),
    (failed("t1", TaskFailed("broke")),
     b'{"event":"error","task_id":"t1","worker":"","status":502,"type":"worker_failed","message":"broke"}\n'),
    (failed("t1", NoWorker("every worker tried was busy", status="all-busy", retry_after_s=2.0)),
     b'{"event":"error","task_id":"t1","worker":"","status":503,"type":"no_worker",'
     b'"message":"every worker tried was busy","reason":"all-busy","retry_after_s":2.0}\n'),
    (failed("t1", NoWorker("nobody serves it", status="no-provider")),
     b'{"event":"error","task_id":"t1","worker":"","status":503,"type":"no_worker",'
     b'"message":"nobody serves it","reason":"no-provider","retry_after_s":null}\n'),
    (failed("t1", TaskRejected("no")),
     b'{"event":"error","task_id":"t1","worker":"","status":400,"type":"invalid_request_error","message":"no"}\n'),
])
def test_the_ndjson_of_each_event_is_unchanged(event: TaskEvent, line: bytes) -> None:
    assert streaming.ndjson(streaming.task_json(event)) == line


def test_a_render_job_failure_keeps_its_error_event() -> None:
    exc = RenderJobFailed("no worker is left", missing=[7, 8])
    event = RenderFailed("j1", failed("j1", exc), tuple(exc.missing))
    assert streaming.ndjson(wire(event)) == (
        b'{"event":"error","job_id":"j1","status":502,"type":"worker_failed","message":"no worker is left -- '
        b'the frames already written stand; submit the missing ones again","missing":[7,8]}\n')
    no_worker = RenderFailed("j1", failed("j1", NoWorker("none", status="no-provider")))
    assert wire(no_worker) == {"event": "error", "job_id": "j1", "status": 503, "type": "no_worker",
                               "message": "none", "reason": "no-provider", "retry_after_s": None}


def test_failed_is_a_task_event() -> None:
    event: TaskEvent = Failed("t1", FailureKind.DEADLINE, "late")
    assert streaming.task_json(event)["status"] == 504
