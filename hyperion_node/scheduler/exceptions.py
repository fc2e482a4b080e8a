"""Why the scheduler refused its input.

A bad setting is an :class:`~hyperion_node.settings.InvalidSetting`, like every component's. Task
requirements come from an API request: bad ones are the user's fault. Handing the scheduler a candidate set
built for another capability is our own misuse.
"""

from __future__ import annotations

from hyperion_node.errors import InternalError, UserError


class InvalidRequirements(UserError):
    """Task requirements that no peer could ever meet: a negative memory size, a NaN price."""


class WrongCapability(InternalError):
    """A candidate set asked to hold, or to be scheduled for, a capability other than its own."""
