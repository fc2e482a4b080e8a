"""Ollama's API on the node's port: ``/api/version``, ``/api/tags``, ``/api/show``, ``/api/ps``, ``/api/generate``,
``/api/chat``, ``/api/embed`` and ``/api/embeddings``.

Shapes follow Ollama's ``docs/api.md``: answers stream as NDJSON unless ``"stream": false``, each line a piece of the
answer with ``"done": false`` and a last line with ``"done": true``, the finish reason and the counts. Errors are
``{"error": "..."}`` with an HTTP status, which the ``ollama`` client raises as ``ResponseError``. Like every route
but ``/api/health``, these need the node's token: Ollama's clients send it as a header
(``ollama.Client(host="http://127.0.0.1:8787", headers={"Authorization": "Bearer <token>"})``; docs/api.md).

Each generation is one task of the ``inference`` runtime, routed like an OpenAI request (``openai.py``).
``format`` (``"json"`` or a JSON schema) and ``tools`` become the same grammar-constrained generation
(``chat.py``). An option the node cannot honour is refused by name; options about the local model's memory
(``num_ctx``, ``num_gpu``, ``keep_alive``...) are accepted and ignored, since the worker that serves the
request sets those for itself.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

import trio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hyperion_node import __version__
from hyperion_node.api import chat, errors, streaming
from hyperion_node.api import openai as openai_api
from hyperion_node.api.openai import CHAT_MAX_TOKENS, RUNTIME, InferenceNode, read_json
from hyperion_node.tasks.events import Failed, FailureKind, Final, Partial
from hyperion_node.tasks.model import TaskSpec

# The Ollama release whose API this mirrors; clients that check the version for features see this one.
OLLAMA_API_VERSION = "0.6.0"
# Options that set the local model's memory and threads: the worker that serves a request decides those.
_IGNORED_OPTIONS = frozenset({"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "use_mmap", "use_mlock",
                              "numa", "low_vram", "vocab_only", "num_keep", "f16_kv", "logits_all"})
# Options accepted only at the node's fixed sampler's values (generation.SAMPLER_DEFAULTS, shaping.PENALTY_LAST_N).
_NEUTRAL_OPTIONS: Mapping[str, tuple[Any, ...]] = {
    "top_k": (40,), "min_p": (0.05,), "typical_p": (1.0,), "repeat_penalty": (1.0,), "repeat_last_n": (64,),
    "mirostat": (0,), "tfs_z": (1.0,), "penalize_newline": (False,),
}
_PASSED_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "stop": "stop",
                   "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}
_GENERATE_FIELDS = frozenset({"model", "prompt", "system", "raw", "format", "options", "stream", "keep_alive",
                              "images", "context", "suffix", "template", "think"})
_CHAT_FIELDS = frozenset({"model", "messages", "tools", "format", "options", "stream", "keep_alive", "think"})


class OllamaNode(InferenceNode, Protocol):
    def status(self) -> dict[str, Any]: ...


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def _fail(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


def _local_offers(node: OllamaNode) -> dict[str, Mapping[str, Any]]:
    """This node's own inference offers by model id (their details: quantization, size...)."""
    out: dict[str, Mapping[str, Any]] = {}
    for runtime in node.status().get("runtimes", []):
        for offer in runtime.get("offers", []) if runtime.get("name") == RUNTIME else []:
            out[offer["item"]] = offer.get("details") or {}
    return out


def _details(model: str, details: Mapping[str, Any]) -> dict[str, Any]:
    family = model.split("-")[0] if model else ""
    return {"parent_model": "", "format": "gguf", "family": family, "families": [family],
            "parameter_size": "", "quantization_level": str(details.get("quantization", ""))}


def _model_entry(model: str, details: Mapping[str, Any], providers: int) -> dict[str, Any]:
    return {"name": model, "model": model, "modified_at": _now(), "size": int(details.get("size_bytes", 0) or 0),
            "digest": "", "details": _details(model, details), "providers": providers}


def _options(body: Mapping[str, Any]) -> dict[str, Any]:
    """The payload fields an Ollama request's ``options`` ask for; ``Refused`` names one that cannot be honoured."""
    options = body.get("options") or {}
    if not isinstance(options, Mapping):
        raise Refused(400, "options must be an object")
    payload: dict[str, Any] = {}
    for key, value in options.items():
        if value is None or key in _IGNORED_OPTIONS:
            continue
        if key in _PASSED_OPTIONS:
            payload[_PASSED_OPTIONS[key]] = value
        elif key == "num_predict":
            if isinstance(value, bool) or not isinstance(value, int):
                raise Refused(400, "option num_predict must be an integer")
            if value > 0:
                payload["max_tokens"] = value
        elif key in _NEUTRAL_OPTIONS:
            if value not in _NEUTRAL_OPTIONS[key]:
                raise Refused(400, f"option {key} is supported only as {_NEUTRAL_OPTIONS[key][0]!r}: the network's "
                                   "workers use a fixed sampler (docs/api.md)")
        else:
            raise Refused(400, f"option {key} is not supported by this node (docs/api.md lists the options)")
    payload.setdefault("max_tokens", CHAT_MAX_TOKENS)
    return payload


def _format_schema(value: Any) -> dict[str, Any] | None:
    if value in (None, ""):
        return None
    if value == "json":
        return {"type": "object"}
    if isinstance(value, Mapping):
        return dict(value)
    raise Refused(400, 'format must be "json" or a JSON schema')


def _unknown(body: Mapping[str, Any], known: frozenset[str]) -> None:
    for key, value in body.items():
        if value is not None and key not in known:
            raise Refused(400, f"the field {key} is not supported by this node (docs/api.md lists every field)")


def _generate_payload(body: Mapping[str, Any]) -> dict[str, Any]:
    _unknown(body, _GENERATE_FIELDS)
    for key in ("images", "context", "suffix", "template"):
        if body.get(key):
            raise Refused(400, f"the field {key} is not supported by this node: "
                               + ("its models take text only" if key == "images" else
                                  "each request is a task of its own, with the model's own template"))
    if body.get("think"):
        raise Refused(400, "think is not supported: the network's models do not think aloud")
    prompt, system = body.get("prompt") or "", body.get("system")
    if not isinstance(prompt, str) or (system is not None and not isinstance(system, str)):
        raise Refused(400, "prompt and system must be text")
    payload = {"model": body["model"], **_options(body)}
    if body.get("raw"):
        payload["prompt"] = prompt
    else:
        messages = [{"role": "system", "content": system}] if system else []
        payload["messages"] = [*messages, {"role": "user", "content": prompt}]
    schema = _format_schema(body.get("format"))
    if schema is not None:
        payload["json_schema"] = schema
    return payload


def _chat_payload(body: Mapping[str, Any]) -> tuple[dict[str, Any], chat.ToolPlan | None]:
    _unknown(body, _CHAT_FIELDS)
    if body.get("think"):
        raise Refused(400, "think is not supported: the network's models do not think aloud")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Refused(400, "messages must be a non-empty list")
    try:
        tools = chat.tool_plan(body.get("tools"), None)
        payload = {"model": body["model"], **_options(body),
                   "messages": chat.plain_messages(messages, tools=tools, ollama=True)}
    except chat.ChatError as exc:
        raise Refused(400, f"{exc.param}: {exc}") from None
    schema = _format_schema(body.get("format"))
    if schema is not None and tools is not None:
        raise Refused(400, "format cannot be combined with tools")
    schema = tools.schema() if tools is not None else schema
    if schema is not None:
        payload["json_schema"] = schema
    return payload, tools


def build_router(node: OllamaNode) -> APIRouter:
    router = APIRouter()

    @router.get("/api/version", summary="Ollama: the API version this node speaks")
    async def version() -> dict[str, Any]:
        return {"version": OLLAMA_API_VERSION, "hyperion_node": __version__}

    @router.get("/api/tags", summary="Ollama: every model served anywhere in the network this node knows of")
    async def tags() -> dict[str, Any]:
        local = _local_offers(node)
        return {"models": [_model_entry(m, local.get(m, {}), len(p)) for m, p in sorted(node.served_models().items())]}

    @router.get("/api/ps", summary="Ollama: the models this node itself serves (loaded on start)")
    async def ps() -> dict[str, Any]:
        out = []
        for model, details in sorted(_local_offers(node).items()):
            entry = _model_entry(model, details, 1)
            out.append({**entry, "expires_at": "9999-12-31T23:59:59Z", "size_vram": 0,
                        "context_length": int(details.get("n_ctx", 0) or 0)})
        return {"models": out}

    @router.post("/api/show", summary="Ollama: one model's details")
    async def show(request: Request) -> Response:
        body = await read_json(request)
        if isinstance(body, JSONResponse):
            return _fail(400, "the request body must be a JSON object")
        model = str(body.get("model") or body.get("name") or "")
        peers = node.served_models().get(model)
        if peers is None:
            return _fail(404, f"model {model!r} not found: no peer this node knows of serves it "
                              "(`hyperion-node models pull` fetches one to serve it here)")
        details = _local_offers(node).get(model, {})
        return JSONResponse({
            "modelfile": "", "parameters": "", "template": "", "license": "", "modified_at": _now(),
            "details": _details(model, details),
            "model_info": {"general.quantization": details.get("quantization"), "context_length": details.get("n_ctx"),
                           "hyperion.providers": len(peers)},
            "capabilities": ["completion", "tools"],
        })

    async def generate(request: Request, *, chat_api: bool) -> Response:
        started_at = time.monotonic()
        body = await read_json(request)
        if isinstance(body, JSONResponse):
            return _fail(400, "the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _fail(400, "model is required (GET /api/tags lists them)")
        tools = None
        try:
            if chat_api:
                payload, tools = _chat_payload(body)
            else:
                if not body.get("prompt") and not body.get("system"):  # Ollama's "load the model" request
                    return JSONResponse({"model": model, "created_at": _now(), "response": "", "done": True,
                                         "done_reason": "load"})
                payload = _generate_payload(body)
        except Refused as exc:
            return _fail(exc.status, str(exc))
        route = node.routing.route(model, None)  # an alias's arm (Ollama's requests name no user), or the model
        payload["model"] = model = route.model
        spec = TaskSpec(runtime=RUNTIME, item=model, payload=payload, timeout_s=node.default_timeout_s(),
                        expected_units=float(payload["max_tokens"]) if isinstance(payload["max_tokens"], int) else None)
        served = node.routing.serve(route, payload)
        ended = served.ended
        started = await streaming.start(node.submit(spec))
        served.answering()
        headers = {"x-hyperion-task-id": started.job.task_id, "x-hyperion-worker": started.worker,
                   **({"x-hyperion-route": route.header()} if route.alias else {})}
        if started.error is not None:
            started.job.cancel()
            ended(False)
            return _failure(started.error, model, node, headers)
        answer = _Answer(model, chat_api, tools, started_at, ended)
        if body.get("stream", True):
            return StreamingResponse(answer.stream(started), media_type="application/x-ndjson", headers=headers)
        partials, last = await streaming.collect(started)
        if not isinstance(last, Final):
            ended(False)
            return _failure(last, model, node, headers)
        ended(True, last)
        return JSONResponse(answer.whole(partials, last), headers=headers)

    @router.post("/api/generate", summary="Ollama: a completion of a prompt (NDJSON stream unless stream is false)")
    async def generate_route(request: Request) -> Response:
        return await generate(request, chat_api=False)

    @router.post("/api/chat", summary="Ollama: the next message of a chat (NDJSON stream unless stream is false)")
    async def chat_route(request: Request) -> Response:
        return await generate(request, chat_api=True)

    async def embedded(request: Request, *, field: str) -> tuple[dict[str, Any], list[list[float]]] | JSONResponse:
        started_at = time.monotonic()
        body = await read_json(request)
        if isinstance(body, JSONResponse):
            return _fail(400, "the request body must be a JSON object")
        try:
            _unknown(body, frozenset({"model", field, "truncate", "options", "keep_alive", "dimensions"}))
            _options(body)  # refuses what cannot be honoured; the rest says nothing to an embedder
        except Refused as exc:
            return _fail(exc.status, str(exc))
        model, texts = body.get("model"), body.get(field)
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(model, str) or not model or not isinstance(texts, list) or not texts \
                or not all(isinstance(t, str) and t for t in texts):
            return _fail(400, f"model and {field} (a text or a list of texts) are required")
        ended, task_id = await openai_api.embed(node, model, texts)
        if not isinstance(ended, Final):
            return _failure(ended, model, node, {"x-hyperion-task-id": task_id}, runtime=openai_api.EMBEDDING_RUNTIME)
        vectors = list(ended.output.get("embeddings") or [])
        if body.get("dimensions") not in (None, len(vectors[0]) if vectors else None):
            return _fail(400, "dimensions must be the model's own: this node does not shorten vectors")
        return {"model": model, "total_duration": int((time.monotonic() - started_at) * 1e9), "load_duration": 0,
                "prompt_eval_count": int(ended.output.get("tokens_in", 0))}, vectors

    @router.post("/api/embed", summary="Ollama: embeddings of one or more texts, by a peer that offers the model as "
                                       "an embedder")
    async def embed(request: Request) -> Response:
        answer = await embedded(request, field="input")
        if isinstance(answer, JSONResponse):
            return answer
        head, vectors = answer
        return JSONResponse({**head, "embeddings": vectors})

    @router.post("/api/embeddings", summary="Ollama: the embedding of one text (the older route)")
    async def embeddings(request: Request) -> Response:
        answer = await embedded(request, field="prompt")
        if isinstance(answer, JSONResponse):
            return answer
        return JSONResponse({"embedding": answer[1][0]})

    return router


def _failure(failure: Failed | None, model: str, node: InferenceNode, headers: Mapping[str, str], *,
             runtime: str = RUNTIME) -> JSONResponse:
    if failure is None:
        return _fail(500, "the task ended without a result", headers)
    if failure.kind is FailureKind.NO_WORKER and failure.reason == "no-provider" \
            and model not in node.served_models(include_gone=True, runtime=runtime):
        return _fail(404, f"model {model!r} not found: no peer this node knows of serves it", headers)
    return _fail(errors.status(failure), failure.message, headers)


class _Answer:
    """Ollama's objects for one generation, streamed or whole."""

    def __init__(self, model: str, chat_api: bool, tools: chat.ToolPlan | None, started_at: float,
                 ended: Callable[[bool, Final | None], None]) -> None:
        self.ended = ended  # called once a streamed answer is over: (ok, its final event)
        self.model = model
        self.chat = chat_api
        self.tools = tools
        self.started_at = started_at
        self.first_at: float | None = None

    def _piece(self, text: str, done: bool, **more: Any) -> dict[str, Any]:
        head: dict[str, Any] = {"model": self.model, "created_at": _now()}
        if self.chat:
            head["message"] = {"role": "assistant", "content": text, **more}
        else:
            head["response"] = text
        head["done"] = done
        return head

    def _done(self, final: Final, text: str) -> dict[str, Any]:
        now = time.monotonic()
        first = self.first_at or now
        more: dict[str, Any] = {}
        if self.tools is not None:
            answer = chat.read_tool_answer(text)
            if answer.calls:
                more["tool_calls"] = [{"function": {"name": name, "arguments": json.loads(arguments)}}
                                      for name, arguments in answer.calls]
                text = ""
            else:
                text = answer.content or ""
        output = final.output
        finish = "length" if output.get("finish_reason") == "length" else "stop"
        return {**self._piece(text, True, **more), "done_reason": finish,
                "total_duration": int((now - self.started_at) * 1e9), "load_duration": 0,
                "prompt_eval_count": int(output.get("tokens_in", 0)),
                "prompt_eval_duration": int((first - self.started_at) * 1e9),
                "eval_count": int(output.get("tokens_out", 0)), "eval_duration": int((now - first) * 1e9)}

    def whole(self, partials: list[Partial], final: Final) -> dict[str, Any]:
        self.first_at = self.started_at
        text = str(final.output.get("text", "".join(str(p.data.get("text", "")) for p in partials)))
        return self._done(final, text)

    async def stream(self, started: streaming.Started) -> AsyncIterator[bytes]:
        final: Final | None = None
        try:
            async for event in streaming.events(started):
                match event:
                    case Partial():
                        if self.first_at is None:
                            self.first_at = time.monotonic()
                        if self.tools is None:
                            yield streaming.ndjson(self._piece(str(event.data.get("text", "")), False))
                    case Final():
                        final = event
                        shown = str(event.output.get("text", "")) if self.tools else ""
                        yield streaming.ndjson(self._done(event, shown))
                    case Failed():
                        yield streaming.ndjson({"error": event.message})
                await trio.lowlevel.checkpoint()
        finally:
            self.ended(final is not None, final)
