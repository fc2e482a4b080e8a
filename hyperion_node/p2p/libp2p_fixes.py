"""Faults of py-libp2p 0.8.1 that the node mends, not costs (those are ``libp2p_costs``): without these, a node
that runs for long stops doing its job. Installed with the host (``libp2p_stack``), process-wide, idempotent.

1. Inbound connections held forever. The swarm serves each inbound connection in its own task, which holds one
   place of an inbound limiter (``max_connections - min_connections`` places: 56 with our defaults) and, once the
   connection is up, waits for the *swarm* to stop (``Swarm._do_handle_inbound_connection``'s "barrier"), not
   for the connection to end. So every inbound connection a node ever accepted kept its place and its task after
   it closed: the 57th was refused at the security handshake, whoever made it. Measured: a daemon accepted 56
   connections from a stranger that connected and left, one after another, and refused every one after; in a
   30-daemon network a new node's bootstrap peer, one that others had connected to and left often enough,
   refused the new node, whose first task then failed. Here the handler's wait ends when its connection closes
   (``SwarmConn.event_closed``), which frees the place and the task.
   Test: ``tests/adversarial/test_transport.py::test_connections_that_came_and_went_leave_room_for_the_next``.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import trio
from libp2p.network.swarm import Swarm

_original_handle = Swarm._do_handle_inbound_connection
_original_add_conn = Swarm.add_conn
# The nursery around the inbound handler running in this task: a connection it registers ends the handler.
_HANDLER: ContextVar[trio.Nursery | None] = ContextVar("hyperion_inbound_handler", default=None)


async def _handle_inbound_until_closed(self: Swarm, *args: Any, **kwargs: Any) -> None:
    async with trio.open_nursery() as nursery:
        token = _HANDLER.set(nursery)
        try:
            await _original_handle(self, *args, **kwargs)
        finally:
            _HANDLER.reset(token)
        nursery.cancel_scope.cancel()  # returned on its own (a refused or failed connection): no watcher left


async def _add_conn_watched(self: Swarm, muxed_conn: Any, direction: str = "unknown") -> Any:
    conn = await _original_add_conn(self, muxed_conn, direction=direction)
    handler = _HANDLER.get()
    if handler is not None and direction == "inbound":
        handler.start_soon(_end_with, conn, handler.cancel_scope)
    return conn


async def _end_with(conn: Any, handler: trio.CancelScope) -> None:
    await conn.event_closed.wait()
    handler.cancel()


def install() -> None:
    """Idempotent: the originals were taken at import."""
    Swarm._do_handle_inbound_connection = _handle_inbound_until_closed  # type: ignore[method-assign]
    Swarm.add_conn = _add_conn_watched  # type: ignore[method-assign]
