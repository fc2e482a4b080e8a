"""``/`` (the web dashboard, one self-contained HTML file from the package) and ``/api/dashboard`` (its data).

Both need no token, like ``/metrics``: the page only reads, and the JSON is an allow-list of fields without
secrets (``hyperion_node/dashboard/view.py``). The page is served with a Content-Security-Policy that lets it
talk only to this node and that no other site may frame, and the JSON carries no CORS header, so a page
from another origin that the operator opens cannot read it.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Protocol

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

PAGE = "dashboard.html"
# Inline script and style (one file, no build step); fetches only from this origin; nothing may frame it.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class DashboardSource(Protocol):
    def dashboard_view(self, since: float) -> dict[str, Any]: ...


def page_html() -> str:
    return resources.files("hyperion_node.api").joinpath("static", PAGE).read_text(encoding="utf-8")


def build_router(node: DashboardSource) -> APIRouter:
    html = page_html()  # read once: the file ships with the package and does not change while the node runs
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def dashboard_page() -> HTMLResponse:
        return HTMLResponse(html, headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                                           "Cache-Control": "no-cache"})

    @router.get("/api/dashboard", summary="The dashboard's data: nodes, task distribution, time series; "
                                          "needs no token (read-only, no secrets)")
    async def dashboard_data(
        since: float = Query(0.0, ge=0, description="only time-series points after this unix time"),
    ) -> dict[str, Any]:
        return node.dashboard_view(since)

    return router
