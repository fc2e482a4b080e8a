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

import base64
import json
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import trio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hyperion_node.api import chat as chat_api
from hyperion_node.api import errors, streaming
from hyperion_node.api.routing import Routing
from hyperion_node.tasks.events import Failed, FailureKind, Final, Partial, TaskEvent
from hyperion_node.tasks.model import TaskSpec
from hyperion_node.tasks.service import Job

RUNTIME = "inference"
# OpenAI's defaults: 16 tokens for completions; chat has none (until the context ends), which we bound.
COMPLETION_MAX_TOKENS = 16
CHAT_MAX_TOKENS = 512
# Sent to the worker as they are (request.py checks them); min_tier is an extension (tiers.py).
_PASSED_THROUGH = ("temperature", "top_p", "seed", "stop", "min_tier", "presence_penalty", "frequency_penalty",
                   "logit_bias")
# Accepted and without effect, by design (docs/api.md): the node keeps nothing per end user and no stored
# completions; there is one service tier.
_IGNORED = ("user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key")
# Accepted at these values only: the node's fixed sampler (generation.SAMPLER_DEFAULTS) and text output. Any other
# value is refused by name; so is any field not named anywhere here.
_NEUTRAL: Mapping[str, tuple[Any, ...]] = {
    "top_k": (40,), "min_p": (0.05,), "typical_p": (1.0,), "repeat_penalty": (1.0,),
    "modalities": (["text"],), "parallel_tool_calls": (True, False), "echo": (False,), "suffix": ("",),
}
_COMMON = frozenset({"model", "max_tokens", "n", "stream", "stream_options", "logprobs", "min_tier",
                     *_PASSED_THROUGH, *_IGNORED, *_NEUTRAL})
_CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools",
                          "tool_choice"}
_COMPLETION_FIELDS = _COMMON | {"prompt", "best_of"}
_EMBEDDING_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", *_IGNORED})
EMBEDDING_RUNTIME = "embedding"
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's cap for the completions API's integer logprobs


class InferenceNode(Protocol):
    routing: Routing

    def submit(self, spec: TaskSpec) -> Job: ...
    def served_models(self, *, include_gone: bool = False, runtime: str = "inference") -> dict[str, list[str]]: ...
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


@dataclass(frozen=True)
class _Asked:
    """A request read: the payload of its first choice's task, how many choices, and how to shape them."""

    payload: dict[str, Any]
    n: int
    tools: chat_api.ToolPlan | None


def _refused(body: Mapping[str, Any], known: frozenset[str]) -> JSONResponse | None:
    for key, value in body.items():
        if value is None:
            continue
        if key not in known:
            return error(400, f"the field {key!r} is not supported by this node (docs/api.md lists every field)",
                         "invalid_request_error", param=key, code="unsupported_field")
        if key in _NEUTRAL and value not in _NEUTRAL[key]:
            allowed = " or ".join(json.dumps(v) for v in _NEUTRAL[key])
            return error(400, f"the field {key!r} is supported only as {allowed}: the network's workers use a "
                              "fixed sampler and answer in text", "invalid_request_error", param=key,
                         code="unsupported_value")
    return None


def _payload(body: Mapping[str, Any], *, is_chat: bool, max_choices: int) -> _Asked | JSONResponse:
    refused = _refused(body, _CHAT_FIELDS if is_chat else _COMPLETION_FIELDS)
    if refused is not None:
        return refused
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return error(400, "'model' is required: one of GET /v1/models", "invalid_request_error", param="model")
    payload: dict[str, Any] = {"model": model}
    tools = None
    try:
        if is_chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return error(400, "'messages' must be a non-empty list", "invalid_request_error", param="messages")
            tools = chat_api.tool_plan(body.get("tools"), body.get("tool_choice"),
                                       body.get("parallel_tool_calls", True))
            payload["messages"] = chat_api.plain_messages(messages, tools=tools)
            schema = chat_api.response_schema(body.get("response_format"))
            if schema is not None and tools is not None:
                return error(400, "response_format cannot be combined with tools (unless tool_choice is 'none')",
                             "invalid_request_error", param="response_format")
            schema = tools.schema() if tools is not None else schema
            if schema is not None:
                payload["json_schema"] = schema
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if not isinstance(prompt, str):
                return error(400, "'prompt' must be a string (one prompt per request)", "invalid_request_error",
                             param="prompt")
            payload["prompt"] = prompt
    except chat_api.ChatError as exc:
        return error(400, str(exc), "invalid_request_error", param=exc.param)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    default = CHAT_MAX_TOKENS if is_chat else COMPLETION_MAX_TOKENS
    payload["max_tokens"] = max_tokens if max_tokens is not None else default
    for key in _PASSED_THROUGH:
        if body.get(key) is not None:
            payload[key] = body[key]
    logprobs = body.get("logprobs")
    if is_chat and logprobs is not None:
        payload["logprobs"] = logprobs
        if body.get("top_logprobs") is not None:
            payload["top_logprobs"] = body["top_logprobs"]
    elif not is_chat and logprobs is not None:  # the completions API's logprobs: how many alternatives, 0-5
        if isinstance(logprobs, bool) or not isinstance(logprobs, int) or not 0 <= logprobs <= MAX_COMPLETION_LOGPROBS:
            return error(400, f"'logprobs' must be an integer from 0 to {MAX_COMPLETION_LOGPROBS}",
                         "invalid_request_error", param="logprobs")
        payload["logprobs"], payload["top_logprobs"] = True, logprobs
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_choices:
        return error(400, f"'n' must be an integer from 1 to {max_choices} on this node (api.max_choices)",
                     "invalid_request_error", param="n")
    best_of = body.get("best_of")
    if best_of is not None and best_of != n:
        return error(400, "'best_of' is supported only equal to n: every choice generated is returned",
                     "invalid_request_error", param="best_of")
    return _Asked(payload, n, tools)


def _choice_payload(payload: dict[str, Any], index: int) -> dict[str, Any]:
    """Choice ``index``'s task: the same request; with a seed asked for, the next seeds for the others (so
    that n choices are n different samples, each reproducible)."""
    if index == 0 or not isinstance(payload.get("seed"), int):
        return payload
    return {**payload, "seed": (payload["seed"] + index) % 2**32}


async def embed(node: InferenceNode, model: str, texts: list[str]) -> tuple[Final | Failed | None, str]:
    """One embedding task for ``texts``, run to its end: its final (or failed) event, and its task id."""
    spec = TaskSpec(runtime=EMBEDDING_RUNTIME, item=model, payload={"model": model, "input": texts},
                    timeout_s=node.default_timeout_s(), expected_units=float(sum(len(t) // 4 + 2 for t in texts)))
    started = await streaming.start(node.submit(spec))
    if started.error is not None:
        started.job.cancel()
        return started.error, started.job.task_id
    _, last = await streaming.collect(started)
    return last, started.job.task_id


def _job_error(failure: Failed | None, task_id: str, model: str, node: InferenceNode, *,
               runtime: str = RUNTIME) -> JSONResponse:
    """The answer to a job that failed (``None``: it ended without a result)."""
    headers = {"x-hyperion-task-id": task_id}
    if failure is None:  # code "None": what this answer has always said (str() of no reason); kept as it was
        return error(500, "", "error", code="None", headers=headers)
    no_worker = failure.kind is FailureKind.NO_WORKER
    if no_worker and failure.reason == "no-provider" and model not in node.served_models(include_gone=True,
                                                                                          runtime=runtime):
        models = ", ".join(sorted(node.served_models(runtime=runtime))) or "none"
        return error(404, f"the model {model!r} is not served by any known peer; available: {models}",
                     "invalid_request_error", param="model", code="model_not_found", headers=headers)
    if (no_worker or failure.kind is FailureKind.LIMIT) and failure.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(failure.retry_after_s)))
    return error(errors.status(failure), failure.message, failure.kind.value,
                 code=failure.reason or failure.kind.value, headers=headers)


def build_router(node: InferenceNode, *, max_choices: int = 4) -> APIRouter:
    router = APIRouter()

    def model_object(model: str, peers: list[str]) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": 0, "owned_by": "hyperion", "providers": len(peers)}

    def served() -> dict[str, list[str]]:
        """Models served, and this node's aliases (routing.py) with the providers of their primary model."""
        models = node.served_models()
        for name, alias in node.routing.policies.aliases.items():
            models.setdefault(name, models.get(alias.model, []))
        return models

    @router.get("/v1/models", summary="Every model served anywhere in the network this node knows of, and aliases")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_object(m, p) for m, p in sorted(served().items())]}

    @router.get("/v1/models/{model:path}", summary="One model, if any peer this node knows of serves it")
    async def model(model: str) -> Response:
        peers = served().get(model)
        if peers is None:
            return error(404, f"the model {model!r} is not served by any known peer", "invalid_request_error",
                         param="model", code="model_not_found")
        return JSONResponse(model_object(model, peers))

    async def complete(request: Request, *, is_chat: bool) -> Response:
        body = await read_json(request)
        if isinstance(body, JSONResponse):
            return body
        asked = _payload(body, is_chat=is_chat, max_choices=max_choices)
        if isinstance(asked, JSONResponse):
            return asked
        route = node.routing.route(asked.payload["model"], body.get("user"))  # an alias's arm, or the model itself
        asked.payload["model"] = model = route.model
        max_tokens = asked.payload["max_tokens"]
        served = node.routing.serve(route, _choice_payload(asked.payload, 0))
        ended = served.ended

        starts: list[streaming.Started] = []
        try:
            for index in range(asked.n):  # every choice's task is submitted before any is awaited: they run at once
                spec = TaskSpec(runtime=RUNTIME, item=model, payload=_choice_payload(asked.payload, index),
                                timeout_s=node.default_timeout_s(),
                                expected_units=float(max_tokens) if isinstance(max_tokens, int) and max_tokens > 0
                                else None)
                starts.append(streaming.Started(node.submit(spec), [], ""))
            for index, pending in enumerate(starts):
                starts[index] = started = await streaming.start(pending.job)
                if started.error is not None:
                    for other in starts:
                        other.job.cancel()
                    ended(False)
                    return _job_error(started.error, started.job.task_id, model, node)
        except BaseException:
            for other in starts:
                other.job.cancel()
            raise
        served.answering()  # every choice has its first output (or ended)
        headers = {"x-hyperion-task-id": ",".join(s.job.task_id for s in starts),
                   "x-hyperion-worker": ",".join(s.worker for s in starts)}
        if route.alias:
            headers["x-hyperion-route"] = route.header()
        shape = _Shape(chat=is_chat, task_id=starts[0].job.task_id, model=model, tools=asked.tools,
                       include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
                       completion_logprobs=not is_chat and asked.payload.get("logprobs") is True)
        if body.get("stream"):
            return StreamingResponse(_streamed(shape, starts, ended), media_type="text/event-stream", headers=headers)
        choices: list[tuple[list[Partial], Final]] = []
        try:
            for started in starts:
                partials, last = await streaming.collect(started)
                if not isinstance(last, Final):
                    ended(False)
                    return _job_error(last, started.job.task_id, model, node)
                choices.append((partials, last))
        finally:
            for started in starts:
                started.job.cancel()
        ended(True, choices[0][1])
        return JSONResponse(shape.whole(choices), headers=headers)

    @router.post("/v1/embeddings", summary="OpenAI-compatible embeddings, routed to a peer that offers the model as an "
                                           "embedder ([runtimes.embedding])")
    async def embeddings(request: Request) -> Response:
        body = await read_json(request)
        if isinstance(body, JSONResponse):
            return body
        refused = _refused(body, _EMBEDDING_FIELDS)
        if refused is not None:
            return refused
        model, texts, encoding = body.get("model"), body.get("input"), body.get("encoding_format") or "float"
        if not isinstance(model, str) or not model:
            return error(400, "'model' is required: a model that a peer offers as an embedder",
                         "invalid_request_error", param="model")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            return error(400, "'input' must be a non-empty text or a list of them (token arrays are not supported)",
                         "invalid_request_error", param="input")
        if encoding not in ("float", "base64"):
            return error(400, "'encoding_format' must be 'float' or 'base64'", "invalid_request_error",
                         param="encoding_format")
        ended, task_id = await embed(node, model, texts)
        headers = {"x-hyperion-task-id": task_id}
        if not isinstance(ended, Final):
            return _job_error(ended, task_id, model, node, runtime=EMBEDDING_RUNTIME)
        vectors = ended.output.get("embeddings") or []
        dimensions = body.get("dimensions")
        if dimensions is not None and vectors and dimensions != len(vectors[0]):
            return error(400, f"'dimensions' must be the model's own, {len(vectors[0])}: this node does not shorten "
                              "vectors", "invalid_request_error", param="dimensions")
        tokens = int(ended.output.get("tokens_in", 0))
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if encoding == "base64" else v}
                for i, v in enumerate(vectors)]
        return JSONResponse({"object": "list", "data": data, "model": model,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, headers=headers)

    @router.post("/v1/completions", summary="OpenAI-compatible text completion, routed to the best peer")
    async def completions(request: Request) -> Response:
        return await complete(request, is_chat=False)

    @router.post("/v1/chat/completions", summary="OpenAI-compatible chat completion, routed to the best peer")
    async def chat_completions(request: Request) -> Response:
        return await complete(request, is_chat=True)

    return router


async def _streamed(shape: _Shape, starts: list[streaming.Started],
                    ended: Callable[[bool, Final | None], None]) -> AsyncIterator[bytes]:
    """The server-sent events of n choices: each choice's chunks in turn (all of them run at once, so the
    later ones are ready when their turn comes), then the usage of all when asked, then ``[DONE]``;
    ``ended(ok, first choice's final event)`` once the last choice has ended."""
    finals: list[Final] = []
    try:
        usage: dict[str, int] = {}
        for index, started in enumerate(starts):
            choice = _Choice(shape, index)
            async for event in streaming.events(started):
                if isinstance(event, Final):
                    finals.append(event)
                for chunk in choice.chunks(event):
                    yield chunk
                await trio.lowlevel.checkpoint()
            usage = _add_usage(usage, choice.usage)
        if shape.include_usage:
            yield streaming.sse(shape.object([], chunk=True, usage=usage or _add_usage({}, {})))
        yield b"data: [DONE]\n\n"
    finally:
        for started in starts:
            started.job.cancel()
        ok = len(finals) == len(starts)
        ended(ok, finals[0] if ok else None)


def _usage(output: Mapping[str, Any]) -> dict[str, int]:
    tokens_in, tokens_out = int(output.get("tokens_in", 0)), int(output.get("tokens_out", 0))
    return {"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out}


def _add_usage(total: Mapping[str, int], more: Mapping[str, int]) -> dict[str, int]:
    """Usage of several choices: one prompt, every choice's completion."""
    prompt = total.get("prompt_tokens", more.get("prompt_tokens", 0))
    completion = total.get("completion_tokens", 0) + more.get("completion_tokens", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _Shape:
    """What every choice of one answer shares: OpenAI's object around them."""

    def __init__(self, *, chat: bool, task_id: str, model: str, include_usage: bool,
                 tools: chat_api.ToolPlan | None = None, completion_logprobs: bool = False) -> None:
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + task_id
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage
        self.tools = tools
        self.completion_logprobs = completion_logprobs

    def object(self, choices: list[dict[str, Any]], *, chunk: bool, usage: Any = None) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        obj: dict[str, Any] = {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                               "choices": choices}
        if usage is not None or not chunk:
            obj["usage"] = usage
        return obj

    def whole(self, choices: list[tuple[list[Partial], Final]]) -> dict[str, Any]:
        usage: dict[str, int] = {}
        out = []
        for index, (partials, final) in enumerate(choices):
            out.append(_Choice(self, index).whole(partials, final))
            usage = _add_usage(usage, _usage(final.output))
        return self.object(out, chunk=False, usage=usage)


class _Choice:
    """One choice of an answer, streamed or whole."""

    def __init__(self, shape: _Shape, index: int) -> None:
        self.shape = shape
        self.index = index
        self.usage: dict[str, int] = {}
        self._role_sent = False
        self._logprobs_sent = 0  # entries already streamed with pieces

    def _logprobs(self, output: Mapping[str, Any], start: int = 0) -> dict[str, Any] | None:
        entries = output.get("logprobs")
        if not isinstance(entries, list):
            return None
        entries = entries[start:]
        if self.shape.chat:
            return {"content": entries, "refusal": None}
        offsets, at = [], 0
        for entry in entries:
            offsets.append(at)
            at += len(entry.get("token", ""))
        return {"tokens": [e.get("token") for e in entries], "token_logprobs": [e.get("logprob") for e in entries],
                "top_logprobs": [{t.get("token"): t.get("logprob") for t in e.get("top_logprobs", [])}
                                 for e in entries] if self.shape.completion_logprobs else None,
                "text_offset": offsets}

    def _message(self, text: str, finish: str, task_id: str) -> tuple[dict[str, Any], str]:
        """The assistant's message (content, or tool calls) and the finish reason."""
        if self.shape.tools is None:
            return {"role": "assistant", "content": text, "refusal": None}, finish
        answer = chat_api.read_tool_answer(text)
        if not answer.calls:
            return {"role": "assistant", "content": answer.content, "refusal": None}, finish
        calls = [{"id": f"call_{task_id[:12]}_{n}", "type": "function", "function": {"name": name, "arguments": args}}
                 for n, (name, args) in enumerate(answer.calls)]
        return {"role": "assistant", "content": None, "refusal": None, "tool_calls": calls}, "tool_calls"

    def whole(self, partials: list[Partial], final: Final) -> dict[str, Any]:
        output = final.output
        text = str(output.get("text", "".join(str(p.data.get("text", "")) for p in partials)))
        finish = str(output.get("finish_reason", "stop"))
        if not self.shape.chat:
            return {"index": self.index, "text": text, "logprobs": self._logprobs(output), "finish_reason": finish}
        message, finish = self._message(text, finish, final.task_id)
        return {"index": self.index, "message": message, "logprobs": self._logprobs(output), "finish_reason": finish}

    def _chunk(self, delta: dict[str, Any] | str | None, finish: str | None,
               logprobs: dict[str, Any] | None = None) -> bytes:
        if not self.shape.chat:
            choice = {"index": self.index, "text": delta or "", "logprobs": logprobs, "finish_reason": finish}
        else:
            delta = dict(delta or {}) if not isinstance(delta, str) else {"content": delta}
            if not self._role_sent:
                delta = {"role": "assistant", **delta}
                self._role_sent = True
            choice = {"index": self.index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return streaming.sse(self.shape.object([choice], chunk=True))

    def chunks(self, event: TaskEvent) -> list[bytes]:
        match event:
            case Partial():
                if self.shape.tools is not None:  # the whole answer is needed to tell calls from text
                    return []
                logprobs = self._logprobs(event.data)
                self._logprobs_sent += len(event.data.get("logprobs") or []) if logprobs is not None else 0
                return [self._chunk(str(event.data.get("text", "")), None, logprobs)]
            case Final(output=output):
                self.usage = _usage(output)
                out = []
                finish = str(output.get("finish_reason", "stop"))
                if self.shape.tools is not None:
                    message, finish = self._message(str(output.get("text", "")), finish, event.task_id)
                    if message.get("tool_calls"):
                        calls = [{"index": n, **call} for n, call in enumerate(message["tool_calls"])]
                        out.append(self._chunk({"tool_calls": calls}, None))
                    else:
                        out.append(self._chunk(message.get("content") or "", None))
                # The tokens no piece carried (a stop sequence's, the held-back end) come with the last chunk.
                out.append(self._chunk(None, finish, self._logprobs(output, self._logprobs_sent)))
                return out
            case Failed(kind=kind, message=message):
                return [streaming.sse({"error": {"message": message, "type": kind.value, "param": None,
                                                 "code": kind.value}})]
            case _:
                return []
