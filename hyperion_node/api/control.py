"""The operator's live controls over HTTP (``hyperion_node/control.py`` says what each does).

``GET /api/control`` is the state (draining, runtimes switched off, prices set, peers banned); each ``POST`` carries
out one control and answers the event it recorded. Every body may hold ``reason``, which the event keeps (a ban
needs one). Who asked is the API token's name: the node has one token, ``api.token``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from hyperion_node.api.openai import read_json
from hyperion_node.errors import UserError

WHO = "api.token"  # the name of the token the request carried (the node has one)
MAX_BAN_S = 365 * 86400.0


class Operable(Protocol):
    def status(self) -> dict[str, Any]: ...
    async def operate(self, action: str, args: Mapping[str, Any], who: str) -> dict[str, Any]: ...


def _bad(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def _args(action: str, body: Mapping[str, Any], runtime: str | None) -> dict[str, Any] | str:
    """The control's arguments from its body, or what is wrong with them."""
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 500:
        return "reason must be text (500 characters at most)"
    args: dict[str, Any] = {"reason": reason}
    if action in ("ban", "unban"):
        peer = body.get("peer_id")
        if not isinstance(peer, str) or not 0 < len(peer) < 100:
            return "peer_id must be a peer id"
        args["peer_id"] = peer
        duration = body.get("for_s")
        if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int | float)
                                     or not 0 < duration <= MAX_BAN_S):
            return f"for_s must be a number of seconds from 0 to {MAX_BAN_S:.0f} (leave it out: until unban)"
        args["for_s"] = None if duration is None else float(duration)
    if runtime is not None:
        args["runtime"] = runtime
    if action == "price":
        value = body.get("price_per_unit")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            return "price_per_unit must be a number >= 0"
        args["price_per_unit"] = float(value)
    return args


def build_router(node: Operable) -> APIRouter:
    router = APIRouter()

    @router.get("/api/control", summary="The operator's controls in force: draining, runtimes off, prices, bans")
    async def state() -> dict[str, Any]:
        return dict(node.status().get("controls") or {})

    async def operate(request: Request, action: str, runtime: str | None = None, **fixed: Any) -> Response:
        body = await read_json(request)
        if isinstance(body, JSONResponse):
            return body
        args = _args(action, body, runtime)
        if isinstance(args, str):
            return _bad(args)
        try:
            return JSONResponse(await node.operate(action, {**args, **fixed}, WHO))
        except UserError as exc:
            return _bad(exc.one_line())

    @router.post("/api/control/drain", summary="Finish running work, take no new work, withdraw every offer")
    async def drain(request: Request) -> Response:
        return await operate(request, "drain")

    @router.post("/api/control/resume", summary="Take new work again after a drain")
    async def resume(request: Request) -> Response:
        return await operate(request, "resume")

    @router.post("/api/control/ban", summary="Ban a peer (body: peer_id, reason, for_s or none: until unban)")
    async def ban(request: Request) -> Response:
        return await operate(request, "ban")

    @router.post("/api/control/unban", summary="Lift a peer's ban (body: peer_id, reason)")
    async def unban(request: Request) -> Response:
        return await operate(request, "unban")

    @router.post("/api/control/runtimes/{name}/disable", summary="Withdraw a runtime's offers and refuse its new tasks")
    async def disable(name: str, request: Request) -> Response:
        return await operate(request, "runtime", name, enabled=False)

    @router.post("/api/control/runtimes/{name}/enable", summary="Offer a switched-off runtime again")
    async def enable(name: str, request: Request) -> Response:
        return await operate(request, "runtime", name, enabled=True)

    @router.post("/api/control/runtimes/{name}/price", summary="Set a runtime's price per unit (body: price_per_unit)")
    async def price(name: str, request: Request) -> Response:
        return await operate(request, "price", name)

    @router.post("/api/control/reload", summary="Read the configuration again and apply the keys that can change live")
    async def reload(request: Request) -> Response:
        return await operate(request, "reload")

    return router
