"""``/`` (the web dashboard, one self-contained HTML file from the package) and ``/api/dashboard`` (its data).

The page needs no token and the data does. A browser cannot add an ``Authorization`` header to a page it
loads, so the page is static HTML that holds no data, and its script finds the token in the link's
fragment (``/#token=...``, printed by ``hyperion-node dashboard``) and sends it as ``Authorization: Bearer``
on its own requests to ``/api/dashboard``. A fragment never leaves the browser (RFC 3986 section 3.5): it
is in no request line, log or Referer. We chose it over a cookie set by a one-time link because the
server then knows one kind of credential only, one that a browser never attaches on its own, so no other
site can make the operator's browser send it (no CSRF to defend against), and nothing on the server holds
session state. The script keeps the token in ``sessionStorage`` (this origin, this tab) and takes it off
the address bar, so a reload still works and a screen share or bookmark does not show it.

The page is served with a Content-Security-Policy that lets it talk only to this node and that no other
site may frame, and the JSON carries no CORS header, so a page from another origin cannot read it; one
that re-resolves its own name to 127.0.0.1 is refused by the Host check (``guard.py``).
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
                                           "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"})

    @router.get("/api/dashboard", summary="The dashboard's data: nodes, task distribution, time series")
    async def dashboard_data(
        since: float = Query(0.0, ge=0, description="only time-series points after this unix time"),
    ) -> dict[str, Any]:
        return node.dashboard_view(since)

    return router
