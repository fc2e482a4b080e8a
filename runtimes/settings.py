"""What every runtime's settings table shares: a key it does not know is a mistake, not something to ignore.

A runtime's table (``[runtimes.<name>]`` in the user's config) is open to the loader, which cannot know a
third-party runtime's keys, so each runtime checks its own. ``n_thread = 2`` for ``n_threads`` would
otherwise be dropped in silence and the node would run on the default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hyperion_node.errors import ConfigError


def reject_unknown_keys(settings: Mapping[str, Any], known: Iterable[str], *, source: str) -> None:
    """``ConfigError`` naming the first key of ``settings`` not in ``known``, and the keys that are."""
    names = sorted(known)
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise ConfigError("unknown key", source=source, key=unknown[0], expected="one of: " + ", ".join(names))
