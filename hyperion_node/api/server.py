"""Serves the control API with Hypercorn inside the daemon's own trio loop.

We bind the listening socket ourselves, before Hypercorn sees it, for three reasons: a port in use becomes a
one-line ``EnvironmentProblem`` naming the config key; port 0 resolves to the real port before
``started()``, so the address the daemon publishes is the one that answers; and the Host check
(``guard.py``) knows that port.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.typing import ASGIFramework
from hypercorn.utils import wrap_app

from hyperion_node.api.app import NodeView, build_app
from hyperion_node.api.guard import WILDCARDS, dashboard_url
from hyperion_node.api.settings import ApiSettings
from hyperion_node.errors import EnvironmentProblem
from hyperion_node.trio_types import TaskStatus

# Seconds in-flight HTTP requests get to finish once the node shuts down; well inside the 5 s budget.
GRACEFUL_TIMEOUT_S = 1.0


def bind_tcp(host: str, port: int, *, key: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise EnvironmentProblem(
                f"port {port} on {host} is already in use", hint=f"set {key} to a free port (0 picks one)"
            ) from exc
        raise EnvironmentProblem(f"cannot listen on {host}:{port}: {exc.strerror}", hint=f"check {key}") from exc
    sock.setblocking(False)
    return sock


def published_url(host: str, port: int) -> str:
    """The URL clients use: loopback for a wildcard bind, whose own address no Host check allows."""
    if host in WILDCARDS:
        host = "::1" if ":" in host else "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ApiServer:
    def __init__(self, node: NodeView, token: str, settings: ApiSettings, *, token_path: str) -> None:
        self._node = node
        self._token = token
        self._settings = settings
        self._token_path = token_path
        self.url = ""

    @property
    def dashboard_url(self) -> str:
        """The web dashboard's link, token included (after the #): for whoever may read the token file."""
        return dashboard_url(self.url, self._token)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = bind_tcp(self._settings.host, self._settings.port, key="api.port")
        host, port = sock.getsockname()[:2]
        self.url = published_url(host, port)
        app = build_app(self._node, self._token, self._settings, token_path=self._token_path, port=port)
        config = HypercornConfig()
        config.graceful_timeout = GRACEFUL_TIMEOUT_S
        config.accesslog = None
        # A Logger (not "-") makes Hypercorn log through our pipeline instead of adding its own handler.
        config.errorlog = logging.getLogger("hypercorn.error")
        sock.listen(config.backlog)
        await worker_serve(
            # Starlette's and Hypercorn's ASGI type aliases differ in spelling only.
            wrap_app(cast(ASGIFramework, app), config.wsgi_max_body_size, "asgi"),
            config,
            sockets=Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[]),
            task_status=_Started(task_status),
        )


class _Started:
    """Adapts Hypercorn's ``started(binds)`` to our ``started()``: we already know our address."""

    def __init__(self, outer: TaskStatus[None]) -> None:
        self._outer = outer

    def started(self, value: object = None) -> None:
        self._outer.started()
