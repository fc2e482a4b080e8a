"""The control API as an ASGI app: JSON for the CLI under /api, the schema at /openapi.json.

Every route needs ``Authorization: Bearer <token>`` with the token from ``<data dir>/api.token`` (0600),
except ``GET /api/health``, ``GET /`` (the dashboard's page, static HTML that carries no data: its script
sends the token on its own requests) and, when ``api.metrics_public`` is set, ``GET /metrics``. The API
listens on loopback, but other local users and any web page the operator opens can reach loopback too: so
every request must also name this API in its Host header, and bodies are capped at ``api.max_body_bytes``.
Those checks wrap the routes below as plain ASGI middleware (``guard.py``), so a route added here is
closed unless ``guard.py`` opens it.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hyperion_node import __version__
from hyperion_node.api import control, dashboard, errors, guard, metrics, ollama, openai, streaming
from hyperion_node.api import render as render_api
from hyperion_node.api.routing import Routing
from hyperion_node.api.settings import ApiSettings
from hyperion_node.errors import UserError
from hyperion_node.tasks.events import TaskEvent
from hyperion_node.tasks.model import TaskSpec
from hyperion_node.tasks.render_job import RenderJob
from hyperion_node.tasks.render_request import RenderJobRequest
from hyperion_node.tasks.service import Job

if TYPE_CHECKING:
    from hyperion_node.blobs.service import Pull


class NodeView(Protocol):
    """What the API reads from the running node. The daemon implements it; the API never mutates state."""

    routing: Routing  # the requester side's routing policies (aliases, canary, shadow, A/B)

    def health(self) -> dict[str, Any]: ...
    def status(self) -> dict[str, Any]: ...
    def hardware(self) -> dict[str, Any]: ...
    def peers(self) -> list[dict[str, Any]]: ...
    async def rewards(self) -> dict[str, Any]: ...
    def p2p_status(self) -> dict[str, Any]: ...
    async def providers(self, runtime: str, item: str) -> list[dict[str, Any]]: ...
    async def doctor(self) -> list[dict[str, Any]]: ...
    async def events(self, since_id: int, limit: int, since_time: float = 0.0) -> list[dict[str, Any]]: ...
    def submit(self, spec: TaskSpec) -> Job: ...
    def render(self, request: RenderJobRequest) -> RenderJob: ...
    def served_models(self, *, include_gone: bool = False, runtime: str = "inference") -> dict[str, list[str]]: ...
    def default_timeout_s(self) -> float: ...
    async def tasks(self, limit: int, role: str | None, state: str | None) -> list[dict[str, Any]]: ...
    async def task(self, task_id: str) -> list[dict[str, Any]]: ...
    def tasks_status(self) -> dict[str, Any]: ...
    def reputation_of(self, peer_id: str) -> dict[str, Any]: ...
    async def metrics(self) -> list[metrics.Family]: ...
    def dashboard_view(self, since: float) -> dict[str, Any]: ...
    def pull_model(self, model: str, providers: list[str] | None = None) -> Pull: ...
    def pulls(self) -> list[Pull]: ...
    async def operate(self, action: str, args: Mapping[str, Any], who: str) -> dict[str, Any]: ...
    async def audit(self, task_id: str) -> dict[str, Any]: ...
    def verify_evidence(self) -> dict[str, Any]: ...


RENDER_TIMEOUT_S = 3600.0  # a render job's deadline unless the request sets timeout_s: a film takes long


def build_app(node: NodeView, token: str, settings: ApiSettings, *, token_path: str, port: int) -> guard.ASGIApp:
    """The routes behind the Host check, the token and the body cap; ``port`` is the one bound (a Host
    header may carry it)."""
    allowed = guard.AllowedHosts.for_api(settings.host, settings.allowed_hosts, port)
    app = routes(node, max_choices=settings.max_choices)
    return guard.guard(app.state.api_metrics.wrap(app), token=token, token_path=token_path,
                       allowed=allowed, max_body_bytes=settings.max_body_bytes, metrics_public=settings.metrics_public)


def routes(node: NodeView, *, max_choices: int = 4) -> FastAPI:
    """The routes alone, with no check of who asks: only ever served through :func:`build_app`."""
    app = FastAPI(
        title="Hyperion Node control API",
        version=__version__,
        openapi_url=None,  # served below, behind the token like every other endpoint
        docs_url=None,
        redoc_url=None,
    )

    api_metrics = app.state.api_metrics = metrics.ApiMetrics()  # build_app wraps the routes to count them

    @app.get("/metrics", summary="Prometheus text format; needs the token unless api.metrics_public is set")
    async def prometheus() -> Response:
        families = [*await node.metrics(), *api_metrics.families()]
        return Response(metrics.render(families), media_type=metrics.CONTENT_TYPE)

    @app.get("/api/health", summary="Liveness; needs no token (a supervisor asks it as it is)")
    async def health() -> dict[str, Any]:
        return node.health()

    @app.get("/api/status", summary="Uptime, identity, addresses, hardware, runtimes")
    async def status() -> dict[str, Any]:
        return node.status()

    @app.get("/api/hardware", summary="Hardware profile and latest telemetry")
    async def hardware() -> dict[str, Any]:
        return node.hardware()

    @app.get("/api/peers", summary="Peers this node knows")
    async def peers() -> list[dict[str, Any]]:
        return node.peers()

    @app.get("/api/p2p", summary="Addresses, connections, DHT, presence and rejected-message counters")
    async def p2p() -> dict[str, Any]:
        return node.p2p_status()

    @app.get("/api/providers/{runtime}/{item}",
             summary="Peers that offer runtime/item, found through DHT provider records")
    async def providers(runtime: str, item: str) -> list[dict[str, Any]]:
        return await node.providers(runtime, item)

    @app.get("/api/doctor", summary="Checks that need the running node (reachability, skew)")
    async def doctor() -> list[dict[str, Any]]:
        return await node.doctor()

    @app.get("/api/rewards", summary="Earned, pending and disputed rewards")
    async def rewards() -> dict[str, Any]:
        return await node.rewards()

    @app.get("/api/events", summary="Ordered node events after an id")
    async def events(
        since: int = Query(0, ge=0, description="return events with id greater than this"),
        limit: int = Query(200, ge=1, le=1000),
        since_time: float = Query(0.0, ge=0, description="and at or after this unix time"),
    ) -> list[dict[str, Any]]:
        return await node.events(since, limit, since_time)

    @app.get("/api/tasks", summary="Task history, newest first (requested and served)")
    async def tasks(
        limit: int = Query(50, ge=1, le=1000),
        role: str | None = Query(None, pattern="^(requester|worker)$"),
        state: str | None = Query(None),
    ) -> list[dict[str, Any]]:
        return await node.tasks(limit, role, state)

    @app.get("/api/tasks/stats", summary="Queue, running tasks, outcomes, peer reputation")
    async def tasks_stats() -> dict[str, Any]:
        return node.tasks_status()

    @app.get("/api/reputation/{peer_id}", summary="This node's view of one peer: outcomes, standing, vouchers")
    async def reputation(peer_id: str) -> dict[str, Any]:
        return node.reputation_of(peer_id)

    @app.get("/api/tasks/{task_id}", summary="One task (both sides if this node ran it)")
    async def task(task_id: str) -> Response:
        found = await node.task(task_id)
        if not found:
            return JSONResponse({"error": f"no task {task_id!r} on this node"}, status_code=404)
        return JSONResponse(found)

    @app.post("/api/tasks/{task_id}/audit",
              summary="Check one of this node's own recent results on this node, every position the check reads; "
                      "the verdict with the check's statistics")
    async def audit(task_id: str) -> Response:
        try:
            return JSONResponse(await node.audit(task_id))
        except UserError as exc:
            status = 404 if "no recent result" in str(exc) else 400
            return JSONResponse({"error": exc.one_line()}, status_code=status)

    @app.get("/api/verify/evidence",
             summary="What this node's spot checks say of each worker: the sampling's account (budget, results, "
                     "checks, share of the compute bought spent on them) and, per worker and item, the checks, "
                     "the sequential test's statistics and any dispute with the checks it rests on")
    async def verify_evidence() -> dict[str, Any]:
        return node.verify_evidence()

    @app.post("/api/tasks",
              summary="Submit a task to the network; the answer is NDJSON events: assigned, partial..., final|error. "
                      "Bytes in the payload travel base64-encoded under payload_b64 (field -> text).")
    async def submit(request: Request) -> Response:
        body = await openai.read_json(request)
        if isinstance(body, JSONResponse):
            return body
        spec = _task_spec(body, node.default_timeout_s())
        if isinstance(spec, str):
            return JSONResponse({"error": spec}, status_code=400)
        started = await streaming.start(node.submit(spec))
        failure = started.error
        if failure is not None:
            started.job.cancel()
            return JSONResponse({"error": failure.message, **errors.fields(failure)},
                                status_code=errors.status(failure),
                                headers={"x-hyperion-task-id": started.job.task_id})

        def render(event: TaskEvent) -> list[bytes]:
            return [streaming.ndjson(streaming.task_json(event))]

        return StreamingResponse(streaming.stream_bytes(started, render), media_type="application/x-ndjson",
                                 headers={"x-hyperion-task-id": started.job.task_id,
                                          "x-hyperion-worker": started.worker})

    @app.post("/api/render",
              summary="Render a frame range split across workers. Body: scene_b64, frame_start, frame_end, resolution, "
                      "samples...; the answer is NDJSON events: plan, chunk, frame (png base64), progress, "
                      "reassigned, done|error (see hyperion_node/api/render.py)")
    async def render_job(request: Request) -> Response:
        body = await openai.read_json(request)
        if isinstance(body, JSONResponse):
            return body
        parsed = await render_api.parse(body, RENDER_TIMEOUT_S)
        if isinstance(parsed, Response):
            return parsed
        return await render_api.answer(node.render(parsed))

    @app.post("/api/models/pull",
              summary="Fetch a model that peers serve (body: model, optional from: [peer ids]) into <data dir>/models "
                      "over /hyperion/blob/1; answers at once with the pull (progress: GET /api/models/pulls)")
    async def pull_model(request: Request) -> Response:
        body = await openai.read_json(request)
        if isinstance(body, JSONResponse):
            return body
        model, providers = body.get("model"), body.get("from")
        if not isinstance(model, str) or not model or len(model) > 200:
            return JSONResponse({"error": "model must be a model id (text)"}, status_code=400)
        if providers is not None and (not isinstance(providers, list)
                                      or not all(isinstance(p, str) and 0 < len(p) < 100 for p in providers)):
            return JSONResponse({"error": "from must be a list of peer ids"}, status_code=400)
        return JSONResponse(node.pull_model(model, providers or None).to_json(), status_code=202)

    @app.get("/api/models/pulls", summary="Model pulls since the node started, with their progress")
    async def pulls() -> list[dict[str, Any]]:
        return [p.to_json() for p in node.pulls()]

    app.include_router(dashboard.build_router(node))  # / open (static, no data); /api/dashboard needs the token
    app.include_router(openai.build_router(node, max_choices=max_choices))
    app.include_router(ollama.build_router(node))
    app.include_router(control.build_router(node))  # Ollama's paths under /api; none is one of the routes above

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> dict[str, Any]:
        return app.openapi()

    return app


def _task_spec(body: dict[str, Any], default_timeout_s: float) -> TaskSpec | str:
    """A TaskSpec from a POST /api/tasks body, or what is wrong with it."""
    runtime, item, payload = body.get("runtime"), body.get("item"), body.get("payload")
    if not isinstance(runtime, str) or not runtime or not isinstance(item, str) or not item:
        return "'runtime' and 'item' must be non-empty strings (see an offer in GET /api/status)"
    if not isinstance(payload, dict):
        return "'payload' must be a JSON object"
    encoded = body.get("payload_b64", {})
    if not isinstance(encoded, dict) or not all(isinstance(v, str) for v in encoded.values()):
        return "'payload_b64' must map payload fields to base64 text (for bytes such as a .zkey)"
    try:
        payload = {**payload, **{k: base64.b64decode(v, validate=True) for k, v in encoded.items()}}
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        return f"'payload_b64' holds text that is not base64: {exc}"
    timeout = body.get("timeout_s", default_timeout_s)
    max_price = body.get("max_price_per_unit")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 86400:
        return "'timeout_s' must be a number of seconds from 0 to 86400"
    if max_price is not None and (isinstance(max_price, bool) or not isinstance(max_price, int | float)
                                  or max_price < 0):
        return "'max_price_per_unit' must be a number >= 0"
    units = body.get("expected_units")
    if units is not None and (isinstance(units, bool) or not isinstance(units, int | float) or units <= 0):
        return "'expected_units' must be a number above 0"
    return TaskSpec(runtime=runtime, item=item, payload=payload, timeout_s=float(timeout),
                    max_price_per_unit=None if max_price is None else float(max_price),
                    expected_units=None if units is None else float(units))
