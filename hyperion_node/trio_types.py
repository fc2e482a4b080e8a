"""Trio names whose annotations come from the wrong place under mypy.

libp2p depends on trio-typing, whose ``trio-stubs`` package shadows trio's own inline annotations for mypy
and lacks ``trio.TaskStatus``. The protocol is the same object at run time. Drop this module once
trio-typing leaves libp2p's dependencies.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import trio

T = TypeVar("T")

if TYPE_CHECKING:
    from trio_typing import TaskStatus
else:
    from trio import TaskStatus

__all__ = ["TaskStatus", "run_sync_abandoning"]


async def run_sync_abandoning(fn: Callable[[], T]) -> T:
    """``trio.to_thread.run_sync(fn, abandon_on_cancel=True)``: for blocking calls whose result no one needs
    once the caller is cancelled (the stubs predate the keyword)."""
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)  # type: ignore[call-arg]
