"""Why the scheduler refused its input.

Settings come from the user's config (``[scheduler]``): a bad value is the user's fault and names its key, so
that the config loader can turn it into a :class:`~hyperion_node.errors.ConfigError` with the file it came
from. Task requirements come from an API request: bad ones are the user's fault too. Handing the scheduler
a candidate set built for another capability is our own misuse.
"""

from __future__ import annotations

from hyperion_node.errors import InternalError, UserError


class InvalidSetting(UserError):
    """A scheduler setting outside its range. ``key`` is its full config key, e.g. ``scheduler.breaker.cooldown_s``."""

    def __init__(self, key: str, value: object, expected: str) -> None:
        super().__init__(f"{key}: got {value!r} (expected {expected})")
        self.key = key
        self.value = value
        self.expected = expected


class InvalidRequirements(UserError):
    """Task requirements that no peer could ever meet: a negative memory size, a NaN price."""


class WrongCapability(InternalError):
    """A candidate set asked to hold, or to be scheduled for, a capability other than its own."""
