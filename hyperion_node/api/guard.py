"""What every request to the control API passes before FastAPI sees it: three plain ASGI middlewares.

The API listens on loopback, but loopback is not private: every local user, and every web page the
operator's browser opens, can send it requests. Outermost first:

1. :class:`HostGate`: the ``Host`` header must name this API: ``127.0.0.1``, ``localhost`` or ``[::1]``
   (with no port or the bound one), ``api.host`` when it is one address rather than a wildcard, or an entry
   of ``api.allowed_hosts``. A DNS-rebinding page (``evil.example`` re-resolved to 127.0.0.1 once loaded) is
   same-origin with itself, so the browser lets it read our answers; but its requests still say
   ``Host: evil.example``, and only the server can refuse them. Every route, ``/api/health`` included.
2. :class:`TokenGate`: ``Authorization: Bearer <token>`` on every route except ``GET /api/health``,
   ``GET /`` (the dashboard page: static HTML without data, which finds the token in its URL fragment, see
   ``dashboard.py``) and, with ``api.metrics_public``, ``GET /metrics``. A middleware rather than a FastAPI
   dependency, so a route added later is closed unless it is listed here. Raw header bytes are compared
   with ``hmac.compare_digest``: any malformed header is a 401, never a 500.
3. :class:`BodyCap`: at most ``api.max_body_bytes`` of request body. A Content-Length above it is refused
   before a byte is read; a chunked body is counted as it arrives and cut off at the cap, so the app never
   holds more than the cap (Hypercorn queues at most ``max_app_queue_size`` = 10 chunks of 64 KiB ahead).

Nothing here imports FastAPI, Starlette or trio: the CLI imports :func:`dashboard_url` from here cheaply.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARDS = ("", "0.0.0.0", "::", "[::]")  # "every address": never a name to allow in Host
# The dashboard page reads the token from this key of its URL fragment (#token=...): a fragment is never
# sent to a server (RFC 3986 section 3.5), so it is in no request line, proxy log or Referer.
TOKEN_FRAGMENT = "token"
# Our tokens are 43 characters (secrets.token_urlsafe(32)); datadir.py refuses a token file over 512.
# Longer presented values are refused before comparing them.
MAX_TOKEN_BYTES = 512


def split_host(value: str) -> tuple[str, int | None] | None:
    """``(name, port)`` of a Host header value, the name lower-cased, or None when it is not one.

    RFC 9110 section 7.2: ``Host = uri-host [ ":" port ]``; RFC 3986 section 3.2.2: ``uri-host`` is an
    IP-literal in brackets, an IPv4 address or a reg-name; section 3.2.3: ``port = *DIGIT``, so ``name:``
    has no port.
    """
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[: end + 1], value[end + 1 :]
        try:
            ipaddress.IPv6Address(name[1:-1])
        except ValueError:
            return None
    else:
        name, colon, port_text = value.partition(":")
        rest = colon + port_text
    if not name or not all(c.isalnum() or c in "-._~[]:%" for c in name) or not name.isascii():
        return None
    if not rest or rest == ":":
        return name.lower(), None
    if not rest.startswith(":") or not rest[1:].isdigit() or not 0 < int(rest[1:]) <= 65535:
        return None
    return name.lower(), int(rest[1:])


def host_name(api_host: str) -> str | None:
    """The Host name under which ``api.host`` is reached, or None for a wildcard (0.0.0.0, ::): a wildcard
    is not a name anybody should use, and a page at http://0.0.0.0 is loopback to some browsers."""
    if api_host in WILDCARDS:
        return None
    return f"[{api_host}]" if ":" in api_host and not api_host.startswith("[") else api_host.lower()


@dataclass(frozen=True)
class AllowedHosts:
    """The Host header values this API answers: names with no port or the bound port, and name:port pairs
    as configured (a reverse proxy's public port is not ours)."""

    names: frozenset[str]
    pairs: frozenset[tuple[str, int]]
    port: int

    @classmethod
    def for_api(cls, api_host: str, extra: Iterable[str], port: int) -> AllowedHosts:
        names = set(LOOPBACK_NAMES)
        own = host_name(api_host)
        if own is not None:
            names.add(own)
        pairs: set[tuple[str, int]] = set()
        for entry in extra:
            parsed = split_host(entry)
            if parsed is None:  # the config loader refuses these; a caller that did not check gets an error
                raise ValueError(f"{entry!r} is not a host name, an address or a host:port")
            name, entry_port = parsed
            if entry_port is None:
                names.add(name)
            else:
                pairs.add((name, entry_port))
        return cls(frozenset(names), frozenset(pairs), port)

    def allows(self, host: str) -> bool:
        parsed = split_host(host)
        if parsed is None:
            return False
        name, port = parsed
        return (name in self.names and port in (None, self.port)) or (name, port or 0) in self.pairs


def dashboard_url(api_url: str, token: str) -> str:
    """The web dashboard's link: the page at ``/``, the token in the fragment for its JavaScript."""
    return f"{api_url}/#{TOKEN_FRAGMENT}={quote(token, safe='')}"


def header(scope: Scope, name: bytes) -> list[bytes]:
    """Every value of one request header (ASGI gives names lower-cased)."""
    return [value for key, value in scope.get("headers", ()) if key == name]


async def send_json(send: Send, status: int, body: dict[str, Any],
                    headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class HostGate:
    def __init__(self, app: ASGIApp, allowed: AllowedHosts) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        hosts = header(scope, b"host")
        if len(hosts) != 1:
            # RFC 9112 section 3.2: a request without Host, or with more than one, is answered 400.
            await _refuse(scope, send, 400, "the request needs exactly one Host header")
            return
        host = hosts[0].decode("latin-1")
        if not self.allowed.allows(host):
            # 421 Misdirected Request (RFC 9110 section 15.5.20): this server will not answer for that name.
            shown = host if len(host) <= 100 else host[:100] + "..."
            await _refuse(scope, send, 421,
                          f"this node's API does not answer for Host {shown!r} (it does for 127.0.0.1, localhost "
                          f"and [::1]); to reach it under that name, add the name to api.allowed_hosts")
            return
        await self.app(scope, receive, send)


class TokenGate:
    def __init__(self, app: ASGIApp, *, token: str, token_path: str, metrics_public: bool) -> None:
        self.app = app
        self.token = token.encode("ascii")  # datadir.py only hands out printable ASCII tokens
        self.open_routes = {("GET", "/api/health"), ("GET", "/")}
        if metrics_public:
            self.open_routes.add(("GET", "/metrics"))
        self.message = (f"missing or wrong bearer token; send 'Authorization: Bearer <token>' with the token "
                        f"from {token_path}")

    def authorized(self, scope: Scope) -> bool:
        values = header(scope, b"authorization")
        if len(values) != 1:
            return False
        # RFC 6750 section 2.1: credentials = "Bearer" 1*SP b64token; the scheme is case-insensitive
        # (RFC 9110 section 11.1). Bytes throughout: a non-ASCII header is just a wrong token.
        scheme, space, presented = values[0].partition(b" ")
        presented = presented.lstrip(b" ")
        if not space or scheme.lower() != b"bearer" or not presented or len(presented) > MAX_TOKEN_BYTES:
            return False
        return hmac.compare_digest(presented, self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or (scope.get("method"), scope["path"]) in self.open_routes:
            await self.app(scope, receive, send)
            return
        if not self.authorized(scope):
            await _refuse(scope, send, 401, self.message, [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a request body passes the cap; :class:`BodyCap` answers 413 for it."""


class BodyCap:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = f"the request body is over api.max_body_bytes ({max_bytes} bytes)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        if declared:
            try:
                length = int(declared[0])
            except ValueError:
                length = -1  # h11 and h2 refuse a malformed Content-Length before we see it
            if length < 0 or len(set(declared)) > 1:
                await send_json(send, 400, {"error": "the request's Content-Length is not one number"})
                return
            if length > self.max_bytes:
                await send_json(send, 413, {"error": self.message}, [(b"connection", b"close")])
                return
        received = 0
        over = False
        started = False

        async def capped_receive() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise BodyTooLarge(self.message)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:
                return  # the app's answer to our exception (Starlette's 500): ours goes out instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped_receive, guarded_send)
        except Exception:
            if not over:
                raise
            # Ours, however the app wrapped it (an exception group, Starlette's re-raise after its 500).
        if over and not started:
            await send_json(send, 413, {"error": self.message}, [(b"connection", b"close")])


async def _refuse(scope: Scope, send: Send, status: int, message: str,
                  headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    if scope["type"] == "websocket":
        # Before websocket.accept, a close is answered 403 by the server (ASGI spec, websocket.close).
        await send({"type": "websocket.close", "code": 1008})
        return
    await send_json(send, status, {"error": message}, headers)


def guard(app: ASGIApp, *, token: str, token_path: str, allowed: AllowedHosts, max_body_bytes: int,
          metrics_public: bool) -> ASGIApp:
    """``app`` behind the three checks, Host first: a misdirected request learns nothing, not even 401."""
    inner = BodyCap(app, max_body_bytes)
    gated = TokenGate(inner, token=token, token_path=token_path, metrics_public=metrics_public)
    return HostGate(gated, allowed)
