"""The control API as an ASGI app: JSON for the CLI under /api, the schema at /openapi.json.

Everything except ``/api/health`` needs ``Authorization: Bearer <token>`` with the token from
``<data dir>/api.token`` (0600): the API listens on loopback, but other local users and any web page the
operator opens can reach loopback too.
"""

from __future__ import annotations

import secrets
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse

from hyperion_node import __version__


class NodeView(Protocol):
    """What the API reads from the running node. The daemon implements it; the API never mutates state."""

    def health(self) -> dict[str, Any]: ...
    def status(self) -> dict[str, Any]: ...
    def hardware(self) -> dict[str, Any]: ...
    def peers(self) -> list[dict[str, Any]]: ...
    async def rewards(self) -> dict[str, Any]: ...
    def p2p_status(self) -> dict[str, Any]: ...
    async def providers(self, runtime: str, item: str) -> list[dict[str, Any]]: ...
    async def doctor(self) -> list[dict[str, Any]]: ...
    async def events(self, since_id: int, limit: int) -> list[dict[str, Any]]: ...


class Unauthorized(Exception):
    pass


def build_app(node: NodeView, token: str, *, token_path: str) -> FastAPI:
    def require_token(request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(presented.strip(), token):
            raise Unauthorized

    app = FastAPI(
        title="Hyperion Node control API",
        version=__version__,
        openapi_url=None,  # served below, behind the token like every other endpoint
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(Unauthorized)
    async def _unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return JSONResponse(
            {"error": f"missing or wrong bearer token; send 'Authorization: Bearer <token>' with the token "
                      f"from {token_path}"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    authed = [Depends(require_token)]

    @app.get("/api/health", summary="Liveness; the only endpoint that needs no token")
    async def health() -> dict[str, Any]:
        return node.health()

    @app.get("/api/status", dependencies=authed, summary="Uptime, identity, addresses, hardware, runtimes")
    async def status() -> dict[str, Any]:
        return node.status()

    @app.get("/api/hardware", dependencies=authed, summary="Hardware profile and latest telemetry")
    async def hardware() -> dict[str, Any]:
        return node.hardware()

    @app.get("/api/peers", dependencies=authed, summary="Peers this node knows")
    async def peers() -> list[dict[str, Any]]:
        return node.peers()

    @app.get("/api/p2p", dependencies=authed, summary="Addresses, DHT, gossip mesh and rejected-message counters")
    async def p2p() -> dict[str, Any]:
        return node.p2p_status()

    @app.get("/api/providers/{runtime}/{item}", dependencies=authed,
             summary="Peers that offer runtime/item, found through DHT provider records")
    async def providers(runtime: str, item: str) -> list[dict[str, Any]]:
        return await node.providers(runtime, item)

    @app.get("/api/doctor", dependencies=authed, summary="Checks that need the running node (reachability, skew)")
    async def doctor() -> list[dict[str, Any]]:
        return await node.doctor()

    @app.get("/api/rewards", dependencies=authed, summary="Earned, pending and disputed rewards")
    async def rewards() -> dict[str, Any]:
        return await node.rewards()

    @app.get("/api/events", dependencies=authed, summary="Ordered node events after an id")
    async def events(
        since: int = Query(0, ge=0, description="return events with id greater than this"),
        limit: int = Query(200, ge=1, le=1000),
    ) -> list[dict[str, Any]]:
        return await node.events(since, limit)

    @app.get("/openapi.json", dependencies=authed, include_in_schema=False)
    async def openapi() -> dict[str, Any]:
        return app.openapi()

    return app
