"""The control API's gate (hyperion_node/api/guard.py) in front of a real FastAPI app, driven in-process over
ASGI: the Host check, the token and the body cap, at their edges. The same attacks against a real
``hyperion-node start`` process are in tests/integration/test_api_hardening.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from hyperion_node.api import guard, openai

PORT = 8787
TOKEN = "s3cret-token-of-the-right-length_43chars-x"
CAP = 64 * 1024
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Seen:
    """What reached the app behind the gate: the bytes each upload let through."""

    def __init__(self) -> None:
        self.uploads: list[int] = []


def gated(seen: Seen, *, metrics_public: bool = False, extra_hosts: tuple[str, ...] = ()) -> guard.ASGIApp:
    app = FastAPI()

    @app.get("/")
    async def page() -> Response:
        return Response("<html></html>", media_type="text/html")

    @app.get("/api/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/status")
    async def status() -> dict[str, str]:
        return {"peer_id": "me"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response("hyperion_up 1\n", media_type="text/plain")

    @app.post("/api/raw")
    async def raw(request: Request) -> dict[str, int]:
        seen.uploads.append(0)
        async for chunk in request.stream():
            seen.uploads[-1] += len(chunk)
        return {"bytes": seen.uploads[-1]}

    @app.post("/api/tasks")
    async def tasks(request: Request) -> Response:
        body = await openai.read_json(request)
        if isinstance(body, JSONResponse):
            return body
        return JSONResponse({"keys": sorted(body)})

    allowed = guard.AllowedHosts.for_api("127.0.0.1", extra_hosts, PORT)
    return guard.guard(app, token=TOKEN, token_path="/data/api.token", allowed=allowed, max_body_bytes=CAP,
                       metrics_public=metrics_public)


def client(app: guard.ASGIApp, host: str = f"127.0.0.1:{PORT}") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}")


async def chunks(total: int, size: int = 4096) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b"x" * piece


@pytest.mark.parametrize(("value", "parsed"), [
    ("127.0.0.1", ("127.0.0.1", None)),
    ("127.0.0.1:8787", ("127.0.0.1", 8787)),
    ("LocalHost:80", ("localhost", 80)),
    ("[::1]", ("[::1]", None)),
    ("[::1]:8787", ("[::1]", 8787)),
    ("node.lan:", ("node.lan", None)),  # RFC 3986: port = *DIGIT, so an empty port is no port
    ("", None),
    (":8787", None),
    ("::1", None),  # an IPv6 literal must be bracketed
    ("[::1", None),
    ("[not-ipv6]:80", None),
    ("host:0", None),
    ("host:65536", None),
    ("host:80:81", None),
    ("host:8o", None),
    ("ev il.example", None),
    ("evil.example/x", None),
    ("b\u00fccher.example", None),  # a browser sends the punycode form
])
def test_split_host(value: str, parsed: tuple[str, int | None] | None) -> None:
    assert guard.split_host(value) == parsed


def test_allowed_hosts_are_loopback_on_no_port_or_ours_plus_what_is_configured() -> None:
    allowed = guard.AllowedHosts.for_api("127.0.0.1", ["node.lan", "proxy.lan:8443"], PORT)
    for host in ("127.0.0.1", "127.0.0.1:8787", "localhost", "LOCALHOST:8787", "[::1]", "[::1]:8787",
                 "node.lan", "node.lan:8787", "proxy.lan:8443"):
        assert allowed.allows(host), host
    for host in ("evil.example", "evil.example:8787", "127.0.0.1:8788", "localhost:80", "proxy.lan",
                 "proxy.lan:8787", "0.0.0.0:8787", "127.0.0.2:8787", "127.0.0.1.evil.example", ""):
        assert not allowed.allows(host), host


@pytest.mark.parametrize(("api_host", "name"), [
    ("127.0.0.1", "127.0.0.1"), ("192.168.1.5", "192.168.1.5"), ("fd00::7", "[fd00::7]"), ("Node.LAN", "node.lan"),
    ("0.0.0.0", None), ("::", None),
])
def test_api_host_is_allowed_unless_it_is_a_wildcard(api_host: str, name: str | None) -> None:
    assert guard.host_name(api_host) == name
    allowed = guard.AllowedHosts.for_api(api_host, [], PORT)
    if name is not None:
        assert allowed.allows(f"{name}:{PORT}")
    assert not allowed.allows(f"0.0.0.0:{PORT}")


def test_dashboard_url_carries_the_token_in_the_fragment_only() -> None:
    token = "a+b/c=d~e.f-g_h"
    url = guard.dashboard_url("http://127.0.0.1:8787", token)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path, parts.query) == ("http", "127.0.0.1:8787", "/", "")
    assert parse_qs(parts.fragment) == {"token": [token]}  # what the page's URLSearchParams reads


async def test_a_foreign_host_is_refused_on_every_route_even_with_the_token() -> None:
    seen = Seen()
    async with client(gated(seen), host=f"evil.example:{PORT}") as api:
        for path in ("/", "/api/health", "/api/status", "/metrics", "/no/such/route"):
            answer = await api.get(path, headers=AUTH)
            assert answer.status_code == 421, path
            assert "api.allowed_hosts" in answer.json()["error"]
        answer = await api.post("/api/raw", headers=AUTH, content=b"x" * 100)
        assert answer.status_code == 421
    assert seen.uploads == []


async def test_an_allowed_host_name_is_served() -> None:
    async with client(gated(Seen(), extra_hosts=("node.lan",)), host="node.lan") as api:
        assert (await api.get("/api/status", headers=AUTH)).json() == {"peer_id": "me"}


async def _raw_call(app: guard.ASGIApp, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, Any]]:
    """One request through the app as a server would hand it over, for headers no HTTP client sends."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {"type": "http", "http_version": "1.0", "method": "GET", "path": "/api/health", "raw_path": b"/api/health",
             "query_string": b"", "root_path": "", "scheme": "http", "headers": headers,
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", PORT)}
    await app(scope, receive, send)
    return int(sent[0]["status"]), json.loads(sent[1]["body"])


@pytest.mark.parametrize("hosts", [[], [b"127.0.0.1", b"evil.example"], [b"127.0.0.1", b"127.0.0.1"]])
async def test_no_host_or_several_is_a_400(hosts: list[bytes]) -> None:
    status, body = await _raw_call(gated(Seen()), [(b"host", h) for h in hosts])
    assert status == 400  # RFC 9112 section 3.2
    assert "exactly one Host header" in body["error"]


@pytest.mark.parametrize("authorization", [
    None,
    "Bearer wrong",
    f"Basic {TOKEN}",
    "Bearer",
    "Bearer ",
    f"Bearer {TOKEN} extra",
    f"Bearer {TOKEN[:-1]}",
    f"Bearer {TOKEN}x",
    "Bearer " + "x" * 5000,
    f"Bearer{TOKEN}",
    "Bearer t\u00f6ken",
    "Bearer \u00e9\u00e9\u00e9",
])
async def test_a_missing_wrong_or_malformed_token_is_a_401(authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization.encode("utf-8")}
    async with client(gated(Seen())) as api:
        answer = await api.get("/api/status", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert answer.json()["error"].startswith("missing or wrong bearer token")
    assert "/data/api.token" in answer.json()["error"]


async def test_two_authorization_headers_are_a_401_even_if_one_is_right() -> None:
    async with client(gated(Seen())) as api:
        answer = await api.get("/api/status", headers=[("Authorization", "Bearer x"),
                                                        ("Authorization", f"Bearer {TOKEN}")])
    assert answer.status_code == 401


@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN}"])
async def test_the_token_is_accepted_as_rfc_6750_writes_it(authorization: str) -> None:
    async with client(gated(Seen())) as api:
        assert (await api.get("/api/status", headers={"Authorization": authorization})).status_code == 200


async def test_only_health_and_the_page_are_open_and_metrics_when_configured() -> None:
    async with client(gated(Seen())) as api:
        assert (await api.get("/api/health")).status_code == 200
        assert (await api.get("/")).status_code == 200
        for path in ("/metrics", "/api/status", "/no/such/route", "/api/health/", "//api/health"):
            assert (await api.get(path)).status_code == 401, path  # an unknown route does not say it is unknown
        assert (await api.post("/api/health")).status_code == 401  # open for GET only
        assert (await api.get("/metrics", headers=AUTH)).status_code == 200
    async with client(gated(Seen(), metrics_public=True)) as api:
        assert (await api.get("/metrics")).text == "hyperion_up 1\n"
        assert (await api.get("/api/status")).status_code == 401


async def test_a_body_at_the_cap_passes_and_one_byte_more_is_cut_off_at_the_cap() -> None:
    seen = Seen()
    async with client(gated(seen)) as api:
        answer = await api.post("/api/raw", headers=AUTH, content=chunks(CAP))
        assert answer.json() == {"bytes": CAP}
        answer = await api.post("/api/raw", headers=AUTH, content=chunks(CAP + 1))
        assert answer.status_code == 413
        assert "api.max_body_bytes" in answer.json()["error"]
        answer = await api.post("/api/raw", headers=AUTH, content=chunks(100 * CAP))  # streamed, no length
        assert answer.status_code == 413
        assert (await api.get("/api/health")).status_code == 200
    assert seen.uploads[0] == CAP
    assert all(n <= CAP for n in seen.uploads)  # the app never held more than the cap


async def test_a_declared_length_over_the_cap_is_refused_before_the_app_reads_a_byte() -> None:
    seen = Seen()
    async with client(gated(seen)) as api:
        answer = await api.post("/api/raw", headers=AUTH, content=b"x" * (CAP + 1))  # with Content-Length
        assert answer.status_code == 413
        assert answer.headers["connection"] == "close"
    assert seen.uploads == []


async def test_read_json_is_cut_off_too_and_still_answers_400_for_bad_json() -> None:
    async with client(gated(Seen())) as api:
        assert (await api.post("/api/tasks", headers=AUTH, content=chunks(CAP + 1))).status_code == 413
        answer = await api.post("/api/tasks", headers=AUTH, content=b"[1, 2")
        assert answer.status_code == 400
        assert "not valid JSON" in answer.json()["error"]["message"]
        answer = await api.post("/api/tasks", headers=AUTH, content=b'{"\xff": 1}')
        assert answer.status_code == 400
        assert (await api.post("/api/tasks", headers=AUTH, json={"b": 1, "a": 2})).json() == {"keys": ["a", "b"]}


async def test_no_token_means_the_body_is_never_read() -> None:
    seen = Seen()
    async with client(gated(seen)) as api:
        assert (await api.post("/api/raw", content=chunks(100 * CAP))).status_code == 401
    assert seen.uploads == []
