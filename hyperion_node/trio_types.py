"""Trio names whose annotations come from the wrong place under mypy.

libp2p depends on trio-typing, whose ``trio-stubs`` package shadows trio's own inline annotations for mypy
and lacks ``trio.TaskStatus``. The protocol is the same object at run time. Drop this module once
trio-typing leaves libp2p's dependencies.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trio_typing import TaskStatus
else:
    from trio import TaskStatus

__all__ = ["TaskStatus"]
