"""OpenAI-compatible inference endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``.

Request and answer shapes follow OpenAI's API reference, streaming included (server-sent events of
``chat.completion.chunk`` / ``text_completion`` objects, then ``data: [DONE]``), so the official ``openai``
client pointed at ``http://127.0.0.1:<api port>/v1`` with the node's API token as its key just works.
Errors use OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}``: an unknown model is 404
and lists the models served, a prompt past the context is 400, malformed JSON is 400, and no peer able to
serve is 503 with the scheduler's reason and a ``Retry-After`` when the cause passes.

Each request becomes one task of the ``inference`` runtime, routed by the scheduler to the best peer (this
node included); the answer names the worker in ``x-hyperion-worker`` and the task in ``x-hyperion-task-id``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hyperion_node.api import errors, streaming
from hyperion_node.tasks.events import Failed, FailureKind, Final, Partial, TaskEvent
from hyperion_node.tasks.model import TaskSpec
from hyperion_node.tasks.service import Job

RUNTIME = "inference"
# OpenAI's defaults: 16 tokens for completions; chat has none (until the context ends), which we bound.
COMPLETION_MAX_TOKENS = 16
CHAT_MAX_TOKENS = 512
_PASSED_THROUGH = ("temperature", "top_p", "seed", "stop", "min_tier")  # min_tier: an extension (tiers.py)


class InferenceNode(Protocol):
    def submit(self, spec: TaskSpec) -> Job: ...
    def served_models(self, *, include_gone: bool = False) -> dict[str, list[str]]: ...
    def default_timeout_s(self) -> float: ...


def error(status: int, message: str, kind: str, *, param: str | None = None, code: str | None = None,
          headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=dict(headers or {}))


async def read_json(request: Request) -> dict[str, Any] | JSONResponse:
    """The body as a JSON object, or the 400 that says why not. Its size is capped before we see it
    (``api.max_body_bytes``, guard.py); gathered in one buffer rather than Starlette's ``body()``, which holds
    the chunks and their join at once: twice the body at the peak."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
    try:
        text = body.decode("utf-8")  # RFC 8259 section 8.1: JSON between systems is UTF-8
        del body
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return error(400, f"the request body is not valid JSON: {exc}", "invalid_request_error")
    if not isinstance(data, dict):
        return error(400, "the request body must be a JSON object", "invalid_request_error")
    return data


def _payload(body: Mapping[str, Any], *, chat: bool) -> dict[str, Any] | JSONResponse:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return error(400, "'model' is required: one of GET /v1/models", "invalid_request_error", param="model")
    payload: dict[str, Any] = {"model": model}
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return error(400, "'messages' must be a non-empty list", "invalid_request_error", param="messages")
        payload["messages"] = messages
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            return error(400, "'prompt' must be a string (one prompt per request)", "invalid_request_error",
                         param="prompt")
        payload["prompt"] = prompt
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    default = CHAT_MAX_TOKENS if chat else COMPLETION_MAX_TOKENS
    payload["max_tokens"] = max_tokens if max_tokens is not None else default
    for key in _PASSED_THROUGH:
        if body.get(key) is not None:
            payload[key] = body[key]
    if body.get("n", 1) != 1:
        return error(400, "only n = 1 is supported", "invalid_request_error", param="n")
    return payload


def _job_error(failure: Failed | None, task_id: str, model: str, node: InferenceNode) -> JSONResponse:
    """The answer to a job that failed (``None``: it ended without a result)."""
    headers = {"x-hyperion-task-id": task_id}
    if failure is None:  # code "None": what this answer has always said (str() of no reason); kept as it was
        return error(500, "", "error", code="None", headers=headers)
    no_worker = failure.kind is FailureKind.NO_WORKER
    if no_worker and failure.reason == "no-provider" and model not in node.served_models(include_gone=True):
        models = ", ".join(sorted(node.served_models())) or "none"
        return error(404, f"the model {model!r} is not served by any known peer; available: {models}",
                     "invalid_request_error", param="model", code="model_not_found", headers=headers)
    if no_worker and failure.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(failure.retry_after_s)))
    return error(errors.status(failure), failure.message, failure.kind.value,
                 code=failure.reason or failure.kind.value, headers=headers)


def build_router(node: InferenceNode) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models", summary="Every model served anywhere in the network this node knows of")
    async def models() -> dict[str, Any]:
        served = node.served_models()
        return {"object": "list", "data": [
            {"id": model, "object": "model", "created": 0, "owned_by": "hyperion", "providers": len(peers)}
            for model, peers in sorted(served.items())]}

    async def complete(request: Request, *, chat: bool) -> Response:
        body = await read_json(request)
        if isinstance(body, JSONResponse):
            return body
        payload = _payload(body, chat=chat)
        if isinstance(payload, JSONResponse):
            return payload
        model = payload["model"]
        max_tokens = payload["max_tokens"]
        spec = TaskSpec(runtime=RUNTIME, item=model, payload=payload, timeout_s=node.default_timeout_s(),
                        expected_units=float(max_tokens) if isinstance(max_tokens, int) and max_tokens > 0 else None)
        started = await streaming.start(node.submit(spec))
        if started.error is not None:
            started.job.cancel()
            return _job_error(started.error, started.job.task_id, model, node)
        headers = {"x-hyperion-task-id": started.job.task_id, "x-hyperion-worker": started.worker}
        shape = _Shape(chat=chat, task_id=started.job.task_id, model=model,
                       include_usage=bool((body.get("stream_options") or {}).get("include_usage")))
        if body.get("stream"):
            return StreamingResponse(streaming.stream_bytes(started, shape.chunks, shape.done),
                                     media_type="text/event-stream", headers=headers)
        partials, last = await streaming.collect(started)
        if not isinstance(last, Final):
            return _job_error(last, started.job.task_id, model, node)
        return JSONResponse(shape.whole(partials, last), headers=headers)

    @router.post("/v1/completions", summary="OpenAI-compatible text completion, routed to the best peer")
    async def completions(request: Request) -> Response:
        return await complete(request, chat=False)

    @router.post("/v1/chat/completions", summary="OpenAI-compatible chat completion, routed to the best peer")
    async def chat_completions(request: Request) -> Response:
        return await complete(request, chat=True)

    return router


class _Shape:
    """OpenAI's objects for one answer, streamed or whole."""

    def __init__(self, *, chat: bool, task_id: str, model: str, include_usage: bool) -> None:
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + task_id
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage
        self._role_sent = False

    def _object(self, choices: list[dict[str, Any]], *, chunk: bool, usage: Any = None) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        obj: dict[str, Any] = {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                               "choices": choices}
        if usage is not None or not chunk:
            obj["usage"] = usage
        return obj

    def _choice(self, text: str | None, finish: str | None, *, chunk: bool) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if not chunk:
            return {"index": 0, "message": {"role": "assistant", "content": text or ""}, "logprobs": None,
                    "finish_reason": finish}
        delta: dict[str, Any] = {}
        if not self._role_sent:
            delta["role"] = "assistant"
            self._role_sent = True
        if text:
            delta["content"] = text
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    @staticmethod
    def _usage(output: Mapping[str, Any]) -> dict[str, int]:
        tokens_in, tokens_out = int(output.get("tokens_in", 0)), int(output.get("tokens_out", 0))
        return {"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out}

    def chunks(self, event: TaskEvent) -> list[bytes]:
        match event:
            case Partial():
                return [streaming.sse(self._object([self._choice(str(event.data.get("text", "")), None, chunk=True)],
                                                   chunk=True))]
            case Final(output=output):
                out = [streaming.sse(self._object([self._choice(None, output.get("finish_reason", "stop"),
                                                                chunk=True)], chunk=True))]
                if self.include_usage:
                    out.append(streaming.sse(self._object([], chunk=True, usage=self._usage(output))))
                return out
            case Failed(kind=kind, message=message):
                return [streaming.sse({"error": {"message": message, "type": kind.value, "param": None,
                                                 "code": kind.value}})]
            case _:
                return []

    @staticmethod
    def done() -> list[bytes]:
        return [b"data: [DONE]\n\n"]

    def whole(self, partials: list[Partial], final: Final) -> dict[str, Any]:
        output = final.output
        text = str(output.get("text", "".join(str(p.data.get("text", "")) for p in partials)))
        return self._object([self._choice(text, output.get("finish_reason", "stop"), chunk=False)], chunk=False,
                            usage=self._usage(output))
