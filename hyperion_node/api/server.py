"""Serves the control API with Hypercorn inside the daemon's own trio loop.

We bind the listening socket ourselves, before Hypercorn sees it, for two reasons: a port in use becomes a
one-line ``EnvironmentProblem`` naming the config key, and port 0 resolves to the real port before
``started()``, so the address the daemon publishes is the one that answers.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import Any, cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.typing import ASGIFramework
from hypercorn.utils import wrap_app

from hyperion_node.api.app import NodeView, build_app
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


class ApiServer:
    def __init__(self, node: NodeView, token: str, *, host: str, port: int, token_path: str) -> None:
        self._app = build_app(node, token, token_path=token_path)
        self._host = host
        self._port = port
        self.url = ""

    @property
    def app(self) -> Any:
        return self._app

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = bind_tcp(self._host, self._port, key="api.port")
        host, port = sock.getsockname()[:2]
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        config = HypercornConfig()
        config.graceful_timeout = GRACEFUL_TIMEOUT_S
        config.accesslog = None
        # A Logger (not "-") makes Hypercorn log through our pipeline instead of adding its own handler.
        config.errorlog = logging.getLogger("hypercorn.error")
        sock.listen(config.backlog)
        await worker_serve(
            # Starlette's and Hypercorn's ASGI type aliases differ in spelling only.
            wrap_app(cast(ASGIFramework, self._app), config.wsgi_max_body_size, "asgi"),
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
